"""Autoplace on real nodes: the background task moves a workload once advice holds, calls each run once.

The decision itself (threshold, hysteresis) is tested with fixed inputs in
test_advice.py.  Here the nodes, the moves and the measurements are real,
except one: edge-2's calibrated speed is set 10^4 times edge-1's, as if its
benchmark had found an accelerator, so that the model prefers it.
"""

import pytest
import trio

import migrate
import workloads
from migrate import Autoplace, Work

pytestmark = pytest.mark.trio

FAST = ["--peer-refresh-s", "0.2"]


async def test_autoplace_moves_to_the_clearly_faster_node(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge", args=FAST)
    node_procs.start("edge-2", "edge", join=[edge], args=FAST)
    async with migrate.connect(str(edge.address), tls=cluster_tls.issue("app-1", "node")) as cluster:
        with trio.fail_after(30):
            while "edge-2" not in {r.name for r in await cluster.nodes() if r.rtt_ms is not None}:
                await trio.sleep(0.2)
        h = await cluster.spawn(workloads.load("counter"), on="edge-1")
        await h.call("incr", 1)
        for name in ("local", "edge-1"):
            await migrate._nodes.calibrate(cluster, name)
        cluster.measurements.speed["edge-2"] = cluster.measurements.speed["edge-1"] * 1e4
        events = cluster.events()
        decider = Autoplace(move_gain=0.3, confirm=2)
        scope = cluster.autoplace(h, Work(units=10_000, calls=10), every_s=0.2, decider=decider)
        calls = 1
        with trio.fail_after(60):
            while h.node != "edge-2":
                calls += 1
                assert await h.call("incr", 1) == calls
                await trio.sleep(0.05)
            event = await events.receive()
            while event.kind != "autoplaced":
                event = await events.receive()
        scope.cancel()
        assert (event.workload, event.node) == (h.workload, "edge-2")
        assert await h.call("incr", 1) == calls + 1
