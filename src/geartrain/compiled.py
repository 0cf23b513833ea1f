"""The compiled build: which modules mypyc compiles, and whether this install runs them compiled.

`pip install .` compiles MODULES with mypyc (setup.py reads the list from this file); an editable install,
GEARTRAIN_COMPILE=0 or a machine without a C compiler runs the same modules as pure Python. Both are tested
(README, "The compiled build").
This file is read by setup.py on its own: it imports nothing from geartrain.

A compiled coroutine must not await inside an ``except`` or ``finally`` block (tests/unit/test_compiled.py checks
MODULES): mypyc (2.4.1) leaves the exception being handled as the thread's current exception while such a
coroutine is suspended there, and a compiled ``finally`` that awaits then raises that exception in another task
(a Worker's run() raised a ConnectionRefusedError of a Client's link waiting out its backoff). The code awaits
after the block instead, on a flag set in it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: The hot path: the packet codec and the client side's state machines, the broker, its counters, its transport
#: and spilling (the spill queues and the unique index: each spilled job passes through them on the event loop),
#: the durable queue's group commit and its SQLite insert parameters (built for each stored job), and the asyncio
#: client and worker (README, "The compiled build").
MODULES = (
    "geartrain.protocol.codec", "geartrain.protocol.connection", "geartrain.protocol.session",
    "geartrain.server.broker", "geartrain.server.stats", "geartrain.server.transport", "geartrain.server.hashindex",
    "geartrain.server.spill", "geartrain.server.store", "geartrain.server.store.sqlite_rows",
    "geartrain.client.job", "geartrain.client.link", "geartrain.client.client", "geartrain.client.worker",
)

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr
else:

    def mypyc_attr(*args: Any, **kwargs: Any) -> Any:
        """mypyc's class options (mypy_extensions.mypyc_attr): read by mypyc at build time, nothing at run time."""
        return lambda cls: cls


def runs_compiled(module_file: str) -> bool:
    """Whether the module loaded from this file (its __file__) is an extension module: compiled, not Python."""
    return not module_file.endswith(".py")


def compiled_modules() -> tuple[str, ...]:
    """Those of MODULES that this install runs compiled (extension modules), in MODULES' order."""
    return tuple(name for name in MODULES if runs_compiled(str(importlib.import_module(name).__file__)))


def describe_build() -> str:
    """What geard --version says of the build: "pure Python", or how many of MODULES run compiled."""
    done = compiled_modules()
    return f"compiled by mypyc ({len(done)} of {len(MODULES)} hot modules)" if done else "pure Python"
