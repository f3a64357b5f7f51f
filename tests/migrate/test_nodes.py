"""The application's view of its nodes on real nodes: cluster.nodes(), spawn/migrate on="auto", advise.

Three nodes in a chain (b joins a, c joins b); only cloud-1 is started with
``--capability gpu=nvidia-h100``.  The application connects to edge-1 only.
"""

import pytest
import trio

import migrate
import workloads
from migrate import Needs, NoSuitableNode, Work

pytestmark = pytest.mark.trio

COUNTER = workloads.load("counter")
FAST = ["--peer-refresh-s", "0.2"]


@pytest.fixture
def chain(node_procs, cluster_tls):
    a = node_procs.start("edge-1", "edge", args=FAST)
    b = node_procs.start("cloud-1", "cloud", join=[a], args=[*FAST, "--capability", "gpu=nvidia-h100"])
    c = node_procs.start("edge-2", "edge", join=[b], args=[*FAST, "--capability", "wasi-nn=onnx"])
    return a, b, c, cluster_tls.issue("app-1", "node")


async def all_three(cluster) -> list:
    with trio.fail_after(30):
        while True:
            records = await cluster.nodes()
            if {"edge-1", "cloud-1", "edge-2"} <= {r.name for r in records if r.rtt_ms is not None}:
                return records
            await trio.sleep(0.2)


async def test_nodes_are_typed_records_with_the_applications_measurements(chain):
    a, _, _, tls = chain
    async with migrate.connect(str(a.address), tls=tls) as cluster:
        records = {r.name: r for r in await all_three(cluster)}
        assert set(records) == {"local", "edge-1", "cloud-1", "edge-2"}
        cloud = records["cloud-1"]
        assert (cloud.role, cloud.state, dict(cloud.capabilities)) == ("cloud", "alive", {"gpu": "nvidia-h100"})
        assert dict(records["edge-2"].capabilities) == {"wasi-nn": "onnx"}
        for name in ("edge-1", "cloud-1", "edge-2"):
            r = records[name]
            assert r.rtt_ms > 0 and r.cores >= 1 and r.memory_free_bytes > 0 and not r.cordoned
            # no module went there yet: one probe measured the link
            assert r.throughput_source == "probe" and r.throughput_bytes_per_s > 0
        assert records["local"].role == "client" and records["local"].rtt_ms > 0


async def test_auto_lands_on_the_only_gpu_node_and_refuses_clearly_when_none_fits(chain):
    a, _, _, tls = chain
    async with migrate.connect(str(a.address), tls=tls) as cluster:
        await all_three(cluster)
        h = await cluster.spawn(COUNTER, on="auto", needs=Needs(capabilities=["gpu"]))
        assert h.node == "cloud-1"
        assert await h.call("incr", 3) == 3
        exact = await cluster.spawn(COUNTER, on="auto", needs=Needs(capabilities=["gpu=nvidia-h100"]))
        assert exact.node == "cloud-1"

        with pytest.raises(NoSuitableNode) as refused:
            await cluster.spawn(COUNTER, on="auto", needs=Needs(capabilities=["gpu=amd-mi300"]))
        message = str(refused.value)
        assert "cloud-1: no capability gpu=amd-mi300 (has gpu=nvidia-h100)" in message
        assert "edge-1: no capability gpu=amd-mi300 (has none)" in message
        assert "edge-2: no capability gpu=amd-mi300 (has wasi-nn=onnx)" in message
        assert "local: it is an application's own node (role client)" in message
        assert set(refused.value.rejected) == {"local", "edge-1", "cloud-1", "edge-2"}

        # moving it "auto" with the same needs has nowhere to go: it stays, state intact
        with pytest.raises(NoSuitableNode, match="cloud-1: it is where the workload is"):
            await h.migrate("auto", needs=Needs(capabilities=["gpu"]))
        assert h.node == "cloud-1" and await h.call("incr", 1) == 4
        # without needs, it moves to one of the edges
        report = await h.migrate("auto")
        assert h.node in ("edge-1", "edge-2") and report.target == h.node
        assert await h.call("incr", 1) == 5


async def test_advice_stays_local_for_a_tiny_workload(chain):
    a, _, _, tls = chain
    async with migrate.connect(str(a.address), tls=tls) as cluster:
        await all_three(cluster)
        h = await cluster.spawn(COUNTER, on="local")
        await h.call("incr", 1)
        advice = await cluster.advise(h, work=Work(units=0.01, calls=1))
        # every node here is this machine: about the same speed and RTT, and moving costs a transfer
        assert advice.decision == "local" and advice.reason.startswith("stay local")
        assert set(advice.estimates) == {"local", "edge-1", "cloud-1", "edge-2"}
        assert advice.estimates["local"].transfer_s == 0
        assert all(advice.estimates[n].transfer_s > 0 for n in ("edge-1", "cloud-1", "edge-2"))
        assert set(cluster.measurements.speed) == {"local", "edge-1", "cloud-1", "edge-2"}


async def test_a_node_over_the_tenant_quota_refuses_and_the_next_ranked_node_takes_it(node_procs, cluster_tls):
    quota = ["--max-workloads-per-app", "1", *FAST]
    a = node_procs.start("edge-1", "edge", args=quota)
    node_procs.start("edge-2", "edge", join=[a], args=quota)
    async with migrate.connect(str(a.address), tls=cluster_tls.issue("app-1", "node")) as cluster:
        with trio.fail_after(30):
            while {"edge-1", "edge-2"} - {r.name for r in await cluster.nodes() if r.rtt_ms is not None}:
                await trio.sleep(0.2)
        first = await cluster.spawn(COUNTER, on="edge-1", app="shop")
        second = await cluster.spawn(COUNTER, on="auto", app="shop/cart")  # edge-1's quota for shop is used up
        assert (first.node, second.node) == ("edge-1", "edge-2")
        with pytest.raises(NoSuitableNode) as refused:
            await cluster.spawn(COUNTER, on="auto", app="shop")
        for name in ("edge-1", "edge-2"):
            assert refused.value.rejected[name] == (
                "it refused: max_workloads_per_app exceeded: 2 requested, 1 allowed (application 'shop')",)
        assert await first.call("incr", 1) == 1 and await second.call("incr", 1) == 1
