"""The ACL model, gear's ACL file and the `acl ...` admin commands (answers pinned byte for byte)."""

from __future__ import annotations

from pathlib import Path

import pytest

from geartrain.server.acl import ACL, ACLEntry, ACLError, acl_admin_command, load_acl_file


def is_error(answer: bytes, code: str) -> bool:
    """One `ERR CODE message` line, the message a single word as in gearmand (`+` for spaces)."""
    words = answer.split(b" ")
    return (
        answer.endswith(b"\n")
        and answer.count(b"\n") == 1
        and len(words) == 3
        and words[:2] == [b"ERR", code.encode()]
        and len(words[2]) > 1
    )


# --- ACLEntry -------------------------------------------------------------------------------------


def test_entry_patterns_match_from_the_start_of_the_name() -> None:
    entry = ACLEntry("worker", register="foo.*")
    assert entry.canRegister("foo")
    assert entry.canRegister("foo-bar")
    assert not entry.canRegister("bar-foo")
    assert not entry.canRegister("bar")
    assert not entry.canInvoke("foo")


def test_entry_accepts_bytes_names_from_the_wire() -> None:
    entry = ACLEntry("client", register="reg", invoke="foo.*")
    assert entry.canInvoke(b"foo-bar")
    assert not entry.canInvoke(b"bar")
    assert entry.canRegister(b"reg")
    assert not entry.canRegister(b"other")


def test_entry_matches_utf8_and_survives_undecodable_bytes() -> None:
    entry = ACLEntry("client", invoke="caf\u00e9")
    assert entry.canInvoke("caf\u00e9".encode())
    assert entry.canInvoke("caf\u00e9-x")
    assert not entry.canInvoke(b"caf\xff")  # not valid UTF-8: no error, no match
    assert ACLEntry("c", invoke=".*").canInvoke(b"\xff\xfe")


def test_entry_without_patterns_allows_nothing_and_is_empty() -> None:
    entry = ACLEntry("nobody")
    assert entry.isEmpty()
    assert not entry.canRegister("anything")
    assert not entry.canInvoke(b"anything")
    assert entry.grant is False


def test_entry_empty_string_pattern_means_no_permission() -> None:
    entry = ACLEntry("x", register="", invoke="")
    assert entry.register is None and entry.invoke is None
    assert entry.isEmpty()
    assert not entry.canRegister("a")


def test_entry_setters_change_permissions_and_emptiness() -> None:
    entry = ACLEntry("x")
    entry.setRegister("a.*")
    assert entry.register == "a.*" and entry.canRegister("abc") and not entry.isEmpty()
    entry.setRegister(None)
    assert entry.register is None and not entry.canRegister("abc") and entry.isEmpty()
    entry.setInvoke("b")
    assert entry.canInvoke("b") and not entry.isEmpty()
    entry.setInvoke(None)
    entry.setGrant(True)
    assert entry.grant is True and not entry.isEmpty()
    entry.setGrant(False)
    assert entry.isEmpty()


def test_entry_grant_is_always_a_bool() -> None:
    assert ACLEntry("x", grant=None).grant is False  # type: ignore[arg-type]  # gear's geard passed None
    assert ACLEntry("x", grant=1).grant is True  # type: ignore[arg-type]
    assert ACLEntry("x", grant=None).isEmpty()  # type: ignore[arg-type]


def test_entry_bad_regex_raises_acl_error() -> None:
    with pytest.raises(ACLError, match="Regular expression"):
        ACLEntry("x", register="(")
    entry = ACLEntry("x", invoke="ok")
    with pytest.raises(ACLError):
        entry.setInvoke("[")
    assert entry.invoke == "ok" and entry.canInvoke("ok")  # a failed set leaves the old pattern


def test_entry_repr_names_its_permissions() -> None:
    assert repr(ACLEntry("w", register=".*")) == "<ACLEntry for w register=.* invoke=None grant=False>"


# --- ACL ------------------------------------------------------------------------------------------


@pytest.fixture
def acl() -> ACL:
    acl = ACL()
    acl.add(ACLEntry("worker", register="foo.*"))
    acl.add(ACLEntry("client", invoke="foo.*"))
    acl.add(ACLEntry("manager", grant=True))
    return acl


def test_acl_checks_by_subject(acl: ACL) -> None:
    assert len(acl.getEntries()) == 3
    assert acl.canRegister("worker", "foo-bar")
    assert acl.canRegister("worker", b"foo")
    assert not acl.canRegister("worker", "bar-foo")
    assert not acl.canInvoke("worker", "foo")
    assert not acl.canGrant("worker")
    assert acl.canInvoke("client", "foo-bar")
    assert acl.canInvoke("client", b"foo")
    assert not acl.canInvoke("client", "bar")
    assert not acl.canRegister("client", "foo")
    assert not acl.canGrant("client")
    assert acl.canGrant("manager")
    assert not acl.canRegister("manager", "foo")
    assert not acl.canInvoke("manager", "foo")


def test_acl_denies_unknown_and_missing_subjects_by_default(acl: ACL) -> None:
    assert not acl.canRegister("stranger", "foo")
    assert not acl.canInvoke("stranger", b"foo")
    assert not acl.canGrant("stranger")
    assert not acl.canRegister(None, "foo")
    assert not acl.canInvoke(None, "foo")
    assert not acl.canGrant(None)
    assert not ACL().canInvoke("anyone", "anything")


def test_acl_add_duplicate_subject_raises(acl: ACL) -> None:
    with pytest.raises(ACLError, match="worker"):
        acl.add(ACLEntry("worker", invoke=".*"))
    assert acl.subjects["worker"].invoke is None  # the original entry is untouched


def test_acl_remove(acl: ACL) -> None:
    acl.remove("worker")
    assert not acl.canRegister("worker", "foo")
    with pytest.raises(ACLError, match="worker"):
        acl.remove("worker")


def test_acl_entries_are_sorted_by_subject(acl: ACL) -> None:
    assert [e.subject for e in acl.getEntries()] == ["client", "manager", "worker"]


def test_acl_grants_create_entries_and_replace_patterns() -> None:
    acl = ACL()
    acl.grantInvoke("c", "a.*")
    assert acl.canInvoke("c", "abc") and not acl.canInvoke("c", "b")
    acl.grantInvoke("c", "b")
    assert acl.canInvoke("c", "b") and not acl.canInvoke("c", "abc")
    acl.grantRegister("w", "x")
    assert acl.canRegister("w", "x")
    acl.grantGrant("m")
    assert acl.canGrant("m")
    assert [e.subject for e in acl.getEntries()] == ["c", "m", "w"]


def test_acl_grant_with_bad_regex_leaves_no_entry_behind() -> None:
    acl = ACL()
    with pytest.raises(ACLError):
        acl.grantRegister("w", "(")
    with pytest.raises(ACLError):
        acl.grantInvoke("w", "[")
    assert acl.getEntries() == []


def test_acl_revokes_remove_entries_left_empty() -> None:
    acl = ACL()
    acl.add(ACLEntry("s", register="r", invoke="i", grant=True))
    acl.revokeRegister("s")
    assert not acl.canRegister("s", "r") and acl.canInvoke("s", "i") and "s" in acl
    acl.revokeInvoke("s")
    assert not acl.canInvoke("s", "i") and acl.canGrant("s") and "s" in acl
    acl.revokeGrant("s")
    assert not acl.canGrant("s")
    assert "s" not in acl and acl.getEntries() == []


def test_acl_revokes_of_unknown_subjects_are_no_ops(acl: ACL) -> None:
    acl.revokeInvoke("ghost")
    acl.revokeRegister("ghost")
    acl.revokeGrant("ghost")
    assert len(acl) == 3


# --- the ACL file ---------------------------------------------------------------------------------

SEED_EXAMPLE = """\
[my_worker]
register=.*

[my_client]
invoke=.*

[my_node_manager]
grant=True
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "acl.conf"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_acl_file_reads_the_seed_example(tmp_path: Path) -> None:
    acl = load_acl_file(write(tmp_path, SEED_EXAMPLE))
    assert [e.subject for e in acl.getEntries()] == ["my_client", "my_node_manager", "my_worker"]
    assert acl.canRegister("my_worker", b"anything") and not acl.canInvoke("my_worker", "x")
    assert acl.canInvoke("my_client", b"anything") and not acl.canRegister("my_client", "x")
    assert acl.canGrant("my_node_manager") and not acl.canGrant("my_worker")
    assert not acl.canInvoke("my_node_manager", "x") and not acl.canRegister("my_node_manager", "x")
    assert acl_admin_command(acl, None, ["list"]) == (
        b"my_client\tregister=None\tinvoke=.*\tgrant=False\n"
        b"my_node_manager\tregister=None\tinvoke=None\tgrant=True\n"
        b"my_worker\tregister=.*\tinvoke=None\tgrant=False\n"
        b".\n"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("True", True),
        ("true", True),
        ("yes", True),
        ("1", True),
        ("on", True),
        ("False", False),
        ("no", False),
    ],
)
def test_load_acl_file_grant_booleans(tmp_path: Path, text: str, expected: bool) -> None:
    acl = load_acl_file(write(tmp_path, f"[m]\ninvoke=x\ngrant={text}\n"))
    assert acl.canGrant("m") is expected


def test_load_acl_file_keeps_every_key_together_and_percent_signs(tmp_path: Path) -> None:
    acl = load_acl_file(write(tmp_path, "[Svc.Example CN]\nregister=^a%b\ninvoke=c|d\ngrant=yes\n"))
    (entry,) = acl.getEntries()
    assert (entry.subject, entry.register, entry.invoke) == ("Svc.Example CN", "^a%b", "c|d")
    assert entry.grant is True


def test_load_acl_file_empty_file_is_an_empty_acl(tmp_path: Path) -> None:
    assert load_acl_file(write(tmp_path, "")).getEntries() == []


def test_load_acl_file_bad_regex_names_file_section_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[ok]\ninvoke=.*\n[broken]\nregister=foo(\n")
    with pytest.raises(ACLError) as info:
        load_acl_file(path)
    message = str(info.value)
    assert str(path) in message and "[broken]" in message and "'register'" in message


def test_load_acl_file_unknown_key_names_file_section_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[w]\nregister=.*\ninvokes=.*\n")
    with pytest.raises(ACLError) as info:
        load_acl_file(path)
    message = str(info.value)
    assert str(path) in message and "[w]" in message and "'invokes'" in message


def test_load_acl_file_bad_boolean_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[m]\ngrant=maybe\n")
    with pytest.raises(ACLError) as info:
        load_acl_file(path)
    assert str(path) in str(info.value) and "[m]" in str(info.value) and "'grant'" in str(info.value)


def test_load_acl_file_duplicate_section_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[w]\nregister=a\n[w]\ninvoke=b\n")
    with pytest.raises(ACLError, match="acl.conf"):
        load_acl_file(path)


def test_load_acl_file_syntax_error_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ACLError, match="acl.conf"):
        load_acl_file(write(tmp_path, "register=.*\n"))  # a key outside any section
    with pytest.raises(ACLError, match="missing.conf"):
        load_acl_file(tmp_path / "missing.conf")


def test_load_acl_file_default_section_is_just_a_subject(tmp_path: Path) -> None:
    acl = load_acl_file(write(tmp_path, "[DEFAULT]\ninvoke=.*\n[w]\nregister=r\n"))
    assert acl.canInvoke("DEFAULT", "x")
    assert not acl.canInvoke("w", "x")  # nothing is inherited from a [DEFAULT] section


# --- the acl admin commands -----------------------------------------------------------------------


@pytest.fixture
def seed_acl() -> ACL:
    """The state of the seed document's `acl list` example."""
    acl = ACL()
    acl.add(ACLEntry("worker", register=".*", grant=True))
    acl.add(ACLEntry("client", invoke=".*", grant=True))
    return acl


def test_admin_list_matches_the_seed_example_byte_for_byte(seed_acl: ACL) -> None:
    assert acl_admin_command(seed_acl, "client", ["list"]) == (
        b"client\tregister=None\tinvoke=.*\tgrant=True\nworker\tregister=.*\tinvoke=None\tgrant=True\n.\n"
    )


def test_admin_list_works_for_anyone_and_for_an_empty_acl(seed_acl: ACL) -> None:
    assert acl_admin_command(seed_acl, None, ["list"]).endswith(b"\n.\n")
    assert acl_admin_command(ACL(), None, ["list"]) == b".\n"


def test_admin_accepts_bytes_words(seed_acl: ACL) -> None:
    assert acl_admin_command(seed_acl, "client", [b"grant", b"register", b"new", b"n.*"]) == b"OK\n"
    assert seed_acl.canRegister("new", b"name")


def test_admin_grant_register_seed_example() -> None:
    acl = ACL()
    acl.add(ACLEntry("admin", grant=True))
    assert acl_admin_command(acl, "admin", ["grant", "register", "worker", ".*"]) == b"OK\n"
    assert acl.canRegister("worker", b"anything")
    assert not acl.canInvoke("worker", b"anything")


def test_admin_grant_invoke_and_grant(seed_acl: ACL) -> None:
    assert acl_admin_command(seed_acl, "worker", ["grant", "invoke", "newbie", "^job$"]) == b"OK\n"
    assert seed_acl.canInvoke("newbie", "job") and not seed_acl.canInvoke("newbie", "jobs")
    assert acl_admin_command(seed_acl, "worker", ["grant", "grant", "newbie"]) == b"OK\n"
    assert seed_acl.canGrant("newbie")


def test_admin_grant_pattern_is_the_rest_of_the_line(seed_acl: ACL) -> None:
    assert acl_admin_command(seed_acl, "client", ["grant", "invoke", "x", "a", "b"]) == b"OK\n"
    assert seed_acl.subjects["x"].invoke == "a b"


def test_admin_grant_needs_the_grant_permission() -> None:
    acl = ACL()
    acl.add(ACLEntry("worker", register=".*", invoke=".*"))
    denied = acl_admin_command(acl, "worker", ["grant", "invoke", "worker", ".*"])
    assert is_error(denied, "PERMISSION_DENIED")
    assert is_error(acl_admin_command(acl, None, ["grant", "grant", "x"]), "PERMISSION_DENIED")
    assert is_error(acl_admin_command(acl, "stranger", ["grant", "grant", "stranger"]), "PERMISSION_DENIED")
    assert not acl.canGrant("stranger") and "x" not in acl


def test_admin_grant_unknown_verb(seed_acl: ACL) -> None:
    answer = acl_admin_command(seed_acl, "client", ["grant", "everything", "x", ".*"])
    assert is_error(answer, "UNKNOWN_ACL_VERB")
    # `all` is a revoke verb only
    assert is_error(acl_admin_command(seed_acl, "client", ["grant", "all", "x"]), "UNKNOWN_ACL_VERB")
    assert "x" not in seed_acl


@pytest.mark.parametrize(
    "words",
    [
        ["grant"],
        ["grant", "register"],
        ["grant", "register", "worker"],
        ["grant", "invoke", "worker"],
        ["grant", "grant", "worker", "extra"],
        ["revoke"],
        ["revoke", "register"],
        ["revoke", "register", "worker", "extra"],
        ["self-revoke"],
        ["self-revoke", "register", "extra"],
        ["list", "extra"],
    ],
)
def test_admin_wrong_word_counts(seed_acl: ACL, words: list[str]) -> None:
    before = acl_admin_command(seed_acl, "client", ["list"])
    answer = acl_admin_command(seed_acl, "client", words)
    assert is_error(answer, "INVALID_ARGUMENTS")
    assert acl_admin_command(seed_acl, "client", ["list"]) == before


def test_admin_grant_bad_regex_is_reported_and_changes_nothing(seed_acl: ACL) -> None:
    answer = acl_admin_command(seed_acl, "client", ["grant", "register", "x", "foo("])
    assert is_error(answer, "UNABLE")
    assert "x" not in seed_acl


def test_admin_revoke_seed_example(seed_acl: ACL) -> None:
    assert acl_admin_command(seed_acl, "client", ["revoke", "register", "worker"]) == b"OK\n"
    assert not seed_acl.canRegister("worker", "x") and seed_acl.canGrant("worker")


def test_admin_revoke_each_verb_and_all(seed_acl: ACL) -> None:
    seed_acl.add(ACLEntry("target", register="r", invoke="i", grant=True))
    assert acl_admin_command(seed_acl, "client", ["revoke", "invoke", "target"]) == b"OK\n"
    assert not seed_acl.canInvoke("target", "i") and seed_acl.canRegister("target", "r")
    assert acl_admin_command(seed_acl, "client", ["revoke", "grant", "target"]) == b"OK\n"
    assert not seed_acl.canGrant("target") and "target" in seed_acl
    assert acl_admin_command(seed_acl, "client", ["revoke", "register", "target"]) == b"OK\n"
    assert "target" not in seed_acl  # left empty, so removed
    assert acl_admin_command(seed_acl, "client", ["revoke", "all", "worker"]) == b"OK\n"
    assert "worker" not in seed_acl
    assert acl_admin_command(seed_acl, "client", ["revoke", "all", "ghost"]) == b"OK\n"  # nothing to do


def test_admin_revoke_of_others_needs_grant_but_own_is_always_allowed() -> None:
    acl = ACL()
    acl.add(ACLEntry("worker", register=".*", invoke="x"))
    acl.add(ACLEntry("client", invoke=".*"))
    assert is_error(acl_admin_command(acl, "worker", ["revoke", "invoke", "client"]), "PERMISSION_DENIED")
    assert is_error(acl_admin_command(acl, None, ["revoke", "all", "client"]), "PERMISSION_DENIED")
    assert acl.canInvoke("client", "anything")
    assert acl_admin_command(acl, "worker", ["revoke", "invoke", "worker"]) == b"OK\n"
    assert not acl.canInvoke("worker", "x") and acl.canRegister("worker", "x")
    assert acl_admin_command(acl, "worker", ["revoke", "all", "worker"]) == b"OK\n"
    assert "worker" not in acl


def test_admin_revoke_unknown_verb(seed_acl: ACL) -> None:
    assert is_error(acl_admin_command(seed_acl, "client", ["revoke", "bogus", "worker"]), "UNKNOWN_ACL_VERB")
    assert seed_acl.canRegister("worker", "x")


def test_admin_self_revoke_seed_example_and_all() -> None:
    acl = ACL()
    acl.add(ACLEntry("worker", register=".*", invoke=".*"))
    assert acl_admin_command(acl, "worker", ["self-revoke", "register"]) == b"OK\n"
    assert not acl.canRegister("worker", "x") and acl.canInvoke("worker", "x")
    assert acl_admin_command(acl, "worker", ["self-revoke", "all"]) == b"OK\n"
    assert "worker" not in acl
    assert acl_admin_command(acl, "worker", ["self-revoke", "all"]) == b"OK\n"  # already gone: still OK


def test_admin_self_revoke_grant_and_invoke(seed_acl: ACL) -> None:
    assert acl_admin_command(seed_acl, "client", ["self-revoke", "grant"]) == b"OK\n"
    assert not seed_acl.canGrant("client") and seed_acl.canInvoke("client", "x")
    assert acl_admin_command(seed_acl, "client", ["self-revoke", "invoke"]) == b"OK\n"
    assert "client" not in seed_acl
    assert seed_acl.canGrant("worker")  # nobody else touched


def test_admin_self_revoke_needs_a_subject_and_a_known_verb(seed_acl: ACL) -> None:
    assert is_error(acl_admin_command(seed_acl, None, ["self-revoke", "all"]), "PERMISSION_DENIED")
    assert is_error(acl_admin_command(seed_acl, "client", ["self-revoke", "nope"]), "UNKNOWN_ACL_VERB")
    assert len(seed_acl) == 2


@pytest.mark.parametrize(
    "words", [["list"], ["grant", "grant", "x"], ["revoke", "all", "x"], ["self-revoke", "all"]]
)
def test_admin_without_an_acl_is_disabled(words: list[str]) -> None:
    answer = acl_admin_command(None, "client", words)
    assert is_error(answer, "ACL_DISABLED")


@pytest.mark.parametrize("words", [[], ["frobnicate"], ["LIST"]])
def test_admin_unknown_acl_subcommand(seed_acl: ACL, words: list[str]) -> None:
    assert acl_admin_command(seed_acl, "client", words) == b"ERR UNKNOWN_COMMAND Unknown+server+command\n"


def test_admin_answers_list_non_ascii_subjects_as_utf8() -> None:
    acl = ACL()
    acl.add(ACLEntry("s\u00e9", invoke="\u00e9"))
    assert acl_admin_command(acl, None, ["list"]) == (
        "s\u00e9\tregister=None\tinvoke=\u00e9\tgrant=False\n.\n".encode()
    )
