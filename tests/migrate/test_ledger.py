"""The call ledger, in memory."""

import pytest
from hypothesis import given, strategies as st

from migrate import CallLedger, Outcome
from migrate import _ledger


def test_records_replay_and_forget_after_ack():
    ledger = CallLedger()
    ledger.record("a", 0, Outcome(True, 5))
    ledger.record("a", 1, Outcome(False, None, "workload_trap", "boom"))
    assert ledger.lookup("a", 0) == Outcome(True, 5)
    assert ledger.lookup("b", 0) is None
    ledger.acknowledge("a", 0)
    assert ledger.lookup("a", 0) is None and ledger.was_forgotten("a", 0)
    assert ledger.lookup("a", 1).code == "workload_trap"
    assert len(ledger) == 1


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 50), st.integers()), max_size=60),
       st.dictionaries(st.sampled_from("abc"), st.integers(-1, 50)))
def test_wire_round_trip(records, acks):
    ledger = CallLedger()
    for caller, seq, value in records:
        ledger.record(caller, seq, Outcome(True, [value]))
    for caller, upto in acks.items():
        ledger.acknowledge(caller, upto)
    again = CallLedger.from_wire(ledger.to_wire())
    for caller, seq, _ in records:
        assert again.lookup(caller, seq) == ledger.lookup(caller, seq)
        assert again.was_forgotten(caller, seq) == ledger.was_forgotten(caller, seq)


@pytest.mark.parametrize("bad", [{}, {"outcomes": 3, "acked": {}}, {"outcomes": {"a": [[1]]}, "acked": {}}])
def test_malformed_wire_form_is_refused(bad):
    with pytest.raises(ValueError, match="malformed"):
        CallLedger.from_wire(bad)


def test_a_flooding_caller_is_bounded(monkeypatch):
    monkeypatch.setattr(_ledger, "MAX_UNACKED_PER_CALLER", 10)
    ledger = CallLedger()
    for seq in range(25):
        ledger.record("x", seq, Outcome(True, seq))
    assert len(ledger) == 10 and ledger.was_forgotten("x", 14) and ledger.lookup("x", 24) is not None


def test_next_seq_is_one_past_what_was_recorded_or_acknowledged():
    ledger = CallLedger()
    assert ledger.next_seq("every:tick") == 0
    ledger.record("every:tick", 4, Outcome(True, 1))
    assert ledger.next_seq("every:tick") == 5 and ledger.next_seq("other") == 0
    ledger.acknowledge("every:tick", 9)
    assert ledger.next_seq("every:tick") == 10


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_callers_are_bounded_and_only_long_silent_ones_are_forgotten(monkeypatch):
    monkeypatch.setattr(_ledger, "MAX_CALLERS", 3)
    clock = _Clock()
    ledger = CallLedger(clock=clock)
    for caller in "abc":
        assert ledger.admits(caller)
        ledger.record(caller, 0, Outcome(True, caller))
        clock.now += 1
    assert not ledger.admits("d") and ledger.admits("a")  # full of callers heard from within the hour
    ledger.acknowledge("d", 5)  # no room: an unknown caller's acknowledgement is not kept
    assert ledger.callers() == 3 and not ledger.was_forgotten("d", 5)
    clock.now += _ledger.IDLE_CALLER_S - 1.5  # a: silent 1 h + 0.5 s, b and c less than an hour
    ledger.record("c", 1, Outcome(True, "c1"))
    assert ledger.admits("d")
    assert ledger.lookup("a", 0) is None and ledger.lookup("b", 0) == Outcome(True, "b")
    ledger.record("d", 0, Outcome(True, "d"))
    assert ledger.callers() == 3
    again = CallLedger.from_wire(ledger.to_wire())  # a new owner hears them all now
    assert again.callers() == 3 and again.lookup("d", 0) == Outcome(True, "d")


@given(st.lists(st.tuples(st.integers(0, 9), st.floats(0, 2000)), max_size=80))
def test_admitted_callers_never_exceed_the_bound_nor_lose_a_recent_caller(calls):
    limit = 4
    clock = _Clock()
    ledger = CallLedger(clock=clock)
    seen: dict[str, float] = {}
    original = _ledger.MAX_CALLERS
    _ledger.MAX_CALLERS = limit
    try:
        for n, (who, wait) in enumerate(calls):
            clock.now += wait
            caller = f"c{who}"
            recent = {c for c, t in seen.items() if clock.now - t < _ledger.IDLE_CALLER_S}
            if ledger.admits(caller):
                ledger.record(caller, n, Outcome(True, n))
                seen[caller] = clock.now
            else:
                assert len(recent) >= limit  # refused only when every remembered caller is recent
            assert ledger.callers() <= limit
            for c in recent:  # a caller heard from within the hour keeps its outcomes
                assert ledger.callers() and c in ledger._active
    finally:
        _ledger.MAX_CALLERS = original
