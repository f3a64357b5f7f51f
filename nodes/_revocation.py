"""The revocation list: certificates a node no longer accepts, by serial number or by name.

A plain text file (``--revoked``; by default ``TLS_DIR/revoked.txt``), one
entry a line; blank lines and ``#`` comments are ignored::

    serial:0x5f3a...     a certificate's serial number (hex with 0x, or decimal)
    name:app-7           every certificate that covers this name (CN or DNS SAN)

An absent file revokes nothing.  ``migrate-node cert revoke --list FILE
ENTRY`` appends an entry (a bare ``app-7`` means ``name:app-7``, a bare
``0x5f3a`` means ``serial:0x5f3a``); ``cert issue`` and ``cert show``
print a certificate's serial.  A node re-reads the list on SIGHUP and when
the file changes (``nodes._credentials``): a Hello with a revoked
certificate is refused (``nodes._authorization.hello_refusal``) and the
connections already open with one are closed.  A list that does not parse
is refused whole, naming the line, and the node keeps the previous one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._errors import ConfigError
from ._tls import Identity


@dataclass(frozen=True)
class Revocations:
    """The serials and names a revocation list names."""

    serials: frozenset[int] = frozenset()
    names: frozenset[str] = frozenset()

    def refusal(self, identity: Identity | None) -> str | None:
        """Why a certificate whose holder is ``identity`` is revoked; None if it is not (or without TLS)."""
        if identity is None:
            return None
        if identity.serial in self.serials:
            return f"the certificate with serial:{identity.serial:#x} ({identity.name}) is revoked"
        named = [name for name in identity.names if name in self.names]
        if named:
            return f"certificates of name:{named[0]} are revoked"
        return None


def entry(text: str) -> tuple[str, int | str]:
    """Parse one entry into ("serial", int) or ("name", str); bare serials and names are accepted.

    Raises ConfigError if it is neither.
    """
    text = text.strip()
    kind, sep, value = text.partition(":")
    if not sep:
        kind, value = ("serial", text) if text[:2].lower() == "0x" or text.isdigit() else ("name", text)
    value = value.strip()
    if kind == "serial":
        try:
            serial = int(value, 0)
        except ValueError:
            raise ConfigError(f"{text!r}: a serial is hex with 0x, or decimal") from None
        if serial <= 0:
            raise ConfigError(f"{text!r}: a serial is positive")
        return "serial", serial
    if kind == "name" and value and not any(c.isspace() for c in value):
        return "name", value
    raise ConfigError(f"{text!r} is not serial:NUMBER or name:NAME")


def parse(text: str, source: str = "the revocation list") -> Revocations:
    """Parse a revocation list.  Raises ConfigError naming ``source`` and the line."""
    serials: set[int] = set()
    names: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            kind, value = entry(line)
        except ConfigError as exc:
            raise ConfigError(f"{source} line {number}: {exc}") from None
        if isinstance(value, int):  # entry gives ("serial", an int) or ("name", a str)
            serials.add(value)
        else:
            names.add(value)
    return Revocations(frozenset(serials), frozenset(names))


def load(path: Path) -> Revocations:
    """Read the revocation list at ``path``; an absent file revokes nothing.  Raises ConfigError."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return Revocations()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the revocation list {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse(text, str(path))


def revoke(path: Path, text: str) -> str:
    """Append an entry to the revocation list at ``path`` (made if absent); return it as written.

    Raises ConfigError for a bad entry or a list that cannot be written.
    """
    kind, value = entry(text)
    line = f"serial:{value:#x}" if kind == "serial" else f"name:{value}"
    path = Path(path)
    try:
        existing = path.read_text() if path.exists() else ""
        with open(path, "a") as f:
            f.write(("" if not existing or existing.endswith("\n") else "\n") + line + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write the revocation list {path}: {exc.strerror}") from None
    return line
