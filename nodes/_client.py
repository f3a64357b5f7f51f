"""An async client of one node, for the CLI, applications and the migration coordinator.

    async with await NodeClient.connect("127.0.0.1:7400", tls=Path("tls/app")) as node:
        workload = await node.deploy(workloads.load("counter"))
        await node.call(workload.workload_id, "incr", 1)

The client starts no background task.  Whichever caller is waiting for a
reply reads the connection and hands other callers their replies, so many
tasks can share one client and their requests are pipelined on the wire.
One task can pipeline too: ``pipeline`` keeps a window of requests
unanswered and takes their replies in order (bulk transfers use it).
Errors the node reports come back as the class the node's host raised
(``WorkloadTrap``, ``UnknownWorkload``, ...) or ``RemoteNodeError``; a node
that closes the connection because it is shutting down raises
``NodeShuttingDown`` (a ``ConnectionFailed``).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

from ._call_args import CallResults, check_call_args
from ._config import Address, parse_address
from ._error_codes import exception_for
from ._errors import ConfigError, ConnectionFailed, NodeShuttingDown, RemoteProtocolError
from ._member_messages import MemberList, MemberRecord, Members
from ._messages import (Call, CallResult, Deploy, Deployed, ErrorCode, ErrorReply, ExportList, Exports,
    ExportSignature, HasModule, Hello, Hibernate, ListWorkloads, MemoryData, ModuleStatus, ModuleStored, NodeSummary,
    Output, OutputData, PeerList, Peers, PeerSummary, Ping, Pong, PutModule, ReadMemory, Remove, Reply,
    Request, Status, StatusReport, WorkloadList, WorkloadSummary, WriteMemory)
from ._protocol import ConnectionClosed
from ._tls import Identity, client_context, is_loopback, own_identity
from ._transport import Channel, open_channel


#: How long an idle client reads what the node sent unasked before a
#: request (a Goodbye is a few dozen bytes, already received).
GOODBYE_READ_S = 0.5
R = TypeVar("R", bound=Reply)


@dataclass(eq=False)
class _Waiter:
    done: trio.Event
    reply: Reply | None = None
    error: BaseException | None = None


def tls_context(tls: ssl.SSLContext | Path | str | None, address: Address) -> ssl.SSLContext | None:
    """Turn the ``tls`` argument of ``connect`` into a client context.

    A path is a TLS dir; None means plain TCP, which only a loopback address may use.
    Raises ConfigError.
    """
    if tls is None:
        if not is_loopback(address.host):
            raise ConfigError(f"refusing to talk to {address} without TLS: "
                              "plain connections are only for loopback")
        return None
    if isinstance(tls, ssl.SSLContext):
        return tls
    return client_context(Path(tls))


class PendingReply:
    """The reply to a request already sent (``NodeClient.send_request``), to be taken once."""

    def __init__(self, client: NodeClient, request_id: int, waiter: _Waiter) -> None:
        self._client, self._id, self._waiter = client, request_id, waiter

    async def reply(self) -> Reply:
        """Wait for the reply and return it; an ErrorReply is raised as the matching exception.

        Raises ConnectionFailed, RemoteProtocolError, a HostError or RemoteNodeError.
        """
        try:
            await self._client._wait(self._waiter)
        finally:
            self.discard()
        if self._waiter.error is not None:
            raise self._waiter.error
        reply = self._waiter.reply
        assert reply is not None  # done is set with a reply or an error
        if isinstance(reply, ErrorReply):
            raise exception_for(reply)
        return reply

    def discard(self) -> None:
        """Stop waiting for the reply: it is dropped when it arrives."""
        self._client._waiters.pop(self._id, None)


class NodeClient:
    """A connection to one node, with one method per request."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._ids = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self._read_lock = trio.Lock()
        self._failure: BaseException | None = None

    @classmethod
    async def connect(cls, address: Address | str, *, tls: ssl.SSLContext | Path | str | None,
                      name: str | None = None, role: str = "app", capabilities: tuple[str, ...] = (),
                      advertise: str | None = None, max_frame_bytes: int | None = None) -> NodeClient:
        """Connect to the node at ``address`` and exchange Hellos.

        ``tls`` is a TLS dir, an SSLContext, or None for plain TCP (loopback
        only).  ``name`` is the name our Hello gives; the node refuses one
        our certificate does not cover (its commonName or a DNS alternative
        name).  By default it is the commonName of the certificate in a TLS
        dir, and "app" otherwise.  A node calling a peer passes its own
        ``name``, ``role`` and listen address (``advertise``) so the peer
        can call back.  Raises ConfigError, ConnectionFailed or
        RemoteProtocolError.
        """
        address = parse_address(address) if isinstance(address, str) else address
        context = tls_context(tls, address)
        if name is None:
            name = own_identity(Path(tls)).name if isinstance(tls, (str, Path)) else "app"
        channel = await open_channel(
            address, ssl_context=context, max_frame_bytes=max_frame_bytes,
            hello={"name": name, "role": role, "capabilities": capabilities, "address": advertise})
        return cls(channel)

    # --- connection -------------------------------------------------------

    @property
    def node(self) -> str:
        """The connected node's name, from its Hello."""
        return self._channel.peer.name

    @property
    def peer_max_frame_bytes(self) -> int:
        """The largest frame the connected node accepts from us."""
        return self._channel.connection.peer_max_frame_bytes

    @property
    def hello(self) -> Hello:
        """The connected node's Hello: name, role, capabilities, address."""
        return self._channel.peer

    @property
    def node_certificate(self) -> Identity | None:
        """The node's certificate as the TLS handshake showed it: ``role``, ``names``, ``serial``; None without TLS."""
        return self._channel.peer_identity

    async def aclose(self) -> None:
        """Close the connection; pending requests fail with ConnectionFailed."""
        self._fail(ConnectionFailed("the client was closed"))
        await self._channel.aclose()

    async def __aenter__(self) -> NodeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
        for waiter in self._waiters.values():
            if waiter.reply is None and waiter.error is None:
                waiter.error = error
                waiter.done.set()

    # --- requests ---------------------------------------------------------

    async def request(self, kind: type[Request], **fields: Any) -> Reply:
        """Send a ``kind`` request (its id is chosen here) and return the reply.

        This is how other packages send messages they registered.  An
        ErrorReply is raised as the matching exception.
        Raises ConnectionFailed, RemoteProtocolError, a HostError or RemoteNodeError.
        """
        pending = await self.send_request(kind, **fields)
        return await pending.reply()

    async def ask(self, kind: type[Request], answer: type[R], **fields: Any) -> R:
        """``request``, for a ``kind`` whose reply class is ``answer`` (the connection checks replies' classes)."""
        reply = await self.request(kind, **fields)
        if not isinstance(reply, answer):
            raise RemoteProtocolError(f"{kind.__name__} answered by {type(reply).__name__}")
        return reply

    async def send_request(self, kind: type[Request], **fields: Any) -> PendingReply:
        """Send a ``kind`` request and return without waiting for its reply.

        Requests reach the node in the order they were sent.  Take the
        reply with ``PendingReply.reply()``, or ``discard()`` it.  Raises
        ConnectionFailed.
        """
        if not self._waiters and self._channel.has_unread():
            await self._read_unasked()
        if self._failure is not None:
            unusable = NodeShuttingDown if isinstance(self._failure, NodeShuttingDown) else ConnectionFailed
            raise unusable(f"connection to {self._channel.remote} is unusable: {self._failure}")
        request_id = next(self._ids)
        waiter = self._waiters[request_id] = _Waiter(trio.Event())
        try:
            await self._channel.send(kind(id=request_id, **fields))
        except BaseException:
            del self._waiters[request_id]
            raise
        return PendingReply(self, request_id, waiter)

    async def closed_by_node(self) -> bool:
        """True if this connection can no longer be used: the node closed it (say, for being idle) or it broke.

        Reads what the node sent while nobody was reading, as a request
        would; a caller that keeps clients reconnects when this is True.
        """
        if not self._waiters and self._failure is None and self._channel.has_unread():
            await self._read_unasked()
        return self._failure is not None

    async def _read_unasked(self) -> None:
        """Read what the node sent while nobody was reading: a Goodbye, or the end of the stream.

        An idle client reads nothing, so a node that said Goodbye and closed
        is noticed here, before the next write, and a node shutting down
        raises NodeShuttingDown rather than a broken pipe (once its host has
        reset the connection, TLS can no longer read the Goodbye).  Gives up
        after GOODBYE_READ_S, or at once if another task is reading.
        """
        try:
            self._read_lock.acquire_nowait()
        except trio.WouldBlock:
            return
        try:
            with trio.move_on_after(GOODBYE_READ_S):
                while self._failure is None and self._channel.has_unread():
                    await self._read_one()
        finally:
            self._read_lock.release()

    async def pipeline(self, requests: Iterable[tuple[type[Request], dict[str, Any]]], *, window: int,
                       on_reply: Callable[[Reply], bool]) -> None:
        """Send ``requests`` in order, up to ``window`` unanswered, and hand ``on_reply`` their replies in order.

        ``on_reply`` returns True to stop: requests already sent are then
        discarded (their replies are dropped) and no more are taken from
        ``requests``.  The node receives the requests in order but may
        serve them concurrently: a request that depends on the one before it
        must say so (a sequence number the node checks).  Raises what
        ``request`` raises (the first failed reply, in order), or what
        ``on_reply`` raises; either way nothing more is sent.
        """
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window!r}")
        unanswered: collections.deque[PendingReply] = collections.deque()
        try:
            for kind, fields in requests:
                if len(unanswered) == window and on_reply(await unanswered.popleft().reply()):
                    return
                unanswered.append(await self.send_request(kind, **fields))
            while unanswered:
                if on_reply(await unanswered.popleft().reply()):
                    return
        finally:
            for pending in unanswered:
                pending.discard()

    async def _wait(self, waiter: _Waiter) -> None:
        """Read the connection (or let another waiter read it) until ``waiter`` has its reply."""
        while not waiter.done.is_set():
            try:  # uncontended in the common case; skip the scheduler round trip of acquire()
                self._read_lock.acquire_nowait()
            except trio.WouldBlock:
                await self._read_lock.acquire()
            try:
                if not waiter.done.is_set():
                    await self._read_one()
            finally:
                self._read_lock.release()

    async def _read_one(self) -> None:
        """Read one event and hand it to whoever waits for it."""
        try:
            event = await self._channel.receive()
        except (ConnectionFailed, RemoteProtocolError) as exc:
            self._fail(exc)
            return
        if isinstance(event, ConnectionClosed):
            why = f": {event.reason}" if event.reason else ""
            closed = NodeShuttingDown if event.code == ErrorCode.SHUTTING_DOWN else ConnectionFailed
            self._fail(closed(f"{self._channel.remote} closed the connection{why}"))
        elif isinstance(event, Request):  # clients serve nothing
            await self._channel.send(ErrorReply(id=event.id, code=ErrorCode.UNSUPPORTED,
                                                message="this party serves no requests"))
        elif isinstance(event, Reply):  # the Connection lets no Hello through once the handshake is done
            waiter = self._waiters.get(event.id)
            if waiter is not None:  # else its caller was cancelled; drop the reply
                waiter.reply = event
                waiter.done.set()

    # --- modules and workloads ---------------------------------------------

    async def ensure_module(self, wasm: bytes) -> str:
        """Make sure the node holds ``wasm``, sending it only if the node lacks it; return its sha256."""
        sha256 = hashlib.sha256(wasm).hexdigest()
        if not (await self.ask(HasModule, ModuleStatus, sha256=sha256)).present:
            stored = await self.ask(PutModule, ModuleStored, wasm=bytes(wasm))
            if stored.sha256 != sha256:
                raise ConnectionFailed(f"{self.node} stored the module as {stored.sha256}, not {sha256}")
        return sha256

    async def deploy(self, module: bytes | str, *, workload_id: str | None = None, app: str = "",
                     args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> WorkloadSummary:
        """Start a workload from module bytes or the sha256 of a module the node holds.

        ``app`` "" is the certificate's own application (its name; "default"
        for a node certificate); a client certificate named N may also give
        N/NAME.
        """
        sha256 = module if isinstance(module, str) else await self.ensure_module(module)
        reply = await self.ask(Deploy, Deployed, sha256=sha256, workload_id=workload_id, app=app,
                                   args=tuple(args), env=env)
        return reply.workload

    async def call(self, workload: str, export: str, *args: int | float) -> CallResults:
        """Call an export; return None, one value, or a tuple of values (as the host does).

        Raises ``TypeError`` or ``BadArguments`` (a ``ValueError``) before
        sending for arguments no export could take (``nodes._call_args``),
        and the node's errors: ``BadArguments`` for ones this export cannot.
        """
        args = check_call_args(args)
        values = (await self.ask(Call, CallResult, workload=workload, export=export, args=args)).values
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    async def exports(self, workload: str) -> tuple[ExportSignature, ...]:
        """The workload's callable exports: name, parameter and result types, sorted by name."""
        return (await self.ask(Exports, ExportList, workload=workload)).exports

    async def read_memory(self, workload: str, offset: int, length: int) -> bytes:
        return (await self.ask(ReadMemory, MemoryData, workload=workload, offset=offset, length=length)).data

    async def write_memory(self, workload: str, offset: int, data: bytes) -> None:
        await self.request(WriteMemory, workload=workload, offset=offset, data=bytes(data))

    async def output(self, workload: str) -> tuple[bytes, bytes]:
        """Return the workload's captured (stdout, stderr)."""
        reply = await self.ask(Output, OutputData, workload=workload)
        return reply.stdout, reply.stderr

    async def remove(self, workload: str) -> None:
        await self.request(Remove, workload=workload)

    async def hibernate(self, workload: str) -> None:
        """Hibernate the workload now: its state to disk, its memory freed; its next use wakes it."""
        await self.request(Hibernate, workload=workload)

    async def workloads(self) -> tuple[WorkloadSummary, ...]:
        return (await self.ask(ListWorkloads, WorkloadList)).workloads

    async def peers(self) -> tuple[PeerSummary, ...]:
        return (await self.ask(Peers, PeerList)).peers

    async def members(self) -> tuple[MemberRecord, ...]:
        """Every node the node knows (itself first), with its metadata, state and when it was last heard of."""
        return (await self.ask(Members, MemberList)).members

    async def status(self) -> StatusReport:
        return await self.ask(Status, StatusReport)

    async def ping(self) -> tuple[float, NodeSummary]:
        """Return the round-trip time in seconds and the node's current summary."""
        start = trio.current_time()
        reply = await self.ask(Ping, Pong)
        return trio.current_time() - start, reply.node
