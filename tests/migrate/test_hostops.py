"""The host work of a move's steps (``migrate._hostops``), on a real ``Host``: the fused trips a switch makes."""

from __future__ import annotations


import pytest

from snapshot._snapshot import decode
from migrate import _hostops as ops
from migrate._frozen import frozen_round
from nodes import Host, SnapshotFailed
from nodes._replay import ReplayMode

from test_hosting import FAST, deploy, state_of



def _mode(host: Host, wid: str) -> ReplayMode:
    return host.hold(wid)._w.budget.inputs.mode


@pytest.fixture
def host(tmp_path):
    with Host(tmp_path / "node", limits=FAST) as h:
        yield h


def _frozen(host: Host, wid: str) -> bool:
    """Whether calls to ``wid`` are held (``ops.freeze``) until ``ops.thaw``."""
    return not host.hold(wid)._w.thawed.is_set()


def test_switch_freezes_seals_and_reads_the_commit_facts(host):
    wid = deploy(host, "dirtier")
    host.call(wid, "dt_init", [1])
    held = host.hold(wid)
    held.start_tracking()
    ops.cut(host, wid)
    host.call(wid, "dt_dirty", [3, 7])  # writes after the cut: the switch's page list names them
    calls_before, clock_before = host.info(wid).calls, held.clock_state()
    pages, digest, facts = ops.switch(host, wid, False)

    assert pages and all(isinstance(p, int) for ps in pages.values() for p in ps)
    assert digest == held.pages_digest(pages)
    assert facts[0] == calls_before == host.info(wid).calls
    assert clock_before <= facts[1] <= held.clock_state()
    assert _frozen(host, wid), "the switch left the workload running"
    ops.thaw(host, wid)
    assert not _frozen(host, wid)
    assert _mode(host, wid) is ReplayMode.OFF  # ``keep_recording`` False: recording ends with the switch


def test_switch_keeps_recording_when_asked(host):
    wid = deploy(host, "clockrand")
    held = host.hold(wid)
    held.start_tracking()
    ops.cut(host, wid)
    ops.switch(host, wid, True)
    ops.thaw(host, wid)
    assert _mode(host, wid) is ReplayMode.RECORD  # a standby goes on replaying what the new owner records
    ops.switch(host, wid, False)
    ops.thaw(host, wid)
    assert _mode(host, wid) is ReplayMode.OFF


def test_frozen_round_rebuilds_the_workload_and_carries_the_commit_facts(host, tmp_path):
    """Freeze, capture, facts and encoding in one trip: the pieces restore the state exactly, and fit ``size``."""
    wid = deploy(host, "dirtier")
    host.call(wid, "dt_init", [2])
    held = host.hold(wid)
    base = held.start_tracking()
    host.call(wid, "dt_dirty", [40, 3])
    size = 16 * 1024
    clock_before = held.clock_state()
    made = frozen_round(True, host, wid, size)

    assert made.pieces and all(len(piece) <= size for piece in made.pieces)
    calls, clock = ops.commit_facts(host, wid)
    assert made.facts[0] == calls == 2
    assert clock_before <= made.facts[1] <= clock  # the guest's clock at the freeze: what it saw last, or later
    assert made.pages >= 40
    assert made.capture_s >= 0 and made.encode_s >= 0
    assert _frozen(host, wid), "the round left the workload running"
    with Host(tmp_path / "target", limits=FAST) as target:
        sha = target.add_module(host.module_bytes(host.info(wid).module_sha256))
        target.restore(sha, base, workload_id=wid, **held.launch_settings())
        target.hold(wid).apply(decode(b"".join(made.pieces)), monotonic_ns=made.facts[1])
        assert state_of(target, wid) == state_of(host, wid)
    ops.thaw(host, wid)


def test_frozen_round_raises_what_the_capture_raises_and_leaves_the_thaw_to_the_caller(host):
    wid = deploy(host, "dirtier")
    host.call(wid, "dt_init", [1])
    with pytest.raises(SnapshotFailed, match="not started"):
        frozen_round(True, host, wid, 1 << 20)  # no tracking: no delta
    assert _frozen(host, wid), "the failed round thawed the workload itself"
    ops.thaw(host, wid)
    assert not _frozen(host, wid)


def test_a_stop_copy_frozen_round_is_encoded_from_the_memory_in_place_and_restores_exactly(host, tmp_path):
    """The whole state, read from the frozen memory without a copy: it restores the workload on another host."""
    wid = deploy(host, "dirtier")
    host.call(wid, "dt_init", [2])
    host.call(wid, "dt_dirty", [40, 3])
    made = frozen_round(False, host, wid, 16 * 1024)
    assert _frozen(host, wid)
    assert made.pages >= 40
    with Host(tmp_path / "target", limits=FAST) as target:
        sha = target.add_module(host.module_bytes(host.info(wid).module_sha256))
        target.restore(sha, decode(b"".join(made.pieces)), workload_id=wid, **host.hold(wid).launch_settings(),
                       calls=made.facts[0], monotonic_ns=made.facts[1])
        assert state_of(target, wid) == state_of(host, wid)
    ops.thaw(host, wid)


def test_pages_are_read_in_place_only_while_the_workload_is_paused(host):
    wid = deploy(host, "dirtier")
    host.call(wid, "dt_init", [1])
    host.hold(wid).start_tracking()
    host.call(wid, "dt_dirty", [5, 1])
    for delta in (False, True):
        with pytest.raises(SnapshotFailed, match="only while it is paused"):
            ops.read_paused(host, wid, lambda snap: snap.page_count, delta)
    ops.freeze(host, wid)
    assert ops.read_paused(host, wid, lambda snap: snap.page_count, True) >= 5  # the refused reads took no delta
    assert ops.read_paused(host, wid, lambda snap: snap.page_count, True) == 0  # nothing written since
    assert ops.read_paused(host, wid, lambda snap: snap.page_count, False) > 0
    ops.thaw(host, wid)
