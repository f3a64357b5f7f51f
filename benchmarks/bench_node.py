"""Measure a no-op call through a real node on loopback, against an in-process wasmtime call.

A ``migrate-node serve`` subprocess listens on 127.0.0.1 with mutual TLS
(certificates made for the run).  This process connects a ``NodeClient`` and
calls a no-op export of a deployed workload, one call at a time, timing
each round trip.  In the same run we measure:

* the no-op export called straight through wasmtime-py (the reference);
* the same export through ``Host.call`` in this process (locks, argument
  checks, deadline);
* the round trip through the node with TLS (goal: p50 <= 150 us), and with
  ``--insecure`` plain TCP, so the cost of TLS shows;
* 8 callers sharing one connection, to show pipelining: calls per second;
* two floors any design on trio pays: a 64-byte echo between two trio
  processes over loopback TCP, and one ``trio.to_thread.run_sync`` hop of a
  no-op function.

Run ``python -m benchmarks.bench_node [--quick]``.  Writes
benchmarks/results/node.json and node.md (node-quick.* with --quick).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
import wasmtime

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._measure import argument_parser, table_head, write_results  # noqa: E402
from migrate.launcher import LocalCluster  # noqa: E402
from nodes import Host, NodeClient  # noqa: E402

NOOP = wasmtime.wat2wasm('(module (func (export "noop")))')
GOAL_P50_US = 150.0
CONCURRENT_CALLERS = 8


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e3  # noqa: E731
    return {"p50_us": round(pick(0.50), 2), "p99_us": round(pick(0.99), 2),
            "max_us": round(ordered[-1] / 1e3, 2), "mean_us": round(statistics.fmean(ordered) / 1e3, 2),
            "calls": len(ordered)}


def time_calls(call, n: int) -> list[int]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - t0)
    return samples


def in_process(n: int, data_dir: Path) -> dict[str, dict]:
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    noop = wasmtime.Instance(store, wasmtime.Module(engine, NOOP), []).exports(store)["noop"]
    time_calls(lambda: noop(store), 1000)
    out = {"wasmtime-py, in process": percentiles(time_calls(lambda: noop(store), n))}
    with Host(data_dir) as host:
        wid = host.deploy(host.add_module(NOOP)).workload_id
        time_calls(lambda: host.call(wid, "noop", ()), 1000)
        out["Host.call, in process"] = percentiles(time_calls(lambda: host.call(wid, "noop", ()), n))
    return out


ECHO_SERVER = """
import sys, trio
async def echo(stream):
    while data := await stream.receive_some(65536):
        await stream.send_all(data)
async def main():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(echo, listeners)
trio.run(main)
"""


async def _floors(n: int) -> dict[str, dict]:
    def noop() -> None:
        pass

    for _ in range(200):
        await trio.to_thread.run_sync(noop)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await trio.to_thread.run_sync(noop)
        samples.append(time.perf_counter_ns() - t0)
    out = {"floor: trio.to_thread hop of a no-op": percentiles(samples)}

    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        samples = []
        for i in range(n + 200):
            t0 = time.perf_counter_ns()
            await stream.send_all(b"x" * 64)
            await stream.receive_some(65536)
            if i >= 200:
                samples.append(time.perf_counter_ns() - t0)
        await stream.aclose()
    finally:
        proc.kill()
        proc.wait()
    out["floor: 64-byte echo between two trio processes"] = percentiles(samples)
    return out


async def through_node(address: str, tls: Path | None, n: int) -> tuple[dict, float]:
    async with await NodeClient.connect(address, tls=tls) as client:
        wid = (await client.deploy(NOOP)).workload_id
        for _ in range(500):
            await client.call(wid, "noop")
        samples = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            await client.call(wid, "noop")
            samples.append(time.perf_counter_ns() - t0)

        per_caller = max(1, n // CONCURRENT_CALLERS)

        async def caller() -> None:
            for _ in range(per_caller):
                await client.call(wid, "noop")

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(CONCURRENT_CALLERS):
                nursery.start_soon(caller)
        rate = per_caller * CONCURRENT_CALLERS / (time.perf_counter() - t0)
        await client.remove(wid)
    return percentiles(samples), rate


def node_run(root: Path, *, tls: bool, n: int) -> tuple[dict, float]:
    with LocalCluster(root, tls=tls) as lc:
        node = lc.start("bench", "edge")
        return trio.run(through_node, str(node.address), lc.tls_for("app", "client"), n)


def markdown(report: dict) -> str:
    rows = report["latency"]
    ref = rows["wasmtime-py, in process"]["p50_us"]
    lines = table_head("Node call latency benchmark", [
        f"A no-op export called one call at a time ({report['calls']} calls per path), "
        "through a real `migrate-node` on loopback and in process, in the same run."],
        ["path", "p50 µs", "p99 µs", "max µs", "p50 / in-process wasmtime"])
    for name, r in rows.items():
        lines.append(f"| {name} | {r['p50_us']} | {r['p99_us']} | {r['max_us']} | {r['p50_us'] / ref:.1f}x |")
    tls_p50 = rows["node over mutual TLS"]["p50_us"]
    verdict = "meets" if tls_p50 <= GOAL_P50_US else "misses"
    floor = rows["floor: trio.to_thread hop of a no-op"]["p50_us"] + \
        rows["floor: 64-byte echo between two trio processes"]["p50_us"]
    lines += ["", f"Through the node with TLS, p50 is {tls_p50} µs: it {verdict} the {GOAL_P50_US:.0f} µs goal.",
              f"A node call needs at least one trio-to-trio round trip and one worker-thread hop; "
              f"on this machine those two floors alone sum to {floor:.0f} µs at p50.",
              "", f"{CONCURRENT_CALLERS} callers sharing one TLS connection: "
              f"{report['concurrent_calls_per_s']['node over mutual TLS']:.0f} calls/s "
              f"({report['concurrent_calls_per_s']['node over plain TCP (--insecure)']:.0f} without TLS).",
              "", f"Python {report['machine']['python']}, {report['machine']['cpu_count']} CPUs, "
              f"{report['machine']['machine']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = argument_parser(__doc__, "2,000 calls per path instead of 20,000").parse_args(argv)
    n = 2000 if args.quick else 20000
    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
        root = Path(tmp)
        latency = in_process(n, root / "host")
        latency.update(trio.run(_floors, n))
        rates = {}
        for name, tls in (("node over mutual TLS", True), ("node over plain TCP (--insecure)", False)):
            print(f"[node] {name} ...", file=sys.stderr, flush=True)
            run_dir = root / ("tls" if tls else "plain")
            run_dir.mkdir()
            latency[name], rates[name] = node_run(run_dir, tls=tls, n=n)
    report = {"machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                          "machine": platform.machine()},
              "goal_p50_us": GOAL_P50_US, "calls": n, "latency": latency,
              "concurrent_callers": CONCURRENT_CALLERS, "concurrent_calls_per_s": rates}
    write_results(args.out, "node", args.quick, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
