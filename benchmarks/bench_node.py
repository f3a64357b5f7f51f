"""Measure a no-op call through a real node on loopback, against an in-process wasmtime call and a raw TLS echo.

A ``migrate-node serve`` subprocess listens on 127.0.0.1 with mutual TLS
(certificates made for the run).  This process connects a ``NodeClient`` and
calls a no-op export of a deployed workload, one call at a time, timing
each round trip; then the same through a migratable workload's ``Handle``
(``migrate.connect``: the exactly-once ledger on the owner).  In the same
run we measure:

* the no-op export called straight through wasmtime-py (the reference);
* the same export through ``Host.call`` in this process (locks, argument
  checks, deadline);
* the round trip through the node with TLS (goal: p50 <= 150 us), and with
  ``--insecure`` plain TCP, so the cost of TLS shows;
* 8 callers sharing one connection, to show pipelining: calls per second,
  through a NodeClient (one workload) and through 8 handles (8 workloads);
* the floor a call through a handle over TLS is held to: a raw TLS echo
  between two trio processes, the server with the node's certificate and
  the client with the handle's, the request and reply the size of a
  handle's call frame and its reply frame (goal: handle p50 <= 2.5x its p50);
* two more floors: a 64-byte echo between two trio processes over loopback
  TCP, and one ``trio.to_thread.run_sync`` hop of a no-op function (a call
  that may run long pays one; the no-op export provably ends fast and runs
  on the node's event loop).

Run ``python -m benchmarks.bench_node [--quick]``.  Writes
benchmarks/results/node.json and node.md (node-quick.* with --quick).
"""

from __future__ import annotations

import contextlib
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

import migrate  # noqa: E402
from benchmarks._measure import argument_parser, table_head, write_results  # noqa: E402
from migrate.launcher import LocalCluster  # noqa: E402
from migrate.wire import MCall, MResult  # noqa: E402
from nodes import Connection, Host, NodeClient  # noqa: E402

NOOP = wasmtime.wat2wasm('(module (func (export "noop")))')
GOAL_P50_US = 150.0
#: A no-op call through a handle over TLS, against the raw TLS echo floor (issue 14).
GOAL_HANDLE_ECHO_RATIO = 2.5
CONCURRENT_CALLERS = 8
HANDLE = "handle over mutual TLS"
TLS_ECHO = "floor: raw TLS echo, handle-call frame sizes"


@contextlib.contextmanager
def echo_server(script: str, *args: str):
    """Run an echo server process for the block; yield its port."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)
    try:
        yield int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


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


# How each echo server process listens: it prints its port, then serves ``echo``.
_SERVE = """
async def main():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(echo, listeners)
trio.run(main)
"""

ECHO_SERVER = """
import sys, trio
async def echo(stream):
    while data := await stream.receive_some(65536):
        await stream.send_all(data)
""" + _SERVE


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

    with echo_server(ECHO_SERVER) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        samples = await round_trips(stream, b"x" * 64, 64, n)
    out["floor: 64-byte echo between two trio processes"] = percentiles(samples)
    return out


TLS_ECHO_SERVER = """
import sys, trio
from nodes import server_context
request_bytes, reply_bytes = int(sys.argv[2]), int(sys.argv[3])
reply = b"r" * reply_bytes
async def echo(tcp):
    stream = trio.SSLStream(tcp, server_context(sys.argv[1]), server_side=True, https_compatible=False)
    await stream.do_handshake()
    have = 0
    while data := await stream.receive_some(65536):
        have += len(data)
        while have >= request_bytes:
            have -= request_bytes
            await stream.send_all(reply)
""" + _SERVE


def call_frame_sizes() -> tuple[int, int]:
    """The bytes of a handle's no-op call frame and of its reply frame."""
    request = MCall(id=100000, workload="w-0123456789ab", op="call", caller="0" * 32, seq=100000, ack=99999,
                    export="noop")
    reply = MResult(id=100000, epoch=1, index=100001)
    client, server = Connection(), Connection()  # a frame is what a Connection writes: header and payload
    server.receive_data(client.send(client.hello(name="app", role="app")))
    server.next_event()
    client.receive_data(server.send(server.hello(name="bench", role="edge")))
    client.next_event()
    sent = client.send(request)
    server.receive_data(sent)
    server.next_event()
    return len(sent), len(server.send(reply))


async def tls_echo(server_tls: Path, client_tls: Path, n: int) -> dict:
    """Round trips of a call-sized request answered by a reply-sized frame, over mutual TLS between trio processes."""
    from nodes import client_context

    request_bytes, reply_bytes = call_frame_sizes()
    with echo_server(TLS_ECHO_SERVER, str(server_tls), str(request_bytes), str(reply_bytes)) as port:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, client_context(client_tls), server_hostname="127.0.0.1",
                                https_compatible=False)
        await stream.do_handshake()
        return percentiles(await round_trips(stream, b"q" * request_bytes, reply_bytes, n))


async def round_trips(stream: trio.abc.Stream, request: bytes, reply_bytes: int, n: int) -> list[int]:
    """Time ``n`` round trips of ``request`` answered by ``reply_bytes`` (after 500 to warm up), then close."""
    samples = []
    for i in range(n + 500):
        t0 = time.perf_counter_ns()
        await stream.send_all(request)
        got = 0
        while got < reply_bytes:
            got += len(await stream.receive_some(65536))
        if i >= 500:
            samples.append(time.perf_counter_ns() - t0)
    await stream.aclose()
    return samples


async def through_handles(address: str, tls: Path, n: int) -> tuple[dict, float]:
    """One no-op call at a time through a Handle, then 8 handles (8 workloads) calling at once."""
    async with migrate.connect(address, tls=tls, local=False) as cluster:
        handles = [await cluster.spawn(NOOP, on="bench") for _ in range(CONCURRENT_CALLERS)]
        h = handles[0]
        for _ in range(500):
            await h.call("noop")
        samples = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            await h.call("noop")
            samples.append(time.perf_counter_ns() - t0)

        per_caller = max(1, n // CONCURRENT_CALLERS)

        async def caller(handle) -> None:
            for _ in range(per_caller):
                await handle.call("noop")

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for handle in handles:
                nursery.start_soon(caller, handle)
        rate = per_caller * CONCURRENT_CALLERS / (time.perf_counter() - t0)
        for handle in handles:
            await handle.remove()
    return percentiles(samples), rate


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


def node_run(root: Path, *, tls: bool, n: int, latency: dict, rates: dict, name: str) -> None:
    with LocalCluster(root, tls=tls) as lc:
        node = lc.start("bench", "edge")
        latency[name], rates[name] = trio.run(through_node, str(node.address), lc.tls_for("app", "client"), n)
        if tls:
            # The echo floor and the handle path alternate, so both see the same machine load.
            app = lc.tls_for("bench-app", "node")
            print(f"[node] {HANDLE} and {TLS_ECHO} ...", file=sys.stderr, flush=True)
            latency[TLS_ECHO] = trio.run(tls_echo, lc.tls_for("bench", "node"), app, n)
            latency[HANDLE], rates[f"{HANDLE}, {CONCURRENT_CALLERS} handles"] = trio.run(
                through_handles, str(node.address), app, n)


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
    handle_p50, echo_p50 = rows[HANDLE]["p50_us"], rows[TLS_ECHO]["p50_us"]
    ratio = report["handle_over_tls_echo_p50"]
    lines += ["", f"Through a handle with TLS, p50 is {handle_p50} µs, {ratio:.2f}x the raw TLS echo "
              f"({echo_p50} µs, {report['frame_bytes']['request']}-byte request, "
              f"{report['frame_bytes']['reply']}-byte reply): it "
              f"{'meets' if ratio <= GOAL_HANDLE_ECHO_RATIO else 'misses'} the {GOAL_HANDLE_ECHO_RATIO}x goal.",
              f"Through the node with TLS, p50 is {tls_p50} µs: it {verdict} the {GOAL_P50_US:.0f} µs goal.",
              f"The no-op export provably ends fast (no loop, no call), so the node runs it on its event "
              f"loop: one trio-to-trio round trip. A call that may run long also crosses to a worker thread "
              f"and back; with that hop the two floors sum to {floor:.0f} µs at p50.",
              "", f"{CONCURRENT_CALLERS} callers sharing one TLS connection: "
              f"{report['concurrent_calls_per_s']['node over mutual TLS']:.0f} calls/s "
              f"({report['concurrent_calls_per_s']['node over plain TCP (--insecure)']:.0f} without TLS); "
              f"{CONCURRENT_CALLERS} handles (one workload each) calling at once over one TLS connection: "
              f"{report['concurrent_calls_per_s'][f'{HANDLE}, {CONCURRENT_CALLERS} handles']:.0f} calls/s.",
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
            node_run(run_dir, tls=tls, n=n, latency=latency, rates=rates, name=name)
    request_bytes, reply_bytes = call_frame_sizes()
    report = {"machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                          "machine": platform.machine()},
              "goal_p50_us": GOAL_P50_US, "calls": n, "latency": latency,
              "goal_handle_over_tls_echo_p50": GOAL_HANDLE_ECHO_RATIO,
              "handle_over_tls_echo_p50": round(latency[HANDLE]["p50_us"] / latency[TLS_ECHO]["p50_us"], 3),
              "frame_bytes": {"request": request_bytes, "reply": reply_bytes},
              "concurrent_callers": CONCURRENT_CALLERS, "concurrent_calls_per_s": rates}
    write_results(args.out, "node", args.quick, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
