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
