"""Hibernation in one process: exact state across a sleep, waking on use, damaged files, quotas, checkpoints."""

from __future__ import annotations

import functools
import os
import threading

import pytest
import trio
import wasmtime

import migrate
import workloads
from migrate._messages import MCall
from nodes import Host, Limits, NodeClient, ResourceLimitExceeded, SnapshotFailed
from nodes._hibernate import FILE, sweep
from nodeproc import run_cli

MiB = 2**20
KEY = bytes(range(32))

# Memory, a mutable global and a table of functions: the whole state a snapshot holds.
STATEFUL = wasmtime.wat2wasm(r"""
(module
  (memory (export "memory") 2)
  (global $g (mut i64) (i64.const 5))
  (table $t 4 funcref)
  (func $one (result i32) (i32.const 1))
  (func $two (result i32) (i32.const 2))
  (elem declare func $one $two)
  (type $r (func (result i32)))
  (func (export "mutate") (param $x i32)
    (i32.store (i32.const 70000) (local.get $x))
    (global.set $g (i64.add (global.get $g) (i64.extend_i32_u (local.get $x))))
    (table.set $t (i32.const 3) (ref.func $two)))
  (func (export "peek") (result i64)
    (i64.add (global.get $g)
             (i64.extend_i32_u (i32.add (i32.load (i32.const 70000))
                                        (call_indirect (type $r) (i32.const 3)))))))
""")


def _host(tmp_path, **limits) -> Host:
    host = Host(tmp_path / "data", limits=Limits(call_timeout_s=5, **limits))
    host.hibernator.key = KEY
    return host


def test_hibernate_then_wake_keeps_the_exact_state(tmp_path):
    with _host(tmp_path) as host:
        wid = host.deploy(host.add_module(STATEFUL), workload_id="s").workload_id
        host.call(wid, "mutate", [41])
        before = host.checkpoint(wid)
        written = host.hibernate(wid)
        info = host.info(wid)
        assert (info.state, info.memory_bytes, info.calls) == ("hibernated", 0, 1)
        path = tmp_path / "data" / "workloads" / "s" / FILE
        assert path.stat().st_size == written
        assert b"\x29\x00\x00\x00" not in path.read_bytes()  # sealed: the stored 41 is not in clear
        assert host.checkpoint(wid).same_state(before)  # the capture wakes it: memory, globals, tables identical
        assert host.info(wid).state == "ready" and not path.exists()
        assert host.call(wid, "peek") == 5 + 41 + 41 + 2
        for thread in threading.enumerate():  # the renamed file is deleted in a thread of its own
            if thread.name == "hibernation-file-delete":
                thread.join()
        assert not [p.name for p in path.parent.iterdir() if FILE in p.name]


def test_a_call_wakes_it_and_runs_once(tmp_path):
    with _host(tmp_path) as host:
        wid = host.deploy(host.add_module(workloads.load("counter"))).workload_id
        assert host.call(wid, "incr", [1]) == 1
        host.hibernate(wid)
        assert host.call(wid, "incr", [1]) == 2  # woken by the call, which ran once
        assert host.info(wid).calls == 2
        host.hibernate(wid)
        with pytest.raises(SnapshotFailed, match="hibernated already"):
            host.hibernate(wid)
        host.hold(wid).rename("renamed")  # its file moves along
        assert host.call("renamed", "incr", [1]) == 3
        host.hibernate("renamed")
        host.remove("renamed")  # its file goes with it
        assert not (tmp_path / "data" / "workloads" / "renamed").exists()


def test_a_tampered_file_is_a_typed_error_and_loses_nothing(tmp_path):
    with _host(tmp_path) as host:
        counter = host.add_module(workloads.load("counter"))
        a = host.deploy(counter, workload_id="a").workload_id
        b = host.deploy(counter, workload_id="b").workload_id
        host.call(a, "incr", [7])
        host.call(b, "incr", [3])
        host.hibernate(a)
        path = tmp_path / "data" / "workloads" / "a" / FILE
        good = path.read_bytes()
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0x40
        path.write_bytes(bytes(bad))
        with pytest.raises(SnapshotFailed, match="cannot wake") as caught:
            host.call(a, "incr", [1])
        assert caught.value.started is False
        assert host.info(a).state == "hibernated" and path.read_bytes() == bytes(bad)
        assert host.call(b, "incr", [1]) == 4  # the neighbour is untouched
        path.write_bytes(good)
        assert host.call(a, "incr", [1]) == 8  # the good file still wakes it: nothing was lost


def test_hibernated_workloads_count_against_disk_not_memory(tmp_path):
    cap = 4 * MiB
    with _host(tmp_path, memory_bytes=cap, workloads_memory_bytes=2 * cap) as host:
        counter = host.add_module(workloads.load("counter"))
        a = host.deploy(counter, workload_id="a").workload_id
        host.deploy(counter, workload_id="b")
        with pytest.raises(ResourceLimitExceeded, match="workloads_memory_bytes"):
            host.deploy(counter, workload_id="c")
        host.call(a, "incr", [5])
        host.hibernate(a)
        host.deploy(counter, workload_id="c")  # a's memory cap no longer counts
        with pytest.raises(ResourceLimitExceeded, match="workloads_memory_bytes") as caught:
            host.call(a, "incr", [1])  # no room to wake it
        assert caught.value.started is False and host.info(a).state == "hibernated"
        host.remove("c")
        assert host.call(a, "incr", [1]) == 6
    with _host(tmp_path / "small", hibernated_bytes=64) as host:
        wid = host.deploy(host.add_module(workloads.load("counter"))).workload_id
        with pytest.raises(ResourceLimitExceeded, match="hibernated_bytes"):
            host.hibernate(wid)
        assert host.info(wid).state == "ready" and host.call(wid, "incr", [1]) == 1
        assert not list((tmp_path / "small").rglob(f"*{FILE}*"))  # the refused file was written, then deleted


def test_a_checkpoint_keeps_it_hibernated_and_a_new_host_wakes_it(tmp_path):
    saved = tmp_path / "saved"
    with _host(tmp_path) as host:
        wid = host.deploy(host.add_module(STATEFUL), workload_id="s", idle_s=30).workload_id
        host.call(wid, "mutate", [9])
        before = host.checkpoint(wid)
        host.hibernate(wid)
        assert host.checkpoint_all(saved, key=KEY).done == ("s",)
        assert not list(saved.glob("*.snap"))  # the manifest names the hibernation file instead
    with _host(tmp_path) as host:
        assert host.restore_all(saved, key=KEY).done == ("s",)
        assert host.info("s").state == "hibernated" and host.stats().memory_bytes == 0
        assert host.checkpoint("s").same_state(before)
        assert host.call("s", "peek") == 5 + 9 + 9 + 2
        host.deploy(host.add_module(STATEFUL), workload_id="t")
        host.hibernate("t")
        host.hibernate("s")
        assert set(host.checkpoint_all(saved, key=KEY).done) == {"s", "t"}
    with _host(tmp_path, max_workloads=1) as host:  # adopting counts workloads
        report = host.restore_all(saved, key=KEY)
        assert len(report.done) == 1 and "max_workloads" in report.failed[0][1]


async def test_the_sweeper_hibernates_idle_workloads_only(tmp_path):
    with _host(tmp_path) as host:
        counter = host.add_module(workloads.load("counter"))
        idle = host.deploy(counter, workload_id="idle", idle_s=0.05).workload_id
        never = host.deploy(counter, workload_id="never", idle_s=0).workload_id
        default = host.deploy(counter, workload_id="default").workload_id
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(sweep, host, None, tick_s=0.02))
            while host.info(idle).state != "hibernated":
                await trio.sleep(0.02)
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        assert host.info(never).state == host.info(default).state == "ready"
        assert os.path.exists(tmp_path / "data" / "workloads" / "idle" / FILE)


# --- a real node ----------------------------------------------------------------------------------------------


async def _states(node, tls) -> dict[str, str]:
    async with await NodeClient.connect(node.address, tls=tls) as client:
        return {w.workload_id: w.state for w in await client.workloads()}


async def _raw_incr(node, tls, workload: str, seq: int):
    """One MCall with a fixed (caller, seq), as a handle sends it: a retry must get the recorded outcome."""
    async with await NodeClient.connect(node.address, tls=tls) as client:
        return await client.request(MCall, workload=workload, op="call", caller="raw-caller", seq=seq,
                                    export="incr", args=(10,))


async def _until_hibernated(edge, tls, workload):
    while (await _states(edge, tls))[workload] != "hibernated":
        await trio.sleep(0.1)


async def test_a_real_node_hibernates_wakes_and_keeps_it_hibernated_across_a_restart(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge", args=["--idle-s", "3600"])
    tls = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), tls=tls) as c:
        # Sooner than the node's default, but long enough that the sweeper
        # (its tick is 1 s) does not hibernate it between two steps below.
        h = await c.spawn(workloads.load("counter"), on="edge-1", idle_s=1.0)
        assert await h.call("incr", 1) == 1
        await _until_hibernated(edge, tls, h.workload)
        first = await _raw_incr(edge, tls, h.workload, seq=0)  # wakes it; runs once
        assert first.values == (11,) and not first.replayed
        await _until_hibernated(edge, tls, h.workload)  # idle again
        again = await _raw_incr(edge, tls, h.workload, seq=0)  # the ledger survived: no second run
        assert again.replayed and again.values == (11,)
        assert (await _states(edge, tls))[h.workload] == "hibernated"  # a replayed outcome does not wake it
        other = await c.spawn(workloads.load("counter"), on="edge-1")  # the node default: never within the test
        assert await other.call("incr", 5) == 5
        listing = run_cli("hibernate", other.workload, "--node", str(edge.address), "--tls-dir", str(tls)).stdout
        assert f"hibernated {other.workload}" in listing

        assert await trio.to_thread.run_sync(edge.terminate) == 0
        await trio.to_thread.run_sync(edge.restart)

        assert await _states(edge, tls) == {h.workload: "hibernated", other.workload: "hibernated"}
        listing = run_cli("list", "--node", str(edge.address), "--tls-dir", str(tls)).stdout
        assert "hibernated" in listing
        again = await _raw_incr(edge, tls, h.workload, seq=0)
        assert again.replayed and again.values == (11,)  # the ledger survived the restart too
        assert await h.call("incr", 1) == 12  # wakes it with its exact state
        assert (await _states(edge, tls))[h.workload] == "ready"
        async with await NodeClient.connect(edge.address, tls=tls) as client:
            await client.hibernate(h.workload)  # at once, well within its idle_s
        assert await other.call("incr", 1) == 6  # wakes it
        assert (await _states(edge, tls))[h.workload] == "hibernated"
        await h.migrate("local", strategy="precopy")  # the move's first step wakes it
        assert h.node == "local" and await h.call("incr", 1) == 13


def test_a_new_host_sweeps_the_half_written_files_a_killed_one_left(tmp_path, caplog):
    """``.NAME.HEX.tmp`` files an ``atomic_file`` never finished: old ones go at start, a fresh one (a live
    writer's) and anything else stay; the files they would have replaced are untouched."""
    data = tmp_path / "data"
    home = data / "workloads" / "w1"
    home.mkdir(parents=True)
    (home / FILE).write_bytes(b"the last complete file")
    old = home / f".{FILE}.{'ab' * 16}.tmp"
    fresh = home / f".{FILE}.{'cd' * 16}.tmp"
    other = home / ".notes.tmp"
    for path in (old, fresh, other):
        path.write_bytes(b"partial")
    long_ago = os.path.getmtime(old) - 3600
    os.utime(old, (long_ago, long_ago))
    os.utime(other, (long_ago, long_ago))
    with caplog.at_level("WARNING", logger="nodes._hosting"), _host(tmp_path):
        pass
    assert not old.exists() and fresh.exists() and other.exists()
    assert (home / FILE).read_bytes() == b"the last complete file"
    assert any(getattr(r, "path", None) == str(old) for r in caplog.records)
