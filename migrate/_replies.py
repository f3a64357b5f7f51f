"""Replies with the types migrate uses: a request's reply by its class, an ErrorReply with migrate's codes.

``NodeClient.request`` is typed to return any ``Reply``.  The connection
already refuses a reply of another class than the one the request names
(``RemoteProtocolError``), so ``expect`` never fails on a reply read from
a node; it tells the type checker, and a reader, which class the caller
uses.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from nodes import ErrorReply, RemoteProtocolError, Reply

R = TypeVar("R", bound=Reply)


def expect(kind: type[R], reply: Reply) -> R:
    """``reply`` as a ``kind``; raises RemoteProtocolError if it is another class."""
    if not isinstance(reply, kind):
        raise RemoteProtocolError(f"expected a {kind.__name__} reply, got {type(reply).__name__}")
    return reply


def error(request_id: int, code: str, message: str, details: dict[str, Any] | None = None) -> ErrorReply:
    """An ErrorReply with another package's ``code`` (a ``MigrationCode``, or one read back from a ledger).

    ``ErrorReply.code`` is typed as the nodes package's own codes or its
    private ``Code`` (a NewType of str): any string is one on the wire.
    """
    return ErrorReply(id=request_id, code=cast(Any, code), message=message, details=details)
