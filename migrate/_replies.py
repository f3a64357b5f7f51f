"""A request's reply by its class: ``NodeClient.request`` is typed to return any ``Reply``.

The connection already refuses a reply of another class than the one the
request names (``RemoteProtocolError``), so ``expect`` never fails on a
reply read from a node; it tells the type checker, and a reader, which
class the caller uses.
"""

from __future__ import annotations

from typing import TypeVar

from nodes import RemoteProtocolError, Reply

R = TypeVar("R", bound=Reply)


def expect(kind: type[R], reply: Reply) -> R:
    """``reply`` as a ``kind``; raises RemoteProtocolError if it is another class."""
    if not isinstance(reply, kind):
        raise RemoteProtocolError(f"expected a {kind.__name__} reply, got {type(reply).__name__}")
    return reply
