"""What a node knows about its peers, kept fresh by pinging them.

A node learns a peer's address from ``--join`` or from the Hello of a node
that dialled it.  For each address one task (``watch_peer``) keeps a client
connection open and pings it every ``refresh_s``: the Pong carries the
peer's name, role, cores, free memory, load and workload count, and the
round trip is measured around it.  A peer that cannot be reached is shown
as disconnected with what was last heard, and redialled with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ._client import NodeClient
from ._config import Address
from ._errors import NodeError
from ._messages import NodeSummary, PeerSummary

logger = logging.getLogger(__name__)

#: Longest wait between redials of an unreachable peer.
MAX_BACKOFF_S = 30.0


@dataclass
class _Peer:
    address: Address
    connected: bool = False
    summary: NodeSummary | None = None
    rtt_s: float | None = None
    last_seen: float | None = None  # trio.current_time() of the last Pong


class PeerTable:
    """The peers one node knows, by address."""

    def __init__(self) -> None:
        self._peers: dict[Address, _Peer] = {}

    def add(self, address: Address) -> bool:
        """Remember ``address``; return True if it was new."""
        if address in self._peers:
            return False
        self._peers[address] = _Peer(address)
        return True

    def __contains__(self, address: Address) -> bool:
        return address in self._peers

    def heard(self, address: Address, summary: NodeSummary, rtt_s: float) -> None:
        peer = self._peers[address]
        peer.connected, peer.summary, peer.rtt_s = True, summary, rtt_s
        peer.last_seen = trio.current_time()

    def lost(self, address: Address) -> bool:
        """Mark the peer unreachable; return whether it was connected until now."""
        peer = self._peers[address]
        was_connected, peer.connected = peer.connected, False
        return was_connected

    def summaries(self) -> tuple[PeerSummary, ...]:
        """Return every peer as sent on the wire, sorted by address."""
        now = trio.current_time()
        out = []
        for peer in sorted(self._peers.values(), key=lambda p: p.address):
            s = peer.summary
            out.append(PeerSummary(
                address=str(peer.address), connected=peer.connected,
                name=s.name if s else None, role=s.role if s else None, cores=s.cores if s else None,
                memory_free_bytes=s.memory_free_bytes if s else None, load_1m=s.load_1m if s else None,
                workloads=s.workloads if s else None, rtt_s=peer.rtt_s,
                last_seen_s_ago=None if peer.last_seen is None else round(now - peer.last_seen, 3)))
        return tuple(out)


async def watch_peer(table: PeerTable, address: Address, *,
                     connect: Callable[[Address], Awaitable[NodeClient]], refresh_s: float,
                     exchange: Callable[[NodeClient], Awaitable[None]] | None = None) -> None:
    """Keep ``table``'s entry for ``address`` fresh until cancelled; never raises NodeError.

    ``exchange(client)`` runs after each ping (the membership's gossip, ``nodes._gossip``).
    """
    backoff_s = refresh_s
    while True:
        try:
            with trio.fail_after(max(refresh_s * 3, 5.0)):
                client = await connect(address)
            async with client:
                logger.info("peer connected", extra={"peer": client.node, "address": str(address)})
                backoff_s = refresh_s
                while True:
                    # A ping that takes three refresh periods means the peer is gone.
                    with trio.fail_after(max(refresh_s * 3, 5.0)):
                        rtt_s, summary = await client.ping()
                    table.heard(address, summary, rtt_s)
                    if exchange is not None:
                        with trio.fail_after(max(refresh_s * 3, 5.0)):
                            await exchange(client)
                    await trio.sleep(refresh_s)
        except (NodeError, trio.TooSlowError) as exc:
            log = logger.info if table.lost(address) else logger.debug
            log("peer unreachable: %s", exc or type(exc).__name__, extra={"address": str(address)})
        await trio.sleep(backoff_s)
        backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
