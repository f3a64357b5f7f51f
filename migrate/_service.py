"""The node side of live migration: ownership, exactly-once calls, moving.

``PLUGIN`` (a ``nodes.Plugin``) gives a node these handlers, the per-node
``MigrationService``, its status and its checkpoint records;
``migrate-node serve`` (``migrate.cli``) and the application's local node
(``migrate.connect``) serve with it.

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
import contextlib
import hashlib
import itertools
import logging
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio

import snapshot
from nodes import (
    Address,
    BadArguments,
    CallInputs,
    ConnectionFailed,
    Done,
    ErrorCode,
    ErrorReply,
    HostError,
    NodeError,
    Plugin,
    RemoteNodeError,
    RequestError,
    UnknownModule,
    UnknownWorkload,
    code_for,
    crash_point_async,
    error_reply,
    parse_address,
)

from . import _chunks
from ._codes import CRASH_PHASES, MigrationCode
from ._ledger import CallLedger, Outcome
from ._messages import (
    MAbort,
    MAlign,
    MCall,
    MChunk,
    MCommit,
    MCommitted,
    MCheckpoint,
    MCheckpointBytes,
    MCheckpointData,
    MCheckpointPart,
    MFollow,
    MIncoming,
    MLocate,
    MPromote,
    MProtect,
    MReplay,
    MMigrate,
    MReport,
    MResult,
    MSpawn,
    MSpawned,
    MWhere,
    ReportRecord,
)
from ._oplog import batches, divergence, entry_bytes, log_entry, replayed_call
from ._parts import PartQueue, PartRefused
from ._precopy import Action, PrecopyConfig, PrecopyPlanner

logger = logging.getLogger(__name__)

#: The plugin's name: its key in the shutdown checkpoint's records, and of its per-node state.
PLUGIN_NAME = "migrate"
STRATEGIES = ("precopy", "stop-copy", "dual")
#: Dual handover: switch once at most this many logged calls wait to be
#: replayed; the switch replays them (one round trip) while calls are held.
SWITCH_BACKLOG = 32
#: Checkpoints of one workload kept ready for fetching at once; a newer one
#: drops the oldest.  Each holds a copy of the workload's state until its
#: last part is fetched.
MAX_PENDING_CHECKPOINTS = 2
#: How far past the parts fetched so far a checkpoint part may be asked for
#: (the application asks for ``_chunks.WINDOW_PIECES`` at once); parts
#: encoded before their turn wait in memory, so this bounds them (1 MiB each).
MAX_PARTS_AHEAD = 64
#: How far ahead of the next chunk to apply an incoming chunk may be
#: numbered; it waits for the ones before it (they are on the same
#: connection, ahead of it) at most CHUNK_TURN_WAIT_S without progress.
#: Only a sender that skips a number makes a chunk wait that long; the
#: bound is above a crash test's default pause at a phase (30 s).
MAX_CHUNKS_AHEAD = 64
CHUNK_TURN_WAIT_S = 120.0
#: Bytes of operations (payloads included) waiting to be forwarded to a hot
#: standby at most; a standby that falls further behind is dropped (the
#: application asks for a new one).
STANDBY_BACKLOG_BYTES = 256 * 2**20
#: A move onto the standby's node waits this long, with calls held, for the
#: standby to replay what is queued for it; then the move aborts instead.
HANDOVER_FLUSH_S = 10.0



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
    index: int = 0        # state-changing operations run so far, in order
    record: bool = False  # record nondeterministic inputs (protected or followed)
    follow: "trio.MemorySendChannel | None" = None  # dual execution: entries for the follower
    standby: "Standby | None" = None  # the feed of a hot standby copy
    standby_lock: trio.Lock = field(default_factory=trio.Lock)  # starting, stopping, moving
    checkpoints: "collections.OrderedDict[str, PendingCheckpoint]" = field(
        default_factory=collections.OrderedDict)
    resume_standby: "Address | None" = None  # fed before a restart: feed it again once serving

    def forward(self, entry: dict | None) -> None:
        """Hand a logged operation to the dual-execution follower and the standby, if any."""
        if entry is None:
            return
        if self.follow is not None:
            self.follow.send_nowait(entry)
        standby = self.standby
        if standby is not None and standby.send is not None:
            standby.queued_bytes += entry_bytes(entry)
            if standby.queued_bytes > STANDBY_BACKLOG_BYTES:
                logger.warning("standby fell %d bytes behind; dropping it", STANDBY_BACKLOG_BYTES,
                               extra={"workload": self.workload})
                standby.send = None
                standby.scope.cancel()
            else:
                standby.send.send_nowait(entry)


@dataclass
class Standby:
    """The feed of a hot standby copy on ``target``, at ``epoch`` (its owner's + 1 when it began).

    ``send`` is set once the consistent copy is taken: operations after it
    go there.  ``done`` is set when the feed has ended.
    """

    target: Address
    epoch: int
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    send: "trio.MemorySendChannel | None" = None
    queued_bytes: int = 0  # of the entries sent to ``send`` and not yet forwarded
    flushed: bool = False  # ended because its channel was closed, after forwarding everything


@dataclass
class PendingCheckpoint:
    """A checkpoint being fetched part by part: its encoding runs as parts are asked for.

    ``parts`` is the lazy encoder (None once every part was fetched, which
    frees the snapshot); ``queue`` says which parts are encoded, waiting
    or fetched.
    """

    parts: Iterator[bytes] | None
    queue: PartQueue = field(default_factory=lambda: PartQueue(MAX_PARTS_AHEAD))
    lock: trio.Lock = field(default_factory=trio.Lock)  # one encoder at a time


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
    index: int = 0  # last operation replayed into it
    settings: dict = field(default_factory=dict)  # args, env, memory cap
    standby: bool = False  # a hot standby copy, not a move under way
    ledger: CallLedger | None = None  # a standby's: the owner's at the copy, plus replayed outcomes
    chunks: int = 0  # chunks applied: the ``seq`` of the next one
    turn: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)  # chunks awaiting theirs
    host_id: str = ""  # its id on the host: the workload's, or a staging id while it replaces a standby

    def __post_init__(self) -> None:
        self.host_id = self.host_id or self.workload


def staging_id(workload: str, epoch: int) -> str:
    """The host id a new standby copy is received under while the aligned one it replaces keeps serving."""
    return f"standby-{hashlib.sha256(workload.encode()).hexdigest()[:16]}-{epoch}"


class MigrationError(NodeError):
    """A migration was refused or aborted; the workload stayed where it was."""


class MigrationService:
    """Migration state of one node."""

    def __init__(self, node) -> None:
        self.node = node
        self.owned: dict[str, Owned] = {}
        self.moved: dict[str, Tombstone] = {}
        self.incoming: dict[str, Incoming] = {}
        # A new standby copy being received while the aligned one in
        # ``incoming`` keeps serving: it replaces that one once aligned.
        self.staging: dict[str, Incoming] = {}
        self.active: dict[str, "Migration"] = {}
        self.recent: collections.deque[dict] = collections.deque(maxlen=20)

    def status(self) -> tuple[dict, ...]:
        """Moves under way, incoming and the most recent finished ones, for ``status``."""
        out = [{"workload": m.workload, "state": "outgoing", "target": str(m.target),
                "strategy": m.req.strategy, "rounds": m.rounds, "bytes_sent": m.bytes_sent}
               for m in self.active.values()]
        out += [{"workload": i.workload, "state": "incoming", "source": i.source, "rounds": i.rounds}
                for i in self.incoming.values()]
        out += [{"workload": i.workload, "state": "staging", "source": i.source, "rounds": i.rounds}
                for i in self.staging.values()]
        return tuple(out) + tuple(self.recent)

    def is_staging(self, host_id: str) -> bool:
        """True if ``host_id`` is a new standby copy being received, not a workload of its own."""
        return any(inc.host_id == host_id for inc in self.staging.values())

    def holder(self, inc: Incoming) -> dict[str, Incoming]:
        """Where ``inc`` is kept: ``staging`` while it has a staging id, else ``incoming``."""
        return self.staging if inc.host_id != inc.workload else self.incoming

    def current(self, inc: Incoming) -> bool:
        """True if ``inc`` is still the incoming (or staging) copy of its workload."""
        return self.holder(inc).get(inc.workload) is inc

    def owner_of(self, workload: str) -> Owned | None:
        owned = self.owned.get(workload)
        if (owned is None and workload not in self.moved and workload not in self.incoming
                and not self.is_staging(workload)):
            # A workload deployed with plain `migrate-node deploy` and never
            # used through a handle: adopt it at epoch 1, with an empty
            # ledger (no handle call ran on it).  Workloads this node owned
            # before a restart come back with their own epoch and ledger
            # (_save_record below), so they never reach this line.
            try:
                self.node.host.info(workload)
            except HostError:
                return None
            owned = self.owned[workload] = Owned(workload, epoch=1)
        return owned


def service(node) -> MigrationService:
    """The node's MigrationService (the plugin's per-node state)."""
    return node.plugin_state(PLUGIN_NAME)


def _moved_reply(request_id: int, workload: str, stone: Tombstone) -> MResult:
    return MResult(id=request_id, epoch=stone.epoch, moved_to=stone.to_name, moved_address=stone.to_address)


def _not_owner(request_id: int, node, workload: str) -> ErrorReply:
    return ErrorReply(id=request_id, code=MigrationCode.NOT_OWNER,
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
        return ErrorReply(id=request_id, code=outcome.code, message=outcome.message,
                          details=outcome.value or None)
    values, data, index, inputs = outcome.value
    return MResult(id=request_id, values=tuple(values), data=data, epoch=epoch, replayed=replayed,
                   index=index, inputs=inputs)


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
        outcome = await _run(node, req, owned)
        ledger.record(req.caller, req.seq, outcome)
        if owned.follow is not None or owned.standby is not None:
            owned.forward(log_entry(req, outcome))
        if req.op == "remove" and outcome.ok:
            svc.owned.pop(req.workload, None)
            if owned.standby is not None:
                owned.standby.scope.cancel()  # drops the standby copy too
        if owned.throttle:
            # Auto-converge: hold the workload idle for a share of its time.
            took = time.perf_counter() - started
            await trio.sleep(took * owned.throttle / (1 - owned.throttle))
        return _result(req.id, outcome, owned.epoch, replayed=False)


async def _run(node, req: MCall, owned: Owned, inputs=None) -> Outcome:
    """Run one operation; a state-changing one takes the next index.

    ``inputs`` replays recorded nondeterministic inputs (a follower or a
    failover replay); otherwise, if the workload is recorded, the inputs the
    call consumed come back in the outcome.
    """
    host = node.host
    mutating = req.op in ("call", "write")
    try:
        if req.op == "call":
            if inputs is not None:
                result = await node.run_host(host.call, req.workload, req.export, req.args,
                                             inputs=CallInputs.from_wire(inputs))
            else:
                result = await node.run_host(host.call, req.workload, req.export, req.args)
            values = [] if result is None else list(result) if isinstance(result, tuple) else [result]
            data = b""
        elif req.op == "read":
            values, data = [], await node.run_host(host.read_memory, req.workload, req.offset, req.length)
        elif req.op == "write":
            await node.run_host(host.write_memory, req.workload, req.offset, req.data)
            values, data = [], b""
        elif req.op == "remove":
            await node.run_host(host.remove, req.workload)
            values, data = [], b""
        else:
            raise BadArguments(f"unknown operation {req.op!r}")
    except HostError as exc:
        reply = error_reply(0, exc)
        details = dict(reply.details or {})
        if mutating and not isinstance(exc, RequestError):
            # The call ran and trapped: it may have changed state, so it is
            # part of the order a replay must follow.
            owned.index += 1
            details["op_index"] = owned.index
            if owned.record and req.op == "call" and inputs is None:
                details["op_inputs"] = (await node.run_host(host.last_inputs, req.workload)).to_wire()
        return Outcome(False, details or None, str(code_for(exc)), reply.message)
    recorded = None
    if mutating:
        owned.index += 1
        if owned.record and req.op == "call" and inputs is None:
            recorded = (await node.run_host(host.last_inputs, req.workload)).to_wire()
    return Outcome(True, (values, data, owned.index if mutating else 0, recorded))


async def on_locate(node, session, req: MLocate) -> MWhere:
    """What this node knows of a workload: "owner", "incoming", "moved" or "unknown".

    An incoming copy (a move under way, or a hot standby) is reported before
    a tombstone: a node the workload left may hold its standby later.  The
    tombstone's forwarding address comes along either way.
    """
    svc = service(node)
    stone = svc.moved.get(req.workload)
    forward = {"to_name": stone.to_name, "to_address": stone.to_address} if stone is not None else {}
    owned = svc.owner_of(req.workload)
    if owned is not None and owned.moved is None:
        return MWhere(id=req.id, status="owner", epoch=owned.epoch, index=owned.index)
    incoming = svc.incoming.get(req.workload)
    if incoming is not None:
        return MWhere(id=req.id, status="incoming", epoch=incoming.epoch, index=incoming.index,
                      standby=incoming.standby, **forward)
    if stone is not None:
        return MWhere(id=req.id, status="moved", epoch=stone.epoch, **forward)
    return MWhere(id=req.id, status="unknown")


async def on_protect(node, session, req: MProtect) -> Done:
    owned = service(node).owner_of(req.workload)
    if owned is None or owned.moved is not None:
        return _not_owner(req.id, node, req.workload)
    async with owned.lock:
        await node.run_host(node.host.set_replay_mode, req.workload, "record" if req.record else "off")
        owned.record = req.record
    return Done(id=req.id)


async def on_checkpoint(node, session, req: MCheckpoint) -> MCheckpointData:
    """Take a consistent checkpoint; the application fetches its bytes with MCheckpointPart.

    The snapshot is taken between calls, with the index and ledger of that
    moment; it is encoded part by part as the parts are fetched, in parts
    that fit a frame both ways.  Replies NOT_OWNER if the workload left
    while the request waited for its turn.
    """
    svc = service(node)
    owned = svc.owner_of(req.workload)
    if owned is None or owned.moved is not None:
        return _not_owner(req.id, node, req.workload)
    async with owned.lock:  # between calls: consistent with index and ledger
        if owned.moved is not None or svc.owned.get(req.workload) is not owned:
            return _not_owner(req.id, node, req.workload)  # it moved or was removed meanwhile
        snap = await node.run_host(node.host.checkpoint, req.workload)
        info = await node.run_host(node.host.info, req.workload)
        clock = await node.run_host(node.host.clock_state, req.workload)
        settings = await node.run_host(node.host.launch_settings, req.workload)
        index, ledger, epoch = owned.index, owned.ledger.to_wire(), owned.epoch
    size = _chunks.chunk_bytes(node.config.max_frame_bytes, session.channel.connection.peer_max_frame_bytes)
    token = uuid.uuid4().hex
    owned.checkpoints[token] = PendingCheckpoint(_chunks.stream(snap, size))
    while len(owned.checkpoints) > MAX_PENDING_CHECKPOINTS:
        owned.checkpoints.popitem(last=False)
    return MCheckpointData(id=req.id, token=token, index=index, epoch=epoch, ledger=ledger, calls=info.calls,
                           module_sha256=info.module_sha256, app=info.app, monotonic_ns=clock,
                           settings={"args": list(settings["args"]), "env": settings["env"],
                                     "memory_limit_bytes": settings["memory_limit_bytes"]})


async def on_checkpoint_part(node, session, req: MCheckpointPart) -> MCheckpointBytes:
    """A part of a checkpoint; the last one frees it.

    Parts may be asked for several at once (and served in any order):
    each is encoded when it or a later one is asked for, one encoder at a
    time in a worker thread.  A part past the end gets no data and
    ``last``; one fetched before, or more than MAX_PARTS_AHEAD past the
    number fetched so far, is refused (BAD_REQUEST).
    """
    owned = service(node).owned.get(req.workload)
    pending = owned.checkpoints.get(req.token) if owned is not None else None
    if pending is None:
        return ErrorReply(id=req.id, code=ErrorCode.BAD_REQUEST,
                          message=f"{node.config.name} holds no checkpoint {req.token} of {req.workload} "
                                  "(it was fetched, replaced by newer ones, or the workload left)")
    queue = pending.queue
    try:
        queue.check(req.part)
        if queue.wanted(req.part):
            async with pending.lock:
                if wanted := queue.wanted(req.part):
                    # Encoding (zstd) runs in a worker thread, up to the part
                    # after this one, so the reply knows whether it is the last.
                    queue.add(await trio.to_thread.run_sync(_take, pending.parts, wanted), wanted)
        data, last = queue.take(req.part)
    except PartRefused as exc:
        return ErrorReply(id=req.id, code=ErrorCode.BAD_REQUEST, message=f"checkpoint {req.token}: {exc}")
    if queue.done:
        pending.parts = None  # frees the snapshot; the token stays, to answer parts past the end
    return MCheckpointBytes(id=req.id, data=data, last=last)


def _take(parts: Iterator[bytes], count: int) -> list[bytes]:
    """The next ``count`` items of ``parts``, fewer if it ends first."""
    return list(itertools.islice(parts, count))


async def on_follow(node, session, req: MFollow) -> Done:
    """Start (or stop, for "") a hot standby copy of a workload this node owns.

    Replies once the standby holds a consistent copy; a request for the
    standby already being fed is answered once the standby node says it
    still holds the copy (else the feed starts over).  Waits while the
    workload moves (the new owner keeps its standby).  Replies
    MIGRATION_FAILED if the standby cannot be set up.
    """
    svc = service(node)
    owned = svc.owner_of(req.workload)
    if owned is None or owned.moved is not None:
        return _not_owner(req.id, node, req.workload)
    target = parse_address(req.standby) if req.standby else None
    if target == node.address:
        raise BadArguments(f"a standby of {req.workload} must be on another node than its owner")
    async with owned.standby_lock:
        if owned.moved is not None or svc.owned.get(req.workload) is not owned:
            return _not_owner(req.id, node, req.workload)
        feed = owned.standby
        if feed is not None and feed.target == target and feed.send is not None:
            if await _standby_holds_copy(node, feed, req.workload):
                return Done(id=req.id)
            # The standby node restarted (or dropped the copy) while the feed
            # had nothing to send, so the feed has not noticed: start over.
            logger.info("the standby on %s holds no copy; starting it again", target,
                        extra={"workload": req.workload})
        await _stop_standby(owned)
        if target is not None:
            try:
                await node.start(_follow, node, owned, target)
            except MigrationError as exc:
                return ErrorReply(id=req.id, code=MigrationCode.MIGRATION_FAILED, message=str(exc))
    return Done(id=req.id)


async def _standby_holds_copy(node, feed: Standby, workload: str) -> bool:
    """True if the standby node holds the copy ``feed`` keeps; False if it lost it or cannot be asked."""
    try:
        with trio.fail_after(2.0):
            client = await node.connect_peer(feed.target)
            try:
                where = await client.request(MLocate, workload=workload)
            finally:
                await client.aclose()
    except (NodeError, OSError, trio.TooSlowError):
        return False
    return where.status == "incoming" and where.standby and where.epoch == feed.epoch


async def _stop_standby(owned: Owned) -> None:
    """End the workload's standby feed, if any, dropping its copy; return once it has ended."""
    feed = owned.standby
    if feed is not None:
        feed.scope.cancel()
        await feed.done.wait()


async def _keep_standby(node, owned: Owned, target) -> None:
    """Start feeding a standby on ``target`` in the background (after a move); log a failure."""
    async with owned.standby_lock:
        if service(node).owned.get(owned.workload) is not owned or owned.moved is not None:
            return
        if owned.standby is not None:
            return  # someone asked for a standby meanwhile
        try:
            await node.start(_follow, node, owned, target)
        except MigrationError as exc:
            logger.warning("%s", exc, extra={"workload": owned.workload})


async def _follow(node, owned: Owned, target, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Feed a standby: a consistent copy, then every logged operation, until stopped.

    Reports started once the standby holds the copy.  Raises
    MigrationError, before that, if it cannot be set up; a failure after
    that is logged and ends the feed, never the node.  A feed stopped on
    purpose drops the standby's copy, unless the workload moved (the copy
    stays for the new owner's feed to replace) or it was flushed for a
    handover onto the standby.
    """
    host, workload = node.host, owned.workload
    feed = owned.standby = Standby(target, owned.epoch + 1)
    send, receive = trio.open_memory_channel(math.inf)  # bounded by STANDBY_BACKLOG_BYTES in forward()
    client = None
    started = False
    try:
        with feed.scope:
            try:
                client = await node.connect_peer(target)
                info = await node.run_host(host.info, workload)
                await client.ensure_module(await node.run_host(host.module_bytes, info.module_sha256))
                await client.request(MIncoming, workload=workload, module_sha256=info.module_sha256, app=info.app,
                                     epoch=feed.epoch, source=node.config.name, standby=True,
                                     **await node.run_host(host.launch_settings, workload))
                await crash_point_async("standby:copying")
                async with owned.lock:  # a consistent cut: the copy plus everything after it
                    if not owned.record:
                        await node.run_host(host.set_replay_mode, workload, "record")
                        owned.record = True
                    snap = await node.run_host(host.checkpoint, workload)
                    calls = (await node.run_host(host.info, workload)).calls
                    clock = await node.run_host(host.clock_state, workload)
                    ledger, index = owned.ledger.to_wire(), owned.index
                    feed.send = send
                size = _chunks.chunk_bytes(node.config.max_frame_bytes, client.peer_max_frame_bytes)
                await _chunks.send(client, await trio.to_thread.run_sync(_chunks.encode, snap, size),
                                   workload=workload, epoch=feed.epoch, standby=True)
                del snap
                await client.request(MAlign, workload=workload, epoch=feed.epoch, calls=calls, index=index,
                                     ledger=ledger, monotonic_ns=clock, standby=True)
            except (NodeError, HostError, OSError) as exc:
                raise MigrationError(f"cannot start a standby of {workload} on {target}: {exc}") from None
            task_status.started()
            started = True
            logger.info("standby following", extra={"workload": workload, "peer": client.node})
            room = client.peer_max_frame_bytes - _chunks.FRAME_OVERHEAD_BYTES
            try:
                async for first in receive:
                    for batch in batches([first, *_drain(receive)], room):
                        await client.request(MReplay, workload=workload, epoch=feed.epoch, entries=batch,
                                             standby=True)
                        feed.queued_bytes -= sum(entry_bytes(e) for e in batch)
                feed.flushed = True
            except (NodeError, HostError, OSError) as exc:
                logger.warning("standby lost: %s", exc, extra={"workload": workload})
            except Exception:  # a bug in this background task must not take the node down
                logger.exception("standby feed failed", extra={"workload": workload})
    finally:
        if owned.standby is feed:
            owned.standby = None
        feed.send = None
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            if client is not None:
                # A node stopping with SIGTERM leaves the copy in place: it
                # feeds the standby again after the restart, and the standby
                # can take over if the node never comes back.
                if not feed.flushed and owned.moved is None and not node.stopping:
                    with contextlib.suppress(NodeError, HostError, OSError):
                        await client.request(MAbort, workload=workload, epoch=feed.epoch, standby=True)
                await client.aclose()
        feed.done.set()
    if not started:  # stopped (the workload moved or was removed) before the copy was complete
        raise MigrationError(f"the standby of {workload} on {target} was stopped before it was ready")


async def on_promote(node, session, req: MPromote) -> MCommitted:
    """Make a standby the owner (its owner is gone)."""
    svc = service(node)
    inc = svc.incoming.get(req.workload)
    if inc is None or not inc.standby or inc.ledger is None or not inc.created or req.epoch < inc.epoch:
        return ErrorReply(id=req.id, code=MigrationCode.MIGRATION_FAILED,
                          message=f"{node.config.name} holds no standby of {req.workload}")
    async with inc.lock:
        if svc.incoming.get(req.workload) is not inc:
            return ErrorReply(id=req.id, code=MigrationCode.MIGRATION_FAILED,
                              message=f"the standby of {req.workload} on {node.config.name} was replaced")
        del svc.incoming[req.workload]
        svc.moved.pop(req.workload, None)
        svc.owned[req.workload] = Owned(req.workload, epoch=req.epoch, ledger=inc.ledger, index=inc.index,
                                        record=True)
        await node.run_host(node.host.set_replay_mode, req.workload, "record")
    await _drop_staging(node, svc, req.workload)  # a copy the dead owner had begun to send
    logger.info("standby promoted", extra={"workload": req.workload, "epoch": req.epoch})
    return MCommitted(id=req.id, epoch=req.epoch)


# --- target side --------------------------------------------------------

def _incoming(svc: MigrationService, workload: str, epoch: int, standby: bool) -> Incoming | None:
    """The incoming copy a message addresses: same epoch, same role (move or standby)."""
    inc = svc.incoming.get(workload)
    if inc is None or inc.epoch != epoch or inc.standby != standby:
        return None
    return inc


def _addressed(svc: MigrationService, workload: str, epoch: int, standby: bool) -> Incoming | None:
    """The copy a chunk, alignment or abort addresses: a staging standby copy first, else the incoming one."""
    staged = svc.staging.get(workload) if standby else None
    if staged is not None and staged.epoch == epoch:
        return staged
    return _incoming(svc, workload, epoch, standby)


def _no_incoming(request_id: int, workload: str, epoch: int, standby: bool) -> ErrorReply:
    what = "standby copy" if standby else "incoming move"
    return ErrorReply(id=request_id, code=MigrationCode.MIGRATION_FAILED,
                      message=f"no {what} of {workload} at epoch {epoch}")


async def on_incoming(node, session, req: MIncoming) -> Done:
    """Get ready to receive a workload (a move, a failover or a standby copy).

    A new copy replaces an older one, except that a standby never replaces
    a move under way.  A new standby copy is received under a staging id
    while an aligned standby copy keeps serving (MLocate, MPromote): it
    replaces that one once aligned (on_align).
    """
    svc = service(node)
    owned = svc.owned.get(req.workload)
    if owned is not None and owned.epoch >= req.epoch:
        return ErrorReply(id=req.id, code=MigrationCode.MIGRATION_FAILED,
                          message=f"{node.config.name} already owns {req.workload} at epoch {owned.epoch}")
    if not node.host.has_module(req.module_sha256):
        raise UnknownModule(f"module {req.module_sha256} must be stored before the workload moves in")
    current = svc.incoming.get(req.workload)
    if current is not None and req.standby and current.epoch >= req.epoch and (
            not current.standby or current.epoch > req.epoch):
        return ErrorReply(id=req.id, code=MigrationCode.MIGRATION_BUSY,
                          message=f"{node.config.name} is receiving {req.workload} at epoch {current.epoch}")
    staged = svc.staging.get(req.workload)
    if staged is not None and req.standby and staged.epoch > req.epoch:
        return ErrorReply(id=req.id, code=MigrationCode.MIGRATION_BUSY,
                          message=f"{node.config.name} is receiving {req.workload} at epoch {staged.epoch}")
    await _drop_staging(node, svc, req.workload)
    settings = {"args": tuple(req.args), "env": dict(req.env or {}), "memory_limit_bytes": req.memory_limit_bytes}
    if (req.standby and owned is None and current is not None and current.standby and current.created
            and current.ledger is not None):
        host_id = staging_id(req.workload, req.epoch)
        await node.run_host(_remove_quietly, node.host, host_id)  # a leftover of an earlier attempt
        svc.staging[req.workload] = Incoming(req.workload, req.module_sha256, req.app, req.epoch, req.source,
                                             standby=True, settings=settings, host_id=host_id)
        await crash_point_async("target:incoming")
        return Done(id=req.id)
    if current is not None:
        async with current.lock:  # let a chunk being applied finish first
            if svc.incoming.get(req.workload) is current:
                del svc.incoming[req.workload]
            current.turn.unpark_all()
            if current.created:
                await node.run_host(_remove_quietly, node.host, req.workload)
    if owned is not None:  # an older epoch here: a fenced-off leftover
        svc.owned.pop(req.workload, None)
        await node.run_host(_remove_quietly, node.host, req.workload)
    svc.incoming[req.workload] = Incoming(req.workload, req.module_sha256, req.app, req.epoch, req.source,
                                          standby=req.standby, settings=settings)
    await crash_point_async("target:incoming")
    return Done(id=req.id)


def _thaw(host, workload: str) -> None:
    host.thaw(workload)


def _remove_quietly(host, workload: str) -> None:
    try:
        host.remove(workload)
    except UnknownWorkload:
        pass


async def _drop_incoming(node, svc: MigrationService, inc: Incoming) -> None:
    """Forget an incoming (or staging) copy and free its workload (called holding ``inc.lock``)."""
    if svc.current(inc):
        del svc.holder(inc)[inc.workload]
    inc.turn.unpark_all()  # chunks waiting for their turn find it gone
    if inc.created:
        await node.run_host(_remove_quietly, node.host, inc.host_id)


async def _drop_staging(node, svc: MigrationService, workload: str) -> None:
    """Forget the new standby copy being received for ``workload``, if any (called holding no copy's lock)."""
    staged = svc.staging.get(workload)
    if staged is not None:
        async with staged.lock:
            await _drop_incoming(node, svc, staged)


def _replace_workload(host, staged_id: str, workload: str, drop: bool) -> None:
    if drop:
        _remove_quietly(host, workload)
    host.rename(staged_id, workload)


async def _swap_in(node, svc: MigrationService, staged: Incoming) -> bool:
    """Make an aligned staging copy the standby in place of the one that served meanwhile.

    Called holding ``staged.lock``; False if either copy was dropped or
    replaced meanwhile, or this node owns the workload now (a promotion).
    MLocate and MPromote see the old copy until the new one takes its place.
    """
    old = svc.incoming.get(staged.workload)
    async with old.lock if old is not None else contextlib.nullcontext():
        if (not svc.current(staged) or svc.incoming.get(staged.workload) is not old
                or staged.workload in svc.owned):
            return False
        await node.run_host(_replace_workload, node.host, staged.host_id, staged.workload,
                            old is not None and old.created)
        del svc.staging[staged.workload]
        staged.host_id = staged.workload
        svc.incoming[staged.workload] = staged
    logger.info("new standby copy in place", extra={"workload": staged.workload, "epoch": staged.epoch})
    return True


async def on_chunk(node, session, req: MChunk) -> Done:
    """Apply chunk ``seq`` of an incoming copy's snapshot stream, after the chunks before it.

    Senders keep several chunks in flight and the node serves them
    concurrently, so a chunk waits for its turn: the chunks before it came
    first on the same connection.  A chunk applied already, more than
    MAX_CHUNKS_AHEAD ahead, or whose turn does not come within
    CHUNK_TURN_WAIT_S of the last progress is refused (BAD_REQUEST); a
    stream that does not decode drops the copy (MIGRATION_FAILED).
    """
    svc = service(node)
    inc = _addressed(svc, req.workload, req.epoch, req.standby)
    if inc is None:
        return _no_incoming(req.id, req.workload, req.epoch, req.standby)
    await crash_point_async("target:chunk")
    if not inc.chunks <= req.seq <= inc.chunks + MAX_CHUNKS_AHEAD:
        return _out_of_turn(req, inc)
    while inc.chunks < req.seq and svc.current(inc):
        with trio.move_on_after(CHUNK_TURN_WAIT_S) as waited:
            await inc.turn.park()  # woken when a chunk is applied or the copy dropped
        if waited.cancelled_caught:
            break
    async with inc.lock:
        if not svc.current(inc):
            return _no_incoming(req.id, req.workload, req.epoch, req.standby)
        if req.seq != inc.chunks:
            return _out_of_turn(req, inc)
        try:
            # Decompressing is CPU work: keep it off the event loop.
            await trio.to_thread.run_sync(_decode_into, inc, req.data)
        except snapshot.SnapshotError as exc:
            await _drop_incoming(node, svc, inc)
            return ErrorReply(id=req.id, code=MigrationCode.MIGRATION_FAILED, message=f"bad snapshot stream: {exc}")
        if inc.assembler.complete:
            snap = inc.assembler.snapshot()
            inc.decoder = snapshot.SnapshotDecoder()
            inc.assembler = snapshot.SnapshotAssembler()
            if not inc.created:
                await node.run_host(node.host.restore, inc.module_sha256, snap, workload_id=inc.host_id,
                                    app=inc.app, **inc.settings)
                inc.created = True
            else:
                await node.run_host(node.host.apply_snapshot, inc.host_id, snap)
            inc.rounds += 1
            await crash_point_async("target:after-round")
        inc.chunks += 1
        inc.turn.unpark_all()
    return Done(id=req.id)


def _out_of_turn(req: MChunk, inc: Incoming) -> ErrorReply:
    return ErrorReply(id=req.id, code=ErrorCode.BAD_REQUEST,
                      message=f"chunk {req.seq} of {req.workload} is out of turn: the next to apply is "
                              f"{inc.chunks} (at most {MAX_CHUNKS_AHEAD} may wait ahead of it)")


def _decode_into(inc: Incoming, data: bytes) -> None:
    inc.decoder.feed(data)
    while (event := inc.decoder.next_event()) is not None:
        inc.assembler.add(event)


async def on_replay(node, session, req: MReplay) -> Done:
    """Re-run logged operations on an incoming copy; refuse, and drop the copy, on divergence."""
    svc = service(node)
    inc = _incoming(svc, req.workload, req.epoch, req.standby)
    if inc is None or not inc.created:
        return _no_incoming(req.id, req.workload, req.epoch, req.standby)
    async with inc.lock:
        if svc.incoming.get(req.workload) is not inc:
            return _no_incoming(req.id, req.workload, req.epoch, req.standby)
        shadow = Owned(req.workload, epoch=req.epoch, index=inc.index)
        for entry in req.entries:
            try:
                op = replayed_call(req.workload, entry)
                if entry["index"] != shadow.index + 1:
                    raise ValueError(f"log has a gap before operation {entry['index']} (at {shadow.index})")
                got = await _run(node, op, shadow, inputs=entry.get("inputs"))
            except (KeyError, TypeError, ValueError) as exc:
                why = f"bad log entry: {exc}"
            else:
                why = divergence(entry, got)
                if why is None and inc.ledger is not None:
                    inc.ledger.record(op.caller, op.seq, got)
            if why is not None:
                await _drop_incoming(node, svc, inc)
                logger.warning("replay diverged: %s", why, extra={"workload": req.workload})
                return ErrorReply(id=req.id, code=MigrationCode.MIGRATION_FAILED,
                                  message=f"replay of {req.workload} diverged: {why}")
            inc.index = shadow.index
    return Done(id=req.id)


async def on_align(node, session, req: MAlign) -> Done:
    """Set a received copy's call count, clock, operation index and ledger to the owner's at the copy.

    A staging standby copy then takes the place of the standby that
    served meanwhile.  Replies MIGRATION_FAILED if the copy is gone or
    the ledger is malformed.
    """
    svc = service(node)
    inc = _addressed(svc, req.workload, req.epoch, req.standby)
    if inc is None or not inc.created:
        return _no_incoming(req.id, req.workload, req.epoch, req.standby)
    async with inc.lock:
        if not svc.current(inc):
            return _no_incoming(req.id, req.workload, req.epoch, req.standby)
        await node.run_host(node.host.set_call_count, inc.host_id, req.calls)
        await node.run_host(node.host.set_replay_mode, inc.host_id, "replay")
        if req.monotonic_ns is not None:
            await node.run_host(node.host.continue_clock, inc.host_id, req.monotonic_ns)
        try:
            ledger = CallLedger.from_wire(req.ledger) if req.ledger is not None else inc.ledger
        except ValueError as exc:
            return ErrorReply(id=req.id, code=MigrationCode.MIGRATION_FAILED, message=str(exc))
        inc.index, inc.ledger = req.index, ledger
        if inc.host_id != inc.workload and not await _swap_in(node, svc, inc):
            await _drop_incoming(node, svc, inc)
            return _no_incoming(req.id, req.workload, req.epoch, req.standby)
    return Done(id=req.id)


async def on_commit(node, session, req: MCommit) -> MCommitted:
    """Take ownership of an incoming copy: a move's, or (``from_standby``) the standby's.

    A standby is committed only at or above its epoch and only if it has
    replayed exactly the operations the owner ran.  With ``standby`` set,
    the new owner goes on feeding the standby on that node.
    """
    svc = service(node)
    inc = svc.incoming.get(req.workload)
    if req.from_standby:
        ready = (inc is not None and inc.standby and inc.created and req.epoch >= inc.epoch
                 and inc.index == req.index)
    else:
        ready = inc is not None and not inc.standby and inc.created and inc.epoch == req.epoch
    if not ready:
        what = "standby copy" if req.from_standby else "incoming move"
        return ErrorReply(id=req.id, code=MigrationCode.MIGRATION_FAILED,
                          message=f"no complete {what} of {req.workload} to commit at epoch {req.epoch}"
                                  f" and operation {req.index}")
    try:
        ledger = CallLedger.from_wire(req.ledger)
    except ValueError as exc:
        return ErrorReply(id=req.id, code=MigrationCode.MIGRATION_FAILED, message=str(exc))
    await crash_point_async("target:before-commit")
    if req.digest is not None:
        try:
            pages = {int(k): [int(p) for p in v] for k, v in dict(req.pages or {}).items()}
        except (TypeError, ValueError):
            return ErrorReply(id=req.id, code=MigrationCode.MIGRATION_FAILED, message="malformed page list")
        ours = await node.run_host(node.host.pages_digest, req.workload, pages)
        if ours != req.digest:
            async with inc.lock:
                await _drop_incoming(node, svc, inc)
            return ErrorReply(id=req.id, code=MigrationCode.MIGRATION_FAILED,
                              message=f"replay of {req.workload} diverged: the state written since the cut "
                                      "differs from the source's")
    async with inc.lock:
        if svc.incoming.get(req.workload) is not inc:
            return ErrorReply(id=req.id, code=MigrationCode.MIGRATION_FAILED,
                              message=f"the incoming copy of {req.workload} was replaced")
        del svc.incoming[req.workload]
        svc.moved.pop(req.workload, None)
        owned = svc.owned[req.workload] = Owned(req.workload, epoch=req.epoch, ledger=ledger,
                                                index=max(req.index, inc.index), record=req.record)
        await node.run_host(node.host.set_replay_mode, req.workload, "record" if req.record else "off")
        await node.run_host(node.host.set_call_count, req.workload, req.calls)
        if req.monotonic_ns is not None:
            await node.run_host(node.host.continue_clock, req.workload, req.monotonic_ns)
    await _drop_staging(node, svc, req.workload)
    await crash_point_async("target:after-commit")
    logger.info("took ownership", extra={"workload": req.workload, "epoch": req.epoch, "peer": inc.source})
    if req.standby and parse_address(req.standby) != node.address:
        node.start_soon(_keep_standby, node, owned, parse_address(req.standby))
    return MCommitted(id=req.id, epoch=req.epoch)


async def on_abort(node, session, req: MAbort) -> Done:
    svc = service(node)
    inc = _addressed(svc, req.workload, req.epoch, req.standby)
    if inc is not None:
        async with inc.lock:
            await _drop_incoming(node, svc, inc)
    return Done(id=req.id)


# --- source side ----------------------------------------------------------

async def on_migrate(node, session, req: MMigrate) -> MReport:
    svc = service(node)
    owned = svc.owner_of(req.workload)
    if owned is None or owned.moved is not None:
        return _not_owner(req.id, node, req.workload)
    if req.strategy not in STRATEGIES:
        raise BadArguments(f"strategy must be one of {', '.join(STRATEGIES)}, got {req.strategy!r}")
    if owned.migrating:
        return ErrorReply(id=req.id, code=MigrationCode.MIGRATION_BUSY,
                          message=f"workload {req.workload} is already moving")
    target = parse_address(req.target)
    if target == node.address:
        return ErrorReply(id=req.id, code=MigrationCode.MIGRATION_FAILED,
                          message=f"workload {req.workload} is already on {node.config.name}")
    owned.migrating = True
    migration = svc.active[req.workload] = Migration(node, svc, owned, target, req)
    try:
        report = await migration.run()
    except MigrationError as exc:
        svc.recent.append({"workload": req.workload, "state": "aborted", "target": req.target,
                           "strategy": req.strategy, "reason": str(exc)})
        return ErrorReply(id=req.id, code=MigrationCode.MIGRATION_FAILED, message=str(exc))
    finally:
        svc.active.pop(req.workload, None)
        owned.migrating = False
        owned.throttle = 0.0
    svc.recent.append({"workload": report.workload, "state": "done", "target": report.target,
                       "strategy": report.strategy, "rounds": report.rounds,
                       "blackout_ms": round(report.blackout_s * 1e3, 3), "total_ms": round(report.total_s * 1e3, 1)})
    node.counters["migrations_out"] += 1
    return MReport(id=req.id, report=report)


def _drain(receive: trio.MemoryReceiveChannel) -> list[dict]:
    """What ``receive`` holds now, without waiting; an empty list once it is closed and empty."""
    batch = []
    while True:
        try:
            batch.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):  # a closed channel: the reader's loop ends next
            return batch


class Migration:
    """One outgoing move, driven from the source node."""

    def __init__(self, node, svc: MigrationService, owned: Owned, target, req: MMigrate) -> None:
        self.node, self.svc, self.owned, self.target, self.req = node, svc, owned, target, req
        self.workload = owned.workload
        self.epoch = owned.epoch + 1
        self.bytes_sent = 0
        self.pages_sent = 0
        self.chunks_sent = 0  # MChunk numbers used: the next round's go on from here
        self.rounds = 0
        self.blackout_s = 0.0
        self.notes: list[str] = []
        self.cut_s = 0.0
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
        onto_standby = False
        try:
            async with self.owned.standby_lock:  # no standby starts or stops meanwhile
                feed = self.owned.standby
                onto_standby = feed is not None and feed.target == self.target
                try:
                    if onto_standby and feed.send is not None:
                        committed = await self._standby_handover(client, target_name, feed)
                    else:
                        if onto_standby:
                            await _stop_standby(self.owned)  # the move's copy replaces the standby's
                        committed = await self._move(client, target_name)
                except (NodeError, HostError, OSError) as exc:
                    await self._abort(client, f"{type(exc).__name__}: {exc}")
        finally:
            if committed:
                await node.run_host(_remove_quietly, host, self.workload)
            else:
                await node.run_host(host.stop_tracking, self.workload)
                if onto_standby:  # the workload stays here: so does its standby
                    node.start_soon(_keep_standby, node, self.owned, self.target)
            await client.aclose()
        return ReportRecord(
            workload=self.workload, strategy=self.req.strategy, source=node.config.name, target=target_name,
            total_s=time.perf_counter() - started, blackout_s=self.blackout_s, rounds=self.rounds,
            bytes_sent=self.bytes_sent, pages_sent=self.pages_sent,
            dirty_pages_per_s=self.planner.dirty_pages_per_s, throttle=self.planner.throttle,
            epoch=self.epoch, notes=tuple(self.notes))

    async def _move(self, client, target_name: str) -> bool:
        """Copy the workload to the target with the requested strategy and commit."""
        node, host = self.node, self.node.host
        info = await node.run_host(host.info, self.workload)
        await client.ensure_module(await node.run_host(host.module_bytes, info.module_sha256))
        await crash_point_async("source:before-incoming")
        await self._incoming(client, info)
        if self.req.strategy == "stop-copy":
            return await self._stop_and_copy(client, target_name)
        if self.req.strategy == "dual":
            return await self._dual(client, target_name, info)
        return await self._precopy(client, target_name)

    async def _incoming(self, client, info) -> None:
        """Have the target get ready for a fresh copy; its chunks are numbered from 0."""
        await client.request(MIncoming, workload=self.workload, module_sha256=info.module_sha256,
                             app=info.app, epoch=self.epoch, source=self.node.config.name,
                             **await self.node.run_host(self.node.host.launch_settings, self.workload))
        self.chunks_sent = 0

    async def _standby_handover(self, client, target_name: str, feed: Standby) -> bool:
        """Move onto the node that holds the hot standby: commit the standby's copy.

        With calls held, the feed forwards what it still has queued and
        ends; the target then owns its copy, which has replayed every
        operation.  No page crosses the link; the blackout is the flush and
        the commit.
        """
        node, host = self.node, self.node.host
        async with self.owned.lock:
            frozen = time.perf_counter()
            await node.run_host(host.freeze, self.workload)
            committed = False
            try:
                feed.send.close()  # the feed drains what is queued, then ends
                feed.send = None
                with trio.move_on_after(HANDOVER_FLUSH_S):
                    await feed.done.wait()
                if not feed.done.is_set():
                    feed.scope.cancel()
                    raise MigrationError(f"the standby on {target_name} did not take the last "
                                         f"operations within {HANDOVER_FLUSH_S} s")
                if not feed.flushed:
                    raise MigrationError(f"the standby on {target_name} was lost before the handover")
                committed = await self._commit(client, target_name, from_standby=True)
                self.notes.append(f"committed the hot standby on {target_name}")
                return committed
            finally:
                self.blackout_s = time.perf_counter() - frozen
                if not committed:
                    await node.run_host(_thaw, host, self.workload)

    async def _send(self, client, snap: snapshot.Snapshot) -> float:
        """Stream one snapshot to the target as a round; return the seconds it took.

        Encoding (zstd) runs in a worker thread, so the node keeps answering
        calls meanwhile.
        """
        t0 = time.perf_counter()
        size = _chunks.chunk_bytes(self.node.config.max_frame_bytes, client.peer_max_frame_bytes)
        chunks = await trio.to_thread.run_sync(_chunks.encode, snap, size)
        self.chunks_sent = await _chunks.send(client, chunks, workload=self.workload, epoch=self.epoch,
                                              seq=self.chunks_sent)
        self.bytes_sent += sum(len(chunk) for chunk in chunks)
        self.pages_sent += snap.page_count
        self.rounds += 1
        return time.perf_counter() - t0

    async def _rounds(self, client) -> None:
        """Send pre-copy rounds until the planner says the rest fits the budget.

        The last delta, captured while running, is sent too; what changed
        after it is left for the caller's final, frozen round.
        """
        node, host = self.node, self.node.host
        self.planner.start(time.perf_counter())
        full = await node.run_host(host.start_tracking, self.workload)
        sent_before = self.bytes_sent
        took = await self._send(client, full)
        await crash_point_async("source:after-round")
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
        await self._send(client, delta)
        self.owned.throttle = 0.0

    async def _precopy(self, client, target_name: str) -> bool:
        await self._rounds(client)
        return await self._final_round(client, target_name, self.node.host.capture_delta)

    async def _stop_and_copy(self, client, target_name: str) -> bool:
        return await self._final_round(client, target_name, self.node.host.checkpoint)

    async def _final_round(self, client, target_name: str, capture) -> bool:
        """Freeze, send ``capture(workload)`` and commit; the frozen time is the blackout."""
        node, host = self.node, self.node.host
        async with self.owned.lock:
            frozen = time.perf_counter()
            await node.run_host(host.freeze, self.workload)  # holds raw (non-handle) calls too
            committed = False
            try:
                await self._send(client, await node.run_host(capture, self.workload))
                committed = await self._commit(client, target_name)
                return committed
            finally:
                self.blackout_s = time.perf_counter() - frozen
                if not committed:
                    await node.run_host(_thaw, host, self.workload)
                # Committed: the old copy stays frozen until run() removes it,
                # after the queued handle calls have been redirected.

    async def _dual(self, client, target_name: str, info) -> bool:
        """Hand over without freezing for a page transfer (issue 5's "dual").

        1. Pre-copy rounds while the workload runs.
        2. The cut: hold calls only for a local copy of the pages dirtied
           since the last round, and start recording every call's
           nondeterministic inputs.
        3. The source keeps serving; each call after the cut is logged and
           forwarded, and the target replays it with the recorded inputs and
           compares its outcome (dual execution), while the cut travels.
        4. The switch: once the target has caught up, hold calls, hand over
           the last log entries, compare digests of the pages written since
           the cut, and commit.  The blackout is a routing switch.
        A divergence aborts the dual handover and falls back to pre-copy.
        """
        node, host, owned = self.node, self.node.host, self.owned
        await self._rounds(client)
        was_record = owned.record
        send, receive = trio.open_memory_channel(math.inf)
        async with owned.lock:
            t0 = time.perf_counter()
            await node.run_host(host.set_replay_mode, self.workload, "record")
            cut = await node.run_host(host.capture_delta, self.workload)
            calls_at_cut = (await node.run_host(host.info, self.workload)).calls
            index_at_cut = owned.index
            owned.record, owned.follow = True, send
            self.cut_s = time.perf_counter() - t0
        try:
            await self._send(client, cut)
            await client.request(MAlign, workload=self.workload, epoch=self.epoch, calls=calls_at_cut,
                                 index=index_at_cut)
            forwarded = 0
            while True:  # dual execution: the target follows the log
                batch = _drain(receive)
                if len(batch) > SWITCH_BACKLOG:
                    await self._replay(client, batch)
                    forwarded += len(batch)
                    continue
                # Caught up to a small backlog.  Waiting for an empty log would
                # never end on a slow link: a call arrives during every round
                # trip.  The switch replays the rest while calls are held.
                async with owned.lock:  # the switch
                    frozen = time.perf_counter()
                    await node.run_host(host.freeze, self.workload)
                    committed = False
                    try:
                        batch += _drain(receive)
                        if batch:
                            await self._replay(client, batch)
                            forwarded += len(batch)
                        since_cut = await node.run_host(host.capture_delta, self.workload)
                        pages = {m.index: [p for r in m.runs for p in range(r.first_page, r.end_page)]
                                 for m in since_cut.memories}
                        digest = await node.run_host(host.pages_digest, self.workload, pages)
                        owned.record, owned.follow = was_record, None
                        if not was_record:
                            await node.run_host(host.set_replay_mode, self.workload, "off")
                        committed = await self._commit(client, target_name, digest=(pages, digest))
                        self.notes.append(f"target replayed {forwarded} calls after the cut")
                        return committed
                    finally:
                        # Calls were held twice: at the cut and at the switch.
                        self.blackout_s = max(self.cut_s, time.perf_counter() - frozen)
                        if not committed:
                            await node.run_host(_thaw, host, self.workload)
        except RemoteNodeError as exc:
            owned.record, owned.follow = was_record, None
            if "diverged" not in str(exc):
                raise
            # Fall back: the target dropped its copy; send it again, pre-copy.
            if not was_record:
                await node.run_host(host.set_replay_mode, self.workload, "off")
            self.notes.append(f"diverged ({exc}); fell back to precopy")
            logger.warning("dual handover diverged, falling back to pre-copy: %s", exc,
                           extra={"workload": self.workload})
            await self._incoming(client, info)
            return await self._precopy(client, target_name)
        finally:
            owned.follow = None

    async def _replay(self, client, entries: list[dict]) -> None:
        """Have the target replay logged operations, in batches that fit its frames."""
        for batch in batches(entries, client.peer_max_frame_bytes - _chunks.FRAME_OVERHEAD_BYTES):
            await client.request(MReplay, workload=self.workload, epoch=self.epoch, entries=batch)

    async def _commit(self, client, target_name: str, *, digest=None, from_standby: bool = False) -> bool:
        """Hand ownership over; called with the workload frozen.

        Returns True once the target owns the workload.  Raises (and so
        aborts) if the target refuses or cannot be reached before it commits.
        """
        owned = self.owned
        await crash_point_async("source:frozen")
        info = await self.node.run_host(self.node.host.info, self.workload)
        clock = await self.node.run_host(self.node.host.clock_state, self.workload)
        feed = owned.standby
        try:
            await client.request(MCommit, workload=self.workload, epoch=self.epoch,
                                 ledger=owned.ledger.to_wire(), calls=info.calls, index=owned.index,
                                 record=owned.record,
                                 pages={str(k): v for k, v in digest[0].items()} if digest else None,
                                 digest=digest[1] if digest else None, monotonic_ns=clock,
                                 from_standby=from_standby,
                                 standby=str(feed.target) if feed is not None and not from_standby else "")
        except ConnectionFailed:
            # In doubt: the commit may have landed before the link broke.
            if not await self._target_owns():
                raise
            self.notes.append("commit confirmed after the link broke")
        await crash_point_async("source:after-commit")
        stone = Tombstone(target_name, str(self.target), self.epoch)
        owned.moved = stone
        if owned.standby is not None:
            # The new owner feeds the standby from now on; the copy stays
            # there until the new feed replaces it.
            owned.standby.scope.cancel()
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
            except (NodeError, HostError, OSError):
                pass
        raise MigrationError(f"migration of {self.workload} to {self.target} aborted ({why}); "
                             f"it keeps running on {self.node.config.name}")


# --- surviving a restart ----------------------------------------------------

def _save_record(node, workload: str) -> dict | None:
    """What SIGTERM's checkpoint keeps of a workload's ownership: epoch, operation index, call ledger, standby.

    Workloads this node holds without owning them -- a standby copy (or a
    new one being staged), a move being received, a moved-away copy not
    yet removed -- are left out (None): bringing them back as owned would
    give them two owners.
    """
    svc = service(node)
    owned = svc.owned.get(workload)
    if owned is None:
        held = workload in svc.incoming or workload in svc.moved or svc.is_staging(workload)
        return None if held else {}
    if owned.moved is not None:
        return None
    standby = owned.standby.target if owned.standby is not None else owned.resume_standby
    return {"epoch": owned.epoch, "index": owned.index, "record": owned.record, "ledger": owned.ledger.to_wire(),
            "standby": str(standby) if standby is not None else ""}


def _load_record(node, workload: str, record: dict) -> None:
    """Make this node the workload's owner again, as it was at shutdown.  Raises ValueError."""
    epoch, index = record.get("epoch"), record.get("index")
    if not _is_count(epoch) or epoch < 1 or not _is_count(index):
        raise ValueError(f"epoch {epoch!r} and index {index!r} must be counts")
    standby = record.get("standby") or ""
    if not isinstance(standby, str):
        raise ValueError(f"standby {standby!r} is not an address")
    try:
        resume = parse_address(standby) if standby else None
    except NodeError as exc:
        raise ValueError(f"standby {standby!r}: {exc}") from None
    owned = Owned(workload, epoch=epoch, ledger=CallLedger.from_wire(record.get("ledger")), index=index,
                  record=bool(record.get("record")), resume_standby=resume)
    if owned.record:  # a protected workload: calls report the inputs they consumed
        node.host.set_replay_mode(workload, "record")
    svc = service(node)
    svc.moved.pop(workload, None)
    svc.owned[workload] = owned


async def _resume_standbys(node) -> None:
    """Feed again, with a fresh copy, the standbys restored workloads had before the restart.

    Returns once each of them holds its calls until its standby node is asked.
    """
    for owned in list(service(node).owned.values()):
        if owned.resume_standby is not None:
            target, owned.resume_standby = owned.resume_standby, None
            await node.start(_resume_standby, node, owned, target)


async def _resume_standby(node, owned: Owned, target: Address, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """With calls held, ask the standby node whether it took over while this node was down; then feed it.

    If it did (it owns the workload, or moved it on, at a higher epoch),
    this copy is fenced off: it becomes a tombstone pointing at the owner
    and is removed, so a late call is redirected instead of running on old
    state.  If the standby node cannot be asked, the workload is served.
    """
    svc, workload = service(node), owned.workload
    async with owned.lock:
        task_status.started()
        where, name = None, ""
        try:
            with trio.fail_after(5.0):
                client = await node.connect_peer(target)
                try:
                    where, name = await client.request(MLocate, workload=workload), client.node
                finally:
                    await client.aclose()
        except (NodeError, OSError, trio.TooSlowError) as exc:
            logger.warning("cannot ask the standby on %s whether it took over: %s", target, exc,
                           extra={"workload": workload})
        if where is not None and where.status in ("owner", "moved") and where.epoch > owned.epoch:
            stone = (Tombstone(name, str(target), where.epoch) if where.status == "owner"
                     else Tombstone(where.to_name or "", where.to_address or "", where.epoch))
            owned.moved = svc.moved[workload] = stone
            svc.owned.pop(workload, None)
            await node.run_host(_remove_quietly, node.host, workload)
            logger.warning("superseded while this node was down: %s owns it at epoch %d", stone.to_name,
                           stone.epoch, extra={"workload": workload, "epoch": owned.epoch})
            return
    await _keep_standby(node, owned, target)


def _save_tombstones(node) -> dict:
    return {"moved": {w: [t.to_name, t.to_address, t.epoch] for w, t in service(node).moved.items()}}


def _load_tombstones(node, record: dict) -> None:
    """Remember where workloads went, so late calls are still redirected.  Raises ValueError."""
    moved = record.get("moved")
    if not isinstance(moved, dict):
        raise ValueError("no map of moved workloads")
    svc = service(node)
    for workload, stone in moved.items():
        if not (isinstance(stone, list) and len(stone) == 3 and isinstance(stone[0], str)
                and isinstance(stone[1], str) and _is_count(stone[2])):
            raise ValueError(f"tombstone of {workload!r} is {stone!r}")
        if workload not in svc.owned:
            svc.moved[str(workload)] = Tombstone(*stone)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


PLUGIN = Plugin(
    name=PLUGIN_NAME,
    handlers={MSpawn: on_spawn, MCall: on_call, MLocate: on_locate, MIncoming: on_incoming, MChunk: on_chunk,
              MCommit: on_commit, MAbort: on_abort, MMigrate: on_migrate, MProtect: on_protect,
              MCheckpoint: on_checkpoint, MCheckpointPart: on_checkpoint_part, MReplay: on_replay,
              MAlign: on_align, MFollow: on_follow, MPromote: on_promote},
    state=MigrationService,
    status=lambda node: service(node).status(),
    save=_save_record, load=_load_record, save_node=_save_tombstones, load_node=_load_tombstones,
    resume=_resume_standbys,
    crash_phases=CRASH_PHASES,
)

__all__ = ["MigrationError", "MigrationService", "service", "RemoteNodeError"]
