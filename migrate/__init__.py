"""Migratable handles and live migration between client, edge and cloud nodes.

    import migrate

    async with migrate.connect("127.0.0.1:7401", "127.0.0.1:7402", tls="tls/app") as cluster:
        h = await cluster.spawn(module, on="edge-1")
        await h.call("incr", 1)
        report = await h.migrate("cloud-1", strategy="precopy")
        h.node            # "cloud-1"
        await cluster.nodes()          # NodeRecord per node: metadata, RTT, throughput
        h2 = await cluster.spawn(module, on="auto", needs=migrate.Needs(capabilities=["gpu"]))
        advice = await cluster.advise(h, work=migrate.Work(units=500, calls=100))

Public names are re-exported here; ``tests/migrate/test_migrate_exports.py`` guards the list.
Public submodules: ``migrate.cli`` (the ``migrate-node`` command: a node
with the migration plugin), ``migrate.launcher`` (local ``migrate-node``
processes for tests, benchmarks and the demo) and ``migrate.wire`` (the
migration protocol's messages and codes, for tools that speak it).
"""

from ._advice import Advice, Autoplace, Estimate, Work
from ._cluster import AUTO, LOCAL, Cluster, connect
from ._errors import MigrateError, MigrationFailed, NoSuitableNode, UnknownNode, WorkloadUnavailable
from ._handle import Handle
from ._ledger import CallLedger, Outcome
from ._messages import MigrationReport
from ._pool import Pool
from ._placement import DefaultPolicy, Needs, NodeRecord, Placement, PlacementPolicy
from ._precopy import Action, Decision, PrecopyConfig, PrecopyPlanner
from ._protection import Event, FailoverFailed, Protection, ProtectionStatus

__all__ = [
    "AUTO", "Advice", "Autoplace", "DefaultPolicy", "Estimate", "Needs", "NoSuitableNode", "NodeRecord", "Placement",
    "PlacementPolicy", "Work", "LOCAL", "Action", "CallLedger", "Cluster", "Decision", "Event", "FailoverFailed", "Handle", "MigrateError",
    "MigrationFailed", "Pool", "Protection", "ProtectionStatus",
    "MigrationReport", "Outcome", "PrecopyConfig", "PrecopyPlanner", "UnknownNode",
    "WorkloadUnavailable", "connect",
]
