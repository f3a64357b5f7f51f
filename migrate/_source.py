"""The source side of a move: ``on_migrate`` and ``Migration`` (pre-copy, stop-and-copy, standby handover).

The commit point of a move is the target taking ownership (``MCommit``).
The source redirects its queued calls only after it has seen the target's
``MCommitted``, so no handle reaches the target before the commit and no
call can run on both sides.  The dual-execution flow is in ``_dual``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NoReturn

import trio

from nodes import (
    Address,
    BadArguments,
    ConnectionFailed,
    ErrorReply,
    HostError,
    Node,
    NodeClient,
    NodeError,
    Session,
    UnknownWorkload,
    WorkloadInfo,
    crash_point_async,
)

from . import _hostops as ops
from ._codes import MigrationCode
from ._messages import MAbort, MCommit, MLocate, MMigrate, MigrationReport, MReport, MWhere
from ._dual import DualExecution
from ._life_node import to_wire as life_wire
from ._ownership import State
from ._ownership_events import Abort, Event, EventKind, OwnershipError, Peer
from ._precopy import Action, PrecopyConfig, PrecopyPlanner
from ._replies import error, expect
from ._standby import _keep_standby, _stop_standby, keep_as_standby
from ._transfer import Transfer, _fits_commit
from ._state import (
    HANDOVER_FLUSH_S,
    MigrationError,
    MigrationService,
    Owned,
    STRATEGIES,
    Standby,
    _not_owner,
    peer_address,
    service,
)

logger = logging.getLogger(__name__)


async def on_migrate(node: Node, session: Session, req: MMigrate) -> MReport | ErrorReply:
    svc = service(node)
    owned = svc.owner_of(req.workload)
    if owned is None or owned.moved is not None:
        return _not_owner(req.id, node, req.workload)
    if req.strategy not in STRATEGIES:
        raise BadArguments(f"strategy must be one of {', '.join(STRATEGIES)}, got {req.strategy!r}")
    begin = Event(EventKind.BEGIN_MOVE, peer=Peer("", req.target, 0))
    try:
        svc.ownership.check(req.workload, begin)
    except OwnershipError:
        return error(req.id, MigrationCode.MIGRATION_BUSY,
                     f"workload {req.workload} is already moving")
    target = peer_address(req.target, "target")
    if target == node.address:
        return error(req.id, MigrationCode.MIGRATION_FAILED,
                     f"workload {req.workload} is already on {node.config.name}")
    svc.event(req.workload, begin)
    migration = svc.active[req.workload] = Migration(node, svc, owned, target, req, clock=svc.clock)
    try:
        report = await migration.run()
    except MigrationError as exc:
        svc.metrics.ended(req.strategy, "aborted", migration.bytes_sent, migration.clock() - migration.started_s)
        svc.recent.append({"workload": req.workload, "app": migration.app, "state": "aborted", "target": req.target,
                           "strategy": req.strategy, "reason": str(exc)})
        return error(req.id, MigrationCode.MIGRATION_FAILED, str(exc))
    finally:
        svc.active.pop(req.workload, None)
        migration.ended()
        owned.stop_throttle()
    svc.recent.append({"workload": report.workload, "app": migration.app, "state": "done", "target": report.target,
                       "strategy": report.strategy, "rounds": report.rounds,
                       "frozen_ms": round(report.frozen_s * 1e3, 3),
                       "client_blackout_ms": (None if report.client_blackout_s is None
                                              else round(report.client_blackout_s * 1e3, 3)),
                       "total_ms": round(report.total_s * 1e3, 1)})
    node.counters["migrations_out"] += 1
    svc.metrics.ended(report.strategy, "done", report.bytes_sent, report.total_s, report.frozen_s,
                      report.client_blackout_s)
    return MReport(id=req.id, report=report)


class Migration(DualExecution, Transfer):
    """One outgoing move, driven from the source node."""

    def __init__(self, node: Node, svc: MigrationService, owned: Owned, target: Address, req: MMigrate, *,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.node, self.svc, self.owned, self.target, self.req = node, svc, owned, target, req
        self.clock = clock  # seconds, for the blackout, the report and the planners
        self.workload = owned.workload
        self.app = node.host.registry.owner(owned.workload) or ""  # whose: ``status`` shows it to them only
        move = svc.ownership.record(owned.workload).move
        assert move is not None  # BEGIN_MOVE (``on_migrate``) gave the move its epoch
        self.epoch = move.epoch
        self._start_figures()
        self.notes: list[str] = []
        self.settings = {}
        self.info: WorkloadInfo | None = None  # the workload's host info (module, app), once the move describes it
        self._first = None
        self.keep = False  # this node's copy stays as the standby after the commit (MMigrate.keep_standby)
        self.planner = PrecopyPlanner(PrecopyConfig(downtime_budget_s=req.downtime_budget_s,
                                                    max_rounds=max(1, req.max_rounds)))

    async def run(self) -> MigrationReport:
        node, host = self.node, self.node.host
        started = self.clock()
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
                # This node holds the standby (it has no feed of its own): its copy stays as the standby.
                self.keep = self.req.keep_standby and feed is None
                try:
                    if feed is not None and onto_standby and feed.send is not None:
                        committed = await self._standby_handover(client, target_name, feed)
                    else:
                        if onto_standby:
                            await _stop_standby(self.owned)  # the move's copy replaces the standby's
                        committed = await self._move(client, target_name)
                except (NodeError, HostError, OSError) as exc:
                    await self._abort(client, f"{type(exc).__name__}: {exc}", gone=isinstance(exc, UnknownWorkload))
        finally:
            self._drop_first()  # a move ended before its first round was sent
            try:
                if committed and self.keep and self.info is not None and await keep_as_standby(
                        node, self.svc, self.owned, self.epoch + 1, target_name, self.info, self.settings):
                    self.notes.append("the copy left here is the workload's standby")
                    total_s = self.clock() - started
                    await self._ask_first_call(client)
                elif committed:
                    total_s = self.clock() - started
                    await self._remove_after_first_call(client)
                else:
                    await node.run_host(ops.stop_tracking, host, self.workload)
                    if onto_standby:  # the workload stays here: so does its standby
                        node.start_soon(_keep_standby, node, self.owned, self.target)
                    total_s = self.clock() - started
            finally:
                await client.aclose()
        return self._report(target_name, total_s)

    async def _remove_after_first_call(self, client: NodeClient) -> None:
        """Remove the committed copy here once the target served its first call (or said none came).

        Removing 256 MiB takes about 30 ms of kernel work (unmapping it, the
        userfaultfd); done at the commit, on two cores, it held the redirect
        and the client's first call at the target back by 3-4 ms each.  The
        copy is frozen meanwhile, and stays at most ``FIRST_CALL_WAIT_S``
        plus a second.
        """
        try:
            await self._ask_first_call(client)
        finally:
            await self.node.run_host(ops.remove_quietly, self.node.host, self.workload)
            self.svc.event(self.workload, Event(EventKind.COPY_REMOVED))

    async def _move(self, client: NodeClient, target_name: str) -> bool:
        """Copy the workload to the target with the requested strategy and commit."""
        info, module, self.settings = await self.node.run_host(ops.describe, self.node.host, self.workload)
        self.info = info
        if self.req.strategy == "stop-copy":
            with self._stoppable():
                await self._ready_target(client, module, info)
            return await self._stop_and_copy(client, target_name)
        with self._stoppable():
            self._first = await self._first_capture_while(self._ready_target, client, module, info)
        if self.req.strategy == "dual":
            return await self._dual(client, target_name, info)
        return await self._precopy(client, target_name)

    async def _standby_handover(self, client: NodeClient, target_name: str, feed: Standby) -> bool:
        """Move onto the node that holds the hot standby: commit the standby's copy.

        With calls held, the feed forwards what it still has queued and
        ends; the target then owns its copy, which has replayed every
        operation.  No page crosses the link; the blackout is the flush and
        the commit.
        """
        node, host = self.node, self.node.host
        async with self.owned.lock:
            frozen = self.clock()
            await node.run_host(ops.freeze, host, self.workload)
            committed = False
            try:
                # The feed may have ended while calls ran (its standby lost, or too far behind).
                if feed.send is None:
                    raise MigrationError(f"the standby on {target_name} was lost before the handover")
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
                self.frozen_s = self.clock() - frozen
                if not committed:
                    await node.run_host(ops.thaw, host, self.workload)

    async def _rounds(self, client: NodeClient) -> None:
        """Send pre-copy rounds until the planner says the rest fits the budget.

        The last delta, captured while running, is sent too; what changed
        after it is left for the caller's final, frozen round.
        """
        with self._stoppable():  # a shutdown stops the move here (``Transfer.stop``)
            took, last_pages, last_bytes = await self._send_first(client)
            await crash_point_async("source:after-round")
            while True:
                delta = await self._capture(ops.capture_delta, self.node.host, self.workload)
                decision = self.planner.round_sent(pages=last_pages, wire_bytes=last_bytes, duration_s=took,
                                                   dirty_after=delta.page_count, now=self.clock())
                self.owned.throttle = decision.throttle
                if decision.action is Action.STOP_AND_COPY:
                    # The rounds that follow (this delta, then the frozen one) are counted in ``rounds``.
                    self.notes.append(f"pre-copy converged: {decision.reason}")
                    break
                sent_before = self.bytes_sent
                took = await self._send(client, delta)
                last_pages, last_bytes = delta.page_count, self.bytes_sent - sent_before
            await self._send(client, delta)
            await crash_point_async("source:before-freeze")
            await self._keep_bursts_out(client, delta.page_count)
            self.owned.stop_throttle()  # the freeze comes next

    async def _precopy(self, client: NodeClient, target_name: str) -> bool:
        await self._rounds(client)
        return await self._final_round(client, target_name, delta=True)

    async def _stop_and_copy(self, client: NodeClient, target_name: str) -> bool:
        return await self._final_round(client, target_name, delta=False)

    async def _final_round(self, client: NodeClient, target_name: str, *, delta: bool) -> bool:
        """Freeze, send the final round (``delta``, or the whole state) and commit; the frozen time is ``frozen_s``.

        The commit carries the round's last piece (the only one, for a
        small delta): the target applies it, then commits, in one round trip
        instead of two; one that would not fit the commit's frame beside the
        ledger goes ahead as a chunk.  A whole state streams where it can."""
        node, host = self.node, self.node.host
        async with self.owned.lock:
            frozen = self.clock()
            committed = False
            try:
                last = b""
                facts = await self._frozen_whole(client) if not delta else None
                if facts is None:
                    # Freezing holds raw (non-handle) calls too; the capture and encoding follow in the same trip.
                    made = await self._frozen_round(client, delta)
                    chunks, facts = made.pieces, made.facts
                    last = chunks.pop()
                    if not _fits_commit(last, self.owned.ledger.to_wire(), self.node.config.max_frame_bytes,
                                        client.peer_max_frame_bytes):
                        chunks.append(last)
                        last = b""
                    if chunks:
                        await self._stream(client, chunks)
                    self._sent_round(sum(len(chunk) for chunk in chunks) + len(last), made.pages)
                self.final_round_bytes = self.bytes_per_round[-1]
                committed = await self._commit(client, target_name, final=last, facts=facts)
                return committed
            finally:
                self.frozen_s = self.clock() - frozen
                if not committed:
                    await node.run_host(ops.thaw, host, self.workload)
                # Committed: the old copy stays frozen until run() removes it,
                # after the queued handle calls have been redirected.

    async def _commit(self, client: NodeClient, target_name: str, *,
                      digest: tuple[dict[int, list[int]], str] | None = None, from_standby: bool = False,
                      final: bytes = b"", entries: tuple[dict[str, Any], ...] = (),
                      facts: tuple[int, int] | None = None) -> bool:
        """Hand ownership over; called with the workload frozen.

        ``final``, the last piece of the final round, and ``entries``, the
        last logged calls of a dual handover, travel in the commit; the
        target applies them first.  ``facts`` are ``ops.commit_facts`` if
        read already, in the trip that froze the workload.

        Returns True once the target owns the workload.  Raises (and so
        aborts) if the target refuses or cannot be reached before it commits.
        """
        owned, self.step = self.owned, "commit"
        await crash_point_async("source:frozen")
        t0 = self.clock()
        self.handover.last_served_s = owned.ledger.last_served_s  # frozen: the last call before the freeze
        calls, clock = facts if facts is not None else await self.node.run_host(ops.commit_facts, self.node.host,
                                                                                 self.workload)
        feed = owned.standby
        self.svc.event(self.workload, Event(EventKind.FREEZE, now=self.clock()))  # Commit: the MCommit below
        try:
            try:
                await client.request(MCommit, workload=self.workload, epoch=self.epoch,
                                     ledger=owned.ledger.to_wire(), calls=calls, index=owned.index,
                                     record=owned.record or self.keep,
                                     pages={str(k): v for k, v in digest[0].items()} if digest else None,
                                     digest=digest[1] if digest else None, monotonic_ns=clock,
                                     from_standby=from_standby, data=final, seq=self.chunks_sent,
                                     entries=entries,
                                     standby=self._standby_after(feed, from_standby), standby_kept=self.keep,
                                     lifecycle=life_wire(owned))
            except ConnectionFailed:
                # In doubt: the commit may have landed before the link broke.
                if not await self._target_owns():
                    raise
                self.notes.append("commit confirmed after the link broke")
        except BaseException:
            self.svc.event(self.workload, Event(EventKind.THAW))  # refused or lost: the move goes on or aborts
            raise
        finally:
            self.spent["commit"] += self.clock() - t0
        self.handover.replied_s = time.perf_counter()
        self.handover.waiting = owned.lock.statistics().tasks_waiting  # the calls the redirect answers
        await crash_point_async("source:after-commit")
        # Redirect: owned.moved answers the calls queued on its lock; Drop: run() removes the copy.
        self.svc.event(self.workload, Event(EventKind.COMMITTED, self.epoch,
                                            Peer(target_name, str(self.target), self.epoch)))
        if owned.standby is not None:
            # The new owner feeds the standby from now on; the copy stays
            # there until the new feed replaces it.
            owned.standby.scope.cancel()
        logger.info("moved workload", extra={"workload": self.workload, "peer": target_name, "epoch": self.epoch})
        return True

    def _standby_after(self, feed: Standby | None, from_standby: bool) -> str:
        """The standby the new owner feeds: this node's copy (kept), the one fed now, or none."""
        if self.keep:
            return str(self.node.address)
        return str(feed.target) if feed is not None and not from_standby else ""

    async def _target_owns(self) -> bool:
        for attempt in range(3):
            try:
                with trio.fail_after(2.0):
                    client = await self.node.connect_peer(self.target)
                    try:
                        where = expect(MWhere, await client.request(MLocate, workload=self.workload))
                    finally:
                        await client.aclose()
                return where.status == "owner" and where.epoch == self.epoch
            except (NodeError, OSError, trio.TooSlowError):
                await trio.sleep(0.1 * (attempt + 1))
        return False

    def ended(self) -> None:
        """End the ownership record's move if nothing else did (the target was never reached, a cancellation)."""
        record = self.svc.ownership.record(self.workload)
        if record.state is State.SENDING and record.move is not None and record.move.epoch == self.epoch:
            self.svc.event(self.workload, Event(EventKind.MOVE_ABORTED, peer=record.move))

    async def _abort(self, client: NodeClient, why: str, gone: bool = False) -> NoReturn:
        # MOVE_ABORTED fences: if the target was asked to commit and did,
        # unseen, its epoch is self.epoch; ours now outranks it, so handles
        # that look the workload up pick this node.
        actions = self.svc.event(self.workload, Event(EventKind.MOVE_ABORTED,
                                                      peer=Peer("", str(self.target), self.epoch)))
        self.notes.append(f"aborted: {why}")
        logger.warning("migration aborted: %s", why, extra={"workload": self.workload})
        if any(isinstance(action, Abort) for action in actions):
            with trio.move_on_after(2.0):
                try:
                    await client.request(MAbort, workload=self.workload, epoch=self.epoch)
                except (NodeError, HostError, OSError):
                    pass
        where = "it was removed from" if gone else "it keeps running on"  # gone: removed while it moved
        raise MigrationError(f"migration of {self.workload} to {self.target} aborted ({why}); "
                             f"{where} {self.node.config.name}")
