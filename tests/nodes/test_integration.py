"""Real ``migrate-node serve`` processes on loopback, with TLS certificates made by the CLI."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import msgpack
import pytest
import trio

import workloads
from nodes import (
    BadArguments,
    ConnectionFailed,
    DeadlineExceeded,
    ErrorCode,
    UnknownExport,
    UnknownWorkload,
    WorkloadTimeout,
    WorkloadTrap,
    client_context,
)
from nodes._messages import Call, CallResult, Goodbye, Hello, Message, Ping, Pong, ReadMemory
from nodes._protocol import HANDSHAKE_MAX_FRAME_BYTES, HEADER_BYTES, Connection, decode_message, encode_message, frame
from nodeproc import ClusterTLS

COUNTER = workloads.load("counter")
TRAP = workloads.load("trap")
MiB = 1 << 20


async def wait_for(predicate, *, what: str, timeout_s: float = 30.0, poll_s: float = 0.05):
    """Poll an async predicate until it returns something truthy; return it."""
    with trio.move_on_after(timeout_s):
        while not (result := await predicate()):
            await trio.sleep(poll_s)
        return result
    pytest.fail(f"timed out waiting for {what}")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# --- raw connections, for misbehaving on purpose -------------------------------


async def raw_tls(address, tls_dir: Path) -> trio.SSLStream:
    tcp = await trio.open_tcp_stream(address.host, address.port)
    stream = trio.SSLStream(tcp, client_context(tls_dir), server_hostname=address.host)
    await stream.do_handshake()
    return stream


async def read_until_closed(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything the node sends until it closes the connection."""
    data = bytearray()
    with trio.fail_after(30):
        while True:
            try:
                chunk = await stream.receive_some(1 << 16)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
    return bytes(data)


def split_frames(data: bytes) -> list[Message]:
    out = []
    while data:
        (length, _crc), payload = struct.unpack(">II", data[:HEADER_BYTES]), data[HEADER_BYTES:]
        out.append(decode_message(payload[:length]))
        data = payload[length:]
    return out


def hello_frame(versions=(1,)) -> bytes:
    return frame(encode_message(Hello(versions=versions, name="app", role="app", max_frame_bytes=1 << 20)))


MISBEHAVIOURS = {
    "bad checksum": lambda: hello_frame()[:HEADER_BYTES - 1] + b"\x00" + hello_frame()[HEADER_BYTES:],
    "garbage payload": lambda: frame(b"\xc1\xc1\xc1\xc1"),
    "http request": lambda: b"GET / HTTP/1.1\r\nHost: node\r\n\r\n",
    "oversized before hello": lambda: struct.pack(">II", HANDSHAKE_MAX_FRAME_BYTES + 1, 0),
    "wrong version": lambda: hello_frame(versions=(99,)),
    "request before hello": lambda: frame(msgpack.packb(["status", {"id": 1}])),
    "unknown message": lambda: hello_frame() + frame(msgpack.packb(["teleport", {"id": 1}])),
    "oversized after hello": lambda: hello_frame() + struct.pack(">II", (64 << 20) + 1, 0),
    "reply to nothing": lambda: hello_frame() + frame(msgpack.packb(["done", {"id": 5}])),
    "wrong field types": lambda: hello_frame() + frame(msgpack.packb(
        ["call", {"id": 1, "workload": 5, "export": b"incr", "args": "one"}])),
    "garbage after hello": lambda: hello_frame() + b"\x00\x00\x00\x10" + bytes(range(200, 256)),
}


# --- the tests ------------------------------------------------------------------


async def test_deploy_call_status(node_procs, cluster_tls: ClusterTLS):
    node = node_procs.start("edge-1", "edge")
    async with await node.client(cluster_tls.app) as client:
        assert client.node == "edge-1" and client.hello.role == "edge"
        deployed = await client.deploy(COUNTER, workload_id="counter-1", app="app/demo")
        assert deployed.workload_id == "counter-1" and deployed.app == "app/demo"
        assert [await client.call("counter-1", "incr", 2) for _ in range(3)] == [2, 4, 6]
        assert await client.call("counter-1", "get") == 6

        status = await client.status()
        assert status.node.name == "edge-1" and status.node.role == "edge"
        assert status.node.cores >= 1 and status.node.memory_total_bytes > 0
        (w,) = status.workloads
        assert (w.workload_id, w.calls, w.module_sha256) == ("counter-1", 4, hashlib.sha256(COUNTER).hexdigest())
        assert w.memory_bytes > 0
        assert status.host["workloads"] == 1
        assert [w.workload_id for w in await client.workloads()] == ["counter-1"]

        # typed errors come back as the host's classes, with their attributes
        with pytest.raises(UnknownWorkload):
            await client.call("nope", "get")
        with pytest.raises(UnknownExport):
            await client.call("counter-1", "nope")
        with pytest.raises(BadArguments):
            await client.call("counter-1", "incr")

        await client.remove("counter-1")
        assert await client.workloads() == ()

    lines = node.log_lines()
    deployed_lines = [line for line in lines if line.get("msg") == "deployed"]
    assert deployed_lines and deployed_lines[0]["node"] == "edge-1"
    assert deployed_lines[0]["workload"] == "counter-1" and deployed_lines[0]["peer"] == "app"


async def test_module_crosses_the_network_and_compiles_once(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge")
    sha256 = hashlib.sha256(COUNTER).hexdigest()
    for i in range(2):  # two applications deploy the same module
        async with await node.client(cluster_tls.app) as client:
            await client.deploy(COUNTER, workload_id=f"c{i}")
    async with await node.client(cluster_tls.app) as client:
        await client.deploy(sha256, workload_id="by-hash")
        status = await client.status()
    assert status.counters["modules_received"] == 1
    assert status.counters["module_bytes_received"] == len(COUNTER)
    assert status.host["compiles"] == 1
    assert len(status.workloads) == 3

    assert node.terminate() == 0
    node.restart()
    async with await node.client(cluster_tls.app) as client:
        await client.deploy(COUNTER, workload_id="after-restart")
        status = await client.status()
    assert status.counters.get("modules_received", 0) == 0  # the node still had it
    assert status.host["compiles"] == 0                     # compiled code came from disk
    assert status.host["deserializations"] == 1


async def test_misbehaving_connections_are_closed_while_others_are_served(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge")
    async with await node.client(cluster_tls.app) as good:
        await good.deploy(COUNTER, workload_id="c")
        for count, (what, make) in enumerate(MISBEHAVIOURS.items(), start=1):
            stream = await raw_tls(node.address, cluster_tls.app)
            await stream.send_all(make())
            received = split_frames(await read_until_closed(stream))
            await stream.aclose()
            assert received, what
            assert received[-1] == Goodbye(code=ErrorCode.PROTOCOL_ERROR, reason=received[-1].reason), what
            assert all(isinstance(m, (Hello, Goodbye)) for m in received), what
            # the node keeps serving the connection that behaves
            assert await good.call("c", "incr", 1) == count, what
        status = await good.status()
    assert status.counters["protocol_errors"] + status.counters.get("connections_rejected", 0) == len(MISBEHAVIOURS)
    assert status.workloads[0].calls == len(MISBEHAVIOURS)


async def test_requests_pipelined_before_a_goodbye_are_answered_then_the_node_closes(node_procs, cluster_tls):
    """The node read the Goodbye before it had run the requests ahead of it, and dropped their replies.

    They ran (the counter moved) but the client never learnt their results.
    """
    node = node_procs.start("edge-1", "edge")
    async with await node.client(cluster_tls.app) as good:
        await good.deploy(COUNTER, workload_id="c")
        stream = await raw_tls(node.address, cluster_tls.app)
        conn = Connection()
        await stream.send_all(conn.send(conn.hello(name="app", role="app")))
        conn.receive_data(await stream.receive_some(1 << 16))
        assert isinstance(conn.next_event(), Hello)
        batch = [Call(id=i, workload="c", export="incr", args=(1,)) for i in (1, 2, 3)] + [Ping(id=4)]
        await stream.send_all(b"".join(conn.send(m) for m in batch) + conn.send(Goodbye()))
        received = split_frames(await read_until_closed(stream))  # the node closes: fails after 30 s if not
        await trio.aclose_forcefully(stream)
        assert received[-1] == Goodbye()
        replies = {m.id: m for m in received[:-1]}
        assert sorted(replies) == [1, 2, 3, 4], received
        assert sorted(replies[i].values for i in (1, 2, 3)) == [(1,), (2,), (3,)]
        assert all(isinstance(replies[i], CallResult) for i in (1, 2, 3)) and isinstance(replies[4], Pong)
        assert await good.call("c", "get") == 3


def mixed_tls_dir(root: Path, identity: Path, trust: Path) -> Path:
    """A TLS dir presenting ``identity``'s certificate while trusting ``trust``'s CA."""
    root.mkdir(parents=True)
    for name in ("cert.pem", "key.pem"):
        (root / name).write_bytes((identity / name).read_bytes())
    (root / "ca.pem").write_bytes((trust / "ca.pem").read_bytes())
    return root


async def test_certificate_from_another_ca_is_refused_before_any_request(node_procs, cluster_tls, tmp_path):
    node = node_procs.start("edge-1", "edge")
    rogue = ClusterTLS(tmp_path / "rogue")
    # A client that trusts our CA but whose certificate another CA signed: the node refuses it.
    impostor = mixed_tls_dir(tmp_path / "impostor", identity=rogue.app, trust=cluster_tls.app)
    impostor_node = mixed_tls_dir(tmp_path / "impostor-node", identity=rogue.issue("edge-2", "node"),
                                  trust=cluster_tls.app)
    for tls in (impostor, impostor_node):
        with pytest.raises(ConnectionFailed):
            async with await node.client(tls) as client:
                await client.deploy(COUNTER)
    with pytest.raises(ConnectionFailed):  # no TLS at all
        async with await node.client(None) as client:
            await client.status()
    # And the other way round: a client of the rogue cluster refuses our node.
    with pytest.raises(ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED"):
        await node.client(rogue.app)

    async with await node.client(cluster_tls.app) as client:
        status = await client.status()
    assert status.workloads == ()
    assert status.counters["connections_rejected"] == 4
    assert status.counters["requests"] == 1  # the status just asked
    rejected = [line["msg"] for line in node.log_lines() if line.get("msg", "").startswith("connection rejected")]
    assert len(rejected) == 4
    assert sum("CERTIFICATE_VERIFY_FAILED" in msg for msg in rejected) == 2, rejected


async def test_bad_workloads_leave_their_neighbours_untouched(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge", env={
        "MIGRATE_NODE_CALL_TIMEOUT_S": "2", "MIGRATE_NODE_WORKLOAD_MEMORY_BYTES": str(32 * MiB)})
    async with await node.client(cluster_tls.app) as client:
        await client.deploy(COUNTER, workload_id="neighbour")
        await client.deploy(TRAP, workload_id="bad")
        assert await client.call("neighbour", "incr", 100) == 100

        with pytest.raises(WorkloadTrap) as trapped:
            await client.call("bad", "boom")
        assert trapped.value.trap_code == "unreachable" and trapped.value.workload_id == "bad"

        # memory-hungry: the cap stops it, the guest sees malloc fail
        assert await client.call("bad", "hog", 64) == 0
        assert await client.call("bad", "hog", 4) == 1

        # runaway: interrupted at its deadline while the neighbour keeps answering
        runaway: dict[str, BaseException] = {}

        async def spin_forever() -> None:
            try:
                await client.call("bad", "spin", -1)
            except DeadlineExceeded as exc:
                runaway["error"] = exc

        async def bad_is_busy():
            return any(w.state == "busy" for w in await client.workloads() if w.workload_id == "bad")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(spin_forever)
            await wait_for(bad_is_busy, what="the runaway call to start")
            assert [await client.call("neighbour", "incr", 1) for _ in range(5)] == [101, 102, 103, 104, 105]
            assert "error" not in runaway  # the neighbour was served while the runaway ran
        assert isinstance(runaway["error"], WorkloadTimeout)  # DeadlineExceeded is one
        assert runaway["error"].timeout_s == 2.0 and runaway["error"].workload_id == "bad"

        assert await client.call("bad", "spin", 10) == 10  # the bad workload itself recovers
        assert await client.call("bad", "hog_mb") == 4
        status = await client.status()
    by_id = {w.workload_id: w for w in status.workloads}
    assert by_id["neighbour"].traps == by_id["neighbour"].timeouts == 0
    assert by_id["bad"].traps == 1 and by_id["bad"].timeouts == 1
    assert by_id["bad"].memory_bytes <= 32 * MiB
    assert node.proc.poll() is None


async def test_sigterm_then_restart_brings_workloads_back_with_state(node_procs, cluster_tls):
    node = node_procs.start("cloud-1", "cloud")
    async with await node.client(cluster_tls.app) as client:
        await client.deploy(COUNTER, workload_id="c1", app="app/demo")
        await client.deploy(COUNTER, workload_id="c2")
        await client.call("c1", "incr", 7)
        for x in range(100):
            await client.call("c2", "add_and_get_log", x)
        checksum = await client.call("c2", "log_checksum")
    assert node.terminate() == 0
    assert any(line.get("msg") == "checkpointed 2 workloads" for line in node.log_lines())

    node.restart()
    async with await node.client(cluster_tls.app) as client:
        assert await client.call("c1", "get") == 7
        assert await client.call("c2", "log_checksum") == checksum
        assert await client.call("c2", "add_and_get_log", 100) == 101
        by_id = {w.workload_id: w for w in await client.workloads()}
    assert by_id["c1"].app == "app/demo" and by_id["c1"].calls == 2
    assert any(line.get("msg") == "restored 2 workloads" for line in node.log_lines())


async def test_peers_know_each_other(node_procs, cluster_tls):
    refresh = ["--peer-refresh-s", "0.2"]
    edge = node_procs.start("edge-1", "edge", args=refresh)
    cloud = node_procs.start("cloud-1", "cloud", join=[edge], args=refresh)

    async def peers_of(node, name):
        async with await node.client(cluster_tls.app) as client:
            peers = [p for p in await client.peers() if p.name == name and p.connected and p.rtt_s]
            return peers[0] if peers else None

    seen_by_cloud = await wait_for(lambda: peers_of(cloud, "edge-1"), what="cloud-1 to know edge-1")
    seen_by_edge = await wait_for(lambda: peers_of(edge, "cloud-1"), what="edge-1 to learn cloud-1")
    assert (seen_by_cloud.role, seen_by_cloud.address) == ("edge", str(edge.address))
    assert (seen_by_edge.role, seen_by_edge.address) == ("cloud", str(cloud.address))
    for peer in (seen_by_cloud, seen_by_edge):
        assert peer.cores >= 1 and peer.memory_free_bytes > 0 and peer.load_1m >= 0 and peer.rtt_s > 0

    # an application's certificate cannot make a node dial an address of its choosing
    async with await edge.client(cluster_tls.app, role="edge", advertise="127.0.0.1:9") as client:
        assert "127.0.0.1:9" not in [p.address for p in await client.peers()]

    edge.kill()

    async def edge_gone():
        async with await cloud.client(cluster_tls.app) as client:
            return not any(p.connected for p in await client.peers())
    await wait_for(edge_gone, what="cloud-1 to notice edge-1 is gone")


async def test_a_client_that_stops_reading_cannot_make_the_node_buffer(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge", args=["--max-in-flight", "4"])
    async with await node.client(cluster_tls.app) as good:
        await good.deploy(COUNTER, workload_id="c")
        memory = (await good.status()).workloads[0].memory_bytes
        before = rss_bytes(node.pid)

        # Ask for the whole memory 20,000 times and never read a reply:
        # buffering the replies would take 20,000 x 128 KiB = 2.5 GiB.
        stream = await raw_tls(node.address, cluster_tls.app)
        conn = Connection()
        await stream.send_all(conn.send(conn.hello(name="app", role="app")))
        conn.receive_data(await stream.receive_some(1 << 16))
        assert isinstance(conn.next_event(), Hello)
        sent = 0
        while sent < 20_000:  # until sending stalls: the node stopped reading and TCP pushed back
            with trio.move_on_after(1) as stalled:
                await stream.send_all(conn.send(ReadMemory(id=sent, workload="c", offset=0, length=memory)))
            if stalled.cancelled_caught:
                break
            sent += 1
        print(f"sent {sent} requests before the node pushed back")
        status = await good.status()
        grown = rss_bytes(node.pid) - before
        assert grown < 64 * MiB, f"node grew by {grown / MiB:.0f} MiB"
        assert status.counters["peak_requests_in_flight"] <= 4
        print(f"the node answered {status.counters['requests']} requests and grew by {grown / MiB:.1f} MiB")
        assert status.counters["requests"] < sent / 10  # it stopped reading, not answering into a buffer
        assert await good.call("c", "incr", 1) == 1  # everyone else is still served
        await trio.aclose_forcefully(stream)
