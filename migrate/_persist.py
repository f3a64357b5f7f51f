"""Ownership across restarts: the records and tombstones SIGTERM's checkpoint keeps, and their restore."""

from __future__ import annotations

import logging
from typing import Any, TypeGuard

import trio

from nodes import Address, Node, NodeError, parse_address

from . import _hostops as ops
from ._ledger import CallLedger
from ._life_node import from_wire as life_from_wire
from ._life_node import caught_up, restarted
from ._life_node import to_wire as life_wire
from ._messages import MLocate, MWhere
from ._standby import _keep_standby
from ._ownership import State
from ._ownership_events import Event, EventKind, OwnershipError, Peer
from ._replies import expect
from ._state import Owned, service

logger = logging.getLogger(__name__)


def _save_record(node: Node, workload: str) -> dict[str, Any] | None:
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
            "standby": str(standby) if standby is not None else "", "lifecycle": life_wire(owned, saved=True)}


def _load_record(node: Node, workload: str, record: dict[str, Any]) -> None:
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
                  record=bool(record.get("record")), resume_standby=resume,
                  lifecycle=restarted(life_from_wire(record.get("lifecycle"))))
    caught_up(owned)
    if owned.record:  # a protected workload: calls report the inputs they consumed
        ops.set_recording(node.host, workload, True)
    try:
        service(node).event(workload, Event(EventKind.LOAD_OWNED, epoch), owner=owned)
    except OwnershipError as exc:
        raise ValueError(str(exc)) from None


async def _resume_standbys(node: Node) -> None:
    """Feed again, with a fresh copy, the standbys restored workloads had before the restart.

    Returns once each of them holds its calls until its standby node is asked.
    """
    for owned in list(service(node).owned.values()):
        if owned.resume_standby is not None:
            target, owned.resume_standby = owned.resume_standby, None
            await node.start(_resume_standby, node, owned, target)


async def _resume_standby(node: Node, owned: Owned, target: Address, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """With calls held, ask the standby node whether it took over while this node was down; then feed it.

    If it did (it owns the workload, or moved it on, at a higher epoch),
    this copy is fenced off: it becomes a tombstone pointing at the owner
    and is removed, so a late call is redirected instead of running on old
    state.  If the standby node cannot be asked, the workload is served.
    """
    svc, workload = service(node), owned.workload
    owned.resumed = resumed = trio.Event()  # MLocate waits for this check: it may end in "moved"
    try:
        async with owned.lock:
            task_status.started()
            where: MWhere | None = None
            name = ""
            try:
                with trio.fail_after(5.0):
                    client = await node.connect_peer(target)
                    try:
                        where, name = expect(MWhere, await client.request(MLocate, workload=workload)), client.node
                    finally:
                        await client.aclose()
            except (NodeError, OSError, trio.TooSlowError) as exc:
                logger.warning("cannot ask the standby on %s whether it took over: %s", target, exc,
                               extra={"workload": workload})
            if where is not None and where.status in ("owner", "moved") and where.epoch > owned.epoch:
                peer = (Peer(name, str(target), where.epoch) if where.status == "owner"
                        else Peer(where.to_name or "", where.to_address or "", where.epoch))
                try:
                    svc.event(workload, Event(EventKind.SUPERSEDED, where.epoch, peer))  # sets owned.moved
                except OwnershipError:  # removed (or moved on) meanwhile
                    return
                await node.run_host(ops.remove_quietly, node.host, workload)
                svc.event(workload, Event(EventKind.COPY_REMOVED))
                logger.warning("superseded while this node was down: %s owns it at epoch %d", peer.name,
                               where.epoch, extra={"workload": workload, "epoch": owned.epoch})
                return
    finally:
        resumed.set()
    await _keep_standby(node, owned, target)


def _save_tombstones(node: Node) -> dict[str, Any]:
    return {"moved": {w: [t.to_name, t.to_address, t.epoch] for w, t in service(node).moved.items()}}


def _load_tombstones(node: Node, record: dict[str, Any]) -> None:
    """Remember where workloads went, so late calls are still redirected.  Raises ValueError."""
    moved = record.get("moved")
    if not isinstance(moved, dict):
        raise ValueError("no map of moved workloads")
    svc = service(node)
    for workload, stone in moved.items():
        if not (isinstance(stone, list) and len(stone) == 3 and isinstance(stone[0], str)
                and isinstance(stone[1], str) and _is_count(stone[2])):
            raise ValueError(f"tombstone of {workload!r} is {stone!r}")
        if svc.ownership.state(str(workload)) is State.ABSENT:
            svc.event(str(workload), Event(EventKind.LOAD_TOMBSTONE, stone[2], Peer(*stone)))


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
