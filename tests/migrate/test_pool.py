"""Stateless pools through real migrate-node processes: pristine calls, spreading, a node killed mid-run,
scale to zero, typed errors (migrate._pool, migrate._pool_node)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio
import wasmtime

import migrate
from migrate._pool_messages import UNKNOWN_POOL, MPoolCall
import workloads
from nodes import (Forbidden, NodeClient, RemoteNodeError, ResourceLimitExceeded, UnknownExport, UnsupportedImports,
                   WorkloadTrap)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nodes"))
from pool_wat import PRISTINE, pool_module  # noqa: E402

SPIN = 400_000  # a call of some milliseconds, so that calls are in flight when a node dies


async def test_pool_calls_are_pristine_spread_and_survive_a_killed_node(edge_and_cloud):
    async with edge_and_cloud() as (edge, cloud, c):
        pool = await c.pool(pool_module(), init="init", max_per_node=2, nodes=["edge-1", "cloud-1"], idle_s=0.5)

        # concurrent calls that each leave memory, a global and a table entry behind: none sees another's
        async with trio.open_nursery() as nursery:
            seen: list[int] = []

            async def bump() -> None:
                seen.append(await pool.call("bump", 9))

            for _ in range(40):
                nursery.start_soon(bump)
        assert seen == [PRISTINE] * 40
        stats = await pool.stats()
        assert stats["edge-1"].calls > 0 and stats["cloud-1"].calls > 0  # spread by load
        assert all(s.instances <= 2 and s.left_state == s.calls for s in stats.values())

        # a node killed while calls run on it: every call is answered once, by the other node
        answered: list[int] = []
        issued = 0
        in_flight_at_kill = 0

        async def caller() -> None:
            nonlocal issued
            for _ in range(12):
                issued += 1
                answered.append(await pool.call("spin", SPIN))

        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(caller)
            while not pool._in_flight["edge-1"] or len(answered) < 6:
                await trio.sleep(0.001)
            in_flight_at_kill = pool._in_flight["edge-1"]
            edge.kill()
        assert in_flight_at_kill > 0
        assert issued == len(answered) == 72 and answered == [SPIN] * 72
        assert pool.retries >= in_flight_at_kill

        # idle: the surviving node drops its instances, and starts one again on demand
        with trio.fail_after(10):
            while (await pool.stats())["cloud-1"].instances:
                await trio.sleep(0.2)
        assert await pool.call("bump", 1) == PRISTINE
        assert (await pool.stats())["cloud-1"].instances == 1
        await pool.close()


async def test_pool_errors_are_typed(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge")
    async with migrate.connect(str(node.address), tls=cluster_tls.issue("app-1", "node")) as c:
        with pytest.raises(WorkloadTrap):
            await c.pool(pool_module(), init="bad_init", nodes="edge-1")
        with pytest.raises(UnknownExport, match="missing"):
            await c.pool(pool_module(), init="missing", nodes="edge-1")
        foreign = wasmtime.wat2wasm('(module (import "env" "clock" (func)) (func (export "f")))')
        with pytest.raises(UnsupportedImports, match="env"):
            await c.pool(foreign, nodes="edge-1")
        pool = await c.pool(pool_module(), init="init", nodes="edge-1")
        with pytest.raises(UnknownExport, match="nope"):
            await pool.call("nope")
        with pytest.raises(WorkloadTrap):
            await pool.call("boom")
        assert await pool.call("bump", 2) == PRISTINE  # the trap left nothing behind
        # another tenant reaches neither the pool by its app nor one of its own by the name
        async with await NodeClient.connect(node.address, tls=cluster_tls.issue("app-b", "client")) as other:
            with pytest.raises(Forbidden, match="app-b"):
                await other.request(MPoolCall, pool=pool.name, export="bump", args=(1,), app="default")
            with pytest.raises(RemoteNodeError) as refused:
                await other.request(MPoolCall, pool=pool.name, export="bump", args=(1,))
            assert refused.value.code == UNKNOWN_POOL
        await pool.close()


async def test_a_node_at_its_quota_sends_pool_calls_elsewhere_and_a_full_cluster_refuses(node_procs, cluster_tls):
    quota = ["--max-workloads-per-app", "2"]  # every pool instance counts as a workload of its app
    edge = node_procs.start("edge-1", "edge", args=quota)
    cloud = node_procs.start("cloud-1", "cloud", args=quota)
    async with migrate.connect(str(edge.address), str(cloud.address), tls=cluster_tls.issue("app-1", "node")) as c:
        pool = await c.pool(pool_module(), init="init", max_per_node=2, nodes=["edge-1", "cloud-1"], idle_s=0.5)
        alone = await c.pool(pool_module(), init="init", max_per_node=2, nodes=["edge-1"])
        plain = await c.spawn(workloads.load("counter"), on="edge-1")  # edge-1 has room for one instance now
        answered: list[int] = []

        async def caller() -> None:
            for _ in range(5):
                answered.append(await pool.call("spin", SPIN))

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(caller)
        assert answered == [SPIN] * 20  # none lost to a refusal: refused calls ran on the other node
        stats = await pool.stats()
        assert stats["edge-1"].instances <= 1 and stats["cloud-1"].calls > 0
        assert stats["edge-1"].calls + stats["cloud-1"].calls == 20

        with trio.fail_after(10):
            while (await pool.stats())["edge-1"].instances:  # idle: its instance gives its room back
                await trio.sleep(0.2)
        await c.spawn(workloads.load("counter"), on="edge-1")  # edge-1 is full now
        with pytest.raises(ResourceLimitExceeded, match="max_workloads_per_app"):
            await alone.call("bump", 1)  # its only node refused it: nothing ran
        assert (await alone.stats())["edge-1"].calls == 0
        assert await plain.call("incr", 1) == 1


async def test_a_pool_call_past_its_timeout_raises_and_the_pool_serves_on(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge")
    async with migrate.connect(str(node.address), tls=cluster_tls.issue("app-1", "node")) as c:
        pool = await c.pool(pool_module(), init="init", nodes="edge-1")
        for bad in (0, -1, "1", True):
            with pytest.raises(ValueError, match="timeout"):
                await pool.call("bump", 1, timeout=bad)
        with pytest.raises(trio.TooSlowError):
            await pool.call("spin", 2_000_000_000, timeout=0.05)  # seconds of counting: far past 50 ms
        assert await pool.call("bump", 2, timeout=30) == PRISTINE  # pristine, on this instance or another
        await pool.close()
