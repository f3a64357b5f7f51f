"""The node side of stateless pools: ``POOL_PLUGIN``, serving ``MPoolOpen``, ``MPoolCall``, ``MPoolStats``, ``MPoolClose``.

Each pool (``nodes.InstancePool``) has ``max_instances`` slots.  A call
takes a free slot in the event loop (waiting on the pool's semaphore when
all are busy: the wait is bounded by the slots, not by threads), runs on
the node's fair executor keyed by that slot, and gives the slot back.
Free slots are taken last-used first, so a light load keeps reusing warm
instances and the others go idle.  A background task drops the instances
idle longer than the pool's ``idle_s``: a pool nobody calls holds no
instance, only its captured state (scale to zero).  Pools live in memory
only; after a restart the node answers ``unknown_pool`` and the
application opens the pool again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import trio

from nodes import (BadArguments, Done, ErrorReply, InstancePool, MAX_POOL_INSTANCES, Node, Plugin,
                   ResourceLimitExceeded, Session)

from ._pool_messages import UNKNOWN_POOL, MPoolCall, MPoolClose, MPoolInfo, MPoolOpen, MPoolResult, MPoolStats
from ._replies import error

logger = logging.getLogger(__name__)

PLUGIN_NAME = "pools"
#: The most pools one node holds.
MAX_POOLS = 256
#: How often idle instances are looked for, at most.
TRIM_EVERY_S = 0.5
_MAX_IDLE_S = 3600.0


@dataclass(eq=False)
class _Entry:
    pool: InstancePool
    module_sha256: str
    init: str
    free: list[int]
    slots: trio.Semaphore
    closed: bool = False


@dataclass
class PoolService:
    """A node's pools, by (app, name)."""

    pools: dict[tuple[str, str], _Entry] = field(default_factory=dict)
    opening: trio.Lock = field(default_factory=trio.Lock)


def _service(node: Node) -> PoolService:
    return node.plugin_state(PLUGIN_NAME)


def _info(request_id: int, entry: _Entry) -> MPoolInfo:
    return MPoolInfo(id=request_id, max_instances=entry.pool.max_instances, **dataclasses.asdict(entry.pool.stats()))


def _unknown(request_id: int, node: Node, app: str, pool: str) -> ErrorReply:
    return error(request_id, UNKNOWN_POOL, f"{node.config.name} has no pool {pool!r} of {app!r}")


async def on_open(node: Node, session: Session, req: MPoolOpen) -> MPoolInfo:
    if not isinstance(req.max_instances, int) or not 1 <= req.max_instances <= MAX_POOL_INSTANCES:
        raise BadArguments(f"max_instances must be 1 to {MAX_POOL_INSTANCES}, got {req.max_instances!r}")
    if not isinstance(req.idle_s, (int, float)) or not 0 < req.idle_s <= _MAX_IDLE_S or math.isnan(req.idle_s):
        raise BadArguments(f"idle_s must be above 0 and at most {_MAX_IDLE_S}, got {req.idle_s!r}")
    svc = _service(node)
    key = (req.app, req.pool)
    async with svc.opening:
        entry = svc.pools.get(key)
        if entry is not None:
            if (entry.module_sha256, entry.init) != (req.module_sha256, req.init):
                raise BadArguments(f"pool {req.pool!r} exists with another module or init; close it first")
            return _info(req.id, entry)
        if len(svc.pools) >= MAX_POOLS:
            raise ResourceLimitExceeded("pools", len(svc.pools) + 1, MAX_POOLS, f"pools on {node.config.name}")
        pool = await node.run_host(InstancePool, node.host, req.module_sha256, name=req.pool, app=req.app,
                                   init=req.init or None, max_instances=req.max_instances, idle_s=req.idle_s)
        entry = svc.pools[key] = _Entry(pool, req.module_sha256, req.init, list(range(req.max_instances))[::-1],
                                        trio.Semaphore(req.max_instances))
    logger.info("opened pool", extra={"pool": req.pool, "app": req.app, "module_sha256": req.module_sha256})
    return _info(req.id, entry)


async def on_call(node: Node, session: Session, req: MPoolCall) -> MPoolResult | ErrorReply:
    entry = _service(node).pools.get((req.app, req.pool))
    if entry is None:
        return _unknown(req.id, node, req.app, req.pool)
    params = entry.pool.check_call(req.export, req.args)
    async with entry.slots:
        if entry.closed:
            return _unknown(req.id, node, req.app, req.pool)
        slot = entry.free.pop()
        try:
            result = await node.run_call(("pool", req.app, req.pool, slot), entry.pool.call, slot, req.export,
                                         params)
        finally:
            entry.free.append(slot)
    values = result if isinstance(result, tuple) else () if result is None else (result,)
    return MPoolResult(id=req.id, values=values)


async def on_stats(node: Node, session: Session, req: MPoolStats) -> MPoolInfo | ErrorReply:
    entry = _service(node).pools.get((req.app, req.pool))
    return _unknown(req.id, node, req.app, req.pool) if entry is None else _info(req.id, entry)


async def on_close(node: Node, session: Session, req: MPoolClose) -> Done | ErrorReply:
    svc = _service(node)
    entry = svc.pools.pop((req.app, req.pool), None)
    if entry is None:
        return _unknown(req.id, node, req.app, req.pool)
    entry.closed = True
    for _ in range(entry.pool.max_instances):  # wait for the calls running on it
        await entry.slots.acquire()
    await node.run_host(entry.pool.close)
    return Done(id=req.id)


async def _trim(node: Node) -> None:
    """Drop instances idle past their pool's ``idle_s``, taking their slots while doing so."""
    svc = _service(node)
    while True:
        await trio.sleep(TRIM_EVERY_S)
        now = time.monotonic()
        for entry in list(svc.pools.values()):
            idle = [s for s in entry.pool.idle_slots(now) if s in entry.free]
            if not idle or entry.closed:
                continue
            for slot in idle:
                entry.free.remove(slot)
            try:
                await node.run_host(entry.pool.trim, idle)
            finally:
                entry.free[:0] = idle  # least recently used: taken last


async def _resume(node: Node) -> None:
    node.start_soon(_trim, node)


POOL_PLUGIN = Plugin(
    name=PLUGIN_NAME,
    handlers={MPoolOpen: on_open, MPoolCall: on_call, MPoolStats: on_stats, MPoolClose: on_close},
    state=lambda node: PoolService(),
    resume=_resume,
)
