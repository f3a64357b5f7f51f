"""Measure live migration: stop-copy, pre-copy and dual, by memory size and dirty rate.

Two real ``migrate-node`` processes (edge-1, cloud-1) run on this machine
with mutual TLS.  For each memory size, dirty rate and strategy, the
``dirtier`` workload is started on edge-1 and filled to the size; a caller
task keeps calling ``dt_dirty`` at the dirty rate (pages per second); then
the workload moves edge-1 -> cloud-1.  Recorded, all in the same run:

* the node's report: total time, blackout (calls held at the source),
  rounds, bytes on the wire;
* the client's view: the longest call during the move against the median
  call before it;
* references: memcpy of the same memory in this process (the floor for
  copying it), and stop-copy as the baseline for pre-copy and dual.
  Issue 5's goal: during a dual handover no call takes longer than twice
  the steady-state p99.

Run ``python -m benchmarks.bench_migrate [--quick]``; writes
benchmarks/results/migrate.json and migrate.md.
"""

from __future__ import annotations

import ctypes
import json
import statistics
import sys
import tempfile
from pathlib import Path

import trio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import migrate  # noqa: E402
import workloads  # noqa: E402
from benchmarks._measure import argument_parser, memcpy_samples, table_head, write_results  # noqa: E402
from migrate.launcher import LocalCluster  # noqa: E402

PAGE = 4096


STRATEGIES = ("stop-copy", "precopy", "dual")


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def memcpy_s(size: int) -> float:
    """Median time of copying ``size`` bytes between warm buffers."""
    src = bytearray(size)
    src[::PAGE] = b"\1" * len(src[::PAGE])
    return statistics.median(memcpy_samples(ctypes.addressof((ctypes.c_char * size).from_buffer(src)), size, 5))


async def one_move(cluster, mib: int, rate_pps: int, strategy: str) -> dict:
    h = await cluster.spawn(workloads.load("dirtier"), on="edge-1")
    await h.call("dt_init", mib)
    latencies: list[tuple[float, float]] = []  # (finished at, took)
    stop = trio.Event()
    per_call = 16

    async def dirty() -> None:
        seed = 1
        while not stop.is_set():
            t0 = trio.current_time()
            if rate_pps:
                await h.call("dt_dirty", per_call, seed)
            else:
                await h.call("dt_pages")
            t1 = trio.current_time()
            latencies.append((t1, t1 - t0))
            seed += 1
            if rate_pps:
                await trio.sleep(max(0.0, per_call / rate_pps - (t1 - t0)))
            else:
                await trio.sleep(0.002)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dirty)
        await trio.sleep(0.3)
        steady = [took for _, took in latencies]
        began = trio.current_time()
        report = await h.migrate("cloud-1", strategy=strategy)
        ended = trio.current_time()
        await trio.sleep(0.05)
        stop.set()
    during = [took for at, took in latencies if began <= at <= ended + 0.05]
    checksum_ok = (await h.call("dt_pages")) > 0
    await h.remove()
    return {
        "memory_mib": mib, "dirty_pages_per_s_target": rate_pps, "strategy": strategy,
        "total_s": round(report.total_s, 5), "blackout_s": round(report.frozen_s, 5),
        "rounds": report.rounds, "bytes_sent": report.bytes_sent, "pages_sent": report.pages_sent,
        "throttle": report.throttle, "notes": list(report.notes),
        "steady_call_p50_s": round(statistics.median(steady), 6) if steady else None,
        "steady_call_p99_s": round(_pct(steady, 0.99), 6) if steady else None,
        "during_call_p50_s": round(_pct(during, 0.5), 6) if during else None,
        "during_call_p99_s": round(_pct(during, 0.99), 6) if during else None,
        "max_call_during_move_s": round(max(during), 5) if during else None,
        "calls_during_move": len(during), "state_ok": checksum_ok,
    }


async def run(sizes: list[int], rates: list[int], root: Path) -> list[dict]:
    rows = []
    with LocalCluster(root) as lc:
        limit = str(max(sizes) * 2**20 + 64 * 2**20)
        edge = lc.start("edge-1", "edge", args=["--workload-memory-bytes", limit])
        cloud = lc.start("cloud-1", "cloud", args=["--workload-memory-bytes", limit])
        async with migrate.connect(str(edge.address), str(cloud.address), tls=lc.tls_for("bench", "node"),
                                   local=False) as cluster:
            for mib in sizes:
                floor = memcpy_s(mib * 2**20)
                for rate in rates:
                    for strategy in STRATEGIES:
                        print(f"[migrate] {mib} MiB, {rate} pages/s, {strategy} ...", file=sys.stderr, flush=True)
                        row = await one_move(cluster, mib, rate, strategy)
                        row["memcpy_s"] = round(floor, 6)
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = table_head("Live migration: stop-copy, pre-copy and dual", [
        "edge-1 -> cloud-1, two real migrate-node processes on loopback with mutual TLS. The workload",
        "(`dirtier`) is filled to the memory size and a caller dirties pages at the given rate during",
        "the move. Blackout is how long the source held calls; the client column is the longest call",
        "seen during the move against the steady median. memcpy of the same memory is measured in the",
        "same run as the floor for copying it.",
    ], ["memory", "dirty pages/s", "strategy", "blackout ms", "x stop-copy", "total ms", "rounds", "MiB sent",
        "calls during move p50 / p99 / max ms", "steady p50 / p99 ms", "max / steady p99", "memcpy ms"])
    base = {}
    for r in rows:
        if r["strategy"] == "stop-copy":
            base[(r["memory_mib"], r["dirty_pages_per_s_target"])] = r["blackout_s"]
    for r in rows:
        b = base.get((r["memory_mib"], r["dirty_pages_per_s_target"]))
        ratio = f"{r['blackout_s'] / b:.2f}" if b else "n/a"
        ms = lambda v: f"{v * 1e3:.2f}" if v is not None else "-"  # noqa: E731
        p99 = r["steady_call_p99_s"]
        worst = r["max_call_during_move_s"]
        over = f"{worst / p99:.1f}" if worst and p99 else "-"
        lines.append(
            f"| {r['memory_mib']} MiB | {r['dirty_pages_per_s_target']} | {r['strategy']} "
            f"| {r['blackout_s'] * 1e3:.2f} | {ratio} | {r['total_s'] * 1e3:.1f} | {r['rounds']} "
            f"| {r['bytes_sent'] / 2**20:.2f} | {ms(r['during_call_p50_s'])} / {ms(r['during_call_p99_s'])} / "
            f"{ms(worst)} | {ms(r['steady_call_p50_s'])} / {ms(p99)} | {over} | {r['memcpy_s'] * 1e3:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, "16 MiB, two dirty rates", sizes=True)
    parser.add_argument("--rate", type=int, action="append", help="dirty rates in pages per second")
    args = parser.parse_args(argv)
    sizes = args.mib or ([16] if args.quick else [1, 16, 64, 256, 512])
    rates = args.rate or ([0, 2000] if args.quick else [0, 2000, 20000])
    with tempfile.TemporaryDirectory(prefix="wm-bench-") as tmp:
        rows = trio.run(run, sizes, rates, Path(tmp))
    write_results(args.out, "migrate", args.quick, {"results": rows}, markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
