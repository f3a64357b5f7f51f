"""Deltas: a full capture followed by deltas reproduces the state exactly."""

import ctypes
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import snapshot
import workloads

WAT = r"""
(module
  (memory $m 1 64)
  (memory $n 1 8)
  (global $g (mut i64) (i64.const 0))
  (global $f (mut f64) (f64.const 0))
  (func (export "poke") (param i32 i32) (i32.store8 $m (local.get 0) (local.get 1))
    (global.set $g (i64.add (global.get $g) (i64.const 1))))
  (func (export "poke_n") (param i32 i32) (i32.store8 $n (local.get 0) (local.get 1)))
  (func (export "grow") (param i32) (result i32) (memory.grow $m (local.get 0)))
  (func (export "setf") (param f64) (global.set $f (local.get 0)))
)
"""

BACKENDS = ["compare"] + (["uffd"] if snapshot.uffd_available() else [])

ops = st.lists(st.one_of(
    st.tuples(st.just("poke"), st.integers(0, 4 * 65536 - 1), st.integers(0, 255)),
    st.tuples(st.just("poke_n"), st.integers(0, 65535), st.integers(0, 255)),
    st.tuples(st.just("grow"), st.integers(0, 2)),
    st.tuples(st.just("setf"), st.floats(allow_nan=False)),
    st.tuples(st.just("delta")),
), max_size=40)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=ops)
def test_delta_chains_reproduce_the_state(live, backend, script):
    src = live(WAT)
    target = src.fresh()
    with snapshot.StateTracker(src.store, src.instance, backend=backend) as tracker:
        full = tracker.capture(src.store)
        target.restore(full)
        current = full
        for op in script + [("delta",)]:
            if op[0] == "delta":
                delta = tracker.capture_delta(src.store)
                assert delta.base_id == current.state_id
                current = snapshot.apply_delta(current, delta)
                # Encoded and decoded on the way, as over the network.
                target.restore(snapshot.Snapshot.from_bytes(delta.to_bytes()))
                truth = src.capture()
                assert current.same_state(truth)
                assert target.memory(0) == src.memory(0) and target.memory(1) == src.memory(1)
            elif op[0] == "poke":
                size = src.exports["__wm_memory_0"].data_len(src.store)
                src("poke", op[1] % size, op[2])
            else:
                src(*op)


def test_delta_on_the_wrong_base_is_refused(live):
    src = live(WAT)
    with snapshot.StateTracker(src.store, src.instance) as tracker:
        full = tracker.capture(src.store)
        src("poke", 5, 1)
        d1 = tracker.capture_delta(src.store)
        src("poke", 6, 1)
        d2 = tracker.capture_delta(src.store)
    target = src.fresh()
    target.restore(full)
    before = target.memory(0)
    with pytest.raises(snapshot.BaseMismatchError):
        target.restore(d2)  # skipped d1
    assert target.memory(0) == before
    with pytest.raises(snapshot.BaseMismatchError):
        snapshot.apply_delta(full, d2)
    target.restore(d1)
    target.restore(d2)
    assert target.memory(0) == src.memory(0)


def test_delta_needs_a_full_capture_first(live):
    src = live(WAT)
    with snapshot.StateTracker(src.store, src.instance) as tracker:
        with pytest.raises(snapshot.LocalSnapshotError, match="full capture"):
            tracker.capture_delta(src.store)


def test_deltas_of_a_growing_c_workload_are_small_and_exact(live):
    src = live(workloads.load("dirtier"))
    src("dt_init", 8)
    target = src.fresh()
    with snapshot.StateTracker(src.store, src.instance) as tracker:
        target.restore(tracker.capture(src.store))
        for seed in range(1, 6):
            src("dt_dirty", 20, seed)
            delta = tracker.capture_delta(src.store)
            assert delta.page_count <= 20 + 8  # the pages written, plus stack and bookkeeping
            target.restore(delta)
        assert target("dt_checksum") == src("dt_checksum")
        assert target.memory() == src.memory()


def test_a_live_first_round_plus_deltas_is_exact_even_with_writes_during_the_copy(live):
    """begin_capture/finish with writes between them (a call running during
    the copy): the next delta carries those pages, so the chain is exact."""
    src = live(WAT)
    src("poke", 10, 1)
    target = src.fresh()
    with snapshot.StateTracker(src.store, src.instance) as tracker:
        pending = tracker.begin_capture(src.store)
        src("poke", 20, 2)          # lands during the "copy"
        src("grow", 1)
        src("poke", 70000, 3)
        first = pending.finish()
        target.restore(first)
        target.restore(tracker.capture_delta(src.store))
    assert target.memory(0) == src.memory(0) and target.capture().same_state(src.capture())


def _raw_writer(memory, store, writes, armed):
    """A thread writing ``writes`` (offset, byte) over and over into the memory, as a running call would,
    until ``armed`` is set; returns (thread, pass count)."""
    base, size = ctypes.addressof(memory.data_ptr(store).contents), memory.data_len(store)
    passes = [0]

    def run() -> None:
        while True:
            for offset, value in writes:
                ctypes.memset(base + offset % size, (value + passes[0]) & 0xFF, 1)
            passes[0] += 1
            if armed.is_set():
                return
    return threading.Thread(target=run), passes


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("forget_writes", [True, False])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.tuples(st.integers(0, 2 * 65536 - 1), st.integers(0, 255)), min_size=1, max_size=30),
       grow=st.integers(0, 2), after=st.lists(st.tuples(st.integers(0, 4 * 65536 - 1), st.integers(0, 255)),
                                               max_size=10))
def test_arming_while_memory_is_written_and_grown_keeps_the_chain_exact(live, backend, forget_writes, writes, grow,
                                                                      after):
    """``arming`` holds the store; ``arm`` runs while another thread writes the memory (a call running);
    the memory grows before the first capture begins.  The first round, copied while writes go on, plus a
    delta taken with nothing running, restore the memory exactly."""
    src = live(WAT)
    src("grow", 1)
    target = src.fresh()
    memory = src.exports["__wm_memory_0"]
    arming = snapshot.StateTracker.arming(src.store, src.instance, backend=backend)
    armed = threading.Event()
    writer, passes = _raw_writer(memory, src.store, writes, armed)
    writer.start()
    try:
        tracker = arming.arm()
    finally:
        armed.set()
        writer.join()
    assert passes[0] >= 1
    with tracker:
        src("grow", grow)  # grown after arming: the first capture must arm and carry it
        pending = tracker.begin_capture(src.store, forget_writes=forget_writes)  # False: what a node does
        again = threading.Event()
        writer, _ = _raw_writer(memory, src.store, writes, again)
        if tracker.copies_while_running:  # (compare copies with calls held: it may miss a torn page)
            writer.start()  # writes during the copy: torn pages are dirty again
        try:
            first = pending.finish()
        finally:
            again.set()
            if writer.is_alive():
                writer.join()
        for offset, value in after:
            src("poke", offset % memory.data_len(src.store), value)
        target.restore(first)
        target.restore(tracker.capture_delta(src.store))
    assert target.memory(0) == src.memory(0) and target.capture().same_state(src.capture())


@pytest.mark.parametrize("backend", BACKENDS)
def test_kept_writes_never_hide_a_page_written_back_to_its_armed_value(live, backend):
    """Written after arming (0x11 -> 0x22), captured without a reset, then written back to 0x11: the delta must
    carry it.  The compare backend would miss it against a shadow from arming time, so it is reset anyway."""
    src = live(WAT)
    src("poke", 5000, 0x11)
    target = src.fresh()
    tracker = snapshot.StateTracker.arming(src.store, src.instance, backend=backend).arm()
    with tracker:
        src("poke", 5000, 0x22)
        first = tracker.begin_capture(src.store, forget_writes=False).finish()
        src("poke", 5000, 0x11)
        target.restore(first)
        target.restore(tracker.capture_delta(src.store))
    assert target.memory(0) == src.memory(0)


@pytest.mark.skipif(not snapshot.uffd_available(), reason="views are read while calls run only with uffd tracking")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.tuples(st.integers(0, 2 * 65536 - 1), st.integers(0, 255)), min_size=1, max_size=30),
       before=st.lists(st.tuples(st.integers(0, 2 * 65536 - 1), st.integers(1, 255)), max_size=10))
def test_a_first_round_of_live_views_encoded_while_written_plus_a_delta_is_exact(live, writes, before):
    """``views`` copies nothing: the encoder (``copy_pages``) reads the memory while another thread writes it.
    The decoded round plus a delta taken with nothing running restore the memory exactly."""
    src = live(WAT)
    src("grow", 1)
    for offset, value in before:
        src("poke", offset, value)
    target = src.fresh()
    memory = src.exports["__wm_memory_0"]
    with snapshot.StateTracker(src.store, src.instance, backend="uffd") as tracker:
        first = tracker.begin_capture(src.store, forget_writes=False).views()
        assert all(isinstance(run.data, memoryview) for m in first.memories for run in m.runs)
        stop = threading.Event()
        writer, passes = _raw_writer(memory, src.store, writes, stop)
        writer.start()  # writes while the views are encoded: torn pages are dirty again
        try:
            encoded = b"".join(snapshot.SnapshotEncoder(copy_pages=True).encode(first))
        finally:
            stop.set()
            writer.join()
        assert passes[0] >= 1
        target.restore(snapshot.Snapshot.from_bytes(encoded))
        target.restore(tracker.capture_delta(src.store))
    assert target.memory(0) == src.memory(0) and target.capture().same_state(src.capture())


def test_live_views_of_a_quiet_memory_restore_it_whole(live):
    src = live(WAT)
    src("grow", 3)
    for offset in (5, 70000, 3 * 65536):
        src("poke", offset, 9)
    src("poke_n", 100, 7)
    with snapshot.StateTracker(src.store, src.instance) as tracker:
        views = tracker.begin_capture(src.store).views()
        copied = snapshot.Snapshot.from_bytes(b"".join(snapshot.SnapshotEncoder(copy_pages=True).encode(views)))
    target = src.fresh()
    target.restore(copied)
    assert target.memory(0) == src.memory(0) and target.memory(1) == src.memory(1)
