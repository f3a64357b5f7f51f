"""What goes into and comes out of the ownership machine (``_ownership``): events, actions, refusals.

Events are what happened to one workload on one node: a local step
(spawn, a move beginning, freezing, a restart loading its records ...), a
message from a peer (an incoming copy, a commit, an abort, a promotion
...) or a timer that came due.  Actions are what the node must do about
it: send a copy, ask for a commit, answer a commit, redirect calls, tell
a peer to drop its copy, drop the local copy, persist a record.  All are
frozen dataclasses and enums: nothing here matches strings, sleeps,
sends or reads a clock (the time comes in with the event).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._ownership import State


class EventKind(enum.Enum):
    """What happened to a workload on a node; ``TRANSITIONS`` says which states accept each."""

    # Local steps of this node.
    SPAWN = "spawn"                    # deployed (or adopted) here at epoch 1
    LOAD_OWNED = "load_owned"          # a restart brought back an owned workload's record
    LOAD_IN_DOUBT = "load_in_doubt"    # a restart found a commit it asked for and never heard back on
    LOAD_TOMBSTONE = "load_tombstone"  # a restart brought back where a workload went
    REMOVE = "remove"                  # the workload was removed by a call
    BEGIN_MOVE = "begin_move"          # a move to ``peer`` starts
    FREEZE = "freeze"                  # calls are held; the target is asked to commit
    THAW = "thaw"                      # the commit was refused or failed; calls run again, the move goes on
    MOVE_ABORTED = "move_aborted"      # the move ended without a commit
    COPY_REMOVED = "copy_removed"      # the copy left behind by a commit or a failover is gone from the host
    KEEP_STANDBY = "keep_standby"      # the copy left behind by a commit stays as the new owner's hot standby
    SUPERSEDED = "superseded"          # a restart found its standby took over (it owns a higher epoch)
    DROP = "drop"                      # the received copy was dropped here (bad stream, divergence)
    DROP_STAGING = "drop_staging"      # the new standby copy being staged was dropped
    SWAP_IN = "swap_in"                # the staged standby copy replaced the aligned one
    # Messages from peers.
    INCOMING_MOVE = "incoming_move"        # MIncoming: a move's copy is coming
    INCOMING_STANDBY = "incoming_standby"  # MIncoming(standby): a hot standby copy is coming
    COMMIT = "commit"                      # MCommit: take ownership of the move's copy
    COMMIT_STANDBY = "commit_standby"      # MCommit(from_standby): take ownership of the standby copy
    COMMITTED = "committed"                # MCommitted: the target owns the workload now
    PROMOTE = "promote"                    # MPromote: the owner is gone; the standby takes over
    ABORT = "abort"                        # MAbort: drop the copy at this epoch
    # Timers.
    TIMEOUT = "timeout"                    # a commit asked for went unanswered past its deadline


LOCAL_EVENTS = frozenset({
    EventKind.SPAWN, EventKind.LOAD_OWNED, EventKind.LOAD_IN_DOUBT, EventKind.LOAD_TOMBSTONE, EventKind.REMOVE,
    EventKind.BEGIN_MOVE, EventKind.FREEZE, EventKind.THAW, EventKind.MOVE_ABORTED, EventKind.COPY_REMOVED,
    EventKind.KEEP_STANDBY,
    EventKind.SUPERSEDED, EventKind.DROP, EventKind.DROP_STAGING, EventKind.SWAP_IN})
REMOTE_EVENTS = frozenset({
    EventKind.INCOMING_MOVE, EventKind.INCOMING_STANDBY, EventKind.COMMIT, EventKind.COMMIT_STANDBY,
    EventKind.COMMITTED, EventKind.PROMOTE, EventKind.ABORT})
TIMER_EVENTS = frozenset({EventKind.TIMEOUT})


@dataclass(frozen=True)
class Peer:
    """A node, by name and address, holding (or about to hold) the workload at ``epoch``."""

    name: str
    address: str
    epoch: int


@dataclass(frozen=True)
class Event:
    """One event for one workload.

    ``epoch`` is the epoch the event is about (the message's, or a loaded
    record's); ``peer`` the other node involved (a move's target, where a
    tombstone points, the node asking for a commit); ``now`` the caller's
    clock, in seconds; ``staged`` marks a standby copy received under a
    staging id while the aligned one keeps serving.
    """

    kind: EventKind
    epoch: int = 0
    peer: Peer | None = None
    now: float = 0.0
    staged: bool = False

    def __post_init__(self) -> None:
        if self.kind in NEEDS_PEER and self.peer is None:
            raise ValueError(f"a {self.kind.value} event names the other node")


#: Events that name the other node: where a move goes, where a tombstone points, who took over.
NEEDS_PEER = frozenset({EventKind.BEGIN_MOVE, EventKind.LOAD_IN_DOUBT, EventKind.LOAD_TOMBSTONE,
                        EventKind.SUPERSEDED})


# --- actions ---------------------------------------------------------------


@dataclass(frozen=True)
class _ToPeer:
    to: Peer


class Send(_ToPeer):
    """Send the workload's copy to ``to`` at ``to.epoch`` (MIncoming, then rounds)."""


class Commit(_ToPeer):
    """With calls held, ask ``to`` to take ownership at ``to.epoch`` (MCommit), carrying the ledger."""


class Redirect(_ToPeer):
    """Answer queued and later calls with where the workload went (an MResult naming ``to``)."""


class Abort(_ToPeer):
    """Tell ``to`` to drop the copy it received at ``to.epoch`` (MAbort)."""


@dataclass(frozen=True)
class Committed:
    """This node owns the workload at ``epoch`` now: take it over on the host, answer MCommitted."""

    epoch: int


@dataclass(frozen=True)
class Drop:
    """Remove this node's copy from the host (received, fenced off, or left behind by a move)."""


class Kept(enum.Enum):
    """What a node's persisted record of a workload says."""

    OWNED = "owned"          # it owns the workload at ``epoch``
    IN_DOUBT = "in_doubt"    # it owns it at ``epoch`` and asked ``peer`` to commit at ``peer.epoch``
    TOMBSTONE = "tombstone"  # it went to ``peer`` at ``peer.epoch``


@dataclass(frozen=True)
class Durable:
    """The part of a workload's ownership that must survive a restart of its node."""

    kept: Kept
    epoch: int
    peer: Peer | None = None


@dataclass(frozen=True)
class Persist:
    """Keep ``record`` (None: keep nothing) as this node's durable record of the workload."""

    record: Durable | None


Action = Send | Commit | Committed | Redirect | Abort | Drop | Persist


# --- refusals ----------------------------------------------------------------


class Refusal(enum.Enum):
    """Why an event the table accepts in this state was refused by its guard."""

    STALE = "stale"            # the epoch is not newer than (or not the one) this node holds
    BUSY = "busy"              # a copy at a newer epoch (or a move) is under way here
    NO_STAGING = "no_staging"  # no staged standby copy to swap in or drop
    NOT_DUE = "not_due"        # a timer event before its deadline


class OwnershipError(Exception):
    """An event the ownership machine does not take; the state is unchanged."""


class IllegalTransition(OwnershipError):
    """The transitions table has no entry for this event in this state."""

    def __init__(self, workload: str, state: State, kind: EventKind) -> None:
        super().__init__(f"{workload}: no transition for {kind.value} in state {state.value}")
        self.workload, self.state, self.kind = workload, state, kind


class Refused(OwnershipError):
    """The table accepts the event in this state, but its guard (epochs, a copy under way) refuses it."""

    def __init__(self, workload: str, state: State, kind: EventKind, reason: Refusal, held: int) -> None:
        super().__init__(f"{workload}: {kind.value} refused in state {state.value} at epoch {held} "
                         f"({reason.value})")
        self.workload, self.state, self.kind, self.reason, self.held = workload, state, kind, reason, held
