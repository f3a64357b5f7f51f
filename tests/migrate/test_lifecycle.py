"""The lifecycle record: lease, schedules, and its strict wire forms (``migrate._lifecycle``)."""

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrate._lifecycle import MAX_SCHEDULES, Lifecycle, LifecycleError, Schedule, spec


def test_a_spec_starts_the_lease_and_the_first_runs_one_period_on():
    life = Lifecycle.from_spec(spec(detached=True, lease_s=10.0, every={"tick": 2.0}), 100.0)
    assert (life.detached, life.lease_s, life.expires) == (True, 10.0, 110.0)
    assert life.schedules == [Schedule("tick", 2.0, 102.0)]
    assert life.next_deadline() == 102.0 and life.due(101.9) == [] and life.due(102.0) == life.schedules


def test_a_touch_renews_the_lease_and_a_goodbye_shows_it_expiring():
    life = Lifecycle.from_spec(spec(detached=False, lease_s=4.0, every=None), 0.0)
    assert life.state(1.0) == "running" and life.state(2.5) == "expiring"  # unrenewed past half the lease
    life.touch(3.0)
    assert life.state(3.5) == "running" and not life.expired(6.9) and life.expired(7.0)
    life.goodbye(5.0)
    assert life.state(5.0) == "expiring" and life.expires == 9.0


def test_no_lease_never_expires():
    life = Lifecycle.from_spec(spec(detached=True, lease_s=None, every=None), 0.0)
    assert life.expires is None and not life.expired(1e9) and life.state(1e9) == "running"
    assert life.next_deadline() is None


def test_a_firing_late_skips_the_periods_it_missed():
    life = Lifecycle.from_spec(spec(detached=True, lease_s=None, every={"tick": 1.0}), 0.0)
    (tick,) = life.schedules
    life.fired(tick, 1.2)
    assert (tick.due, tick.fired) == (2.0, 1)
    life.fired(tick, 5.5)  # four periods late: the next run is the next period boundary, not a burst
    assert (tick.due, tick.fired) == (6.0, 2)


def test_the_wire_form_keeps_deadlines_across_clocks():
    life = Lifecycle.from_spec(spec(detached=True, lease_s=30.0, every={"tick": 5.0, "sweep": 60.0}), 10.0)
    life.fired(life.schedules[0], 15.0)
    wire = msgpack.unpackb(msgpack.packb(life.to_wire(now=20.0, wall=1_000_000.0)))
    # another node: its monotonic clock reads 500 when the wall clock reads 1,000,002 (2 s later)
    moved = Lifecycle.from_wire(wire, now=500.0, wall=1_000_002.0)
    assert moved.expires == pytest.approx(500.0 - 2.0 + 20.0)  # 20 s of the lease were left at the copy
    assert [(s.export, s.due - 500.0, s.fired) for s in moved.schedules] == [
        ("tick", pytest.approx(-2.0 + 0.0), 1), ("sweep", pytest.approx(-2.0 + 50.0), 0)]


@pytest.mark.parametrize("bad", [
    None, [], {}, {"detached": True, "lease_s": None},
    {"detached": 1, "lease_s": None, "every": {}},
    {"detached": True, "lease_s": 0.0, "every": {}},
    {"detached": True, "lease_s": float("nan"), "every": {}},
    {"detached": True, "lease_s": True, "every": {}},
    {"detached": True, "lease_s": None, "every": {"": 1.0}},
    {"detached": True, "lease_s": None, "every": {"tick": 0.0}},
    {"detached": True, "lease_s": None, "every": {"tick": "1"}},
    {"detached": True, "lease_s": None, "every": {f"e{i}": 1.0 for i in range(MAX_SCHEDULES + 1)}},
    {"detached": True, "lease_s": None, "every": {}, "extra": 1},
])
def test_a_malformed_spec_is_refused(bad):
    with pytest.raises(LifecycleError):
        Lifecycle.from_spec(bad, 0.0)


def test_two_schedules_of_one_export_are_refused():
    wire = Lifecycle.from_spec(spec(detached=True, lease_s=None, every={"tick": 1.0}), 0.0).to_wire(0.0, 0.0)
    wire["schedules"] = wire["schedules"] * 2
    with pytest.raises(LifecycleError, match="same export"):
        Lifecycle.from_wire(wire, 0.0, 0.0)


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=6),
    max_leaves=20)
_keys = st.sampled_from(["detached", "lease_s", "seen_at", "gone", "schedules"])
_records = st.dictionaries(_keys, _values, min_size=4, max_size=5)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_values, _records))
def test_the_decoder_refuses_anything_malformed_with_its_typed_error(data):
    try:
        life = Lifecycle.from_wire(data, 0.0, 0.0)
    except LifecycleError:
        return
    # whatever it accepted is a well-formed record that round-trips
    assert Lifecycle.from_wire(life.to_wire(0.0, 0.0), 0.0, 0.0) == life


@settings(max_examples=200, deadline=None)
@given(detached=st.booleans(), lease=st.none() | st.floats(0.01, 1e6),
       every=st.dictionaries(st.text(min_size=1, max_size=20), st.floats(0.01, 1e6), max_size=MAX_SCHEDULES),
       now=st.floats(0, 1e6), wall=st.floats(1e9, 2e9))
def test_every_valid_record_round_trips(detached, lease, every, now, wall):
    life = Lifecycle.from_spec(spec(detached=detached, lease_s=lease, every=every), now)
    back = Lifecycle.from_wire(msgpack.unpackb(msgpack.packb(life.to_wire(now, wall))), now, wall)
    assert back.detached == life.detached and back.lease_s == life.lease_s
    assert back.seen == pytest.approx(life.seen, abs=1e-3)
    assert [(s.export, s.every_s) for s in back.schedules] == [(s.export, s.every_s) for s in life.schedules]


_specs = st.dictionaries(st.sampled_from(["detached", "lease_s", "every"]), _values, min_size=2, max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_values, _specs))
def test_the_spec_decoder_refuses_anything_malformed_with_its_typed_error(data):
    try:
        life = Lifecycle.from_spec(data, 0.0)
    except LifecycleError:
        return
    assert isinstance(life.detached, bool) and len(life.schedules) <= MAX_SCHEDULES
    assert all(s.every_s > 0 and s.due == s.every_s for s in life.schedules)


def test_a_saved_record_counts_a_firing_under_way_as_done_and_a_moved_one_does_not():
    life = Lifecycle.from_spec(spec(detached=True, lease_s=None, every={"tick": 1.0}), 0.0)
    (tick,) = life.schedules
    tick.fired, tick.running = 7, True
    assert Lifecycle.from_wire(life.to_wire(0.0, 0.0), 0.0, 0.0).schedules[0].fired == 7
    assert Lifecycle.from_wire(life.to_wire(0.0, 0.0, settle=True), 0.0, 0.0).schedules[0].fired == 8
    tick.running = False
    assert Lifecycle.from_wire(life.to_wire(0.0, 0.0, settle=True), 0.0, 0.0).schedules[0].fired == 7
