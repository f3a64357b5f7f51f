"""One running node: its identity, peers, connections and requests, and its shutdown checkpoint.

``Node`` answers every accepted connection: it finishes TLS and the Hello
exchange, then reads requests and answers each one in its own task.
Workload operations run in worker threads: calls and memory reads and
writes on the node's fair, bounded executor (``run_call``), the rest on
trio's threads (``run_host``).  ``membership`` is its view of the cluster
(``nodes._gossip``), exchanged with each peer after its ping.

Connections are bounded (``nodes._transport``, ``nodes._budget``): at most
``max_in_flight`` requests each (the reader takes no frame off the socket
until a slot frees), ``max_connections`` at once, ``inbound_buffer_bytes``
buffered by all together, ``hello_timeout_s`` for TLS and the Hello, and
``idle_timeout_s`` of stalling.  Connections from nodes (a node
certificate and a node role in the Hello) are not closed for being idle:
standby feeds and moves keep connections they may not use for minutes.
With ``--insecure`` every address a node would dial or learn passes
``NodeConfig.dial_refusal`` (loopback only), in ``learn_peer`` and
``connect_peer``.

Every connection is checked once before it is served, and every request
before its handler runs (``nodes._authorization``): the Hello name must be
one the peer's certificate covers, and a request its certificate's role
(or tenant) may not send is answered ``forbidden``.  The certificate and
the revocation list are reloaded at run time (``nodes._credentials``);
``close_revoked`` closes connections whose certificate was revoked.

Requests are dispatched through one table of timed handlers (``nodes._metrics``):
the node's own (``nodes._handlers``) and its plugins' (``nodes._plugin``).  A plugin also keeps per-node state
(``plugin_state``), starts background tasks in the node's nursery
(``start_soon``, ``start``), adds to ``status`` and saves its records of
each workload with the shutdown checkpoint (``shut_down``).
"""

from __future__ import annotations

import functools
import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

import trio

from . import _host_errors as he
from ._at_rest import load_data_key
from ._authorization import authorize, hello_refusal
from ._budget import ByteBudget
from ._call_executor import CallExecutor, P, T
from ._checkpoint_format import BulkReport
from ._client import NodeClient
from ._config import NODE_ROLES, Address, NodeConfig, parse_address
from ._credentials import Connections, Credentials
from ._error_codes import error_reply
from ._errors import ConfigError, ConnectionFailed, LocalProtocolError, RemoteProtocolError
from ._gossip import exchange
from ._handlers import HANDLERS
from ._shutdown import shut_down
from ._hosting import Host
from ._limits import system_memory
from ._metrics import timed_table
from ._messages import ErrorCode, ErrorReply, NodeSummary, Reply, Request
from ._membership import Membership
from ._peers import PeerTable, watch_peer
from ._plugin import Plugin, Session
from ._protocol import ConnectionClosed, State
from ._transport import Channel, accept_channel

logger = logging.getLogger(__name__)

CAPABILITIES = ("wasi", "module-cache", "checkpoint")  # what this node's Hello advertises


class Node:
    """The state of one running node; ``serve`` creates it."""

    def __init__(self, config: NodeConfig, host: Host, plugins: Sequence[Plugin] = ()) -> None:
        self.config = config
        self.host = host
        self.plugins = tuple(plugins)
        self._handlers, self.request_times = timed_table(HANDLERS, self.plugins)  # timed for /metrics
        self.address: Address | None = None  # set by ``serving``
        self.counters: Counter[str] = Counter()
        self.peers = PeerTable()
        self.membership: Membership | None = None  # made by serve once the node listens (nodes._gossip)
        self.stopping = False
        self._nursery: trio.Nursery | None = None
        # Reloaded at run time (nodes._credentials); None without TLS.
        self.credentials = None if config.insecure else Credentials(config.tls_path, config.revoked_path)
        self.connections = Connections()  # open ones, by certificate: for close_revoked
        # The name we give in Hellos when we dial: peers accept only a name our certificate covers.
        self._dial_name = config.name
        if self.credentials is not None and config.name not in self.credentials.identity.names:
            self._dial_name = self.credentials.identity.name
        self.data_key = load_data_key(config.data_key_path)  # checkpoints are sealed with it
        self._busy: Counter[str] = Counter()  # requests running, by the workload they name ("" for none)
        self._idle = trio.Event()
        self.calls = CallExecutor(config.call_workers)
        self.inbound = ByteBudget(config.inbound_buffer_bytes)
        self._connections = 0
        self._states = {p.name: p.state(self) for p in self.plugins if p.state is not None}

    def serving(self, address: Address, nursery: trio.Nursery) -> None:
        """Start serving: the address peers are told, and the nursery that runs background tasks."""
        self.address = address
        self._nursery = nursery

    # --- plugins --------------------------------------------------------

    def plugin_state(self, name: str) -> Any:
        """The per-node state of plugin ``name`` (made by its ``state`` factory).  Raises KeyError."""
        try:
            return self._states[name]
        except KeyError:
            raise KeyError(f"{self.config.name} has no state of a plugin {name!r}") from None

    def plugin_status(self) -> tuple[dict[str, Any], ...]:
        """What every plugin adds to ``status``, in the order of the plugins."""
        return tuple(item for p in self.plugins if p.status is not None for item in p.status(self))

    def start_soon(self, func: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``func(*args)`` as a background task of the node; it is cancelled when the node stops."""
        self._running().start_soon(func, *args)

    async def start(self, func: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Start ``func(*args, task_status=...)`` as a background task; return what it passes to ``started``."""
        return await self._running().start(func, *args)

    def _running(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError(f"{self.config.name} is not serving yet: no background tasks")
        return self._nursery

    # --- identity -------------------------------------------------------

    def hello_fields(self) -> dict[str, Any]:
        return {"name": self.config.name, "role": self.config.role,
                "capabilities": CAPABILITIES, "address": str(self.address)}

    def summary(self) -> NodeSummary:
        total, free = system_memory()
        return NodeSummary(
            name=self.config.name, role=self.config.role, address=str(self.address),
            cores=os.cpu_count() or 1, memory_total_bytes=total, memory_free_bytes=free,
            load_1m=round(os.getloadavg()[0], 3), workloads=self.host.stats().workloads,
            capabilities=CAPABILITIES)

    # --- peers ----------------------------------------------------------

    def learn_peer(self, address: Address) -> None:
        """Start watching a peer's address unless it is ours, already known, or one we may not dial."""
        refused = self.config.dial_refusal(address)
        if refused is not None:
            self.counters["peers_refused"] += 1
            logger.warning("peer address refused", extra={"peer_address": str(address), "reason": refused})
            return
        if address == self.address or not self.peers.add(address):
            return
        logger.info("new peer address", extra={"peer_address": str(address)})
        self.start_soon(functools.partial(watch_peer, self.peers, address, connect=self.connect_peer,
                                          refresh_s=self.config.peer_refresh_s, exchange=functools.partial(exchange, self)))

    async def connect_peer(self, address: Address) -> NodeClient:
        """Dial a peer as this node (so it learns our name and address).

        Raises ConnectionFailed if it cannot, or its certificate is revoked, or this node may not dial
        ``address``.
        """
        refused = self.config.dial_refusal(address)
        if refused is not None:
            self.counters["peers_refused"] += 1
            raise ConnectionFailed(refused)
        client = await NodeClient.connect(
            address, tls=self.credentials.client if self.credentials else None, name=self._dial_name,
            role=self.config.role, capabilities=CAPABILITIES, advertise=str(self.address),
            max_frame_bytes=self.config.max_frame_bytes)
        if self.credentials is not None:
            revoked = self.credentials.revoked.refusal(client.node_certificate)
            if revoked is not None:
                await client.aclose()
                raise ConnectionFailed(f"{address}: {revoked}")
            self.connections.dialled(client)
        return client

    # --- connections ----------------------------------------------------

    async def handle_connection(self, tcp: trio.SocketStream) -> None:
        """Serve one accepted TCP connection until it closes or misbehaves."""
        self.counters["connections"] += 1
        if self._connections >= self.config.max_connections:
            self.counters["connections_refused"] += 1
            logger.warning("connection refused: %d connections already open (max_connections)",
                           self._connections, extra={"remote": _remote(tcp)})
            await trio.aclose_forcefully(tcp)
            return
        self._connections += 1
        try:
            await self._handle_connection(tcp)
        finally:
            self._connections -= 1

    async def _handle_connection(self, tcp: trio.SocketStream) -> None:
        config = self.config
        try:
            with trio.fail_after(config.hello_timeout_s):
                channel = await accept_channel(tcp, ssl_context=self.credentials.server if self.credentials else None,
                                               hello=self.hello_fields(), max_frame_bytes=config.max_frame_bytes,
                                               vet=self._vet, budget=self.inbound, timeout_s=config.idle_timeout_s)
        except (ConnectionFailed, RemoteProtocolError, trio.TooSlowError) as exc:
            self.counters["connections_rejected"] += 1
            reason = str(exc) or f"no Hello within {config.hello_timeout_s} s"
            logger.warning("connection rejected: %s", reason, extra={"remote": _remote(tcp)})
            await trio.aclose_forcefully(tcp)
            return
        hello = channel.peer
        certificate = channel.peer_certificate
        logger.info("connection open", extra={"peer": hello.name, "peer_role": hello.role,
                                              "certificate": certificate and certificate.get("commonName"),
                                              "remote": channel.remote})
        # Only a holder of a node certificate may make us dial an address it names.
        may_be_peer = certificate is None or certificate.get("organizationalUnitName") == "node"
        channel.close_when_idle = not (hello.role in NODE_ROLES and may_be_peer)
        if hello.address and hello.role in NODE_ROLES and may_be_peer:
            try:
                self.learn_peer(parse_address(hello.address))
            except ConfigError:
                logger.warning("peer advertised a bad address %r", hello.address, extra={"peer": hello.name})
        session = Session(channel)
        reason = "closed by peer"
        revoked = None
        try:
            with self.connections.served(channel.peer_identity,  # cancelled by close_revoked
                                         self.credentials.revoked if self.credentials else None) as scope:
                await self._read_requests(session)
            if scope.cancelled_caught and self.credentials is not None:  # only a revocation cancels it
                reason = revoked = self.credentials.revoked.refusal(channel.peer_identity) or "certificate revoked"
        except RemoteProtocolError as exc:
            self.counters["protocol_errors"] += 1
            reason = f"protocol error: {exc}"
            logger.warning("connection closed: %s", exc, extra={"peer": hello.name, "remote": channel.remote})
        except ConnectionFailed as exc:
            self.counters["connections_timed_out" if channel.timed_out else "connections_broken"] += 1
            reason = str(exc)
            if channel.timed_out:
                logger.warning("connection closed: %s", exc, extra={"peer": hello.name, "remote": channel.remote})
        finally:
            # Shielded: at shutdown this task is cancelled, and the Goodbye
            # tells clients the node is stopping (not crashed); at most 1 s.
            with trio.CancelScope(shield=True):
                await channel.aclose(code=ErrorCode.FORBIDDEN if revoked else
                                     ErrorCode.SHUTTING_DOWN if self.stopping else None,
                                     reason=revoked or (reason if channel.timed_out else ""))
        logger.info("connection closed", extra={"peer": hello.name, "reason": reason})

    def _vet(self, channel: Channel) -> str | None:
        """Why the peer's Hello may not be accepted (a revoked certificate, or not its name); None if it may."""
        if self.credentials is None:
            return None
        return hello_refusal(channel.peer, channel.peer_identity, self.credentials.revoked)

    def close_revoked(self) -> None:
        """Close every open connection, served or dialled, whose certificate the revocation list now names."""
        if self.credentials is not None:
            self.counters["connections_revoked"] += self.connections.close_revoked(self.credentials.revoked,
                                                                                   self.start_soon)

    async def _read_requests(self, session: Session) -> None:
        # The task that reads a request serves it, once it has started the task that reads the next: a
        # call is served without a pass through the scheduler first (25 us of a 240 us call through a
        # handle).  Receive errors leave as themselves, not in an ExceptionGroup, for handle_connection.
        failure: list[Exception] = []
        async with trio.open_nursery() as nursery:
            await self._read_next(session, trio.Semaphore(self.config.max_in_flight), nursery, failure)
        if failure:
            raise failure[0]

    async def _read_next(self, session: Session, slots: trio.Semaphore, nursery: trio.Nursery,
                         failure: list[Exception]) -> None:
        try:  # back-pressure: no free slot, no read
            slots.acquire_nowait()  # the common case, without a trip through the scheduler
        except trio.WouldBlock:
            await slots.acquire()
        try:
            event = await session.channel.receive()
        except (ConnectionFailed, RemoteProtocolError) as exc:
            failure.append(exc)
            return
        if isinstance(event, ConnectionClosed):
            return
        assert isinstance(event, Request)  # we send no requests here: the protocol refuses any Reply
        if self.inbound.peak > self.counters["inbound_peak_bytes"]:
            self.counters["inbound_peak_bytes"] = self.inbound.peak
        if (in_flight := self.config.max_in_flight - slots.value) > self.counters["peak_requests_in_flight"]:
            self.counters["peak_requests_in_flight"] = in_flight
        nursery.start_soon(self._read_next, session, slots, nursery, failure)
        await self._serve_request(session, event, slots)

    async def _serve_request(self, session: Session, request: Request, slots: trio.Semaphore) -> None:
        named = getattr(request, "workload", "")
        busy = named if isinstance(named, str) else ""
        self._busy[busy] += 1
        try:
            reply = await self._answer(session, request)
            try:
                try:
                    await session.channel.send(reply)
                except LocalProtocolError as exc:
                    if session.channel.connection.state not in (State.READY, State.PARTING):
                        return  # the connection closed while the request ran: nobody to answer
                    # A handler answered with the wrong reply class: a bug on
                    # this node, which must cost one request, not the node.
                    self.counters["internal_errors"] += 1
                    logger.error("bad reply to %s: %s", request.kind, exc, extra={"peer": session.peer.name})
                    await session.channel.send(ErrorReply(id=request.id, code=ErrorCode.INTERNAL,
                                                          message=f"internal error on {self.config.name}"))
            except ConnectionFailed:
                pass  # the reader sees the broken connection and ends it
        finally:
            slots.release()
            self._busy[busy] -= 1
            if not self._busy[busy]:
                del self._busy[busy]
                if not self._busy:
                    self._idle.set()

    async def _answer(self, session: Session, request: Request) -> Reply:
        self.counters["requests"] += 1
        checked = authorize(request, session.channel.peer_identity, self.host.registry.owner)
        if isinstance(checked, ErrorReply):
            self.counters["forbidden"] += 1
            logger.warning("forbidden: %s", checked.message, extra={"peer": session.peer.name})
            return checked
        request = checked
        handler = self._handlers.get(type(request))
        if handler is None:
            return ErrorReply(id=request.id, code=ErrorCode.UNSUPPORTED,
                              message=f"{self.config.name} does not serve {request.kind!r}")
        if self.stopping:
            return ErrorReply(id=request.id, code=ErrorCode.SHUTTING_DOWN,
                              message=f"{self.config.name} is shutting down")
        try:
            return await handler(self, session, request)
        except he.HostError as exc:
            self.counters["request_errors"] += 1
            return error_reply(request.id, exc)
        except Exception as exc:  # a bug here must not take the node down
            self.counters["internal_errors"] += 1
            logger.exception("request %s failed", request.kind, extra={"peer": session.peer.name})
            return ErrorReply(id=request.id, code=ErrorCode.INTERNAL,
                              message=f"internal error on {self.config.name}: {type(exc).__name__}")

    async def run_host(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking Host method in a worker thread."""
        return await trio.to_thread.run_sync(functools.partial(func, *args, **kwargs))

    async def run_call(self, workload: Hashable, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking use of a guest on the fair executor, keyed by ``workload`` (or a pool's instance slot)."""
        return await self.calls.run(workload, func, *args, **kwargs)

    # --- shutdown -------------------------------------------------------

    async def requests_done(self) -> None:
        """Return once no request is running (new ones may start meanwhile unless ``stopping``)."""
        while self._busy:
            self._idle = trio.Event()
            await self._idle.wait()

    @property
    def requests_in_flight(self) -> int:
        return sum(self._busy.values())

    @property
    def busy_workloads(self) -> set[str] | None:
        """The workloads running requests name; None if one running names none (it may touch any)."""
        return None if "" in self._busy else set(self._busy)

    async def shut_down(self) -> BulkReport:
        """Refuse new requests, let running ones finish, checkpoint every workload (``nodes._shutdown``)."""
        return await shut_down(self)


def _remote(tcp: trio.SocketStream) -> str:
    try:
        host, port = tcp.socket.getpeername()[:2]
        return str(Address(host, port))
    except OSError:
        return "unknown"
