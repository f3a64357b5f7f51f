"""Wire messages of stateless pools (application -> node), registered with the node protocol.

A pool is named by its ``app`` and ``pool`` name on each node: the app is
the sender's own (a client certificate may name only its tenant's apps,
``nodes._authorization``), so no request reaches another tenant's pool.
Any role may send them: they are what an application's ``Cluster.pool``
sends, like ``MSpawn`` and ``MCall``.

* ``MPoolOpen``: make the pool on this node (initialise the module once
  and capture it), or find the one made before with the same module and
  init;
* ``MPoolCall``: one call on a pristine instance; ``unknown_pool`` if the
  node has no such pool (it restarted: pools are not kept), and then
  nothing ran;
* ``MPoolStats``: the pool's counters (``nodes.PoolStats``);
* ``MPoolClose``: drop it.
"""

from __future__ import annotations

from nodes import ANY_ROLE, Done, Reply, Request, message

#: The code of the ErrorReply to a request for a pool the node does not hold.
UNKNOWN_POOL = "unknown_pool"


@message("p_info")
class MPoolInfo(Reply):
    """A pool's counters on one node: the fields of ``nodes.PoolStats``, and its ``max_instances``."""

    instances: int
    calls: int
    started: int
    discarded: int
    left_state: int
    pages_reset: int
    memory_bytes: int
    max_instances: int


@message("p_open", reply=MPoolInfo, roles=ANY_ROLE)
class MPoolOpen(Request):
    """Make pool ``pool`` of module ``module_sha256`` (held by the node), initialised by ``init`` ("": none)."""

    pool: str
    module_sha256: str
    init: str = ""
    max_instances: int = 2
    idle_s: float = 30.0
    app: str = ""


@message("p_result")
class MPoolResult(Reply):
    """A pool call's values."""

    values: tuple[int | float, ...] = ()


@message("p_call", reply=MPoolResult, roles=ANY_ROLE)
class MPoolCall(Request):
    """Call ``export`` with ``args`` on a pristine instance of pool ``pool``."""

    pool: str
    export: str
    args: tuple[int | float, ...] = ()
    app: str = ""


@message("p_stats", reply=MPoolInfo, roles=ANY_ROLE)
class MPoolStats(Request):
    pool: str
    app: str = ""


@message("p_close", reply=Done, roles=ANY_ROLE)
class MPoolClose(Request):
    """Drop pool ``pool`` and its instances (a call running on it finishes first)."""

    pool: str
    app: str = ""
