"""The per-node migration tables: what this node owns, receives and has handed on.

Per node, ``MigrationService`` keeps:

* ``ownership``: each workload's ownership state and epoch (the fencing
  token), an ``_ownership.Ownership`` machine.  Every change of them goes
  through ``MigrationService.event`` (one call per event), which keeps the
  payload tables below in step;
* ``owned``: the payload of the workloads this node owns: call ledger and
  a FIFO lock that orders calls.  A migration freezes a workload by taking
  that lock, so calls that arrive meanwhile queue in arrival order;
* ``moved``: tombstones of workloads that left (read from ``ownership``),
  so late calls are told where to go (an ``MResult`` naming the new owner)
  and never run here again;
* ``incoming``: workloads being received, not yet callable;
* ``staging``: a new standby copy received while the aligned one keeps serving.

Also here: the limits the handlers share, the replies every handler may
give (not the owner, moved), and dropping a received copy.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

import snapshot
from nodes import (Address, BadArguments, CancelToken, ConfigError, ErrorReply, FedWorkload, HostError, Node,
                   NodeError, parse_address)

from . import _hostops as ops
from . import _progress as progress
from ._codes import MigrationCode
from ._ledger import CallLedger
from ._messages import MResult
from ._metrics import MoveMetrics
from ._oplog import entry_bytes
from ._ownership import OWNING, Ownership, State
from ._ownership_events import Action, Event, EventKind, Peer, Redirect
from ._parts import PartQueue
from ._replies import error

if TYPE_CHECKING:
    from ._lifecycle import Lifecycle
    from ._source import Migration

logger = logging.getLogger(__name__)

#: The migration plugin's name: the key of its per-node state and of its records in a node's checkpoint.
PLUGIN_NAME = "migrate"

STRATEGIES = ("precopy", "stop-copy", "dual")
#: Checkpoints of one workload kept ready for fetching at once; a newer one drops the oldest.
#: Each holds a copy of the workload's state until its last part is fetched.
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
#: After a commit the source asks the new owner when it served its first
#: call (for the report's client blackout); the owner waits this long for one.
FIRST_CALL_WAIT_S = 1.0
#: How often the new owner looks whether its first call came meanwhile.
FIRST_CALL_POLL_S = 0.002


@dataclass
class Owned:
    """A migratable workload this node owns: the payload of its ownership record.

    ``epoch`` follows the record's (``MigrationService.event`` sets it);
    ``moved`` is set when the workload leaves, for calls queued on ``lock``.
    """

    workload: str
    epoch: int
    ledger: CallLedger = field(default_factory=CallLedger)
    lock: trio.Lock = field(default_factory=trio.Lock)  # FIFO: calls run in arrival order
    throttle: float = 0.0
    throttling: trio.CancelScope | None = None  # the idle time a call holds ``lock`` for, while throttled
    moved: "Tombstone | None" = None
    index: int = 0        # state-changing operations run so far, in order
    record: bool = False  # record nondeterministic inputs (protected or followed): ``wants_record``
    protected: bool | None = None  # the application's protection asks for ``record`` (MProtect); None: as record
    follow: "trio.MemorySendChannel[dict[str, Any]] | None" = None  # dual execution: entries for the follower
    standby: "Standby | None" = None  # the feed of a hot standby copy
    standby_lock: trio.Lock = field(default_factory=trio.Lock)  # starting, stopping, moving
    checkpoints: "collections.OrderedDict[str, PendingCheckpoint]" = field(
        default_factory=collections.OrderedDict)
    resume_standby: "Address | None" = None  # fed before a restart: feed it again once serving
    resumed: trio.Event | None = None  # set once a restarted owner asked that standby whether it took over
    committed_s: float | None = None  # when (time.perf_counter) this node answered a move's commit
    running: "tuple[str, int, CancelToken] | None" = None  # the call that holds ``lock``: caller, seq, token
    lifecycle: "Lifecycle | None" = None  # lease and schedules of a named or detached workload (_life_node)

    def __post_init__(self) -> None:  # a copy taken over recording (a move, a promotion, a restart) stays so
        self.protected = self.record if self.protected is None else self.protected

    def wants_record(self) -> bool:
        """Whether calls must record their inputs: protection asks, a standby is fed, or a dual move's target follows."""
        return bool(self.protected) or self.standby is not None or self.follow is not None

    def stop_throttle(self) -> None:
        """Throttle no more, and end the idle time a call holds ``lock`` for now, if any.

        A move does this before it freezes the workload: the freeze takes
        ``lock``, and at the throttle's top step (0.95) a call held it for
        19 times its own run time.
        """
        self.throttle = 0.0
        if self.throttling is not None:
            self.throttling.cancel()

    def forward(self, entry: dict[str, Any] | None) -> None:
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
    send: "trio.MemorySendChannel[dict[str, Any]] | None" = None
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

    @classmethod
    def of(cls, peer: Peer) -> "Tombstone":
        return cls(peer.name, peer.address, peer.epoch)


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
    created: bool = False  # its first round is in, published on the host (as ``host_id``)
    fed: FedWorkload | None = None  # while its first round is decoded into a new workload, unpublished
    live: bool = False  # MIncoming.live: its first round is decoded on the bulk thread
    lock: trio.Lock = field(default_factory=trio.Lock)
    index: int = 0  # last operation replayed into it
    settings: dict[str, Any] = field(default_factory=dict)  # args, env, memory cap
    standby: bool = False  # a hot standby copy, not a move under way
    ledger: CallLedger | None = None  # a standby's: the owner's at the copy, plus replayed outcomes
    lifecycle: "Lifecycle | None" = None  # a standby's: the owner's at the copy (taken on at promotion)
    chunks: int = 0  # chunks applied: the ``seq`` of the next one
    turn: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)  # chunks awaiting theirs
    host_id: str = ""  # its id on the host: the workload's, or a staging id while it replaces a standby
    bytes_received: int = 0  # pieces of the copy applied, for its progress (``status``)
    started_s: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.host_id = self.host_id or self.workload


def staging_id(workload: str, epoch: int) -> str:
    """The host id a new standby copy is received under while the aligned one it replaces keeps serving."""
    return f"standby-{hashlib.sha256(workload.encode()).hexdigest()[:16]}-{epoch}"


class MigrationError(NodeError):
    """A migration was refused or aborted; the workload stayed where it was."""


class MigrationService:
    """Migration state of one node.

    ``clock`` gives the seconds the handlers and moves measure time with
    (throttling, blackouts, the planners' rates); a test may pass its own.
    """

    def __init__(self, node: Node, clock: Callable[[], float] = time.perf_counter) -> None:
        self.node = node
        self.clock = clock
        self.ownership = Ownership()
        self.owned: dict[str, Owned] = {}
        self.incoming: dict[str, Incoming] = {}
        # A new standby copy being received while the aligned one in
        # ``incoming`` keeps serving: it replaces that one once aligned.
        self.staging: dict[str, Incoming] = {}
        self.active: dict[str, "Migration"] = {}
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)
        self.metrics = MoveMetrics()  # read at scrape time (migrate._metrics)
        self.lifecycle_waker = trio.Event()  # set when a lifecycle deadline may have come closer (_life_node)

    def status(self) -> tuple[dict[str, Any], ...]:
        """Moves under way, incoming and the most recent finished ones, for ``status``.

        Each names the workload's ``app``: ``status`` shows a client certificate its own tenant's only.
        """
        now = self.clock()
        out = [progress.outgoing(m, now) for m in self.active.values()]
        out += [progress.incoming(i, "incoming") for i in self.incoming.values()]
        out += [progress.incoming(i, "staging") for i in self.staging.values()]
        return tuple(out) + tuple(self.recent)

    def received(self, inc: Incoming, data: bytes) -> None:
        """Count a piece of a copy applied (``inc``'s progress, and the node's total for /metrics)."""
        inc.bytes_received += len(data)
        self.metrics.bytes_received += len(data)

    @property
    def moved(self) -> dict[str, Tombstone]:
        """Where each workload that left (or that a copy is received over) went."""
        return {w: Tombstone.of(peer) for w, peer in self.ownership.forwards().items()}

    def tombstone(self, workload: str) -> Tombstone | None:
        forward = self.ownership.record(workload).forward
        return Tombstone.of(forward) if forward is not None else None

    def event(self, workload: str, event: Event, owner: Owned | None = None) -> tuple[Action, ...]:
        """Apply one ownership event; keep ``owned`` in step; return the actions left to carry out.

        ``owner`` is the payload of a workload this node takes ownership
        of.  A workload no longer owned leaves ``owned``; if it went
        elsewhere its payload's ``moved`` says where, for queued calls
        (the ``Redirect`` action).  Raises ``OwnershipError`` (changing
        nothing) for an event the table or its guard refuses.

        The handlers carry out the other actions: ``Send`` is the move's
        MIncoming and rounds (``Migration``), ``Commit`` its MCommit,
        ``Committed`` the target's take-over and MCommitted reply,
        ``Abort`` the source's MAbort, ``Drop`` removing the copy from the
        host.  ``Persist`` needs nothing at once: the node's checkpoint
        (SIGTERM) saves owned records and tombstones from this table, after
        a stopping node has finished its moves.
        """
        actions = self.ownership.handle(workload, event)
        record = self.ownership.record(workload)
        if owner is not None:
            self.owned[workload] = owner
        held = self.owned.get(workload)
        if held is not None and record.state in OWNING:
            held.epoch = record.epoch
        elif held is not None:
            del self.owned[workload]
            for action in actions:
                if isinstance(action, Redirect):
                    held.moved = Tombstone.of(action.to)
        return actions

    def forget(self, inc: "Incoming", kind: EventKind) -> None:
        """Record that a received copy was dropped, if the ownership record still describes it."""
        record = self.ownership.record(inc.workload)
        if inc.host_id != inc.workload:
            if record.staging == inc.epoch:
                self.event(inc.workload, Event(EventKind.DROP_STAGING))
        elif record.epoch == inc.epoch and record.state is (State.STANDBY if inc.standby else State.RECEIVING):
            self.event(inc.workload, Event(kind, inc.epoch))

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
        if (owned is None and self.ownership.state(workload) is State.ABSENT
                and workload not in self.incoming and not self.is_staging(workload)):
            # A workload deployed with plain `migrate-node deploy` and never
            # used through a handle: adopt it at epoch 1, with an empty
            # ledger (no handle call ran on it).  Workloads this node owned
            # before a restart come back with their own epoch and ledger
            # (_save_record below), so they never reach this line.
            try:
                self.node.host.info(workload)
            except HostError:
                return None
            owned = Owned(workload, epoch=1)
            self.event(workload, Event(EventKind.SPAWN), owner=owned)
        return owned


def service(node: Node) -> MigrationService:
    """The node's MigrationService: the migration plugin's per-node state."""
    return node.plugin_state(PLUGIN_NAME)


def peer_address(text: str, what: str) -> Address:
    """The node address a request names in its field ``what``; raises BadArguments if it is not one."""
    try:
        return parse_address(text)
    except ConfigError as exc:
        raise BadArguments(f"{what} {text!r} is not a node address: {exc}") from None


def _moved_reply(request_id: int, workload: str, stone: Tombstone) -> MResult:
    return MResult(id=request_id, epoch=stone.epoch, moved_to=stone.to_name, moved_address=stone.to_address)


def _not_owner(request_id: int, node: Node, workload: str) -> ErrorReply:
    return error(request_id, MigrationCode.NOT_OWNER, f"{node.config.name} does not own workload {workload!r}",
                 details={"workload_id": workload})


async def _drop_incoming(node: Node, svc: MigrationService, inc: Incoming, kind: EventKind = EventKind.DROP) -> None:
    """Forget an incoming (or staging) copy and free its workload (called holding ``inc.lock``).

    ``kind`` is the ownership event: a local DROP, or the source's ABORT.
    """
    if svc.current(inc):
        del svc.holder(inc)[inc.workload]
        svc.forget(inc, kind)
    inc.turn.unpark_all()  # chunks waiting for their turn find it gone
    await free_copy(node, inc)


async def free_copy(node: Node, inc: Incoming) -> None:
    """Free the workload a copy being forgotten holds: its first round half restored, or the copy (holding ``inc.lock``)."""
    fed, inc.fed = inc.fed, None
    if fed is not None:
        await node.run_host(fed.abort)
    if inc.created:
        await node.run_host(ops.remove_quietly, node.host, inc.host_id)


async def _drop_staging(node: Node, svc: MigrationService, workload: str) -> None:
    """Forget the new standby copy being received for ``workload``, if any (called holding no copy's lock)."""
    staged = svc.staging.get(workload)
    if staged is not None:
        async with staged.lock:
            await _drop_incoming(node, svc, staged)
