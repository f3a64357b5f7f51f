"""``migrate-node call``, ``remove``, ``hibernate`` and ``exports``: one workload, wherever it moved.

A workload a node has moved away is followed to its new node, which the
old one names (its tombstone, through ``MLocate``): at most ``MAX_HOPS``
times, each hop said on stderr.  ``call`` is the node's plain call (no
call-ledger entry is left behind).  ``remove`` goes through the migration
layer as a handle's does (``MCall``, a caller id of its own), so a
migratable workload's ownership record goes with it.  ``exports`` lists a
workload's callable exports with their signatures.  ``hibernate`` writes a
workload's state to its node's disk and frees its memory now
(``nodes._hibernate``); its next call wakes it.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nodes import ExportSignature, NodeClient, RemoteNodeError, UnknownWorkload, parse_address
from nodes import cli as node_cli

from ._codes import MigrationCode
from ._messages import MCall, MLocate, MResult, MWhere
from ._replies import expect

#: How many moves a command follows before giving up.
MAX_HOPS = 5

T = TypeVar("T")


async def _follow(client: NodeClient, args: argparse.Namespace, operate: Callable[[NodeClient], Awaitable[T]]) -> T:
    """Run ``operate(client)`` on ``args.workload``'s node, following the workload where it moved; its result."""
    opened: list[NodeClient] = []
    try:
        for _ in range(MAX_HOPS + 1):
            try:
                return await operate(client)
            except (UnknownWorkload, RemoteNodeError) as exc:
                if isinstance(exc, RemoteNodeError) and exc.code != MigrationCode.NOT_OWNER:
                    raise
                where = expect(MWhere, await client.request(MLocate, workload=args.workload))
                if where.status != "moved" or not where.to_address:
                    raise UnknownWorkload(f"{client.node} has no workload {args.workload!r} "
                                          "and knows of no node it moved to") from None
            print(f"{args.workload} moved from {client.node} to {where.to_name} ({where.to_address}): following",
                  file=sys.stderr, flush=True)
            client = await node_cli.connect(args, parse_address(where.to_address))
            opened.append(client)
        raise UnknownWorkload(f"{args.workload} moved more than {MAX_HOPS} times while this command followed it")
    finally:
        for other in opened:
            await other.aclose()


async def call_command(client: NodeClient, args: argparse.Namespace) -> None | int | float | tuple[Any, ...]:
    return await _follow(client, args, lambda c: c.call(args.workload, args.export, *args.args))


async def remove_command(client: NodeClient, args: argparse.Namespace) -> str:
    caller = f"cli-{uuid.uuid4().hex}"

    async def remove(c: NodeClient) -> None:
        reply = expect(MResult, await c.request(MCall, workload=args.workload, caller=caller, seq=0, op="remove"))
        if reply.moved_to is not None:  # it left while we asked: look it up as for any other move
            raise UnknownWorkload(f"{args.workload} moved to {reply.moved_to}")

    await _follow(client, args, remove)
    return f"removed {args.workload}"


async def hibernate_command(client: NodeClient, args: argparse.Namespace) -> str:
    await _follow(client, args, lambda c: c.hibernate(args.workload))
    return f"hibernated {args.workload}"


async def exports_command(client: NodeClient, args: argparse.Namespace) -> tuple[ExportSignature, ...] | str:
    exports = await client.exports(args.workload)
    if args.json:
        return exports
    return "\n".join(f"{e.name}({', '.join(e.params)}) -> ({', '.join(e.results)})" for e in exports) or "no exports"


def add_remove(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("remove", help="stop a workload and free it (an orphaned one too), following moves")
    p.add_argument("workload")
    node_cli.add_client_options(p)
    return p


def add_hibernate(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("hibernate", help="write a workload's state to its node's disk and free its memory; "
                                         "its next call wakes it")
    p.add_argument("workload")
    node_cli.add_client_options(p)
    return p


def add_exports(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("exports", help="a workload's callable exports and their signatures")
    p.add_argument("workload")
    node_cli.add_client_options(p)
    return p
