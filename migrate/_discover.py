"""How an application learns nodes beyond the addresses it was given: the cluster membership, and mDNS.

``follow_members`` asks the application's embedded node (which the members
gossip with) for ``Members`` every ``MEMBERS_REFRESH_S`` and learns the
name and address of every live one, so ``spawn(on="c")`` works for a node
the application was never given (a node that joined through another).
``resolve`` asks the connected nodes at once when a name is not known yet;
``locate`` asks every known node where a workload is.  ``discover_node`` (``connect(discover="mdns")``) browses
mDNS for a few seconds and returns the first node that answers over TLS.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

import trio

from nodes import (ConfigError, ConnectionFailed, Forbidden, MemberRecord, Members, NodeClient, NodeError,
                   browse_mdns)

from ._errors import UnknownNode
from ._messages import MLocate, MWhere
from ._replies import expect

if TYPE_CHECKING:
    from ._cluster import Cluster

logger = logging.getLogger(__name__)

MEMBERS_REFRESH_S = 1.0
#: How long ``connect(discover="mdns")`` browses before trying what it found.
BROWSE_S = 3.0
DISCOVERY = ("mdns",)


class _MemberList(Protocol):
    """The reply to ``Members`` (its class is private to nodes; the connection checks a reply's class)."""

    members: tuple[MemberRecord, ...]


async def learn_members(cluster: Cluster, reserved: str, *, only_local: bool = False) -> int:
    """Learn the live members from the first known node that answers; return how many it listed.

    The nodes the application connected to are asked first, then its
    embedded node (named ``reserved``), which follows the membership a
    gossip round behind; ``only_local`` asks the embedded node alone.
    ``reserved`` is never taken from the membership.
    """
    local = cluster._names.get(reserved)
    addresses = [local] if only_local else sorted(cluster._seen, key=lambda a: a == local)
    for address in filter(None, addresses):
        try:
            members = cast(_MemberList, await cluster.ask(address, Members)).members
        except (NodeError, trio.TooSlowError) as exc:
            logger.debug("members from %s: %s", address, exc)
            continue
        if not members:
            continue  # an embedded node that has not heard of anyone yet
        for member in members:
            if member.state == "alive" and member.name != reserved:
                cluster.learn(member.name, member.address)
        return len(members)
    return 0


async def follow_members(cluster: Cluster, reserved: str) -> None:
    """Every ``MEMBERS_REFRESH_S``, learn the members the embedded node knows, until cancelled.

    Only the embedded node is asked (in-process, over loopback): the members
    gossip with it, and the application's connections to remote nodes are
    left idle (a node closes an idle application connection).
    """
    while True:
        await learn_members(cluster, reserved, only_local=True)
        await trio.sleep(MEMBERS_REFRESH_S)


async def resolve(cluster: Cluster, node: str, reserved: str) -> str:
    """The address of ``node``, asking the membership once if it is not known yet.  Raises UnknownNode."""
    try:
        return cluster.address_of(node)
    except UnknownNode:
        await learn_members(cluster, reserved)
        return cluster.address_of(node)


async def discover_node(discover: str, tls: Path | str | None) -> str:
    """Browse mDNS for ``BROWSE_S``; return the address of the first node found that answers (TLS checked).

    Raises ConfigError for an unknown ``discover``, ConnectionFailed if no node answered.
    """
    if discover not in DISCOVERY:
        raise ConfigError(f"discover must be one of {', '.join(DISCOVERY)}, not {discover!r}")
    found = await browse_mdns(BROWSE_S)
    for name, address in found:
        try:
            with trio.fail_after(5):
                client = await NodeClient.connect(address, tls=tls)
        except (NodeError, OSError, trio.TooSlowError) as exc:
            logger.info("mdns: %s at %s did not answer: %s", name, address, exc)
            continue
        await client.aclose()
        return str(address)
    raise ConnectionFailed(f"no node answered on mDNS within {BROWSE_S} s "
                           f"({len(found)} found{': ' if found else ''}{', '.join(n for n, _ in found)})")


async def locate(cluster: Cluster, workload: str) -> tuple[str, str, int] | None:
    """Ask every known node about ``workload``; return its owner (name, address, epoch).

    The owner with the highest epoch wins: a fenced-off former owner
    never outranks the current one.
    """
    best: tuple[str, str, int] | None = None
    pending = list(cluster._seen)
    asked: set[str] = set()
    while pending:
        address = pending.pop(0)
        if address in asked:
            continue
        asked.add(address)
        try:
            where = expect(MWhere, await cluster.ask(address, MLocate, workload=workload))
        except Forbidden:  # another tenant's: final, not a node to skip
            raise
        except (NodeError, trio.TooSlowError) as exc:
            cluster.lost(address, exc)
            continue
        if where.status == "owner" and (best is None or where.epoch > best[2]):
            best = (cluster.name_of(address), address, where.epoch)
        if where.to_address:  # a tombstone: ask where it points too
            cluster.learn(where.to_name or where.to_address, where.to_address)
            pending.append(where.to_address)
    return best
