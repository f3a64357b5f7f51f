"""The link emulation: address plan, delays, stale-namespace detection, the delaying proxy, real namespaces."""

import contextlib
import socket
import struct
import subprocess
from functools import partial

import pytest
import trio

from benchmarks import netem


def test_each_proxy_delays_by_half_the_round_trip_of_the_link_a_peer_came_in_on():
    profile = netem.PROFILES["1gbit"]
    assert netem.proxy_delays("edge", profile) == {"198.18.1.1": 0.0025, "198.18.2.2": 0.015}
    assert netem.proxy_delays("cloud", profile) == {"198.18.2.1": 0.015, "198.18.3.1": 0.0175}


def test_every_link_joins_two_roles_on_its_own_subnet():
    assert {(link.a, link.b) for link in netem.LINKS} == {("client", "edge"), ("edge", "cloud"), ("client", "cloud")}
    for link in netem.LINKS:
        assert link.a_ip.rsplit(".", 1)[0] == link.b_ip.rsplit(".", 1)[0]
        assert link.a_ip.startswith("198.18.")  # RFC 2544's benchmarking range only
        assert len(f"{link.short}-client") <= 15  # Linux device names


def test_tbf_bucket_holds_a_gso_segment_and_two_ms_at_the_rate():
    assert netem.tbf_burst_bytes(100e6) == 64 * 1024
    assert netem.tbf_burst_bytes(1e9) == 250_000


def test_only_namespaces_of_dead_runs_are_stale():
    names = ["wmb-100-edge", "wmb-200-cloud", "wmb-100-client", "other", "wmb-x-edge", "wmb-100-router"]
    assert netem.stale_namespaces(names, alive=lambda pid: pid == 200) == [
        "wmb-100-edge", "wmb-100-client"]


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        async for data in stream:
            await stream.send_all(data)


async def test_the_proxy_relays_every_byte_and_adds_the_delay():
    delay_s = 0.02
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _echo, 0, host="127.0.0.1"))
        upstream = listeners[0].socket.getsockname()[:2]
        bound = await nursery.start(netem.serve_delay_proxy, ("127.0.0.1", 0), upstream, {"127.0.0.1": delay_s})
        payload = bytes(range(256)) * 4096  # 1 MiB, more than one chunk
        async with await trio.open_tcp_stream(*bound) as client:
            t0 = trio.current_time()
            await client.send_all(b"ping")
            assert await client.receive_some(4) == b"ping"
            # Both directions wait: never less than the round trip (a lower bound, not a timing goal).
            assert trio.current_time() - t0 >= 2 * delay_s
            received = bytearray()

            async def read() -> None:
                while len(received) < len(payload):
                    received.extend(await client.receive_some(65536))

            async with trio.open_nursery() as inner:
                inner.start_soon(read)
                await client.send_all(payload)
            assert bytes(received) == payload
        nursery.cancel_scope.cancel()


async def test_the_proxy_passes_a_half_close_on():
    async def reply_after_eof(stream: trio.SocketStream) -> None:
        async with stream:
            got = bytearray()
            async for data in stream:
                got += data
            await stream.send_all(b"got %d" % len(got))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, reply_after_eof, 0, host="127.0.0.1"))
        bound = await nursery.start(netem.serve_delay_proxy, ("127.0.0.1", 0),
                                    listeners[0].socket.getsockname()[:2], {})
        async with await trio.open_tcp_stream(*bound) as client:
            await client.send_all(b"x" * 1000)
            await client.send_eof()
            assert await client.receive_some(100) == b"got 1000"
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(netem.unavailable_reason() is not None, reason=str(netem.unavailable_reason()))
def test_a_topology_is_made_capped_and_deleted(tmp_path):
    profile = netem.PROFILES["100mbit"]
    topo = netem.Topology(profile)
    with topo:
        namespaces = [topo.namespace(r) for r in ("client", "edge", "cloud")]
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert all(ns in listed for ns in namespaces)
        qdiscs = subprocess.run(["tc", "-n", namespaces[1], "qdisc", "show"], capture_output=True, text=True).stdout
        assert qdiscs.count("tbf") == 2 and "100Mbit" in qdiscs
        route = subprocess.run(["ip", "-n", namespaces[0], "route", "get", netem.SERVICE_IP["cloud"]],
                               capture_output=True, text=True).stdout
        assert "cc-client" in route
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in listed for ns in namespaces)


async def test_a_connection_that_breaks_does_not_stop_the_proxy():
    async def flood(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async with stream:
                await stream.receive_some(10)
                while True:
                    await stream.send_all(b"x" * 65536)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, flood, 0, host="127.0.0.1"))
        bound = await nursery.start(netem.serve_delay_proxy, ("127.0.0.1", 0),
                                    listeners[0].socket.getsockname()[:2], {"127.0.0.1": 0.001})
        for _ in range(3):
            client = await trio.open_tcp_stream(*bound)
            await client.send_all(b"go")
            assert await client.receive_some(10)
            # Reset instead of a clean close: both directions break under the proxy.
            client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await client.aclose()
        nursery.cancel_scope.cancel()
