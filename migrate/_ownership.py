"""The ownership protocol of a node, sans-IO: per workload, a state, an epoch and the transitions table.

``Ownership`` holds one ``Record`` per workload this node knows of.  Every
change of a workload's state or epoch on the node is one call,
``Ownership.handle(workload, event)``: it looks ``(state, event.kind)`` up
in ``TRANSITIONS`` (no entry: ``IllegalTransition``), checks the event's
guard (epochs; refused: ``Refused`` with a ``Refusal``), stores the new
record and returns the actions for the caller to carry out (``Send``,
``Commit``, ``Committed``, ``Redirect``, ``Abort``, ``Drop``,
``Persist``; see ``_ownership_events``).  Nothing here does I/O, sleeps
or reads a clock: the time comes in with the event, and ``due(now)``
names the records whose timer passed.

States
------

``ABSENT``              nothing known here (also every workload never seen)
``OWNED``               owned at ``epoch``; calls run here
``SENDING``             owned at ``epoch``, its copy going to ``move`` at ``epoch + 1``; calls run
``FROZEN``              calls held, the target asked to commit at ``move.epoch``; in doubt until it answers
``COMMITTED_ELSEWHERE`` the target committed; calls are redirected; the old copy is still on the host
``TOMBSTONED``          it went to ``forward`` (at ``forward.epoch``); calls are redirected
``FAILED_OVER``         its standby took over while this node was down (found on restart): the copy here is fenced off
``RECEIVING``           a move's copy at ``epoch`` is arriving; not callable
``STANDBY``             a hot standby copy at ``epoch`` (maybe a new one ``staging``); not callable

A ``RECEIVING`` or ``STANDBY`` record keeps the ``forward`` of a tombstone
it replaced (calls are still redirected there); when that copy is
dropped the record rests in ``TOMBSTONED`` instead of the table's
``ABSENT``.  That is the one rule outside the table.

::

                          SPAWN, LOAD_OWNED
    ABSENT, TOMBSTONED ------------------------> OWNED <-----------------------------+
          ^                                      |  ^  ^                             |
          |  REMOVE (from OWNED or SENDING)      |  |  | MOVE_ABORTED (fenced once   |
          +--------------------------------------+  |  | the commit was asked)       |
                                      BEGIN_MOVE |  |  |                             |
                                                 v  |  |                             |
                                               SENDING <----- THAW -----+            |
                                                 |                      |            |
                                          FREEZE |   LOAD_IN_DOUBT      |   TIMEOUT  |
                                                 v   (from ABSENT)      |   (fenced) |
                                               FROZEN ------------------+------------+
                                                 |
                                       COMMITTED |
                                                 v
                                       COMMITTED_ELSEWHERE --COPY_REMOVED--> TOMBSTONED
                                                 |
                                    KEEP_STANDBY +--> STANDBY (the left copy is the new owner's standby)
    OWNED ---SUPERSEDED---> FAILED_OVER ---COPY_REMOVED---> TOMBSTONED
    ABSENT ---LOAD_TOMBSTONE---> TOMBSTONED

    ABSENT, TOMBSTONED, OWNED (older epoch), RECEIVING, STANDBY
          ---INCOMING_MOVE---> RECEIVING ---COMMIT---> OWNED
          ---INCOMING_STANDBY--> STANDBY ---PROMOTE, COMMIT_STANDBY---> OWNED
    STANDBY ---INCOMING_STANDBY (staged), SWAP_IN, DROP_STAGING---> STANDBY
    RECEIVING, STANDBY ---ABORT, DROP---> ABSENT (TOMBSTONED if it keeps a forward)
    ABSENT ---MOVE_ABORTED---> ABSENT (the workload was removed during its move)

Epochs only grow: an owner's epoch changes on taking ownership (the
commit's or promotion's epoch) and on a move aborted after the target
was asked to commit (to the move's epoch + 1, so a target that
committed unseen is outranked; a move aborted before that keeps the
epoch, so a stale owner's failed move never outranks the real owner).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import TypeVar

from ._ownership_events import (
    Abort,
    Action,
    Commit,
    Committed,
    Drop,
    Durable,
    Event,
    EventKind as E,
    IllegalTransition,
    Kept,
    Peer,
    Persist,
    Redirect,
    Refusal,
    Refused,
    Send,
)

#: Seconds a commit asked for may go unanswered before the ``TIMEOUT`` timer is due.
COMMIT_TIMEOUT_S = 10.0

T = TypeVar("T")


class State(enum.Enum):
    ABSENT = "absent"
    OWNED = "owned"
    SENDING = "sending"
    FROZEN = "frozen"
    COMMITTED_ELSEWHERE = "committed_elsewhere"
    TOMBSTONED = "tombstoned"
    FAILED_OVER = "failed_over"
    RECEIVING = "receiving"
    STANDBY = "standby"


S = State
#: States in which this node owns the workload (its epoch is the owner's).
OWNING = frozenset({S.OWNED, S.SENDING, S.FROZEN})
#: States in which this node holds a copy it does not own.
HOLDING = frozenset({S.RECEIVING, S.STANDBY})
#: States in which calls are redirected to ``forward``.
FORWARDING = frozenset({S.COMMITTED_ELSEWHERE, S.TOMBSTONED, S.FAILED_OVER})

#: (state, event kind) -> the next state.  An event absent from it is an IllegalTransition.
TRANSITIONS: dict[tuple[State, E], State] = {
    (S.ABSENT, E.SPAWN): S.OWNED,
    (S.TOMBSTONED, E.SPAWN): S.OWNED,
    (S.ABSENT, E.LOAD_OWNED): S.OWNED,
    (S.TOMBSTONED, E.LOAD_OWNED): S.OWNED,
    (S.ABSENT, E.LOAD_IN_DOUBT): S.FROZEN,
    (S.ABSENT, E.LOAD_TOMBSTONE): S.TOMBSTONED,
    (S.OWNED, E.REMOVE): S.ABSENT,
    (S.SENDING, E.REMOVE): S.ABSENT,
    (S.OWNED, E.BEGIN_MOVE): S.SENDING,
    (S.SENDING, E.FREEZE): S.FROZEN,
    (S.FROZEN, E.THAW): S.SENDING,
    (S.SENDING, E.MOVE_ABORTED): S.OWNED,
    (S.ABSENT, E.MOVE_ABORTED): S.ABSENT,  # the workload was removed while its copy was being sent
    (S.FROZEN, E.TIMEOUT): S.OWNED,
    (S.FROZEN, E.COMMITTED): S.COMMITTED_ELSEWHERE,
    (S.COMMITTED_ELSEWHERE, E.COPY_REMOVED): S.TOMBSTONED,
    (S.COMMITTED_ELSEWHERE, E.KEEP_STANDBY): S.STANDBY,
    (S.OWNED, E.SUPERSEDED): S.FAILED_OVER,
    (S.FAILED_OVER, E.COPY_REMOVED): S.TOMBSTONED,
    (S.ABSENT, E.INCOMING_MOVE): S.RECEIVING,
    (S.TOMBSTONED, E.INCOMING_MOVE): S.RECEIVING,
    (S.OWNED, E.INCOMING_MOVE): S.RECEIVING,
    (S.RECEIVING, E.INCOMING_MOVE): S.RECEIVING,
    (S.STANDBY, E.INCOMING_MOVE): S.RECEIVING,
    (S.ABSENT, E.INCOMING_STANDBY): S.STANDBY,
    (S.TOMBSTONED, E.INCOMING_STANDBY): S.STANDBY,
    (S.OWNED, E.INCOMING_STANDBY): S.STANDBY,
    (S.RECEIVING, E.INCOMING_STANDBY): S.STANDBY,
    (S.STANDBY, E.INCOMING_STANDBY): S.STANDBY,
    (S.STANDBY, E.SWAP_IN): S.STANDBY,
    (S.STANDBY, E.DROP_STAGING): S.STANDBY,
    (S.RECEIVING, E.ABORT): S.ABSENT,
    (S.STANDBY, E.ABORT): S.ABSENT,
    (S.RECEIVING, E.DROP): S.ABSENT,
    (S.STANDBY, E.DROP): S.ABSENT,
    (S.RECEIVING, E.COMMIT): S.OWNED,
    (S.STANDBY, E.COMMIT_STANDBY): S.OWNED,
    (S.STANDBY, E.PROMOTE): S.OWNED,
}


@dataclass(frozen=True)
class Record:
    """One workload's ownership on this node.

    ``epoch``: the owner's epoch in OWNING states, the copy's in HOLDING
    ones, the new owner's in FORWARDING ones.  ``move``: where a move
    sends the copy, at ``epoch + 1`` (SENDING, FROZEN).  ``forward``: where
    calls are redirected.  ``staging``: the epoch of a new standby copy
    being staged (STANDBY).  ``deadline``: when an unanswered commit
    times out (FROZEN).  ``asked``: the move asked the target to commit
    (SENDING after a THAW, FROZEN), so it may have committed unseen.
    """

    state: State = S.ABSENT
    epoch: int = 0
    move: Peer | None = None
    forward: Peer | None = None
    staging: int | None = None
    deadline: float | None = None
    asked: bool = False


ABSENT = Record()


def durable(record: Record) -> Durable | None:
    """What a restart must bring back of ``record``: owned (maybe in doubt), a tombstone, or nothing."""
    if record.state is S.FROZEN:
        return Durable(Kept.IN_DOUBT, record.epoch, record.move)
    if record.state in OWNING:
        return Durable(Kept.OWNED, record.epoch)
    if record.forward is not None:
        return Durable(Kept.TOMBSTONE, record.forward.epoch, record.forward)
    return None


def load_event(kept: Durable, now: float = 0.0) -> Event:
    """The event that brings a persisted record back after a restart."""
    kind = {Kept.OWNED: E.LOAD_OWNED, Kept.IN_DOUBT: E.LOAD_IN_DOUBT, Kept.TOMBSTONE: E.LOAD_TOMBSTONE}[kept.kept]
    return Event(kind, kept.epoch, kept.peer, now=now)


class Ownership:
    """The ownership records of one node's workloads and the one method that changes them."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}

    def record(self, workload: str) -> Record:
        return self.records.get(workload, ABSENT)

    def state(self, workload: str) -> State:
        return self.record(workload).state

    def epoch(self, workload: str) -> int:
        return self.record(workload).epoch

    def forwards(self) -> dict[str, Peer]:
        """Where calls to each workload are redirected (tombstones, and copies received over them)."""
        return {w: r.forward for w, r in self.records.items() if r.forward is not None}

    def due(self, now: float) -> list[str]:
        """Workloads whose timer passed at ``now``: feed each ``Event(TIMEOUT, now=now)``."""
        return [w for w, r in self.records.items() if r.deadline is not None and now >= r.deadline]

    def check(self, workload: str, event: Event) -> tuple[Record, tuple[Action, ...]]:
        """The record and actions ``event`` would give, without applying it.  Raises OwnershipError."""
        old = self.record(workload)
        new_state = TRANSITIONS.get((old.state, event.kind))
        if new_state is None:
            raise IllegalTransition(workload, old.state, event.kind)
        refusal = _guard(old, event)
        if refusal is not None:
            raise Refused(workload, old.state, event.kind, refusal, old.epoch)
        new, actions = _effect(old, event, new_state)
        if new.state is S.ABSENT and new.forward is not None:
            new = replace(new, state=S.TOMBSTONED, epoch=new.forward.epoch)
        if durable(new) != durable(old):
            actions += (Persist(durable(new)),)
        return new, actions

    def handle(self, workload: str, event: Event) -> tuple[Action, ...]:
        """Apply ``event`` to ``workload``; return what to do.  Raises OwnershipError, changing nothing."""
        new, actions = self.check(workload, event)
        if new == ABSENT:
            self.records.pop(workload, None)
        else:
            self.records[workload] = new
        return actions


def _guard(old: Record, ev: Event) -> Refusal | None:
    """Why ``ev`` is refused in ``old`` although the table takes it, or None."""
    k = ev.kind
    if k in (E.INCOMING_MOVE, E.INCOMING_STANDBY) and old.state is S.OWNED:
        return None if ev.epoch > old.epoch else Refusal.STALE  # only a fenced-off leftover is replaced
    if k is E.INCOMING_STANDBY and old.state is S.RECEIVING:
        return None if ev.epoch > old.epoch else Refusal.BUSY   # a standby never replaces a move under way
    if k is E.INCOMING_STANDBY and old.state is S.STANDBY:
        staging = old.staging if old.staging is not None else 0
        return None if ev.epoch >= old.epoch and ev.epoch >= staging else Refusal.BUSY
    if k in (E.SWAP_IN, E.DROP_STAGING):
        return None if old.staging is not None else Refusal.NO_STAGING
    if k in (E.ABORT, E.COMMIT, E.COMMITTED):
        held = _known(old.move, "a frozen record's move").epoch if k is E.COMMITTED else old.epoch
        return None if ev.epoch == held else Refusal.STALE
    if k in (E.COMMIT_STANDBY, E.PROMOTE):
        return None if ev.epoch >= old.epoch else Refusal.STALE
    if k in (E.SUPERSEDED, E.KEEP_STANDBY):
        return None if ev.epoch > old.epoch else Refusal.STALE
    if k is E.TIMEOUT:
        return None if ev.now >= _known(old.deadline, "a frozen record's deadline") else Refusal.NOT_DUE
    return None


def _known(value: T | None, what: str) -> T:
    """``value``, which the table's states or ``Event`` (``NEEDS_PEER``) guarantee is there."""
    if value is None:
        raise AssertionError(f"{what} is missing")
    return value


def _effect(old: Record, ev: Event, to: State) -> tuple[Record, tuple[Action, ...]]:
    """The record after ``ev`` (already allowed and guarded) and the actions it asks for."""
    k = ev.kind
    if k in (E.SPAWN, E.LOAD_OWNED):
        return Record(to, ev.epoch if k is E.LOAD_OWNED else 1), ()
    if k is E.LOAD_IN_DOUBT:
        # Not asked again: the target is asked whether it committed (COMMITTED), else the timer aborts.
        return Record(to, ev.epoch, move=ev.peer, deadline=ev.now + COMMIT_TIMEOUT_S, asked=True), ()
    if k is E.LOAD_TOMBSTONE:
        forward = _known(ev.peer, "a load_tombstone event's peer")
        return Record(to, forward.epoch, forward=forward), ()
    if k is E.REMOVE:
        return ABSENT, ()
    if k is E.BEGIN_MOVE:
        move = replace(_known(ev.peer, "a begin_move event's peer"), epoch=old.epoch + 1)
        return Record(to, old.epoch, move=move), (Send(move),)
    if k is E.FREEZE:
        return (replace(old, state=to, deadline=ev.now + COMMIT_TIMEOUT_S, asked=True),
                (Commit(_known(old.move, "a sending record's move")),))
    if k is E.THAW:
        return replace(old, state=to, deadline=None), ()
    if k in (E.MOVE_ABORTED, E.TIMEOUT):
        if old.state is S.ABSENT:
            return ABSENT, (Abort(ev.peer),) if ev.peer is not None else ()
        # Fence: a target asked to commit may have done so unseen, at move.epoch; this
        # node now outranks it.  A target never asked cannot own it: the epoch stays.
        move = _known(old.move, "a moving record's move")
        epoch = max(old.epoch, move.epoch + 1) if old.asked else old.epoch
        return Record(to, epoch), (Abort(move),)
    if k is E.COMMITTED:  # ``peer`` may name the target now that it answered
        move = _known(old.move, "a frozen record's move")
        forward = replace(ev.peer, epoch=move.epoch) if ev.peer is not None else move
        return Record(to, forward.epoch, forward=forward), (Redirect(forward), Drop())
    if k is E.COPY_REMOVED:
        return replace(old, state=to), ()
    if k is E.KEEP_STANDBY:  # the copy the commit's Drop named stays, at the new owner's feed epoch
        return Record(to, ev.epoch, forward=old.forward), ()
    if k is E.SUPERSEDED:
        forward = replace(_known(ev.peer, "a superseded event's peer"), epoch=ev.epoch)
        return Record(to, ev.epoch, forward=forward), (Redirect(forward), Drop())
    if k in (E.INCOMING_MOVE, E.INCOMING_STANDBY):
        if k is E.INCOMING_STANDBY and ev.staged and old.state is S.STANDBY:
            return replace(old, staging=ev.epoch), ()
        # A copy held here before (a fenced-off owner's, an older copy's) is replaced.
        drop = (Drop(),) if old.state in OWNING or old.state in HOLDING else ()
        return Record(to, ev.epoch, forward=old.forward), drop
    if k is E.SWAP_IN:
        return replace(old, epoch=_known(old.staging, "a standby's staged epoch"), staging=None), ()
    if k is E.DROP_STAGING:
        return replace(old, staging=None), ()
    if k in (E.ABORT, E.DROP):
        return Record(to, forward=old.forward), (Drop(),)
    if k in (E.COMMIT, E.COMMIT_STANDBY, E.PROMOTE):
        return Record(to, ev.epoch), (Committed(ev.epoch),)
    raise AssertionError(f"no effect for {k}")  # every kind in TRANSITIONS has one above
