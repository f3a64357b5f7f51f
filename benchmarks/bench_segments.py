"""Measure what dropped passive segments cost a capture and a restore, against a module without them.

The module under test has N passive data segments and N passive element
segments (N = 1000; 200 with --quick).  The reference, measured in the same
run, is the same module with every segment active: prepare adds no probes
to it, so its capture and restore are what they cost without segments to
probe.  Measured, as medians over the repeats:

* capture with nothing dropped (one probe call per kind);
* capture with every segment dropped: the instance's first capture (one
  trapping probe call per segment), and the next one (the dropped ones are
  known: one call per kind);
* the same with every other segment dropped (one call per segment, runs
  of one);
* restore into a fresh instance (checking and dropping) for each case;
* compiling the prepared module against compiling the original.

Run ``python -m benchmarks.bench_segments [--quick]``; writes
benchmarks/results/segments.json and segments.md.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import wasmtime

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import snapshot  # noqa: E402
from benchmarks._measure import argument_parser, table_head, write_results  # noqa: E402


def _wat(n: int, passive: bool) -> str:
    parts = ["(module (memory 1) (table 1 funcref) (func $f)"]
    for k in range(n):
        parts.append(f'(data "segment {k}")' if passive else f'(data (i32.const 0) "segment {k}")')
        parts.append("(elem func $f)" if passive else "(elem (i32.const 0) func $f)")
    for name, step in (("drop_all", 1), ("drop_half", 2)):
        drops = "".join(f"(data.drop {k}) (elem.drop {k})" for k in range(0, n, step))
        parts.append(f'(func (export "{name}") {drops})')
    return "".join(parts) + ")"


class _Module:
    def __init__(self, engine: wasmtime.Engine, wasm: bytes) -> None:
        self.engine = engine
        start = time.perf_counter()
        wasmtime.Module(engine, wasm)
        self.compile_original_s = time.perf_counter() - start
        prepared = snapshot.prepare(wasm)
        start = time.perf_counter()
        self.module = wasmtime.Module(engine, prepared)
        self.compile_prepared_s = time.perf_counter() - start

    def instance(self, drop: str | None = None):
        store = wasmtime.Store(self.engine)
        inst = wasmtime.Instance(store, self.module, [])
        if drop:
            inst.exports(store)[drop](store)
        return store, inst


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _case(mod: _Module, drop: str | None, repeats: int) -> dict:
    """Median ms of a first capture, a second capture and a restore, with ``drop`` called first."""
    first, again, restore = [], [], []
    snap = None
    for _ in range(repeats):
        store, inst = mod.instance(drop)
        snapshot.layout(store, inst)  # finding the exports is not what is measured
        first.append(_timed(lambda: snapshot.capture(store, inst)))
        again.append(_timed(lambda: snapshot.capture(store, inst)))
        snap = snapshot.capture(store, inst)
        store2, inst2 = mod.instance()
        snapshot.layout(store2, inst2)
        restore.append(_timed(lambda: snapshot.restore(snap, store2, inst2)))
        assert snapshot.capture(store2, inst2).same_state(snap)
    ms = lambda xs: round(statistics.median(xs) * 1e3, 3)  # noqa: E731
    return {"first_capture_ms": ms(first), "capture_ms": ms(again), "restore_ms": ms(restore),
            "dropped": len(snap.dropped.data) + len(snap.dropped.elems)}


def run(n: int, repeats: int) -> dict:
    engine = wasmtime.Engine()
    passive = _Module(engine, wasmtime.wat2wasm(_wat(n, True)))
    active = _Module(engine, wasmtime.wat2wasm(_wat(n, False)))
    reference = _case(active, None, repeats)
    cases = {name: _case(passive, drop, repeats)
             for name, drop in (("none dropped", None), ("all dropped", "drop_all"), ("every other dropped", "drop_half"))}
    for c in cases.values():
        c["capture_ratio"] = round(c["capture_ms"] / reference["capture_ms"], 2)
        c["first_capture_ratio"] = round(c["first_capture_ms"] / reference["capture_ms"], 2)
        c["restore_ratio"] = round(c["restore_ms"] / reference["restore_ms"], 2)
    return {"segments_per_kind": n, "repeats": repeats, "reference": reference, "cases": cases,
            "compile_ms": {"original": round(passive.compile_original_s * 1e3, 1),
                           "prepared": round(passive.compile_prepared_s * 1e3, 1),
                           "reference_prepared": round(active.compile_prepared_s * 1e3, 1)}}


def markdown(result: dict) -> str:
    ref = result["reference"]
    lines = table_head(
        "Dropped passive segments: capture and restore cost",
        [f"{result['segments_per_kind']} passive data and {result['segments_per_kind']} passive element segments; "
         f"medians of {result['repeats']} runs. Ratios are against the same module with every segment active "
         f"(no probes), measured in the same run: capture {ref['capture_ms']} ms, restore {ref['restore_ms']} ms.",
         f"Compiling: original {result['compile_ms']['original']} ms, prepared "
         f"{result['compile_ms']['prepared']} ms (the all-active reference prepared: "
         f"{result['compile_ms']['reference_prepared']} ms)."],
        ["case", "segments dropped", "first capture ms (ratio)", "next capture ms (ratio)", "restore ms (ratio)"])
    for name, c in result["cases"].items():
        lines.append(f"| {name} | {c['dropped']} | {c['first_capture_ms']} ({c['first_capture_ratio']}x) "
                     f"| {c['capture_ms']} ({c['capture_ratio']}x) | {c['restore_ms']} ({c['restore_ratio']}x) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = argument_parser(__doc__, "200 segments per kind, 3 repeats").parse_args(argv)
    result = run(200 if args.quick else 1000, 3 if args.quick else 9)
    write_results(args.out, "segments", args.quick, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
