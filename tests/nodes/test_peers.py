"""Peers of an ``--insecure`` node: it never learns or dials a non-loopback address, whatever names it.

A real node runs without TLS on loopback.  Each source of a peer address
offers it one outside loopback (192.0.2.7, a documentation address): a
Hello, a move's target, a standby's target.  The node refuses each with
the reason, counts it, and keeps serving.
"""

from __future__ import annotations

import pytest
import trio

import workloads
from migrate.wire import MFollow, MigrationCode, MLocate, MMigrate, MSpawn
from nodes import Connection, NodeClient, RemoteNodeError
from nodes._messages import Hello

OUTSIDE = "192.0.2.7:7400"


async def spawned(client: NodeClient) -> str:
    sha256 = await client.ensure_module(workloads.load("counter"))
    return (await client.request(MSpawn, module_sha256=sha256, workload="c")).workload


async def test_an_insecure_node_learns_no_outside_peer_from_a_hello(node_procs):
    node = node_procs.start("edge-1", "edge", insecure=True)
    tcp = await trio.open_tcp_stream(node.address.host, node.address.port)
    conn = Connection()
    await tcp.send_all(conn.send(conn.hello(name="edge-9", role="edge", address=OUTSIDE)))
    while not isinstance(conn.next_event(), Hello):
        conn.receive_data(await tcp.receive_some(1 << 16))
    await node.wait_for_log("peer address refused")
    async with await node.client(None) as client:
        assert OUTSIDE not in {p.address for p in await client.peers()}
        assert (await client.status()).counters["peers_refused"] == 1
    await trio.aclose_forcefully(tcp)


@pytest.mark.parametrize("request_kind", ["move", "standby"])
async def test_an_insecure_node_dials_no_outside_target(node_procs, request_kind):
    node = node_procs.start("edge-1", "edge", insecure=True)
    async with await node.client(None) as client:
        workload = await spawned(client)
        with pytest.raises(RemoteNodeError, match="--insecure is allowed only on loopback") as refused:
            if request_kind == "move":
                await client.request(MMigrate, workload=workload, target=OUTSIDE)
            else:
                await client.request(MFollow, workload=workload, standby=OUTSIDE)
        assert refused.value.code == MigrationCode.MIGRATION_FAILED
        where = await client.request(MLocate, workload=workload)
        assert (where.status, where.epoch) == ("owner", 1)  # it stays where it was
        assert (await client.status()).counters["peers_refused"] == 1
    assert "192.0.2.7" not in "".join(str(line) for line in node.log_lines() if line.get("msg") == "new peer address")

