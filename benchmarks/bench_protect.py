"""Measure checkpoint protection of large workloads: fetching checkpoints, and failing over.

One real ``migrate-node`` process (edge-1) runs on this machine with mutual
TLS; the application's own node ("local") is the failover target.  For each
size, a ``kvstore`` workload on edge-1 gets a buffer of that many MiB filled
with random (incompressible) bytes; then it is protected with
``protect("checkpoint", to="local")``.  Recorded, all in the same run:

* the first checkpoint: time to take and fetch it, its encoded size and
  the number of parts it came in, and the application's resident memory
  before and after (it holds the encoded parts);
* later checkpoints fetched one part per round trip (window 1, the old
  path: the baseline) and pipelined (``_chunks.WINDOW_PIECES`` parts in
  flight), alternately, best of ``--repeat`` each;
* the restore transfer to "local" (what failover sends: the checkpoint's
  chunks, applied in order, then dropped again), window 1 and pipelined;
* references for the same byte count: memcpy in this process, a bulk TLS
  transfer over loopback between two tasks of this process (the floor of
  the restore, whose both ends are this process), and a bulk pipelined
  ``ReadMemory`` from edge-1 over a NodeClient (the floor of the fetch:
  same TLS link and framing, no snapshot encoding);
* the fetch of a checkpoint through a ``benchmarks.netem`` delaying proxy
  (10 ms round trip), window 1 and pipelined: where round trips cost;
* the failover after SIGKILL of edge-1: time until the first call answers
  from the restored copy on "local";
* that every byte came back (a SHA-256 over the buffer before and after).

Run ``python -m benchmarks.bench_protect [--quick] [--mib N ...]``; writes
benchmarks/results/protect.json and protect.md.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import trio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import migrate  # noqa: E402
import workloads  # noqa: E402
from benchmarks._measure import argument_parser, table_head, write_results  # noqa: E402
from migrate.launcher import LocalCluster  # noqa: E402
from migrate.wire import (  # noqa: E402
    CHUNK_BYTES,
    WINDOW_PIECES,
    MAbort,
    MCheckpoint,
    MIncoming,
    chunk_bytes,
    fetch_parts,
    recut,
    send_chunks,
)
from nodes import RECEIVE_BYTES, NodeClient, ReadMemory, client_context, server_context  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: One-way delay the proxy adds for the fetch over a slower link: 5 ms each
#: way, a 10 ms round trip (an edge site and its region).
DELAY_ONE_WAY_S = 0.005
#: Bytes per write_memory / read_memory request (a frame holds 64 MiB).
PIECE_BYTES = 16 * 2**20


def rss_bytes() -> int:
    """This process's resident memory now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def memcpy_s(size: int) -> float:
    """Seconds to copy ``size`` bytes into an already touched buffer, best of 3."""
    src, dst = os.urandom(size), bytearray(size)
    view = memoryview(dst)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        view[:] = src
        best = min(best, time.perf_counter() - t0)
    return best


async def tls_floor_s(lc: LocalCluster, size: int) -> float:
    """Seconds to carry ``size`` bytes over a loopback TLS connection between two tasks of this process."""
    server_ctx = server_context(lc.tls_for("floor-server", "node"))
    client_ctx = client_context(lc.tls_for("floor-client", "node"))
    took: list[float] = []

    async def receive(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, server_ctx, server_side=True)
        got, t0 = 0, time.perf_counter()
        while got < size:
            got += len(await stream.receive_some(RECEIVE_BYTES))
        took.append(time.perf_counter() - t0)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, receive, 0, host="127.0.0.1"))
        tcp = await trio.open_tcp_stream("127.0.0.1", listeners[0].socket.getsockname()[1])
        stream = trio.SSLStream(tcp, client_ctx, server_hostname="127.0.0.1")
        await stream.do_handshake()
        piece = os.urandom(CHUNK_BYTES)
        for off in range(0, size, CHUNK_BYTES):
            await stream.send_all(piece[:size - off])
        while not took:
            await trio.sleep(0.01)
        await stream.aclose()
        nursery.cancel_scope.cancel()
    return took[0]


async def bulk_read_s(client, workload: str, ptr: int, size: int) -> float:
    """Seconds to read ``size`` bytes of a workload's memory over ``client``, WINDOW_PIECES requests in flight."""
    asks = ((ReadMemory, {"workload": workload, "offset": ptr + off, "length": min(CHUNK_BYTES, size - off)})
            for off in range(0, size, CHUNK_BYTES))
    t0 = time.perf_counter()
    await client.pipeline(asks, window=WINDOW_PIECES, on_reply=lambda _reply: False)
    return time.perf_counter() - t0


@contextlib.contextmanager
def delay_proxy(upstream: str, one_way_s: float) -> Iterator[str]:
    """A ``benchmarks.netem`` delaying proxy in front of ``upstream`` (its own process); yields its address."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.netem", "proxy", "--listen", "127.0.0.1:0",
                             "--upstream", upstream, "--delay", f"127.0.0.1={one_way_s}"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        yield json.loads(proc.stdout.readline())["address"]
    finally:
        proc.terminate()
        proc.wait()


async def delayed_fetch_s(address: str, tls: Path, workload: str, window: int) -> float:
    """Seconds to fetch a checkpoint's parts over a new connection to ``address``."""
    async with await NodeClient.connect(address, tls=tls) as client:
        meta = await client.request(MCheckpoint, workload=workload)
        t0 = time.perf_counter()
        await fetch_parts(client, workload, meta.token, window=window)
        return time.perf_counter() - t0


async def fetch_s(protector, window: int) -> float:
    protector.window = window
    t0 = time.perf_counter()
    await protector.take_checkpoint(protector.owner)
    return time.perf_counter() - t0


async def restore_s(cluster, protector, window: int, epoch: int) -> float:
    """Seconds to send the held checkpoint to "local" as failover does (then drop the copy there)."""
    client = await cluster.client(cluster.address_of("local"))
    await client.ensure_module(protector.module)
    meta = protector.checkpoint.meta
    settings = dict(meta.settings or {})
    await client.request(MIncoming, workload=protector.workload, module_sha256=meta.module_sha256, app=meta.app,
                         epoch=epoch, source="failover", args=tuple(settings.get("args", ())),
                         env=dict(settings.get("env") or {}), memory_limit_bytes=settings.get("memory_limit_bytes"))
    t0 = time.perf_counter()
    await send_chunks(client, recut(protector.checkpoint.parts, chunk_bytes(client.peer_max_frame_bytes)),
                      workload=protector.workload, epoch=epoch, window=window)
    took = time.perf_counter() - t0
    await client.request(MAbort, workload=protector.workload, epoch=epoch)
    return took


async def one_size(lc: LocalCluster, mib: int, repeat: int) -> dict:
    limit = str(mib * 2**20 + 64 * 2**20)
    edge = lc.start(f"edge-{mib}", "edge", args=["--workload-memory-bytes", limit])
    async with migrate.connect(str(edge.address), tls=lc.tls_for("bench", "node"),
                               local_memory_bytes=int(limit)) as cluster:
        h = await cluster.spawn(workloads.load("kvstore"), on=edge.name)
        size = mib * 2**20
        ptr = await h.call("wm_alloc", size)
        digest = hashlib.sha256()
        for off in range(0, size, PIECE_BYTES):
            piece = os.urandom(min(PIECE_BYTES, size - off))
            digest.update(piece)
            await h.write_memory(ptr + off, piece)
        rss_before = rss_bytes()
        t0 = time.perf_counter()
        await h.protect("checkpoint", interval_s=3600, to="local")  # fetches the first checkpoint
        first_s = time.perf_counter() - t0
        status = cluster.protection(h.workload)
        rss_one = rss_bytes()
        await h.call("kv_count")
        protector = cluster._protectors[h.workload]
        base_next, next_ = [], []
        for _ in range(repeat):  # alternate, so load from elsewhere hits both alike
            base_next.append(await fetch_s(protector, 1))
            next_.append(await fetch_s(protector, WINDOW_PIECES))
        rss_two = rss_bytes()
        base_restore, restore = [], []
        epoch = protector.checkpoint.epoch + 100  # above anything the workload reaches here
        for i in range(repeat):
            base_restore.append(await restore_s(cluster, protector, 1, epoch + 2 * i))
            restore.append(await restore_s(cluster, protector, WINDOW_PIECES, epoch + 2 * i + 1))
        tls = lc.tls_for("bench", "node")
        with delay_proxy(h._address, DELAY_ONE_WAY_S) as proxied:
            delayed_base = await delayed_fetch_s(proxied, tls, h.workload, 1)
            delayed = await delayed_fetch_s(proxied, tls, h.workload, WINDOW_PIECES)
        edge_client = await cluster.client(h._address)
        bulk = min([await bulk_read_s(edge_client, h.workload, ptr, size) for _ in range(repeat)])
        tls = min([await tls_floor_s(lc, size) for _ in range(repeat)])
        copy = memcpy_s(size)
        edge.kill()
        t0 = time.perf_counter()
        await h.call("kv_count")
        failover_s = time.perf_counter() - t0
        back = hashlib.sha256()
        for off in range(0, size, PIECE_BYTES):
            back.update(await h.read_memory(ptr + off, min(PIECE_BYTES, size - off)))
        mb = size / 1e6
        row = {
            "memory_mib": mib, "checkpoint_bytes": status.checkpoint_bytes,
            "checkpoint_parts": status.checkpoint_parts, "window_parts": WINDOW_PIECES, "repeat": repeat,
            "first_checkpoint_s": first_s, "next_checkpoint_window1_s": min(base_next),
            "next_checkpoint_s": min(next_), "restore_window1_s": min(base_restore), "restore_s": min(restore),
            "delayed_rtt_ms": round(2000 * DELAY_ONE_WAY_S), "delayed_fetch_window1_s": delayed_base,
            "delayed_fetch_s": delayed, "failover_s": failover_s, "memcpy_s": copy, "tls_loopback_s": tls, "nodeclient_bulk_read_s": bulk,
            "app_rss_before_mib": round(rss_before / 2**20), "app_rss_one_checkpoint_mib": round(rss_one / 2**20),
            "app_rss_after_second_mib": round(rss_two / 2**20), "node": h.node,
            "bytes_identical": back.digest() == digest.digest(),
        }
        for key in ("next_checkpoint_window1_s", "next_checkpoint_s", "restore_window1_s", "restore_s",
                    "delayed_fetch_window1_s", "delayed_fetch_s",
                    "memcpy_s", "tls_loopback_s", "nodeclient_bulk_read_s"):
            row[key.removesuffix("_s") + "_mb_per_s"] = round(mb / row[key])
        row["delayed_fetch_speedup"] = round(delayed_base / delayed, 2)
        row["fetch_speedup"] = round(row["next_checkpoint_window1_s"] / row["next_checkpoint_s"], 2)
        row["restore_speedup"] = round(row["restore_window1_s"] / row["restore_s"], 2)
        row["fetch_vs_memcpy"] = round(row["next_checkpoint_s"] / copy, 1)
        row["fetch_vs_bulk_read"] = round(row["next_checkpoint_s"] / bulk, 2)
        row["restore_vs_tls"] = round(row["restore_s"] / tls, 2)
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


async def run(sizes: list[int], root: Path, repeat: int) -> list[dict]:
    rows = []
    with LocalCluster(root) as lc:
        for mib in sizes:
            print(f"[protect] {mib} MiB ...", file=sys.stderr, flush=True)
            row = await one_size(lc, mib, repeat)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    window = rows[0]["window_parts"] if rows else WINDOW_PIECES
    lines = table_head("Checkpoint protection of large workloads", [
        "A `kvstore` workload on edge-1 (a real migrate-node process, mutual TLS on loopback) holds a",
        "buffer of random bytes; the application protects it with `protect(\"checkpoint\", to=\"local\")`,",
        "then edge-1 is killed with SIGKILL and the next call fails over to the application's own node.",
        f"Window 1 is one part per round trip (the old path); window {window} keeps {window} parts in flight.",
        "Restore is the failover's transfer of the checkpoint to \"local\" (applied, then dropped).",
        "Delayed: the fetch through a delaying proxy adding a 10 ms round trip, window 1 / pipelined.",
        "References, same byte count, same run: a pipelined NodeClient bulk read from edge-1 (the fetch's",
        "floor), TLS over loopback between two tasks of this process (the restore's floor: both its ends",
        "are this process), memcpy.  RSS is the application process's (its local node included).",
    ], ["memory", "checkpoint MiB", "parts", "first checkpoint s", f"next checkpoint s, window 1 / {window}",
        f"restore s, window 1 / {window}", f"delayed fetch s, window 1 / {window}", "failover s",
        "MB/s: fetch / bulk read / restore / TLS / memcpy", "app RSS before / 1 ckpt / after more MiB",
        "bytes identical"])
    for r in rows:
        lines.append(
            f"| {r['memory_mib']} MiB | {r['checkpoint_bytes'] / 2**20:.1f} | {r['checkpoint_parts']} "
            f"| {r['first_checkpoint_s']:.2f} "
            f"| {r['next_checkpoint_window1_s']:.2f} / {r['next_checkpoint_s']:.2f} (x{r['fetch_speedup']:.2f}) "
            f"| {r['restore_window1_s']:.2f} / {r['restore_s']:.2f} (x{r['restore_speedup']:.2f}) "
            f"| {r['delayed_fetch_window1_s']:.2f} / {r['delayed_fetch_s']:.2f} (x{r['delayed_fetch_speedup']:.2f}) "
            f"| {r['failover_s']:.2f} "
            f"| {r['next_checkpoint_mb_per_s']} / {r['nodeclient_bulk_read_mb_per_s']} / {r['restore_mb_per_s']} "
            f"/ {r['tls_loopback_mb_per_s']} / {r['memcpy_mb_per_s']} "
            f"| {r['app_rss_before_mib']} / {r['app_rss_one_checkpoint_mib']} / {r['app_rss_after_second_mib']} "
            f"| {'yes' if r['bytes_identical'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, "16 MiB only", sizes=True)
    parser.add_argument("--repeat", type=int, default=2, help="fetches and restores per window (best taken)")
    args = parser.parse_args(argv)
    sizes = args.mib or ([16] if args.quick else [96, 1024])
    with tempfile.TemporaryDirectory(prefix="wm-bench-") as tmp:
        rows = trio.run(run, sizes, Path(tmp), args.repeat)
    write_results(args.out, "protect", args.quick, {"results": rows}, markdown(rows))
    return 0 if all(r["bytes_identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
