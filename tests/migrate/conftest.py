"""Fixtures for the migration tests: real migrate-node processes on loopback."""

import contextlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

import migrate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nodes"))

from nodeproc import cluster_tls, node_procs  # noqa: E402,F401  (pytest fixtures)


@pytest.fixture
def edge_and_cloud(node_procs, cluster_tls):
    """Start edge-1 and cloud-1 and connect application app-1 to both.

        async with edge_and_cloud(edge_env={...}, args=[...]) as (edge, cloud, c):

    ``edge_env`` and ``cloud_env`` go to that node's environment, ``args``
    to both nodes' command lines.
    """

    @contextlib.asynccontextmanager
    async def start(*, edge_env: Mapping[str, str] | None = None, cloud_env: Mapping[str, str] | None = None,
                    args: Sequence[str] = ()):
        edge = node_procs.start("edge-1", "edge", env=edge_env, args=args)
        cloud = node_procs.start("cloud-1", "cloud", env=cloud_env, args=args)
        async with migrate.connect(str(edge.address), str(cloud.address), tls=cluster_tls.issue("app-1", "node")) as c:
            yield edge, cloud, c

    return start
