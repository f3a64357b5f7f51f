"""The ownership machine (migrate._ownership), in memory: its table, its guards, and every interleaving of a move.

The backbone is ``ownership_sim.explore``: two or three nodes run the
machine through a move (and a standby's handover, failover and
replacement) with every order of messages, one dropped message, one
crash at any crash phase (the node comes back from what it persisted),
and a client whose calls follow redirects.  Every reachable world is
checked; together the scenarios visit every entry of ``TRANSITIONS``
and reach every phase of ``CRASH_PHASES``.
"""

import dataclasses
import functools

import pytest
from hypothesis import given, settings, strategies as st

from migrate._codes import CRASH_PHASES
from migrate._ownership import COMMIT_TIMEOUT_S, TRANSITIONS, Ownership, State, durable, load_event
from migrate._ownership_events import (
    Abort, Commit, Committed, Drop, Durable, Event, EventKind as E, IllegalTransition, Kept, LOCAL_EVENTS, Peer, Persist,
    REMOTE_EVENTS, Redirect, Refusal, Refused, Send, TIMER_EVENTS,
)

from ownership_explore import explore
from ownership_sim import Explorer, Node, World, owned, standby

T = Peer("T", "t:1", 0)
FED = (dataclasses.replace(owned("S"), feed="live:B"), Node("T"), standby("B", 2))  # S feeds a standby on B
#: The worlds explored.  Each allows one crash and one lost message, but
#: for the standby's: one of the two each (both at once take seconds).
SCENARIOS = {
    "move": World((owned("S"), Node("T"))),
    "two moves": World((owned("S"), Node("T")), moves=2, crashes=0),
    "move with a standby, a crash": World(FED, promotes=1, standbys=1, drops=0),
    "move with a standby, a lost message": World(FED, promotes=1, standbys=1, crashes=0),
    "a standby starting": World((owned("S"), Node("B")), moves=0, standbys=1, promotes=1),
}


@functools.cache
def explored(name: str) -> Explorer:
    return explore(SCENARIOS[name])


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_interleaving_keeps_the_invariants(name):
    x = explored(name)
    assert x.settled > 0


def test_a_move_can_end_on_either_node():
    x = explored("move")
    assert 0 < x.moved < x.settled


def test_the_scenarios_reach_every_crash_phase():
    reached = set().union(*(explored(name).crashed_at for name in SCENARIOS))
    assert reached == set(CRASH_PHASES)


def test_the_scenarios_visit_every_transition():
    visited = set().union(*(explored(name).visited_pairs for name in SCENARIOS)) | _driven_pairs()
    assert visited == set(TRANSITIONS)


def test_every_state_is_reached_and_every_event_kind_is_used():
    assert {state for state, _ in TRANSITIONS} | set(TRANSITIONS.values()) == set(State)
    assert {kind for _, kind in TRANSITIONS} == LOCAL_EVENTS | REMOTE_EVENTS | TIMER_EVENTS == set(E)


class Recorder(Ownership):
    """An Ownership that notes every (state, event kind) it took."""

    pairs: set = set()

    def handle(self, workload, event):
        before = self.state(workload)
        actions = super().handle(workload, event)
        Recorder.pairs.add((before, event.kind))
        return actions


def run(*events, machine=None):
    """Feed ``events`` to one node's machine for workload "w"; return it and the last actions."""
    machine = machine or Recorder()
    actions = ()
    for event in events:
        actions = machine.handle("w", event)
    return machine, actions


def _driven_pairs() -> set:
    """The transitions the explored worlds leave out, driven one node at a time."""
    for test in (test_spawn_and_remove, test_a_move_of_a_removed_workload_ends_quietly, test_a_restart_loads_over_a_tombstone,
                 test_a_stale_owner_is_replaced_by_a_newer_copy, test_a_standby_that_took_over_fences_off_the_restarted_owner,
                 test_dropped_copies_and_staging, test_a_move_replaces_a_standby_copy,
                 test_a_committed_copy_kept_as_the_new_owners_standby):
        test()
    return Recorder.pairs


def test_spawn_and_remove():
    m, actions = run(Event(E.SPAWN))
    assert (m.state("w"), m.epoch("w")) == (State.OWNED, 1)
    assert actions == (Persist(durable(m.record("w"))),)
    m, actions = run(Event(E.REMOVE), machine=m)
    assert m.state("w") is State.ABSENT and "w" not in m.records and actions == (Persist(None),)
    m, _ = run(Event(E.LOAD_TOMBSTONE, 3, Peer("T", "t:1", 3)), Event(E.SPAWN))
    assert (m.state("w"), m.epoch("w"), m.record("w").forward) == (State.OWNED, 1, None)


def test_a_move_of_a_removed_workload_ends_quietly():
    m, _ = run(Event(E.SPAWN), Event(E.BEGIN_MOVE, peer=T), Event(E.REMOVE))
    assert m.state("w") is State.ABSENT
    _, actions = run(Event(E.MOVE_ABORTED, peer=Peer("T", "t:1", 2)), machine=m)
    assert actions == (Abort(Peer("T", "t:1", 2)),)


def test_a_restart_loads_over_a_tombstone():
    stone = Durable(Kept.TOMBSTONE, 2, Peer("T", "t:1", 2))
    m, _ = run(load_event(stone), load_event(Durable(Kept.OWNED, 4)))
    assert (m.state("w"), m.epoch("w"), m.forwards()) == (State.OWNED, 4, {})


def test_a_stale_owner_is_replaced_by_a_newer_copy():
    m, _ = run(Event(E.LOAD_OWNED, 2))
    with pytest.raises(Refused) as refused:
        m.handle("w", Event(E.INCOMING_MOVE, 2, Peer("S", "s:1", 2)))
    assert (refused.value.reason, refused.value.held) == (Refusal.STALE, 2)
    _, actions = run(Event(E.INCOMING_MOVE, 4, Peer("S", "s:1", 4)), machine=m)
    assert (m.state("w"), m.epoch("w")) == (State.RECEIVING, 4)
    assert actions == (Drop(), Persist(None))


def test_a_standby_that_took_over_fences_off_the_restarted_owner():
    m, _ = run(Event(E.LOAD_OWNED, 2))
    with pytest.raises(Refused):
        m.handle("w", Event(E.SUPERSEDED, 2, T))
    _, actions = run(Event(E.SUPERSEDED, 3, T), machine=m)
    there = Peer("T", "t:1", 3)
    assert m.state("w") is State.FAILED_OVER and m.forwards() == {"w": there}
    assert actions == (Redirect(there), Drop(), Persist(Durable(Kept.TOMBSTONE, 3, there)))
    run(Event(E.COPY_REMOVED), machine=m)
    assert m.state("w") is State.TOMBSTONED


def test_dropped_copies_and_staging():
    s = Peer("S", "s:1", 2)
    m, actions = run(Event(E.INCOMING_MOVE, 2, s), Event(E.DROP))
    assert m.state("w") is State.ABSENT and actions == (Drop(),)
    m, _ = run(Event(E.INCOMING_STANDBY, 2, s), Event(E.INCOMING_STANDBY, 3, s, staged=True))
    assert (m.epoch("w"), m.record("w").staging) == (2, 3)
    with pytest.raises(Refused) as busy:
        m.handle("w", Event(E.INCOMING_STANDBY, 2, s, staged=True))
    assert busy.value.reason is Refusal.BUSY
    run(Event(E.DROP_STAGING), machine=m)
    assert (m.state("w"), m.epoch("w"), m.record("w").staging) == (State.STANDBY, 2, None)
    with pytest.raises(Refused) as none:
        m.handle("w", Event(E.SWAP_IN))
    assert none.value.reason is Refusal.NO_STAGING
    run(Event(E.DROP), machine=m)
    assert m.state("w") is State.ABSENT


def test_a_move_replaces_a_standby_copy():
    m, actions = run(Event(E.LOAD_TOMBSTONE, 2, Peer("T", "t:1", 2)), Event(E.INCOMING_STANDBY, 3, T),
                     Event(E.INCOMING_MOVE, 4, T))
    assert (m.state("w"), m.epoch("w"), actions) == (State.RECEIVING, 4, (Drop(),))
    with pytest.raises(Refused):
        m.handle("w", Event(E.INCOMING_STANDBY, 4, T))  # a standby never replaces a move under way
    run(Event(E.ABORT, 4), machine=m)
    assert m.state("w") is State.TOMBSTONED and m.forwards() == {"w": Peer("T", "t:1", 2)}


def test_an_event_not_in_the_table_is_illegal_and_changes_nothing():
    m, _ = run(Event(E.SPAWN))
    before = dict(m.records)
    for kind in (E.COMMITTED, E.PROMOTE, E.SWAP_IN, E.LOAD_TOMBSTONE, E.THAW):
        with pytest.raises(IllegalTransition) as illegal:
            m.handle("w", Event(kind, 2, T))
        assert (illegal.value.state, illegal.value.kind) == (State.OWNED, kind)
    assert m.records == before


def test_a_move_commits_with_the_clock_passed_in():
    m, actions = run(Event(E.SPAWN), Event(E.BEGIN_MOVE, peer=T))
    move = Peer("T", "t:1", 2)
    assert actions == (Send(move),)
    _, actions = run(Event(E.FREEZE, now=100.0), machine=m)
    assert actions == (Commit(move), Persist(Durable(Kept.IN_DOUBT, 1, move)))
    assert m.due(100.0 + COMMIT_TIMEOUT_S - 0.5) == []
    with pytest.raises(Refused) as early:
        m.handle("w", Event(E.TIMEOUT, now=101.0))
    assert early.value.reason is Refusal.NOT_DUE
    with pytest.raises(Refused):
        m.handle("w", Event(E.COMMITTED, 3))  # not this move's epoch
    _, actions = run(Event(E.COMMITTED, 2), machine=m)
    assert m.state("w") is State.COMMITTED_ELSEWHERE and actions[:2] == (Redirect(move), Drop())


def test_a_committed_copy_kept_as_the_new_owners_standby():
    m, _ = run(Event(E.SPAWN), Event(E.BEGIN_MOVE, peer=T), Event(E.FREEZE, now=0.0), Event(E.COMMITTED, 2))
    with pytest.raises(Refused) as stale:
        m.handle("w", Event(E.KEEP_STANDBY, 2))  # the standby's epoch is above the new owner's
    assert stale.value.reason is Refusal.STALE
    _, actions = run(Event(E.KEEP_STANDBY, 3), machine=m)
    record = m.record("w")
    assert (record.state, record.epoch, record.forward) == (State.STANDBY, 3, Peer("T", "t:1", 2))
    assert actions == ()  # still a tombstone to a restart: the copy is not persisted
    _, actions = run(Event(E.PROMOTE, 4), machine=m)
    assert (m.state("w"), m.epoch("w")) == (State.OWNED, 4) and actions[0] == Committed(4)


def test_an_unanswered_commit_times_out_fenced():
    m, _ = run(Event(E.LOAD_OWNED, 5), Event(E.BEGIN_MOVE, peer=T), Event(E.FREEZE, now=0.0))
    assert m.due(COMMIT_TIMEOUT_S) == ["w"]
    _, actions = run(Event(E.TIMEOUT, now=COMMIT_TIMEOUT_S), machine=m)
    assert (m.state("w"), m.epoch("w")) == (State.OWNED, 7)
    assert actions == (Abort(Peer("T", "t:1", 6)), Persist(Durable(Kept.OWNED, 7)))


def test_an_aborted_move_fences_only_once_a_commit_was_asked():
    m, actions = run(Event(E.LOAD_OWNED, 5), Event(E.BEGIN_MOVE, peer=T), Event(E.MOVE_ABORTED))
    assert (m.state("w"), m.epoch("w"), actions) == (State.OWNED, 5, (Abort(Peer("T", "t:1", 6)),))
    run(Event(E.BEGIN_MOVE, peer=T), Event(E.FREEZE), Event(E.THAW), Event(E.MOVE_ABORTED), machine=m)
    assert (m.state("w"), m.epoch("w")) == (State.OWNED, 7)


def test_a_restart_in_doubt_comes_back_frozen():
    move = Peer("T", "t:1", 2)
    kept = Durable(Kept.IN_DOUBT, 1, move)
    m, actions = run(load_event(kept, now=50.0))
    assert (m.state("w"), m.record("w").move, actions) == (State.FROZEN, move, (Persist(kept),))  # no new Commit
    assert m.due(50.0 + COMMIT_TIMEOUT_S) == ["w"]


def test_promotion_and_handover_take_the_standby_at_or_above_its_epoch():
    s = Peer("S", "s:1", 3)
    for kind in (E.PROMOTE, E.COMMIT_STANDBY):
        m, _ = run(Event(E.INCOMING_STANDBY, 3, s))
        with pytest.raises(Refused):
            m.handle("w", Event(kind, 2))
        _, actions = run(Event(kind, 4), machine=m)
        assert (m.state("w"), m.epoch("w")) == (State.OWNED, 4)
        assert actions == (Committed(4), Persist(Durable(Kept.OWNED, 4)))


EVENTS = st.builds(Event, kind=st.sampled_from(list(E)), epoch=st.integers(0, 6),
                   peer=st.sampled_from([Peer("T", "t:1", 0), Peer("S", "s:1", 4)]),
                   now=st.floats(0, 30), staged=st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENTS, max_size=25))
def test_any_sequence_of_events_follows_the_table(events):
    """Accepted events move as the table says; refused ones change nothing; Persist tracks what is durable."""
    m, kept = Ownership(), None
    for event in events:
        before = dict(m.records)
        old = m.record("w")
        try:
            actions = m.handle("w", event)
        except (IllegalTransition, Refused):
            assert m.records == before
            continue
        to = TRANSITIONS[(old.state, event.kind)]
        new = m.record("w")
        assert new.state is to or (to is State.ABSENT and new.state is State.TOMBSTONED and new.forward)
        for action in actions:
            if isinstance(action, Persist):
                kept = action.record
        assert kept == durable(new)
        if old.state in (State.OWNED, State.SENDING, State.FROZEN) and new.state is State.OWNED:
            assert new.epoch >= old.epoch
