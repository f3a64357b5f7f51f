"""``Host.hold``: the operations only a migration needs, on one workload (``Held``)."""

from __future__ import annotations

import pytest

from nodes import Host, HostClosed, SnapshotFailed, UnknownWorkload

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
