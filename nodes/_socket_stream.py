"""A TCP stream that moves bytes at once when the socket is ready, without a pass through the scheduler.

``trio.SocketStream`` yields to the scheduler on every ``send_all`` and
``receive_some``, even when the kernel took or had the bytes at once; a
node's call pays one event-loop pass for each (each costs 7-15 µs on the
2-CPU benchmark machine, more under load).  ``ReadyStream`` wraps one: it
writes and reads the socket without blocking first and waits (through the
channel's ``wait_readable``/``wait_writable``, which bound the wait with
the channel's stall timeout) only when the socket is not ready.  So the
cancel scope of a stall timeout is entered only when a read or send has to
wait, not once per request.

Every ``_YIELD_EVERY`` operations that did not wait, one yields anyway, so
a peer that keeps the socket full cannot keep the reading task from
letting others run.  A ``trio.SSLStream`` runs on top of it as on any
transport stream.
"""

from __future__ import annotations

import errno
import os
import select
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import trio

__all__ = ["ReadyStream", "has_unread", "ssl_reason"]

_DEFAULT_RECEIVE = 65536
_YIELD_EVERY = 16

Wait = Callable[[Any], Awaitable[None]]


class ReadyStream(trio.abc.HalfCloseableStream):
    """``stream`` with sends and receives that yield only when they wait (or every ``_YIELD_EVERY``-th time).

    ``wait_readable(socket)`` and ``wait_writable(socket)`` wait for the
    socket; they default to trio's, unbounded.
    """

    def __init__(self, stream: trio.SocketStream, *, wait_readable: Wait = trio.lowlevel.wait_readable,
                 wait_writable: Wait = trio.lowlevel.wait_writable) -> None:
        self.transport = stream
        self.socket = stream.socket
        self.wait_readable = wait_readable
        self.wait_writable = wait_writable
        self._unyielded = 0
        #: Bytes the kernel has taken from us so far.
        self.sent_bytes = 0

    def _fd(self) -> int:
        fd = self.socket.fileno()
        if fd == -1:
            raise trio.ClosedResourceError("the stream was closed")
        return fd

    async def _maybe_yield(self) -> None:
        self._unyielded += 1
        if self._unyielded >= _YIELD_EVERY:
            self._unyielded = 0
            await trio.lowlevel.checkpoint()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._maybe_yield()
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            try:
                wrote = os.write(self._fd(), view[sent:])
                sent += wrote
                self.sent_bytes += wrote
            except BlockingIOError:
                self._unyielded = 0
                await self.wait_writable(self.socket)
            except OSError as exc:
                raise _translate(exc) from exc

    def send_nowait(self, data: bytes) -> int:
        """Write what the socket takes of ``data`` now, without waiting; return how much (0 when closed or full)."""
        try:
            wrote = os.write(self._fd(), data) if data else 0
        except (OSError, trio.ClosedResourceError):
            return 0
        self.sent_bytes += wrote
        return wrote

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await self._maybe_yield()
        size = _DEFAULT_RECEIVE if max_bytes is None else max_bytes
        if size < 1:
            raise ValueError("max_bytes must be >= 1")
        while True:
            try:
                return os.read(self._fd(), size)
            except BlockingIOError:
                self._unyielded = 0
                await self.wait_readable(self.socket)
            except OSError as exc:
                raise _translate(exc) from exc

    async def aclose(self) -> None:
        await self.transport.aclose()


def _translate(exc: OSError) -> Exception:
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("the stream was closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


def has_unread(stream: Any) -> bool:
    """True if ``stream``'s socket has bytes (or an end) nobody read yet; one poll, no waiting."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):  # closed: the next read says so
        return True
    return bool(readable)


def ssl_reason(exc: BaseException) -> str:
    """The most telling message in an SSL failure's chain."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return cause.reason or str(cause)
        cause = cause.__cause__ or cause.__context__
    return str(exc) or "the connection was closed"
