"""The differential spec harness: every spec script, plain against migrated before every action.

``python -m benchmarks spec [--sample N] [--file X.wast] [--json PATH] [--quick] [--out DIR]``

Runs the WebAssembly spec test suite ($WASM_TESTSUITE, else the shared
copy) through ``benchmarks._spec_diff`` and prints the totals by category:
files, modules, modules migrated, actions compared, mismatches (the goal is
0), refusals by feature, skipped commands by reason, and invalid/malformed
modules refused by ``snapshot.prepare`` or not.  Writes spec.json and
spec.md into ``--out`` (spec-quick.* with ``--quick``, which runs the fixed
sample the default test run uses).  Exits 1 if any action mismatched, any
invalid or malformed module was not refused, or the harness itself failed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # pragma: no cover - run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._measure import argument_parser, write_results  # noqa: E402
from benchmarks._spec_diff import Totals, run_file  # noqa: E402
from benchmarks._wast_engine import product_engine  # noqa: E402

#: The default test run's fixed sample: memory, table, global, bulk memory,
#: data/elem drop, SIMD, reference types, call_indirect, linking, exceptions.
SAMPLE = ("address.wast", "bulk.wast", "call_indirect.wast", "data_drop0.wast", "elem.wast", "global.wast",
          "imports.wast", "linking.wast", "memory.wast", "memory_grow.wast", "memory_init.wast", "ref_func.wast",
          "ref_null.wast", "select.wast", "simd_lane.wast", "simd_load.wast", "table.wast", "table_copy.wast",
          "table_grow.wast", "table_init.wast", "table_set.wast", "throw.wast", "try_table.wast", "float_misc.wast",
          "i31.wast", "start.wast", "traps.wast", "exports.wast")


def suite_dir() -> Path | None:
    """The spec test suite: $WASM_TESTSUITE, else a wasm-testsuite folder beside the checkout."""
    for candidate in (os.environ.get("WASM_TESTSUITE"), Path(__file__).resolve().parents[2] / "shared" / "wasm-testsuite",
                      Path("/work/shared/wasm-testsuite")):
        if candidate and Path(candidate, "address.wast").exists():
            return Path(candidate)
    return None


def pick(files: list[Path], sample: int | None) -> list[Path]:
    """Every file, or ``sample`` of them evenly spaced over the sorted list (deterministic)."""
    if sample is None or sample >= len(files):
        return files
    return [files[i * len(files) // sample] for i in range(sample)]


def run(paths: list[Path]) -> tuple[Totals, float]:
    engine = product_engine()
    totals = Totals()
    start = time.perf_counter()
    for path in paths:
        run_file(path, engine, totals)
    return totals, time.perf_counter() - start


def report(totals: Totals, seconds: float) -> dict:
    t = totals
    return {
        "totals": {
            "files": t.files, "modules": t.modules, "modules migrated": t.modules_migrated,
            "actions": t.actions, "actions compared": t.actions_compared, "mismatches": len(t.mismatches),
            "harness errors": len(t.harness_errors), "plain run against the script's expectation": len(t.spec_failures),
            "invalid refused by prepare": t.refused_ok["invalid"],
            "malformed refused by prepare": t.refused_ok["malformed"],
            "invalid/malformed not refused": len(t.not_refused),
            "invalid/malformed text the text parser rejects (no binary)": t.text_rejected,
        },
        "refusals": dict(t.refusals.most_common()),
        "skipped": dict(t.skipped.most_common()),
        "mismatches": [list(m) for m in t.mismatches],
        "not_refused": [list(m) for m in t.not_refused],
        "harness_errors": [list(m) for m in t.harness_errors],
        "spec_failures": [list(m) for m in t.spec_failures],
        "seconds": round(seconds, 1),
    }


def table(rep: dict, limit: int = 40) -> str:
    lines = ["# Spec suite: plain against migrated before every action", "",
             f"Wall time {rep['seconds']} s on this machine (wasmtime {_wasmtime_version()}).", "",
             "| category | count |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rep["totals"].items()]
    for title, key in (("Refusals by feature", "refusals"), ("Skipped commands by reason", "skipped")):
        lines += ["", f"## {title}", "", "| reason | count |", "|---|---|"]
        lines += [f"| {k.replace('|', '/')} | {v} |" for k, v in rep[key].items()] or ["| (none) | 0 |"]
    for title, key in (("Mismatches", "mismatches"), ("Invalid/malformed not refused", "not_refused"),
                       ("Harness errors", "harness_errors"),
                       ("Plain run against the script's expectation", "spec_failures")):
        rows = rep[key]
        if rows:
            lines += ["", f"## {title} ({len(rows)}, first {min(limit, len(rows))})", ""]
            lines += [f"- {' / '.join(str(x).splitlines()[0][:160] for x in r)}" for r in rows[:limit]]
    return "\n".join(lines) + "\n"


def _wasmtime_version() -> str:
    import importlib.metadata
    return importlib.metadata.version("wasmtime")


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, "run the fixed sample the default test run uses")
    parser.add_argument("--sample", type=int, help="run N files evenly spaced over the sorted suite")
    parser.add_argument("--file", action="append", help="run only this file (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)
    root = suite_dir()
    if root is None:
        print("spec test suite not found (set WASM_TESTSUITE): nothing run", file=sys.stderr)
        rep = {"totals": {}, "refusals": {}, "skipped": "spec test suite not found"}
        write_results(args.out, "spec", args.quick, rep, "# Spec suite\n\nNot run: spec test suite not found.\n")
        return 0
    if args.file:
        paths = [root / f for f in args.file]
    elif args.quick:
        paths = [root / f for f in SAMPLE]
    else:
        paths = pick(sorted(root.glob("*.wast")), args.sample)
    totals, seconds = run(paths)
    rep = report(totals, seconds)
    partial = bool(args.file) or args.sample is not None
    if partial:
        print(table(rep))
    else:
        write_results(args.out, "spec", args.quick, rep, table(rep))
    if args.json:
        args.json.write_text(__import__("json").dumps(rep, indent=2) + "\n")
    failed = rep["totals"]["mismatches"] or rep["totals"]["invalid/malformed not refused"] or rep["harness_errors"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
