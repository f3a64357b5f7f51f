"""Workload lifecycles on real nodes: names, detached workloads, schedules, posted events, expiry and tenants.

Real ``migrate-node`` processes on loopback; applications come and go by
closing their ``Cluster`` and connecting a new one.  Waits are for
conditions, with generous timeouts.
"""

from __future__ import annotations

import pytest
import trio
import wasmtime

import migrate
from nodes import Forbidden, NodeClient
from nodeproc import run_cli

#: A background workload: ``tick`` (the schedule) counts, ``on_frame(ptr, len)`` (the events) counts events
#: and their bytes; all state in memory (ticks at 0, events at 8, bytes at 16), buffers from a bump allocator.
WATCH = wasmtime.wat2wasm("""
(module
  (memory (export "memory") 1)
  (func $bump (param $at i32) (param $by i64) (result i64)
    (i64.store (local.get $at) (i64.add (i64.load (local.get $at)) (local.get $by)))
    (i64.load (local.get $at)))
  (func (export "tick") (result i64) (call $bump (i32.const 0) (i64.const 1)))
  (func (export "on_frame") (param $ptr i32) (param $len i32) (result i64)
    (drop (call $bump (i32.const 16) (i64.extend_i32_u (local.get $len))))
    (call $bump (i32.const 8) (i64.const 1)))
  (func (export "ticks") (result i64) (i64.load (i32.const 0)))
  (func (export "events") (result i64) (i64.load (i32.const 8)))
  (func (export "bytes") (result i64) (i64.load (i32.const 16)))
  (func (export "wm_alloc") (param $n i32) (result i32) (i32.const 4096))
  (func (export "wm_free") (param $p i32)))
""")
WAIT_S = 30.0


async def lifecycle_of(node, workload: str, tls) -> dict | None:
    """The node's lifecycle record of ``workload`` in ``status``; None if it has none."""
    async with await NodeClient.connect(node.address, tls=tls) as client:
        report = await client.status()
    return next((r for r in report.migrations if r.get("workload") == workload and "lifecycle" in r), None)


async def counters_of(node, tls) -> dict:
    async with await NodeClient.connect(node.address, tls=tls) as client:
        return (await client.status()).counters


async def workload_ids(node, tls) -> set[str]:
    async with await NodeClient.connect(node.address, tls=tls) as client:
        return {w.workload_id for w in await client.workloads()}


async def until(check, what: str, timeout_s: float = WAIT_S):
    """Ask ``check()`` until it returns something truthy; return that."""
    with trio.fail_after(timeout_s):
        while True:
            got = await check()
            if got:
                return got
            await trio.sleep(0.05)
    raise AssertionError(what)


async def test_a_detached_workload_ticks_alone_is_attached_again_and_gets_each_event_once_across_a_move(
        node_procs, cluster_tls):
    edge, cloud = node_procs.start("edge-1", "edge"), node_procs.start("cloud-1", "cloud")
    app = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), str(cloud.address), tls=app) as c:
        h = await c.spawn(WATCH, on="edge-1", name="camera-watch", detached=True, every={"tick": 0.1})
        assert await c.post("camera-watch", "on_frame", b"abc") == 1
        assert await h.call("bytes") == 3
    # no application is connected: the schedule keeps firing on the owner
    first = await lifecycle_of(edge, "camera-watch", app)
    assert first["lifecycle"] == "running" and first["detached"] and first["expires_at"] is None
    ran = await until(lambda: _fired_beyond(edge, app, first["schedules"]["tick"]["fired"] + 5), "ticks alone")

    async with migrate.connect(str(edge.address), str(cloud.address), tls=app) as c:
        h = await c.attach("camera-watch")
        assert h.node == "edge-1"
        assert await h.call("ticks") >= ran and await h.call("events") == 1 and await h.call("bytes") == 3

        async def post_many(n: int) -> None:
            for i in range(n):
                await c.post("camera-watch", "on_frame", b"x" * (i + 1))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(post_many, 30)
            await h.migrate("cloud-1")
        assert h.node == "cloud-1"
        assert await h.call("events") == 31 and await h.call("bytes") == 3 + sum(range(1, 31))
        # the schedule moved with it: it goes on firing on cloud-1, counting on from where it was
        moved = await lifecycle_of(cloud, "camera-watch", app)
        assert moved["schedules"]["tick"]["fired"] >= ran
        later = await until(lambda: _fired_beyond(cloud, app, moved["schedules"]["tick"]["fired"] + 3),
                            "ticks after the move")
        ticks = await h.call("ticks")
        after = (await lifecycle_of(cloud, "camera-watch", app))["schedules"]["tick"]["fired"]
        # every firing ran exactly once: the counter in memory is the firing count (one may be in flight)
        assert later <= ticks <= after + 1
        assert await lifecycle_of(edge, "camera-watch", app) is None


async def _fired_beyond(node, tls, least: int) -> int | None:
    record = await lifecycle_of(node, "camera-watch", tls)
    fired = record["schedules"]["tick"]["fired"] if record else 0
    return fired if fired >= least else None


async def test_lifecycle_and_schedule_survive_a_node_restart(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge")
    app = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), tls=app) as c:
        await c.spawn(WATCH, on="edge-1", name="camera-watch", detached=True, ttl=3600.0, every={"tick": 0.1})
    before = await until(lambda: _fired_beyond(edge, app, 3), "ticks before the restart")
    expires = (await lifecycle_of(edge, "camera-watch", app))["expires_at"]
    assert await trio.to_thread.run_sync(edge.terminate) == 0
    await trio.to_thread.run_sync(edge.restart)
    record = await lifecycle_of(edge, "camera-watch", app)
    assert record["detached"] and record["expires_at"] == expires  # the same deadline on the wall clock
    assert record["lifecycle"] == "expiring"  # its application said goodbye before the restart
    shown = (await trio.to_thread.run_sync(lambda: run_cli("status", "--node", str(edge.address),
                                                           "--tls-dir", str(app)))).stdout
    assert f"workload camera-watch expiring at {expires} detached: tick every 0.1 s" in shown
    listed = (await trio.to_thread.run_sync(lambda: run_cli("list", "--node", str(edge.address),
                                                            "--tls-dir", str(app)))).stdout
    row = next(line for line in listed.splitlines() if line.startswith("camera-watch "))
    assert row.endswith(f"  expiring at {expires}, detached, tick every 0.1 s"), row
    assert record["schedules"]["tick"]["fired"] >= before
    await until(lambda: _fired_beyond(edge, app, before + 3), "ticks after the restart")
    async with migrate.connect(str(edge.address), tls=app) as c:
        h = await c.attach("camera-watch")
        fired = (await lifecycle_of(edge, "camera-watch", app))["schedules"]["tick"]["fired"]
        assert fired - 1 <= await h.call("ticks") <= fired + 1


async def test_a_detached_workload_expires_after_its_ttl_unseen(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge")
    app = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), tls=app) as c:
        h = await c.spawn(WATCH, on="edge-1", name="short-lived", detached=True, ttl=2.0)
        await h.call("tick")
    # the application said goodbye: shown as expiring, at a time
    record = await lifecycle_of(edge, "short-lived", app)
    if record is not None:  # (it may be gone already on a slow machine)
        assert record["lifecycle"] == "expiring" and record["expires_at"]
    await until(lambda: _gone(edge, app, "short-lived"), "expiry")
    assert (await counters_of(edge, app))["workloads_expired"] == 1
    lines = [line for line in edge.log_lines() if line.get("msg") == "workload expired"]
    assert len(lines) == 1 and lines[0]["workload"] == "short-lived" and lines[0]["reason"] == "expired"


async def _gone(node, tls, workload: str) -> bool:
    return workload not in await workload_ids(node, tls)


async def test_a_held_workload_lives_while_its_application_does_and_is_removed_after_the_grace(
        node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge")
    app = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), tls=app) as c:
        held = await c.spawn(WATCH, on="edge-1", name="session", detached=False, grace_s=2.0)
        plain = await c.spawn(WATCH, on="edge-1")  # no lifecycle: never removed by the node
        await trio.sleep(6.0)  # three grace periods: the keeper renews the lease meanwhile
        assert await held.call("tick") == 1
        assert (await lifecycle_of(edge, "session", app))["lifecycle"] == "running"
        assert await lifecycle_of(edge, plain.workload, app) is None
        async with await NodeClient.connect(edge.address, tls=app) as client:
            listed = {w.workload_id: w.lifecycle for w in await client.workloads()}
        assert listed == {"session": "running", plain.workload: ""}
    await until(lambda: _gone(edge, app, "session"), "removal after the grace period")
    assert (await counters_of(edge, app))["workloads_abandoned"] == 1
    assert plain.workload in await workload_ids(edge, app)


async def test_another_tenant_can_neither_attach_nor_post(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge")
    tenant_a, tenant_b = cluster_tls.issue("app-a", "client"), cluster_tls.issue("app-b", "client")
    async with migrate.connect(str(edge.address), tls=tenant_a, local=False) as c:
        await c.spawn(WATCH, on="edge-1", name="camera-watch", detached=True)
        assert await c.post("camera-watch", "on_frame", "hé") == 1
    async with migrate.connect(str(edge.address), tls=tenant_b, local=False) as other:
        with pytest.raises(Forbidden):
            await other.attach("camera-watch")
        with pytest.raises(Forbidden):
            await other.post("camera-watch", "on_frame", b"x")
    async with migrate.connect(str(edge.address), tls=tenant_a, local=False) as again:
        h = await again.attach("camera-watch")
        assert await h.call("events") == 1 and await h.call("bytes") == 3  # "hé" is 3 bytes of UTF-8


async def test_lifecycle_options_are_checked_before_anything_starts(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge")
    app = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), tls=app) as c:
        with pytest.raises(ValueError, match="detached=True"):
            await c.spawn(WATCH, on="edge-1", name="x", ttl=5.0)
        with pytest.raises(ValueError, match="every"):
            await c.spawn(WATCH, on="edge-1", name="x", detached=True, every={"tick": 0.0})
        with pytest.raises(ValueError, match="differ"):
            await c.spawn(WATCH, on="edge-1", name="x", workload="y")
        assert await workload_ids(edge, app) == set()


async def test_a_promoted_standby_takes_the_lifecycle_and_schedule_on(node_procs, cluster_tls):
    edge, cloud = node_procs.start("edge-1", "edge"), node_procs.start("cloud-1", "cloud")
    app = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), str(cloud.address), tls=app) as c:
        h = await c.spawn(WATCH, on="edge-1", name="camera-watch", detached=True, ttl=3600.0, every={"tick": 0.1})
        await h.protect("standby", to="cloud-1")
        before = await until(lambda: _fired_beyond(edge, app, 5), "ticks on the owner")
        edge.kill()
        assert await h.call("ticks") >= before  # the handle fails over: the standby is promoted
        assert h.node == "cloud-1"
        record = await lifecycle_of(cloud, "camera-watch", app)
        assert record["detached"] and record["schedules"]["tick"]["fired"] >= before
        later = await until(lambda: _fired_beyond(cloud, app, record["schedules"]["tick"]["fired"] + 3),
                            "ticks after the promotion")
        ticks = await h.call("ticks")
        after = (await lifecycle_of(cloud, "camera-watch", app))["schedules"]["tick"]["fired"]
        assert later <= ticks <= after + 1  # no firing ran twice: the standby's replayed ones are in its ledger


async def test_a_held_workload_is_renewed_across_its_node_restart_and_dropped_once_removed(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge")
    app = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), tls=app) as c:
        h = await c.spawn(WATCH, on="edge-1", name="session", detached=False, grace_s=2.0)
        assert await trio.to_thread.run_sync(edge.terminate) == 0
        await trio.sleep(1.0)  # renewals fail while the node is down: the workload stays held
        await trio.to_thread.run_sync(edge.restart)
        await trio.sleep(6.0)  # three grace periods after the restart: the keeper renews meanwhile
        assert "session" in await workload_ids(edge, app)
        assert await h.call("tick") == 1
        await h.remove()
        await until(lambda: _not_held(c, "session"), "the keeper dropping a removed workload")


async def _not_held(cluster, workload: str) -> bool:
    return not cluster.keeper.holds(workload)


async def test_a_checkpoint_failover_takes_the_lifecycle_and_schedule_on(node_procs, cluster_tls):
    """Checkpoint protection: the owner is killed, the application restores its last checkpoint on cloud-1,
    and the restored copy is still detached, keeps its lease and goes on firing its schedule there."""
    edge, cloud = node_procs.start("edge-1", "edge"), node_procs.start("cloud-1", "cloud")
    app = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), str(cloud.address), tls=app) as c:
        h = await c.spawn(WATCH, on="edge-1", name="camera-watch", detached=True, ttl=3600.0, every={"tick": 0.1})
        await h.protect("checkpoint", interval_s=0.05, to="cloud-1")
        await until(lambda: _fired_beyond(edge, app, 5), "ticks on the owner")
        with trio.fail_after(WAIT_S):  # a checkpoint taken after some firings
            while c.protection(h.workload).checkpoint_index < 3:
                await trio.sleep(0.02)
        edge.kill()
        ticks = await h.call("ticks")  # the handle fails over: the checkpoint is restored on cloud-1
        assert h.node == "cloud-1" and ticks >= 3
        record = await lifecycle_of(cloud, "camera-watch", app)
        assert record is not None and record["detached"] and "tick" in record["schedules"]
        fired = record["schedules"]["tick"]["fired"]
        await until(lambda: _fired_beyond(cloud, app, fired + 3), "ticks after the failover")
        assert await h.call("ticks") > ticks  # the restored copy's own schedule ran it
