"""setuptools' build backend, deciding whether a build is the compiled one (setup.py) and asking for mypy if so.

A wheel (`pip install .`) is compiled unless GEARTRAIN_COMPILE=0; an editable install (`pip install -e .`) is pure
Python unless GEARTRAIN_COMPILE=1, as compiled modules beside the sources would be run in place of the sources
being edited. A build requirement cannot depend on this in pyproject.toml, hence this in-tree backend (PEP 517's
backend-path); setup.py reads GEARTRAIN_COMPILE and does the compiling.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from setuptools import build_meta
from setuptools.build_meta import *  # noqa: F403 (the backend's other hooks, unchanged)

#: What the compiled build needs to build (mypyc ships with mypy); at run time it needs nothing more.
COMPILE_REQUIRES = ["mypy>=1.10"]


def _compiled(default: str) -> list[str]:
    """Settle GEARTRAIN_COMPILE for this build (setup.py runs in this process) and return its extra requirements."""
    return COMPILE_REQUIRES if os.environ.setdefault("GEARTRAIN_COMPILE", default) == "1" else []


def _settled(default: str, hook: Callable[..., str]) -> Callable[..., str]:
    """setuptools' hook, run once GEARTRAIN_COMPILE is settled (`default` unless the environment says)."""

    def settled(*args: Any, **kwargs: Any) -> str:
        _compiled(default)
        return hook(*args, **kwargs)

    return settled


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    extra = _compiled("1")
    return build_meta.get_requires_for_build_wheel(config_settings) + extra


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    extra = _compiled("0")
    return build_meta.get_requires_for_build_editable(config_settings) + extra


# A wheel is compiled unless GEARTRAIN_COMPILE=0; an editable install is pure Python unless GEARTRAIN_COMPILE=1.
prepare_metadata_for_build_wheel = _settled("1", build_meta.prepare_metadata_for_build_wheel)
build_wheel = _settled("1", build_meta.build_wheel)
prepare_metadata_for_build_editable = _settled("0", build_meta.prepare_metadata_for_build_editable)
build_editable = _settled("0", build_meta.build_editable)
