"""TLSStream over loopback: against trio's own SSLStream and against itself, data, ends and refusals."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import trio

from nodes import client_context, init_ca, issue_cert, server_context
from nodes._socket_stream import ReadyStream, ssl_reason
from nodes._tls_stream import TLSStream

pytestmark = pytest.mark.trio


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tls")
    init_ca(root / "ca")
    init_ca(root / "rogue-ca")
    dirs = {}
    for ca_name, name in [("ca", "node"), ("ca", "app"), ("rogue-ca", "rogue")]:
        dirs[name] = root / name
        issue_cert(root / ca_name, name=name, role="node", out_dir=dirs[name])
    return dirs


@contextlib.asynccontextmanager
async def pair(tls, *, server_ours: bool, client_ours: bool, client: str = "app", handshake: bool = True):
    """A connected (server, client) pair of TLS streams over loopback; each TLSStream or trio.SSLStream."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    server_tcp, client_tcp = await _connected(listeners[0], port)
    await listeners[0].aclose()
    server_ctx, client_ctx = server_context(tls["node"]), client_context(tls[client])
    server = (TLSStream(ReadyStream(server_tcp), server_ctx, server_side=True) if server_ours
              else trio.SSLStream(server_tcp, server_ctx, server_side=True, https_compatible=False))
    dialled = (TLSStream(ReadyStream(client_tcp), client_ctx, server_side=False, server_hostname="127.0.0.1")
               if client_ours else trio.SSLStream(client_tcp, client_ctx, server_hostname="127.0.0.1",
                                                  https_compatible=False))
    try:
        if handshake:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.do_handshake)
                nursery.start_soon(dialled.do_handshake)
        yield server, dialled
    finally:
        await trio.aclose_forcefully(server)
        await trio.aclose_forcefully(dialled)


async def _connected(listener, port):
    async with trio.open_nursery() as nursery:
        accepted = []
        nursery.start_soon(lambda: _accept(listener, accepted))
        client = await trio.open_tcp_stream("127.0.0.1", port)
    return accepted[0], client


async def _accept(listener, accepted):
    accepted.append(await listener.accept())


async def receive_exactly(stream, n: int, most: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        data = await stream.receive_some(most)
        assert data and len(data) <= most
        got += data
    return bytes(got)


KINDS = [(True, True), (True, False), (False, True)]


@pytest.mark.parametrize(("server_ours", "client_ours"), KINDS)
async def test_data_crosses_both_ways_intact_in_reads_of_any_size(tls, server_ours, client_ours):
    big = os.urandom(3 << 20)  # many TLS records; reads ask for less and more than a record
    async with pair(tls, server_ours=server_ours, client_ours=client_ours) as (server, client):
        for most in (1, 1000, 70_000, 1 << 20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_all, big[:200_000])
                assert await receive_exactly(server, 200_000, most) == big[:200_000]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.send_all, big)
            assert await receive_exactly(client, len(big), 256 << 10) == big
        for i in range(50):  # small frames, one at a time: a call and its reply
            await client.send_all(b"q" * 157)
            assert await receive_exactly(server, 157, 65536) == b"q" * 157
            await server.send_all(bytes([i]) * 103)
            assert await receive_exactly(client, 103, 65536) == bytes([i]) * 103
        assert dict(x[0] for x in client.getpeercert()["subject"])["commonName"] == "node"
        assert dict(x[0] for x in server.getpeercert()["subject"])["commonName"] == "app"


@pytest.mark.parametrize(("server_ours", "client_ours"), KINDS)
async def test_a_close_after_close_notify_reads_as_the_end(tls, server_ours, client_ours):
    async with pair(tls, server_ours=server_ours, client_ours=client_ours) as (server, client):
        await client.send_all(b"last words")
        await client.aclose()
        assert await receive_exactly(server, 10, 65536) == b"last words"
        assert await server.receive_some(65536) == b""
        if server_ours:
            assert await server.receive_some(65536) == b""  # and stays ended
        with pytest.raises(trio.ClosedResourceError):
            await client.send_all(b"more")


async def test_an_end_without_close_notify_is_a_broken_stream(tls):
    async with pair(tls, server_ours=True, client_ours=True) as (server, client):
        await client.send_all(b"half")
        await client.transport_stream.aclose()  # the socket closes under TLS: no close_notify
        assert await receive_exactly(server, 4, 65536) == b"half"
        with pytest.raises(trio.BrokenResourceError):
            await server.receive_some(65536)
        with pytest.raises(trio.BrokenResourceError):  # it stays broken
            await server.receive_some(65536)


@pytest.mark.parametrize(("server_ours", "client_ours"), KINDS)
async def test_a_certificate_of_another_ca_is_refused_with_the_reason(tls, server_ours, client_ours):
    async with pair(tls, server_ours=server_ours, client_ours=client_ours, client="rogue",
                    handshake=False) as (server, client):
        outcomes: dict[str, BaseException | None] = {}

        async def run(name, stream):
            try:
                await stream.do_handshake()
                await stream.send_all(b"x")  # TLS 1.3 clients learn of a refusal on their first read
                await stream.receive_some(10)
                outcomes[name] = None
            except trio.BrokenResourceError as exc:
                outcomes[name] = exc
                await trio.aclose_forcefully(stream)  # as a party that gives up does

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "server", server)
                nursery.start_soon(run, "client", client)
    assert isinstance(outcomes["server"], trio.BrokenResourceError)
    assert isinstance(outcomes["client"], trio.BrokenResourceError)
    # each side trusts only its own CA: the first to verify refuses the other, and says why
    assert "CERTIFICATE_VERIFY_FAILED" in ssl_reason(outcomes["server"]) + ssl_reason(outcomes["client"])


async def test_a_peer_that_leaves_during_the_handshake_breaks_it(tls):
    async with pair(tls, server_ours=True, client_ours=True, handshake=False) as (server, client):
        await client.transport_stream.aclose()
        with pytest.raises(trio.BrokenResourceError, match="during the TLS handshake"):
            await server.do_handshake()
