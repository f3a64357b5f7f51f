"""Run the handover benchmark suite: ``python -m benchmarks.suite [--quick|--full] [--out DIR]``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.netem import PROFILES  # noqa: E402
from benchmarks.suite import PRESETS, STRATEGIES, check_results, run_suite, write  # noqa: E402
from benchmarks.suite._report import stem  # noqa: E402
from nodes import unwrap_group  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C, so every namespace and process is cleaned up.
    # Raising here could land inside trio's run loop; SIGINT reaches trio's own
    # handler, which delivers KeyboardInterrupt safely.
    os.kill(os.getpid(), signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    """Run, write the results, print the Markdown; return 1 if the results are malformed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="tiny sizes, loopback and 1 Gbit/s (the CI smoke run, under 2 minutes)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="1 MiB to 1 GiB over loopback, 1 Gbit/s and 100 Mbit/s (the default)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for the results (default benchmarks/results/suite, or suite-quick)")
    parser.add_argument("--links", help=f"comma-separated subset of {','.join(PROFILES)}")
    parser.add_argument("--strategies", help=f"comma-separated subset of {','.join(STRATEGIES)}")
    parser.add_argument("--memory", metavar="MIB,...",
                        help="only the dirtier's memory sweep, at these sizes in MiB (no rate sweep, "
                             "kvstore or grower): a quick look at one size, such as --memory 256,1024")
    parser.add_argument("--move-timeout", type=float, metavar="SECONDS",
                        help="give up on a move (and its strategy on that link) after this long (default 180)")
    args = parser.parse_args(argv)
    cfg = PRESETS[args.mode or "full"]
    if args.move_timeout:
        cfg = dataclasses.replace(cfg, move_timeout_s=args.move_timeout)
    if args.links:
        cfg = dataclasses.replace(cfg, links=tuple(PROFILES[name] for name in args.links.split(",")))
    if args.strategies:
        cfg = dataclasses.replace(cfg, strategies=tuple(args.strategies.split(",")))
    if args.memory:
        cfg = dataclasses.replace(cfg, memory_sweep_mib=tuple(int(m) for m in args.memory.split(",")),
                                  rate_sweep=(), kvstore=None, grower=None)
    out = args.out or RESULTS / stem(cfg.mode)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    # A shell starts background jobs with SIGINT ignored; then neither Ctrl-C
    # nor the SIGTERM above would reach trio.  Clean-up needs them to.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with tempfile.TemporaryDirectory(prefix="wm-suite-") as tmp, unwrap_group():
            data = run_suite(cfg, Path(tmp))
    except KeyboardInterrupt:
        print("interrupted; nodes, proxies and namespaces are cleaned up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    data = write(data, out)
    print((out / f"{stem(cfg.mode)}.md").read_text())
    problems = check_results(data)
    for p in problems:
        print(f"malformed suite output: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
