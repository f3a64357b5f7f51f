"""Moving protocol bytes over trio streams: TLS, framing and back-pressure.

``Channel`` wraps one trio stream (a ``TLSStream`` over TCP, or plain
TCP on loopback with ``--insecure``) and drives a sans-IO ``Connection``:
it only moves bytes.  ``open_channel`` dials and ``accept_channel`` answers;
both finish the TLS handshake and the Hello exchange before returning, so
a party the cluster CA did not sign never gets a frame read.

Back-pressure comes from reading only when asked: ``receive`` pulls bytes
from the socket only when the Connection has no complete frame buffered, so
a caller that stops calling ``receive`` (the daemon does, while its
per-connection request slots are full) leaves the peer's frames in the
kernel buffer, and TCP flow control stops the peer.  What we buffer is at
most one frame plus one read.  ``send`` waits for the kernel to take the
bytes, so a peer that does not read stalls only the tasks sending to it.

A node's accepted channels also share a ``ByteBudget`` (``nodes._budget``):
a channel takes from it every byte before reading it (a whole frame at
once, once its header says how big it is) and gives a request's bytes back
when its reply has been sent.  With ``timeout_s`` a channel is closed when
its peer stalls: when it sends nothing for ``timeout_s`` while it is owed
no reply (unless ``close_when_idle`` is off), when a frame it started
delivers less than ``RECEIVE_BYTES`` (or its rest) in ``timeout_s``, or
when it accepts less than ``RECEIVE_BYTES`` of ours in ``timeout_s``.
"""

from __future__ import annotations

import contextlib
import math
import ssl
from collections.abc import Callable
from typing import Any

import trio

from ._budget import LOOKAHEAD_BYTES, ByteBudget
from ._config import Address
from ._errors import ConnectionFailed, RemoteProtocolError
from ._messages import ErrorCode, Goodbye, Hello, Message, Reply, Request
from ._protocol import NEED_DATA, Connection, ConnectionClosed, State
from ._socket_stream import ReadyStream, has_unread, ssl_reason
from ._tls import Identity, certificate_subject, peer_identity
from ._tls_stream import TLSStream

#: Bytes asked of the socket per read: large enough that a 64 MiB page batch
#: takes a few hundred reads, small enough that a read never holds much more
#: than one frame's worth of someone else's data.
RECEIVE_BYTES = 256 << 10
#: How long a parting Goodbye may take to leave: it is a courtesy to the peer
#: and must not hold up closing a connection whose peer stopped reading.
_GOODBYE_TIMEOUT_S = 1.0

_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)


class Channel:
    """A connection's sans-IO protocol state plus the stream it runs on.

    One task may receive at a time; sends from many tasks are serialised.
    Raises ConnectionFailed when the stream breaks and RemoteProtocolError
    when the peer breaks the protocol (after telling it so with a Goodbye).
    """

    def __init__(self, stream: trio.abc.Stream, connection: Connection, *, remote: str,
                 budget: ByteBudget | None = None, timeout_s: float | None = None) -> None:
        self.stream = stream
        self.connection = connection
        self.remote = remote  # "host:port" of the other end, for logs
        self.budget = budget
        self.timeout_s = timeout_s
        #: Close the channel when the peer sends nothing for ``timeout_s`` while owed no reply.
        self.close_when_idle = True
        #: True once the channel failed because the peer stalled (``timeout_s``).
        self.timed_out = False
        self._send_lock = trio.Lock()
        self._broken: str | None = None
        self._identity: Identity | None = None
        self._held = 0                     # budget bytes covering the Connection's buffer
        self._claims: dict[int, int] = {}  # request id -> its frame's bytes, held until the reply is sent
        # The peer must send ``_owed`` more bytes within ``timeout_s`` of waiting on the
        # socket; ``_waited`` is that waiting so far (time we spend elsewhere does not count).
        self._owed = RECEIVE_BYTES
        self._waited = 0.0
        self._read_since = 0.0
        self._read_scope: trio.CancelScope | None = None
        # Over a ReadyStream the stall clocks run only while a read or send waits on the socket.
        base = stream.transport_stream if isinstance(stream, TLSStream) else stream
        self._ready = base if isinstance(base, ReadyStream) and timeout_s is not None else None
        if self._ready is not None:
            self._ready.wait_readable, self._ready.wait_writable = self._wait_readable, self._wait_writable
        self._send_mark = (0.0, 0)  # (when, bytes sent then): the peer must take RECEIVE_BYTES by when + timeout_s

    @property
    def peer(self) -> Hello:
        """The peer's Hello (set once the handshake is done)."""
        assert self.connection.their_hello is not None, "handshake not done"
        return self.connection.their_hello

    @property
    def peer_certificate(self) -> dict[str, str] | None:
        """The subject of the peer's TLS certificate (commonName, organizationalUnitName...), None without TLS."""
        return certificate_subject(self.stream.getpeercert()) if isinstance(self.stream, TLSStream) else None

    @property
    def peer_identity(self) -> Identity | None:
        """The role and names the peer's TLS certificate gives it; None without TLS."""
        if self._identity is None and isinstance(self.stream, TLSStream):
            self._identity = peer_identity(self.stream.getpeercert())
        return self._identity

    async def send(self, message: Message) -> None:
        """Send one message.  Raises LocalProtocolError or ConnectionFailed."""
        claim = self._claims.pop(message.id, 0) if isinstance(message, Reply) else 0
        try:
            try:  # uncontended in the common case; skip the scheduler round trip of acquire()
                self._send_lock.acquire_nowait()
            except trio.WouldBlock:
                await self._send_lock.acquire()
            try:  # encoded under the lock: replies waiting for a slow reader hold no second copy
                await self._send_bytes(self.connection.send(message))
            finally:
                self._send_lock.release()
        finally:
            if claim and self.budget is not None:  # claims are taken only with a budget
                self.budget.release(claim)
        if isinstance(message, Reply) and self.connection.their_requests_pending == 0:
            self._progress()  # owed nothing more: the idle time starts now
            if self._read_scope is not None:
                self._read_scope.deadline = self._deadline()

    async def _send_bytes(self, data: bytes) -> None:
        if self._broken:
            raise ConnectionFailed(self._broken)
        try:
            if self.timeout_s is None or self._ready is not None:
                self._send_mark = (math.inf, 0)  # the first wait of this send starts the clock
                await self.stream.send_all(data)
                return
            view = memoryview(data)
            for start in range(0, len(view), RECEIVE_BYTES):
                with trio.move_on_after(self.timeout_s) as scope:
                    await self.stream.send_all(view[start:start + RECEIVE_BYTES])
                if scope.cancelled_caught:
                    self._send_stalled()
        except _BROKEN as exc:
            self._broken = f"connection to {self.remote} broke: {exc or type(exc).__name__}"
            raise ConnectionFailed(self._broken) from exc
        except BaseException:
            # cancelled part-way: the peer may hold half a frame, so the stream is unusable
            self._broken = self._broken or f"a send to {self.remote} was cancelled mid-frame"
            raise

    def _send_stalled(self) -> None:
        self.timed_out = True
        self._broken = f"{self.remote} took less than {RECEIVE_BYTES} bytes of a frame in {self.timeout_s} s"
        if self._read_scope is not None:  # the reader ends the connection now
            self._read_scope.cancel()
        raise ConnectionFailed(self._broken)

    async def _wait_writable(self, sock: Any) -> None:
        """Wait until the socket takes bytes again: at most until ``timeout_s`` after the mark."""
        assert self._ready is not None and self.timeout_s is not None  # installed only then (``__init__``)
        when, sent = self._send_mark
        if when == math.inf or self._ready.sent_bytes - sent >= RECEIVE_BYTES:
            self._send_mark = when, sent = trio.current_time(), self._ready.sent_bytes
        with trio.CancelScope(deadline=when + self.timeout_s) as scope:
            await trio.lowlevel.wait_writable(sock)
        if scope.cancelled_caught:
            self._send_stalled()

    def has_unread(self) -> bool:
        """True if the peer sent bytes (or closed) that nobody has read yet; one poll, no waiting."""
        return has_unread(self.stream.transport_stream if isinstance(self.stream, TLSStream) else self.stream)

    async def receive(self) -> Message | ConnectionClosed:
        """Return the next Hello, Request, Reply or ConnectionClosed from the peer.

        Raises RemoteProtocolError or ConnectionFailed.
        """
        conn = self.connection
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                await self._goodbye(ErrorCode.PROTOCOL_ERROR, str(exc))
                raise
            if event is not NEED_DATA:
                if self.budget is not None:
                    self._took(event, self.budget)
                if conn.last_frame_bytes:
                    self._progress()  # a whole frame arrived
                return event
            await self._read()

    async def _read(self) -> None:
        """Read what the socket has (at most what the budget covers) into the Connection."""
        conn = self.connection
        size = RECEIVE_BYTES
        if self.budget is not None:
            # The whole frame at once when its header is in, else a lookahead: never piece by piece.
            want = max(conn.frame_bytes() or 0, LOOKAHEAD_BYTES)
            if want > self._held:
                if not self.budget.try_acquire(want - self._held):
                    await self.budget.acquire(want - self._held)
                self._held = want
            size = min(size, self._held - conn.buffered_bytes)
        if self._broken:
            raise ConnectionFailed(self._broken)
        if self.timeout_s is None:  # a client's channel: no clock to keep
            conn.receive_data(await self._receive_some(size))
            return
        if self._ready is not None:  # the clock runs in _wait_readable, only if the read waits
            data = await self._receive_some(size)
        else:
            data = await self._wait_readable(None, size)
        self._owed -= len(data)
        if self._owed <= 0:
            self._progress()
        conn.receive_data(data)

    async def _wait_readable(self, sock: Any, size: int = 0) -> Any:
        """Wait for the socket (``sock``), or read ``size`` bytes, at most until the stall deadline."""
        self._read_since = trio.current_time()
        with trio.CancelScope(deadline=self._deadline()) as scope:
            self._read_scope = scope
            try:
                data = await (trio.lowlevel.wait_readable(sock) if sock is not None else self._receive_some(size))
            finally:
                self._read_scope = None
                if scope.deadline != math.inf:
                    self._waited += trio.current_time() - self._read_since
        if scope.cancelled_caught:
            if self._broken:
                raise ConnectionFailed(self._broken)
            self.timed_out = True
            raise ConnectionFailed(self._stall())
        return data

    async def _receive_some(self, size: int) -> bytes | bytearray:
        try:
            return await self.stream.receive_some(size)
        except _BROKEN as exc:
            raise ConnectionFailed(f"connection to {self.remote} broke: {exc or type(exc).__name__}") from exc

    def _took(self, event: Message | ConnectionClosed, budget: ByteBudget) -> None:
        """Move the bytes of the frame just read from the buffer's share of the budget to its event."""
        size = self.connection.last_frame_bytes
        self._held -= size
        if isinstance(event, Request):
            self._claims[event.id] = size  # given back when the reply is sent
        elif size:
            budget.release(size)

    def release_budget(self) -> None:
        """Give back every byte this channel holds of the budget (it is closing)."""
        if self.budget is not None:
            self.budget.release(self._held + sum(self._claims.values()))
            self._held = 0
            self._claims.clear()

    def _progress(self) -> None:
        """The peer did what it owed: the next ``timeout_s`` starts now."""
        self._owed = RECEIVE_BYTES
        self._waited = 0.0
        self._read_since = trio.current_time()

    def _deadline(self) -> float:
        """When the current read gives up: the peer is inside a frame, or idle and owed nothing."""
        conn = self.connection
        if self.timeout_s is None or not (
                conn.buffered_bytes or (self.close_when_idle and conn.their_requests_pending == 0)):
            return math.inf
        return self._read_since + self.timeout_s - self._waited

    def _stall(self) -> str:
        if self.connection.buffered_bytes:
            return (f"{self.remote} sent less than {RECEIVE_BYTES} bytes of a frame in {self.timeout_s} s "
                    f"({self.connection.buffered_bytes} bytes buffered)")
        return f"{self.remote} sent nothing for {self.timeout_s} s"

    async def handshake(self, hello: Hello) -> Hello:
        """Send our Hello, wait for theirs, and return it.

        Raises RemoteProtocolError (no common version, anything but a Hello
        first) or ConnectionFailed (the peer closed or said Goodbye).
        """
        await self.send(hello)
        return await self._their_hello()

    async def answer_handshake(self, hello: Hello, vet: Callable[[Channel], str | None]) -> Hello:
        """Wait for the peer's Hello, ``vet`` it, then send ours and return theirs.

        ``vet(self)`` returns None to accept, or the reason to refuse: the
        peer then gets a Goodbye (``forbidden``, the reason) in place of our
        Hello, and this raises ConnectionFailed with the reason.  Raises
        what ``handshake`` raises too.
        """
        theirs = await self._their_hello()
        reason = vet(self)
        if reason is not None:
            await self._goodbye(ErrorCode.FORBIDDEN, reason)
            raise ConnectionFailed(reason)
        await self.send(hello)
        return theirs

    async def _their_hello(self) -> Hello:
        event = await self.receive()
        if isinstance(event, ConnectionClosed):
            raise ConnectionFailed(f"{self.remote} closed the connection during the handshake"
                                   + (f": {event.reason}" if event.reason else ""))
        assert isinstance(event, Hello)  # the Connection lets nothing but a Hello through here
        return event

    async def _goodbye(self, code: ErrorCode | None, reason: str) -> None:
        """Tell the peer why we close, if it is still listening; never raises."""
        with trio.move_on_after(_GOODBYE_TIMEOUT_S):
            with contextlib.suppress(Exception):
                await self.send(Goodbye(code=code, reason=reason[:400]))

    async def aclose(self, *, reason: str = "", code: ErrorCode | None = None) -> None:
        """Say Goodbye (when the connection is still open), close the stream and give back its budget."""
        try:
            if self.connection.state not in (State.CLOSED, State.ERROR) and not self._broken:
                await self._goodbye(code, reason)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)
        finally:
            self.release_budget()


def _connection(max_frame_bytes: int | None) -> Connection:
    return Connection() if max_frame_bytes is None else Connection(max_frame_bytes=max_frame_bytes)


async def open_channel(address: Address, *, ssl_context: ssl.SSLContext | None, hello: dict[str, Any],
                       max_frame_bytes: int | None = None) -> Channel:
    """Connect to a node, finish TLS and the Hello exchange; return the Channel.

    ``hello`` holds the Hello fields other than versions and frame limit
    (name, role, capabilities, address).  Without ``ssl_context`` the
    connection is plain TCP.  Raises ConnectionFailed or RemoteProtocolError.
    """
    remote = str(address)
    try:
        tcp = await trio.open_tcp_stream(address.host, address.port)
    except OSError as exc:
        # trio wraps the per-address failures; the first one says why (refused, unreachable)
        why = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        raise ConnectionFailed(f"cannot connect to {remote}: {why.strerror or why}") from exc
    stream: trio.abc.Stream = (ready := ReadyStream(tcp))
    try:
        if ssl_context is not None:
            stream = TLSStream(ready, ssl_context, server_side=False, server_hostname=address.host)
            await stream.do_handshake()
        channel = Channel(stream, _connection(max_frame_bytes), remote=remote)
        await channel.handshake(channel.connection.hello(**hello))
    except _BROKEN as exc:
        await trio.aclose_forcefully(stream)
        raise ConnectionFailed(f"TLS with {remote} failed: {ssl_reason(exc)}") from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return channel


async def accept_channel(tcp: trio.SocketStream, *, ssl_context: ssl.SSLContext | None,
                         hello: dict[str, Any], max_frame_bytes: int | None = None,
                         vet: Callable[[Channel], str | None] = lambda channel: None,
                         budget: ByteBudget | None = None, timeout_s: float | None = None) -> Channel:
    """Answer a connection a listener accepted: TLS, then the Hello exchange.

    The peer's Hello comes first; ``vet`` sees it (and the certificate) and
    may refuse the connection (``Channel.answer_handshake``) before it gets
    ours.  The caller bounds the time this may take and closes ``tcp`` on
    error.  ``budget`` and ``timeout_s`` are the Channel's.  Raises
    ConnectionFailed (TLS refused, e.g. a certificate the CA did not sign;
    a refusal of ``vet``) or RemoteProtocolError.
    """
    try:
        host, port = tcp.socket.getpeername()[:2]
        remote = str(Address(host, port))
    except OSError:
        remote = "unknown"
    stream: trio.abc.Stream = (ready := ReadyStream(tcp))
    if ssl_context is not None:
        stream = TLSStream(ready, ssl_context, server_side=True)
        try:
            await stream.do_handshake()
        except _BROKEN as exc:
            raise ConnectionFailed(f"TLS handshake with {remote} failed: {ssl_reason(exc)}") from exc
    channel = Channel(stream, _connection(max_frame_bytes), remote=remote, budget=budget, timeout_s=timeout_s)
    try:
        await channel.answer_handshake(channel.connection.hello(**hello), vet)
    except BaseException:
        channel.release_budget()
        raise
    return channel

