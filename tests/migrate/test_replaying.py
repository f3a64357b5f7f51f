"""Replaying logged operations many to a worker-thread trip (``migrate._replaying.replay_trip``), on a real Host."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workloads
from migrate import _hostops as ops
from migrate._ledger import CallLedger
from migrate._messages import MCall
from migrate._oplog import log_entry
from migrate._owner import _operate, _outcome
from migrate._replaying import already_run, replay_trip
from migrate._state import Owned
from nodes._hosting import Host

PAGES = {0: [0, 1, 2, 3]}


def _count(host: Host, follower: str) -> int:
    """The follower's counter (out of replay mode: a call there needs recorded inputs)."""
    host.hold(follower).set_replay_mode("off")
    return host.call(follower, "get")


@pytest.fixture
def host(tmp_path):
    with Host(tmp_path) as h:
        yield h


def _pair(host: Host) -> tuple[str, str]:
    """A recording leader and a fresh follower of the same counter module, set to replay from call 0."""
    sha = host.add_module(workloads.load("counter"))
    leader, follower = host.deploy(sha).workload_id, host.deploy(sha).workload_id
    host.hold(leader).set_replay_mode("record")
    ops.align(host, follower, 0, None)
    return leader, follower


def _logged(host: Host, leader: str, adds: list[int]) -> list[dict]:
    """Run incr(n) for each n on the leader, as its owner does, and return the log entries."""
    owned, entries = Owned(leader, epoch=1), []
    for seq, n in enumerate(adds, 1):
        call = MCall(id=seq, workload=leader, op="call", caller="c", seq=seq, export="incr", args=(n,))
        entry = log_entry(call, _outcome(_operate(host, call, None, True, None), call, owned))
        assert entry is not None
        entries.append(entry)
    return entries


def test_every_entry_replays_in_one_trip_and_the_digest_matches_the_leaders(host):
    leader, follower = _pair(host)
    entries = _logged(host, leader, [1, 2, 3])
    shadow = Owned(follower, epoch=1)
    trip = replay_trip(host, follower, entries, shadow, PAGES)
    assert trip.why is None
    assert [got.value[0] for _, got in trip.done] == [[1], [3], [6]]
    assert [op.seq for op, _ in trip.done] == [1, 2, 3]
    assert shadow.index == 3
    assert trip.digest == ops.pages_digest(host, leader, PAGES)


def test_no_digest_is_read_unless_asked(host):
    leader, follower = _pair(host)
    trip = replay_trip(host, follower, _logged(host, leader, [5]), Owned(follower, epoch=1))
    assert trip.why is None and trip.digest is None and len(trip.done) == 1


def test_the_trip_stops_at_the_first_divergence_and_runs_nothing_after_it(host):
    leader, follower = _pair(host)
    entries = _logged(host, leader, [1, 2, 3])
    entries[1] = {**entries[1], "values": [99]}  # the log says incr(2) returned 99
    trip = replay_trip(host, follower, entries, Owned(follower, epoch=1), PAGES)
    assert trip.why is not None and "returned [3]" in trip.why
    assert len(trip.done) == 1 and trip.digest is None
    # The diverging call ran (its outcome was compared), the third did not.
    assert _count(host, follower) == 3


def test_a_gap_in_the_log_is_a_bad_entry_and_stops_the_trip(host):
    leader, follower = _pair(host)
    entries = _logged(host, leader, [1, 2, 3])
    trip = replay_trip(host, follower, [entries[0], entries[2]], Owned(follower, epoch=1), PAGES)
    assert trip.why is not None and trip.why.startswith("bad log entry: log has a gap before operation 3")
    assert len(trip.done) == 1 and trip.digest is None
    assert _count(host, follower) == 1


def test_a_malformed_entry_is_a_bad_entry(host):
    leader, follower = _pair(host)
    entry = {k: v for k, v in _logged(host, leader, [1])[0].items() if k != "index"}
    trip = replay_trip(host, follower, [entry], Owned(follower, epoch=1))
    assert trip.why is not None and trip.why.startswith("bad log entry")
    assert trip.done == []


def test_a_logged_outcome_without_its_fields_is_a_bad_entry_after_the_entries_before_it(host):
    leader, follower = _pair(host)
    entries = _logged(host, leader, [1, 2])
    entries[1] = {k: v for k, v in entries[1].items() if k != "ok"}
    trip = replay_trip(host, follower, entries, Owned(follower, epoch=1))
    assert trip.why is not None and trip.why.startswith("bad log entry")
    assert [op.seq for op, _ in trip.done] == [1]


def _replayed(host: Host, follower: str, entries: list[dict]) -> CallLedger:
    """Replay ``entries`` on the follower as a target does, and return its ledger of their outcomes."""
    ledger = CallLedger()
    trip = replay_trip(host, follower, entries, Owned(follower, epoch=1))
    assert trip.why is None
    for op, got in trip.done:
        ledger.record(op.caller, op.seq, got)
    return ledger


def test_entries_a_copy_already_ran_are_counted_when_its_ledger_agrees(host):
    leader, follower = _pair(host)
    entries = _logged(host, leader, [1, 2, 3, 4])
    ledger = _replayed(host, follower, entries[:3])
    assert already_run(entries[1:], 3, ledger) == (2, None)  # operations 2 and 3 ran here, 4 did not
    assert already_run(entries, 3, None) == (3, None)  # no ledger: the index alone decides
    assert already_run(entries[3:], 3, ledger) == (0, None)
    assert already_run([], 3, ledger) == (0, None)


@given(adds=st.lists(st.integers(1, 50), min_size=1, max_size=6), data=st.data())
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_replaying_a_log_from_any_earlier_point_ends_where_the_leader_is(host, adds, data):
    leader, follower = _pair(host)
    entries = _logged(host, leader, adds)
    ran = data.draw(st.integers(0, len(adds)), label="ran")
    ledger = _replayed(host, follower, entries[:ran]) if ran else CallLedger()
    start = data.draw(st.integers(0, ran), label="resent from")
    skipped, why = already_run(entries[start:], ran, ledger)
    assert why is None and skipped == ran - start
    trip = replay_trip(host, follower, entries[start + skipped:], Owned(follower, epoch=1, index=ran), PAGES)
    assert trip.why is None
    assert trip.digest == ops.pages_digest(host, leader, PAGES)
    assert _count(host, follower) == sum(adds)


def test_an_entry_the_copy_ran_with_another_outcome_is_a_contradiction(host):
    leader, follower = _pair(host)
    entries = _logged(host, leader, [1, 2, 3])
    ledger = _replayed(host, follower, entries)
    told = [entries[0], {**entries[1], "values": [99]}, entries[2]]
    count, why = already_run(told, 3, ledger)
    assert count == 1 and why is not None
    assert why.startswith("operation 2 already ran here, differently") and "returned [3]" in why
    moved = {**entries[0], "index": 2}  # call 1, its own outcome, told as operation 2
    assert already_run([moved], 3, ledger) == (0, "operation 2 already ran here, differently: "
                                                  "its call ran here as operation 1")


def test_a_malformed_entry_ends_the_count_for_replay_trip_to_report(host):
    leader, follower = _pair(host)
    entries = _logged(host, leader, [1, 2])
    ledger = _replayed(host, follower, entries)
    assert already_run([entries[0], {"index": "2"}, entries[1]], 2, ledger) == (1, None)
    assert already_run(["not a dict"], 2, ledger) == (0, None)  # type: ignore[list-item]
