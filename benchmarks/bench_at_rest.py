"""Measure what encryption at rest costs a checkpoint: save and restore with and without the data key.

One workload (``dirtier``) holds a region of typical program memory (60%
zero pages, 30% structured, 10% random).  In the same run we measure:

* memcpy of the workload's memory size (the floor, and the reference for
  every ratio);
* ``Host.checkpoint_all`` (capture, zstd, write, fsync: what SIGTERM's
  checkpoint does before its directory swap) without a key and with the
  node's data key (AES-256-GCM per 4 MiB frame, sealed manifest);
* ``Host.restore_all`` into a new Host, without and with the key;
* AES-GCM alone over as many bytes as the checkpoint has on disk, in 4 MiB
  chunks: the encryption's own share, which the disk's noise hides in
  the save and restore figures.

Rates are memory bytes per second.  Run ``python -m benchmarks.bench_at_rest
[--quick] [--mib N]``.  Writes benchmarks/results/at_rest.json and at_rest.md.
"""

from __future__ import annotations

import ctypes
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

import workloads  # noqa: E402
from benchmarks._measure import argument_parser, memcpy_samples, table_head, write_results  # noqa: E402
from nodes import Host, Limits  # noqa: E402

KEY = bytes(range(32))  # a fixed key: the cost does not depend on its value


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(mib: int, repeats: int) -> dict:
    limits = Limits(memory_bytes=(mib + 64) << 20, call_timeout_s=600.0)
    root = Path(tempfile.mkdtemp(prefix="bench-at-rest-"))
    try:
        data = root / "data"
        with Host(data, limits=limits) as host:
            host.deploy(host.add_module(workloads.load("dirtier")), workload_id="d")
            host.call("d", "dt_init", [mib])
            base, pages = host.call("d", "dt_base", []), host.call("d", "dt_pages", [])
            region = bytearray(host.read_memory("d", base, pages * 4096))
            checksum = host.call("d", "dt_checksum", [])
            memcpy_s = statistics.median(memcpy_samples(
                ctypes.addressof((ctypes.c_char * len(region)).from_buffer(region)), len(region), repeats))
            saved = {"plain": root / "plain", "encrypted": root / "encrypted"}  # one key per directory
            host.checkpoint_all(saved["plain"])  # untimed: the first save also allocates the files' space
            save_samples: dict[str, list[float]] = {"plain": [], "encrypted": []}
            for _ in range(repeats):  # interleaved, so drift in the disk's speed hits both alike
                for label, key in (("plain", None), ("encrypted", KEY)):
                    save_samples[label].append(_timed(lambda: host.checkpoint_all(saved[label], key=key)))
            save = {label: statistics.median(s) for label, s in save_samples.items()}
            on_disk = sum(p.stat().st_size for p in saved["encrypted"].iterdir())
            aead, chunk = AESGCM(KEY), bytes(4 << 20)
            aes_gcm_s = statistics.median(_timed(lambda: [aead.encrypt(bytes(12), chunk[:on_disk - at], None)
                                                          for at in range(0, on_disk, len(chunk))])
                                          for _ in range(repeats))
        restore = {}
        for label, key in (("plain", None), ("encrypted", KEY)):
            with Host(data, limits=limits) as host:  # dt_init fills the region the same way each time
                host.deploy(host.add_module(workloads.load("dirtier")), workload_id="d")
                host.call("d", "dt_init", [mib])
                host.checkpoint_all(saved[label], key=key)
            samples = []
            for _ in range(repeats):  # restore changes nothing on disk: the same checkpoint each time
                with Host(data, limits=limits) as host:
                    start = time.perf_counter()
                    assert host.restore_all(saved[label], key=key).done == ("d",)
                    samples.append(time.perf_counter() - start)
                    assert host.call("d", "dt_checksum", []) == checksum, "restore is not exact"
            restore[label] = statistics.median(samples)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    size = mib << 20

    def figures(seconds: float) -> dict:
        return {"seconds": round(seconds, 4), "gb_per_s": round(size / seconds / 1e9, 3),
                "x_memcpy": round(seconds / memcpy_s, 1)}
    return {"mib": mib, "repeats": repeats, "checkpoint_bytes": on_disk, "memcpy": figures(memcpy_s),
            "aes_gcm_on_disk_bytes": figures(aes_gcm_s), "save_plain": figures(save["plain"]), "save_encrypted": figures(save["encrypted"]),
            "restore_plain": figures(restore["plain"]), "restore_encrypted": figures(restore["encrypted"]),
            "save_encryption_overhead": round(save["encrypted"] / save["plain"] - 1, 3),
            "restore_encryption_overhead": round(restore["encrypted"] / restore["plain"] - 1, 3)}


def markdown(results: list[dict]) -> str:
    lines = table_head("Encryption at rest: checkpoint save and restore",
                       [f"Median of the repeats; {platform.machine()}, Python {platform.python_version()}. "
                        "Rates are memory bytes per second; x memcpy is the time over memcpy's."],
                       ["MiB", "what", "seconds", "GB/s", "x memcpy"])
    for r in results:
        for what in ("memcpy", "aes_gcm_on_disk_bytes", "save_plain", "save_encrypted", "restore_plain", "restore_encrypted"):
            f = r[what]
            lines.append(f"| {r['mib']} | {what.replace('_', ' ')} | {f['seconds']} | {f['gb_per_s']} | "
                         f"{f['x_memcpy']} |")
        lines.append(f"| {r['mib']} | encryption overhead | save {r['save_encryption_overhead']:+.1%}, "
                     f"restore {r['restore_encryption_overhead']:+.1%} | | |")
        lines.append(f"| {r['mib']} | checkpoint on disk (zstd, zero pages elided) | "
                     f"{r['checkpoint_bytes'] / 2**20:.1f} MiB | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, "32 MiB, one repeat", sizes=True)
    args = parser.parse_args(argv)
    sizes = args.mib or ([32] if args.quick else [256])
    repeats = 1 if args.quick else 3
    results = [run(mib, repeats) for mib in sizes]
    write_results(args.out, "at_rest", args.quick, {"results": results}, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
