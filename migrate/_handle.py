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

import contextlib
import functools
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from nodes import (ConnectionFailed, ErrorCode, ExportSignature, NodeClient, NodeShuttingDown, RemoteNodeError,
                   RemoteProtocolError, UnknownWorkload, check_call_args, own_identity)

from . import _nodes
from ._buffers import BUFFERS, GuestBuffers
from ._codes import MigrationCode
from ._errors import MigrationFailed, WorkloadUnavailable
from ._ledger import Outcome
from ._messages import MCall, MCancel, MCancelled, MigrationReport, MMigrate, MReport, MResult
from ._oplog import error_outcome, log_entry, reply_outcome
from ._placement import Needs, PlacementPolicy
from ._progress import DEFAULT_INTERVAL_S, Callback, Moving, moving, watch
from ._protection import Protection
from ._replies import expect

if TYPE_CHECKING:
    from ._cluster import Cluster

logger = logging.getLogger(__name__)

#: How long a handle keeps looking for its workload before giving up on a call.
DEFAULT_RETRY_S = 20.0
#: How long a call waits for an unreachable owner to come back (a node
#: restarted with SIGTERM brings its workloads back on the same address).
DEFAULT_RECONNECT_TIMEOUT_S = 30.0
#: How long ``removing`` waits for the removal at the end of its block.
REMOVE_ON_EXIT_S = 10.0
#: How long a cancelled call's handle tries to tell the owner to stop it.
CANCEL_NOTICE_S = 2.0


class Handle(GuestBuffers):
    """A migratable workload, wherever it runs.  Created by ``Cluster.spawn``."""

    def __init__(self, cluster: Cluster, workload: str, *, node: str, address: str, epoch: int) -> None:
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

    async def call(self, export: str, *args: int | float | bytes | str,
                   timeout: float | None = None) -> None | int | float | tuple[int | float, ...]:
        """Call an export; return None, one value or a tuple.

        Arguments are numbers; ``bytes`` and ``str`` (as UTF-8) are passed as
        a (pointer, length) pair of a guest buffer from the module's
        ``wm_alloc`` export, freed with ``wm_free`` after the call (the
        convention of ``call_with_bytes``).  Raises ``TypeError`` or
        ``nodes.BadArguments`` (a ``ValueError``) before sending for
        arguments no export could take (``nodes.check_call_args``; bytes for
        a module without ``wm_alloc``), the workload's errors
        (``nodes.WorkloadTrap``, ``DeadlineExceeded`` for a call past the
        node's per-call deadline, ``UnknownExport``, ``BadArguments``...) and
        ``WorkloadUnavailable`` when no node can serve the call.

        A call cancelled by a trio cancel scope, or past ``timeout`` seconds
        (``trio.TooSlowError``), is stopped on the node: within about 10 ms
        if it runs (what it did so far stays, as after a trap), or before it
        starts.  If it had finished, its outcome stays recorded.  Either way
        it has run at most once, and it is never retried.  A workload whose
        operations are replayed elsewhere (protected) lets it finish instead.
        """
        # No cancel scope without a timeout: entering and leaving one costs 4 µs of a 230 µs call.
        with trio.fail_after(timeout) if timeout is not None else contextlib.nullcontext():
            if any(isinstance(a, BUFFERS) for a in args):
                return await self._call_with_buffers(export, args)
            reply = await self._invoke(op="call", export=export, args=check_call_args(args))
        values = reply.values
        return None if not values else values[0] if len(values) == 1 else tuple(values)

    async def exports(self) -> tuple[ExportSignature, ...]:
        """The workload's callable exports: each one's name, parameter and result types, sorted by name.

        Asked of the node that owns the workload now.  Raises
        ``WorkloadUnavailable`` when no node can be found for it.
        """
        at = trio.current_time() + self.retry_s
        while True:
            try:
                client = await self._cluster.client(self._address)
                return await client.exports(self.workload)
            except (ConnectionFailed, UnknownWorkload):  # moved, or its node is away: find it
                await self._relocate(at)

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

    @contextlib.asynccontextmanager
    async def removing(self) -> AsyncIterator[Handle]:
        """``async with h.removing():`` removes the workload when the block ends, by error or cancel too.

        The removal is shielded from the block's cancellation, for at most
        REMOVE_ON_EXIT_S; if it fails the error is raised (or logged, if the
        block raised already).
        """
        try:
            yield self
        finally:
            with trio.CancelScope(shield=True), trio.fail_after(REMOVE_ON_EXIT_S):
                await self.remove()

    # --- moving -------------------------------------------------------------

    def migrating(self, to: str, **options: object) -> contextlib.AbstractAsyncContextManager[Moving]:
        """``migrate(to, **options)`` with its progress as an async iterator of ``MoveProgress`` (``_progress.moving``)."""
        return moving(self.migrate, to, options)

    async def migrate(self, to: str, *, strategy: str = "precopy", downtime_budget_s: float = 0.03,
                      max_rounds: int = 20, needs: Needs | None = None, policy: PlacementPolicy | None = None,
                      progress: Callback | None = None,
                      progress_interval_s: float = DEFAULT_INTERVAL_S) -> MigrationReport:
        """Move the workload to node ``to`` (a name, "local", or "auto") and return the report.

        ``"auto"``: the best other node for ``needs`` by ``policy``
        (``_placement``); NoSuitableNode if none.  Calls keep working
        throughout.  ``progress``, a function or an async function, gets a
        ``MoveProgress`` each time the source's figures change (asked every
        ``progress_interval_s``), and last one with the report's (phase
        "done"; ``migrate._progress``).  Raises ``UnknownNode``,
        ``MigrationFailed`` (the workload stayed where it was) or
        ``WorkloadUnavailable``.
        """
        if to == "auto":
            return await _nodes.migrate_auto(self._cluster, self, needs=needs, policy=policy, strategy=strategy,
                                             downtime_budget_s=downtime_budget_s, max_rounds=max_rounds,
                                             progress=progress, progress_interval_s=progress_interval_s)
        tls = self._cluster._tls
        if to == "local" and isinstance(tls, (str, Path)) and own_identity(Path(tls)).role == "client":
            raise MigrationFailed(
                f"cannot move {self.workload} to 'local': nodes dial the application's local node with mutual TLS "
                f"as a node, and {tls} holds a client certificate; give migrate.connect(tls=) a node certificate "
                "(migrate-node cert issue --role node)")
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
            _nodes.note_move(self._cluster, report)
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

    async def _invoke(self, **fields: Any) -> MResult:
        seq = self._next_seq
        self._next_seq += 1
        try:
            return await self._invoke_seq(seq, fields)
        except trio.Cancelled:
            await self._cancel(seq, fields)
            raise

    async def _cancel(self, seq: int, fields: dict[str, Any]) -> None:
        """The caller gave up on ``seq``: tell its owner to stop it (at most CANCEL_NOTICE_S, shielded).

        The owner records an outcome for it whatever it finds (or refuses it
        later as acknowledged), so it never runs twice.  For a workload this
        application protects, the outcome is fetched in the background, as a
        retry of the same seq, and goes into the failover log like any
        operation's; otherwise the seq just counts as answered.
        """
        with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_NOTICE_S):
            try:
                client = await self._cluster.client(self._address)
                found = expect(MCancelled, await client.request(MCancel, workload=self.workload, caller=self._caller,
                                                                seq=seq))
                logger.debug("cancelled call %s of %s: %s", seq, self.workload, found.state)
            except Exception as exc:  # the owner moved or is unreachable: the call stays at most once
                logger.info("could not stop cancelled call %s of %s on %s: %s", seq, self.workload, self._node, exc)
        if self._cluster.protects(self.workload):
            self._cluster._nursery.start_soon(self._collect, seq, fields)
        else:
            self._finish(seq)

    async def _collect(self, seq: int, fields: dict[str, Any]) -> None:
        """Take a cancelled call's recorded outcome, so it is logged (``_invoke_seq``) and acknowledged."""
        try:
            await self._invoke_seq(seq, fields)
        except Exception as exc:  # its outcome, an error: logged (or not an operation) already
            logger.debug("cancelled call %s of %s ended with %s", seq, self.workload, exc)

    async def _invoke_seq(self, seq: int, fields: dict[str, Any]) -> MResult:
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
                reply = expect(MResult, await client.request(MCall, workload=self.workload, caller=self._caller,
                                                             seq=seq, ack=self._ack, **fields))
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
                if reply.moved_address is None:
                    raise RemoteProtocolError(f"{self._node} said {self.workload} moved to {reply.moved_to}, not where")
                self._moved_to(reply.moved_to, reply.moved_address, reply.epoch)
                continue
            self._finish(seq)
            self.epoch = max(self.epoch, reply.epoch)
            self._log(seq, fields, reply_outcome(reply))
            return reply

    def _log(self, seq: int, fields: dict[str, Any], outcome: Outcome) -> None:
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


async def _report(client: NodeClient, **fields: Any) -> MigrationReport:
    return expect(MReport, await client.request(MMigrate, **fields)).report
