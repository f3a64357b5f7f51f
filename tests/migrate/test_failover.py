"""Protection and failover back to the client, with real nodes killed with SIGKILL."""

import contextlib

import pytest
import trio

import migrate
import workloads
from migrate._messages import MLocate, MReplay, MWhere
from migrate._replies import expect
from migrate.wire import MigrationCode
from nodes import Done, RemoteNodeError


async def test_kill_9_of_the_edge_mid_stream_fails_over_to_the_client_with_exact_state(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge")
    async with migrate.connect(str(edge.address), tls=cluster_tls.issue("app-1", "node")) as cluster:
        events = cluster.events()
        h = await cluster.spawn(workloads.load("counter"), on="edge-1")
        await h.protect("checkpoint", interval_s=0.1, to="local")
        others = [await cluster.attach(h.workload) for _ in range(2)]
        results: list[int] = []
        killed = trio.Event()

        async def hammer(handle, n):
            for _ in range(n):
                results.append(await handle.call("incr", 1))
                if len(results) == 150 and not killed.is_set():
                    edge.kill()  # SIGKILL, mid-stream
                    killed.set()

        async with trio.open_nursery() as nursery:
            for handle in (h, *others):
                nursery.start_soon(hammer, handle, 120)
        assert killed.is_set()
        assert len(results) == 360
        assert len(results) == len(set(results)), "an acknowledged call was applied twice"
        assert sorted(results) == list(range(1, 361)), "an acknowledged call was lost"
        assert await h.call("get") == 360
        assert h.node == "local"
        event = events.receive_nowait()
        while event.kind != "failed_over":
            event = events.receive_nowait()
        assert event.workload == h.workload and event.node == "local"


async def test_unprotected_workload_on_a_dead_node_is_a_typed_error(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge")
    async with migrate.connect(str(edge.address), tls=cluster_tls.issue("app-1", "node")) as cluster:
        h = await cluster.spawn(workloads.load("counter"), on="edge-1")
        h.retry_s = h.reconnect_timeout_s = 0.5
        assert await h.call("incr", 1) == 1
        edge.kill()
        with pytest.raises(migrate.WorkloadUnavailable) as info:
            await h.call("incr", 1)
        # The application reads that the node closed its connection before it sends a call on it
        # (the same check lets a handle reconnect after an idle close), so the call never left.
        assert info.value.ran is False
        with pytest.raises(migrate.WorkloadUnavailable) as info:
            await h.call("incr", 1)
        assert info.value.ran is False  # no node could even be reached: it certainly did not run


def test_protection_settings_are_checked():
    with pytest.raises(ValueError, match="mode"):
        migrate.Protection(mode="sometimes")
    with pytest.raises(ValueError, match="interval"):
        migrate.Protection(interval_s=0)


async def test_hot_standby_takes_over_when_the_owner_is_killed(edge_and_cloud):
    async with edge_and_cloud() as (edge, cloud, c):
        events = c.events()
        h = await c.spawn(workloads.load("clockrand"), on="edge-1")
        await h.call("sample")
        await h.protect("standby", to="cloud-1")
        samples: list[int] = []
        for _ in range(40):
            samples.append(await h.call("sample"))
        edge.kill()
        for _ in range(40):
            samples.append(await h.call("sample"))
        assert h.node == "cloud-1"
        # The standby replayed the owner's clock and random inputs call by call:
        # after the takeover the state continues exactly from the last sample.
        assert await h.call("samples") == 81
        assert len(set(samples)) == 80
        kinds = []
        while True:
            try:
                kinds.append(events.receive_nowait())
            except trio.WouldBlock:
                break
        assert any(e.kind == "failed_over" and e.node == "cloud-1" for e in kinds)


async def test_a_standby_follows_the_workload_through_a_move(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge")
    edge2 = node_procs.start("edge-2", "edge")
    cloud = node_procs.start("cloud-1", "cloud")
    addresses = [str(n.address) for n in (edge, edge2, cloud)]
    async with migrate.connect(*addresses, tls=cluster_tls.issue("app-1", "node")) as c:
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        await h.protect("standby", to="cloud-1")
        assert await h.call("incr", 5) == 5
        await h.migrate("edge-2", strategy="precopy")  # the new owner starts its own standby
        for _ in range(20):
            await h.call("incr", 1)
        edge2.kill()
        assert await h.call("incr", 1) == 26
        assert h.node == "cloud-1"


@contextlib.asynccontextmanager
async def _standby_with_a_log(node_procs, cluster_tls, calls: int):
    """A counter on edge-1 with a standby on cloud-1 that has run the application's ``calls`` increments.

    Yields (cluster, handle, edge-1's process, the standby's node client, its MWhere, the
    application's logged operations in order).
    """
    edge = node_procs.start("edge-1", "edge")
    cloud = node_procs.start("cloud-1", "cloud")
    async with migrate.connect(str(edge.address), str(cloud.address),
                               tls=cluster_tls.issue("app-1", "node")) as c:
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        await h.protect("standby", to="cloud-1", interval_s=60.0)  # no protection round trims the log meanwhile
        for n in range(1, calls + 1):
            assert await h.call("incr", 1) == n
        log = c._protectors[h.workload].log
        standby = await c.client(c.address_of("cloud-1"))
        with trio.fail_after(10):
            while (where := expect(MWhere, await standby.request(MLocate, workload=h.workload))).index < max(log):
                await trio.sleep(0.01)
        yield c, h, edge, standby, where, [log[i] for i in sorted(log)]


async def test_a_failover_that_resends_operations_the_standby_already_ran_keeps_it_and_runs_none_twice(
        node_procs, cluster_tls):
    """The owner feeds its standby without waiting, so a failover that read the standby's index just
    before the owner's last forwards were replayed sends some of them again.  They are skipped when
    the standby's ledger agrees; before, the standby (the only copy left) was dropped as a log gap."""
    async with _standby_with_a_log(node_procs, cluster_tls, 6) as (c, h, edge, standby, where, entries):
        reply = await standby.request(MReplay, workload=h.workload, epoch=where.epoch,
                                      entries=tuple(entries[-3:]), standby=True)
        assert isinstance(reply, Done)
        after = expect(MWhere, await standby.request(MLocate, workload=h.workload))
        assert (after.status, after.standby, after.index) == ("incoming", True, where.index)
        edge.kill()
        assert await h.call("incr", 1) == 7  # the three resent ran once, on the standby, before the kill
        assert h.node == "cloud-1"
        assert await h.call("get") == 7


async def test_a_resent_operation_that_contradicts_what_the_standby_ran_is_refused(node_procs, cluster_tls):
    async with _standby_with_a_log(node_procs, cluster_tls, 4) as (c, h, edge, standby, where, entries):
        told = {**entries[-2], "values": [entries[-2]["values"][0] + 100]}
        with pytest.raises(RemoteNodeError, match="already ran here, differently") as info:
            await standby.request(MReplay, workload=h.workload, epoch=where.epoch, entries=(told,), standby=True)
        assert info.value.code == MigrationCode.DIVERGED
        assert await h.call("incr", 1) == 5  # the owner is untouched
