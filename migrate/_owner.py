"""Handle -> owner: spawning, calls (exactly once, in order), locating and protecting a workload."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import trio

from nodes import (
    BadArguments,
    CallCancelled,
    CallInputs,
    CancelToken,
    Done,
    ErrorCode,
    ErrorReply,
    NOT_NOW,
    Host,
    HostError,
    Node,
    NotNow,
    RequestError,
    ResourceLimitExceeded,
    Session,
    code_for,
    error_reply,
)

from . import _hostops as ops
from ._ledger import IDLE_CALLER_S, MAX_CALLERS, Outcome
from ._messages import MCall, MCancel, MCancelled, MLocate, MProtect, MResult, MSpawn, MSpawned, MWhere
from ._codes import MigrationCode
from ._cordon import refusal as cordon_refusal
from ._oplog import log_entry
from ._ownership_events import Event, EventKind, OwnershipError
from ._replies import error
from ._state import Owned, _moved_reply, _not_owner, service

logger = logging.getLogger(__name__)


async def on_spawn(node: Node, session: Session, req: MSpawn) -> MSpawned | ErrorReply:
    refused = cordon_refusal(node, req.id, "new workloads")
    if refused is not None:
        return refused
    workload = req.workload or f"w-{uuid.uuid4().hex[:12]}"
    info = await node.run_host(node.host.deploy, req.module_sha256, workload_id=workload, app=req.app,
                               idle_s=req.idle_s)
    svc = service(node)
    try:
        svc.event(info.workload_id, Event(EventKind.SPAWN), owner=Owned(info.workload_id, epoch=1))
    except OwnershipError as exc:  # a copy of it is being received here
        await node.run_host(ops.remove_quietly, node.host, info.workload_id)
        return error(req.id, MigrationCode.MIGRATION_BUSY, str(exc))
    logger.info("spawned migratable workload", extra={"workload": info.workload_id, "app": req.app})
    return MSpawned(id=req.id, workload=info.workload_id, epoch=1)


def _result(request_id: int, outcome: Outcome, epoch: int, replayed: bool) -> MResult | ErrorReply:
    if not outcome.ok:
        return error(request_id, outcome.code, outcome.message, outcome.value or None)
    values, data, index, inputs = outcome.value
    return MResult(id=request_id, values=tuple(values), data=data, epoch=epoch, replayed=replayed,
                   index=index, inputs=inputs)


class _Held:
    """``async with _Held(lock)``: hold a trio.Lock, skipping the scheduler pass when it is free.

    ``trio.Lock`` hands itself to the next waiter on release, so a lock that
    is free has nobody waiting: taking it at once keeps the FIFO order of
    calls.  ``async with lock`` would yield to the scheduler even then: one
    more pass of the event loop per call.
    """

    __slots__ = ("lock",)

    def __init__(self, lock: trio.Lock) -> None:
        self.lock = lock

    async def __aenter__(self) -> None:
        try:
            self.lock.acquire_nowait()
        except trio.WouldBlock:
            await self.lock.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.lock.release()


async def on_call(node: Node, session: Session | None, req: MCall) -> MResult | ErrorReply:
    """Run (or replay) one ledgered call; ``session`` is None for the node's own calls (schedules, expiry)."""
    svc = service(node)
    owned = svc.owner_of(req.workload)
    if owned is None:
        stone = svc.tombstone(req.workload)
        if stone is not None:
            return _moved_reply(req.id, req.workload, stone)
        return _not_owner(req.id, node, req.workload)
    async with _Held(owned.lock):
        if owned.moved is not None:
            return _moved_reply(req.id, req.workload, owned.moved)
        if svc.owned.get(req.workload) is not owned:
            # Removed (or fenced off) while this call waited: the id may be
            # another workload's by now, maybe another tenant's, that the
            # sender was never authorized for.
            return _not_owner(req.id, node, req.workload)
        ledger = owned.ledger
        if not ledger.admits(req.caller):
            full = ResourceLimitExceeded("ledger_callers", ledger.callers() + 1, MAX_CALLERS,
                                         f"callers of {req.workload} heard from within {IDLE_CALLER_S:g} s")
            full.started = False
            return error_reply(req.id, full)
        if req.ack >= 0:
            ledger.acknowledge(req.caller, req.ack)
        previous = ledger.lookup(req.caller, req.seq)
        if previous is not None:
            node.counters["calls_replayed"] += 1
            return _result(req.id, previous, owned.epoch, replayed=True)
        if ledger.was_forgotten(req.caller, req.seq):
            return ErrorReply(id=req.id, code=ErrorCode.BAD_REQUEST,
                              message=f"call {req.caller}:{req.seq} was already answered and acknowledged")
        started = svc.clock()
        token = CancelToken()
        owned.running = (req.caller, req.seq, token)
        try:
            outcome = await _run(node, req, owned, cancel=token)
        finally:
            owned.running = None
        ledger.record(req.caller, req.seq, outcome)
        if owned.follow is not None or owned.standby is not None:
            owned.forward(log_entry(req, outcome))
        if req.op == "remove" and outcome.ok and svc.owned.get(req.workload) is owned:
            svc.event(req.workload, Event(EventKind.REMOVE))
            if owned.standby is not None:
                owned.standby.scope.cancel()  # drops the standby copy too
        if owned.throttle:
            await idle_throttled(owned, svc.clock() - started)
        return _result(req.id, outcome, owned.epoch, replayed=False)


async def idle_throttled(owned: Owned, took_s: float) -> None:
    """Auto-converge: hold the workload (its ``lock``, which the caller holds) idle for a share of its time.

    A call that ran ``took_s`` is followed by ``took_s * t / (1 - t)`` of
    idleness at throttle ``t``, ended early by ``Owned.stop_throttle``.
    """
    with trio.move_on_after(took_s * owned.throttle / (1 - owned.throttle)) as owned.throttling:
        await trio.sleep_forever()
    owned.throttling = None


@dataclass(frozen=True)
class _Ran:
    """What one operation did in its worker-thread trip."""

    values: list[int | float]
    data: bytes
    error: HostError | None = None
    inputs: Any = None  # the inputs a recorded call consumed, in wire form
    inputs_error: HostError | None = None  # reading them failed


def _operate(host: Host, req: MCall, replay: Any, record: bool, cancel: CancelToken | None) -> _Ran:
    """Run one operation and, if ``record``, read the inputs a call consumed: one worker-thread trip.

    ``replay`` is the wire form of the inputs to replay a call with, or
    None; ``cancel`` stops the call (``on_cancel``).
    """
    try:
        if req.op == "call":
            inputs = CallInputs.from_wire(replay) if replay is not None else None
            ran = _Ran(_values(host.call(req.workload, req.export, req.args, inputs=inputs, cancel=cancel)), b"")
        elif req.op == "read":
            ran = _Ran([], host.read_memory(req.workload, req.offset, req.length))
        elif req.op == "write":
            host.write_memory(req.workload, req.offset, req.data)
            ran = _Ran([], b"")
        elif req.op == "remove":
            host.remove(req.workload)
            ran = _Ran([], b"")
        else:
            raise BadArguments(f"unknown operation {req.op!r}")
    except HostError as exc:
        ran = _Ran([], b"", exc)
    if record and req.op == "call" and not isinstance(ran.error, RequestError):
        try:
            ran = dataclasses.replace(ran, inputs=ops.last_inputs(host, req.workload).to_wire())
        except HostError as exc:
            ran = dataclasses.replace(ran, inputs_error=exc)
    return ran


def _values(result: None | int | float | tuple[int | float, ...]) -> list[int | float]:
    return [] if result is None else list(result) if isinstance(result, tuple) else [result]


def _call_now(host: Host, req: MCall, cancel: CancelToken | None) -> _Ran | NotNow:
    """A call of a provably short export, on the event loop (``Host.call_now``); NOT_NOW if it must wait."""
    try:
        result = host.call_now(req.workload, req.export, req.args, cancel=cancel)
    except HostError as exc:
        return _Ran([], b"", exc)
    return result if result is NOT_NOW else _Ran(_values(result), b"")


async def _run(node: Node, req: MCall, owned: Owned, inputs: Any = None, cancel: CancelToken | None = None) -> Outcome:
    """Run one operation; a state-changing one takes the next index.

    ``inputs`` replays recorded nondeterministic inputs (a follower or a
    failover replay); otherwise, if the workload is recorded, the inputs the
    call consumed come back in the outcome, read in the same worker-thread
    trip as the call.  A call of a provably short export of a workload that
    records nothing runs on the event loop when it can start at once.
    """
    now = (node.calls.now(req.workload, _call_now, node.host, req, cancel)
           if req.op == "call" and inputs is None and not owned.record else NOT_NOW)
    if isinstance(now, _Ran):
        node.counters["calls_inline"] += 1
        ran = now
    else:
        ran = await node.run_call(req.workload, _operate, node.host, req, inputs, owned.record and inputs is None,
                                  cancel)
    return _outcome(ran, req, owned)


def _outcome(ran: _Ran, req: MCall, owned: Owned) -> Outcome:
    """What ``req`` did as ``ran`` reports it; a state-changing operation takes ``owned``'s next index.

    Raises ``ran.inputs_error`` when the inputs a recorded call consumed
    could not be read (the call ran, but cannot be replayed).
    """
    mutating = req.op in ("call", "write")
    exc = ran.error
    if exc is not None:
        reply = error_reply(0, exc)
        details = dict(reply.details or {})
        if mutating and not isinstance(exc, RequestError) and getattr(exc, "started", True):
            # The call ran and trapped: it may have changed state, so it is
            # part of the order a replay must follow.
            owned.index += 1
            details["op_index"] = owned.index
            if ran.inputs_error is not None:
                raise ran.inputs_error
            if ran.inputs is not None:
                details["op_inputs"] = ran.inputs
        return Outcome(False, details or None, str(code_for(exc)), reply.message)
    if mutating:
        owned.index += 1
        if ran.inputs_error is not None:
            raise ran.inputs_error
    return Outcome(True, (ran.values, ran.data, owned.index if mutating else 0, ran.inputs))


async def on_cancel(node: Node, session: Session, req: MCancel) -> MCancelled | ErrorReply:
    """Stop call (caller, seq) if it runs or waits here; make sure it never starts if it has not arrived.

    Its outcome is recorded either way, so a retry of the same seq gets
    that outcome and the call still runs at most once.  A workload whose
    operations are replayed elsewhere (protected, followed by a dual move's
    target or a standby) lets a running call finish ("finishing"): a call
    stopped midway could not be replayed to the same state.
    """
    owned = service(node).owner_of(req.workload)
    if owned is None or owned.moved is not None:
        return _not_owner(req.id, node, req.workload)
    running = owned.running
    if running is not None and running[0] == req.caller and running[1] == req.seq:
        if owned.record or owned.follow is not None or owned.standby is not None:
            return MCancelled(id=req.id, state="finishing")
        running[2].cancel()
        node.counters["calls_cancelled"] += 1
        return MCancelled(id=req.id, state="stopping")
    ledger = owned.ledger
    if ledger.lookup(req.caller, req.seq) is not None or ledger.was_forgotten(req.caller, req.seq):
        return MCancelled(id=req.id, state="finished")
    withheld = error_reply(0, CallCancelled(req.workload, started=False))
    ledger.record(req.caller, req.seq, Outcome(False, withheld.details, str(withheld.code), withheld.message))
    node.counters["calls_cancelled"] += 1
    return MCancelled(id=req.id, state="withheld")


async def on_locate(node: Node, session: Session, req: MLocate) -> MWhere:
    """What this node knows of a workload: "owner", "incoming", "moved" or "unknown".

    An incoming copy (a move under way, or a hot standby) is reported before
    a tombstone: a node the workload left may hold its standby later.  The
    tombstone's forwarding address comes along either way.  A node back from
    a restart answers for a workload once it has asked the workload's standby
    whether it took over meanwhile.
    """
    svc = service(node)
    owned = svc.owner_of(req.workload)
    if owned is not None and owned.resumed is not None:
        await owned.resumed.wait()  # a restarted owner still asking its standby (for at most 5 s)
        owned = svc.owner_of(req.workload)
    stone = svc.tombstone(req.workload)
    to_name, to_address = (stone.to_name, stone.to_address) if stone is not None else (None, None)
    if owned is not None and owned.moved is None:
        return MWhere(id=req.id, status="owner", epoch=owned.epoch, index=owned.index)
    incoming = svc.incoming.get(req.workload)
    if incoming is not None:
        return MWhere(id=req.id, status="incoming", epoch=incoming.epoch, index=incoming.index,
                      standby=incoming.standby, to_name=to_name, to_address=to_address)
    if stone is not None:
        return MWhere(id=req.id, status="moved", epoch=stone.epoch, to_name=to_name, to_address=to_address)
    return MWhere(id=req.id, status="unknown")


async def on_protect(node: Node, session: Session, req: MProtect) -> Done | ErrorReply:
    owned = service(node).owner_of(req.workload)
    if owned is None or owned.moved is not None:
        return _not_owner(req.id, node, req.workload)
    async with owned.lock:  # off keeps recording while a standby is fed or a dual move's target follows
        owned.protected = req.record
        record = owned.wants_record()
        await node.run_host(ops.set_recording, node.host, req.workload, record)
        owned.record = record
    return Done(id=req.id)
