"""``migrate.connect``: the application's own local node and the limits it is given."""

import pytest

import migrate
import nodes
import workloads


async def test_local_memory_bytes_caps_the_local_nodes_workloads():
    async with migrate.connect(local_memory_bytes=64 * 2**10) as cluster:
        with pytest.raises(nodes.ResourceLimitExceeded, match="65536 allowed"):
            await cluster.spawn(workloads.load("counter"), on="local")  # its initial memory is 2 pages
    async with migrate.connect() as cluster:
        h = await cluster.spawn(workloads.load("counter"), on="local")
        assert await h.call("incr", 1) == 1
