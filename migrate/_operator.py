"""Operator commands: ``migrate-node migrate``, ``drain``, ``cordon`` and ``uncordon``.

They talk to the source node as the CLI client; the node streams the state
to the target itself.  A target may be named by node name (looked up among
the source node's peers) or given as HOST:PORT.  ``cordon NAME`` and
``uncordon NAME`` reach node NAME (the connected node, or a peer of it)
and need a node certificate.  ``drain`` cordons the node first, then
moves each workload to ``--to``, or without it to the best node the
default placement policy finds in the node's membership view for the
workload's memory cap (``_placement``; the operator measures no RTT, so
nodes rank by load and free memory), trying the next when a target's
admission refuses.  It prints a line per workload and a summary.  Moves
show their progress on stderr while they run (``migrate._progress``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
from collections.abc import AsyncIterator

from nodes import ConfigError, ErrorCode, MemberRecord, NodeClient, RemoteNodeError, WorkloadSummary, parse_address
from nodes import cli as node_cli

from ._codes import MigrationCode
from ._cordon import MCordon, MCordonState, MUncordon
from ._errors import MigrationFailed, UnknownNode
from ._messages import MigrationReport, MMigrate, MReport
from ._placement import DefaultPolicy, Needs, NodeRecord
from ._progress import Callback, ProgressPrinter, watch
from ._replies import expect


async def resolve_target(client: NodeClient, target: str) -> str:
    """The address of ``target`` as the source node knows it; raises UnknownNode."""
    try:
        return str(parse_address(target))
    except ConfigError:
        pass
    peers = await client.peers()
    for peer in peers:
        if peer.name == target:
            return peer.address
    known = ", ".join(sorted(p.name for p in peers if p.name)) or "none"
    raise UnknownNode(f"{client.node} knows no node named {target!r}; its peers: {known}")


async def move(client: NodeClient, workload: str, target: str, strategy: str,
               progress: Callback | None = None) -> MigrationReport:
    """Ask the connected node to move ``workload``, ``progress`` getting its figures; raises MigrationFailed."""
    async def request() -> MigrationReport:
        try:
            reply = expect(MReport, await client.request(MMigrate, workload=workload, target=target,
                                                         strategy=strategy))
        except RemoteNodeError as exc:
            if exc.code in (MigrationCode.MIGRATION_FAILED, MigrationCode.MIGRATION_BUSY, MigrationCode.NOT_OWNER):
                raise MigrationFailed(str(exc)) from None
            raise
        return reply.report
    return await (request() if progress is None else watch(client, workload, request, progress))


def report_line(r: MigrationReport) -> str:
    """One line: rounds, bytes, the client's blackout (or "n/a", the notes say why), frozen and total time."""
    client = "n/a" if r.client_blackout_s is None else f"{r.client_blackout_s * 1e3:.2f} ms"
    return (f"{r.workload} {r.source} -> {r.target} ({r.strategy}): {r.rounds} rounds, "
            f"{r.bytes_sent / 2**20:.2f} MiB ({r.final_round_bytes / 2**20:.2f} MiB frozen), "
            f"client blackout {client}, frozen {r.frozen_s * 1e3:.2f} ms, total {r.total_s * 1e3:.1f} ms")


async def migrate_command(client: NodeClient, args: argparse.Namespace) -> MigrationReport | str:
    if args.to == client.node or args.to == client.hello.address:
        return f"{args.workload} is on {client.node} already: nothing to move"
    target = await resolve_target(client, args.to)
    report = await move(client, args.workload, target, args.strategy, progress=ProgressPrinter())
    return report if args.json else report_line(report)


@contextlib.asynccontextmanager
async def _node_named(client: NodeClient, name: str, args: argparse.Namespace) -> AsyncIterator[NodeClient]:
    """A client for node ``name``: the connected one, or a peer it knows by that name."""
    if name == client.node:
        yield client
        return
    address = await resolve_target(client, name)
    async with await node_cli.connect(args, address) as other:  # the same TLS as the first
        yield other


async def _cordon(client: NodeClient, kind: type[MCordon] | type[MUncordon]) -> str:
    try:
        reply = expect(MCordonState, await client.request(kind))
    except RemoteNodeError as exc:
        if exc.code == ErrorCode.FORBIDDEN:
            raise MigrationFailed(f"{client.node} refused to {kind.kind[2:]}: {exc} (use a node certificate)") from None
        raise
    what = "cordoned" if reply.cordoned else "uncordoned"
    return f"{client.node} {what}" if reply.changed else f"{client.node} was {what} already"


async def cordon_command(client: NodeClient, args: argparse.Namespace) -> str:
    async with _node_named(client, args.name, args) as target:
        return await _cordon(target, MCordon)


async def uncordon_command(client: NodeClient, args: argparse.Namespace) -> str:
    async with _node_named(client, args.name, args) as target:
        return await _cordon(target, MUncordon)


async def _placed(client: NodeClient, w: WorkloadSummary) -> tuple[str, ...] | str:
    """The targets placement ranks for workload summary ``w`` (addresses), or why there are none."""
    records = [_operator_record(m) for m in await client.members()]
    placement = DefaultPolicy().place(records, Needs(memory=w.memory_limit_bytes), exclude=client.node)
    by_name = {r.name: r.address for r in records}
    return tuple(by_name[n] for n in placement.ranked) or placement.explain()


def _operator_record(m: MemberRecord) -> NodeRecord:
    """A membership record as placement takes it: the operator measures no RTT, so every live node is "reached"."""
    return NodeRecord.of(m, rtt_ms=0.0)


async def _drain_one(client: NodeClient, w: WorkloadSummary, args: argparse.Namespace) -> MigrationReport:
    """Move ``w`` to ``--to``, or to the best node placement finds that takes it."""
    if args.to:
        return await move(client, w.workload_id, await resolve_target(client, args.to), args.strategy,
                          progress=ProgressPrinter())
    targets = await _placed(client, w)
    if isinstance(targets, str):
        raise MigrationFailed(f"no node can take it: {targets}")
    refusals = []
    for target in targets:
        try:
            return await move(client, w.workload_id, target, args.strategy, progress=ProgressPrinter())
        except MigrationFailed as exc:
            refusals.append(str(exc))
    raise MigrationFailed("every node placement chose refused it: " + "; ".join(refusals))


async def drain_command(client: NodeClient, args: argparse.Namespace) -> list[MigrationReport] | str:
    """Cordon the node, then move every workload off it, one at a time, printing progress and a summary."""
    print(await _cordon(client, MCordon), file=sys.stderr, flush=True)
    workloads = await client.workloads()
    reports: list[MigrationReport] = []
    failures: list[tuple[str, str]] = []
    total = len(workloads)
    for i, w in enumerate(workloads, 1):
        try:
            report = await _drain_one(client, w, args)
        except MigrationFailed as exc:
            failures.append((w.workload_id, str(exc)))
            print(f"[{i}/{total}] {w.workload_id}: FAILED: {exc}", file=sys.stderr, flush=True)
            continue
        reports.append(report)
        print(f"[{i}/{total}] {report_line(report)}", file=sys.stderr, flush=True)
    where = collections.Counter(r.target for r in reports)
    summary = (f"drained {client.node}: {len(reports)} workloads moved"
               + (f" ({', '.join(f'{n} to {t}' for t, n in sorted(where.items()))})" if where else "")
               + f", {len(failures)} failed; {client.node} stays cordoned")
    if failures:
        raise MigrationFailed(f"{summary}: " + "; ".join(f"{w}: {why}" for w, why in failures))
    return reports if args.json else summary
