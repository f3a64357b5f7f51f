"""Stateless pools, the application's side: ``Cluster.pool`` and ``Pool.call``.

    pool = await cluster.pool(module, init="init", max_per_node=2, nodes="auto")
    await pool.call("handle", 7)

The pool is opened on each of its nodes (``_pool_node``): the module is
initialised there once and captured, and every call runs on an instance
reset to that state.  A call goes to the pool's node with the fewest calls
in flight from this application; each node starts instances on demand, up
to ``max_per_node``, and drops them when idle.

Retries.  A call is sent again, to another node, when its node fails
before answering: the connection could not be made or broke, or the node
said it is shutting down, or when its node refused it for a quota
(``ResourceLimitExceeded``: the instance it needed would pass the node's
or the tenant's limits there; nothing ran).  The first node may have run the call; running
it again cannot apply it twice, because everything a pool call can change
is its instance's state, and that instance is reset or dropped before any
other call uses it: nothing of the first run survives it.  A node that
answers ``unknown_pool`` (it restarted) ran nothing: the pool is opened
there again and the call resent.  Errors of the call itself (a trap, an
unknown export, bad arguments) are answered, not retried.  A module that
writes outside its instance (files of a preopened directory; pool
instances get none) would break this; pools give it no such access.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from nodes import ConnectionFailed, NodeShuttingDown, RemoteNodeError, ResourceLimitExceeded, check_call_args

from . import _nodes
from ._discover import resolve
from ._errors import WorkloadUnavailable
from ._placement import DefaultPolicy, Needs
from ._pool_messages import UNKNOWN_POOL, MPoolCall, MPoolClose, MPoolInfo, MPoolOpen, MPoolResult, MPoolStats
from ._replies import expect

if TYPE_CHECKING:
    from ._cluster import Cluster

logger = logging.getLogger(__name__)

#: How long a node that failed a call is left out of the pool's choices.
DOWN_S = 5.0
_FAILED = (ConnectionFailed, NodeShuttingDown, OSError)


class Pool:
    """A stateless function served by pristine instances on several nodes; made by ``Cluster.pool``."""

    def __init__(self, cluster: Cluster, *, name: str, module: bytes, init: str, max_per_node: int, idle_s: float,
                 app: str) -> None:
        self._cluster = cluster
        self.name = name
        self._module = module
        self._open = dict(pool=name, init=init, max_instances=max_per_node, idle_s=idle_s, app=app)
        self._app = app
        self.nodes: dict[str, str] = {}  # node name -> address, where the pool is open
        self._in_flight: dict[str, int] = {}
        self._down: dict[str, float] = {}  # node -> until when it is left out
        self.retries = 0  # calls sent again to another node after theirs failed

    async def open_on(self, node: str) -> None:
        """Open the pool on ``node`` (uploading the module if it lacks it).

        Raises ConnectionFailed, or the node's errors: ``UnknownExport``
        (no such init), ``WorkloadTrap`` (init trapped), ``InvalidModule``
        / ``UnsupportedImports`` (the module cannot be pooled there).
        """
        address = await resolve(self._cluster, node, "local")
        client = await self._cluster.client(address)
        sha256 = await _nodes.upload(self._cluster, client, self._module)
        await client.request(MPoolOpen, module_sha256=sha256, **self._open)
        self.nodes[client.node] = address
        self._in_flight.setdefault(client.node, 0)

    def _pick(self, tried: set[str]) -> str | None:
        now = trio.current_time()
        live = [n for n in self.nodes if n not in tried and self._down.get(n, 0.0) <= now]
        if not live:
            live = [n for n in self.nodes if n not in tried]
        return min(live, key=lambda n: self._in_flight[n], default=None)

    async def call(self, export: str, *args: int | float,
                   timeout: float | None = None) -> None | int | float | tuple[int | float, ...]:
        """Run ``export(*args)`` on a pristine instance of any of the pool's nodes.

        Returns None, one value or a tuple, as ``Handle.call``.  Raises the
        call's own errors (``WorkloadTrap``, ``UnknownExport``,
        ``BadArguments``, ``DeadlineExceeded``), ``ResourceLimitExceeded``
        when every node refused it for a quota (nothing ran), and
        ``WorkloadUnavailable`` (``ran`` None: a node may have run it) when
        every node failed.

        ``timeout`` bounds the wait in seconds, retries on other nodes
        included: past it, ``trio.TooSlowError``.  The node is not told; the
        call runs on there until it ends or reaches the node's per-call
        deadline, and its result is dropped.  A pool call leaves no state
        behind (its instance is reset or dropped), so nothing of it stays.
        """
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
        with trio.fail_after(math.inf if timeout is None else timeout):
            return await self._call(export, args)

    async def _call(self, export: str, args: tuple[int | float, ...]) -> None | int | float | tuple[int | float, ...]:
        if not isinstance(export, str):
            raise TypeError(f"export must be a str, got {type(export).__name__}")
        check_call_args(args)
        tried: set[str] = set()
        failures: list[str] = []
        refusal: ResourceLimitExceeded | None = None
        while True:
            node = self._pick(tried)
            if node is None and refusal is not None and not failures:
                raise refusal  # every node refused it: nothing ran anywhere
            if node is None:
                why = failures + ([f"refused: {refusal}"] if refusal is not None else [])
                raise WorkloadUnavailable(f"no node of pool {self.name!r} answered {export!r}: "
                                          f"{'; '.join(why) or 'it is open on no node'}", ran=None)
            address = self.nodes[node]
            self._in_flight[node] += 1
            try:
                reply = await self._send(node, address, export, args)
            except _FAILED as exc:
                self._cluster.lost(address, exc)
                self._down[node] = trio.current_time() + DOWN_S
                tried.add(node)
                failures.append(f"{node}: {exc}")
                self.retries += 1
                logger.info("pool call failed on %s, retrying elsewhere: %s", node, exc)
                continue
            except ResourceLimitExceeded as exc:  # that node is full for this tenant: nothing ran
                tried.add(node)
                refusal = exc
                logger.info("pool call refused on %s, trying elsewhere: %s", node, exc)
                continue
            finally:
                self._in_flight[node] -= 1
            self._down.pop(node, None)
            values = reply.values
            return None if not values else values[0] if len(values) == 1 else tuple(values)

    async def _send(self, node: str, address: str, export: str, args: Sequence[int | float]) -> MPoolResult:
        client = await self._cluster.client(address)
        try:
            return expect(MPoolResult, await client.request(MPoolCall, pool=self.name, export=export,
                                                            args=tuple(args), app=self._app))
        except RemoteNodeError as exc:
            if exc.code != UNKNOWN_POOL:
                raise
        await self.open_on(node)  # it restarted: nothing ran there
        client = await self._cluster.client(address)
        return expect(MPoolResult, await client.request(MPoolCall, pool=self.name, export=export, args=tuple(args),
                                                        app=self._app))

    async def stats(self) -> dict[str, MPoolInfo]:
        """Each open node's counters (instances, calls, left_state ...); nodes that do not answer are left out."""
        out = {}
        for node, address in list(self.nodes.items()):
            try:
                out[node] = expect(MPoolInfo, await self._cluster.ask(address, MPoolStats, pool=self.name,
                                                                      app=self._app))
            except (*_FAILED, RemoteNodeError, trio.TooSlowError):
                continue
        return out

    async def close(self) -> None:
        """Drop the pool on every node that answers."""
        for node, address in list(self.nodes.items()):
            try:
                await self._cluster.ask(address, MPoolClose, pool=self.name, app=self._app)
            except (*_FAILED, RemoteNodeError, trio.TooSlowError):
                pass
        self.nodes.clear()


async def open_pool(cluster: Cluster, module: bytes, *, name: str, init: str | None, max_per_node: int, idle_s: float,
                    nodes: str | Sequence[str], app: str) -> Pool:
    """Open a pool on ``nodes`` (names, or "auto": every node placement finds fit).

    Nodes that cannot be reached are left out; the node's errors about the
    module or its init are raised.  Raises ``WorkloadUnavailable`` if no
    node could be reached.
    """
    if nodes == "auto":
        names = list((DefaultPolicy()).place(await _nodes.nodes(cluster), Needs()).ranked)
    else:
        names = [nodes] if isinstance(nodes, str) else list(nodes)
    pool = Pool(cluster, name=name, module=module, init=init or "", max_per_node=max_per_node, idle_s=idle_s, app=app)
    unreachable = []
    for node in names:
        try:
            await pool.open_on(node)
        except _FAILED as exc:
            unreachable.append(f"{node}: {exc}")
    if not pool.nodes:
        raise WorkloadUnavailable(f"pool {name!r} could be opened on no node: {'; '.join(unreachable) or 'none'}",
                                  ran=False)
    return pool
