"""NodeClient against a real ``migrate-node`` process: what a client sees when its node stops."""

from __future__ import annotations

import pytest
import trio

from nodes import ConnectionFailed, NodeShuttingDown
from nodes._messages import ListWorkloads

pytestmark = pytest.mark.trio


async def test_an_idle_client_learns_its_node_is_shutting_down_even_when_its_write_fails(node_procs, cluster_tls):
    """The node said Goodbye while nobody read; a later write breaks the pipe, and the Goodbye is still read.

    The first request after the stop is written (the kernel takes it) and
    discarded unread; the node's host answers it with a reset, so the
    second write fails.  Either way the client must say the node is
    shutting down (its workloads are waited for), not that the pipe broke.
    """
    node = node_procs.start("edge-1", "edge")
    async with await node.client(cluster_tls.app) as client:
        await client.request(ListWorkloads)  # connected and idle
        assert await trio.to_thread.run_sync(node.terminate) == 0
        try:
            (await client.send_request(ListWorkloads)).discard()
        except ConnectionFailed as exc:  # the reset may already be there
            assert isinstance(exc, NodeShuttingDown), exc
        await trio.sleep(0.2)  # the reset for that write arrives
        with pytest.raises(NodeShuttingDown):
            await client.request(ListWorkloads)
        with pytest.raises(NodeShuttingDown):  # and so does every later request
            await client.request(ListWorkloads)


async def test_a_field_of_the_wrong_type_is_a_type_error_before_anything_is_sent(node_procs, cluster_tls):
    import workloads

    node = node_procs.start("edge-1", "edge")
    async with await node.client(cluster_tls.app) as client:
        wid = (await client.deploy(workloads.load("counter"))).workload_id
        for workload, export in ((123, "incr"), (wid, b"incr"), (None, "incr")):
            with pytest.raises(TypeError, match="expected str"):
                await client.call(workload, export, 1)
        assert await client.call(wid, "incr", 2) == 2  # the connection is as it was
