"""Hot standby copies: feeding one from the owner, checking it, stopping it, promoting it."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import trio

from nodes import (Address, BadArguments, Done, ErrorReply, HostError, Node, NodeClient, NodeError, Session,
                   WorkloadInfo, crash_point_async)

from . import _chunks
from . import _hostops as ops
from ._codes import MigrationCode
from ._messages import MAbort, MAlign, MCommitted, MFollow, MIncoming, MLocate, MPromote, MReplay, MWhere
from ._oplog import _drain, batches, entry_bytes
from ._ownership_events import Event, EventKind, OwnershipError
from ._ledger import CallLedger
from ._life_node import managed, taken_over
from ._life_node import to_wire as life_wire
from ._replies import error, expect
from ._state import (
    Incoming,
    MigrationError,
    MigrationService,
    Owned,
    Standby,
    _drop_staging,
    _not_owner,
    peer_address,
    service,
)

logger = logging.getLogger(__name__)


async def on_follow(node: Node, session: Session, req: MFollow) -> Done | ErrorReply:
    """Start (or stop, for "") a hot standby copy of a workload this node owns.

    Replies once the standby holds a consistent copy; a request for the
    standby already being fed is answered once the standby node says it
    still holds the copy (else the feed starts over).  Waits while the
    workload moves (the new owner keeps its standby).  Replies
    MIGRATION_FAILED if the standby cannot be set up.
    """
    svc = service(node)
    owned = svc.owner_of(req.workload)
    if owned is None or owned.moved is not None:
        return _not_owner(req.id, node, req.workload)
    target = peer_address(req.standby, "standby") if req.standby else None
    if target == node.address:
        raise BadArguments(f"a standby of {req.workload} must be on another node than its owner")
    async with owned.standby_lock:
        if owned.moved is not None or svc.owned.get(req.workload) is not owned:
            return _not_owner(req.id, node, req.workload)
        feed = owned.standby
        if feed is not None and feed.target == target and feed.send is not None:
            if await _standby_holds_copy(node, feed, req.workload):
                return Done(id=req.id)
            # The standby node restarted (or dropped the copy) while the feed
            # had nothing to send, so the feed has not noticed: start over.
            logger.info("the standby on %s holds no copy; starting it again", target,
                        extra={"workload": req.workload})
        await _stop_standby(owned)
        if target is not None:
            try:
                await node.start(_follow, node, owned, target)
            except MigrationError as exc:
                return error(req.id, MigrationCode.MIGRATION_FAILED, str(exc))
    return Done(id=req.id)


async def _standby_holds_copy(node: Node, feed: Standby, workload: str) -> bool:
    """True if the standby node holds the copy ``feed`` keeps; False if it lost it or cannot be asked."""
    try:
        with trio.fail_after(2.0):
            client = await node.connect_peer(feed.target)
            try:
                where = expect(MWhere, await client.request(MLocate, workload=workload))
            finally:
                await client.aclose()
    except (NodeError, OSError, trio.TooSlowError):
        return False
    return _holds(where, feed.epoch)


def _holds(where: MWhere, epoch: int) -> bool:
    """True if an MLocate answer says the node holds a standby copy at ``epoch``."""
    return where.status == "incoming" and where.standby and where.epoch == epoch


async def _stop_standby(owned: Owned) -> None:
    """End the workload's standby feed, if any, dropping its copy; return once it has ended."""
    feed = owned.standby
    if feed is not None:
        feed.scope.cancel()
        await feed.done.wait()


async def _keep_standby(node: Node, owned: Owned, target: Address) -> None:
    """Start feeding a standby on ``target`` in the background (after a move); log a failure."""
    async with owned.standby_lock:
        if service(node).owned.get(owned.workload) is not owned or owned.moved is not None:
            return
        if owned.standby is not None:
            return  # someone asked for a standby meanwhile
        try:
            await node.start(_follow, node, owned, target)
        except MigrationError as exc:
            logger.warning("%s", exc, extra={"workload": owned.workload})


async def _follow(node: Node, owned: Owned, target: Address, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Feed a standby: a consistent copy, then every logged operation, until stopped.

    Reports started once the standby holds the copy.  Raises
    MigrationError, before that, if it cannot be set up; a failure after
    that is logged and ends the feed, never the node.  A feed stopped on
    purpose drops the standby's copy, unless the workload moved (the copy
    stays for the new owner's feed to replace) or it was flushed for a
    handover onto the standby.
    """
    host, workload = node.host, owned.workload
    feed = owned.standby = Standby(target, owned.epoch + 1)
    # bounded by STANDBY_BACKLOG_BYTES in forward()
    send, receive = trio.open_memory_channel[dict[str, Any]](math.inf)
    client: NodeClient | None = None
    started = False
    try:
        with feed.scope:
            try:
                client = await node.connect_peer(target)
                info, module, settings = await node.run_host(ops.describe, host, workload)
                await client.ensure_module(module)
                await client.request(MIncoming, workload=workload, module_sha256=info.module_sha256, app=info.app,
                                     epoch=feed.epoch, source=node.config.name, standby=True, live=True, **settings)
                await crash_point_async("standby:copying")
                async with owned.lock:  # a consistent cut: the copy plus everything after it
                    snap, at_copy, clock, _ = await node.run_host(ops.consistent_copy, host, workload,
                                                                  start_recording=not owned.record)
                    owned.record = True
                    calls = at_copy.calls
                    ledger, index, life = owned.ledger.to_wire(), owned.index, life_wire(owned)
                    feed.send = send
                size = _chunks.chunk_bytes(node.config.max_frame_bytes, client.peer_max_frame_bytes)
                await _chunks.send(client, await trio.to_thread.run_sync(_chunks.encode, snap, size),
                                   workload=workload, epoch=feed.epoch, standby=True)
                del snap
                await client.request(MAlign, workload=workload, epoch=feed.epoch, calls=calls, index=index,
                                     ledger=ledger, monotonic_ns=clock, standby=True, lifecycle=life)
            except (NodeError, HostError, OSError) as exc:
                raise MigrationError(f"cannot start a standby of {workload} on {target}: {exc}") from None
            task_status.started()
            started = True
            logger.info("standby following", extra={"workload": workload, "peer": client.node})
            await _forward(client, workload, feed, receive)
    finally:
        await _end_feed(node, owned, feed, client)
    if not started:  # stopped (the workload moved or was removed) before the copy was complete
        raise MigrationError(f"the standby of {workload} on {target} was stopped before it was ready")


async def on_promote(node: Node, session: Session, req: MPromote) -> MCommitted | ErrorReply:
    """Make a standby the owner (its owner is gone)."""
    svc = service(node)
    inc = svc.incoming.get(req.workload)
    if inc is None or not inc.standby or inc.ledger is None or not inc.created or req.epoch < inc.epoch:
        return error(req.id, MigrationCode.MIGRATION_FAILED,
                     f"{node.config.name} holds no standby of {req.workload}")
    async with inc.lock:
        if svc.incoming.get(req.workload) is not inc:
            return error(req.id, MigrationCode.MIGRATION_FAILED,
                         f"the standby of {req.workload} on {node.config.name} was replaced")
        owned = Owned(req.workload, epoch=req.epoch, ledger=inc.ledger, index=inc.index, record=True,
                      lifecycle=taken_over(inc.lifecycle))
        try:
            svc.event(req.workload, Event(EventKind.PROMOTE, req.epoch), owner=owned)
        except OwnershipError as exc:
            return error(req.id, MigrationCode.MIGRATION_FAILED, str(exc))
        del svc.incoming[req.workload]
        await node.run_host(ops.set_recording, node.host, req.workload, True)
    managed(node, owned)
    await _drop_staging(node, svc, req.workload)  # a copy the dead owner had begun to send
    svc.metrics.failovers += 1
    logger.info("standby promoted", extra={"workload": req.workload, "epoch": req.epoch})
    return MCommitted(id=req.id, epoch=req.epoch)


async def _forward(client: NodeClient, workload: str, feed: Standby,
                   receive: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
    """Send the standby every operation the owner logs, in batches, until the feed is stopped or fails."""
    room = client.peer_max_frame_bytes - _chunks.FRAME_OVERHEAD_BYTES
    try:
        async for first in receive:
            for batch in batches([first, *_drain(receive)], room):
                await client.request(MReplay, workload=workload, epoch=feed.epoch, entries=batch, standby=True)
                feed.queued_bytes -= sum(entry_bytes(e) for e in batch)
        feed.flushed = True
    except (NodeError, HostError, OSError) as exc:
        logger.warning("standby lost: %s", exc, extra={"workload": workload})
    except Exception:  # a bug in this background task must not take the node down
        logger.exception("standby feed failed", extra={"workload": workload})


async def _end_feed(node: Node, owned: Owned, feed: Standby, client: NodeClient | None) -> None:
    """A feed's end: forget it, drop the standby's copy unless it must stay, close the link."""
    if owned.standby is feed:
        owned.standby = None
    feed.send = None
    with trio.CancelScope(shield=True), trio.move_on_after(2):
        if client is not None:
            # A node stopping with SIGTERM leaves the copy in place: it
            # feeds the standby again after the restart, and the standby
            # can take over if the node never comes back.
            if not feed.flushed and owned.moved is None and not node.stopping:
                with contextlib.suppress(NodeError, HostError, OSError):
                    await client.request(MAbort, workload=owned.workload, epoch=feed.epoch, standby=True)
            await client.aclose()
    feed.done.set()


# --- a move off the standby's node: its copy stays as the standby ----------------

#: Seconds a new owner waits for the source of a move to hold its kept copy as a standby.
KEPT_COPY_WAIT_S = 5.0


async def keep_as_standby(node: Node, svc: MigrationService, owned: Owned, epoch: int, new_owner: str,
                          info: WorkloadInfo, settings: dict[str, Any]) -> bool:
    """After a commit, keep this node's copy as the new owner's hot standby at ``epoch``.

    The node holds the workload's standby (its application said so with
    ``MMigrate.keep_standby``), so the copy the move leaves here is the
    standby: exact at the commit, aligned at the commit's operation, with
    no copy sent.  ``settings`` are the workload's launch settings
    (``Held.launch_settings``).  Returns False (the copy is then removed as usual) if the
    ownership table refuses.
    """
    event = Event(EventKind.KEEP_STANDBY, epoch)
    try:
        svc.ownership.check(owned.workload, event)
    except OwnershipError as exc:
        logger.warning("the copy of %s cannot stay as its standby: %s", owned.workload, exc)
        return False
    await node.run_host(ops.keep_as_standby, node.host, owned.workload)
    svc.event(owned.workload, event)
    svc.incoming[owned.workload] = Incoming(
        owned.workload, info.module_sha256, info.app, epoch, new_owner, standby=True, created=True,
        index=owned.index, ledger=CallLedger.from_wire(owned.ledger.to_wire()),
        settings=dict(settings))
    logger.info("copy kept as the standby", extra={"workload": owned.workload, "epoch": epoch})
    return True


def feed_kept_copy(node: Node, owned: Owned, target: Address) -> None:
    """Feed the standby the source of this move kept on ``target``: every operation from the first on.

    Runs synchronously in the commit, before this node serves the
    workload, so no operation misses the feed; the sending runs in the
    background once the source says it holds the copy.
    """
    feed = owned.standby = Standby(target, owned.epoch + 1)
    # bounded by STANDBY_BACKLOG_BYTES in forward()
    send, receive = trio.open_memory_channel[dict[str, Any]](math.inf)
    feed.send = send
    node.start_soon(_feed_kept, node, owned, feed, receive)


async def _feed_kept(node: Node, owned: Owned, feed: Standby,
                     receive: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
    client: NodeClient | None = None
    try:
        with feed.scope:
            try:
                client = await node.connect_peer(feed.target)
                with trio.fail_after(KEPT_COPY_WAIT_S):
                    while True:  # the source converts its copy once it has seen MCommitted
                        where = expect(MWhere, await client.request(MLocate, workload=owned.workload))
                        if _holds(where, feed.epoch):
                            break
                        await trio.sleep(0.01)
            except (NodeError, HostError, OSError, trio.TooSlowError) as exc:
                logger.warning("the kept standby copy on %s is not there: %s", feed.target, exc,
                               extra={"workload": owned.workload})
                return
            logger.info("standby following its kept copy", extra={"workload": owned.workload, "peer": client.node})
            await _forward(client, owned.workload, feed, receive)
    finally:
        await _end_feed(node, owned, feed, client)
