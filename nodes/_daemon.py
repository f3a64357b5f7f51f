"""The node daemon: accept connections, serve requests with a Host, know the peers.

``serve(config)`` runs one node.  It restores the workloads checkpointed at
the last clean shutdown, listens, and for every connection finishes TLS and
the Hello exchange, then reads requests and answers each one in its own
task.  Workload operations run in worker threads (``trio.to_thread``); the
Host serialises calls into one workload and runs different workloads in
parallel.

Each connection handles at most ``max_in_flight`` requests at once; the
reader does not take the next frame off the socket until a slot frees, so a
client that floods requests is slowed by TCP instead of growing our
buffers (see ``nodes._transport``).

Requests are dispatched through a table from request class to handler;
``register_handler`` lets the migration coordinator add its own.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from . import _host_errors as he
from ._client import NodeClient
from ._config import NODE_ROLES, Address, NodeConfig, parse_address
from ._error_codes import error_reply
from ._errors import ConfigError, ConnectionFailed, LocalProtocolError, NodeError, RemoteProtocolError
from ._hosting import Host, WorkloadInfo
from ._messages import (
    Call,
    CallResult,
    Deploy,
    Deployed,
    Done,
    ErrorCode,
    ErrorReply,
    HasModule,
    ListWorkloads,
    ModuleStatus,
    ModuleStored,
    NodeSummary,
    MemoryData,
    Output,
    OutputData,
    PeerList,
    Peers,
    Ping,
    Pong,
    PutModule,
    ReadMemory,
    Remove,
    Reply,
    Request,
    Status,
    StatusReport,
    WorkloadList,
    WorkloadSummary,
    WriteMemory,
)
from ._peers import PeerTable, watch_peer
from ._protocol import ConnectionClosed, State
from ._tls import client_context, server_context
from ._transport import Channel, accept_channel

logger = logging.getLogger(__name__)

#: Time a new connection gets to finish TLS and the Hello exchange; a peer
#: that dials and says nothing must not hold a connection open for long.
HANDSHAKE_TIMEOUT_S = 10.0
#: What this node's Hello advertises.
CAPABILITIES = ("wasi", "module-cache", "checkpoint")
#: Room a MemoryData reply needs beyond its data (kind, id, field names).
_REPLY_OVERHEAD_BYTES = 1024


@dataclass(frozen=True)
class Session:
    """One accepted connection, as handlers see it."""

    channel: Channel

    @property
    def peer(self):
        return self.channel.peer


Handler = Callable[["Node", Session, Any], Awaitable[Reply]]
_HANDLERS: dict[type[Request], Handler] = {}


def register_handler(kind: type[Request], handler: Handler) -> None:
    """Serve ``kind`` requests with ``handler(node, session, request) -> Reply``.

    Raises ConfigError if ``kind`` already has a handler.
    """
    if kind in _HANDLERS:
        raise ConfigError(f"{kind.__name__} already has a handler")
    _HANDLERS[kind] = handler


StatusProvider = Callable[["Node"], tuple]
_STATUS_PROVIDERS: list[StatusProvider] = []


def register_status(provider: StatusProvider) -> None:
    """Add ``provider(node) -> tuple of plain records`` to the migrations ``status`` shows."""
    _STATUS_PROVIDERS.append(provider)


def _handles(kind: type[Request]):
    def decorate(func):
        register_handler(kind, func)
        return func
    return decorate


def _summary(info: WorkloadInfo) -> WorkloadSummary:
    return WorkloadSummary(**dataclasses.asdict(info))


def _system_memory() -> tuple[int, int]:
    """Return (total, available) bytes of this machine's memory, (0, 0) if unknown."""
    fields = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                fields[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    return fields.get("MemTotal", 0), fields.get("MemAvailable", 0)


class Node:
    """The state of one running node; ``serve`` creates it."""

    def __init__(self, config: NodeConfig, host: Host, *, address: Address, nursery: trio.Nursery) -> None:
        self.config = config
        self.host = host
        self.address = address
        self.counters: Counter[str] = Counter()
        self.peers = PeerTable()
        self.stopping = False
        self._nursery = nursery
        self._server_ssl = None if config.insecure else server_context(config.tls_path)
        self._client_ssl = None if config.insecure else client_context(config.tls_path)
        self._in_flight = 0
        self._idle = trio.Event()

    # --- identity -------------------------------------------------------

    def hello_fields(self) -> dict[str, Any]:
        return {"name": self.config.name, "role": self.config.role,
                "capabilities": CAPABILITIES, "address": str(self.address)}

    def summary(self) -> NodeSummary:
        total, free = _system_memory()
        return NodeSummary(
            name=self.config.name, role=self.config.role, address=str(self.address),
            cores=os.cpu_count() or 1, memory_total_bytes=total, memory_free_bytes=free,
            load_1m=round(os.getloadavg()[0], 3), workloads=self.host.stats().workloads,
            capabilities=CAPABILITIES)

    # --- peers ----------------------------------------------------------

    def learn_peer(self, address: Address) -> None:
        """Start watching a peer's address unless it is ours or already known."""
        if address == self.address or not self.peers.add(address):
            return
        logger.info("new peer address", extra={"peer_address": str(address)})
        self._nursery.start_soon(functools.partial(
            watch_peer, self.peers, address, connect=self.connect_peer,
            refresh_s=self.config.peer_refresh_s))

    async def connect_peer(self, address: Address) -> NodeClient:
        """Dial a peer as this node (so it learns our name and address)."""
        return await NodeClient.connect(
            address, tls=self._client_ssl, name=self.config.name, role=self.config.role,
            capabilities=CAPABILITIES, advertise=str(self.address),
            max_frame_bytes=self.config.max_frame_bytes)

    # --- connections ----------------------------------------------------

    async def handle_connection(self, tcp: trio.SocketStream) -> None:
        """Serve one accepted TCP connection until it closes or misbehaves."""
        self.counters["connections"] += 1
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                channel = await accept_channel(tcp, ssl_context=self._server_ssl, hello=self.hello_fields(),
                                               max_frame_bytes=self.config.max_frame_bytes)
        except (ConnectionFailed, RemoteProtocolError, trio.TooSlowError) as exc:
            self.counters["connections_rejected"] += 1
            reason = str(exc) or "handshake timed out"
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
        if hello.address and hello.role in NODE_ROLES and may_be_peer:
            try:
                self.learn_peer(parse_address(hello.address))
            except ConfigError:
                logger.warning("peer advertised a bad address %r", hello.address, extra={"peer": hello.name})
        session = Session(channel)
        reason = "closed by peer"
        try:
            await self._read_requests(session)
        except RemoteProtocolError as exc:
            self.counters["protocol_errors"] += 1
            reason = f"protocol error: {exc}"
            logger.warning("connection closed: %s", exc, extra={"peer": hello.name, "remote": channel.remote})
        except ConnectionFailed as exc:
            reason = str(exc)
        finally:
            await channel.aclose(code=ErrorCode.SHUTTING_DOWN if self.stopping else None)
        logger.info("connection closed", extra={"peer": hello.name, "reason": reason})

    async def _read_requests(self, session: Session) -> None:
        limit = self.config.max_in_flight
        slots = trio.Semaphore(limit)
        # Receive errors leave the nursery as themselves, not wrapped in an
        # ExceptionGroup (trio 0.25+ wraps what the nursery body raises), so
        # handle_connection's except clauses see them.
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            while True:
                try:  # back-pressure: no free slot, no read
                    slots.acquire_nowait()  # the common case, without a trip through the scheduler
                except trio.WouldBlock:
                    await slots.acquire()
                try:
                    event = await session.channel.receive()
                except (ConnectionFailed, RemoteProtocolError) as exc:
                    failure = exc
                    break
                if isinstance(event, ConnectionClosed):
                    break
                # The protocol lets only Requests through here: we never send
                # requests on an accepted connection, so any Reply is refused.
                self._in_flight += 1
                in_flight = limit - slots.value
                if in_flight > self.counters["peak_requests_in_flight"]:
                    self.counters["peak_requests_in_flight"] = in_flight
                nursery.start_soon(self._serve_request, session, event, slots)
        if failure is not None:
            raise failure

    async def _serve_request(self, session: Session, request: Request, slots: trio.Semaphore) -> None:
        try:
            reply = await self._answer(session, request)
            try:
                try:
                    await session.channel.send(reply)
                except LocalProtocolError as exc:
                    if session.channel.connection.state is not State.READY:
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
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _answer(self, session: Session, request: Request) -> Reply:
        self.counters["requests"] += 1
        handler = _HANDLERS.get(type(request))
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

    async def run_host(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking Host method in a worker thread."""
        return await trio.to_thread.run_sync(functools.partial(func, *args, **kwargs))

    # --- shutdown -------------------------------------------------------

    async def shut_down(self) -> bool:
        """Refuse new requests, let running ones finish, checkpoint every workload.

        Everything must fit in ``shutdown_grace_s``.  Returns True when every
        workload was checkpointed.
        """
        self.stopping = True
        grace_s = self.config.shutdown_grace_s
        with trio.move_on_after(grace_s) as grace:
            if self._in_flight:
                self._idle = trio.Event()
                await self._idle.wait()
            report = await trio.to_thread.run_sync(self.host.checkpoint_all, self.config.checkpoint_path,
                                                   abandon_on_cancel=True)
        if grace.cancelled_caught:
            logger.error("checkpoint did not finish within the %s s grace period", grace_s)
            return False
        for workload, why in report.failed:
            logger.error("workload not checkpointed: %s", why, extra={"workload": workload})
        logger.info("checkpointed %d workloads", len(report.done),
                    extra={"directory": str(self.config.checkpoint_path)})
        return not report.failed


def _remote(tcp: trio.SocketStream) -> str:
    try:
        host, port = tcp.socket.getpeername()[:2]
        return str(Address(host, port))
    except OSError:
        return "unknown"


def _restore(host: Host, checkpoints: Path) -> None:
    """Bring back the workloads of the last clean shutdown, then retire that checkpoint.

    The restored workloads are the truth from now on; leaving the checkpoint
    in place would let a crash and restart resurrect stale state.  It is
    kept beside, as ``checkpoints.restored``, for an operator to inspect.
    """
    if not checkpoints.exists():
        return
    report = host.restore_all(checkpoints)
    for workload, why in report.failed:
        logger.error("workload not restored: %s", why, extra={"workload": workload})
    logger.info("restored %d workloads", len(report.done), extra={"directory": str(checkpoints)})
    retired = checkpoints.with_name(checkpoints.name + ".restored")
    shutil.rmtree(retired, ignore_errors=True)
    checkpoints.rename(retired)


def _advertised(bound: Address) -> Address:
    if bound.host in ("0.0.0.0", "::"):
        return Address(socket.gethostname(), bound.port)
    return bound


async def serve(config: NodeConfig, *, stop: trio.Event | None = None,
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run a node until cancelled, or until ``stop`` is set.

    ``task_status.started`` gets the Address the node listens on (useful with
    port 0).  When ``stop`` is set the node stops accepting, lets running
    requests finish, checkpoints its workloads into ``DATA_DIR/checkpoints``
    and returns; cancellation stops it without a checkpoint.
    Raises ConfigError for unusable settings or TLS material, OSError if it
    cannot listen, and NodeError if the shutdown checkpoint was incomplete.
    """
    if not config.insecure:
        server_context(config.tls_path)  # fail before touching the data dir
    data_dir = config.data_path
    data_dir.mkdir(parents=True, exist_ok=True)
    host = Host(data_dir, limits=config.limits())
    try:
        await trio.to_thread.run_sync(_restore, host, config.checkpoint_path)
        listeners = await trio.open_tcp_listeners(config.listen.port, host=config.listen.host)
        host_, port = listeners[0].socket.getsockname()[:2]
        bound = Address(host_, port)
        async with trio.open_nursery() as nursery:
            node = Node(config, host, address=_advertised(bound), nursery=nursery)
            accepting = trio.CancelScope()

            async def accept() -> None:
                with accepting:
                    await trio.serve_listeners(node.handle_connection, listeners, handler_nursery=nursery)

            nursery.start_soon(accept)
            for address in config.join:
                node.learn_peer(address)
            logger.info("listening", extra={"address": str(bound), "role": config.role,
                                            "tls": not config.insecure, "data_dir": str(data_dir)})
            task_status.started(bound)
            await (stop.wait() if stop is not None else trio.sleep_forever())
            accepting.cancel()
            complete = await node.shut_down()
            nursery.cancel_scope.cancel()
        if not complete:
            raise NodeError("the shutdown checkpoint is incomplete; see the log")
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(host.close)


# --- request handlers ------------------------------------------------------

@_handles(HasModule)
async def _has_module(node: Node, session: Session, req: HasModule) -> Reply:
    return ModuleStatus(id=req.id, present=node.host.has_module(req.sha256))


@_handles(PutModule)
async def _put_module(node: Node, session: Session, req: PutModule) -> Reply:
    node.counters["modules_received"] += 1
    node.counters["module_bytes_received"] += len(req.wasm)
    sha256 = await node.run_host(node.host.add_module, req.wasm)
    return ModuleStored(id=req.id, sha256=sha256)


@_handles(Deploy)
async def _deploy(node: Node, session: Session, req: Deploy) -> Reply:
    info = await node.run_host(node.host.deploy, req.sha256, workload_id=req.workload_id, app=req.app,
                               args=req.args, env=req.env)
    logger.info("deployed", extra={"workload": info.workload_id, "app": info.app, "peer": session.peer.name})
    return Deployed(id=req.id, workload=_summary(info))


@_handles(Call)
async def _call(node: Node, session: Session, req: Call) -> Reply:
    result = await node.run_host(node.host.call, req.workload, req.export, req.args)
    values = () if result is None else result if isinstance(result, tuple) else (result,)
    return CallResult(id=req.id, values=values)


@_handles(ReadMemory)
async def _read_memory(node: Node, session: Session, req: ReadMemory) -> Reply:
    most = session.channel.connection.peer_max_frame_bytes - _REPLY_OVERHEAD_BYTES
    if req.length > most:
        raise he.BadArguments(f"read at most {most} bytes per request, not {req.length}")
    data = await node.run_host(node.host.read_memory, req.workload, req.offset, req.length)
    return MemoryData(id=req.id, data=data)


@_handles(WriteMemory)
async def _write_memory(node: Node, session: Session, req: WriteMemory) -> Reply:
    await node.run_host(node.host.write_memory, req.workload, req.offset, req.data)
    return Done(id=req.id)


@_handles(Output)
async def _output(node: Node, session: Session, req: Output) -> Reply:
    stdout, stderr = await node.run_host(node.host.output, req.workload)
    return OutputData(id=req.id, stdout=stdout, stderr=stderr)


@_handles(Remove)
async def _remove(node: Node, session: Session, req: Remove) -> Reply:
    await node.run_host(node.host.remove, req.workload)
    logger.info("removed", extra={"workload": req.workload, "peer": session.peer.name})
    return Done(id=req.id)


@_handles(ListWorkloads)
async def _list(node: Node, session: Session, req: ListWorkloads) -> Reply:
    return WorkloadList(id=req.id, workloads=tuple(map(_summary, node.host.workloads())))


@_handles(Peers)
async def _peers(node: Node, session: Session, req: Peers) -> Reply:
    return PeerList(id=req.id, peers=node.peers.summaries())


@_handles(Ping)
async def _ping(node: Node, session: Session, req: Ping) -> Reply:
    return Pong(id=req.id, node=node.summary())


@_handles(Status)
async def _status(node: Node, session: Session, req: Status) -> Reply:
    return StatusReport(id=req.id, node=node.summary(),
                        workloads=tuple(map(_summary, node.host.workloads())),
                        peers=node.peers.summaries(), host=dataclasses.asdict(node.host.stats()),
                        counters=dict(node.counters),
                        migrations=tuple(item for provider in _STATUS_PROVIDERS for item in provider(node)))
