"""The README's section on retries, dead letters, kept results and schedules, run against geard: its policy
file, its require_worker packet exchange, and its admin session (the commands whose answers do not depend on
time or handles)."""

from __future__ import annotations

import re
import shlex

import pytest

from geartrain.protocol import constants as C

from conftest import REPO_ROOT
from wire import Wire

TITLE = "## Retries, dead letters, kept results, schedules"
REPLAYED = ("schedule add", "maxqueue", "settings")
#: Lines of `settings` that depend on where the server runs.
LOCAL = ("listen\t", "policy_file\t")


def section() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index(TITLE)
    end = text.find("\n## ", start + len(TITLE))
    return text[start:end]


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", section(), re.S)


@pytest.fixture
def policy_file(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(blocks("toml")[0])
    return path


def session() -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The geard arguments and the (command, answer lines) of the README's admin session."""
    block = next(b for b in blocks("text") if b.startswith("$ geard"))
    first, *lines = block.splitlines()
    args = shlex.split(first.split("#")[0])[2:]  # after "$ geard"
    steps: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("> "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return args, steps


def test_readme_session_answers_as_geard_does(server_factory, policy_file):
    args, steps = session()
    assert args[0] == "-d"
    args = [str(policy_file) if a == "policy.toml" else a for a in args[1:]]
    server = server_factory("geard", *args)
    replayed = 0
    with Wire(server.host, server.port) as admin:
        for command, answer in steps:
            if not command.startswith(REPLAYED):
                continue
            got = [line.decode() for line in admin.admin(command).lines]
            expected = [line for line in answer if line != "."]
            if command == "settings":
                # Every line of the example, in its order; settings added later may come in between.
                expected = [line for line in expected if not line.startswith(LOCAL)]
                lines = iter(got)
                missing = [line for line in expected if line not in lines]
                assert not missing, f"settings does not answer these README lines: {missing}"
            else:
                assert got == expected, command
            replayed += 1
    assert replayed == len(REPLAYED)


def test_readme_require_worker_exchange(server_factory, policy_file):
    exchange = next(b for b in blocks("text") if b.startswith("C->S"))
    server = server_factory("geard", "--policy-file", str(policy_file))
    with Wire(server.host, server.port) as client:
        for line in exchange.splitlines():
            direction, name, *args = re.split(r"\s{2,}", line.strip())
            ptype = getattr(C, name)
            raw = tuple(arg.encode() for arg in args)
            if direction == "C->S":
                client.send(ptype, *raw)
            else:
                assert client.expect(ptype).args == raw
        client.send(C.CAN_DO, b"resize_image")  # once a worker has registered it, the submit is taken
        client.send(C.SUBMIT_JOB_BG, b"resize_image", b"u1", b"photo.jpg")
        client.expect(C.JOB_CREATED)
