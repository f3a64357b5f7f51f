"""The delaying TCP proxy: relays each connection upstream, holding each chunk for its link's one-way delay.

The link is told apart by the peer's address.

It stands in for ``netem`` delay, which the kernel here lacks; the proxy
process is ``python -m benchmarks.netem proxy``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import trio

logger = logging.getLogger("benchmarks.netem")

#: Bytes the proxy reads at a time, and chunks it holds per direction: 256 x
#: 64 KiB = 16 MiB, above the 1.9 MB bandwidth-delay product of 1 Gbit/s x 15 ms.
PROXY_CHUNK_BYTES = 64 * 1024
PROXY_MAX_CHUNKS = 256


async def relay(source: trio.abc.ReceiveStream, sink: trio.abc.HalfCloseableStream, delay_s: float) -> None:
    """Copy ``source`` to ``sink``, each chunk held until ``delay_s`` after it arrived; then half-close.

    Reading goes on while earlier chunks wait, so the delay adds latency
    without limiting throughput (up to ``PROXY_MAX_CHUNKS`` in flight).
    Raises an ExceptionGroup of trio.BrokenResourceError, ClosedResourceError
    or OSError if a side breaks: reading and sending may both break at once.
    """
    send, receive = trio.open_memory_channel(PROXY_MAX_CHUNKS)

    async def read() -> None:
        async with send:
            while data := await source.receive_some(PROXY_CHUNK_BYTES):
                await send.send((trio.current_time() + delay_s, data))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        async with receive:
            async for due, data in receive:
                await trio.sleep_until(due)
                await sink.send_all(data)
        await sink.send_eof()


_BROKEN = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


async def _proxy_connection(client: trio.SocketStream, upstream: tuple[str, int], delays: Mapping[str, float]) -> None:
    """Relay one accepted connection; a side that breaks ends both directions, never the proxy."""
    peer = client.socket.getpeername()[0]
    delay_s = delays.get(peer, 0.0)
    async with client:
        try:
            server = await trio.open_tcp_stream(*upstream)
        except OSError as exc:
            logger.warning("cannot reach %s:%d: %s", *upstream, exc)
            return
        async with server, trio.open_nursery() as nursery:

            async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                # Both directions may break at once: except* takes the group apart.
                try:
                    await relay(source, sink, delay_s)
                except* _BROKEN:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(pump, client, server)
            nursery.start_soon(pump, server, client)


async def serve_delay_proxy(listen: tuple[str, int], upstream: tuple[str, int], delays: Mapping[str, float], *,
                            task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Accept on ``listen`` and relay each connection to ``upstream``, delayed by the peer's entry in ``delays``.

    ``task_status.started`` gets the (host, port) bound.  Runs until cancelled.
    """
    listeners = await trio.open_tcp_listeners(listen[1], host=listen[0])
    bound = listeners[0].socket.getsockname()[:2]
    task_status.started(bound)

    async def handle(stream: trio.SocketStream) -> None:
        await _proxy_connection(stream, upstream, delays)

    await trio.serve_listeners(handle, listeners)
