"""The compiled build (setup.py, geartrain.compiled): the suite runs on the build it was asked to test, and asking
for a compiled build where nothing can compile it still installs geartrain, as pure Python."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geartrain.compiled import MODULES, compiled_modules

ROOT = Path(__file__).resolve().parents[2]


def test_the_suite_runs_on_the_build_it_was_asked_to_test():
    # scripts/test runs the suite twice: on the source tree (pure Python), then with GEARTRAIN_EXPECT_COMPILED=1 on
    # a wheel built with GEARTRAIN_COMPILE=1. A compiled pass that fell back to pure Python, or a stale extension
    # module beside the sources, fails here.
    expected = MODULES if os.environ.get("GEARTRAIN_EXPECT_COMPILED") == "1" else ()
    assert compiled_modules() == expected
    version = subprocess.run([sys.executable, "-m", "geartrain.server.cli", "--version"], capture_output=True,
                             text=True, timeout=60).stdout
    build = f"compiled by mypyc ({len(MODULES)} of {len(MODULES)} hot modules)" if expected else "pure Python"
    assert version.strip().endswith(build), version


@pytest.mark.skipif(os.environ.get("GEARTRAIN_EXPECT_COMPILED") == "1", reason="the pure pass checks the build")
@pytest.mark.timeout(600)
def test_a_compiled_build_without_a_c_compiler_installs_pure_python(tmp_path):
    # CC=/bin/false: a compiler that fails, as on a machine without one (mypy still runs and writes the C).
    env = dict(os.environ, CC="/bin/false")
    built = subprocess.run([str(ROOT / "scripts" / "build-compiled"), str(tmp_path / "lib")], env=env,
                           capture_output=True, text=True, timeout=540)
    assert built.returncode == 0, built.stdout + built.stderr
    files = [path.relative_to(tmp_path / "lib").as_posix() for path in (tmp_path / "lib").rglob("*")]
    assert [name for name in files if name.endswith(".so")] == []
    sources = {module.replace(".", "/") for module in MODULES}  # a module's .py, or a package's __init__.py
    assert all(f"{name}.py" in files or f"{name}/__init__.py" in files for name in sources), files
    probe = "import geartrain.compiled as c; print(c.compiled_modules())"
    ran = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, PYTHONPATH=str(tmp_path / "lib")),
                         capture_output=True, text=True, timeout=60)
    assert ran.stdout.strip() == "()", ran.stdout + ran.stderr


def _awaits_in_handlers(tree: ast.AST) -> list[int]:
    """Lines of the awaits (await, async for, async with) inside an except or finally block."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):  # TryStar: Python 3.11+
            blocks = [*node.handlers, *node.finalbody]
            lines += [inner.lineno for block in blocks for inner in ast.walk(block)
                      if isinstance(inner, (ast.Await, ast.AsyncFor, ast.AsyncWith))]
    return lines


def _source(module: str) -> Path:
    """A module's source file in this tree: its .py, or a package's __init__.py."""
    path = ROOT / "src" / module.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def test_no_compiled_coroutine_awaits_in_an_except_or_finally_block():
    # geartrain.compiled's docstring: mypyc leaks the handled exception while a coroutine is suspended in such a
    # block, and a compiled finally that awaits raises it elsewhere.
    found = {name: _awaits_in_handlers(ast.parse(_source(name).read_text())) for name in MODULES}
    assert {name: lines for name, lines in found.items() if lines} == {}
    assert _awaits_in_handlers(ast.parse("async def f():\n try:\n  pass\n finally:\n  await g()\n")) == [5]
