"""What an application asks for and sees of protection: modes, settings, status, events, failure."""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import MigrateError

MODES = ("off", "checkpoint", "standby")


@dataclass(frozen=True)
class Protection:
    """How a workload is protected against losing its node.

    ``mode`` is "off", "checkpoint" (``interval_s`` says how often a
    checkpoint is fetched; ``to`` is the node that rebuilds the workload,
    "local" being the application's own node) or "standby" (the owner keeps
    a hot replica on node ``to``, which replays every call as it happens
    and takes over at once).
    """

    mode: str = "checkpoint"
    interval_s: float = 1.0
    to: str = "local"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"protection mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {self.interval_s!r}")


@dataclass(frozen=True)
class Event:
    """Something that happened to a workload: "moved", "failed_over" or "diverged"."""

    kind: str
    workload: str
    node: str
    detail: str = ""


@dataclass(frozen=True)
class ProtectionStatus:
    """How a workload is protected right now, as its application sees it.

    ``checkpoint_index`` is the last operation the held checkpoint
    includes (None: no checkpoint held); ``log_entries`` and ``log_bytes``
    count the logged operations after it (or after what the standby
    reported it has replayed).
    """

    mode: str
    to: str
    checkpoint_index: int | None
    checkpoint_bytes: int
    checkpoint_parts: int
    log_entries: int
    log_bytes: int
    failovers: int


class FailoverFailed(MigrateError):
    """The workload could not be rebuilt from its checkpoint and log.

    ``diverged`` is True if the failover node refused the replay of the log
    as diverged (it dropped the copy).
    """

    def __init__(self, message: str, *, diverged: bool = False) -> None:
        super().__init__(message)
        self.diverged = diverged
