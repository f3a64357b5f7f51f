"""Measure checkpoint protection of large workloads: fetching checkpoints, and failing over.

One real ``migrate-node`` process (edge-1) runs on this machine with mutual
TLS; the application's own node ("local") is the failover target.  For each
size, a ``kvstore`` workload on edge-1 gets a buffer of that many MiB filled
with random (incompressible) bytes; then it is protected with
``protect("checkpoint", to="local")``.  Recorded, all in the same run:

* the first checkpoint: time to take and fetch it, its encoded size and
  the number of parts it came in, and the application's resident memory
  before and after (it holds the encoded parts);
* a later checkpoint, fetched while the previous one is held;
* the failover after SIGKILL of edge-1: time until the first call answers
  from the restored copy on "local";
* that every byte came back (a SHA-256 over the buffer before and after).

Run ``python -m benchmarks.bench_protect [--quick] [--mib N ...]``; writes
benchmarks/results/protect.json and protect.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import trio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import migrate  # noqa: E402
import workloads  # noqa: E402
from nodes.launcher import LocalCluster  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: Bytes per write_memory / read_memory request (a frame holds 64 MiB).
PIECE_BYTES = 16 * 2**20


def rss_bytes() -> int:
    """This process's resident memory now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def one_size(lc: LocalCluster, mib: int) -> dict:
    limit = str(mib * 2**20 + 64 * 2**20)
    edge = lc.start(f"edge-{mib}", "edge", args=["--workload-memory-bytes", limit])
    async with migrate.connect(edge.address, tls=lc.tls_for("bench", "node"),
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
        t0 = time.perf_counter()
        protector = cluster._protectors[h.workload]
        await protector.take_checkpoint(protector.owner)
        second_s = time.perf_counter() - t0
        rss_two = rss_bytes()
        edge.kill()
        t0 = time.perf_counter()
        await h.call("kv_count")
        failover_s = time.perf_counter() - t0
        back = hashlib.sha256()
        for off in range(0, size, PIECE_BYTES):
            back.update(await h.read_memory(ptr + off, min(PIECE_BYTES, size - off)))
        return {
            "memory_mib": mib, "checkpoint_bytes": status.checkpoint_bytes,
            "checkpoint_parts": status.checkpoint_parts, "first_checkpoint_s": round(first_s, 3),
            "next_checkpoint_s": round(second_s, 3), "failover_s": round(failover_s, 3),
            "app_rss_before_mib": round(rss_before / 2**20), "app_rss_one_checkpoint_mib": round(rss_one / 2**20),
            "app_rss_after_second_mib": round(rss_two / 2**20), "node": h.node,
            "bytes_identical": back.digest() == digest.digest(),
        }


async def run(sizes: list[int], root: Path) -> list[dict]:
    rows = []
    with LocalCluster(root) as lc:
        for mib in sizes:
            print(f"[protect] {mib} MiB ...", file=sys.stderr, flush=True)
            row = await one_size(lc, mib)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "# Checkpoint protection of large workloads",
        "",
        "A `kvstore` workload on edge-1 (a real migrate-node process, mutual TLS on loopback) holds a",
        "buffer of random bytes; the application protects it with `protect(\"checkpoint\", to=\"local\")`,",
        "then edge-1 is killed with SIGKILL and the next call fails over to the application's own node.",
        "RSS is the application process's (its local node included).",
        "",
        "| memory | checkpoint MiB | parts | first checkpoint s | next checkpoint s | failover s "
        "| app RSS before / 1 ckpt / after 2nd MiB | bytes identical |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['memory_mib']} MiB | {r['checkpoint_bytes'] / 2**20:.1f} | {r['checkpoint_parts']} "
            f"| {r['first_checkpoint_s']:.2f} | {r['next_checkpoint_s']:.2f} | {r['failover_s']:.2f} "
            f"| {r['app_rss_before_mib']} / {r['app_rss_one_checkpoint_mib']} / {r['app_rss_after_second_mib']} "
            f"| {'yes' if r['bytes_identical'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 MiB only")
    parser.add_argument("--mib", type=int, action="append", help="memory sizes in MiB")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = args.mib or ([16] if args.quick else [96, 1024])
    with tempfile.TemporaryDirectory(prefix="wm-bench-") as tmp:
        rows = trio.run(run, sizes, Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    name = "protect-quick" if args.quick else "protect"
    (args.out / f"{name}.json").write_text(json.dumps({"results": rows}, indent=2) + "\n")
    table = markdown(rows)
    (args.out / f"{name}.md").write_text(table)
    print(table)
    return 0 if all(r["bytes_identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
