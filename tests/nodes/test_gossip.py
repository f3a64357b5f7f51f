"""Who may add to what a node knows: only a node certificate, only within the bounds, only addresses it may dial.

Real nodes; the test speaks ``Gossip`` itself, with a node or an
application certificate.
"""

from __future__ import annotations

import pytest
import trio

from nodes import Forbidden, MemberEntry, NodeClient, RequestError
from nodes._member_messages import Gossip

REFRESH = ["--peer-refresh-s", "0.3"]


def entry(name: str, address: str, **fields) -> MemberEntry:
    return MemberEntry(name=name, address=address, incarnation=1, version=1, **fields)


async def names(client: NodeClient) -> list[str]:
    return [m.name for m in await client.members()]


async def test_an_application_certificate_cannot_inject_a_member(node_procs, cluster_tls):
    a = node_procs.start("a", "edge", args=REFRESH)
    async with await a.client(cluster_tls.app) as app:
        with pytest.raises(Forbidden, match="a client certificate may not send 'gossip'"):
            await app.request(Gossip, entries=(entry("evil", "127.0.0.1:9"),))
        assert await names(app) == ["a"]


async def test_a_node_certificate_adds_a_member_and_the_node_dials_it(node_procs, cluster_tls):
    a = node_procs.start("a", "edge", args=REFRESH)
    c = node_procs.start("c", "cloud", args=REFRESH)  # joined nobody
    async with await NodeClient.connect(a.address, tls=cluster_tls.issue("n", "node"), role="edge") as peer:
        reply = await peer.request(Gossip, entries=(entry("c", str(c.address), role="cloud"),))
        assert [e.name for e in reply.entries] == ["a", "c"]  # the receiver's view, itself first
    async with await c.client(cluster_tls.app) as app:  # a dialled c: c learned a from it
        with trio.fail_after(30):
            while "a" not in await names(app):
                await trio.sleep(0.1)


async def test_a_message_over_a_bound_is_refused_whole(node_procs, cluster_tls):
    a = node_procs.start("a", "edge", args=REFRESH)
    async with await NodeClient.connect(a.address, tls=cluster_tls.issue("n", "node"), role="edge") as peer:
        bad = (entry("ok", "127.0.0.1:9"), entry("bad", "127.0.0.1:10", location="x" * 129))
        with pytest.raises(RequestError, match="location must be at most 128"):
            await peer.request(Gossip, entries=bad)
        assert [e.name for e in (await peer.request(Gossip, entries=())).entries] == ["a"]
        assert (await peer.status()).counters["gossip_refused"] == 1


async def test_an_insecure_node_never_dials_a_member_outside_loopback(node_procs):
    a = node_procs.start("a", "edge", insecure=True, args=REFRESH)
    async with await NodeClient.connect(a.address, tls=None, name="n", role="edge") as peer:
        await peer.request(Gossip, entries=(entry("far", "192.0.2.7:7400"),))
        await a.wait_for_log("peer address refused")
        status = await peer.status()
    assert status.counters["peers_refused"] == 1
    assert "192.0.2.7:7400" not in {p.address for p in status.peers}
