"""ReadyStream: a SocketStream that reads and writes without a scheduler pass when the socket is ready."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from nodes._socket_stream import _YIELD_EVERY, ReadyStream, has_unread


def _pair() -> tuple[ReadyStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return ReadyStream(trio.SocketStream(a)), trio.SocketStream(b)


async def test_bytes_go_both_ways_and_a_send_larger_than_the_socket_buffer_waits_for_the_reader():
    ours, theirs = _pair()
    big = bytes(range(256)) * 40000  # 10 MB: more than a socketpair buffers
    got = bytearray()

    async def read_all():
        while len(got) < len(big):
            got.extend(await theirs.receive_some(1 << 20))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        await ours.send_all(big)
    assert bytes(got) == big and ours.sent_bytes == len(big)
    await theirs.send_all(b"hello")
    assert await ours.receive_some() == b"hello"
    assert not has_unread(ours)
    await theirs.aclose()
    assert has_unread(ours)
    assert await ours.receive_some(10) == b""  # the peer closed


async def test_a_reader_of_a_socket_that_is_always_ready_still_lets_other_tasks_run():
    ours, theirs = _pair()
    await theirs.send_all(b"x" * (4 * _YIELD_EVERY))
    events = []

    async def other():
        events.append("other ran")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        for _ in range(4 * _YIELD_EVERY):  # a reader that never yields would let the other run after all
            await ours.receive_some(1)
            events.append("read")
    # The first yield puts the reader and the other task in one scheduler batch, whose order trio
    # randomises: the reader may run first and read up to its next yield before the other runs.
    assert events.index("other ran") <= 2 * _YIELD_EVERY


async def test_a_closed_stream_and_a_reset_peer_raise_trio_errors():
    ours, theirs = _pair()
    await ours.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await ours.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await ours.receive_some()

    ours, theirs = _pair()
    await theirs.aclose()
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(100):  # the first write may still be buffered before the peer's end is seen
            await ours.send_all(b"x" * 65536)


async def test_a_wait_goes_through_the_given_wait_function():
    a, b = trio.socket.socketpair()
    waited = []

    async def wait_readable(sock):
        waited.append("readable")
        await trio.lowlevel.wait_readable(sock)

    ours, theirs = ReadyStream(trio.SocketStream(a), wait_readable=wait_readable), trio.SocketStream(b)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: theirs.send_all(b"late"))
        assert await ours.receive_some() == b"late"
    assert waited == ["readable"]  # the socket was empty once: one wait
    await theirs.send_all(b"ready")
    await trio.testing.wait_all_tasks_blocked()
    assert await ours.receive_some() == b"ready"
    assert waited == ["readable"]  # ready at once: no wait
