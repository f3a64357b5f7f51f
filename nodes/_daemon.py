"""The node daemon: accept connections, serve requests with a Host, know the peers.

``serve(config)`` runs one node.  It restores the workloads checkpointed at
the last clean shutdown (``nodes._checkpoints``: a damaged checkpoint stops
the start), listens, and for every connection finishes TLS and
the Hello exchange, then reads requests and answers each one in its own
task.  Workload operations run in worker threads (``trio.to_thread``); the
Host serialises calls into one workload and runs different workloads in
parallel.

Each connection handles at most ``max_in_flight`` requests at once; the
reader does not take the next frame off the socket until a slot frees, so a
client that floods requests is slowed by TCP instead of growing our
buffers (see ``nodes._transport``).

Requests are dispatched through a table from request class to handler;
``register_handler`` lets the migration coordinator add its own, and
``register_checkpoint_extension`` lets it save its records of each workload
(epoch, call ledger) with the shutdown checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from . import _checkpoints as checkpoints
from . import _host_errors as he
from ._client import NodeClient
from ._config import NODE_ROLES, Address, NodeConfig, parse_address
from ._error_codes import error_reply
from ._errors import (
    CheckpointFailed,
    ConfigError,
    ConnectionFailed,
    DamagedState,
    LocalProtocolError,
    RemoteProtocolError,
)
from ._hosting import BulkReport, Host, WorkloadInfo
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


@dataclass(frozen=True)
class CheckpointExtension:
    """Records another package keeps about workloads, saved with SIGTERM's checkpoint."""

    name: str
    save: Callable[["Node", str], dict | None]
    load: Callable[["Node", str, dict], None]
    save_node: Callable[["Node"], dict] | None = None
    load_node: Callable[["Node", dict], None] | None = None
    resume: Callable[["Node"], Awaitable[None]] | None = None


_CHECKPOINT_EXTENSIONS: dict[str, CheckpointExtension] = {}


def register_checkpoint_extension(name: str, *, save: Callable[["Node", str], dict | None],
                                  load: Callable[["Node", str, dict], None],
                                  save_node: Callable[["Node"], dict] | None = None,
                                  load_node: Callable[["Node", dict], None] | None = None,
                                  resume: Callable[["Node"], Awaitable[None]] | None = None) -> None:
    """Save records of each workload with the shutdown checkpoint and load them at the next start.

    At shutdown, once requests have stopped, ``save(node, workload_id)``
    returns the workload's record (a dict of msgpack-able values), ``{}``
    for none, or None to leave the workload out of the checkpoint (it must
    not come back: a copy this node does not own).  At the next start,
    after the workloads are restored and before anything is served,
    ``load(node, workload_id, record)`` gets each saved record back, in a
    worker thread; it raises ValueError for a malformed record, which
    refuses the start.  ``save_node`` and ``load_node`` do the same for a
    record of the node as a whole.  ``await resume(node)`` runs once the
    node has its nursery (``node._nursery``) and before it accepts
    requests, to start again background work the records describe.
    Raises ConfigError if ``name`` is taken.
    """
    if name in _CHECKPOINT_EXTENSIONS:
        raise ConfigError(f"checkpoint extension {name!r} is already registered")
    _CHECKPOINT_EXTENSIONS[name] = CheckpointExtension(name, save, load, save_node, load_node, resume)


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

    def __init__(self, config: NodeConfig, host: Host) -> None:
        self.config = config
        self.host = host
        self.address: Address | None = None  # set by ``serving``
        self.counters: Counter[str] = Counter()
        self.peers = PeerTable()
        self.stopping = False
        self._nursery: trio.Nursery | None = None
        self._server_ssl = None if config.insecure else server_context(config.tls_path)
        self._client_ssl = None if config.insecure else client_context(config.tls_path)
        self._in_flight = 0
        self._idle = trio.Event()

    def serving(self, address: Address, nursery: trio.Nursery) -> None:
        """Start serving: the address peers are told, and the nursery that runs background tasks."""
        self.address = address
        self._nursery = nursery

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
            # Shielded: at shutdown this task is cancelled, and the Goodbye
            # tells clients the node is stopping (not crashed); at most 1 s.
            with trio.CancelScope(shield=True):
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

    async def shut_down(self) -> BulkReport:
        """Refuse new requests, let running ones finish, checkpoint every workload.

        Everything must fit in ``shutdown_grace_s``.  The checkpoint replaces
        the previous one only once it is complete (``nodes._checkpoints``).
        Raises CheckpointFailed, saying what failed and where, when no
        checkpoint was saved or some workloads could not be captured.
        """
        self.stopping = True
        grace_s = self.config.shutdown_grace_s
        deadline = time.monotonic() + grace_s
        with trio.move_on_after(grace_s):
            while self._in_flight:
                self._idle = trio.Event()
                await self._idle.wait()
        if self._in_flight:
            raise checkpoints.failure(self.config.data_path, f"{self._in_flight} requests were still running "
                                                             f"after the {grace_s} s grace period")
        records, leave_out, node_records = self._checkpoint_records()
        report = await trio.to_thread.run_sync(functools.partial(
            checkpoints.save, self.host, self.config.data_path, records=records, leave_out=leave_out,
            node_records=node_records, deadline=deadline))
        for workload, why in report.failed:
            logger.error("workload not checkpointed: %s", why, extra={"workload": workload})
        logger.info("checkpointed %d workloads", len(report.done),
                    extra={"directory": str(self.config.checkpoint_path)})
        if report.failed:
            raise CheckpointFailed(
                f"the shutdown checkpoint {self.config.checkpoint_path} left out {len(report.failed)} workloads "
                f"it could not capture ({', '.join(w for w, _ in report.failed)}); the other "
                f"{len(report.done)} are saved")
        return report

    def _checkpoint_records(self) -> tuple[dict[str, dict], set[str], dict[str, dict]]:
        """Ask every checkpoint extension for its records: (per workload, workloads left out, node's)."""
        records: dict[str, dict] = {}
        leave_out: set[str] = set()
        for info in self.host.workloads():
            for extension in _CHECKPOINT_EXTENSIONS.values():
                record = extension.save(self, info.workload_id)
                if record is None:
                    leave_out.add(info.workload_id)
                    logger.info("not checkpointed: this node does not own it",
                                extra={"workload": info.workload_id, "extension": extension.name})
                    break
                if record:
                    records.setdefault(info.workload_id, {})[extension.name] = record
        node_records = {e.name: e.save_node(self) for e in _CHECKPOINT_EXTENSIONS.values() if e.save_node}
        return records, leave_out, node_records


def _remote(tcp: trio.SocketStream) -> str:
    try:
        host, port = tcp.socket.getpeername()[:2]
        return str(Address(host, port))
    except OSError:
        return "unknown"


def _open_node(config: NodeConfig) -> tuple[Node, checkpoints.Saved]:
    """Make the node and restore the last checkpoint into it; blocking.

    With ``discard_state``, damaged saved state is set aside and the node
    starts empty.  Nothing on disk changes here (``checkpoints.retire``
    follows once the node listens).
    Raises DamagedState (the start is refused) or ConfigError.
    """
    data_dir = config.data_path
    try:
        saved = checkpoints.find(data_dir)
        node = Node(config, _host(config))
        try:
            _load_records(node, checkpoints.restore(node.host, saved))
        except BaseException:
            node.host.close()
            raise
    except DamagedState as exc:
        if Path(exc.path) == data_dir:
            raise  # nothing in it can be read, so nothing can be set aside
        if not config.discard_state:
            raise DamagedState(exc.path, f"{exc}; repair it, or start with --discard-state to set the "
                                         "saved state aside and start empty") from exc
        logger.error("saved state is damaged: %s", exc, extra={"path": exc.path})
        checkpoints.discard(data_dir, exc)
        return Node(config, _host(config)), checkpoints.Saved(data_dir)
    return node, saved


def _host(config: NodeConfig) -> Host:
    try:
        config.data_path.mkdir(parents=True, exist_ok=True)
        return Host(config.data_path, limits=config.limits())
    except OSError as exc:
        raise ConfigError(f"cannot use the data directory {config.data_path}: "
                          f"{exc.filename or config.data_path}: {exc.strerror}") from None


def _load_records(node: Node, restored: checkpoints.Restored) -> None:
    """Give every checkpoint extension its saved records back.  Raises DamagedState."""
    def damaged(what: str, exc: Exception) -> DamagedState:
        return DamagedState(restored.manifest_path, f"checkpoint manifest {restored.manifest_path}: {what} is "
                                                    f"malformed: {exc}")

    for name, record in restored.node_records.items():
        extension = _CHECKPOINT_EXTENSIONS.get(name)
        if extension is None or extension.load_node is None:
            logger.warning("dropping the node's %s record: nothing loads it", name)
            continue
        try:
            extension.load_node(node, record)
        except (ValueError, TypeError, he.HostError) as exc:
            raise damaged(f"the node's {name} record", exc) from exc
    for workload, records in restored.records.items():
        for name, record in records.items():
            extension = _CHECKPOINT_EXTENSIONS.get(name)
            if extension is None:
                logger.warning("dropping the workload's %s record: nothing loads it", name,
                               extra={"workload": workload})
                continue
            try:
                extension.load(node, workload, record)
            except (ValueError, TypeError, he.HostError) as exc:
                raise damaged(f"the {name} record of workload {workload}", exc) from exc


async def _listen(config: NodeConfig) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(config.listen.port, host=config.listen.host)
    except OSError as exc:  # the address is in use, or not ours: a setting to fix
        raise ConfigError(f"cannot listen on {config.listen}: {exc.strerror or exc}") from None


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
    Raises ConfigError for unusable settings or TLS material or a busy
    address, DamagedState (a ConfigError) for saved state it will not start
    from, and CheckpointFailed if the shutdown checkpoint failed.
    """
    if not config.insecure:
        server_context(config.tls_path)  # fail before touching the data dir
    node, saved = await trio.to_thread.run_sync(_open_node, config)
    try:
        listeners = await _listen(config)
        try:  # only now, with the address ours, are the restored workloads the truth
            await trio.to_thread.run_sync(checkpoints.retire, saved)
        except BaseException:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            raise
        host_, port = listeners[0].socket.getsockname()[:2]
        bound = Address(host_, port)
        async with trio.open_nursery() as nursery:
            node.serving(_advertised(bound), nursery)
            accepting = trio.CancelScope()

            async def accept() -> None:
                with accepting:
                    await trio.serve_listeners(node.handle_connection, listeners, handler_nursery=nursery)

            for extension in _CHECKPOINT_EXTENSIONS.values():  # before any request is served
                if extension.resume is not None:
                    await extension.resume(node)
            nursery.start_soon(accept)
            for address in config.join:
                node.learn_peer(address)
            logger.info("listening", extra={"address": str(bound), "role": config.role,
                                            "tls": not config.insecure, "data_dir": str(config.data_path)})
            task_status.started(bound)
            await (stop.wait() if stop is not None else trio.sleep_forever())
            accepting.cancel()
            try:
                await node.shut_down()
            except CheckpointFailed as exc:
                logger.error("%s", exc)
                raise
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(node.host.close)


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
