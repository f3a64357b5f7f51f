"""Bounded connections against a real ``migrate-node``: timeouts, slow peers, the connection limit, the byte budget.

Each test starts a node with short timeouts and misbehaves on raw TLS
connections, while a well-behaved client checks that the node keeps
serving its workload.
"""

from __future__ import annotations

import msgpack
import pytest
import trio

import workloads
from benchmarks.bench_connections import giant_frames, rss_bytes
from nodes import ConnectionFailed, Connection, WorkloadTimeout
from nodes._messages import Call, CallResult, Hello, ReadMemory, Status
from nodes._protocol import HEADER_BYTES, frame
from test_integration import MiB, raw_tls, read_until_closed, split_frames

COUNTER = workloads.load("counter")
SHORT = ["--idle-timeout-s", "1.5", "--hello-timeout-s", "1.5"]


async def said_hello(node, tls) -> tuple[trio.SSLStream, Connection]:
    """A raw connection that has exchanged Hellos with ``node``."""
    stream = await raw_tls(node.address, tls)
    conn = Connection()
    await stream.send_all(conn.send(conn.hello(name="app", role="app")))
    while not isinstance(event := conn.next_event(), Hello):
        conn.receive_data(await stream.receive_some(1 << 16))
    assert event.name == node.name
    return stream, conn


def goodbye_reason(data: bytes) -> str:
    """The reason of the Goodbye the node closed with (after its Hello, if any)."""
    frames = [m for m in split_frames(data) if not isinstance(m, Hello)]
    assert len(frames) == 1 and frames[0].kind == "goodbye", frames
    return frames[0].reason


async def test_a_connection_without_a_hello_is_closed_after_the_hello_timeout(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge", args=SHORT)
    stream = await raw_tls(node.address, cluster_tls.app)
    assert await read_until_closed(stream) == b""
    async with await node.client(cluster_tls.app) as good:
        assert (await good.status()).counters["connections_rejected"] == 1
    assert "no Hello within 1.5 s" in node.log_text()


async def test_an_idle_connection_is_closed_within_the_idle_timeout(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge", args=SHORT)
    stream, _ = await said_hello(node, cluster_tls.app)
    assert "sent nothing for 1.5 s" in goodbye_reason(await read_until_closed(stream))
    # A NodeClient left idle is closed the same way: its next request says so and is not sent.
    async with await node.client(cluster_tls.app) as idle:
        await idle.deploy(COUNTER, workload_id="c")
        assert await idle.call("c", "incr", 1) == 1
        await trio.sleep(3)
        try:
            await idle.call("c", "incr", 1)
            raise AssertionError("an idle client's connection stayed open")
        except ConnectionFailed as exc:
            assert "sent nothing for 1.5 s" in str(exc)
    async with await node.client(cluster_tls.app) as again:
        assert await again.call("c", "get") == 1  # the refused call never ran
        assert (await again.status()).counters["connections_timed_out"] == 2


async def test_a_request_that_runs_longer_than_the_idle_timeout_is_answered(node_procs, cluster_tls):
    # The idle time counts only while the peer is owed nothing: a call that
    # runs until its 3 s timeout keeps its connection open.
    node = node_procs.start("edge-1", "edge", args=[*SHORT, "--call-timeout-s", "3"])
    async with await node.client(cluster_tls.app) as client:
        await client.deploy(workloads.load("trap"), workload_id="t")
        with pytest.raises(WorkloadTimeout):
            await client.call("t", "spin", -1)
        assert await client.call("t", "spin", 10) == 10  # the same connection
        assert "connections_timed_out" not in (await client.status()).counters


async def test_half_a_frame_then_silence_is_closed(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge", args=SHORT)
    stream, conn = await said_hello(node, cluster_tls.app)
    whole = conn.send(Status(id=1))
    await stream.send_all(whole[:len(whole) // 2])
    reason = goodbye_reason(await read_until_closed(stream))
    assert "of a frame in 1.5 s" in reason and f"({len(whole) // 2} bytes buffered)" in reason


async def test_a_slow_writer_is_served_if_it_keeps_up_and_closed_if_it_does_not(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge", args=["--idle-timeout-s", "4"])
    async with await node.client(cluster_tls.app) as good:
        await good.deploy(COUNTER, workload_id="c")
        # A call dribbled one byte at a time: its frame completes within the timeout.
        stream, conn = await said_hello(node, cluster_tls.app)
        for byte in conn.send(Call(id=1, workload="c", export="incr", args=(5,))):
            await stream.send_all(bytes([byte]))
            await trio.sleep(0.01)
        event = conn.next_event()
        while not isinstance(event, CallResult):
            conn.receive_data(await stream.receive_some(1 << 16))
            event = conn.next_event()
        assert event.values == (5,)
        await trio.aclose_forcefully(stream)
        # A 1 MiB frame dribbled at 10 bytes per 10 ms delivers less than 256 KiB per timeout: closed.
        slow, _ = await said_hello(node, cluster_tls.app)
        await slow.send_all((MiB - HEADER_BYTES).to_bytes(4, "big") + bytes(4))
        served = 0
        with trio.move_on_after(20):
            while True:
                try:
                    await slow.send_all(bytes(10))
                except trio.BrokenResourceError:
                    break
                served += await good.call("c", "incr", 1) is not None
                await trio.sleep(0.01)
        assert served > 0
        status = await good.status()
        assert status.counters["connections_timed_out"] == 1
        assert status.workloads[0].calls == served + 1
        await trio.aclose_forcefully(slow)


async def test_a_slow_reader_is_closed_and_holds_up_nobody(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge", args=["--idle-timeout-s", "2", "--max-in-flight", "4"])
    async with await node.client(cluster_tls.app) as good:
        await good.deploy(workloads.load("grower"), workload_id="g")
        await good.call("g", "grow_mb", 16)
        memory = (await good.status()).workloads[0].memory_bytes
        before = rss_bytes(node.pid)
        # One reads nothing; one reads a byte at a time.  Each asks for the whole memory 8 times:
        # more than the kernel's socket buffers hold, so the node's sends stall.
        readers = [await said_hello(node, cluster_tls.app) for _ in range(2)]
        for stream, conn in readers:
            for i in range(8):
                with trio.move_on_after(1):
                    await stream.send_all(conn.send(ReadMemory(id=i, workload="g", offset=0, length=memory)))
        closed = []

        async def read_a_byte_at_a_time(stream):
            with trio.move_on_after(60):
                try:
                    while await stream.receive_some(1):
                        await trio.sleep(0.01)
                except trio.BrokenResourceError:
                    pass
            closed.append(stream)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_a_byte_at_a_time, readers[1][0])
            calls = 0
            with trio.move_on_after(60):
                while (await good.status()).counters.get("connections_timed_out", 0) < 2:
                    assert await good.call("g", "grower_mb") >= 16  # served meanwhile
                    calls += 1
                    await trio.sleep(0.05)
            grown = rss_bytes(node.pid) - before
            nursery.cancel_scope.cancel()
        status = await good.status()
        assert status.counters["connections_timed_out"] == 2, status.counters
        assert calls > 0
        # 4 replies in flight per connection at most, each 16 MiB and its encoding.
        assert grown < 2 * 4 * 2 * memory + 64 * MiB, f"grew by {grown / MiB:.0f} MiB"
        assert "took less than" in node.log_text()
        for stream, _ in readers:
            await trio.aclose_forcefully(stream)


async def test_connections_beyond_the_limit_are_refused_and_counted(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge", args=["--max-connections", "3"])
    async with await node.client(cluster_tls.app) as good:
        await good.deploy(COUNTER, workload_id="c")
        held = [await said_hello(node, cluster_tls.app) for _ in range(2)]  # 3 open with good
        extra = await trio.open_tcp_stream(node.address.host, node.address.port)
        assert await read_until_closed(extra) == b""  # closed before TLS
        assert (await good.status()).counters["connections_refused"] == 1
        assert await good.call("c", "incr", 1) == 1
        await trio.aclose_forcefully(held.pop()[0])
        await node.wait_for_log("connection closed")
        again, _ = await said_hello(node, cluster_tls.app)  # room again
        await trio.aclose_forcefully(again)
        for stream, _ in held:
            await trio.aclose_forcefully(stream)
    assert "connection refused: 3 connections already open (max_connections)" in node.log_text()


async def test_a_truncated_frame_then_close_costs_only_that_connection(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge")
    async with await node.client(cluster_tls.app) as good:
        await good.deploy(COUNTER, workload_id="c")
        stream, conn = await said_hello(node, cluster_tls.app)
        await stream.send_all(frame(msgpack.packb(["call", {"id": 1, "workload": "c", "export": "incr",
                                                             "args": [1]}]))[:-3])
        await stream.aclose()
        await node.wait_for_log("connection closed")
        status = await good.status()
        assert status.counters["protocol_errors"] == 1
        assert "stream ended inside a frame" in node.log_text()
        assert await good.call("c", "incr", 1) == 1


async def test_many_connections_with_giant_frames_keep_the_node_under_its_budget(node_procs, cluster_tls):
    budget = 64 * MiB
    node = node_procs.start("edge-1", "edge", args=["--inbound-buffer-bytes", str(budget),
                                                    "--max-frame-bytes", str(60 * MiB),
                                                    "--max-connections", "100"])
    async with await node.client(cluster_tls.app) as good:
        await good.deploy(COUNTER, workload_id="c")
        for _ in range(100):
            await good.call("c", "incr", 1)
        baseline = peak = rss_bytes(node.pid)
        calls = 0
        # 32 x 16 MiB would be 512 MiB buffered without the budget.
        async with giant_frames(node.address, cluster_tls.app, connections=32, frame_bytes=60 * MiB,
                                send_bytes=16 * MiB) as flood:
            with trio.move_on_after(8):
                while True:
                    assert await good.call("c", "incr", 1) == 101 + calls
                    calls += 1
                    peak = max(peak, rss_bytes(node.pid))
                    await trio.sleep(0.02)
            assert flood.open == 32
        status = await good.status()
    print(f"baseline {baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB, {calls} calls served meanwhile")
    assert calls > 0
    assert status.counters["inbound_peak_bytes"] <= budget
    assert peak - baseline < budget + 32 * MiB, f"grew by {(peak - baseline) / MiB:.0f} MiB"
