"""Handles: an application's reference to a workload that may move.

A handle sends every operation to the node it believes owns the workload,
with the handle's id and a fresh sequence number.  When the node says the
workload moved, or cannot be reached, the handle finds the owner and sends
the *same* sequence number again; the owner's call ledger turns a repeat
into the recorded outcome.  So a call is never lost and never runs twice,
and the application never sees the move.  A node restarted with SIGTERM
keeps its workloads and ledgers; a call waits up to ``reconnect_timeout_s``
for its owner to come back.
"""

from __future__ import annotations

import functools
import logging
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

import trio

from nodes import ConnectionFailed, ErrorCode, NodeShuttingDown, RemoteNodeError, check_call_args

from ._codes import MigrationCode
from ._errors import MigrationFailed, WorkloadUnavailable
from ._messages import MCall, MigrationReport, MMigrate, MReport
from ._oplog import error_outcome, log_entry, reply_outcome
from ._progress import DEFAULT_INTERVAL_S, Callback, watch
from ._protection import Protection

logger = logging.getLogger(__name__)

#: How long a handle keeps looking for its workload before giving up on a call.
DEFAULT_RETRY_S = 20.0
#: How long a call waits for an unreachable owner to come back (a node
#: restarted with SIGTERM brings its workloads back on the same address).
DEFAULT_RECONNECT_TIMEOUT_S = 30.0


class Handle:
    """A migratable workload, wherever it runs.  Created by ``Cluster.spawn``."""

    def __init__(self, cluster, workload: str, *, node: str, address: str, epoch: int) -> None:
        self._cluster = cluster
        self.workload = workload
        self._node = node
        self._address = address
        self.epoch = epoch
        self._caller = uuid.uuid4().hex
        self._next_seq = 0
        self._done: set[int] = set()
        self._ack = -1  # every seq <= _ack has been answered
        self.retry_s = DEFAULT_RETRY_S
        self.reconnect_timeout_s = cluster.reconnect_timeout_s
        self._moving = trio.Lock()

    def __repr__(self) -> str:
        return f"<Handle {self.workload} on {self._node} epoch {self.epoch}>"

    @property
    def node(self) -> str:
        """The name of the node the workload runs on now."""
        return self._node

    # --- operations ---------------------------------------------------------

    async def call(self, export: str, *args: int | float) -> None | int | float | tuple:
        """Call an export with numbers; return None, one value or a tuple.

        Raises ``TypeError`` or ``nodes.BadArguments`` (a ``ValueError``)
        before sending for arguments no export could take
        (``nodes.check_call_args``), the workload's errors (``nodes.WorkloadTrap``,
        ``DeadlineExceeded`` for a call past the node's per-call deadline,
        ``UnknownExport``, ``BadArguments``...) and
        ``WorkloadUnavailable`` when no node can serve the call.
        """
        reply = await self._invoke(op="call", export=export, args=check_call_args(args))
        values = reply.values
        return None if not values else values[0] if len(values) == 1 else tuple(values)

    async def read_memory(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes of the workload's memory 0 at ``offset``."""
        return (await self._invoke(op="read", offset=offset, length=length)).data

    async def write_memory(self, offset: int, data: bytes) -> None:
        """Write ``data`` into the workload's memory 0 at ``offset``."""
        await self._invoke(op="write", offset=offset, data=bytes(data))

    async def protect(self, mode: str = "checkpoint", *, interval_s: float = 1.0, to: str = "local") -> None:
        """Protect the workload against losing its node, or stop (``mode="off"``).

        With "checkpoint", the application fetches a checkpoint every
        ``interval_s`` and logs every operation made through its handles;
        if the owner becomes unreachable, the workload is rebuilt on node
        ``to`` from the checkpoint and the log, and calls carry on there.
        With "standby", the owner keeps a hot copy on node ``to``, which is
        promoted if the owner becomes unreachable.  Protection follows the
        workload through moves.  Raises UnknownNode, ValueError for a bad
        mode, and node errors.
        """
        await self._cluster.protect(self, Protection(mode=mode, interval_s=interval_s, to=to))

    async def remove(self) -> None:
        """Stop the workload and free it on its node; the handle is unusable afterwards."""
        await self._invoke(op="remove")

    # --- bytes in and out (the wm_alloc convention of workloads/src/wm.h) --

    async def put_bytes(self, data: bytes) -> int:
        """Copy ``data`` into a guest buffer from ``wm_alloc``; return its address.

        Free it with ``call("wm_free", ptr)``.  Raises MemoryError if the
        guest could not allocate.
        """
        ptr = await self.call("wm_alloc", len(data))
        if not ptr:
            raise MemoryError(f"workload {self.workload} could not allocate {len(data)} bytes")
        await self.write_memory(ptr, data)
        return ptr

    async def call_with_bytes(self, export: str, *blobs: bytes, extra: tuple = ()) -> None | int | float | tuple:
        """Call ``export(ptr1, len1, ptr2, len2, ..., *extra)`` with each blob in guest memory."""
        ptrs = []
        try:
            for blob in blobs:
                ptrs.append(await self.put_bytes(blob))
            flat = [v for ptr, blob in zip(ptrs, blobs) for v in (ptr, len(blob))]
            return await self.call(export, *flat, *extra)
        finally:
            for ptr in ptrs:
                await self.call("wm_free", ptr)

    async def read_prefixed(self, ptr: int) -> bytes | None:
        """Read a u32-length-prefixed result buffer at ``ptr`` (None for a null pointer)."""
        if not ptr:
            return None
        (length,) = struct.unpack("<I", await self.read_memory(ptr, 4))
        return await self.read_memory(ptr + 4, length)

    # --- moving -------------------------------------------------------------

    async def migrate(self, to: str, *, strategy: str = "precopy", downtime_budget_s: float = 0.03,
                      max_rounds: int = 20, progress: Callback | None = None,
                      progress_interval_s: float = DEFAULT_INTERVAL_S) -> MigrationReport:
        """Move the workload to node ``to`` (a name, or "local") and return the report.

        Calls keep working throughout.  ``progress``, a function or an async
        function, gets a ``MoveProgress`` each time the source's figures
        change (asked every ``progress_interval_s``), and last one with the
        report's (phase "done"; ``migrate._progress``).  Raises ``UnknownNode``,
        ``MigrationFailed`` (the workload stayed where it was) or
        ``WorkloadUnavailable``.
        """
        target = self._cluster.address_of(to)
        async with self._moving:
            started = trio.current_time()
            deadline = started + self.retry_s
            while True:
                try:
                    client = await self._cluster.client(self._address)
                    request = functools.partial(
                        _report, client, workload=self.workload, target=target, strategy=strategy,
                        downtime_budget_s=downtime_budget_s, max_rounds=max_rounds,
                        keep_standby=self._cluster.standby_here(self))
                    report = await (request() if progress is None else
                                    watch(client, self.workload, request, progress, progress_interval_s))
                    break
                except RemoteNodeError as exc:
                    if exc.code == MigrationCode.NOT_OWNER:
                        await self._relocate(deadline)
                        continue
                    if exc.code in (MigrationCode.MIGRATION_FAILED, MigrationCode.MIGRATION_BUSY):
                        raise MigrationFailed(str(exc)) from None
                    raise
                except ConnectionFailed:
                    self._cluster.forget(self._address)
                    await self._relocate(deadline)
                    if self._address == target:
                        # The source was lost after the target committed: the
                        # move happened, but its figures went down with it.
                        return MigrationReport(
                            workload=self.workload, strategy=strategy, source="?", target=self._node,
                            total_s=trio.current_time() - started, frozen_s=0.0, rounds=0, bytes_sent=0,
                            pages_sent=0, dirty_pages_per_s=0.0, throttle=0.0, epoch=self.epoch,
                            notes=("the source node was lost after the commit; its figures are unavailable",))
            self._moved_to(report.target, target, report.epoch)
            self._cluster.publish("moved", self.workload, report.target, f"{report.strategy} from {report.source}")
            await self._cluster.after_move(self)
            return report

    # --- plumbing -------------------------------------------------------------

    def _moved_to(self, name: str, address: str, epoch: int) -> None:
        if epoch >= self.epoch:
            self._node, self._address, self.epoch = name, address, epoch
            self._cluster.learn(name, address)

    def _finish(self, seq: int) -> None:
        self._done.add(seq)
        while self._ack + 1 in self._done:
            self._ack += 1
            self._done.discard(self._ack)

    async def _invoke(self, **fields):
        seq = self._next_seq
        self._next_seq += 1
        deadline = _Deadline(trio.current_time() + self.retry_s, self.reconnect_timeout_s)
        # Whether a node may have run the call without our learning its
        # outcome: only a request whose connection broke leaves that doubt.
        # A NOT_OWNER, SHUTTING_DOWN or "moved" answer means that node did
        # not run it.
        maybe_ran = False
        while True:
            try:
                client = await self._cluster.client(self._address)
            except ConnectionFailed:
                deadline.owner_unreachable()
                await self._relocate(deadline.at, ran=None if maybe_ran else False)
                continue
            try:
                reply = await client.request(MCall, workload=self.workload, caller=self._caller, seq=seq,
                                             ack=self._ack, **fields)
            except ConnectionFailed as exc:
                maybe_ran = True
                self._cluster.forget(self._address)
                await self._wait_for_owner(deadline, shutting_down=isinstance(exc, NodeShuttingDown), ran=None)
                continue
            except RemoteNodeError as exc:
                if exc.code == MigrationCode.NOT_OWNER:
                    await self._relocate(deadline.at, ran=None if maybe_ran else False)
                    continue
                if exc.code == ErrorCode.SHUTTING_DOWN:  # refused, not run
                    await self._wait_for_owner(deadline, shutting_down=True, ran=None if maybe_ran else False)
                    continue
                self._finish(seq)
                raise
            except Exception as exc:
                self._finish(seq)  # the workload's own error: the call ran (or was refused) once
                self._log(seq, fields, error_outcome(exc))
                raise
            if reply.moved_to is not None:
                self._moved_to(reply.moved_to, reply.moved_address, reply.epoch)
                continue
            self._finish(seq)
            self.epoch = max(self.epoch, reply.epoch)
            self._log(seq, fields, reply_outcome(reply))
            return reply

    def _log(self, seq: int, fields: dict, outcome) -> None:
        """Log a state-changing operation's outcome if this application protects the workload."""
        if self._cluster.protects(self.workload):
            call = MCall(id=0, workload=self.workload, caller=self._caller, seq=seq, **fields)
            self._cluster.log_operation(self.workload, log_entry(call, outcome))

    async def _wait_for_owner(self, deadline: _Deadline, *, shutting_down: bool, ran: bool | None) -> None:
        """The owner is unreachable (or stopping): give it ``reconnect_timeout_s`` to come back.

        Raises WorkloadUnavailable (with ``ran``) when the deadline passes.
        """
        if shutting_down:
            self._cluster.shutting_down(self._address, self.reconnect_timeout_s)
        deadline.owner_unreachable()
        await self._relocate(deadline.at, ran=ran)

    async def _relocate(self, deadline: float, *, ran: bool | None = None) -> None:
        """Find the workload's owner, waiting and asking again until ``deadline``.

        While the last owner is restarting (it said it was shutting down, less
        than ``reconnect_timeout_s`` ago) the workload is waited for, not
        failed over: the restart brings it back with its call ledger.
        Raises WorkloadUnavailable when the deadline passes.
        """
        delay = 0.02
        while True:
            found = await self._cluster.locate(self.workload)
            if found is None and not self._cluster.restarting(self._address):
                found = await self._cluster.recover(self.workload, self.epoch)
            if found is not None:
                name, address, epoch = found
                if epoch >= self.epoch:
                    self._node, self._address, self.epoch = name, address, epoch
                    return
            if trio.current_time() + delay > deadline:
                raise WorkloadUnavailable(
                    f"no node can serve workload {self.workload} (last seen on {self._node})", ran=ran)
            await trio.sleep(delay)
            delay = min(delay * 2, 0.5)


@dataclass
class _Deadline:
    """When one call through a handle gives up.

    ``retry_s`` after the call began, or ``reconnect_s`` after its owner was
    first found unreachable, whichever is later.
    """

    at: float
    reconnect_s: float
    waiting_for_owner: bool = False

    def owner_unreachable(self) -> None:
        if not self.waiting_for_owner:
            self.waiting_for_owner = True
            self.at = max(self.at, trio.current_time() + self.reconnect_s)


def module_bytes(module: bytes | str | Path) -> bytes:
    """Module bytes from bytes or a path."""
    if isinstance(module, (bytes, bytearray, memoryview)):
        return bytes(module)
    return Path(module).read_bytes()


async def _report(client, **fields) -> MigrationReport:
    reply: MReport = await client.request(MMigrate, **fields)
    return reply.report
