"""Measure what CPU load beside a node does to its calls: the floor a move's own work sets on the worst call.

A move's rounds keep both nodes busy (capture, zstd, TLS) while the
application calls on.  This benchmark puts a known load beside a real
``migrate-node`` (mutual TLS) and a paced call stream (``dt_dirty`` every
2 ms, as the handover suite's): for each phase, the worst call and its
ratio to the p99 of the quiet phase before it, all in the same run.

* quiet: nothing else runs (the reference);
* free: three busy processes, as many as the two CPUs here plus one,
  at normal priority, free to run on any CPU;
* free, nice 19: the same at the lowest priority;
* pinned: the same three confined to the last CPU (``sched_setaffinity``),
  leaving the others to the node and the application.

Run ``python -m benchmarks.bench_contention [--quick]``; writes
benchmarks/results/contention.json and contention.md.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import migrate  # noqa: E402
import workloads  # noqa: E402
from benchmarks._measure import argument_parser, table_head, write_results  # noqa: E402
from benchmarks.suite._metrics import percentile  # noqa: E402
from migrate.launcher import LocalCluster  # noqa: E402

#: The load: this many busy processes (more than this machine's CPUs, so every CPU it may use is busy).
HOGS = 3
CALL_EVERY_S = 0.002
#: Each phase's load runs this long; calls in its first SETTLE_S are left out (the processes start).
LOAD_S = 0.4
SETTLE_S = 0.05


def _hog_command(nice: int, cpus: set[int] | None) -> list[str]:
    code = (f"import os, time\n"
            f"{f'os.sched_setaffinity(0, {sorted(cpus)!r})' if cpus else ''}\n"
            f"end = time.monotonic() + {LOAD_S}\n"
            f"while time.monotonic() < end: pass\n")
    return ["nice", "-n", str(nice), sys.executable, "-c", code]


async def one_phase(handle: migrate.Handle, nice: int | None, cpus: set[int] | None) -> dict:
    """Calls for 0.5 s quiet, then under the load (none if ``nice`` is None); both phases' figures."""
    calls: list[tuple[float, float]] = []
    stop = trio.Event()

    async def stream() -> None:
        seed, due = 1, trio.current_time()
        while not stop.is_set():
            started = time.perf_counter()
            await handle.call("dt_dirty", 2, seed)
            calls.append((started, time.perf_counter()))
            seed += 1
            due = max(due + CALL_EVERY_S, trio.current_time())
            await trio.sleep_until(due)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream)
        await trio.sleep(0.5)
        began = time.perf_counter()
        if nice is None:
            await trio.sleep(LOAD_S)
        else:
            hogs = [subprocess.Popen(_hog_command(nice, cpus)) for _ in range(HOGS)]
            for hog in hogs:
                await trio.to_thread.run_sync(hog.wait)
        ended = time.perf_counter()
        stop.set()
    quiet = [f - s for s, f in calls if f < began]
    loaded = [f - s for s, f in calls if s >= began + SETTLE_S and f <= ended]
    p99 = percentile(quiet, 0.99)
    return {"quiet_p50_s": statistics.median(quiet), "quiet_p99_s": p99, "calls": len(loaded),
            "p50_s": statistics.median(loaded), "max_s": max(loaded), "max_over_quiet_p99": max(loaded) / p99}


async def run(root: Path, repeats: int) -> list[dict]:
    cpus = sorted(os.sched_getaffinity(0))
    phases: list[tuple[str, int | None, set[int] | None]] = [
        ("quiet", None, None), ("free", 0, None), ("free, nice 19", 19, None)]
    if len(cpus) > 1:
        phases.append(("pinned to the last CPU", 0, {cpus[-1]}))
    rows = []
    with LocalCluster(root) as lc:
        edge = lc.start("edge-1", "edge")
        async with migrate.connect(str(edge.address), tls=lc.tls_for("bench", "node"), local=False) as cluster:
            handle = await cluster.spawn(workloads.load("dirtier"), on="edge-1")
            await handle.call("dt_init", 16)
            for name, nice, pinned in phases:
                for _ in range(repeats):
                    print(f"[contention] {name} ...", file=sys.stderr, flush=True)
                    rows.append({"phase": name, **await one_phase(handle, nice, pinned)})
    return rows


def markdown(rows: list[dict]) -> str:
    ms = lambda v: f"{v * 1e3:.2f}"  # noqa: E731
    lines = table_head("Calls beside CPU load", [
        f"One migrate-node (edge-1, mutual TLS) and a `dt_dirty` call every {CALL_EVERY_S * 1e3:g} ms; "
        f"in each phase {HOGS} busy",
        f"processes run {LOAD_S:g} s beside them (on {len(os.sched_getaffinity(0))} CPUs). The reference is "
        "the p99 of the quiet 0.5 s",
        "before each phase, in the same run; a move's own CPU work is such a load.",
    ], ["phase", "quiet p50 / p99 ms", "calls", "p50 ms", "worst ms", "worst / quiet p99"])
    for r in rows:
        lines.append(f"| {r['phase']} | {ms(r['quiet_p50_s'])} / {ms(r['quiet_p99_s'])} | {r['calls']} "
                     f"| {ms(r['p50_s'])} | {ms(r['max_s'])} | {r['max_over_quiet_p99']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, "one run of each phase (three by default)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wm-bench-") as tmp:
        rows = trio.run(run, Path(tmp), 1 if args.quick else 3)
    write_results(args.out, "contention", args.quick, {"results": rows}, markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
