"""Socket-free parts of the client's Link: server address lists (the parser and the backoff themselves are
tested in tests/unit/test_session.py)."""

from __future__ import annotations

import pytest

from geartrain.client.link import parse_servers


def test_a_single_spec_is_a_list_of_one():
    assert parse_servers("h:1") == [("h", 1)]
    assert parse_servers(("h", 1)) == [("h", 1)]
    assert parse_servers(["a:1", ("b", 2), "[::1]:3"]) == [("a", 1), ("b", 2), ("::1", 3)]
    with pytest.raises(ValueError):
        parse_servers([])
