"""Operator commands: ``migrate-node migrate`` and ``migrate-node drain``.

They talk to the source node as the CLI client; the node streams the state
to the target itself.  A target may be named by node name (looked up among
the source node's peers) or given as HOST:PORT.  Both show the move's
progress on stderr while it runs (``migrate._progress``).
"""

from __future__ import annotations

import sys
from typing import Any

from nodes import ConfigError, NodeClient, RemoteNodeError, parse_address

from ._codes import MigrationCode
from ._errors import MigrationFailed, UnknownNode
from ._messages import MigrationReport, MMigrate
from ._progress import Callback, ProgressPrinter, watch


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
            reply = await client.request(MMigrate, workload=workload, target=target, strategy=strategy)
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


async def migrate_command(client: NodeClient, args) -> Any:
    target = await resolve_target(client, args.to)
    report = await move(client, args.workload, target, args.strategy, progress=ProgressPrinter())
    return report if args.json else report_line(report)


async def drain_command(client: NodeClient, args) -> Any:
    """Move every workload off the node, one at a time, printing progress."""
    target = await resolve_target(client, args.to)
    workloads = await client.workloads()
    reports, failures = [], []
    total = len(workloads)
    for i, w in enumerate(workloads, 1):
        try:
            report = await move(client, w.workload_id, target, args.strategy, progress=ProgressPrinter())
        except MigrationFailed as exc:
            failures.append((w.workload_id, str(exc)))
            print(f"[{i}/{total}] {w.workload_id}: FAILED: {exc}", file=sys.stderr, flush=True)
            continue
        reports.append(report)
        print(f"[{i}/{total}] {report_line(report)}", file=sys.stderr, flush=True)
    if failures:
        raise MigrationFailed(f"{len(failures)} of {total} workloads could not be moved: "
                              + "; ".join(f"{w}: {why}" for w, why in failures))
    if args.json:
        return reports
    return f"drained {client.node}: {len(reports)} workloads moved to {args.to}"
