"""The owner's side of workload lifecycles: leases, expiry, schedules and ``MTouch``.

A workload spawned with a name or with ``detached`` given carries a
``_lifecycle.Lifecycle`` on its ``Owned`` record.  Here:

* ``MTouch``: an application renews the lease of a workload it holds (its
  ``_keeper``), or says goodbye when it closes;
* ``on_app_call``: the MCall handler; a call from an application renews
  the lease too, then runs as any call (``_owner.on_call``);
* ``run``: one background task per node.  It calls each due schedule's
  export through the same ledgered path as handles (caller
  ``every:<export>``, the schedule's firing count as its seq, so a firing
  repeated after a move or a restart gets the recorded outcome instead of
  running twice), and removes a workload whose lease lapsed: "expired" (a
  detached one whose ttl passed) or "abandoned" (its application went away
  for longer than the grace period), logged and counted in
  ``node.counters`` (``workloads_expired``, ``workloads_abandoned``);
* the wire forms a move's commit and the shutdown checkpoint carry, and the
  lifecycle records ``status`` shows.

Times are ``time.monotonic``; the wire form holds wall-clock times.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from nodes import ANY_ROLE, BadArguments, ErrorReply, HostError, Reply, message

from ._lifecycle import Lifecycle, LifecycleError, Schedule
from ._messages import MCall, MResult, MSpawn, MSpawned, _ForWorkload
from ._owner import on_call, on_spawn
from ._state import _not_owner, service

if TYPE_CHECKING:
    from nodes import Node, Session

    from ._state import Owned

logger = logging.getLogger(__name__)

#: The longest the node's lifecycle task sleeps before looking again (new schedules wake it sooner).
MAX_NAP_S = 1.0
#: The caller id of the removal of a lapsed workload, in its ledger.
REMOVER = "lifecycle"


@message("m_touched")
class MTouched(Reply):
    """The workload's lifecycle as the owner sees it: "running", "expiring" or "unmanaged";
    ``expires_at`` (wall-clock seconds) if it expires."""

    state: str
    expires_at: float | None = None
    lease_s: float | None = None  # renew at least every third of it


@message("m_touch", reply=MTouched, roles=ANY_ROLE)
class MTouch(_ForWorkload):
    """An application holds the workload: renew its lease; ``goodbye``: it is leaving now."""

    goodbye: bool = False


def now() -> float:
    return time.monotonic()


def wall_at(at: float) -> float:
    """The wall-clock time of monotonic time ``at``."""
    return time.time() + (at - now())


def from_spec(spec: object) -> Lifecycle | None:
    """The lifecycle of a new workload from its MSpawn's ``lifecycle`` (None: unmanaged).  Raises BadArguments."""
    if spec is None:
        return None
    try:
        return Lifecycle.from_spec(spec, now())
    except LifecycleError as exc:
        raise BadArguments(f"lifecycle: {exc}") from None


def to_wire(owned: Owned, *, saved: bool = False) -> dict[str, Any] | None:
    """What a move's commit or (``saved``) the shutdown checkpoint carries of ``owned``'s lifecycle (None: unmanaged).

    A move freezes the workload, so a firing under way either ran before
    (its outcome is in the ledger the commit carries) or gets the "moved"
    answer and the new owner fires it.  The shutdown checkpoint does not
    wait for firings: it counts one under way as done, so after the restart
    it is not run again (it ran once, or, if it had not started before the
    capture, not at all).
    """
    life = owned.lifecycle
    return None if life is None else life.to_wire(now(), time.time(), settle=saved)


def from_wire(data: object) -> Lifecycle | None:
    """The lifecycle ``to_wire`` made, on this node's clock.  Raises LifecycleError (a ValueError)."""
    return None if data is None else Lifecycle.from_wire(data, now(), time.time())


def restarted(life: Lifecycle | None) -> Lifecycle | None:
    """A lifecycle loaded at a node's start: a workload held by an application gets a whole grace period
    to be heard from again (the application could not reach it while its node was down)."""
    if life is not None and not life.detached:
        life.touch(now())
    return life


def taken_over(life: Lifecycle | None) -> Lifecycle | None:
    """A promoted standby's lifecycle, as it was at the copy: renewals since were not forwarded to the
    standby, so its lease runs again from now."""
    if life is not None:
        life.touch(now())
    return life


def managed(node: Node, owned: Owned) -> None:
    """``owned`` has a lifecycle now: catch its schedules up with its ledger, and wake the lifecycle task.

    A firing the ledger holds (a standby replayed it, or it ran just before
    a move's freeze) counts as fired, so it is not asked again.
    """
    if owned.lifecycle is not None:
        caught_up(owned)
        service(node).lifecycle_waker.set()


def caught_up(owned: Owned) -> None:
    """Count the firings ``owned``'s ledger holds as fired (``managed``; no I/O, any thread)."""
    for schedule in owned.lifecycle.schedules if owned.lifecycle is not None else ():
        schedule.fired = max(schedule.fired, owned.ledger.next_seq(caller_of(schedule)))


def caller_of(schedule: Schedule) -> str:
    """The caller id of a schedule's firings in the workload's ledger."""
    return f"every:{schedule.export}"


async def on_touch(node: Node, session: Session, req: MTouch) -> MTouched | ErrorReply:
    owned = service(node).owned.get(req.workload)
    if owned is None or owned.moved is not None:
        return _not_owner(req.id, node, req.workload)
    life = owned.lifecycle
    if life is None:
        return MTouched(id=req.id, state="unmanaged")
    (life.goodbye if req.goodbye else life.touch)(now())
    return MTouched(id=req.id, state=life.state(now()), expires_at=_wall(life.expires), lease_s=life.lease_s)


async def on_app_spawn(node: Node, session: Session, req: MSpawn) -> Reply:
    """MSpawn (``_owner.on_spawn``), and the workload's lifecycle if it asks for one (checked before it is deployed)."""
    life = from_spec(req.lifecycle)
    reply = await on_spawn(node, session, req)
    owned = service(node).owned.get(reply.workload) if isinstance(reply, MSpawned) else None
    if life is not None and owned is not None:
        owned.lifecycle = life
        managed(node, owned)
    return reply


async def on_app_call(node: Node, session: Session, req: MCall) -> Reply:
    """An application's call: it renews the workload's lease, then runs (``_owner.on_call``)."""
    owned = service(node).owned.get(req.workload)
    if owned is not None and owned.lifecycle is not None:
        owned.lifecycle.touch(now())
    return await on_call(node, session, req)


def _wall(at: float | None) -> float | None:
    return None if at is None else wall_at(at)


def _shown(node: Node, owned: Owned) -> tuple[Lifecycle, str, str] | None:
    """A managed workload's lifecycle, its state ("running", "hibernated" or "expiring") and app;
    None for an unmanaged one, or one that left or was removed."""
    life = owned.lifecycle
    if life is None or owned.moved is not None:
        return None
    try:
        info = node.host.info(owned.workload)
    except HostError:  # removed meanwhile
        return None
    state = life.state(now())
    return life, "hibernated" if state == "running" and info.state == "hibernated" else state, info.app


def status(node: Node) -> tuple[dict[str, Any], ...]:
    """One record per managed workload: its state ("running", "hibernated" or "expiring"), expiry and schedules."""
    out = []
    for owned in list(service(node).owned.values()):
        if (shown := _shown(node, owned)) is None:
            continue
        life, state, app = shown
        expires = _wall(life.expires)
        out.append({"workload": owned.workload, "app": app, "lifecycle": state, "detached": life.detached,
                    "expires_at": None if expires is None else _iso(expires),
                    "schedules": {s.export: {"every_s": s.every_s, "fired": s.fired} for s in life.schedules}})
    return tuple(out)


def describe(node: Node, workload: str) -> str | None:
    """What ``list`` shows of a managed workload: its state or "expiring at TIME", "detached", its schedules."""
    owned = service(node).owned.get(workload)
    if owned is None or (shown := _shown(node, owned)) is None:
        return None
    life, state, _ = shown
    expires = _wall(life.expires)
    words = [f"expiring at {_iso(expires)}" if state == "expiring" and expires is not None else state]
    words += ["detached"] if life.detached else []
    words += [f"{s.export} every {s.every_s:g} s" for s in life.schedules]
    return ", ".join(words)


def _iso(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.timezone.utc).isoformat(timespec="seconds")


async def run(node: Node) -> None:
    """The node's lifecycle task: fire due schedules and remove lapsed workloads, until the node stops."""
    svc = service(node)
    firing: set[tuple[str, str]] = set()
    async with trio.open_nursery() as nursery:
        while True:
            waker = svc.lifecycle_waker = trio.Event()
            at = now()
            nap = MAX_NAP_S
            for owned in list(svc.owned.values()):
                life = owned.lifecycle
                if life is None or owned.moved is not None or node.stopping:
                    continue
                if life.expired(at) and owned.workload not in svc.active:
                    nursery.start_soon(_lapse, node, owned, life)
                    life.touch(at)  # not again before its removal ends: a failed one is tried a lease later
                    continue
                for schedule in life.due(at):
                    key = (owned.workload, schedule.export)
                    if key not in firing:
                        firing.add(key)
                        nursery.start_soon(_fire, node, owned, life, schedule, firing, key)
                deadline = life.next_deadline()
                if deadline is not None:
                    nap = min(nap, max(deadline - at, 0.0))
            with trio.move_on_after(max(nap, 0.005)):
                await waker.wait()


async def _fire(node: Node, owned: Owned, life: Lifecycle, schedule: Schedule, firing: set[tuple[str, str]],
                key: tuple[str, str]) -> None:
    """Call the schedule's export once, exactly once per firing count, through the ledgered call path."""
    schedule.running = True
    try:
        seq = schedule.fired
        if node.stopping:
            return
        req = MCall(id=0, workload=owned.workload, op="call", caller=caller_of(schedule), seq=seq,
                    ack=seq - 1, export=schedule.export)
        reply = await on_call(node, None, req)
        if isinstance(reply, MResult) and reply.moved_to is not None:
            return  # it left before this firing ran: the new owner fires it, with the same count
        if isinstance(reply, ErrorReply):
            if service(node).owned.get(owned.workload) is not owned:
                return
            logger.warning("scheduled call failed: %s", reply.message,
                           extra={"workload": owned.workload, "export": schedule.export, "fired": seq})
        if schedule.fired == seq and owned.lifecycle is life:
            life.fired(schedule, now())
    finally:
        schedule.running = False
        firing.discard(key)
        service(node).lifecycle_waker.set()


async def _lapse(node: Node, owned: Owned, life: Lifecycle) -> None:
    """Remove a workload whose lease ran out, through the ledgered path (its standby goes too)."""
    workload = owned.workload
    reason = "expired" if life.detached else "abandoned"
    app = node.host.registry.owner(workload) or ""
    reply = await on_call(node, None, MCall(id=0, workload=workload, op="remove", caller=REMOVER, seq=0))
    if isinstance(reply, ErrorReply):
        logger.warning("could not remove a lapsed workload: %s", reply.message,
                       extra={"workload": workload, "reason": reason})
        return
    if isinstance(reply, MResult) and reply.moved_to is not None:
        return
    node.counters[f"workloads_{reason}"] += 1
    logger.info("workload %s", reason, extra={"workload": workload, "app": app, "reason": reason,
                                              "detached": life.detached, "lease_s": life.lease_s})
