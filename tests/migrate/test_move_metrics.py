"""The migration figures on /metrics of real nodes move with calls and a move."""

from __future__ import annotations

import migrate
import workloads
from test_health import get, metrics_address, sample

METRICS = ["--metrics-listen", "127.0.0.1:0"]


async def test_calls_and_a_move_show_on_both_nodes_metrics(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge", args=METRICS)
    cloud = node_procs.start("cloud-1", "cloud", join=[edge], args=METRICS)
    at_edge, at_cloud = metrics_address(edge), metrics_address(cloud)
    _, edge_before = await get(at_edge, "/metrics")
    async with migrate.connect(str(edge.address), str(cloud.address), tls=cluster_tls.issue("app-1", "node"),
                               local=False) as cluster:
        h = await cluster.spawn(workloads.load("counter"), on="edge-1")
        for _ in range(7):
            await h.call("incr", 1)
        _, edge_calls = await get(at_edge, "/metrics")
        report = await h.migrate("cloud-1")
        await h.call("incr", 1)
        _, edge_after = await get(at_edge, "/metrics")
        _, cloud_after = await get(at_cloud, "/metrics")

    calls = dict(request="m_call", outcome="ok")
    assert sample(edge_calls, "migrate_node_request_seconds_count", **calls) == \
        sample(edge_before, "migrate_node_request_seconds_count", **calls) + 7
    assert sample(edge_calls, "migrate_node_workloads", state="ready") == 1
    assert sample(edge_after, "migrate_node_workloads", state="ready") == 0
    assert sample(cloud_after, "migrate_node_workloads", state="ready") == 1
    assert sample(cloud_after, "migrate_node_request_seconds_count", **calls) >= 1
    done = dict(strategy="precopy", outcome="done")
    assert sample(edge_before, "migrate_node_migrations_total", **done) == 0
    assert sample(edge_after, "migrate_node_migrations_total", **done) == 1
    assert sample(edge_after, "migrate_node_migration_total_seconds_count", **done) == 1
    assert sample(edge_after, "migrate_node_migration_blackout_seconds_count", strategy="precopy") == 1
    assert sample(edge_after, "migrate_node_migration_blackout_seconds_sum", strategy="precopy") == \
        report.frozen_s
    assert sample(edge_after, "migrate_node_migration_sent_bytes_total") == report.bytes_sent > 0
    assert sample(cloud_after, "migrate_node_migration_received_bytes_total") == report.bytes_sent
    assert sample(edge_after, "migrate_node_migrations_in_progress", direction="outgoing") == 0
    assert sample(cloud_after, "migrate_node_failovers_total") == 0
    assert sample(edge_after, "migrate_node_peers", state="up") == 1
