"""Measure a short call's latency on one workload while long calls run on its neighbour.

A ``migrate-node serve`` subprocess listens on 127.0.0.1 with mutual TLS.
It hosts two workloads of one module: A, whose ``spin`` export counts to
a number calibrated to take about 200 ms, and B, whose ``noop`` export
returns at once.  In the same run we measure B's ``noop`` round trip, one
call at a time:

* with A idle (the reference);
* while 20 callers (each on its own connection) keep a ``spin`` call
  outstanding on A;
* while 60 callers do, more than trio's default 40 worker threads.

Each busy phase takes at most ``BUSY_CALLS`` short calls or ``BUSY_S``
seconds, whichever ends first.  The figures are B's p50/p99 and the ratio
of its p99 to the idle p99, and the p99 in units of one long call.

Run ``python -m benchmarks.bench_fairness [--quick]``.  Writes
benchmarks/results/fairness.json and fairness.md (fairness-quick.* with
--quick).
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import trio
import wasmtime

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._measure import argument_parser, table_head, write_results  # noqa: E402
from benchmarks.bench_node import percentiles  # noqa: E402
from migrate.launcher import LocalCluster  # noqa: E402
from nodes import NodeClient  # noqa: E402

MODULE = wasmtime.wat2wasm("""
(module
  (func (export "noop"))
  (func (export "spin") (param $n i64) (result i64)
    (local $i i64)
    (block $done
      (loop $again
        (br_if $done (i64.ge_u (local.get $i) (local.get $n)))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $again)))
    (local.get $i)))
""")
LONG_CALL_S = 0.200
NEIGHBOUR_CALLERS = (20, 60)


async def calibrate(client: NodeClient, workload: str) -> tuple[int, float]:
    """The ``spin`` count that takes about ``LONG_CALL_S`` through the node, and its measured time."""
    n = 1_000_000
    while True:
        t0 = time.perf_counter()
        await client.call(workload, "spin", n)
        took = time.perf_counter() - t0
        if took > LONG_CALL_S / 4:
            break
        n *= 4
    n = int(n * LONG_CALL_S / took)
    t0 = time.perf_counter()
    for _ in range(3):
        await client.call(workload, "spin", n)
    return n, (time.perf_counter() - t0) / 3


async def short_calls(client: NodeClient, workload: str, most: int, within_s: float) -> list[int]:
    samples = []
    end = time.perf_counter() + within_s
    while len(samples) < most and time.perf_counter() < end:
        t0 = time.perf_counter_ns()
        await client.call(workload, "noop")
        samples.append(time.perf_counter_ns() - t0)
    return samples


async def measure(address: str, tls: Path, *, idle_calls: int, busy_calls: int, busy_s: float) -> dict:
    async with await NodeClient.connect(address, tls=tls) as client:
        a = (await client.deploy(MODULE, workload_id="neighbour-a")).workload_id
        b = (await client.deploy(MODULE, workload_id="short-b")).workload_id
        spin, long_s = await calibrate(client, a)
        for _ in range(200):
            await client.call(b, "noop")
        phases = {"A idle": percentiles(await short_calls(client, b, idle_calls, 3600.0))}
        for callers in NEIGHBOUR_CALLERS:
            async with trio.open_nursery() as nursery:
                started = trio.Semaphore(0)
                for _ in range(callers):
                    nursery.start_soon(_keep_busy, address, tls, a, spin, started)
                for _ in range(callers):
                    await started.acquire()
                await trio.sleep(2 * long_s)  # every caller has a call outstanding
                samples = await short_calls(client, b, busy_calls, busy_s)
                nursery.cancel_scope.cancel()
            phases[f"{callers} long calls on A"] = percentiles(samples)
        await client.remove(a)
        await client.remove(b)
    return {"long_call_s": round(long_s, 4), "spin": spin, "phases": phases}


async def _keep_busy(address: str, tls: Path, workload: str, spin: int, started: trio.Semaphore) -> None:
    async with await NodeClient.connect(address, tls=tls) as client:
        started.release()
        while True:
            await client.call(workload, "spin", spin)


def markdown(report: dict) -> str:
    phases = report["phases"]
    idle = phases["A idle"]["p99_us"]
    long_us = report["long_call_s"] * 1e6
    lines = table_head("Neighbour fairness benchmark", [
        f"A short call (`noop`) on workload B, one at a time over mutual TLS to a real node, while "
        f"callers keep long calls ({report['long_call_s'] * 1e3:.0f} ms each) outstanding on neighbour "
        f"workload A; the node runs calls on {report['call_workers']}."],
        ["phase", "calls", "p50 µs", "p99 µs", "max µs", "p99 / idle p99", "p99 / one long call"])
    for name, r in phases.items():
        lines.append(f"| {name} | {r['calls']} | {r['p50_us']} | {r['p99_us']} | {r['max_us']} | "
                     f"{r['p99_us'] / idle:.1f}x | {r['p99_us'] / long_us:.2f} |")
    m = report["machine"]
    lines += ["", f"Python {m['python']}, {m['cpu_count']} CPUs, {m['machine']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = argument_parser(__doc__, "200 idle and at most 100 busy short calls, not 2,000 and 500").parse_args(argv)
    idle_calls, busy_calls, busy_s = (200, 100, 15.0) if args.quick else (2000, 500, 60.0)
    with tempfile.TemporaryDirectory(prefix="bench-fairness-") as tmp:
        with LocalCluster(Path(tmp)) as lc:
            node = lc.start("bench", "edge")
            report = trio.run(lambda: measure(str(node.address), lc.tls_for("app", "client"),
                                              idle_calls=idle_calls, busy_calls=busy_calls, busy_s=busy_s))
            workers = [line.get("call_workers") for line in node.log_lines() if "call_workers" in line]
    report["call_workers"] = f"{workers[0]} call workers" if workers else "trio's default thread limiter"
    report["machine"] = {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                         "machine": platform.machine()}
    write_results(args.out, "fairness", args.quick, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
