"""The handover benchmark suite: stop-copy, pre-copy and dual side by side over emulated links.

    python -m benchmarks.suite [--quick|--full] [--out DIR]

For each link (loopback, and client/edge/cloud namespaces capped at 1 Gbit/s
and 100 Mbit/s with 5 ms and 30 ms round trips; see ``benchmarks.netem``),
each workload (the ``dirtier`` swept over memory size and dirty rate, the C
``kvstore``, the growing ``grower`` heap) moves from edge-1 to cloud-1 with
each strategy, under a steady stream of client calls.  Reported per move:
the client-observed blackout and its ratio to the link's physical floor,
the node's blackout, call latency during the move against steady state,
total time, rounds, bytes on the wire, and snapshot size against raw
memory.  Writes ``suite.json``, ``suite.md`` and two PNG plots
(``suite-quick.*`` in quick mode).
"""

from ._config import FULL, PRESETS, QUICK, STRATEGIES, DirtierSpec, GrowerSpec, KvstoreSpec, SuiteConfig
from ._metrics import (CallSample, ClientBlackout, Floor, LatencyStats, client_blackout, latency_stats,
                       percentile, physical_floor)
from ._report import check_results, markdown, write
from ._run import MoveResult, run_suite

__all__ = [
    "FULL", "PRESETS", "QUICK", "STRATEGIES", "CallSample", "ClientBlackout", "DirtierSpec", "Floor", "GrowerSpec",
    "KvstoreSpec", "LatencyStats", "MoveResult", "SuiteConfig", "check_results", "client_blackout",
    "latency_stats", "markdown", "percentile", "physical_floor", "run_suite", "write",
]
