"""The migrate package's error vocabulary, under one base class."""

from __future__ import annotations


class MigrateError(Exception):
    """Base class of the errors the migrate package raises itself.

    Workload failures (a trap, a timeout, an unknown export) keep the
    hosting layer's classes from ``nodes`` (``WorkloadTrap``...), so code
    that calls a workload directly or through a handle catches the same
    exceptions.
    """


class UnknownNode(MigrateError):
    """A node name that the cluster does not know."""


class MigrationFailed(MigrateError):
    """A move was refused or aborted; the workload kept running at its source."""


class WorkloadUnavailable(MigrateError):
    """No node could serve a call through a handle.

    ``ran`` says what is known of the call: False if it certainly did not
    run, None if it may have run on a node that has since become
    unreachable (retrying with the same handle later is safe either way:
    a call never runs twice).
    """

    def __init__(self, message: str, *, ran: bool | None) -> None:
        super().__init__(message)
        self.ran = ran


class NoSuitableNode(MigrateError):
    """No node can take a workload placed with ``on="auto"``: ``rejected`` says, per node, why not."""

    def __init__(self, message: str, *, rejected: dict[str, tuple[str, ...]]) -> None:
        super().__init__(message)
        self.rejected = rejected
