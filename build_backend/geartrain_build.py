"""setuptools' build backend, which also asks for mypy when GEARTRAIN_COMPILE=1 asks for the compiled build.

A build requirement cannot depend on the environment in pyproject.toml; this in-tree backend (PEP 517's
backend-path) adds it, so a pure-Python build never fetches mypy. setup.py does the compiling.
"""

from __future__ import annotations

import os
from typing import Any

from setuptools import build_meta
from setuptools.build_meta import *  # noqa: F403 (the backend's hooks, unchanged)

#: What the compiled build needs to build (mypyc ships with mypy); at run time it needs nothing more.
COMPILE_REQUIRES = ["mypy>=1.10"]


def _compile_requires() -> list[str]:
    return COMPILE_REQUIRES if os.environ.get("GEARTRAIN_COMPILE") == "1" else []


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return build_meta.get_requires_for_build_wheel(config_settings) + _compile_requires()


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return build_meta.get_requires_for_build_editable(config_settings) + _compile_requires()
