"""A node's shutdown: let requests finish, end the moves that would not, checkpoint every workload.

``shut_down(node)`` is ``Node.shut_down``.  Everything must fit in the
node's ``shutdown_grace_s``.  Requests still running after half of it are
asked to end (``Plugin.stopping``): a move not yet in its final round
aborts and its workload stays here.  The last quarter is kept for the
checkpoint.  Before, a move whose target hung kept
its request running through the whole grace, the node saved nothing, and
every workload it held was lost (a node with a 16 MiB workload moving to a
paused target and a counter beside it: both gone after the restart).  A
request still running after the grace may leave its workload half-way (a
call's effect without its ledger entry), so that workload is not saved,
and the error names it; the others are (new requests are refused, so
nothing else changes them).  A running request that names no workload
may touch any: then nothing is saved, and the error says so.  The checkpoint replaces the previous one
only once it is complete (``nodes._checkpoints``).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING

import trio

from . import _checkpoints as checkpoints
from ._checkpoint_format import BulkReport
from ._errors import CheckpointFailed
from ._plugin import checkpoint_records

if TYPE_CHECKING:
    from ._node import Node

logger = logging.getLogger(__name__)

#: The share of the grace kept for writing the checkpoint when requests are still running: they get
#: half of it, then what plugins end (``Plugin.stopping``) gets until only this share is left.
SAVE_SHARE = 0.25


async def shut_down(node: Node) -> BulkReport:
    """Refuse new requests, let running ones finish (or end them), checkpoint every workload.

    Raises CheckpointFailed, saying what failed and where, when no
    checkpoint was saved or some workloads could not be captured.
    """
    node.stopping = True
    config = node.config
    grace_s = config.shutdown_grace_s
    deadline = time.monotonic() + grace_s
    with trio.move_on_after(grace_s / 2):
        await node.requests_done()
    if node.requests_in_flight:
        for plugin in node.plugins:
            if plugin.stopping is not None:
                plugin.stopping(node)
        with trio.move_on_after(max(0.0, deadline - SAVE_SHARE * grace_s - time.monotonic())):
            await node.requests_done()
    busy: set[str] = set()
    if node.requests_in_flight:
        running = node.busy_workloads
        if running is None:  # a request that names no workload may touch any: none can be saved whole
            raise checkpoints.failure(config.data_path, f"{node.requests_in_flight} requests were still running "
                                                        f"after the {grace_s} s grace period")
        busy = running
        for workload in sorted(busy):
            logger.error("not checkpointed: a request on it was still running after the %s s grace period",
                         grace_s, extra={"workload": workload})
    records, leave_out, node_records = checkpoint_records(
        node, node.plugins, [info.workload_id for info in node.host.workloads() if info.workload_id not in busy])
    report = await trio.to_thread.run_sync(functools.partial(
        checkpoints.save, node.host, config.data_path, records=records, leave_out=leave_out | busy,
        node_records=node_records, deadline=deadline, key=node.data_key))
    for workload, why in report.failed:
        logger.error("workload not checkpointed: %s", why, extra={"workload": workload})
    logger.info("checkpointed %d workloads", len(report.done), extra={"directory": str(config.checkpoint_path)})
    failed = [w for w, _ in report.failed] + sorted(busy)
    if failed:
        raise CheckpointFailed(
            f"the shutdown checkpoint {config.checkpoint_path} left out {len(failed)} workloads "
            f"it could not capture ({', '.join(failed)}); the other {len(report.done)} are saved")
    return report
