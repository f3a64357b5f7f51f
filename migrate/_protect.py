"""Protection: checkpoints streamed to the client, and failover from them.

When a handle protects a workload, the application keeps:

* the latest checkpoint, fetched from the owner every ``interval_s`` (a
  consistent snapshot taken between calls, with the call ledger and the
  index of the last operation it includes);
* the log of every state-changing operation made through this
  application's handles since that checkpoint: what was called, the
  nondeterministic inputs it consumed (recorded by the owner), and the
  outcome it returned.

If the owner becomes unreachable and no other node owns the workload, the
application restores the checkpoint on the failover node ("local" by
default, the application itself), replays the log there -- the node checks
each replayed outcome against the logged one -- and commits it with a
higher ownership epoch.  Calls in flight are then retried with their
original sequence numbers: those the dead owner answered are in the ledger
and are not run again; those it never answered run once, here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import trio

from nodes import NodeError

from ._errors import MigrateError
from ._ledger import CallLedger, Outcome
from ._messages import (
    MAlign,
    MCheckpoint,
    MCheckpointData,
    MChunk,
    MCommit,
    MFollow,
    MIncoming,
    MLocate,
    MPromote,
    MProtect,
    MReplay,
)

logger = logging.getLogger(__name__)

MODES = ("off", "checkpoint", "standby")


@dataclass(frozen=True)
class Protection:
    """How a workload is protected against losing its node.

    ``mode`` is "off", "checkpoint" (``interval_s`` says how often a
    checkpoint is fetched; ``to`` is the node that rebuilds the workload,
    "local" being the application's own node) or "standby" (the owner keeps
    a hot replica on node ``to``, which replays every call as it happens
    and takes over at once).
    """

    mode: str = "checkpoint"
    interval_s: float = 1.0
    to: str = "local"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"protection mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {self.interval_s!r}")


@dataclass(frozen=True)
class Event:
    """Something that happened to a workload: "moved", "failed_over" or "diverged"."""

    kind: str
    workload: str
    node: str
    detail: str = ""


class FailoverFailed(MigrateError):
    """The workload could not be rebuilt from its checkpoint and log."""


@dataclass
class Protector:
    """The application-side record that lets a workload survive its node."""

    cluster: Any
    workload: str
    module: bytes
    protection: Protection
    checkpoint: MCheckpointData | None = None
    log: dict[int, dict] = field(default_factory=dict)
    failovers: int = 0
    _trimmed: int = 0
    _lock: trio.Lock = field(default_factory=trio.Lock)

    def record(self, entry: dict) -> None:
        """Log a state-changing operation's outcome (index > 0)."""
        if entry["index"] > (self.checkpoint.index if self.checkpoint else self._trimmed):
            self.log[entry["index"]] = entry

    def trim(self, upto: int) -> None:
        """Forget logged operations up to ``upto``: a checkpoint or the standby has them."""
        self._trimmed = max(self._trimmed, upto)
        for index in [i for i in self.log if i <= upto]:
            del self.log[index]

    async def start(self, handle) -> None:
        client = await self.cluster.client(handle._address)
        if self.protection.mode == "standby":
            await self.follow(handle)
            return
        await client.request(MProtect, workload=self.workload, record=True)
        await self.take_checkpoint(handle)

    async def follow(self, handle) -> None:
        """Ask the current owner to keep a hot standby on ``to`` (again, after a move)."""
        standby = self.cluster.address_of(self.protection.to)
        if standby == handle._address:
            return  # the workload runs on the standby node itself: nothing to follow from
        client = await self.cluster.client(handle._address)
        await client.request(MFollow, workload=self.workload, standby=standby)

    async def take_checkpoint(self, handle) -> None:
        """Fetch a checkpoint from the current owner and trim the log it covers."""
        async with self._lock:
            client = await self.cluster.client(handle._address)
            ckpt = await client.request(MCheckpoint, workload=self.workload)
            self.checkpoint = ckpt
            self.trim(ckpt.index)

    async def run(self, handle) -> None:
        """Fetch checkpoints (or, for a standby, its progress) every ``interval_s`` until cancelled."""
        if self.protection.mode == "standby":
            while True:
                await trio.sleep(self.protection.interval_s)
                try:
                    client = await self.cluster.client(self.cluster.address_of(self.protection.to))
                    where = await client.request(MLocate, workload=self.workload)
                except (NodeError, MigrateError) as exc:
                    logger.info("standby of %s not reachable: %s", self.workload, exc)
                    continue
                self.trim(where.index)
        while True:
            await trio.sleep(self.protection.interval_s)
            try:
                await self.take_checkpoint(handle)
            except (NodeError, MigrateError) as exc:
                logger.info("checkpoint of %s skipped: %s", self.workload, exc)

    async def failover(self, epoch: int) -> tuple[str, str, int, bool]:
        """Rebuild the workload on the failover node unless another handle already did.

        Returns (name, address, epoch, rebuilt).  Raises FailoverFailed if
        there is no checkpoint, the log has a gap or the replay diverges.
        """
        async with self._lock:
            found = await self.cluster.locate(self.workload)
            if found is not None:  # another handle of ours failed it over meanwhile
                return (*found, False)
            if self.protection.mode == "standby":
                return await self._promote(epoch)
            if self.checkpoint is None:
                raise FailoverFailed(f"workload {self.workload} has no checkpoint to fail over from")
            ckpt = self.checkpoint
            address = self.cluster.address_of(self.protection.to)
            entries = self._entries_after(ckpt.index)
            expected = ckpt.index + len(entries) + 1
            new_epoch = max(epoch, ckpt.epoch) + 1
            try:
                client = await self.cluster.client(address)
                await client.ensure_module(self.module)
                settings = dict(ckpt.settings or {})
                await client.request(MIncoming, workload=self.workload, module_sha256=ckpt.module_sha256,
                                     app=ckpt.app, epoch=new_epoch, source="failover",
                                     args=tuple(settings.get("args", ())), env=dict(settings.get("env") or {}),
                                     memory_limit_bytes=settings.get("memory_limit_bytes"))
                await client.request(MChunk, workload=self.workload, epoch=new_epoch, data=ckpt.data)
                await client.request(MAlign, workload=self.workload, epoch=new_epoch, calls=ckpt.calls,
                                     index=ckpt.index)
                if entries:
                    await client.request(MReplay, workload=self.workload, epoch=new_epoch,
                                         entries=tuple(_wire(e) for e in entries))
                ledger = CallLedger.from_wire(ckpt.ledger)
                for e in entries:
                    ledger.record(e["caller"], e["seq"], _outcome(e))
                await client.request(MCommit, workload=self.workload, epoch=new_epoch, ledger=ledger.to_wire(),
                                     calls=ckpt.calls + sum(e["op"] == "call" for e in entries),
                                     index=expected - 1, record=True, monotonic_ns=ckpt.monotonic_ns)
            except NodeError as exc:
                raise FailoverFailed(f"failover of {self.workload} to {self.protection.to} failed: {exc}") from None
            self.failovers += 1
            self.checkpoint = None  # the old one belongs to the old epoch; the next loop fetches anew
            self.log.clear()
            return client.node, address, new_epoch, True

    def _entries_after(self, index: int) -> list[dict]:
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

    async def _promote(self, epoch: int) -> tuple[str, str, int, bool]:
        """Promote the standby, first replaying the operations it had not received yet.

        The owner forwards operations to its standby without waiting, so the
        last few answered before it died may be missing there; this
        application's log has them, with their recorded inputs.
        """
        address = self.cluster.address_of(self.protection.to)
        try:
            client = await self.cluster.client(address)
            where = await client.request(MLocate, workload=self.workload)
            if where.status != "incoming":
                raise FailoverFailed(f"{self.protection.to} holds no standby of {self.workload} ({where.status})")
            missing = self._entries_after(where.index)
            if missing:
                await client.request(MReplay, workload=self.workload, epoch=where.epoch,
                                     entries=tuple(_wire(e) for e in missing))
            new_epoch = max(epoch + 1, where.epoch)
            await client.request(MPromote, workload=self.workload, epoch=new_epoch)
        except NodeError as exc:
            raise FailoverFailed(f"cannot promote the standby of {self.workload} on {self.protection.to}: {exc}") from None
        self.failovers += 1
        self.log.clear()
        return client.node, address, new_epoch, True


def _wire(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in ("message",)}


def _outcome(entry: dict) -> Outcome:
    if entry["ok"]:
        return Outcome(True, (list(entry.get("values", ())), entry.get("data", b""), entry["index"],
                              entry.get("inputs")))
    return Outcome(False, {"op_index": entry["index"]}, entry.get("code", "workload_error"),
                   entry.get("message", ""))
