"""Run every benchmark: ``python -m benchmarks [--quick] [--out DIR]``; or the soak: ``--soak``.

``python -m benchmarks spec [--sample N] [--file X.wast] [--json PATH]`` runs
only the differential spec harness (``benchmarks.spec``) with its own options.

Each benchmark writes NAME.json and NAME.md (NAME-quick.* in quick mode)
and reports ratios measured in the same run.  Afterwards the JSON files are
checked for the fields readers rely on; no timing is asserted.  The soak
run (``benchmarks.soak``: moves under calls while nodes are killed) runs
only with ``--soak``, and fails the run if a call was lost or duplicated;
``--quick`` runs its short version as well, after the others.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# (module, fields every result file must carry)
SUITE = [
    ("benchmarks.bench_snapshot", "snapshot", ["results"]),
    ("benchmarks.bench_segments", "segments", ["reference", "cases"]),
    ("benchmarks.bench_dirty", "dirty", []),
    ("benchmarks.bench_pool", "pool", ["start", "throughput", "reset"]),
    ("benchmarks.bench_hosting", "hosting", ["results"]),
    ("benchmarks.bench_node", "node", ["latency"]),
    ("benchmarks.bench_fairness", "fairness", ["phases", "long_call_s"]),
    ("benchmarks.bench_contention", "contention", ["results"]),
    ("benchmarks.bench_migrate", "migrate", ["results"]),
    ("benchmarks.bench_protect", "protect", ["results"]),
    ("benchmarks.bench_at_rest", "at_rest", ["results"]),
    ("benchmarks.bench_hibernate", "hibernate", ["reference", "hibernate", "many"]),
    ("benchmarks.suite.__main__", "suite", ["results", "strategies"]),
    ("benchmarks.fuzz_node", "fuzz", ["frames_tried", "node_crashes", "state_mismatches"]),
    ("benchmarks.spec", "spec", ["totals", "refusals"]),
]
SOAK = ("benchmarks.soak", "soak", ["figures", "ok"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["spec"]:
        return importlib.import_module("benchmarks.spec").main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the smoke-test sizes CI uses")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", action="append", help="run only these benchmarks (by name)")
    parser.add_argument("--soak", action="store_true", help="run only the soak (1,000 moves; 50 with --quick)")
    parser.add_argument("--seed", type=int, default=1, help="the soak's seed")
    args = parser.parse_args(argv)
    failures = []
    runs = [SOAK] if args.soak else SUITE + ([SOAK] if args.quick else [])
    for module_name, name, fields in runs:
        if args.only and name not in args.only:
            continue
        print(f"== {name} ==", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        module = importlib.import_module(module_name)
        argv_ = (["--quick"] if args.quick else []) + ["--out", str(args.out)]
        if name == "soak":
            argv_ += ["--seed", str(args.seed)]
        if module.main(argv_):
            failures.append(f"{name}: exited with a failure")
        stem = f"{name}-quick" if args.quick else name
        try:
            data = json.loads((args.out / f"{stem}.json").read_text())
            if not (args.out / f"{stem}.md").read_text().startswith("#"):
                raise ValueError("markdown table missing its heading")
            missing = [f for f in fields if f not in data]
            if missing:
                raise ValueError(f"missing fields {missing}")
        except (OSError, ValueError) as exc:
            failures.append(f"{name}: {exc}")
        print(f"== {name} done in {time.perf_counter() - t0:.1f} s ==", file=sys.stderr, flush=True)
    for f in failures:
        print(f"benchmark failed: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
