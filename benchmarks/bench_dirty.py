"""Measure a dirty-tracking round on a 256 MiB memory with 1% of its pages written.

Each round the guest writes one byte in each of 655 random 4 KiB pages
(1% of 65,536), then the tracker's ``collect`` is timed.  The reference is
a memcpy (ctypes.memmove) of the whole 256 MiB, measured in the same run:
the cost of sending every page instead of tracking.  The target for the
uffd backend is 2 ms a round.

Run as ``python -m benchmarks.bench_dirty`` or ``python benchmarks/bench_dirty.py``
(add ``--quick`` for 3 rounds).  Writes benchmarks/results/dirty.json and
dirty.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import wasmtime

from snapshot import PAGE_BYTES, open_tracker, uffd_available

MEMORY_BYTES = 256 << 20
PAGES = MEMORY_BYTES // PAGE_BYTES  # 65,536
DIRTY_PAGES = PAGES // 100  # 655: 1% of the pages written between captures
UFFD_TARGET_MS = 2.0
RESULTS = Path(__file__).resolve().parent / "results"

_WAT = f"""
(module
  (memory (export "memory") {MEMORY_BYTES // 65536})
  (func (export "store") (param i32 i32) (i32.store8 (local.get 0) (local.get 1))))
"""


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def _summary(samples: list[float]) -> dict[str, float]:
    """Median, min and max of durations in seconds, as milliseconds."""
    return {"median_ms": _ms(statistics.median(samples)),
            "min_ms": _ms(min(samples)), "max_ms": _ms(max(samples))}


def measure_memcpy(base: int, repeats: int) -> dict[str, float]:
    """Time ctypes.memmove of the whole memory into a buffer allocated (and faulted in) beforehand."""
    target = bytearray(MEMORY_BYTES)
    address = ctypes.addressof(ctypes.c_char.from_buffer(target))
    ctypes.memmove(address, base, MEMORY_BYTES)  # fault the target in first
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        ctypes.memmove(address, base, MEMORY_BYTES)
        samples.append(time.perf_counter() - start)
    return _summary(samples)


def measure_backend(backend: str, rounds: int, seed: int) -> dict[str, object]:
    """Time setup, 1%-dirty rounds and clean rounds of one backend on a fresh 256 MiB instance."""
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    instance = wasmtime.Instance(store, wasmtime.Module(engine, _WAT), [])
    memory = instance.exports(store)["memory"]
    guest_store = instance.exports(store)["store"]
    base = ctypes.addressof(memory.data_ptr(store).contents)
    ctypes.memset(base, 0xAB, MEMORY_BYTES)  # a memory in use: every page present
    view = (ctypes.c_ubyte * MEMORY_BYTES).from_address(base)
    rng = random.Random(seed)

    start = time.perf_counter()
    tracker = open_tracker(store, memory, backend=backend)
    setup_s = time.perf_counter() - start
    dirty_samples, clean_samples, exact = [], [], True
    with tracker:
        for _ in range(rounds):
            pages = sorted(rng.sample(range(PAGES), DIRTY_PAGES))
            for page in pages:
                address = page * PAGE_BYTES + rng.randrange(PAGE_BYTES)
                guest_store(store, address, view[address] ^ 0xFF)  # a real change
            start = time.perf_counter()
            reported = tracker.collect(store)
            dirty_samples.append(time.perf_counter() - start)
            exact = exact and list(reported) == pages
            start = time.perf_counter()
            reported = tracker.collect(store)
            clean_samples.append(time.perf_counter() - start)
            exact = exact and len(reported) == 0
    del view
    return {"setup_ms": _ms(setup_s), "dirty_round": _summary(dirty_samples),
            "clean_round": _summary(clean_samples), "exact": exact}


def run(rounds: int, seed: int) -> dict[str, object]:
    """Measure the memcpy reference and every backend usable here."""
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    memory = wasmtime.Instance(store, wasmtime.Module(engine, _WAT), []).exports(store)["memory"]
    base = ctypes.addressof(memory.data_ptr(store).contents)
    ctypes.memset(base, 0xAB, MEMORY_BYTES)
    memcpy = measure_memcpy(base, repeats=max(rounds, 5))
    del memory, store

    backends = {}
    for backend in ("uffd", "compare"):
        if backend == "uffd" and not uffd_available():
            backends[backend] = {"skipped": "userfaultfd async write-protect is not usable here"}
            continue
        backends[backend] = measure_backend(backend, rounds, seed)
        median = backends[backend]["dirty_round"]["median_ms"]
        backends[backend]["memcpy_over_round"] = round(memcpy["median_ms"] / median, 1)
    uffd = backends["uffd"]
    return {
        "memory_bytes": MEMORY_BYTES,
        "pages": PAGES,
        "dirty_pages_per_round": DIRTY_PAGES,
        "rounds": rounds,
        "seed": seed,
        "memcpy_whole_memory": memcpy,
        "backends": backends,
        "uffd_target_ms": UFFD_TARGET_MS,
        "uffd_meets_target": ("dirty_round" in uffd
                              and uffd["dirty_round"]["median_ms"] <= UFFD_TARGET_MS),
        "machine": {"python": platform.python_version(), "kernel": platform.release(),
                    "arch": platform.machine()},
    }


def markdown(result: dict[str, object]) -> str:
    """Render the result as a Markdown table."""
    memcpy = result["memcpy_whole_memory"]
    lines = [
        f"# Dirty-page tracking: {result['memory_bytes'] >> 20} MiB, "
        f"{result['dirty_pages_per_round']} of {result['pages']} pages written per round",
        "",
        f"{result['rounds']} rounds; Linux {result['machine']['kernel']}, "
        f"Python {result['machine']['python']}. Times are medians (min to max).",
        "",
        "| method | setup | round, 1% written | round, nothing written | memcpy / round | exact |",
        "|---|---|---|---|---|---|",
    ]
    for name, figures in result["backends"].items():
        if "skipped" in figures:
            lines.append(f"| {name} | skipped: {figures['skipped']} | | | | |")
            continue
        dirty, clean = figures["dirty_round"], figures["clean_round"]
        lines.append(
            f"| {name} `collect` | {figures['setup_ms']} ms "
            f"| {dirty['median_ms']} ms ({dirty['min_ms']} to {dirty['max_ms']}) "
            f"| {clean['median_ms']} ms ({clean['min_ms']} to {clean['max_ms']}) "
            f"| {figures['memcpy_over_round']}x | {'yes' if figures['exact'] else 'NO'} |")
    lines.append(f"| memcpy of the whole memory (reference) | | {memcpy['median_ms']} ms "
                 f"({memcpy['min_ms']} to {memcpy['max_ms']}) | | 1x | |")
    verdict = "meets" if result["uffd_meets_target"] else "misses"
    lines += ["", f"The uffd backend {verdict} its target of {result['uffd_target_ms']} ms a round.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the figures and write the results files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 20")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the results files")
    args = parser.parse_args(argv)
    result = run(rounds=3 if args.quick else 20, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "dirty-quick" if args.quick else "dirty"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / f"{name}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
