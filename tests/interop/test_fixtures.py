"""The suite's own fixtures leave nothing behind: a stopped gearmand takes its folder (its pid file's) with it."""

from __future__ import annotations

import os

from conftest import start_gearmand


def test_a_stopped_gearmand_leaves_no_folder():
    server = start_gearmand()
    folder = server.folder
    try:
        assert folder is not None and os.path.isdir(folder)
    finally:
        server.stop()
    assert not os.path.exists(folder)
