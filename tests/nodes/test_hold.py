"""``Host.hold``: the operations only a migration needs, on one workload (``Held``)."""

from __future__ import annotations

import sys
import threading

import pytest
import wasmtime

import snapshot
from nodes import Host, HostClosed, SnapshotFailed, UnknownWorkload, _switching

from test_hosting import FAST, deploy, state_of


@pytest.fixture
def host(tmp_path):
    with Host(tmp_path / "node", limits=FAST) as h:
        yield h

def test_hold_refuses_an_unknown_workload(host):
    with pytest.raises(UnknownWorkload):
        host.hold("nobody")
    with pytest.raises(UnknownWorkload):
        host.hold(None)


def test_rounds_rebuild_the_workload_on_another_host(host, tmp_path):
    """A pre-copy move by hand: a tracked base, then deltas applied to the copy."""
    wid = deploy(host, "counter")
    host.call(wid, "incr", [5])
    held = host.hold(wid)
    with pytest.raises(SnapshotFailed, match="not started"):
        held.capture_delta()
    base = held.start_tracking()
    host.call(wid, "incr", [7])
    with Host(tmp_path / "target", limits=FAST) as target:
        sha = target.add_module(host.module_bytes(host.info(wid).module_sha256))
        target.restore(sha, base, workload_id=wid, **held.launch_settings())
        copy = target.hold(wid)
        copy.apply(held.capture_delta())
        held.pause()
        copy.apply(held.capture_delta(), monotonic_ns=held.clock_state())
        assert copy.state_hash() == held.state_hash()
        assert state_of(target, wid) == state_of(host, wid)
        assert target.call(wid, "get") == 12
        held.stop_tracking()
        with pytest.raises(SnapshotFailed, match="not started"):
            held.capture_delta()
        held.resume()
    assert host.call(wid, "get") == 12


def _writing(host, wid, stop: threading.Event, failures: list) -> threading.Thread:
    """A thread calling ``dt_dirty`` on ``wid`` until ``stop`` is set (or the workload is gone)."""
    def run() -> None:
        seed = 1
        while not stop.is_set():
            try:
                host.call(wid, "dt_dirty", [256, seed])
            except UnknownWorkload:
                return
            except BaseException as exc:  # noqa: BLE001 - the test reports it
                failures.append(exc)
                return
            seed += 1
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _rebuild_exactly(host, held, base, deltas, tmp_path) -> None:
    """Pause, take the final round, and check ``base`` plus the rounds rebuild the workload exactly elsewhere."""
    wid = held.workload_id
    held.pause()
    final = held.capture_delta(consistent=False)
    with Host(tmp_path / "target", limits=FAST) as target:
        sha = target.add_module(host.module_bytes(host.info(wid).module_sha256))
        target.restore(sha, base, workload_id=wid, **held.launch_settings())
        copy = target.hold(wid)
        for delta in [*deltas, final]:
            copy.apply(delta)
        assert copy.state_hash() == held.state_hash()
        held.resume()
        assert target.call(wid, "dt_checksum") == host.call(wid, "dt_checksum")


def test_rounds_copied_while_calls_write_then_a_frozen_round_restore_exactly(host, tmp_path):
    """Pre-copy rounds whose pages are copied while another thread's calls write them.

    A page written during a copy may go torn, but it is dirty again, so a
    later round carries it; the final round, taken while paused, leaves the
    copy identical.
    """
    wid = deploy(host, "dirtier")
    host.call(wid, "dt_init", [32])
    held = host.hold(wid)
    assert held._w.memory_fixed  # the host's own engine: the copies below run outside the lock
    stop, failures = threading.Event(), []
    writer = _writing(host, wid, stop, failures)
    try:
        base = held.start_tracking()
        deltas = [held.capture_delta(consistent=False) for _ in range(8)]
    finally:
        stop.set()
        writer.join()
    assert not failures
    _rebuild_exactly(host, held, base, deltas, tmp_path)


def test_remove_waits_for_a_copy_running_outside_the_lock(host):
    wid = deploy(host, "dirtier")
    host.call(wid, "dt_init", [4])
    held = host.hold(wid)
    w = held._w
    with w.lock:
        copying = w.copying_outside()
    removed = threading.Event()

    def remove() -> None:
        host.remove(wid)
        removed.set()
    remover = threading.Thread(target=remove)
    with copying:
        remover.start()
        # remove() takes the lock and then waits for the copy: the store stays open.
        assert not removed.wait(0.2)
        assert w.removed  # release() began, and waits
        assert w.memory0().data_len(w.store) > 0  # the store is still open
    remover.join()
    assert removed.is_set()
    with pytest.raises(UnknownWorkload):
        held.capture_delta(consistent=False)


def test_a_live_first_round_encoded_while_calls_write_then_rounds_restore_exactly(host, tmp_path):
    """``start_tracking_live``: the first round views the memory, encoded while calls write it.

    The memory stays held (removal would wait) until ``done``; the rounds
    after carry the pages written meanwhile, so the copy is identical.
    """
    wid = deploy(host, "dirtier")
    host.call(wid, "dt_init", [16])
    held = host.hold(wid)
    stop, failures = threading.Event(), []
    writer = _writing(host, wid, stop, failures)
    try:
        base, done = held.start_tracking_live()
        assert held._w.copies == 1  # the views keep the memory from being freed
        assert all(isinstance(run.data, memoryview) for m in base.memories for run in m.runs)
        encoded = b"".join(snapshot.SnapshotEncoder(copy_pages=True).encode(base))
        done()
        done()  # again: nothing
        assert held._w.copies == 0
        deltas = [held.capture_delta(consistent=False) for _ in range(3)]
    finally:
        stop.set()
        writer.join()
    assert not failures
    _rebuild_exactly(host, held, snapshot.Snapshot.from_bytes(encoded), deltas, tmp_path)


def test_removing_a_workload_waits_for_its_live_first_round_to_be_let_go(host):
    wid = deploy(host, "dirtier")
    host.call(wid, "dt_init", [4])
    held = host.hold(wid)
    base, done = held.start_tracking_live()
    remover = threading.Thread(target=host.remove, args=(wid,))
    remover.start()
    while not held._w.removed:  # release() began: it waits for the views to be let go
        threading.Event().wait(0.001)
    assert held._w.memory0().data_len(held._w.store) > 0  # the store is still open: the views are readable
    assert b"".join(snapshot.SnapshotEncoder(copy_pages=True).encode(base))
    done()
    remover.join()
    with pytest.raises(UnknownWorkload):
        held.start_tracking_live()


def test_removing_a_workload_while_rounds_are_copied_raises_unknown_workload_or_completes(host):
    wid = deploy(host, "dirtier")
    host.call(wid, "dt_init", [64])
    held = host.hold(wid)
    held.start_tracking()
    outcomes: list = []

    def rounds() -> None:
        try:
            while True:
                host.call(wid, "dt_dirty", [4096, 7])  # 16 MiB dirty: each copy takes a while
                outcomes.append(held.capture_delta(consistent=False).page_count)
        except UnknownWorkload as exc:
            outcomes.append(exc)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            outcomes.append(exc)
    capturer = threading.Thread(target=rounds)
    capturer.start()
    while not outcomes:
        threading.Event().wait(0.001)
    host.remove(wid)
    capturer.join()
    assert outcomes[:-1] and all(count >= 4096 for count in outcomes[:-1])
    assert isinstance(outcomes[-1], UnknownWorkload)


def test_a_held_workload_follows_a_rename_and_goes_with_a_remove(host):
    wid = deploy(host, "counter")
    held = host.hold(wid)
    held.start_tracking()
    held.rename("moved")
    assert held.workload_id == "moved"
    held.set_call_count(3)
    assert host.info("moved").calls == 3
    with pytest.raises(UnknownWorkload):
        host.hold(wid)
    host.remove("moved")
    for operation in (held.pause, held.capture_delta, held.state_hash, held.clock_state, held.launch_settings,
                      lambda: held.rename("again")):
        with pytest.raises(UnknownWorkload):
            operation()
    held.resume()         # nothing is held any more
    held.stop_tracking()  # its tracking went with it


def test_a_held_workload_of_a_closed_host_reports_the_host_closed(tmp_path):
    with Host(tmp_path / "node", limits=FAST) as host:
        held = host.hold(deploy(host, "counter"))
    with pytest.raises(HostClosed):
        held.clock_state()
    with pytest.raises(HostClosed):
        host.hold("anything")
    held.resume()


def test_the_switch_interval_is_short_while_tracking_and_restored_after_overlapping_moves(host):
    before = sys.getswitchinterval()
    first, second = deploy(host, "counter"), deploy(host, "counter")
    host.hold(first).start_tracking()
    host.hold(second).start_tracking()
    assert sys.getswitchinterval() == pytest.approx(min(before, _switching.MOVING_SWITCH_INTERVAL_S), abs=2e-6)
    host.hold(first).stop_tracking()
    assert sys.getswitchinterval() == pytest.approx(min(before, _switching.MOVING_SWITCH_INTERVAL_S), abs=2e-6)  # one move
    host.remove(second)  # a removed workload's tracking ends with it
    assert sys.getswitchinterval() == before
    assert _switching.moves_in_flight() == 0


@pytest.mark.parametrize("seed", range(3))
def test_tracking_started_while_calls_write_and_grow_the_memory_restores_exactly(host, tmp_path, seed):
    """The tracker is armed and the first round copied while another thread's calls write pages and
    grow the memory (``dt_init`` of a larger region mallocs, so ``memory.grow``); deltas, then one
    taken paused, rebuild the workload exactly."""
    wid = deploy(host, "dirtier")
    host.call(wid, "dt_init", [8])
    held = host.hold(wid)
    stop, calls, failures = threading.Event(), [0], []

    def run() -> None:
        mib = 8
        while not stop.is_set():
            try:
                if calls[0] % 7 == seed:
                    mib += 3
                    host.call(wid, "dt_init", [mib])
                host.call(wid, "dt_dirty", [16, calls[0] * 3 + seed])
            except BaseException as exc:  # noqa: BLE001 - the test reports it
                failures.append(exc)
                return
            calls[0] += 1
    writer = threading.Thread(target=run)
    writer.start()
    try:
        while calls[0] < 2 and not failures:
            threading.Event().wait(0.001)
        base = held.start_tracking()
        during = calls[0]
        deltas = [held.capture_delta(consistent=False) for _ in range(3)]
    finally:
        stop.set()
        writer.join()
    assert not failures and calls[0] > during
    _rebuild_exactly(host, held, base, deltas, tmp_path)
    held.stop_tracking()


def test_tracking_started_twice_keeps_one_tracker(host):
    """A second ``start_tracking`` replaces the first's tracker: the memory has one userfaultfd watching it."""
    wid = deploy(host, "dirtier")
    host.call(wid, "dt_init", [4])
    held = host.hold(wid)
    held.start_tracking()
    host.call(wid, "dt_dirty", [5, 1])
    held.start_tracking()
    host.call(wid, "dt_dirty", [5, 2])
    assert 5 <= held.capture_delta().page_count <= 5 + 8
    held.stop_tracking()
    assert _switching.moves_in_flight() == 0


def test_tracking_a_memory_that_may_move_holds_it_and_restores_exactly(tmp_path):
    """A caller's engine may move a memory when it grows: the tracker is armed and the first round
    copied holding the workload; the chain still rebuilds it exactly."""
    config = wasmtime.Config()
    config.epoch_interruption = True
    with Host(tmp_path / "node", limits=FAST, engine=wasmtime.Engine(config), engine_fingerprint="mine") as host:
        wid = deploy(host, "dirtier")
        host.call(wid, "dt_init", [4])
        held = host.hold(wid)
        assert not held._w.memory_fixed
        base = held.start_tracking()
        host.call(wid, "dt_init", [9])  # a larger region: the memory grows
        host.call(wid, "dt_dirty", [30, 5])
        _rebuild_exactly(host, held, base, [held.capture_delta(consistent=False)], tmp_path)


def test_a_paused_workload_is_viewed_in_place_and_its_removal_waits_for_done(host, tmp_path):
    """``view_paused``: the views encode the whole state (it restores exactly), and a removal waits for ``done``."""
    wid = deploy(host, "dirtier")
    host.call(wid, "dt_init", [4])
    host.call(wid, "dt_dirty", [30, 2])
    held = host.hold(wid)
    with pytest.raises(SnapshotFailed, match="only while it is paused"):
        held.view_paused()
    held.pause()
    copied = host.checkpoint(wid)  # the same state, copied out
    viewed = held.view_paused()
    assert viewed is not None  # the host's own engine: the memory never moves
    snap, done = viewed
    remover = threading.Thread(target=host.remove, args=(wid,))
    remover.start()
    while not held._w.removed:  # release() began: it waits for the views to be let go
        threading.Event().wait(0.001)
    encoded = b"".join(snapshot.SnapshotEncoder().encode(snap))
    expected = snapshot.Snapshot.from_bytes(encoded)
    done()
    done()  # twice does nothing
    remover.join()
    def memories(snap: snapshot.Snapshot) -> list[bytes]:
        out = []
        for m in snap.memories:
            flat = bytearray(m.size_bytes)
            for r in m.runs:
                flat[r.first_page * snapshot.PAGE_BYTES:r.end_page * snapshot.PAGE_BYTES] = r.data
            out.append(bytes(flat))
        return out

    assert memories(expected) == memories(copied) and expected.globals == copied.globals
    assert any(memories(copied)[0][4096 * p:4096 * (p + 1)] != bytes(4096) for p in range(16))
