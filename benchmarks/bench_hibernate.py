"""Measure hibernation from the caller's side: hibernate 64 MiB, wake on the first call, many hibernated workloads.

One real ``migrate-node`` on loopback with TLS.  In the same run:

* references: memcpy of the workload's memory size; a plain snapshot
  capture + encode (with a data key) of the same workload in this process;
  a warm call through the node;
* ``dirtier`` at 64 MiB (60% zero pages, 30% structured, 10% random):
  ``NodeClient.hibernate`` as the caller sees it, the file's size, the
  node's RSS before and after; then the first call (it wakes the workload)
  and a warm call after it;
* N ``counter`` workloads (10,000; 200 with ``--quick``) deployed and
  hibernated, 8 at a time: the node's RSS per hibernated workload against
  that of an awake one (measured on a sample), the disk they take, a
  SIGTERM restart with all of them hibernated, and a call that wakes one.

Run ``python -m benchmarks.bench_hibernate [--quick] [--mib N]``.  Writes
benchmarks/results/hibernate.json and hibernate.md.
"""

from __future__ import annotations

import ctypes
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio  # noqa: E402

import workloads  # noqa: E402
from benchmarks._measure import argument_parser, memcpy_samples, table_head, write_results  # noqa: E402
from migrate.launcher import LocalCluster  # noqa: E402
from nodes import Host, Limits, NodeClient  # noqa: E402

KEY = bytes(range(32))  # a fixed key: the cost does not depend on its value
AWAKE_SAMPLE = 50  # awake workloads whose RSS is the reference per workload
AT_ONCE = 8


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("hibernated.snap"))


def in_process_reference(mib: int, repeats: int) -> dict:
    """memcpy of the memory, and a plain capture + encode of the same workload (no node, no disk)."""
    with tempfile.TemporaryDirectory(prefix="bench-hibernate-") as root, \
            Host(Path(root), limits=Limits(memory_bytes=(mib + 64) << 20, call_timeout_s=600.0)) as host:
        host.deploy(host.add_module(workloads.load("dirtier")), workload_id="d")
        host.call("d", "dt_init", [mib])
        region = bytearray(mib << 20)
        memcpy_s = statistics.median(memcpy_samples(
            ctypes.addressof((ctypes.c_char * len(region)).from_buffer(region)), len(region), repeats))
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            host.checkpoint("d").to_bytes(key=KEY)
            samples.append(time.perf_counter() - start)
    return {"memcpy_s": round(memcpy_s, 4), "capture_encode_s": round(statistics.median(samples), 4)}


async def _timed(coroutine) -> float:
    start = time.perf_counter()
    await coroutine
    return time.perf_counter() - start


async def one_large(node, tls: Path, mib: int, repeats: int) -> dict:
    """Hibernate the 64 MiB workload and wake it with a call, ``repeats`` times, from the caller's side."""
    async with await NodeClient.connect(node.address, tls=tls) as client:
        wid = (await client.deploy(workloads.load("dirtier"), workload_id="large")).workload_id
        await client.call(wid, "dt_init", mib)
        checksum = await client.call(wid, "dt_checksum")
        for _ in range(50):
            await client.call(wid, "dt_base")
        warm = statistics.median([await _timed(client.call(wid, "dt_base")) for _ in range(200)])
        hibernate, wake, after, rss_awake, rss_asleep, on_disk = [], [], [], [], [], 0
        for _ in range(repeats):
            rss_awake.append(_rss_bytes(node.proc.pid))
            hibernate.append(await _timed(client.hibernate(wid)))
            await trio.sleep(0.1)  # the node frees the memory in a thread of its own after replying
            rss_asleep.append(_rss_bytes(node.proc.pid))
            on_disk = _disk_bytes(node.data_dir)
            wake.append(await _timed(client.call(wid, "dt_base")))  # the first call wakes it
            after.append(await _timed(client.call(wid, "dt_base")))
        assert await client.call(wid, "dt_checksum") == checksum, "the woken state is not exact"
        await client.remove(wid)
    return {"mib": mib, "warm_call_s": round(warm, 6), "hibernate_s": round(statistics.median(hibernate), 4),
            "wake_first_call_s": round(statistics.median(wake), 4),
            "call_after_wake_s": round(statistics.median(after), 6), "file_bytes": on_disk,
            "rss_freed_bytes": int(statistics.median(a - b for a, b in zip(rss_awake, rss_asleep)))}


async def many(node, tls: Path, n: int) -> tuple[dict, str]:
    """Deploy and hibernate ``n`` counters; RSS per hibernated workload against per awake one."""
    async with await NodeClient.connect(node.address, tls=tls) as client:
        sha = await client.ensure_module(workloads.load("counter"))
        base = _rss_bytes(node.proc.pid)
        sample = [(await client.deploy(sha, workload_id=f"awake-{i}")).workload_id for i in range(AWAKE_SAMPLE)]
        for wid in sample:
            await client.call(wid, "incr", 1)
        per_awake = (_rss_bytes(node.proc.pid) - base) / AWAKE_SAMPLE
        for wid in sample:
            await client.remove(wid)
        base = _rss_bytes(node.proc.pid)
        start = time.perf_counter()

        async def make(first: int) -> None:
            for i in range(first, n, AT_ONCE):
                wid = (await client.deploy(sha, workload_id=f"h-{i}")).workload_id
                await client.call(wid, "incr", i)
                await client.hibernate(wid)

        async with trio.open_nursery() as nursery:
            for first in range(AT_ONCE):
                nursery.start_soon(make, first)
        made_s = time.perf_counter() - start
        listing_s = await _timed(client.workloads())
        states = {w.state for w in await client.workloads()}
        per_asleep = (_rss_bytes(node.proc.pid) - base) / n
    assert states == {"hibernated"}, states
    return {"workloads": n, "deploy_and_hibernate_s": round(made_s, 2), "list_s": round(listing_s, 4),
            "rss_per_awake_bytes": int(per_awake), "rss_per_hibernated_bytes": int(per_asleep),
            "disk_bytes": _disk_bytes(node.data_dir)}, f"h-{n // 2}"


async def after_restart(node, tls: Path, wid: str, n: int) -> dict:
    async with await NodeClient.connect(node.address, tls=tls) as client:
        states = [w.state for w in await client.workloads()]
        woke = await _timed(client.call(wid, "incr", 0))
        value = await client.call(wid, "get")
    assert states.count("hibernated") == n and value == n // 2, (states.count("hibernated"), value)
    return {"wake_first_call_after_restart_s": round(woke, 4)}


def run(mib: int, n: int, repeats: int) -> dict:
    reference = in_process_reference(mib, repeats)
    with tempfile.TemporaryDirectory(prefix="bench-hibernate-nodes-") as root, \
            LocalCluster(Path(root), tls=True) as lc:
        node = lc.start("bench", "edge", args=["--max-workloads", str(n + 100), "--max-workloads-per-app",
                                               str(n + 100), "--workloads-memory-bytes", str(1 << 50)])
        tls = lc.tls_for("app", "client")
        large = trio.run(one_large, node, tls, mib, repeats)
        crowd, probe = trio.run(many, node, tls, n)
        start = time.perf_counter()
        assert node.terminate() == 0
        node.restart()
        crowd["restart_s"] = round(time.perf_counter() - start, 2)
        crowd.update(trio.run(after_restart, node, tls, probe, n))
    return {"reference": reference, "hibernate": large, "many": crowd,
            "x_capture_encode": round(large["hibernate_s"] / reference["capture_encode_s"], 2),
            "x_warm_call": round(large["wake_first_call_s"] / large["warm_call_s"], 1)}


def markdown(r: dict) -> str:
    ref, one, crowd = r["reference"], r["hibernate"], r["many"]
    lines = table_head("Hibernation, from the caller's side",
                       [f"Median of the repeats; one real node with TLS on loopback; {platform.machine()}, "
                        f"Python {platform.python_version()}. References are measured in the same run."],
                       ["what", "figure", "reference"])
    lines += [
        f"| hibernate {one['mib']} MiB (request to reply) | {one['hibernate_s'] * 1e3:.1f} ms | capture + encode "
        f"in process {ref['capture_encode_s'] * 1e3:.1f} ms (x{r['x_capture_encode']}); memcpy "
        f"{ref['memcpy_s'] * 1e3:.1f} ms |",
        f"| wake + first call | {one['wake_first_call_s'] * 1e3:.1f} ms | warm call "
        f"{one['warm_call_s'] * 1e3:.3f} ms (x{r['x_warm_call']}) |",
        f"| call after the wake | {one['call_after_wake_s'] * 1e3:.3f} ms | |",
        f"| file on disk | {one['file_bytes'] / 2**20:.1f} MiB | {one['mib']} MiB of memory |",
        f"| node RSS freed by hibernating (100 ms after the reply) | {one['rss_freed_bytes'] / 2**20:.1f} MiB | |",
        f"| {crowd['workloads']} workloads deployed and hibernated | {crowd['deploy_and_hibernate_s']} s | |",
        f"| node RSS per hibernated workload | {crowd['rss_per_hibernated_bytes'] / 1024:.0f} KiB | per awake "
        f"workload {crowd['rss_per_awake_bytes'] / 1024:.0f} KiB |",
        f"| disk of the {crowd['workloads']} | {crowd['disk_bytes'] / 2**20:.1f} MiB | |",
        f"| list of all | {crowd['list_s'] * 1e3:.1f} ms | |",
        f"| SIGTERM restart with all hibernated | {crowd['restart_s']} s | |",
        f"| wake + first call after the restart | {crowd['wake_first_call_after_restart_s'] * 1e3:.1f} ms | |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, "200 workloads, 16 MiB, one repeat", sizes=True)
    args = parser.parse_args(argv)
    mib = (args.mib or [16 if args.quick else 64])[0]
    result = run(mib, 200 if args.quick else 10_000, 1 if args.quick else 5)
    write_results(args.out, "hibernate", args.quick, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
