"""geartrain's build: the modules in geartrain.compiled.MODULES compiled by mypyc when GEARTRAIN_COMPILE=1 (the
default of a wheel, `pip install .`; build_backend/geartrain_build.py), else pure Python (README, "The compiled
build"). The metadata is in pyproject.toml.

The compiled build falls back to pure Python, with a warning, when mypy, a C compiler or the compile itself
fails: `pip install .` never fails for want of one. tests/unit/test_compiled.py tells which build a test run got.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
COMPILE = os.environ.get("GEARTRAIN_COMPILE") == "1"


def _fall_back(exc: BaseException) -> None:
    print(f"warning: geartrain's compiled build failed ({type(exc).__name__}: {exc}); installing pure Python instead",
          file=sys.stderr)


def _source(module: str) -> str:
    """The source file of a module of MODULES: a module's own, or a package's __init__.py."""
    path = f"src/{module.replace('.', '/')}"
    return f"{path}/__init__.py" if (HERE / path / "__init__.py").is_file() else f"{path}.py"


def _compiled_extensions() -> list:
    """mypyc's extensions for geartrain.compiled.MODULES (it type-checks them and writes their C), or none."""
    from mypyc.build import mypycify

    try:
        modules = runpy.run_path(str(HERE / "src" / "geartrain" / "compiled.py"))["MODULES"]
        return mypycify([_source(name) for name in modules], group_name="geartrain", opt_level="3")
    except (Exception, SystemExit) as exc:  # mypy's errors, or a module mypyc cannot compile
        _fall_back(exc)
        return []


class CompiledBuild(build_ext):
    """build_ext that compiles the hot modules with mypyc, or leaves them pure Python if it cannot."""

    def finalize_options(self) -> None:
        # Also reached while pip asks for the build's requirements, before mypy is there: then nothing is done.
        if COMPILE and not self.distribution.ext_modules and importlib.util.find_spec("mypyc") is not None:
            self.distribution.ext_modules = _compiled_extensions()
        super().finalize_options()

    def run(self) -> None:
        if COMPILE and importlib.util.find_spec("mypyc") is None:
            _fall_back(ModuleNotFoundError("mypy (mypyc) is not installed"))
        try:
            super().run()
        except Exception as exc:  # no C compiler, or a failed compile: no half-compiled package
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            self.extensions = []
            _fall_back(exc)


class MaybeCompiled(Distribution):
    """A platform wheel when the compiled build is asked for: its extensions are only known once build_ext runs."""

    def has_ext_modules(self) -> bool:
        return COMPILE


setup(distclass=MaybeCompiled, cmdclass={"build_ext": CompiledBuild})
