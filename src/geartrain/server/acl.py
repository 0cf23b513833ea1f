"""Access control: who (a TLS certificate Common Name) may register, invoke and grant which functions.

The model and the admin commands follow gear's ACL (deny by default once an ACL is configured), without its
Python 3 bugs: names may be bytes or str, and `acl grant`/`acl revoke` understand their verbs.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Sequence

__all__ = [
    "ACL",
    "ACLEntry",
    "ACLError",
    "acl_admin_command",
    "load_acl_file",
]


class ACLError(Exception):
    """A bad ACL: a duplicate or missing subject, an invalid regular expression, a malformed ACL file."""


def _text(name: str | bytes) -> str:
    """Names arrive as bytes, patterns are text: decode UTF-8, keeping bad bytes as surrogates."""
    if isinstance(name, bytes):
        return name.decode("utf-8", "surrogateescape")
    return name


def _compile(pattern: str | None, what: str) -> re.Pattern[str] | None:
    if pattern is None or pattern == "":
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ACLError(f"Regular expression error in {what} pattern {pattern!r}: {exc}") from None


class ACLEntry:
    """The permissions of one certificate subject.

    register and invoke are regular expressions matched from the start of a function name (like re.match),
    or None for no permission. An empty pattern is treated as None. grant allows changing other subjects'
    permissions; a subject may always revoke its own.
    """

    def __init__(
        self, subject: str, register: str | None = None, invoke: str | None = None, grant: bool = False
    ) -> None:
        self.subject = subject
        self.register: str | None = None
        self.invoke: str | None = None
        self.grant = False
        self._register: re.Pattern[str] | None = None
        self._invoke: re.Pattern[str] | None = None
        self.setRegister(register)
        self.setInvoke(invoke)
        self.setGrant(grant)

    def __repr__(self) -> str:
        return (
            f"<ACLEntry for {self.subject} register={self.register} invoke={self.invoke} grant={self.grant}>"
        )

    def isEmpty(self) -> bool:  # noqa: N802 - gear's name
        """True when the entry grants nothing at all."""
        return self.register is None and self.invoke is None and not self.grant

    def canRegister(self, name: str | bytes) -> bool:  # noqa: N802
        """Whether this subject may register (CAN_DO) the function `name`."""
        pattern = self._register
        return pattern is not None and pattern.match(_text(name)) is not None

    def canInvoke(self, name: str | bytes) -> bool:  # noqa: N802
        """Whether this subject may submit (and cancel) jobs of the function `name`."""
        pattern = self._invoke
        return pattern is not None and pattern.match(_text(name)) is not None

    def setRegister(self, register: str | None) -> None:  # noqa: N802
        """Set the register pattern (None or "" for none); ACLError on an invalid regular expression."""
        compiled = _compile(register, "register")
        self._register = compiled
        self.register = register if compiled is not None else None

    def setInvoke(self, invoke: str | None) -> None:  # noqa: N802
        """Set the invoke pattern (None or "" for none); ACLError on an invalid regular expression."""
        compiled = _compile(invoke, "invoke")
        self._invoke = compiled
        self.invoke = invoke if compiled is not None else None

    def setGrant(self, grant: bool) -> None:  # noqa: N802
        """Allow or forbid granting and revoking other subjects' permissions."""
        self.grant = bool(grant)


class ACL:
    """An access control list keyed by certificate subject; anything not granted is denied."""

    def __init__(self) -> None:
        self.subjects: dict[str, ACLEntry] = {}

    def __len__(self) -> int:
        return len(self.subjects)

    def __contains__(self, subject: object) -> bool:
        return subject in self.subjects

    def add(self, entry: ACLEntry) -> None:
        """Add an entry; ACLError when the subject already has one."""
        if entry.subject in self.subjects:
            raise ACLError(f"An ACL entry for {entry.subject} already exists")
        self.subjects[entry.subject] = entry

    def remove(self, subject: str) -> None:
        """Remove a subject's entry; ACLError when there is none."""
        if subject not in self.subjects:
            raise ACLError(f"There is no ACL entry for {subject}")
        del self.subjects[subject]

    def getEntries(self) -> list[ACLEntry]:  # noqa: N802
        """The entries, sorted by subject."""
        return [self.subjects[s] for s in sorted(self.subjects)]

    def canRegister(self, subject: str | None, name: str | bytes) -> bool:  # noqa: N802
        """Whether `subject` may register `name`; an unknown (or absent) subject may not."""
        entry = self.subjects.get(subject) if subject is not None else None
        return entry is not None and entry.canRegister(name)

    def canInvoke(self, subject: str | None, name: str | bytes) -> bool:  # noqa: N802
        """Whether `subject` may submit or cancel jobs of `name`; an unknown (or absent) subject may not."""
        entry = self.subjects.get(subject) if subject is not None else None
        return entry is not None and entry.canInvoke(name)

    def canGrant(self, subject: str | None) -> bool:  # noqa: N802
        """Whether `subject` may grant and revoke other subjects' permissions."""
        entry = self.subjects.get(subject) if subject is not None else None
        return entry is not None and entry.grant

    def _entry_for_grant(self, subject: str) -> ACLEntry:
        entry = self.subjects.get(subject)
        if entry is None:
            entry = ACLEntry(subject)
            self.subjects[subject] = entry
        return entry

    def grantInvoke(self, subject: str, invoke: str) -> None:  # noqa: N802
        """Let `subject` invoke functions matching `invoke` (replacing any earlier invoke pattern)."""
        _compile(invoke, "invoke")  # validate first: a bad pattern must not leave an empty entry behind
        self._entry_for_grant(subject).setInvoke(invoke)
        self._drop_if_empty(subject)

    def grantRegister(self, subject: str, register: str) -> None:  # noqa: N802
        """Let `subject` register functions matching `register` (replacing any earlier register pattern)."""
        _compile(register, "register")
        self._entry_for_grant(subject).setRegister(register)
        self._drop_if_empty(subject)

    def grantGrant(self, subject: str) -> None:  # noqa: N802
        """Let `subject` grant and revoke permissions."""
        self._entry_for_grant(subject).setGrant(True)

    def revokeInvoke(self, subject: str) -> None:  # noqa: N802
        """Take away `subject`'s invoke permission (no error when it had none)."""
        entry = self.subjects.get(subject)
        if entry is not None:
            entry.setInvoke(None)
            self._drop_if_empty(subject)

    def revokeRegister(self, subject: str) -> None:  # noqa: N802
        """Take away `subject`'s register permission (no error when it had none)."""
        entry = self.subjects.get(subject)
        if entry is not None:
            entry.setRegister(None)
            self._drop_if_empty(subject)

    def revokeGrant(self, subject: str) -> None:  # noqa: N802
        """Take away `subject`'s grant permission (no error when it had none)."""
        entry = self.subjects.get(subject)
        if entry is not None:
            entry.setGrant(False)
            self._drop_if_empty(subject)

    def _drop_if_empty(self, subject: str) -> None:
        entry = self.subjects.get(subject)
        if entry is not None and entry.isEmpty():
            del self.subjects[subject]


_ACL_FILE_KEYS = ("register", "invoke", "grant")


def load_acl_file(path: str | os.PathLike[str]) -> ACL:
    """Read gear's ACL file: one section per certificate Common Name with register=, invoke= and grant=.

    Raises ACLError naming the file (and the section and key) when the file cannot be read or is invalid.
    """
    filename = str(path)
    parser = configparser.RawConfigParser(default_section="\x00no default section\x00")
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle, source=filename)
    except OSError as exc:
        raise ACLError(f"{filename}: cannot read the ACL file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ACLError(f"{filename}: the ACL file is not UTF-8 text: {exc}") from None
    except configparser.Error as exc:
        raise ACLError(f"{filename}: invalid ACL file: {exc}") from None

    acl = ACL()
    for section in parser.sections():
        for key in parser.options(section):
            if key not in _ACL_FILE_KEYS:
                raise ACLError(
                    f"{filename}: section [{section}]: unknown key {key!r} "
                    f"(expected one of {', '.join(_ACL_FILE_KEYS)})"
                )
        register = parser.get(section, "register", fallback=None)
        invoke = parser.get(section, "invoke", fallback=None)
        grant = False
        if parser.has_option(section, "grant"):
            try:
                grant = parser.getboolean(section, "grant")
            except ValueError:
                raise ACLError(
                    f"{filename}: section [{section}]: key 'grant': not a boolean: "
                    f"{parser.get(section, 'grant')!r}"
                ) from None
        entry = ACLEntry(section, grant=grant)
        for key, value, setter in (
            ("register", register, entry.setRegister),
            ("invoke", invoke, entry.setInvoke),
        ):
            try:
                setter(value)
            except ACLError as exc:
                raise ACLError(f"{filename}: section [{section}]: key {key!r}: {exc}") from None
        acl.add(entry)
    return acl


# The `acl ...` admin commands.

_OK = b"OK\n"
_VERBS_GRANT = ("register", "invoke", "grant")
_VERBS_REVOKE = ("register", "invoke", "grant", "all")


def _error(code: str, message: str) -> bytes:
    """One admin error line in gearmand's shape: `ERR CODE words+joined+by+plus`."""
    return f"ERR {code} {message.replace(' ', '+')}\n".encode("utf-8", "surrogateescape")


def _word(word: str | bytes) -> str:
    return _text(word)


def _list(acl: ACL) -> bytes:
    lines = [
        f"{e.subject}\tregister={e.register}\tinvoke={e.invoke}\tgrant={e.grant}\n" for e in acl.getEntries()
    ]
    lines.append(".\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


def _revoke(acl: ACL, verb: str, subject: str) -> bytes:
    if verb == "register":
        acl.revokeRegister(subject)
    elif verb == "invoke":
        acl.revokeInvoke(subject)
    elif verb == "grant":
        acl.revokeGrant(subject)
    elif verb == "all":
        acl.subjects.pop(subject, None)
    else:
        expected = ", ".join(_VERBS_REVOKE)
        return _error("UNKNOWN_ACL_VERB", f"Unknown ACL verb {verb}; expected one of {expected}")
    return _OK


def _grant(acl: ACL, verb: str, subject: str, args: list[str]) -> bytes:
    if verb == "grant":
        if args:
            return _error("INVALID_ARGUMENTS", "Usage: acl grant grant SUBJECT")
        acl.grantGrant(subject)
        return _OK
    if not args:
        return _error("INVALID_ARGUMENTS", f"Usage: acl grant {verb} SUBJECT PATTERN")
    pattern = " ".join(args)
    try:
        if verb == "register":
            acl.grantRegister(subject, pattern)
        else:
            acl.grantInvoke(subject, pattern)
    except ACLError as exc:
        return _error("UNABLE", str(exc))
    return _OK


def acl_admin_command(acl: ACL | None, subject: str | None, words: Sequence[str | bytes]) -> bytes:
    """Answer one `acl ...` admin command; `words` are the words after `acl`, `subject` the connection's CN.

    `acl list` anyone may run; `acl grant VERB SUBJECT [PATTERN]` needs the grant permission;
    `acl revoke VERB SUBJECT` needs it unless SUBJECT is the connection's own; `acl self-revoke VERB` revokes
    from the connection's own subject. A grant pattern is the rest of the line (words joined by one space).
    """
    args = [_word(w) for w in words]
    if not args or args[0] not in ("list", "grant", "revoke", "self-revoke"):
        return _error("UNKNOWN_COMMAND", "Unknown server command")
    command, args = args[0], args[1:]
    if acl is None:
        return _error("ACL_DISABLED", "No ACL is configured on this server")

    if command == "list":
        if args:
            return _error("INVALID_ARGUMENTS", "Usage: acl list")
        return _list(acl)

    if command == "grant":
        if len(args) < 2:
            return _error("INVALID_ARGUMENTS", "Usage: acl grant VERB SUBJECT [PATTERN]")
        if not acl.canGrant(subject):
            return _error("PERMISSION_DENIED", "This connection may not grant permissions")
        verb, target = args[0], args[1]
        if verb not in _VERBS_GRANT:
            return _error(
                "UNKNOWN_ACL_VERB", f"Unknown ACL verb {verb}; expected one of {', '.join(_VERBS_GRANT)}"
            )
        return _grant(acl, verb, target, args[2:])

    if command == "revoke":
        if len(args) != 2:
            return _error("INVALID_ARGUMENTS", "Usage: acl revoke VERB SUBJECT")
        verb, target = args
        if target != subject and not acl.canGrant(subject):
            return _error("PERMISSION_DENIED", "This connection may not revoke permissions of others")
        return _revoke(acl, verb, target)

    # self-revoke
    if len(args) != 1:
        return _error("INVALID_ARGUMENTS", "Usage: acl self-revoke VERB")
    if subject is None:
        return _error("PERMISSION_DENIED", "This connection has no certificate subject")
    return _revoke(acl, args[0], subject)
