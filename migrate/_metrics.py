"""The migration plugin's Prometheus metrics: moves by strategy and outcome, their times, bytes, failovers.

``MoveMetrics`` is kept per node (``MigrationService.metrics``) and
counted into where moves end (``on_migrate``), where copies are applied
(``MigrationService.received``) and where a standby is promoted
(``on_promote``); ``collect`` reads it, and the moves under way, when the
node's ``/metrics`` is scraped (``nodes._metrics``).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from nodes import METRICS_PREFIX as PREFIX
from nodes import Buckets

if TYPE_CHECKING:
    from ._state import MigrationService

#: Upper bounds (seconds) of the blackout (frozen, client) buckets: 1 ms to 10 s.
BLACKOUT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Upper bounds (seconds) of the total-time buckets: 10 ms to 5 minutes.
TOTAL_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class MoveMetrics:
    """What this node's moves did, as the source (moves, times, bytes sent) and the target (bytes received)."""

    def __init__(self) -> None:
        self.moves: collections.Counter[tuple[str, str]] = collections.Counter()  # (strategy, outcome)
        self.frozen = Buckets(BLACKOUT_BUCKETS_S)
        self.client_blackout = Buckets(BLACKOUT_BUCKETS_S)
        self.total = Buckets(TOTAL_BUCKETS_S)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.failovers = 0  # standbys promoted here

    def ended(self, strategy: str, outcome: str, bytes_sent: int, total_s: float, frozen_s: float | None = None,
              client_blackout_s: float | None = None) -> None:
        """A move from this node ended: "done" (with its report's times) or "aborted"."""
        self.moves[(strategy, outcome)] += 1
        self.bytes_sent += bytes_sent
        self.total.record((strategy, outcome), total_s)
        if frozen_s is not None:
            self.frozen.record((strategy,), frozen_s)
        if client_blackout_s is not None:
            self.client_blackout.record((strategy,), client_blackout_s)


def collect(svc: MigrationService) -> Iterator[Metric]:
    """The migration families of a node's MigrationService ``svc`` (its ``Plugin.metrics``)."""
    m = svc.metrics
    moves = CounterMetricFamily(PREFIX + "migrations", "Moves from this node that ended, by strategy and outcome",
                                labels=["strategy", "outcome"])
    for (strategy, outcome), n in sorted(m.moves.items()):
        moves.add_metric([strategy, outcome], n)
    yield moves
    under_way = GaugeMetricFamily(PREFIX + "migrations_in_progress", "Moves under way, by direction",
                                  labels=["direction"])
    under_way.add_metric(["outgoing"], len(svc.active))
    under_way.add_metric(["incoming"], sum(not i.standby for i in svc.incoming.values()))
    yield under_way
    yield m.frozen.family(PREFIX + "migration_blackout_seconds",
                          "Time a committed move held the workload frozen, by strategy", ["strategy"])
    yield m.client_blackout.family(PREFIX + "migration_client_blackout_seconds",
                                   "A waiting client's blackout of a committed move (when one was measured)",
                                   ["strategy"])
    yield m.total.family(PREFIX + "migration_total_seconds", "A move's total time, by strategy and outcome",
                         ["strategy", "outcome"])
    sent = m.bytes_sent + sum(a.bytes_sent + a.round_streamed for a in svc.active.values())
    yield CounterMetricFamily(PREFIX + "migration_sent_bytes", "Bytes of workload state sent by moves",
                              value=sent)
    yield CounterMetricFamily(PREFIX + "migration_received_bytes",
                              "Bytes of workload state received by moves and standby copies", value=m.bytes_received)
    yield CounterMetricFamily(PREFIX + "failovers", "Standbys promoted to owner on this node", value=m.failovers)
