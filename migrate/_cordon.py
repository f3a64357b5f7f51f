"""Cordon: a node that takes no new placements (``migrate-node cordon NAME`` / ``uncordon NAME``), and the probe.

A cordoned node refuses ``MSpawn`` and an incoming move (not a standby
copy, which places nothing new) with the code ``cordoned``, in the move's
first message, so nothing is copied; the workloads it has keep running and
may move off (``migrate-node drain``).  The flag is a file, ``cordoned``,
in the node's data directory: a restart keeps it.  ``status`` shows it
(a record ``{"node": NAME, "state": "cordoned"}`` under migrations, to
node certificates), and so does the node's membership record, which the
node updates (``membership.update_self``) so its peers learn it.

``MCordon`` and ``MUncordon`` are for node certificates only: the operator
CLI uses one, as for every other node-changing request.  ``MProbe`` is any
role's: it carries bytes that are dropped, for an application to measure
its link's throughput to a node when none of its own transfers has yet.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nodes import ANY_ROLE, NODE_ONLY, BadArguments, Done, ErrorReply, Handler, Node, Reply, Request, Session, message

from ._codes import MigrationCode
from ._replies import error

logger = logging.getLogger(__name__)

CORDON_FILE = "cordoned"
#: The largest probe an application may send (bytes): large enough to measure a link, small enough to be cheap.
MAX_PROBE_BYTES = 4 * 2**20


@message("m_cordoned")
class MCordonState(Reply):
    cordoned: bool
    changed: bool  # False if it was so already


@message("m_cordon", reply=MCordonState, roles=NODE_ONLY)
class MCordon(Request):
    """Take no new placements (spawns, incoming moves) from now on, across restarts."""


@message("m_uncordon", reply=MCordonState, roles=NODE_ONLY)
class MUncordon(Request):
    """Take new placements again."""


@message("m_probe", reply=Done, roles=ANY_ROLE)
class MProbe(Request):
    """Bytes sent to measure the link's throughput; dropped on arrival."""

    data: bytes


def cordon_path(node: Node) -> Path:
    return node.config.data_path / CORDON_FILE


def is_cordoned(node: Node) -> bool:
    return cordon_path(node).exists()


def refusal(node: Node, request_id: int, what: str) -> ErrorReply | None:
    """The ``cordoned`` reply to a new placement on a cordoned node; None if the node takes it."""
    if not is_cordoned(node):
        return None
    return error(request_id, MigrationCode.CORDONED, f"{node.config.name} is cordoned: it takes no {what}")


def announce(node: Node) -> None:
    """Put the flag in the node's own membership record, if the node keeps one (its peers learn it)."""
    membership = node.membership
    if membership is not None and membership.me is not None:  # an application's node has no entry
        membership.update_self(cordoned=is_cordoned(node))


async def _set(node: Node, cordoned: bool) -> bool:
    path = cordon_path(node)
    if path.exists() == cordoned:
        return False
    if cordoned:
        path.write_text("cordoned by the operator: no new placements\n")
    else:
        path.unlink()
    logger.info("cordoned" if cordoned else "uncordoned")
    announce(node)
    return True


async def on_cordon(node: Node, session: Session, req: MCordon) -> MCordonState:
    return MCordonState(id=req.id, cordoned=True, changed=await _set(node, True))


async def on_uncordon(node: Node, session: Session, req: MUncordon) -> MCordonState:
    return MCordonState(id=req.id, cordoned=False, changed=await _set(node, False))


async def on_probe(node: Node, session: Session, req: MProbe) -> Done:
    if len(req.data) > MAX_PROBE_BYTES:
        raise BadArguments(f"a probe carries at most {MAX_PROBE_BYTES} bytes, got {len(req.data)}")
    return Done(id=req.id)


def status(node: Node) -> tuple[dict[str, Any], ...]:
    return ({"node": node.config.name, "state": "cordoned"},) if is_cordoned(node) else ()


HANDLERS: dict[type[Request], Handler] = {MCordon: on_cordon, MUncordon: on_uncordon, MProbe: on_probe}
