"""Measure what a pre-copy's first round (``Held.start_tracking``) costs the node's other threads.

One workload (``dirtier``) holds a region of N MiB of typical program memory.
While ``start_tracking`` runs (arm the dirty tracker, copy the memory), two
threads of the same process measure:

* a caller, calling ``dt_dirty(1)`` back to back: its largest gap between
  two calls is how long the workload was held;
* a ticker, a Python loop sleeping 0.2 ms (as trio's event loop does
  between I/O): its largest gap is how long a thread that needs the GIL
  was kept waiting.

The reference, in the same run, is both threads' largest gaps over an
equally long stretch without a move.  Repeated (median reported), each
``start_tracking`` followed by ``stop_tracking``.  With ``--live`` it
measures ``start_tracking_live``, what a move runs: the pages stay in the
live memory (the round is encoded from there), so nothing is copied.
Run ``python -m benchmarks.bench_start_tracking [--mib 256 1024] [--repeats 5] [--live]``.

Measured on a 2-core x86-64 (load about 1), two runs of 3 each, interleaved
with the code before the tracker was armed outside the hold: the caller's
largest gap went from 10.9-15.6 ms to 2.5-6.1 ms at 256 MiB and from
25.5-40.3 ms to 2.7-10.5 ms at 1 GiB (reference 0.2-1.1 ms); the ticker's
stayed 4.4-10.6 ms (reference 0.6-6.0 ms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import workloads  # noqa: E402
from nodes import Host, Limits  # noqa: E402


class _Gaps:
    """A thread running ``step`` in a loop, keeping the largest gap between steps since ``reset``."""

    def __init__(self, step) -> None:
        self._step, self._stop, self.largest = step, threading.Event(), 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            self._step()
            now = time.perf_counter()
            self.largest, last = max(self.largest, now - last), now

    def reset(self) -> None:
        self.largest = 0.0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run(mib: int, repeats: int, live: bool = False) -> dict:
    limits = Limits(memory_bytes=(mib + 64) << 20, call_timeout_s=600.0)
    with tempfile.TemporaryDirectory(prefix="bench-start-tracking-") as root, Host(Path(root), limits=limits) as host:
        host.deploy(host.add_module(workloads.load("dirtier")), workload_id="d")
        host.call("d", "dt_init", [mib])
        held = host.hold("d")
        caller = _Gaps(lambda: host.call("d", "dt_dirty", [1, 7]))
        ticker = _Gaps(lambda: time.sleep(0.0002))
        samples: dict[str, list[float]] = {k: [] for k in ("seconds", "held", "ticker", "ref_held", "ref_ticker")}
        try:
            for _ in range(repeats):
                time.sleep(0.1)
                caller.reset(), ticker.reset()
                start = time.perf_counter()
                if live:
                    held.start_tracking_live()[1]()  # done() at once: nothing reads the views here
                else:
                    held.start_tracking()
                took = time.perf_counter() - start
                samples["seconds"].append(took)
                samples["held"].append(caller.largest)
                samples["ticker"].append(ticker.largest)
                held.stop_tracking()
                time.sleep(0.1)
                caller.reset(), ticker.reset()
                time.sleep(took)
                samples["ref_held"].append(caller.largest)
                samples["ref_ticker"].append(ticker.largest)
        finally:
            caller.stop(), ticker.stop()
    return {"mib": mib, "repeats": repeats, "live": live,
            **{f"{k}_ms": round(statistics.median(v) * 1000, 2) for k, v in samples.items()},
            "raw_ms": {k: [round(x * 1000, 1) for x in v] for k, v in samples.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--live", action="store_true", help="start_tracking_live, as a move does")
    args = parser.parse_args(argv)
    for mib in args.mib:
        print(json.dumps(run(mib, args.repeats, args.live)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
