"""A node's membership at run time: its own entry, the gossip exchange with each peer, and the refresh task.

``start_membership`` makes the node's ``Membership`` (``nodes._membership``)
once it listens.  Every refresh interval ``run_membership`` refreshes the
node's own metadata, beats its heart and marks silent members suspect or
dead.  ``exchange`` runs after each ping of a peer (``nodes._peers``): it
sends our entries in a ``Gossip`` and merges the reply.

Who may add to what a node knows: only a peer holding a node certificate.
``Gossip`` is a node-only request, and ``exchange`` merges a reply only
from a peer whose certificate says "node".  An address learned from an
entry is dialled like a ``--join`` address (``Node.learn_peer``): the
``--insecure`` check applies, and TLS checks the peer's certificate against
the cluster CA before anything is exchanged.  An application's embedded
node (``member = false``) follows the membership without an entry of its own.

Suspicion times scale with the refresh interval: a member whose heartbeat
has not gone up for ``SUSPECT_AFTER`` intervals is suspect, and after
``DEAD_AFTER`` dead.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import trio

from ._config import ConfigError, parse_address
from ._errors import RemoteNodeError
from ._features import engine_features
from ._limits import system_memory
from ._member_messages import BadMemberEntry, Gossip, GossipReply, MemberEntry, MemberList, MemberRecord, Members
from ._membership import Membership
from ._messages import ErrorCode, ErrorReply, Reply, Request

if TYPE_CHECKING:
    from ._client import NodeClient
    from ._node import Node
    from ._plugin import Handler, Session

logger = logging.getLogger(__name__)

#: Refresh intervals without a heartbeat before a member is suspect, and dead.
SUSPECT_AFTER = 4
DEAD_AFTER = 10


def own_entry(node: Node, *, incarnation: int) -> MemberEntry:
    config = node.config
    return MemberEntry(name=config.name, address=str(node.address), incarnation=incarnation, version=0,
                       role=config.role, location=config.location, capabilities=dict(config.capability),
                       wasm_features=engine_features(node.host.engine),
                       memory_limit_bytes=config.limits().workloads_memory_bytes, **_load(node))


def _load(node: Node) -> dict[str, Any]:
    """What changes from one refresh to the next: free memory, load, workloads."""
    return {"cores": os.cpu_count() or 1, "memory_free_bytes": system_memory()[1],
            "load": round(os.getloadavg()[0], 2), "workloads": node.host.stats().workloads}


def start_membership(node: Node) -> Membership:
    """Make ``node``'s membership (once it knows its address); a restart starts at a higher incarnation."""
    refresh_s = node.config.peer_refresh_s
    # Milliseconds since the epoch: a restarted node's entry outranks its
    # previous process's at once (and refutation covers a clock set back).
    me = own_entry(node, incarnation=time.time_ns() // 1_000_000) if node.config.member else None
    return Membership(me, now=trio.current_time(), suspect_after_s=SUSPECT_AFTER * refresh_s,
                      dead_after_s=DEAD_AFTER * refresh_s)


async def run_membership(node: Node, members: Membership) -> None:
    """Every refresh interval: refresh our metadata, beat, and note members gone silent.  Runs until cancelled."""
    while True:
        if members.me is not None:
            members.update_self(**_load(node))
        for entry in members.tick(trio.current_time()):
            node.counters[f"members_{entry.state}"] += 1
            logger.warning("member %s", entry.state, extra={"member": entry.name, "address": entry.address})
        await trio.sleep(node.config.peer_refresh_s)


def learn(node: Node, entries: list[MemberEntry]) -> None:
    """Dial the live members among ``entries`` that we did not know (``learn_peer`` skips known ones).

    A follower (no entry of its own: an application's embedded node) dials
    nobody for it: the members it follows dial it, having its Hello.
    """
    own = node.membership.name if node.membership is not None else None
    for entry in entries:
        if own is None or entry.name == own:
            continue
        if entry.state == "alive":
            try:
                node.learn_peer(parse_address(entry.address))
            except ConfigError:  # check_entries parsed it; kept for safety
                continue
        logger.debug("member %s: %s", entry.state, entry.name, extra={"address": entry.address})


async def exchange(node: Node, client: NodeClient) -> None:
    """Swap entries with the peer behind ``client``; merge its reply only if it holds a node certificate.

    Never raises NodeError for what the peer sent: a bad reply or an error
    answer is logged and counted.
    """
    identity = client.node_certificate
    if node.membership is None or (identity is not None and identity.role != "node"):
        return
    try:
        reply = await client.ask(Gossip, GossipReply, entries=node.membership.outgoing())
        learn(node, node.membership.merge(reply.entries, trio.current_time()))
    except (BadMemberEntry, RemoteNodeError) as exc:
        node.counters["gossip_refused"] += 1
        logger.warning("gossip with %s failed: %s", client.node, exc)


async def _gossip(node: Node, session: Session, req: Gossip) -> Reply:
    if node.membership is None:  # not listening yet
        return GossipReply(id=req.id, entries=())
    try:
        won = node.membership.merge(req.entries, trio.current_time())
    except BadMemberEntry as exc:
        node.counters["gossip_refused"] += 1
        logger.warning("gossip refused: %s", exc, extra={"peer": session.peer.name})
        return ErrorReply(id=req.id, code=ErrorCode.BAD_REQUEST, message=str(exc))
    learn(node, won)
    return GossipReply(id=req.id, entries=node.membership.outgoing())


async def _members(node: Node, session: Session, req: Members) -> Reply:
    return MemberList(id=req.id, members=member_records(node))


def member_records(node: Node) -> tuple[MemberRecord, ...]:
    """The membership view: this node first (none before it listens)."""
    return () if node.membership is None else node.membership.records(trio.current_time())


def member_maps(node: Node) -> tuple[dict[str, Any], ...]:
    """The membership view as ``status`` carries it: one map per ``MemberRecord``."""
    return tuple(dataclasses.asdict(r) for r in member_records(node))


MEMBER_HANDLERS: dict[type[Request], Handler] = {Gossip: _gossip, Members: _members}
