"""The target side of a move (and of a standby copy): receive, replay, align, commit or abort.

A new standby copy is received under a staging id while the aligned one
keeps serving; once aligned it is swapped in (``_swap_in``).
"""

from __future__ import annotations

import contextlib
import logging
import time

import trio

import snapshot
from nodes import Done, ErrorCode, ErrorReply, Node, Session, UnknownModule, crash_point_async, move_work

from . import _hostops as ops
from ._admission import _incoming_refused
from ._codes import MigrationCode
from ._cordon import refusal as cordon_refusal
from ._ledger import CallLedger
from ._life_node import from_wire as life_from_wire, managed
from ._messages import MAbort, MAlign, MChunk, MCommit, MCommitted, MFirstCall, MFirstServed, MIncoming, MReplay
from ._ownership_events import Drop, Event, EventKind, OwnershipError, Peer
from ._receive import apply_chunk
from ._replaying import REPLAY_PER_TRIP, already_run, replay_trip
from ._replies import error
from ._standby import _keep_standby, feed_kept_copy
from ._state import (CHUNK_TURN_WAIT_S, FIRST_CALL_POLL_S, FIRST_CALL_WAIT_S, MAX_CHUNKS_AHEAD, Incoming,
                     MigrationService, Owned, _drop_incoming, _drop_staging, free_copy, peer_address, service,
                     staging_id)

logger = logging.getLogger(__name__)


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
    return error(request_id, MigrationCode.MIGRATION_FAILED,
                 f"no {what} of {workload} at epoch {epoch}")


async def on_incoming(node: Node, session: Session, req: MIncoming) -> Done | ErrorReply:
    """Get ready to receive a workload (a move, a failover or a standby copy).

    A new copy replaces an older one, except that a standby never replaces
    a move under way.  A new standby copy is received under a staging id
    while an aligned standby copy keeps serving (MLocate, MPromote): it
    replaces that one once aligned (on_align).  The ownership table
    decides (``_incoming_refused`` says why not).  So does the node, in
    this first message of the move, before the module is looked for: a
    cordoned node refuses a move (``cordoned``); a copy that would pass the
    node's workload memory limit or its application's quota is refused
    with ``ResourceLimitExceeded`` naming the limit.  Nothing changes here.
    """
    refused = None if req.standby else cordon_refusal(node, req.id, "incoming moves")
    if refused is not None:
        return refused
    svc = service(node)
    owned = svc.owned.get(req.workload)
    current = svc.incoming.get(req.workload)
    staged = bool(req.standby and owned is None and current is not None and current.standby and current.created
                  and current.ledger is not None)
    event = Event(EventKind.INCOMING_STANDBY if req.standby else EventKind.INCOMING_MOVE, req.epoch,
                  Peer(req.source, "", req.epoch), staged=staged)
    try:
        svc.ownership.check(req.workload, event)
    except OwnershipError as exc:
        return _incoming_refused(node, svc, req, exc)
    # The copies this one replaces (a leftover, an older copy, a staging copy) go first: not counted.
    leaving = {staging_id(req.workload, req.epoch) if staged else req.workload}
    if req.workload in svc.staging:
        leaving.add(svc.staging[req.workload].host_id)
    node.host.registry.admit(req.app, req.memory_limit_bytes, leaving=leaving)
    if not node.host.has_module(req.module_sha256):  # the source sends it, then asks again
        raise UnknownModule(f"module {req.module_sha256} must be stored before the workload moves in")
    await _drop_staging(node, svc, req.workload)
    settings = {"args": tuple(req.args), "env": dict(req.env or {}), "memory_limit_bytes": req.memory_limit_bytes}
    if staged:
        host_id = staging_id(req.workload, req.epoch)
        await node.run_host(ops.remove_quietly, node.host, host_id)  # a leftover of an earlier attempt
        try:
            svc.event(req.workload, event)
        except OwnershipError as exc:
            return _incoming_refused(node, svc, req, exc)
        svc.staging[req.workload] = Incoming(req.workload, req.module_sha256, req.app, req.epoch, req.source,
                                             standby=True, settings=settings, host_id=host_id, live=req.live)
        await crash_point_async("target:incoming")
        return Done(id=req.id)
    try:
        actions = svc.event(req.workload, event)  # an owned copy (a fenced-off leftover) leaves ``owned``
    except OwnershipError as exc:
        return _incoming_refused(node, svc, req, exc)
    if current is not None:
        async with current.lock:  # let a chunk being applied finish first
            if svc.incoming.get(req.workload) is current:
                del svc.incoming[req.workload]
            current.turn.unpark_all()
            await free_copy(node, current)
    if owned is not None and any(isinstance(action, Drop) for action in actions):
        await node.run_host(ops.remove_quietly, node.host, req.workload)
    svc.incoming[req.workload] = Incoming(req.workload, req.module_sha256, req.app, req.epoch, req.source,
                                          standby=req.standby, settings=settings, live=req.live)
    await crash_point_async("target:incoming")
    return Done(id=req.id)


async def _swap_in(node: Node, svc: MigrationService, staged: Incoming) -> bool:
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
        if svc.ownership.record(staged.workload).staging == staged.epoch:
            swap = Event(EventKind.SWAP_IN)
        else:  # the copy that served meanwhile was dropped: this one becomes the standby afresh
            swap = Event(EventKind.INCOMING_STANDBY, staged.epoch, Peer(staged.source, "", staged.epoch))
        try:
            svc.ownership.check(staged.workload, swap)
        except OwnershipError:
            return False
        await node.run_host(ops.replace_workload, node.host, staged.host_id, staged.workload,
                            old is not None and old.created)
        try:
            svc.event(staged.workload, swap)
        except OwnershipError:  # a newer copy was offered meanwhile: it replaces this one
            return False
        del svc.staging[staged.workload]
        staged.host_id = staged.workload
        svc.incoming[staged.workload] = staged
    logger.info("new standby copy in place", extra={"workload": staged.workload, "epoch": staged.epoch})
    return True


async def on_chunk(node: Node, session: Session, req: MChunk) -> Done | ErrorReply:
    """Apply chunk ``seq`` of an incoming copy's snapshot stream, after the chunks before it.

    Senders keep several chunks in flight and the node serves them
    concurrently, so a chunk waits for its turn: the chunks before it came
    first on the same connection.  A chunk applied already, more than
    MAX_CHUNKS_AHEAD ahead, or whose turn does not come within
    CHUNK_TURN_WAIT_S of the last progress is refused (BAD_REQUEST); a
    stream that does not decode drops the copy (MIGRATION_FAILED).
    """
    node.counters["copy_chunks_received"] += 1  # every one that arrives, applied or refused
    svc = service(node)
    inc = _addressed(svc, req.workload, req.epoch, req.standby)
    if inc is None:
        return _no_incoming(req.id, req.workload, req.epoch, req.standby)
    return await _take_chunk(node, svc, inc, req) or Done(id=req.id)


async def _take_chunk(node: Node, svc: MigrationService, inc: Incoming, req: MChunk | MCommit) -> ErrorReply | None:
    """Apply ``req.data`` as chunk ``req.seq`` of ``inc`` in its turn; the refusal if not (see ``on_chunk``)."""
    standby = _of_standby(req)
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
            return _no_incoming(req.id, req.workload, req.epoch, standby)
        if req.seq != inc.chunks:
            return _out_of_turn(req, inc)
        with move_work():  # decoding and restoring a round run in worker threads
            try:
                completed = await apply_chunk(node, inc, req.data)
            except snapshot.SnapshotError as exc:
                await _drop_incoming(node, svc, inc)
                return error(req.id, MigrationCode.MIGRATION_FAILED, f"bad snapshot stream: {exc}")
        if completed:
            inc.rounds += 1
            await crash_point_async("target:after-round")
        inc.chunks += 1
        svc.received(inc, req.data)
        inc.turn.unpark_all()
    return None


def _of_standby(req: MChunk | MReplay | MCommit) -> bool:
    """Whether ``req`` addresses a standby copy; a commit's chunk or calls go to an incoming move.
    (An MCommit's ``standby`` is the address of the standby the new owner feeds.)"""
    return False if isinstance(req, MCommit) else req.standby


def _out_of_turn(req: MChunk | MCommit, inc: Incoming) -> ErrorReply:
    return ErrorReply(id=req.id, code=ErrorCode.BAD_REQUEST,
                      message=f"chunk {req.seq} of {req.workload} is out of turn: the next to apply is "
                              f"{inc.chunks} (at most {MAX_CHUNKS_AHEAD} may wait ahead of it)")


async def on_replay(node: Node, session: Session, req: MReplay) -> Done | ErrorReply:
    """Re-run logged operations on an incoming copy; refuse, and drop the copy, on divergence."""
    svc = service(node)
    inc = _incoming(svc, req.workload, req.epoch, req.standby)
    if inc is None or not inc.created:
        return _no_incoming(req.id, req.workload, req.epoch, req.standby)
    return (await _replay(node, svc, inc, req))[0] or Done(id=req.id)


async def _replay(node: Node, svc: MigrationService, inc: Incoming, req: MReplay | MCommit,
                  pages: dict[int, list[int]] | None = None) -> tuple[ErrorReply | None, str | None]:
    """Re-run ``req.entries`` on ``inc`` in order; the refusal if the copy is gone or the replay diverged.

    The entries run ``REPLAY_PER_TRIP`` to a worker-thread trip
    (``replay_trip``).  With ``pages``, the digest of those pages after
    the last entry comes back too, read in the last trip (None without).
    """
    standby = _of_standby(req)
    async with inc.lock:
        if svc.incoming.get(req.workload) is not inc:
            return _no_incoming(req.id, req.workload, req.epoch, standby), None
        shadow = Owned(req.workload, epoch=req.epoch, index=inc.index)
        skipped, why = already_run(req.entries, inc.index, inc.ledger)  # resent entries the copy ran
        entries, digest = list(req.entries[skipped:]) if why is None else [], None
        for start in range(0, len(entries), REPLAY_PER_TRIP):
            part = entries[start:start + REPLAY_PER_TRIP]
            last = start + REPLAY_PER_TRIP >= len(entries)
            trip = await node.run_call(req.workload, replay_trip, node.host, req.workload, part, shadow,
                                       pages if last else None)
            if inc.ledger is not None:
                for op, got in trip.done:
                    inc.ledger.record(op.caller, op.seq, got)
            why = trip.why
            if why is not None:
                break
            inc.index, digest = shadow.index, trip.digest
        if why is not None:  # the copy goes: its index no longer matters
            await _drop_incoming(node, svc, inc)
            logger.warning("replay diverged: %s", why, extra={"workload": req.workload})
            return error(req.id, MigrationCode.DIVERGED, f"replay of {req.workload} diverged: {why}"), None
    return None, digest


async def on_align(node: Node, session: Session, req: MAlign) -> Done | ErrorReply:
    """Set a received copy's call count, clock, operation index and ledger to the owner's at the copy.

    A staging standby copy then takes the place of the standby that
    served meanwhile.  Replies MIGRATION_FAILED if the copy is gone or
    the ledger is malformed.
    """
    await crash_point_async("target:align")
    svc = service(node)
    inc = _addressed(svc, req.workload, req.epoch, req.standby)
    if inc is None or not inc.created:
        return _no_incoming(req.id, req.workload, req.epoch, req.standby)
    async with inc.lock:
        if not svc.current(inc):
            return _no_incoming(req.id, req.workload, req.epoch, req.standby)
        await node.run_host(ops.align, node.host, inc.host_id, req.calls, req.monotonic_ns)
        try:
            ledger = CallLedger.from_wire(req.ledger) if req.ledger is not None else inc.ledger
            life = life_from_wire(req.lifecycle) if req.lifecycle is not None else inc.lifecycle
        except ValueError as exc:
            return error(req.id, MigrationCode.MIGRATION_FAILED, str(exc))
        inc.index, inc.ledger, inc.lifecycle = req.index, ledger, life
        if inc.host_id != inc.workload and not await _swap_in(node, svc, inc):
            await _drop_incoming(node, svc, inc)
            return _no_incoming(req.id, req.workload, req.epoch, req.standby)
    return Done(id=req.id)


async def on_commit(node: Node, session: Session, req: MCommit) -> MCommitted | ErrorReply:
    """Take ownership of an incoming copy: a move's, or (``from_standby``) the standby's.

    A standby is committed only at or above its epoch and only if it has
    replayed exactly the operations the owner ran.  With ``standby`` set,
    the new owner goes on feeding the standby on that node.
    """
    svc = service(node)
    standby = peer_address(req.standby, "standby") if req.standby else None  # before anything changes
    standby = standby if standby != node.address else None
    pages: dict[int, list[int]] | None = None
    if req.digest is not None:
        try:
            pages = {int(k): [int(p) for p in v] for k, v in dict(req.pages or {}).items()}
        except (TypeError, ValueError):
            return error(req.id, MigrationCode.MIGRATION_FAILED, "malformed page list")
    ours: str | None = None  # the digest of ``pages`` here, once read
    inc = svc.incoming.get(req.workload)
    if (req.data or req.entries) and not req.from_standby:
        # The final round's last piece, or a dual handover's last calls, travel in the commit: apply them first.
        inc = _incoming(svc, req.workload, req.epoch, False)
        if inc is None:
            return _no_incoming(req.id, req.workload, req.epoch, False)
        refused = await _take_chunk(node, svc, inc, req) if req.data else None
        if refused is None and req.entries and inc.created:
            refused, ours = await _replay(node, svc, inc, req, pages)  # the digest read in the same trip
        if refused is not None:
            return refused
    if req.from_standby:
        ready = (inc is not None and inc.standby and inc.created and req.epoch >= inc.epoch
                 and inc.index == req.index)
    else:
        ready = inc is not None and not inc.standby and inc.created and inc.epoch == req.epoch
    if inc is None or not ready:  # ``ready`` implies an ``inc``
        what = "standby copy" if req.from_standby else "incoming move"
        return error(req.id, MigrationCode.MIGRATION_FAILED,
                     f"no complete {what} of {req.workload} to commit at epoch {req.epoch}"
                     f" and operation {req.index}")
    try:
        ledger, life = CallLedger.from_wire(req.ledger), life_from_wire(req.lifecycle)
    except ValueError as exc:
        return error(req.id, MigrationCode.MIGRATION_FAILED, str(exc))
    await crash_point_async("target:before-commit")
    if pages is not None:
        if ours is None:
            ours = await node.run_host(ops.pages_digest, node.host, req.workload, pages)
        if ours != req.digest:
            async with inc.lock:
                await _drop_incoming(node, svc, inc)
            return error(req.id, MigrationCode.DIVERGED,
                         f"replay of {req.workload} diverged: the state written since the cut "
                         "differs from the source's")
    async with inc.lock:
        if svc.incoming.get(req.workload) is not inc:
            return error(req.id, MigrationCode.MIGRATION_FAILED,
                         f"the incoming copy of {req.workload} was replaced")
        owned = Owned(req.workload, epoch=req.epoch, ledger=ledger, index=max(req.index, inc.index),
                      record=req.record, lifecycle=life)
        kind = EventKind.COMMIT_STANDBY if req.from_standby else EventKind.COMMIT
        try:
            svc.event(req.workload, Event(kind, req.epoch), owner=owned)
        except OwnershipError as exc:
            return error(req.id, MigrationCode.MIGRATION_FAILED, str(exc))
        del svc.incoming[req.workload]
        if standby is not None and req.standby_kept:
            feed_kept_copy(node, owned, standby)  # before any operation runs here
        await node.run_host(ops.take_over, node.host, req.workload, req.record, req.calls, req.monotonic_ns)
    managed(node, owned)
    await _drop_staging(node, svc, req.workload)
    await crash_point_async("target:after-commit")
    logger.info("took ownership", extra={"workload": req.workload, "epoch": req.epoch, "peer": inc.source})
    if standby is not None and not req.standby_kept:
        node.start_soon(_keep_standby, node, owned, standby)
    owned.committed_s = time.perf_counter()  # the reply leaves now: no handle knows this node before
    return MCommitted(id=req.id, epoch=req.epoch)


async def on_first_call(node: Node, session: Session, req: MFirstCall) -> MFirstServed:
    """How long after the commit at ``epoch`` this node served its first call, waiting up to ``wait_s`` for one.

    ``after_s`` is None if no call came in time, or if this node does not
    own the workload at that epoch from a move's commit.
    """
    owned = service(node).owner_of(req.workload)
    if owned is None or owned.epoch != req.epoch or owned.committed_s is None:
        return MFirstServed(id=req.id)
    with trio.move_on_after(max(0.0, min(req.wait_s, FIRST_CALL_WAIT_S))):
        while owned.ledger.first_served_s is None:
            await trio.sleep(FIRST_CALL_POLL_S)
    first = owned.ledger.first_served_s
    return MFirstServed(id=req.id, after_s=None if first is None else first - owned.committed_s)


async def on_abort(node: Node, session: Session, req: MAbort) -> Done:
    svc = service(node)
    inc = _addressed(svc, req.workload, req.epoch, req.standby)
    if inc is not None:
        async with inc.lock:
            await _drop_incoming(node, svc, inc, EventKind.ABORT)
    return Done(id=req.id)
