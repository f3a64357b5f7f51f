"""Measure a node's memory while many connections announce giant frames and send them slowly.

One real ``migrate-node`` process runs with mutual TLS and a small inbound
buffer budget (``--inbound-buffer-bytes``, 64 MiB by default here).  Its
resident memory (VmRSS) is read once it serves a workload: the baseline,
in the same run.  Then ``--connections`` TLS connections each send a Hello
and the header of a frame of ``--frame-mib`` MiB, and push ``--send-mib``
MiB of its payload as fast as the node takes it, then hold on, never
finishing the frame; meanwhile a well-behaved client calls the workload in
a loop.  Without a node-wide budget the node would buffer every partial
frame (the issue's 30 x 60 MiB took 1.86 GB); with it, readers wait once
the budget is spent and the bytes stay in the kernel.  The reference, in
the same run: the same flood against a node whose budget (4 GiB) does not
bind.  Reported for both: the baseline, the peak growth over it, against
the budget, the bytes the attackers got into the node's socket, and the
calls served meanwhile.

Run ``python -m benchmarks.bench_connections [--quick]``; writes
benchmarks/results/connections.json and connections.md.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import trio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import workloads  # noqa: E402
from benchmarks._measure import argument_parser, table_head, write_results  # noqa: E402
from migrate.launcher import LocalCluster  # noqa: E402
from nodes import Address, Connection, client_context  # noqa: E402

MiB = 1 << 20
PIECE_BYTES = 256 << 10


def rss_bytes(pid: int) -> int:
    """The resident memory of process ``pid`` (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS")


@dataclass
class Flood:
    """What the connections of ``giant_frames`` got out: bytes the node's socket took, connections open."""

    sent_bytes: int = 0
    open: int = 0


@contextlib.asynccontextmanager
async def giant_frames(address: Address, tls_dir: Path, *, connections: int, frame_bytes: int,
                       send_bytes: int) -> AsyncIterator[Flood]:
    """Keep ``connections`` connections that each announce a ``frame_bytes`` frame and send ``send_bytes`` of it.

    Yields once every connection is open and has sent its Hello; they go on
    sending in the background until the block ends, when they are closed.
    """
    flood = Flood()
    context = client_context(tls_dir)

    async def attack(stream: trio.SSLStream) -> None:
        header = (frame_bytes - 8).to_bytes(4, "big") + b"\0\0\0\0"
        await stream.send_all(header)
        piece = bytes(PIECE_BYTES)
        for _ in range(send_bytes // PIECE_BYTES):
            await stream.send_all(piece)  # blocks while the node does not read
            flood.sent_bytes += PIECE_BYTES
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        streams = []
        try:
            for _ in range(connections):
                tcp = await trio.open_tcp_stream(address.host, address.port)
                stream = trio.SSLStream(tcp, context, server_hostname=address.host)
                streams.append(stream)
                conn = Connection()
                await stream.send_all(conn.send(conn.hello(name="app", role="app")))
                flood.open += 1
                nursery.start_soon(attack, stream)
            yield flood
        finally:
            nursery.cancel_scope.cancel()
            for stream in streams:
                await trio.aclose_forcefully(stream)


async def measure(*, connections: int, frame_mib: int, send_mib: int, budget_mib: int,
                  duration_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-connections-") as root, LocalCluster(Path(root)) as cluster:
        budget = budget_mib * MiB
        node = cluster.start("edge-1", "edge", args=["--inbound-buffer-bytes", str(budget),
                                                     "--max-frame-bytes", str(frame_mib * MiB),
                                                     "--max-connections", str(connections + 64)])
        app = cluster.ca.app
        async with await node.client(app) as client:
            await client.deploy(workloads.load("counter"), workload_id="c")
            for _ in range(100):  # warm: the calls made below cost nothing new
                await client.call("c", "incr", 1)
            baseline = rss_bytes(node.pid)
            peak = baseline
            calls = 0
            async with giant_frames(node.address, app, connections=connections, frame_bytes=frame_mib * MiB,
                                    send_bytes=send_mib * MiB) as flood:
                with trio.move_on_after(duration_s):
                    while True:
                        await client.call("c", "incr", 1)
                        calls += 1
                        peak = max(peak, rss_bytes(node.pid))
                        await trio.sleep(0.02)
                sent = flood.sent_bytes
            status = await client.status()
    return {"connections": connections, "frame_mib": frame_mib, "send_mib_each": send_mib,
            "budget_mib": budget_mib, "duration_s": duration_s,
            "baseline_rss_mib": round(baseline / MiB, 1), "peak_rss_mib": round(peak / MiB, 1),
            "growth_mib": round((peak - baseline) / MiB, 1),
            "growth_over_budget": round((peak - baseline) / budget, 3),
            "attack_mib_into_socket": round(sent / MiB, 1),
            "inbound_peak_mib": round(status.counters.get("inbound_peak_bytes", 0) / MiB, 1),
            "calls_served_meanwhile": calls}


#: The budget of the reference run: larger than anything the flood sends.
REFERENCE_BUDGET_MIB = 4096


def table(results: list[dict]) -> str:
    first = results[0]
    lines = table_head("Many connections with giant frames", [
        f"{first['connections']} TLS connections each announce a {first['frame_mib']} MiB frame and push "
        f"up to {first['send_mib_each']} MiB of it. Baseline: the same node's VmRSS just before, serving "
        f"the same workload. The {REFERENCE_BUDGET_MIB} MiB budget does not bind: the reference."],
        ["inbound budget MiB", "baseline RSS MiB", "peak RSS MiB", "growth MiB", "growth / budget",
         "attack MiB into socket", "budget peak MiB", "calls served meanwhile"])
    for result in results:
        lines.append("| " + " | ".join(str(result[k]) for k in (
            "budget_mib", "baseline_rss_mib", "peak_rss_mib", "growth_mib", "growth_over_budget",
            "attack_mib_into_socket", "inbound_peak_mib", "calls_served_meanwhile")) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, "fewer connections, a shorter run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--frame-mib", type=int, default=60)
    parser.add_argument("--send-mib", type=int, default=16)
    parser.add_argument("--budget-mib", type=int, default=64)
    args = parser.parse_args(argv)
    connections = 8 if args.quick else args.connections
    results = [trio.run(lambda budget=budget: measure(
        connections=connections, frame_mib=args.frame_mib, send_mib=args.send_mib, budget_mib=budget,
        duration_s=3.0 if args.quick else 10.0)) for budget in (args.budget_mib, REFERENCE_BUDGET_MIB)]
    write_results(args.out, "connections", args.quick, {"results": results}, table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
