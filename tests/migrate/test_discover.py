"""An application learns the cluster from one node: the membership, and mDNS.

Real migrate-node processes on loopback: a, b joining a, c joining b.  The
application is given a's address only.
"""

from __future__ import annotations

import trio

import migrate
import workloads
from migrate import UnknownNode
from nodes import ConfigError, NodeClient

import pytest

REFRESH = ["--peer-refresh-s", "0.3"]
#: A test's limit for a few refresh intervals, on a loaded 2-core machine.
WAIT_S = 30


async def wait_members(client: NodeClient, expected: dict[str, str]) -> dict:
    """Wait until the node's membership shows each name in ``expected`` in that state."""
    with trio.fail_after(WAIT_S):
        while True:
            records = {m.name: m for m in await client.members()}
            if all(n in records and records[n].state == s for n, s in expected.items()):
                return records
            await trio.sleep(0.1)


async def test_an_application_given_one_node_sees_a_chain_and_spawns_on_its_far_end(node_procs, cluster_tls):
    a = node_procs.start("a", "edge", args=[*REFRESH, "--location", "lab-1", "--capability", "gpu=nvidia-h100"])
    b = node_procs.start("b", "cloud", join=[a], args=REFRESH)
    c = node_procs.start("c", "edge", join=[b], args=[*REFRESH, "--capability", "wasi-nn=onnx"])
    async with await a.client(cluster_tls.app) as client:
        records = await wait_members(client, {"a": "alive", "b": "alive", "c": "alive"})
        assert [m.name for m in await client.members()][0] == "a"  # the node answering comes first
        assert records["c"].address == str(c.address) and records["b"].role == "cloud"
        assert records["a"].location == "lab-1" and records["a"].capabilities == {"gpu": "nvidia-h100"}
        assert records["c"].capabilities == {"wasi-nn": "onnx"}
        assert records["a"].last_heard_s == 0 and records["c"].cores >= 1
        assert "simd" in records["c"].wasm_features and records["c"].memory_limit_bytes > 0
        # The application's embedded node follows the membership without joining it.
        async with migrate.connect(str(a.address), tls=cluster_tls.issue("app-1", "node")) as cluster:
            h = await cluster.spawn(workloads.load("counter"), on="c")
            assert h.node == "c"
            assert await h.call("incr", 5) == 5
        assert "local" not in {m.name for m in await client.members()}

        # c dies without a word: a suspects it, then declares it dead.
        c.kill()
        await wait_members(client, {"c": "suspect"})
        records = await wait_members(client, {"c": "dead", "b": "alive"})
        assert records["c"].last_heard_s > 0


async def test_a_name_no_member_has_is_still_unknown(node_procs, cluster_tls):
    a = node_procs.start("a", "edge", args=REFRESH)
    async with migrate.connect(str(a.address), tls=cluster_tls.issue("app-1", "node")) as cluster:
        with pytest.raises(UnknownNode, match="unknown node 'nowhere'"):
            await cluster.spawn(workloads.load("counter"), on="nowhere")


async def test_an_application_finds_a_node_by_mdns(node_procs, cluster_tls):
    node_procs.start("m-a", "edge", args=[*REFRESH, "--mdns"])
    async with migrate.connect(discover="mdns", tls=cluster_tls.issue("app-1", "node")) as cluster:
        h = await cluster.spawn(workloads.load("counter"), on="m-a")
        assert await h.call("incr", 2) == 2


async def test_an_unknown_discovery_is_a_config_error(cluster_tls):
    with pytest.raises(ConfigError, match="discover must be one of mdns"):
        async with migrate.connect(discover="carrier-pigeon", tls=cluster_tls.issue("app-1", "node")):
            pass
