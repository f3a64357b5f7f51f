"""The requests every node serves itself: modules, workloads, calls, memory, peers, status.

``HANDLERS`` maps each request class to ``handler(node, session, request)
-> Reply``; ``serve`` joins it with the handlers of the plugins it is given
(``nodes._plugin``).  Blocking Host methods run in worker threads
(``node.run_host``; calls and memory access through ``node.run_call``, the
fair executor); a HostError they raise is answered by the daemon.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple

from . import _host_errors as he
from ._authorization import visible
from ._gossip import MEMBER_HANDLERS, member_maps
from ._in_use import NOT_NOW
from ._workload import WorkloadInfo
from ._messages import (
    Call,
    CallResult,
    Deploy,
    Deployed,
    Done,
    ExportList,
    Exports,
    ExportSignature,
    HasModule,
    Hibernate,
    ListWorkloads,
    MemoryData,
    ModuleStatus,
    ModuleStored,
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
from ._plugin import Handler, Session

if TYPE_CHECKING:
    from ._node import Node

logger = logging.getLogger(__name__)

#: Room a MemoryData reply needs beyond its data (kind, id, field names).
_REPLY_OVERHEAD_BYTES = 1024

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def _summary(info: WorkloadInfo, lifecycle: str = "") -> WorkloadSummary:
    return WorkloadSummary(**dataclasses.asdict(info), lifecycle=lifecycle)


def _visible_workloads(node: Node, session: Session) -> tuple[WorkloadSummary, ...]:
    """The workloads the sender may see (a client certificate: its own tenant's only), as plugins describe them."""
    identity = session.channel.peer_identity
    describers = [p.describe for p in node.plugins if p.describe is not None]
    return tuple(_summary(info, "; ".join(filter(None, (d(node, info.workload_id) for d in describers))))
                 for info in node.host.workloads() if visible(identity, info.app))


def _serving(node: Node, session: Session) -> contextlib.AbstractContextManager[None]:
    """Within it, on this thread, only workloads the sender may use are found (``Registry.serving``)."""
    identity = session.channel.peer_identity
    return node.host.registry.serving(lambda app: visible(identity, app))


async def _for_sender(node: Node, session: Session, func: Callable[[*Ts], T], *args: *Ts,
                      guest: str | None = None) -> T:
    """Run a Host method about one workload in a worker thread, finding only workloads the sender may use.

    ``authorize`` checked the workload's owner when the request came; this
    holds the check when the thread looks the workload up (``Registry.serving``).
    A use of workload ``guest``'s guest (a call, a memory read or write) runs
    on the node's fair call executor; anything else on a plain worker thread.
    """
    def run() -> T:
        with _serving(node, session):
            return func(*args)

    return await (node.run_host(run) if guest is None else node.run_call(guest, run))


async def _has_module(node: Node, session: Session, req: HasModule) -> Reply:
    return ModuleStatus(id=req.id, present=node.host.has_module(req.sha256))


async def _put_module(node: Node, session: Session, req: PutModule) -> Reply:
    node.counters["modules_received"] += 1
    node.counters["module_bytes_received"] += len(req.wasm)
    sha256 = await node.run_host(node.host.add_module, req.wasm)
    return ModuleStored(id=req.id, sha256=sha256)


async def _deploy(node: Node, session: Session, req: Deploy) -> Reply:
    info = await node.run_host(node.host.deploy, req.sha256, workload_id=req.workload_id, app=req.app,
                               args=req.args, env=req.env)
    logger.info("deployed", extra={"workload": info.workload_id, "app": info.app, "peer": session.peer.name})
    return Deployed(id=req.id, workload=_summary(info))


async def _call(node: Node, session: Session, req: Call) -> Reply:
    with _serving(node, session):  # a provably short call: here and now
        now = node.calls.now(req.workload, node.host.call_now, req.workload, req.export, req.args)
    if now is NOT_NOW:
        result = await _for_sender(node, session, node.host.call, req.workload, req.export, req.args,
                                   guest=req.workload)
    else:
        node.counters["calls_inline"] += 1
        result = now
    values = () if result is None else result if isinstance(result, tuple) else (result,)
    return CallResult(id=req.id, values=values)


async def _read_memory(node: Node, session: Session, req: ReadMemory) -> Reply:
    most = session.channel.connection.peer_max_frame_bytes - _REPLY_OVERHEAD_BYTES
    if req.length > most:
        raise he.BadArguments(f"read at most {most} bytes per request, not {req.length}")
    data = await _for_sender(node, session, node.host.read_memory, req.workload, req.offset, req.length,
                             guest=req.workload)
    return MemoryData(id=req.id, data=data)


async def _write_memory(node: Node, session: Session, req: WriteMemory) -> Reply:
    await _for_sender(node, session, node.host.write_memory, req.workload, req.offset, req.data,
                      guest=req.workload)
    return Done(id=req.id)


async def _output(node: Node, session: Session, req: Output) -> Reply:
    stdout, stderr = await _for_sender(node, session, node.host.output, req.workload)
    return OutputData(id=req.id, stdout=stdout, stderr=stderr)


async def _exports(node: Node, session: Session, req: Exports) -> Reply:
    signatures = node.host.registry.get(req.workload).module.signatures  # fixed with the module: no lock
    return ExportList(id=req.id, exports=tuple(
        ExportSignature(name=name, params=sig.params, results=sig.results)
        for name, sig in sorted(signatures.items()) if not name.startswith("__wm_")))


async def _remove(node: Node, session: Session, req: Remove) -> Reply:
    await _for_sender(node, session, node.host.remove, req.workload)
    logger.info("removed", extra={"workload": req.workload, "peer": session.peer.name})
    return Done(id=req.id)


async def _hibernate(node: Node, session: Session, req: Hibernate) -> Reply:
    written = await _for_sender(node, session, node.host.hibernate, req.workload)
    logger.info("hibernated", extra={"workload": req.workload, "peer": session.peer.name, "bytes": written})
    return Done(id=req.id)


async def _list(node: Node, session: Session, req: ListWorkloads) -> Reply:
    return WorkloadList(id=req.id, workloads=_visible_workloads(node, session))


async def _peers(node: Node, session: Session, req: Peers) -> Reply:
    return PeerList(id=req.id, peers=node.peers.summaries())


async def _ping(node: Node, session: Session, req: Ping) -> Reply:
    return Pong(id=req.id, node=node.summary())


async def _status(node: Node, session: Session, req: Status) -> Reply:
    identity = session.channel.peer_identity
    migrations = tuple(r for r in node.plugin_status() if visible(identity, str(r.get("app", ""))))
    return StatusReport(id=req.id, node=node.summary(), workloads=_visible_workloads(node, session),
                        peers=node.peers.summaries(), host=dataclasses.asdict(node.host.stats()),
                        counters=dict(node.counters), migrations=migrations, members=member_maps(node))


HANDLERS: Mapping[type[Request], Handler] = types.MappingProxyType({
    HasModule: _has_module,
    PutModule: _put_module,
    Deploy: _deploy,
    Call: _call,
    ReadMemory: _read_memory,
    WriteMemory: _write_memory,
    Output: _output,
    Exports: _exports,
    Remove: _remove,
    Hibernate: _hibernate,
    ListWorkloads: _list,
    Peers: _peers,
    Ping: _ping,
    Status: _status,
    **MEMBER_HANDLERS,
})
