"""Protection: checkpoints streamed to the client, or a hot standby, and failover.

When a handle protects a workload with "checkpoint", the application keeps:

* the latest checkpoint, fetched from the owner every ``interval_s``: a
  consistent snapshot taken between calls, with the call ledger and the
  index of the last operation it includes.  It is fetched in parts that
  fit a frame, several asked for at once (``_chunks.WINDOW_PIECES``), and
  kept as those encoded parts;
* the log of every state-changing operation made through this
  application's handles since that checkpoint (``_oplog``): what was
  called or written, the nondeterministic inputs it consumed (recorded by
  the owner), and the outcome it returned.

If the owner becomes unreachable and no other node owns the workload, the
application restores the checkpoint on the failover node ("local" by
default, the application itself) by sending its parts (again several in
flight, numbered so the node applies them in order), replays the log
there -- the node checks each replayed outcome against the logged one --
and commits it with a higher ownership epoch.  Calls in flight are then
retried with their original sequence numbers: those the dead owner
answered are in the ledger and are not run again; those it never answered
run once, here.

With "standby" the owner keeps a hot copy on another node instead (see
``_standby._follow``); the application keeps the log since the last
operation the standby reported, and on failover replays what the standby
missed and promotes it.

The protector follows the workload through moves, whoever makes them: when
the node it knows stops owning the workload, it looks the owner up again.
Nothing it does in the background raises: a failure is logged and the next
round tries again.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from nodes import HostError, NodeClient, NodeError, RemoteNodeError, ReplayDivergence, Reply

from ._chunks import FRAME_OVERHEAD_BYTES, WINDOW_PIECES, chunk_bytes, recut
from ._chunks import send as send_chunks
from ._codes import MigrationCode
from ._errors import MigrateError
from ._ledger import CallLedger
from ._messages import (
    MAlign,
    MCheckpoint,
    MCheckpointBytes,
    MCheckpointData,
    MCheckpointPart,
    MCommit,
    MFollow,
    MIncoming,
    MLocate,
    MPromote,
    MProtect,
    MReplay,
    MWhere,
)
from ._oplog import batches, entry_bytes, entry_outcome
from ._protection import FailoverFailed, Protection, ProtectionStatus
from ._replies import expect

if TYPE_CHECKING:
    from ._cluster import Cluster
    from ._handle import Handle

logger = logging.getLogger(__name__)

#: The largest checkpoint (encoded) an application accepts: a workload's
#: memories are at most 4 GiB each; this allows two of them, compressed or not.
MAX_CHECKPOINT_BYTES = 8 * 2**30
#: Logged operations' bytes (payloads included) that make the protector take
#: a checkpoint (or ask the standby how far it got) at once rather than at
#: the next ``interval_s``, so the log stays near this size.
LOG_SOFT_LIMIT_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint the application holds: its description and its encoded snapshot, in parts."""

    meta: MCheckpointData
    parts: tuple[bytes, ...]

    @property
    def index(self) -> int:
        return self.meta.index

    @property
    def epoch(self) -> int:
        return self.meta.epoch

    @property
    def size_bytes(self) -> int:
        return sum(len(p) for p in self.parts)


async def fetch_parts(client: NodeClient, workload: str, token: str, *,
                      window: int = WINDOW_PIECES) -> tuple[bytes, ...]:
    """The parts of checkpoint ``token`` of ``workload``, ``window`` of them asked for at once.

    Parts are taken in order; up to ``window`` - 1 are asked for past the
    last one and their replies dropped.  Raises node errors (a part
    refused or the connection lost: no parts are returned), and
    FailoverFailed past MAX_CHECKPOINT_BYTES.
    """
    parts: list[bytes] = []
    size = 0

    def take(reply: Reply) -> bool:
        nonlocal size
        piece = expect(MCheckpointBytes, reply)
        size += len(piece.data)
        if size > MAX_CHECKPOINT_BYTES:
            raise FailoverFailed(f"the checkpoint of {workload} exceeds {MAX_CHECKPOINT_BYTES} bytes")
        parts.append(piece.data)
        return piece.last

    asks = ((MCheckpointPart, {"workload": workload, "token": token, "part": n}) for n in itertools.count())
    await client.pipeline(asks, window=window, on_reply=take)
    return tuple(parts)


#: What a protector's background work may run into; it logs them and carries on.
_EXPECTED = (NodeError, HostError, MigrateError, trio.TooSlowError)


@dataclass
class Protector:
    """The application-side record that lets a workload survive its node."""

    cluster: Cluster
    workload: str
    module: bytes
    protection: Protection
    checkpoint: Checkpoint | None = None
    log: dict[int, dict[str, Any]] = field(default_factory=dict)
    log_bytes: int = 0
    failovers: int = 0
    owner: str = ""  # the address the workload was last seen at
    epoch: int = 0   # the highest ownership epoch seen
    window: int = WINDOW_PIECES  # checkpoint parts (and failover chunks) in flight at once
    _trimmed: int = 0
    _lock: trio.Lock = field(default_factory=trio.Lock)
    _due: trio.Event = field(default_factory=trio.Event)

    # --- the log ------------------------------------------------------------

    def record(self, entry: dict[str, Any] | None) -> None:
        """Log a state-changing operation's entry (None, for other operations, is ignored)."""
        if entry is None or entry["index"] <= (self.checkpoint.index if self.checkpoint else self._trimmed):
            return
        previous = self.log.get(entry["index"])
        if previous is not None:
            self.log_bytes -= entry_bytes(previous)
        self.log[entry["index"]] = entry
        self.log_bytes += entry_bytes(entry)
        if self.log_bytes > LOG_SOFT_LIMIT_BYTES:
            self._due.set()

    def trim(self, upto: int) -> None:
        """Forget logged operations up to ``upto``: a checkpoint or the standby has them."""
        self._trimmed = max(self._trimmed, upto)
        for index in [i for i in self.log if i <= upto]:
            self.log_bytes -= entry_bytes(self.log.pop(index))

    def seen(self, address: str, epoch: int) -> None:
        """The workload was found at ``address`` with ``epoch``."""
        if epoch >= self.epoch:
            self.owner, self.epoch = address, epoch

    def status(self) -> ProtectionStatus:
        ckpt = self.checkpoint
        return ProtectionStatus(
            mode=self.protection.mode, to=self.protection.to, checkpoint_index=ckpt.index if ckpt else None,
            checkpoint_bytes=ckpt.size_bytes if ckpt else 0, checkpoint_parts=len(ckpt.parts) if ckpt else 0,
            log_entries=len(self.log), log_bytes=self.log_bytes, failovers=self.failovers)

    def wake(self) -> None:
        """Run the next round now rather than at the next ``interval_s``."""
        self._due.set()

    # --- starting and the background rounds -----------------------------------

    async def start(self, handle: Handle) -> None:
        """Begin protecting: a standby at the owner, or recording and a first checkpoint.

        Raises node errors (the protection is not in place then).
        """
        self.seen(handle._address, handle.epoch)
        if self.protection.mode == "standby":
            await self.follow(self.owner)
            return
        client = await self.cluster.client(self.owner)
        await client.request(MProtect, workload=self.workload, record=True)
        await self.take_checkpoint(self.owner)

    async def stop(self) -> None:
        """Stop protecting at the owner (protection turned off or changed); best effort.

        The standby feed ends, and the owner stops recording the inputs
        calls consume (unless a dual move's target follows them): left on,
        none of the workload's calls ran on the event loop any more.
        """
        try:
            client = await self.cluster.client(self.owner)
            if self.protection.mode == "standby" and self.owner != self.cluster.address_of(self.protection.to):
                await client.request(MFollow, workload=self.workload, standby="")
            await client.request(MProtect, workload=self.workload, record=False)
        except _EXPECTED as exc:
            logger.info("could not stop protecting %s: %s", self.workload, exc)

    async def follow(self, owner: str) -> None:
        """Ask the owner at ``owner`` to keep a hot standby on ``to`` (a no-op if it already does)."""
        standby = self.cluster.address_of(self.protection.to)
        if standby == owner:
            return  # the workload runs on the standby node itself: nothing to follow from
        client = await self.cluster.client(owner)
        await client.request(MFollow, workload=self.workload, standby=standby)

    async def run(self) -> None:
        """Every ``interval_s`` (or at once when woken): refresh the checkpoint, or check the standby.

        Runs until cancelled and never raises otherwise.
        """
        while True:
            with trio.move_on_after(self.protection.interval_s):
                await self._due.wait()
            self._due = trio.Event()
            try:
                if self.protection.mode == "standby":
                    await self._check_standby()
                else:
                    await self._refresh()
            except _EXPECTED as exc:
                logger.info("protection round for %s skipped: %s", self.workload, exc)
            except Exception:  # a bug here must not take the application's cluster down
                logger.exception("protection round for %s failed", self.workload)

    async def _refresh(self) -> None:
        """Take a checkpoint at the owner; if the owner is not where we thought, find it first."""
        try:
            await self.take_checkpoint(self.owner)
            return
        except (NodeError, HostError) as exc:  # moved, removed, unreachable or stopping
            # A node stopping says so to whoever asks: its workloads are waited for, not failed over.
            self.cluster.note_shutdown(self.owner, exc)
            found = await self.cluster.locate(self.workload)
            if found is None or found[1] == self.owner:
                raise
            logger.info("checkpoint of %s: %s; it is on %s now", self.workload, exc, found[0])
            self.seen(found[1], found[2])
        await self.take_checkpoint(self.owner)

    async def _check_standby(self) -> None:
        """Trim the log to what the standby has replayed; start a standby again if it has none."""
        standby = self.cluster.address_of(self.protection.to)
        client = await self.cluster.client(standby)
        where = expect(MWhere, await client.request(MLocate, workload=self.workload))
        if where.status == "owner" or (where.status == "incoming" and where.standby):
            self.trim(where.index)
            return
        if where.status == "incoming":
            return  # a move onto the standby node is under way
        found = await self.cluster.locate(self.workload)
        if found is None:
            return  # no owner: the next call fails the workload over
        self.seen(found[1], found[2])
        logger.info("%s holds no standby of %s (%s); asking its owner %s for one", self.protection.to,
                    self.workload, where.status, found[0])
        await self.follow(self.owner)

    # --- checkpoints ------------------------------------------------------------

    async def take_checkpoint(self, owner: str) -> None:
        """Fetch a checkpoint from the owner at ``owner``; keep it if it is the newest, and trim the log.

        The previous checkpoint stays until this one is complete.  Raises
        node errors, and FailoverFailed for a checkpoint over
        MAX_CHECKPOINT_BYTES.
        """
        client = await self.cluster.client(owner)
        meta = expect(MCheckpointData, await client.request(MCheckpoint, workload=self.workload))
        ckpt = Checkpoint(meta, await fetch_parts(client, self.workload, meta.token, window=self.window))
        async with self._lock:
            current = self.checkpoint
            if current is None or (ckpt.epoch, ckpt.index) >= (current.epoch, current.index):
                self.checkpoint = ckpt
                self.trim(ckpt.index)
            self.seen(owner, ckpt.epoch)

    # --- failover ---------------------------------------------------------------

    async def failover(self, epoch: int) -> tuple[str, str, int, bool]:
        """Rebuild the workload on the failover node unless another handle already did.

        Returns (name, address, epoch, rebuilt).  Raises FailoverFailed if
        there is no checkpoint or standby, the log has a gap or the replay
        diverges.
        """
        async with self._lock:
            found = await self.cluster.locate(self.workload)
            if found is not None:  # another handle of ours failed it over meanwhile
                self.seen(found[1], found[2])
                return (*found, False)
            epoch = max(epoch, self.epoch)
            try:
                if self.protection.mode == "standby":
                    name, address, new_epoch = await self._promote(epoch)
                else:
                    name, address, new_epoch = await self._restore(epoch)
            except (NodeError, HostError) as exc:
                diverged = (isinstance(exc, RemoteNodeError) and exc.code == MigrationCode.DIVERGED
                            or isinstance(exc, ReplayDivergence))
                raise FailoverFailed(f"failover of {self.workload} to {self.protection.to} failed: {exc}",
                                     diverged=diverged) from None
            self.failovers += 1
            self.seen(address, new_epoch)
            return name, address, new_epoch, True

    async def _restore(self, epoch: int) -> tuple[str, str, int]:
        """Restore the checkpoint on ``to``, replay the log after it, and commit there."""
        if self.checkpoint is None:
            raise FailoverFailed(f"workload {self.workload} has no checkpoint to fail over from")
        ckpt, meta = self.checkpoint, self.checkpoint.meta
        entries = self._entries_after(ckpt.index)
        new_epoch = max(epoch, ckpt.epoch) + 1
        address = self.cluster.address_of(self.protection.to)
        client = await self.cluster.client(address)
        await client.ensure_module(self.module)
        settings = dict(meta.settings or {})
        await client.request(MIncoming, workload=self.workload, module_sha256=meta.module_sha256,
                             app=meta.app, epoch=new_epoch, source="failover",
                             args=tuple(settings.get("args", ())), env=dict(settings.get("env") or {}),
                             memory_limit_bytes=settings.get("memory_limit_bytes"))
        await send_chunks(client, recut(ckpt.parts, chunk_bytes(client.peer_max_frame_bytes)),
                          workload=self.workload, epoch=new_epoch, window=self.window)
        await client.request(MAlign, workload=self.workload, epoch=new_epoch, calls=meta.calls, index=ckpt.index)
        await self._replay(client, new_epoch, entries, standby=False)
        ledger = CallLedger.from_wire(meta.ledger)
        for e in entries:
            ledger.record(e["caller"], e["seq"], entry_outcome(e))
        await client.request(MCommit, workload=self.workload, epoch=new_epoch, ledger=ledger.to_wire(),
                             calls=meta.calls + sum(e["op"] == "call" for e in entries),
                             index=ckpt.index + len(entries), record=True, monotonic_ns=meta.monotonic_ns,
                             lifecycle=meta.lifecycle)
        return client.node, address, new_epoch

    async def _promote(self, epoch: int) -> tuple[str, str, int]:
        """Promote the standby, first replaying the operations it had not received yet.

        The owner forwards operations to its standby without waiting, so the
        last few answered before it died may be missing there; this
        application's log has them, with their recorded inputs.
        """
        address = self.cluster.address_of(self.protection.to)
        client = await self.cluster.client(address)
        where = expect(MWhere, await client.request(MLocate, workload=self.workload))
        if where.status != "incoming" or not where.standby:
            raise FailoverFailed(f"{self.protection.to} holds no standby of {self.workload} ({where.status})")
        await self._replay(client, where.epoch, self._entries_after(where.index), standby=True)
        new_epoch = max(epoch + 1, where.epoch)
        await client.request(MPromote, workload=self.workload, epoch=new_epoch)
        return client.node, address, new_epoch

    async def _replay(self, client: NodeClient, epoch: int, entries: list[dict[str, Any]], *, standby: bool) -> None:
        for batch in batches(entries, client.peer_max_frame_bytes - FRAME_OVERHEAD_BYTES):
            await client.request(MReplay, workload=self.workload, epoch=epoch, entries=batch, standby=standby)

    def _entries_after(self, index: int) -> list[dict[str, Any]]:
        """The logged operations after ``index``, in order; FailoverFailed on a gap.

        A gap is an operation the lost node answered whose outcome never
        reached this application: the state after it cannot be rebuilt.
        """
        entries = [self.log[i] for i in sorted(self.log) if i > index]
        for expected, entry in enumerate(entries, index + 1):
            if entry["index"] != expected:
                raise FailoverFailed(
                    f"the log of {self.workload} has a gap before operation {entry['index']}: operation "
                    f"{expected} was answered by the lost node but never reached this application")
        return entries
