"""The error vocabulary of workload hosting (``nodes._hosting``).

Everything ``Host`` raises on purpose derives from ``HostError``, so the wire
protocol can map one family to error replies.  Following h11, errors are
split by whose fault they are:

* ``RequestError``: the caller asked for something that does not exist or
  cannot work (an unknown workload, bad arguments, a module we refuse);
* ``WorkloadError``: the guest misbehaved (it trapped, ran out of time or
  exited); the host and every other workload are unaffected;
* ``ResourceLimitExceeded``: the request is well formed but the host's
  limits do not allow it;
* ``SnapshotFailed``: a checkpoint or restore failed; ``__cause__`` carries
  the ``snapshot.SnapshotError`` (or wasmtime error) behind it.

Map the most specific class first: ``WorkloadTimeout`` and
``WorkloadExited`` are ``WorkloadTrap`` subclasses, and ``DeadlineExceeded``
(what a guest that runs past its deadline raises) is a ``WorkloadTimeout``.

A trap or a deadline ends one call of one workload: its Store stays usable
and keeps its memory and globals as the guest left them at the trap (wasm
semantics: nothing is rolled back); the next call runs on that state.
Other workloads have their own Stores and are unaffected.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "HostError",
    "HostClosed",
    "RequestError",
    "UnknownModule",
    "UnknownWorkload",
    "UnknownExport",
    "BadArguments",
    "WorkloadExists",
    "InvalidModule",
    "UnsupportedImports",
    "ResourceLimitExceeded",
    "WorkloadError",
    "WorkloadTrap",
    "WorkloadTimeout",
    "DeadlineExceeded",
    "WorkloadExited",
    "SnapshotFailed",
]


class HostError(Exception):
    """Base class of every error ``Host`` raises on purpose."""


class HostClosed(HostError):
    """The host was closed; it runs nothing more."""


# --- the caller's fault -------------------------------------------------

class RequestError(HostError):
    """The caller asked for something that does not exist or cannot work."""


class UnknownModule(RequestError):
    """No module with this sha256 is cached on this host."""


class UnknownWorkload(RequestError):
    """No workload with this id runs on this host."""


class UnknownExport(RequestError):
    """The workload has no callable export of this name."""


class BadArguments(RequestError, ValueError):
    """Arguments do not fit: wrong count or type, out of range, malformed id.

    Also a ``ValueError``, so callers that check Python values catch it.
    """


class WorkloadExists(RequestError):
    """A workload with this id already runs on this host."""


class InvalidModule(RequestError):
    """The bytes are not a module this host can prepare and compile."""


class UnsupportedImports(InvalidModule):
    """The module imports something the host does not provide.

    ``imports`` lists them as ``"module::name (kind)"``.
    """

    def __init__(self, imports: Iterable[str]) -> None:
        self.imports = tuple(imports)
        super().__init__(
            "module imports what this host does not provide "
            "(only wasi_snapshot_preview1 functions are available): "
            + ", ".join(self.imports)
        )


# --- the host's limits --------------------------------------------------

class ResourceLimitExceeded(HostError):
    """The request would exceed one of the host's ``Limits``.

    ``limit`` names the ``Limits`` field, ``requested`` and ``allowed`` give
    the figures.  ``started`` is False when the operation it stopped had
    not begun (a wake refused: the workload stays hibernated).
    """

    started: bool = True

    def __init__(self, limit: str, requested: int | float, allowed: int | float, detail: str = "") -> None:
        self.limit = limit
        self.requested = requested
        self.allowed = allowed
        message = f"{limit} exceeded: {requested} requested, {allowed} allowed"
        super().__init__(f"{message} ({detail})" if detail else message)


# --- the guest's fault --------------------------------------------------

class WorkloadError(HostError):
    """The guest misbehaved; the host and other workloads are unaffected."""

    def __init__(self, workload_id: str, message: str) -> None:
        self.workload_id = workload_id
        super().__init__(f"workload {workload_id}: {message}")


class WorkloadTrap(WorkloadError):
    """The guest trapped.  ``trap_code`` is wasmtime's code in lower case
    (``"unreachable"``, ``"stack_overflow"``, ...) or None."""

    def __init__(self, workload_id: str, message: str, *, trap_code: str | None = None) -> None:
        self.trap_code = trap_code
        super().__init__(workload_id, message)


class WorkloadTimeout(WorkloadTrap):
    """The guest ran past its time budget and was interrupted."""

    def __init__(self, workload_id: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(workload_id, f"exceeded its {timeout_s} s time budget", trap_code="interrupt")


class DeadlineExceeded(WorkloadTimeout):
    """The guest ran past its per-call deadline (``Limits.call_timeout_s``) and was stopped.

    The call counts as answered with this error; the workload stays usable.
    """


class CallCancelled(WorkloadTrap):
    """The caller cancelled the call.  ``started``: it had begun, was stopped
    midway and keeps what it did so far (like a trap); else it never ran."""

    def __init__(self, workload_id: str, *, started: bool) -> None:
        self.started = started
        super().__init__(workload_id, "the call was cancelled by its caller" +
                         (" and stopped while it ran" if started else " before it started"), trap_code="cancelled")


class WorkloadExited(WorkloadTrap):
    """The guest called WASI ``proc_exit``; ``exit_code`` is its status."""

    def __init__(self, workload_id: str, exit_code: int) -> None:
        self.exit_code = exit_code
        super().__init__(workload_id, f"exited with status {exit_code}", trap_code="exit")


# --- snapshots ----------------------------------------------------------

class SnapshotFailed(HostError):
    """Capturing or restoring a workload's state failed.

    ``__cause__`` is the underlying ``snapshot.SnapshotError``.  ``started``
    is False when the operation it stopped had not begun (a wake that
    failed: the workload stays hibernated).
    """

    started: bool = True

    def __init__(self, workload_id: str, message: str) -> None:
        self.workload_id = workload_id
        super().__init__(f"workload {workload_id}: {message}")
