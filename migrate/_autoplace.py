"""Autoplace: a workload that moves itself when the offload model says another node is clearly better.

``Cluster.autoplace(handle, work)`` starts a background task in the
cluster's nursery and returns its cancel scope (cancel it to stop).  Every
``every_s`` seconds it asks for advice (``Cluster.advise``: the model of
``_advice`` over the application's fresh measurements) and hands the
estimates to an ``_advice.Autoplace``, which says move only when the best
node beats the current one by its ``move_gain`` on ``confirm`` evaluations
in a row (the hysteresis).  A move is an ordinary ``Handle.migrate``:
calls keep working and each runs once.  The cluster's events say what it
did: ``autoplaced`` (moved, with the estimates' totals) or
``autoplace_failed`` (the move or the advice failed; it tries again at the
next evaluation).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from nodes import HostError, NodeError

from ._advice import Autoplace, Work
from ._errors import MigrateError

if TYPE_CHECKING:
    from ._cluster import Cluster
    from ._handle import Handle

logger = logging.getLogger(__name__)

DEFAULT_EVERY_S = 10.0


def start(cluster: Cluster, nursery: trio.Nursery, handle: Handle, work: Work | float, *, every_s: float = DEFAULT_EVERY_S,
          decider: Autoplace | None = None) -> trio.CancelScope:
    """Start re-evaluating ``handle``'s placement every ``every_s`` seconds; return the scope that stops it."""
    if not every_s > 0:
        raise ValueError(f"every_s must be positive, got {every_s!r}")
    work = work if isinstance(work, Work) else Work(units=float(work))
    decider = decider or Autoplace()
    scope = trio.CancelScope()

    async def loop() -> None:
        with scope:
            while True:
                await trio.sleep(every_s)
                await evaluate(cluster, handle, work, decider)

    nursery.start_soon(loop)
    return scope


async def evaluate(cluster: Cluster, handle: Handle, work: Work, decider: Autoplace) -> str | None:
    """One evaluation: the node moved to, or None."""
    try:
        advice = await cluster.advise(handle, work)
        target = decider.step(handle.node, advice.estimates)
        if target is None:
            return None
        before = advice.estimates[handle.node].total_s
        await handle.migrate(target)
    except (MigrateError, NodeError, HostError, trio.TooSlowError) as exc:
        cluster.publish("autoplace_failed", handle.workload, handle.node, str(exc))
        return None
    cluster.publish("autoplaced", handle.workload, target,
                    f"estimated {advice.estimates[target].total_s:.3g} s there against {before:.3g} s")
    return target
