"""Errors across the wire: a raised exception becomes an ErrorReply, and back.

The hosting layer's ``HostError`` classes map one-to-one onto ``ErrorCode``
values, so a client raises the very class the node's ``Host`` raised, with
the same message and attributes (``workload_id``, ``trap_code``, ``limit``,
``requested``...).  Codes that name no host error become
``RemoteNodeError`` with the code attached, but ``forbidden``, which
becomes ``Forbidden`` (a RemoteNodeError) with the refused ``kind`` and ``role``.
"""

from __future__ import annotations

from typing import Any

from . import _host_errors as he
from ._errors import Forbidden, RemoteNodeError
from ._messages import ErrorCode, ErrorReply
from ._replay import ReplayDivergence, ReplayUnsupported
from ._wire import FieldError, check_plain

# Keyed by str: a reply's code is an ErrorCode or another package's plain
# string (``Code``), and an ErrorCode (a StrEnum) is found by its string.
_CLASS_FOR_CODE: dict[str, type[Exception]] = {
    ErrorCode.HOST_ERROR: he.HostError,
    ErrorCode.HOST_CLOSED: he.HostClosed,
    ErrorCode.BAD_REQUEST: he.RequestError,
    ErrorCode.UNKNOWN_MODULE: he.UnknownModule,
    ErrorCode.UNKNOWN_WORKLOAD: he.UnknownWorkload,
    ErrorCode.UNKNOWN_EXPORT: he.UnknownExport,
    ErrorCode.BAD_ARGUMENTS: he.BadArguments,
    ErrorCode.WORKLOAD_EXISTS: he.WorkloadExists,
    ErrorCode.INVALID_MODULE: he.InvalidModule,
    ErrorCode.UNSUPPORTED_IMPORTS: he.UnsupportedImports,
    ErrorCode.RESOURCE_LIMIT: he.ResourceLimitExceeded,
    ErrorCode.WORKLOAD_ERROR: he.WorkloadError,
    ErrorCode.WORKLOAD_TRAP: he.WorkloadTrap,
    ErrorCode.WORKLOAD_TIMEOUT: he.WorkloadTimeout,
    ErrorCode.DEADLINE_EXCEEDED: he.DeadlineExceeded,
    ErrorCode.WORKLOAD_EXITED: he.WorkloadExited,
    ErrorCode.CALL_CANCELLED: he.CallCancelled,
    ErrorCode.SNAPSHOT_FAILED: he.SnapshotFailed,
    ErrorCode.REPLAY_DIVERGED: ReplayDivergence,
    ErrorCode.REPLAY_UNSUPPORTED: ReplayUnsupported,
}
_CODE_FOR_CLASS = {cls: ErrorCode(code) for code, cls in _CLASS_FOR_CODE.items()}


def code_for(exc: BaseException) -> ErrorCode:
    """Return the wire code of a HostError (its most specific mapped class), else INTERNAL."""
    for cls in type(exc).__mro__:
        code = _CODE_FOR_CLASS.get(cls)
        if code is not None:
            return code
    return ErrorCode.INTERNAL


def error_reply(request_id: int, exc: BaseException) -> ErrorReply:
    """Return the ErrorReply that carries ``exc`` (its code, message and plain attributes)."""
    details: dict[str, Any] = {}
    for name, value in vars(exc).items():
        try:
            details[name] = check_plain(value)
        except FieldError:
            continue  # not representable on the wire; the message still says it
    return ErrorReply(id=request_id, code=code_for(exc), message=str(exc), details=details or None)


def exception_for(reply: ErrorReply) -> Exception:
    """Return the exception a client raises for ``reply``.

    Host errors come back as their own class, built without calling its
    ``__init__`` (whose signature varies) but with the node's message and
    attributes, so ``str(exc)`` and ``exc.workload_id`` match the node's.
    """
    cls = _CLASS_FOR_CODE.get(reply.code)
    if reply.code == ErrorCode.FORBIDDEN:
        details = reply.details or {}
        return Forbidden(ErrorCode.FORBIDDEN, reply.message, kind=str(details.get("kind", "")),
                         role=str(details.get("role", "")))
    if cls is None:
        return RemoteNodeError(reply.code, reply.message)
    exc = cls.__new__(cls)
    Exception.__init__(exc, reply.message)
    for name, value in (reply.details or {}).items():
        setattr(exc, name, value)
    return exc
