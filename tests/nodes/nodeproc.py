"""Real ``migrate-node`` processes for tests: pytest fixtures over ``migrate.launcher``.

The fixtures here are imported by ``tests/nodes/conftest.py``.  Other test
folders (the migration tests start several nodes) reuse them the same way:

    sys.path.insert(0, str(Path(__file__).parents[1] / "nodes"))
    from nodeproc import cluster_tls, node_procs  # noqa: F401  (pytest fixtures)

``node_procs`` is a ``LocalCluster`` under the test's tmp_path, with
certificates from one cluster CA per session (``cluster_tls``).  Every node
listens on 127.0.0.1 port 0 and the launcher reads the port from its JSON
"listening" log line; logs go to ``NAME.log`` beside the node's data dir.
Nodes are SIGKILLed at teardown if a test left them running.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from migrate.launcher import ClusterTLS, LocalCluster, NodeProcess, migrate_node_command, run_cli
from migrate.launcher import node_env as clean_env

__all__ = ["ClusterTLS", "LocalCluster", "NodeProcess", "clean_env", "cluster_tls", "migrate_node_command",
           "node_procs", "run_cli"]


@pytest.fixture(scope="session")
def cluster_tls(tmp_path_factory: pytest.TempPathFactory) -> ClusterTLS:
    """One cluster CA for the whole test session, made by the CLI."""
    return ClusterTLS(tmp_path_factory.mktemp("cluster"))


@pytest.fixture
def node_procs(tmp_path: Path, cluster_tls: ClusterTLS) -> Iterator[LocalCluster]:
    """Start real ``migrate-node serve`` processes: ``node_procs.start("edge-1", "edge")``."""
    cluster = LocalCluster(tmp_path / "nodes", ca=cluster_tls)
    try:
        yield cluster
    finally:
        cluster.kill()
