"""Consistent checkpoints of an owned workload, fetched by the application part by part."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator

import trio

from nodes import ErrorCode, ErrorReply, Node, Session

from . import _chunks
from . import _hostops as ops
from ._life_node import to_wire as life_wire
from ._messages import MCheckpoint, MCheckpointBytes, MCheckpointData, MCheckpointPart
from ._parts import PartRefused
from ._state import MAX_PENDING_CHECKPOINTS, PendingCheckpoint, _not_owner, service


async def on_checkpoint(node: Node, session: Session, req: MCheckpoint) -> MCheckpointData | ErrorReply:
    """Take a consistent checkpoint; the application fetches its bytes with MCheckpointPart.

    The snapshot is taken between calls, with the index and ledger of that
    moment; it is encoded part by part as the parts are fetched, in parts
    that fit a frame both ways.  Replies NOT_OWNER if the workload left
    while the request waited for its turn.
    """
    svc = service(node)
    owned = svc.owner_of(req.workload)
    if owned is None or owned.moved is not None:
        return _not_owner(req.id, node, req.workload)
    async with owned.lock:  # between calls: consistent with index and ledger
        if owned.moved is not None or svc.owned.get(req.workload) is not owned:
            return _not_owner(req.id, node, req.workload)  # it moved or was removed meanwhile
        snap, info, clock, settings = await node.run_host(ops.consistent_copy, node.host, req.workload)
        index, ledger, epoch, life = owned.index, owned.ledger.to_wire(), owned.epoch, life_wire(owned)
    size = _chunks.chunk_bytes(node.config.max_frame_bytes, session.channel.connection.peer_max_frame_bytes)
    token = uuid.uuid4().hex
    owned.checkpoints[token] = PendingCheckpoint(_chunks.stream(snap, size))
    while len(owned.checkpoints) > MAX_PENDING_CHECKPOINTS:
        owned.checkpoints.popitem(last=False)
    return MCheckpointData(id=req.id, token=token, index=index, epoch=epoch, ledger=ledger, calls=info.calls,
                           module_sha256=info.module_sha256, app=info.app, monotonic_ns=clock,
                           settings={"args": list(settings["args"]), "env": settings["env"],
                                     "memory_limit_bytes": settings["memory_limit_bytes"]}, lifecycle=life)


async def on_checkpoint_part(node: Node, session: Session, req: MCheckpointPart) -> MCheckpointBytes | ErrorReply:
    """A part of a checkpoint; the last one frees it.

    Parts may be asked for several at once (and served in any order):
    each is encoded when it or a later one is asked for, one encoder at a
    time in a worker thread.  A part past the end gets no data and
    ``last``; one fetched before, or more than MAX_PARTS_AHEAD past the
    number fetched so far, is refused (BAD_REQUEST).
    """
    owned = service(node).owned.get(req.workload)
    pending = owned.checkpoints.get(req.token) if owned is not None else None
    if pending is None:
        return ErrorReply(id=req.id, code=ErrorCode.BAD_REQUEST,
                          message=f"{node.config.name} holds no checkpoint {req.token} of {req.workload} "
                                  "(it was fetched, replaced by newer ones, or the workload left)")
    queue = pending.queue
    try:
        queue.check(req.part)
        if queue.wanted(req.part):
            async with pending.lock:
                if wanted := queue.wanted(req.part):
                    # ``parts`` is None only once the queue is exhausted, when nothing is wanted.
                    assert pending.parts is not None
                    # Encoding (zstd) runs in a worker thread, up to the part
                    # after this one, so the reply knows whether it is the last.
                    queue.add(await trio.to_thread.run_sync(_take, pending.parts, wanted), wanted)
        data, last = queue.take(req.part)
    except PartRefused as exc:
        return ErrorReply(id=req.id, code=ErrorCode.BAD_REQUEST, message=f"checkpoint {req.token}: {exc}")
    if queue.done:
        pending.parts = None  # frees the snapshot; the token stays, to answer parts past the end
    return MCheckpointBytes(id=req.id, data=data, last=last)


def _take(parts: Iterator[bytes], count: int) -> list[bytes]:
    """The next ``count`` items of ``parts``, fewer if it ends first."""
    return list(itertools.islice(parts, count))
