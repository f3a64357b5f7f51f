"""What the benchmark scripts share: their command line, the memcpy reference, table heads and writing results.

Each script takes ``--quick`` and ``--out DIR`` (benchmarks/results by
default) and writes ``NAME.json`` and ``NAME.md`` there (``NAME-quick.*``
with ``--quick``), printing the Markdown table too.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def argument_parser(doc: str, quick_help: str, *, sizes: bool = False) -> argparse.ArgumentParser:
    """A parser described by the first line of ``doc``, with ``--quick`` and ``--out``.

    With ``sizes``, also ``--mib N`` (repeatable): the memory sizes to measure.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the results files")
    if sizes:
        parser.add_argument("--mib", type=int, action="append", help="memory sizes in MiB")
    return parser


def write_results(out: Path, name: str, quick: bool, report: object, table: str) -> None:
    """Write ``report`` as NAME.json and ``table`` as NAME.md into ``out`` (NAME-quick.* if ``quick``).

    The table is printed too.
    """
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-quick" if quick else name
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(table)
    print(table)


def memcpy_samples(source: int, size: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` ctypes.memmove copies of ``size`` bytes at address ``source``.

    The target buffer is allocated and faulted in (one untimed copy) first,
    so the samples are the copy alone: the floor for moving that memory.
    """
    target = (ctypes.c_char * size).from_buffer(bytearray(size))
    ctypes.memmove(target, source, size)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        ctypes.memmove(target, source, size)
        samples.append(time.perf_counter() - start)
    return samples


def table_head(title: str, intro: list[str], columns: list[str]) -> list[str]:
    """The lines of a Markdown report up to its table's first row: heading, ``intro`` lines, column heads."""
    return [f"# {title}", "", *intro, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
