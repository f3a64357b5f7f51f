"""The node side of live migration: ownership, exactly-once calls, moving.

Importing this module registers its handlers with the node daemon
(``nodes.register_handler``); ``migrate-node serve`` imports it.

Per node, ``MigrationService`` keeps:

* ``owned``: the migratable workloads this node owns, each with its
  ownership epoch (the fencing token), its call ledger and a FIFO lock that
  orders calls.  A migration freezes a workload by taking that lock, so
  calls that arrive meanwhile queue in arrival order;
* ``moved``: tombstones of workloads that left, so late calls are told
  where to go (an ``MResult`` naming the new owner) and never run here again;
* ``incoming``: workloads being received, not yet callable.

The commit point of a move is the target taking ownership (``MCommit``).
The source redirects its queued calls only after it has seen
the target's ``MCommitted``, so no handle reaches the target before the
commit and no call can run on both sides.
"""

from __future__ import annotations

import collections
import logging
import os
import time
import uuid
from dataclasses import dataclass, field

import trio

import snapshot
from nodes import ConnectionFailed, NodeError, RemoteNodeError, register_handler, register_status
from nodes import _host_errors as he
from nodes._config import parse_address
from nodes._error_codes import code_for, error_reply
from nodes._messages import Done, ErrorCode, ErrorReply

from ._ledger import CallLedger, Outcome
from ._messages import (
    MAbort,
    MCall,
    MChunk,
    MCommit,
    MCommitted,
    MIncoming,
    MLocate,
    MMigrate,
    MReport,
    MResult,
    MSpawn,
    MSpawned,
    MWhere,
    ReportRecord,
)
from ._precopy import Action, PrecopyConfig, PrecopyPlanner

logger = logging.getLogger(__name__)

#: Bytes of encoded snapshot per MChunk.  Framing and TLS encryption of a
#: chunk run on the node's event loop; 1 MiB keeps each such step to about a
#: millisecond, so calls keep flowing while a round is sent.
CHUNK_BYTES = 1 * 2**20
STRATEGIES = ("precopy", "stop-copy")

#: Crash testing: a node started with MIGRATE_NODE_CRASH_AT=<phase> dies at
#: once, as SIGKILL would kill it, when a migration reaches <phase>.  The
#: failure tests use it to kill real nodes at each phase of a move.
CRASH_PHASES = ("target:chunk", "target:before-commit", "target:after-commit",
                "source:frozen", "source:after-commit")


def _crash_point(phase: str) -> None:
    if os.environ.get("MIGRATE_NODE_CRASH_AT") == phase:
        logger.critical("crashing at %s (MIGRATE_NODE_CRASH_AT)", phase)
        os._exit(137)


@dataclass
class Owned:
    """A migratable workload this node owns."""

    workload: str
    epoch: int
    ledger: CallLedger = field(default_factory=CallLedger)
    lock: trio.Lock = field(default_factory=trio.Lock)  # FIFO: calls run in arrival order
    throttle: float = 0.0
    migrating: bool = False
    moved: "Tombstone | None" = None


@dataclass(frozen=True)
class Tombstone:
    to_name: str
    to_address: str
    epoch: int


@dataclass
class Incoming:
    """A workload being received from ``source``."""

    workload: str
    module_sha256: str
    app: str
    epoch: int
    source: str
    decoder: snapshot.SnapshotDecoder = field(default_factory=snapshot.SnapshotDecoder)
    assembler: snapshot.SnapshotAssembler = field(default_factory=snapshot.SnapshotAssembler)
    rounds: int = 0
    created: bool = False
    lock: trio.Lock = field(default_factory=trio.Lock)


class MigrationError(NodeError):
    """A migration was refused or aborted; the workload stayed where it was."""


class MigrationService:
    """Migration state of one node."""

    def __init__(self, node) -> None:
        self.node = node
        self.owned: dict[str, Owned] = {}
        self.moved: dict[str, Tombstone] = {}
        self.incoming: dict[str, Incoming] = {}
        self.active: dict[str, "Migration"] = {}
        self.recent: collections.deque[dict] = collections.deque(maxlen=20)

    def status(self) -> tuple[dict, ...]:
        """Moves under way, incoming and the most recent finished ones, for ``status``."""
        out = [{"workload": m.workload, "state": "outgoing", "target": str(m.target),
                "strategy": m.req.strategy, "rounds": m.rounds, "bytes_sent": m.bytes_sent}
               for m in self.active.values()]
        out += [{"workload": i.workload, "state": "incoming", "source": i.source, "rounds": i.rounds}
                for i in self.incoming.values()]
        return tuple(out) + tuple(self.recent)

    def owner_of(self, workload: str) -> Owned | None:
        owned = self.owned.get(workload)
        if owned is None and workload not in self.moved and workload not in self.incoming:
            # Restored from a checkpoint after a restart: adopt it.  The
            # ledger did not survive the restart (see the README's limits).
            try:
                self.node.host.info(workload)
            except he.HostError:
                return None
            owned = self.owned[workload] = Owned(workload, epoch=1)
        return owned


def service(node) -> MigrationService:
    svc = getattr(node, "_migration", None)
    if svc is None:
        svc = node._migration = MigrationService(node)
    return svc


def _moved_reply(request_id: int, workload: str, stone: Tombstone) -> MResult:
    return MResult(id=request_id, epoch=stone.epoch, moved_to=stone.to_name, moved_address=stone.to_address)


def _not_owner(request_id: int, node, workload: str) -> ErrorReply:
    return ErrorReply(id=request_id, code=ErrorCode.NOT_OWNER,
                      message=f"{node.config.name} does not own workload {workload!r}",
                      details={"workload_id": workload})


# --- handle -> owner ------------------------------------------------------

async def on_spawn(node, session, req: MSpawn) -> MSpawned:
    workload = req.workload or f"w-{uuid.uuid4().hex[:12]}"
    info = await node.run_host(node.host.deploy, req.module_sha256, workload_id=workload, app=req.app)
    svc = service(node)
    svc.moved.pop(info.workload_id, None)
    svc.owned[info.workload_id] = Owned(info.workload_id, epoch=1)
    logger.info("spawned migratable workload", extra={"workload": info.workload_id, "app": req.app})
    return MSpawned(id=req.id, workload=info.workload_id, epoch=1)


def _result(request_id: int, outcome: Outcome, epoch: int, replayed: bool):
    if not outcome.ok:
        return ErrorReply(id=request_id, code=ErrorCode(outcome.code), message=outcome.message,
                          details=outcome.value or None)
    values, data = outcome.value
    return MResult(id=request_id, values=tuple(values), data=data, epoch=epoch, replayed=replayed)


async def on_call(node, session, req: MCall):
    svc = service(node)
    owned = svc.owner_of(req.workload)
    if owned is None:
        stone = svc.moved.get(req.workload)
        if stone is not None:
            return _moved_reply(req.id, req.workload, stone)
        return _not_owner(req.id, node, req.workload)
    async with owned.lock:
        if owned.moved is not None:
            return _moved_reply(req.id, req.workload, owned.moved)
        ledger = owned.ledger
        if req.ack >= 0:
            ledger.acknowledge(req.caller, req.ack)
        previous = ledger.lookup(req.caller, req.seq)
        if previous is not None:
            node.counters["calls_replayed"] += 1
            return _result(req.id, previous, owned.epoch, replayed=True)
        if ledger.was_forgotten(req.caller, req.seq):
            return ErrorReply(id=req.id, code=ErrorCode.BAD_REQUEST,
                              message=f"call {req.caller}:{req.seq} was already answered and acknowledged")
        started = time.perf_counter()
        outcome = await _run(node, req)
        ledger.record(req.caller, req.seq, outcome)
        if req.op == "remove" and outcome.ok:
            svc.owned.pop(req.workload, None)
        if owned.throttle:
            # Auto-converge: hold the workload idle for a share of its time.
            took = time.perf_counter() - started
            await trio.sleep(took * owned.throttle / (1 - owned.throttle))
        return _result(req.id, outcome, owned.epoch, replayed=False)


async def _run(node, req: MCall) -> Outcome:
    host = node.host
    try:
        if req.op == "call":
            result = await node.run_host(host.call, req.workload, req.export, req.args)
            values = () if result is None else (result if isinstance(result, tuple) else (result,))
            return Outcome(True, (list(values), b""))
        if req.op == "read":
            data = await node.run_host(host.read_memory, req.workload, req.offset, req.length)
            return Outcome(True, ([], data))
        if req.op == "write":
            await node.run_host(host.write_memory, req.workload, req.offset, req.data)
            return Outcome(True, ([], b""))
        if req.op == "remove":
            await node.run_host(host.remove, req.workload)
            return Outcome(True, ([], b""))
        raise he.BadArguments(f"unknown operation {req.op!r}")
    except he.HostError as exc:
        reply = error_reply(0, exc)
        return Outcome(False, reply.details, str(code_for(exc)), reply.message)


async def on_locate(node, session, req: MLocate) -> MWhere:
    svc = service(node)
    stone = svc.moved.get(req.workload)
    if stone is not None:
        return MWhere(id=req.id, status="moved", epoch=stone.epoch, to_name=stone.to_name,
                      to_address=stone.to_address)
    owned = svc.owner_of(req.workload)
    if owned is not None:
        return MWhere(id=req.id, status="owner", epoch=owned.epoch)
    incoming = svc.incoming.get(req.workload)
    if incoming is not None:
        return MWhere(id=req.id, status="incoming", epoch=incoming.epoch)
    return MWhere(id=req.id, status="unknown")


# --- target side --------------------------------------------------------

async def on_incoming(node, session, req: MIncoming) -> Done:
    svc = service(node)
    owned = svc.owned.get(req.workload)
    if owned is not None and owned.epoch >= req.epoch:
        return ErrorReply(id=req.id, code=ErrorCode.MIGRATION_FAILED,
                          message=f"{node.config.name} already owns {req.workload} at epoch {owned.epoch}")
    if not node.host.has_module(req.module_sha256):
        raise he.UnknownModule(f"module {req.module_sha256} must be stored before the workload moves in")
    stale = svc.incoming.pop(req.workload, None)
    if stale is not None and stale.created:
        await node.run_host(node.host.remove, req.workload)
    if owned is not None:  # an older epoch here: a fenced-off leftover
        svc.owned.pop(req.workload, None)
        await node.run_host(_remove_quietly, node.host, req.workload)
    svc.incoming[req.workload] = Incoming(req.workload, req.module_sha256, req.app, req.epoch, req.source)
    return Done(id=req.id)


def _thaw(host, workload: str) -> None:
    host.thaw(workload)


def _remove_quietly(host, workload: str) -> None:
    try:
        host.remove(workload)
    except he.UnknownWorkload:
        pass


async def on_chunk(node, session, req: MChunk) -> Done:
    svc = service(node)
    inc = svc.incoming.get(req.workload)
    if inc is None or inc.epoch != req.epoch:
        return ErrorReply(id=req.id, code=ErrorCode.MIGRATION_FAILED,
                          message=f"no incoming move of {req.workload} at epoch {req.epoch}")
    _crash_point("target:chunk")
    async with inc.lock:
        try:
            # Decompressing is CPU work: keep it off the event loop.
            await trio.to_thread.run_sync(_decode_into, inc, req.data)
        except snapshot.SnapshotError as exc:
            svc.incoming.pop(req.workload, None)
            if inc.created:
                await node.run_host(_remove_quietly, node.host, req.workload)
            return ErrorReply(id=req.id, code=ErrorCode.MIGRATION_FAILED, message=f"bad snapshot stream: {exc}")
        if inc.assembler.complete:
            snap = inc.assembler.snapshot()
            inc.decoder = snapshot.SnapshotDecoder()
            inc.assembler = snapshot.SnapshotAssembler()
            if not inc.created:
                await node.run_host(node.host.restore, inc.module_sha256, snap, workload_id=inc.workload,
                                    app=inc.app)
                inc.created = True
            else:
                await node.run_host(node.host.apply_snapshot, inc.workload, snap)
            inc.rounds += 1
    return Done(id=req.id)


def _decode_into(inc: Incoming, data: bytes) -> None:
    inc.decoder.feed(data)
    while (event := inc.decoder.next_event()) is not None:
        inc.assembler.add(event)


async def on_commit(node, session, req: MCommit) -> MCommitted:
    svc = service(node)
    inc = svc.incoming.get(req.workload)
    if inc is None or inc.epoch != req.epoch or not inc.created:
        return ErrorReply(id=req.id, code=ErrorCode.MIGRATION_FAILED,
                          message=f"nothing complete to commit for {req.workload} at epoch {req.epoch}")
    try:
        ledger = CallLedger.from_wire(req.ledger)
    except ValueError as exc:
        return ErrorReply(id=req.id, code=ErrorCode.MIGRATION_FAILED, message=str(exc))
    _crash_point("target:before-commit")
    async with inc.lock:
        del svc.incoming[req.workload]
        svc.moved.pop(req.workload, None)
        svc.owned[req.workload] = Owned(req.workload, epoch=req.epoch, ledger=ledger)
    _crash_point("target:after-commit")
    logger.info("took ownership", extra={"workload": req.workload, "epoch": req.epoch, "peer": inc.source})
    return MCommitted(id=req.id, epoch=req.epoch)


async def on_abort(node, session, req: MAbort) -> Done:
    svc = service(node)
    inc = svc.incoming.get(req.workload)
    if inc is not None and inc.epoch == req.epoch:
        del svc.incoming[req.workload]
        if inc.created:
            await node.run_host(_remove_quietly, node.host, req.workload)
    return Done(id=req.id)


# --- source side ----------------------------------------------------------

async def on_migrate(node, session, req: MMigrate) -> MReport:
    svc = service(node)
    owned = svc.owner_of(req.workload)
    if owned is None or owned.moved is not None:
        return _not_owner(req.id, node, req.workload)
    if req.strategy not in STRATEGIES:
        raise he.BadArguments(f"strategy must be one of {', '.join(STRATEGIES)}, got {req.strategy!r}")
    if owned.migrating:
        return ErrorReply(id=req.id, code=ErrorCode.MIGRATION_BUSY,
                          message=f"workload {req.workload} is already moving")
    target = parse_address(req.target)
    if target == node.address:
        return ErrorReply(id=req.id, code=ErrorCode.MIGRATION_FAILED,
                          message=f"workload {req.workload} is already on {node.config.name}")
    owned.migrating = True
    migration = svc.active[req.workload] = Migration(node, svc, owned, target, req)
    try:
        report = await migration.run()
    except MigrationError as exc:
        svc.recent.append({"workload": req.workload, "state": "aborted", "target": req.target,
                           "strategy": req.strategy, "reason": str(exc)})
        return ErrorReply(id=req.id, code=ErrorCode.MIGRATION_FAILED, message=str(exc))
    finally:
        svc.active.pop(req.workload, None)
        owned.migrating = False
        owned.throttle = 0.0
    svc.recent.append({"workload": report.workload, "state": "done", "target": report.target,
                       "strategy": report.strategy, "rounds": report.rounds,
                       "blackout_ms": round(report.blackout_s * 1e3, 3), "total_ms": round(report.total_s * 1e3, 1)})
    node.counters["migrations_out"] += 1
    return MReport(id=req.id, report=report)


def _encode_chunks(snap: snapshot.Snapshot) -> tuple[list[bytes], int]:
    """Encode a snapshot into MChunk-sized pieces; return them and the byte count."""
    encoder = snapshot.SnapshotEncoder()
    chunks, pending = [], bytearray()
    for piece in encoder.encode(snap):
        pending += piece
        if len(pending) >= CHUNK_BYTES:
            chunks.append(bytes(pending))
            pending.clear()
    if pending:
        chunks.append(bytes(pending))
    return chunks, encoder.wire_bytes


class Migration:
    """One outgoing move, driven from the source node."""

    def __init__(self, node, svc: MigrationService, owned: Owned, target, req: MMigrate) -> None:
        self.node, self.svc, self.owned, self.target, self.req = node, svc, owned, target, req
        self.workload = owned.workload
        self.epoch = owned.epoch + 1
        self.bytes_sent = 0
        self.pages_sent = 0
        self.rounds = 0
        self.blackout_s = 0.0
        self.notes: list[str] = []
        self.planner = PrecopyPlanner(PrecopyConfig(downtime_budget_s=req.downtime_budget_s,
                                                    max_rounds=max(1, req.max_rounds)))

    async def run(self) -> ReportRecord:
        node, host = self.node, self.node.host
        started = time.perf_counter()
        try:
            client = await node.connect_peer(self.target)
        except (ConnectionFailed, OSError) as exc:
            raise MigrationError(f"cannot reach {self.target}: {exc}") from None
        target_name = client.node
        committed = False
        try:
            info = await node.run_host(host.info, self.workload)
            await client.ensure_module(await node.run_host(host.module_bytes, info.module_sha256))
            await client.request(MIncoming, workload=self.workload, module_sha256=info.module_sha256,
                                 app=info.app, epoch=self.epoch, source=node.config.name)
            if self.req.strategy == "stop-copy":
                committed = await self._stop_and_copy(client, target_name)
            else:
                committed = await self._precopy(client, target_name)
        except (NodeError, he.HostError, OSError) as exc:
            await self._abort(client, f"{type(exc).__name__}: {exc}")
        finally:
            if committed:
                await node.run_host(_remove_quietly, host, self.workload)
            else:
                await node.run_host(host.stop_tracking, self.workload)
            await client.aclose()
        return ReportRecord(
            workload=self.workload, strategy=self.req.strategy, source=node.config.name, target=target_name,
            total_s=time.perf_counter() - started, blackout_s=self.blackout_s, rounds=self.rounds,
            bytes_sent=self.bytes_sent, pages_sent=self.pages_sent,
            dirty_pages_per_s=self.planner.dirty_pages_per_s, throttle=self.planner.throttle,
            epoch=self.epoch, notes=tuple(self.notes))

    async def _send(self, client, snap: snapshot.Snapshot) -> float:
        """Stream one snapshot to the target as a round; return the seconds it took.

        Encoding (zstd) runs in a worker thread, so the node keeps answering
        calls meanwhile.
        """
        t0 = time.perf_counter()
        chunks, wire_bytes = await trio.to_thread.run_sync(_encode_chunks, snap)
        for chunk in chunks:
            await client.request(MChunk, workload=self.workload, epoch=self.epoch, data=chunk)
        self.bytes_sent += wire_bytes
        self.pages_sent += snap.page_count
        self.rounds += 1
        return time.perf_counter() - t0

    async def _precopy(self, client, target_name: str) -> bool:
        node, host = self.node, self.node.host
        self.planner.start(time.perf_counter())
        full = await node.run_host(host.start_tracking, self.workload)
        sent_before = self.bytes_sent
        took = await self._send(client, full)
        last_pages, last_bytes = full.page_count, self.bytes_sent - sent_before
        while True:
            delta = await node.run_host(host.capture_delta, self.workload)
            decision = self.planner.round_sent(pages=last_pages, wire_bytes=last_bytes, duration_s=took,
                                               dirty_after=delta.page_count, now=time.perf_counter())
            self.owned.throttle = decision.throttle
            if decision.action is Action.STOP_AND_COPY:
                self.notes.append(f"stopped after {self.rounds} rounds: {decision.reason}")
                break
            sent_before = self.bytes_sent
            took = await self._send(client, delta)
            last_pages, last_bytes = delta.page_count, self.bytes_sent - sent_before
        # The remaining delta fits the budget: send it while still running,
        # then freeze and send what changed meanwhile.
        await self._send(client, delta)
        async with self.owned.lock:
            frozen = time.perf_counter()
            await node.run_host(host.freeze, self.workload)  # holds raw (non-handle) calls too
            committed = False
            try:
                final = await node.run_host(host.capture_delta, self.workload)
                await self._send(client, final)
                committed = await self._commit(client, target_name)
                return committed
            finally:
                self.blackout_s = time.perf_counter() - frozen
                if not committed:
                    await node.run_host(_thaw, host, self.workload)
                # Committed: the old copy stays frozen until run() removes it,
                # after the queued handle calls have been redirected.

    async def _stop_and_copy(self, client, target_name: str) -> bool:
        node, host = self.node, self.node.host
        async with self.owned.lock:
            frozen = time.perf_counter()
            await node.run_host(host.freeze, self.workload)
            committed = False
            try:
                snap = await node.run_host(host.checkpoint, self.workload)
                await self._send(client, snap)
                committed = await self._commit(client, target_name)
                return committed
            finally:
                self.blackout_s = time.perf_counter() - frozen
                if not committed:
                    await node.run_host(_thaw, host, self.workload)
                # Committed: the old copy stays frozen until run() removes it,
                # after the queued handle calls have been redirected.

    async def _commit(self, client, target_name: str) -> bool:
        """Hand ownership over; called with the workload frozen.

        Returns True once the target owns the workload.  Raises (and so
        aborts) if the target refuses or cannot be reached before it commits.
        """
        owned = self.owned
        _crash_point("source:frozen")
        info = await self.node.run_host(self.node.host.info, self.workload)
        try:
            await client.request(MCommit, workload=self.workload, epoch=self.epoch,
                                 ledger=owned.ledger.to_wire(), calls=info.calls)
        except ConnectionFailed:
            # In doubt: the commit may have landed before the link broke.
            if not await self._target_owns():
                raise
            self.notes.append("commit confirmed after the link broke")
        _crash_point("source:after-commit")
        stone = Tombstone(target_name, str(self.target), self.epoch)
        owned.moved = stone
        self.svc.moved[self.workload] = stone
        self.svc.owned.pop(self.workload, None)
        logger.info("moved workload", extra={"workload": self.workload, "peer": target_name, "epoch": self.epoch})
        return True

    async def _target_owns(self) -> bool:
        for attempt in range(3):
            try:
                with trio.fail_after(2.0):
                    client = await self.node.connect_peer(self.target)
                    try:
                        where = await client.request(MLocate, workload=self.workload)
                    finally:
                        await client.aclose()
                return where.status == "owner" and where.epoch == self.epoch
            except (NodeError, OSError, trio.TooSlowError):
                await trio.sleep(0.1 * (attempt + 1))
        return False

    async def _abort(self, client, why: str) -> None:
        # Fence: if the target did commit but we could not learn it, its
        # epoch is self.epoch; ours now outranks it, so handles that look
        # the workload up pick this node.
        self.owned.epoch = max(self.owned.epoch, self.epoch + 1)
        self.notes.append(f"aborted: {why}")
        logger.warning("migration aborted: %s", why, extra={"workload": self.workload})
        with trio.move_on_after(2.0):
            try:
                await client.request(MAbort, workload=self.workload, epoch=self.epoch)
            except (NodeError, he.HostError, OSError):
                pass
        raise MigrationError(f"migration of {self.workload} to {self.target} aborted ({why}); "
                             f"it keeps running on {self.node.config.name}")


register_status(lambda node: service(node).status())

for _kind, _handler in ((MSpawn, on_spawn), (MCall, on_call), (MLocate, on_locate), (MIncoming, on_incoming),
                        (MChunk, on_chunk), (MCommit, on_commit), (MAbort, on_abort), (MMigrate, on_migrate)):
    register_handler(_kind, _handler)

__all__ = ["MigrationError", "MigrationService", "service", "RemoteNodeError"]
