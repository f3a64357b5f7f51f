"""A node's Prometheus metrics: one registry per node, read at scrape time.

Nothing here runs on a request's path but ``RequestTimes.record`` (a
bisect and two additions per request, through ``timed``): the rest is
read when ``/metrics`` is scraped, by ``NodeCollector``, from what the
node keeps anyway (its workloads, ``Node.counters``, its peers) and from
what each plugin adds (``Plugin.metrics``: the migration plugin's moves).
Each node has its own ``CollectorRegistry``, not prometheus-client's
global one: tests run several nodes in one process.

Label values are node and peer names, request kinds, error codes and
tenants (applications); no workload ids, arguments or results.
"""

from __future__ import annotations

import bisect
import collections
import functools
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ._error_codes import code_for
from ._host_errors import HostError
from ._messages import ErrorReply, Reply, Request
from ._plugin import Plugin, handler_table

if TYPE_CHECKING:
    from ._node import Node
    from ._plugin import Handler, Session

PREFIX = "migrate_node_"
#: Upper bounds (seconds) of the request-latency buckets: a node call on
#: loopback takes about 100 us, a deploy that compiles a module up to seconds.
REQUEST_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0)


def histogram(name: str, doc: str, labels: Iterable[str], bounds: tuple[float, ...],
              series: Mapping[tuple[str, ...], list[Any]]) -> HistogramMetricFamily:
    """A histogram family from per-label-set bucket counts (one per bound, then +Inf) and sums."""
    family = HistogramMetricFamily(name, doc, labels=list(labels))
    for label_values, (counts, total) in sorted(series.items()):
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, bounds), "+Inf"), counts):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric(list(label_values), buckets, total)
    return family


class Buckets:
    """Observations counted into fixed buckets, per label values: the data of a histogram, without locks.

    Only the node's event loop records into it, and a scrape reads it on
    the same loop.
    """

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.series: dict[tuple[str, ...], list[Any]] = {}  # labels -> [counts (one per bound, then +Inf), sum]

    def record(self, labels: tuple[str, ...], value: float) -> None:
        entry = self.series.get(labels)
        if entry is None:
            entry = self.series[labels] = [[0] * (len(self.bounds) + 1), 0.0]
        entry[0][bisect.bisect_left(self.bounds, value)] += 1
        entry[1] += value

    def family(self, name: str, doc: str, labels: Iterable[str]) -> HistogramMetricFamily:
        return histogram(name, doc, labels, self.bounds, self.series)


class RequestTimes(Buckets):
    """Requests answered and how long their handlers took, by request kind and outcome."""

    def __init__(self) -> None:
        super().__init__(REQUEST_BUCKETS_S)


def outcome(reply: Any) -> str:
    """A reply's outcome: "ok", "moved" (a redirect to the workload's new node), or the error code."""
    if isinstance(reply, ErrorReply):
        return str(reply.code)
    return "moved" if getattr(reply, "moved_to", None) else "ok"


def timed_table(own: Mapping[type[Request], Handler],
                plugins: Iterable[Plugin]) -> tuple[dict[type[Request], Handler], RequestTimes]:
    """The handler table of ``own`` and ``plugins`` (``handler_table``), each handler timed into a new
    RequestTimes, and that RequestTimes."""
    times = RequestTimes()
    return {kind: _timed(handler, kind.kind, times) for kind, handler in handler_table(own, plugins).items()}, times


def _timed(handler: Handler, kind: str, times: RequestTimes) -> Handler:
    clock = time.perf_counter

    @functools.wraps(handler)
    async def run(node: Node, session: Session, request: Request) -> Reply:
        started = clock()
        try:
            reply = await handler(node, session, request)
        except HostError as exc:
            times.record((kind, str(code_for(exc))), clock() - started)
            raise
        except Exception:
            times.record((kind, "internal"), clock() - started)
            raise
        times.record((kind, outcome(reply)), clock() - started)
        return reply
    return run


class NodeCollector:
    """Reads one node's figures when the registry is scraped (a prometheus-client custom collector)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.memory_budget = node.config.limits().workloads_memory_bytes

    def describe(self) -> list[Metric]:
        return []  # nothing is read at registration; the families appear at the first scrape

    def collect(self) -> Iterator[Metric]:
        node = self.node
        info = GaugeMetricFamily(PREFIX + "info", "This node: its name and role", labels=["name", "role"])
        info.add_metric([node.config.name, node.config.role], 1)
        yield info
        yield from self._workloads()
        yield node.request_times.family(PREFIX + "request_seconds",
                                        "Requests answered and their handlers' time, by request kind "
                                        "(call: a raw call; m_call: a call through a handle) and outcome "
                                        "(ok, moved, or the error code)", ["request", "outcome"])
        events = CounterMetricFamily(PREFIX + "events", "The node's event counters (as in status)",
                                     labels=["event"])
        for name, value in sorted(node.counters.items()):
            events.add_metric([name], value)
        yield events
        peers = GaugeMetricFamily(PREFIX + "peers", "Known peers by state", labels=["state"])
        states = collections.Counter("up" if p.connected else "down" for p in node.peers.summaries())
        for state in ("up", "down"):
            peers.add_metric([state], states[state])
        yield peers
        for plugin in node.plugins:
            if plugin.metrics is not None:
                yield from plugin.metrics(node)

    def _workloads(self) -> Iterator[Metric]:
        workloads = self.node.host.workloads()
        count = GaugeMetricFamily(PREFIX + "workloads", "Workloads by state and tenant", labels=["state", "tenant"])
        for (state, tenant), n in sorted(collections.Counter((w.state, w.app) for w in workloads).items()):
            count.add_metric([state, tenant], n)
        yield count
        used = GaugeMetricFamily(PREFIX + "memory_bytes", "Workloads' linear memory by tenant", labels=["tenant"])
        caps = GaugeMetricFamily(PREFIX + "memory_limit_bytes", "Sum of the workloads' memory caps by tenant",
                                 labels=["tenant"])
        by_tenant: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        for w in workloads:
            by_tenant[w.app][0] += w.memory_bytes
            by_tenant[w.app][1] += w.memory_limit_bytes
        for tenant, (memory, cap) in sorted(by_tenant.items()):
            used.add_metric([tenant], memory)
            caps.add_metric([tenant], cap)
        yield used
        yield caps
        if self.memory_budget is not None:
            yield GaugeMetricFamily(PREFIX + "memory_budget_bytes",
                                    "The most all workloads' memory caps may add up to (workloads_memory_bytes)",
                                    value=self.memory_budget)


def node_registry(node: Node) -> CollectorRegistry:
    """A registry of its own for ``node``, read by a NodeCollector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    return registry
