"""Dropped passive segments: captured, carried and restored exactly, and checked before a restore touches anything."""

import dataclasses

import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings, strategies as st

import snapshot
from snapshot import IncompatibleSnapshotError
from snapshot._state import DroppedSegments

MOVE = "move"


def _outcome(live, name, *args):
    """What calling ``name`` does: ("ok", result) or ("trap", its code)."""
    try:
        return "ok", live(name, *args)
    except wasmtime.Trap as trap:
        return "trap", trap.trap_code


def _moved(live):
    """A fresh instance holding ``live``'s state, sent through the wire format."""
    target = live.fresh()
    target.restore(snapshot.Snapshot.from_bytes(live.capture().to_bytes()))
    return target


def _run_both(live, script):
    """Run ``script`` on ``live``, and on a copy that is moved at every MOVE; return the outcomes of each."""
    moving = live.fresh()
    snapshot.first_boot(moving.store, moving.instance)
    ours, theirs = [], []
    for step in script:
        if step == MOVE:
            moving = _moved(moving)
            continue
        ours.append(_outcome(live, *step))
        theirs.append(_outcome(moving, *step))
    return ours, theirs


# data_drop0.wast, whose passive segment is used through memory 1 while the
# probes use memory 0, which has no pages.
DATA_DROP0 = """
(module
  (memory $mem0 0)
  (memory $mem1 1)
  (memory $mem2 0)
  (data $p "x")
  (data $a (memory 1) (i32.const 0) "x")
  (func (export "drop_passive") (data.drop $p))
  (func (export "init_passive") (param $len i32)
    (memory.init $mem1 $p (i32.const 0) (i32.const 0) (local.get $len)))
  (func (export "drop_active") (data.drop $a))
  (func (export "init_active") (param $len i32)
    (memory.init $mem1 $a (i32.const 0) (i32.const 0) (local.get $len))))
"""

# bulk.wast's elem.drop module, plus an externref segment and table.
ELEM_DROP = """
(module
  (table 1 funcref)
  (table $x 2 externref)
  (func $f)
  (elem $p funcref (ref.func $f))
  (elem $a (table 0) (i32.const 0) func $f)
  (elem $q externref (ref.null extern) (ref.null extern))
  (elem $d declare func $f)
  (func (export "drop_passive") (elem.drop $p))
  (func (export "init_passive") (param $len i32)
    (table.init $p (i32.const 0) (i32.const 0) (local.get $len)))
  (func (export "drop_active") (elem.drop $a))
  (func (export "init_active") (param $len i32)
    (table.init $a (i32.const 0) (i32.const 0) (local.get $len)))
  (func (export "drop_ext") (elem.drop $q))
  (func (export "init_ext") (param i32 i32)
    (table.init $x $q (i32.const 0) (local.get 0) (local.get 1)))
  (func (export "drop_declared") (elem.drop $d))
  (func (export "init_declared") (param $len i32)
    (table.init $d (i32.const 0) (i32.const 0) (local.get $len))))
"""


def test_data_drop0_behaves_the_same_after_every_move(live):
    script = [MOVE, ("init_passive", 1), MOVE, ("drop_passive",), MOVE, ("drop_passive",), MOVE,
              ("init_passive", 0), ("init_passive", 1), MOVE, ("init_passive", 0), ("drop_active",), MOVE,
              ("init_active", 0), ("init_active", 1), MOVE, ("init_active", 0), ("init_passive", 1)]
    ours, theirs = _run_both(live(DATA_DROP0), script)
    assert ours == theirs
    assert ("trap", wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS) in ours  # the scenario did trap
    assert ours[3:5] == [("ok", None), ("trap", wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS)]


def test_elem_drop_behaves_the_same_after_every_move_for_funcref_and_externref(live):
    script = [("init_passive", 1), ("init_ext", 0, 2), MOVE, ("drop_passive",), MOVE, ("init_passive", 0),
              ("init_passive", 1), ("init_ext", 1, 1), ("drop_ext",), MOVE, ("init_ext", 0, 0), ("init_ext", 0, 1),
              ("init_ext", 1, 0), ("drop_active",), MOVE, ("init_active", 0), ("init_active", 1),
              ("init_declared", 0), ("init_declared", 1), ("drop_declared",), MOVE, ("init_declared", 1)]
    ours, theirs = _run_both(live(ELEM_DROP), script)
    assert ours == theirs
    trap = ("trap", wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS)
    assert ours[4] == trap and ours[8] == trap and ours[9] == trap  # dropped segments trap after the move


def test_only_passive_segments_of_nonzero_length_are_listed(live):
    src = live(ELEM_DROP)
    assert src.capture().dropped == DroppedSegments()
    for name in ("drop_active", "drop_declared"):
        src(name)
    assert src.capture().dropped == DroppedSegments()  # dropped at instantiation anyway
    src("drop_ext")
    src("drop_passive")
    assert src.capture().dropped == DroppedSegments((), (0, 2))
    empty = live('(module (memory 1) (data $e "") (data $f "x") (func (export "d") (data.drop $e) (data.drop $f)))')
    empty("d")
    assert empty.capture().dropped == DroppedSegments((1,), ())


def test_active_and_declarative_segments_are_dropped_by_instantiation_in_a_restored_instance(live):
    src = live(ELEM_DROP)
    target = _moved(src)
    for where in (src, target):
        assert _outcome(where, "init_active", 1) == ("trap", wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS)
        assert _outcome(where, "init_declared", 1) == ("trap", wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS)
        assert _outcome(where, "init_passive", 1) == ("ok", None)
    data = _moved(live(DATA_DROP0))
    assert _outcome(data, "init_active", 1) == ("trap", wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS)


def test_a_module_with_passive_segments_and_no_memory_or_table(live, engine):
    wat = '(module (data "goodbye") (elem funcref (ref.func 0)) (func (export "drop") (data.drop 0) (elem.drop 0)))'
    prepared = snapshot.prepare(wasmtime.wat2wasm(wat))
    module = wasmtime.Module(engine, prepared)
    assert not any(isinstance(e.type, wasmtime.MemoryType) for e in module.exports)  # its probe memory stays hidden
    src = live(wat)
    before = src.capture()
    assert before.dropped == DroppedSegments()
    src("drop")
    after = src.capture()
    assert after.dropped == DroppedSegments((0,), (0,))
    assert _moved(src).capture().same_state(after)
    assert _moved(src).capture().dropped == after.dropped


def _many(n: int) -> str:
    """A module with n passive data and n passive element segments (indices past 64, whose LEB128
    forms differ), an active and an empty one of each among them, and per-segment exports."""
    parts = ["(module (memory 1) (table 4 funcref) (func $f)"]
    for k in range(n):
        parts.append('(data (i32.const 0) "a")' if k == 5 else '(data "")' if k == 7 else f'(data "seg{k}")')
        parts.append("(elem (i32.const 0) func $f)" if k == 6 else "(elem funcref)" if k == 8
                     else "(elem func $f $f)")
        parts.append(f'(func (export "dd{k}") (data.drop {k})) (func (export "ed{k}") (elem.drop {k}))'
                     f'(func (export "di{k}") (memory.init {k} (i32.const 0) (i32.const 0) (i32.const 1)))'
                     f'(func (export "ei{k}") (table.init {k} (i32.const 0) (i32.const 0) (i32.const 1)))')
    return "".join(parts) + ")"


N = 70
DATA_SKIP, ELEM_SKIP = {5, 7}, {6, 8}  # active or empty: never listed, never initialisable


@pytest.fixture(scope="module")
def many(engine):
    from live_instance import Live

    prepared = snapshot.prepare(wasmtime.wat2wasm(_many(N)))
    return lambda: Live(engine, prepared)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rounds=st.lists(st.tuples(st.sets(st.integers(0, N - 1)), st.sets(st.integers(0, N - 1))),
                       min_size=1, max_size=3))
def test_random_drops_survive_moves_exactly(many, rounds):
    src = many()
    data, elems = set(), set()
    for drop_data, drop_elems in rounds:
        for k in drop_data:
            src(f"dd{k}")
        for k in drop_elems:
            src(f"ed{k}")
        data |= drop_data - DATA_SKIP
        elems |= drop_elems - ELEM_SKIP
        snap = src.capture()
        assert snap.dropped == DroppedSegments(tuple(sorted(data)), tuple(sorted(elems)))
        src = _moved(src)
        assert src.capture().same_state(snap)
    for k in range(N):
        assert _outcome(src, f"di{k}")[0] == ("trap" if k in data | DATA_SKIP else "ok"), k
        assert _outcome(src, f"ei{k}")[0] == ("trap" if k in elems | ELEM_SKIP else "ok"), k


def test_restore_refuses_a_snapshot_that_would_bring_a_segment_back(live):
    src = live(DATA_DROP0)
    live_snap = src.capture()
    target = src.fresh()
    target("drop_passive")
    memory_before = target.memory(1)
    with pytest.raises(IncompatibleSnapshotError, match="data segment 0 is dropped in the target"):
        target.restore(live_snap)
    assert target.memory(1) == memory_before
    # Once known, the refusal needs no probe; a snapshot that drops it too is fine.
    with pytest.raises(IncompatibleSnapshotError, match="cannot come back"):
        target.restore(live_snap)
    src("drop_passive")
    target.restore(src.capture())
    assert target.capture().same_state(src.capture())


@pytest.mark.parametrize("dropped", [
    DroppedSegments((1,), ()),  # an active segment
    DroppedSegments((2,), ()),  # no such segment
    DroppedSegments((0, 1), ()),
    DroppedSegments((), (0,)),  # the module has no element segments
    DroppedSegments((2**40,), ()),
    DroppedSegments((0, 0), ()),
    DroppedSegments((-1, 0), ()),
    DroppedSegments(("0",), ()),
])
def test_restore_refuses_dropped_indices_that_are_not_passive_segments(live, dropped):
    src = live(DATA_DROP0)
    snap = dataclasses.replace(src.capture(), dropped=dropped)
    target = src.fresh()
    with pytest.raises(IncompatibleSnapshotError, match="segment"):
        target.restore(snap)
    assert target.capture().dropped == DroppedSegments()  # nothing was dropped


def test_a_module_without_passive_segments_gets_no_probes_and_refuses_dropped_state(live):
    src = live('(module (memory 1) (data (i32.const 0) "x") (global (export "g") (mut i32) (i32.const 0)))')
    assert not [n for n in src.exports if n.startswith(("__wm_probe", "__wm_data", "__wm_elem"))]
    snap = src.capture()
    assert snap.dropped == DroppedSegments() and snap.to_bytes()[6] == 1
    with pytest.raises(IncompatibleSnapshotError, match="no passive segments"):
        src.fresh().restore(dataclasses.replace(snap, dropped=DroppedSegments((0,), ())))


def test_a_snapshot_of_another_module_is_still_refused(live):
    a, b = live(DATA_DROP0), live(ELEM_DROP)
    with pytest.raises(snapshot.ModuleMismatchError):
        b.fresh().restore(a.capture())


def test_a_probe_interrupted_by_the_epoch_deadline_raises_rather_than_reads_dropped():
    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(1)
    instance = wasmtime.Instance(store, wasmtime.Module(engine, snapshot.prepare(wasmtime.wat2wasm(DATA_DROP0))), [])
    engine.increment_epoch()
    with pytest.raises(wasmtime.Trap) as caught:
        snapshot.capture(store, instance)
    assert caught.value.trap_code == wasmtime.TrapCode.INTERRUPT
    store.set_epoch_deadline(1)
    assert snapshot.capture(store, instance).dropped == DroppedSegments()


def test_deltas_carry_drops_made_between_rounds(live):
    src = live(ELEM_DROP)
    target = src.fresh()
    with snapshot.StateTracker(src.store, src.instance, backend="compare") as tracker:
        full = tracker.capture(src.store)
        target.restore(full)
        src("drop_passive")
        delta = tracker.capture_delta(src.store)
        assert delta.dropped == DroppedSegments((), (0,))
        target.restore(snapshot.Snapshot.from_bytes(delta.to_bytes()))
        pending = tracker.begin_delta(src.store)
        src("drop_ext")  # after the round began: the next round carries it
        first = pending.finish()
        assert first.dropped == DroppedSegments((), (0,))
        target.restore(first)
        last = tracker.capture_delta(src.store)
        target.restore(last)
    assert last.dropped == DroppedSegments((), (0, 2))
    assert snapshot.apply_delta(snapshot.apply_delta(snapshot.apply_delta(full, delta), first), last).same_state(
        src.capture())
    assert target.capture().same_state(src.capture())
    assert _outcome(target, "init_ext", 0, 0) == ("ok", None)
    assert _outcome(target, "init_ext", 0, 1) == ("trap", wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS)
    undropping = dataclasses.replace(last, base_id=delta.state_id, dropped=DroppedSegments())
    with pytest.raises(IncompatibleSnapshotError, match="cannot come back"):
        snapshot.apply_delta(snapshot.apply_delta(full, delta), undropping)
