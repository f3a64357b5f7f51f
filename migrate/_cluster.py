"""The application's view of the nodes it may use, and its own client node.

``connect(*addresses, tls=...)`` opens a cluster: it starts the *local*
node -- a real node, role "client", embedded in the application's process
and listening on loopback -- and connects to the given nodes.  Workloads
spawned ``on="local"`` run in the application's process and move out to
the edge and cloud, and back, by the same node-to-node protocol as any
other move.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from nodes import (Address, ConnectionFailed, ErrorCode, HostError, NodeClient, NodeConfig, NodeError,
                   NodeShuttingDown, RemoteNodeError, Reply, Request, embedded_logging, parse_address, serve,
                   unwrap_group)

from . import _autoplace, _nodes
from ._advice import Advice, Autoplace, Work
from ._discover import discover_node, follow_members, locate, resolve
from ._placement import Needs, NodeRecord, PlacementPolicy
from ._service import PLUGINS
from ._errors import MigrateError, UnknownNode, WorkloadUnavailable
from ._handle import DEFAULT_RECONNECT_TIMEOUT_S, Handle, module_bytes
from ._keeper import DEFAULT_GRACE_S, Keeper, lifecycle_spec
from ._messages import MSpawn, MSpawned
from ._pool import Pool, open_pool
from ._protect import Protector
from ._protection import Event, FailoverFailed, Protection, ProtectionStatus
from ._replies import expect

logger = logging.getLogger(__name__)

LOCAL = "local"
AUTO = "auto"


class Cluster:
    """The nodes an application uses; made by ``connect``."""

    def __init__(self, *, tls: Path | str | None, nursery: trio.Nursery,
                 reconnect_timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S) -> None:
        self._tls = tls
        self._nursery = nursery
        #: What new handles wait for an unreachable owner to come back (``Handle.reconnect_timeout_s``).
        self.reconnect_timeout_s = reconnect_timeout_s
        self._restarting: dict[str, float] = {}  # address -> until when its node is waited for
        self._clients: dict[str, NodeClient] = {}
        self._connecting: dict[str, trio.Lock] = {}
        self._names: dict[str, str] = {}  # node name -> address
        self._seen: list[str] = []        # addresses, in the order we learned them
        self._modules: dict[str, bytes] = {}  # workload -> module bytes, for failover
        self._protectors: dict[str, Protector] = {}
        self._protect_scopes: dict[str, trio.CancelScope] = {}
        self._event_send, self._event_receive = trio.open_memory_channel[Event](1000)
        self.measurements = _nodes.Measurements()  # this application's throughput and speed per node
        self.keeper = Keeper(self)  # the leases of the workloads it holds, and its posts

    # --- addresses and connections ----------------------------------------

    def learn(self, name: str, address: str) -> None:
        self._names[name] = address
        if address not in self._seen:
            self._seen.append(address)

    def address_of(self, node: str) -> str:
        """The address of node ``node`` (a name, or an address); raises UnknownNode."""
        if node in self._names:
            return self._names[node]
        if node in self._seen:
            return node
        known = ", ".join(sorted(self._names)) or "none"
        raise UnknownNode(f"unknown node {node!r}; known nodes: {known}")

    def name_of(self, address: str) -> str:
        return next((name for name, addr in self._names.items() if addr == address), address)

    async def client(self, address: str) -> NodeClient:
        """A connected client for ``address``, reused while it works.

        Raises ConnectionFailed.
        """
        client = self._clients.get(address)
        if client is not None and not await client.closed_by_node():
            return client
        lock = self._connecting.setdefault(address, trio.Lock())
        async with lock:
            client = self._clients.get(address)
            if client is not None and not await client.closed_by_node():
                return client
            if client is not None and announces_shutdown(client._failure):
                # Whoever read the node's goodbye, a call or the protector:
                # its workloads are waited for, not failed over.
                self.shutting_down(address, self.reconnect_timeout_s)
            try:
                client = await NodeClient.connect(address, tls=self._tls)
            except (OSError, NodeError) as exc:
                raise ConnectionFailed(f"cannot reach {address}: {exc}") from None
            self._clients[address] = client
            self._restarting.pop(address, None)
            self.learn(client.node, address)
            return client

    def shutting_down(self, address: str, wait_s: float) -> None:
        """The node at ``address`` said it is shutting down: wait ``wait_s`` for it to come back there."""
        self._restarting[address] = trio.current_time() + wait_s

    def restarting(self, address: str) -> bool:
        """True while a node that said it was shutting down is waited for at ``address``."""
        until = self._restarting.get(address)
        return until is not None and trio.current_time() < until

    def forget(self, address: str) -> None:
        client = self._clients.pop(address, None)
        if client is not None:
            self._nursery.start_soon(_close_quietly, client)

    def lost(self, address: str, exc: BaseException) -> None:
        """A request to ``address`` failed with ``exc``: drop the connection, and note a shutdown it announced."""
        self.note_shutdown(address, exc)
        self.forget(address)

    def note_shutdown(self, address: str, exc: BaseException) -> None:
        """If ``exc`` is the node at ``address`` saying it is shutting down, wait for it (no failover)."""
        if announces_shutdown(exc):
            self.shutting_down(address, self.reconnect_timeout_s)

    async def ask(self, address: str, kind: type[Request], *, timeout_s: float = 2.0, **fields: Any) -> Reply:
        """Send an idempotent request to ``address``; once more on a new connection if the kept one was dead.

        A connection kept across the node's restart fails on first use;
        the second try tells a stale connection from a node that is gone.
        Raises ConnectionFailed, node errors and trio.TooSlowError.
        """
        kept = address in self._clients
        try:
            client = await self.client(address)
            with trio.fail_after(timeout_s):
                return await client.request(kind, **fields)
        except ConnectionFailed as exc:
            self.lost(address, exc)
            if not kept:
                raise
        client = await self.client(address)
        with trio.fail_after(timeout_s):
            return await client.request(kind, **fields)

    async def aclose(self) -> None:
        await self.keeper.goodbye()
        for client in list(self._clients.values()):
            await _close_quietly(client)
        self._clients.clear()

    # --- what applications call -------------------------------------------

    async def nodes(self) -> list[NodeRecord]:
        """Every node in the membership view, with metadata and this application's RTT (None: no answer) and throughput."""
        return await _nodes.nodes(self)

    async def spawn(self, module: bytes | str | Path, *, on: str = LOCAL, app: str = "",
                    workload: str | None = None, needs: Needs | None = None,
                    policy: PlacementPolicy | None = None, idle_s: float | None = None, name: str | None = None,
                    detached: bool | None = None, ttl: float | None = None, every: dict[str, float] | None = None,
                    grace_s: float = DEFAULT_GRACE_S) -> Handle:
        """Start a workload from ``module`` (bytes or a path) on node ``on``.

        ``on="auto"`` lets ``policy`` (``DefaultPolicy``) pick the node for
        ``needs`` (``_placement``); NoSuitableNode says why each node was
        rejected.  Module bytes cross the network only if the node lacks them.
        ``app`` is the application it belongs to: "" for the certificate's
        own (``nodes._authorization``).  Once no call used it for ``idle_s``
        (None: the node's ``--idle-s``; 0: never) the node hibernates it; the next call wakes it.
        ``name`` (or ``workload``), ``detached``, ``ttl``, ``every``, ``grace_s``: its lifecycle (``_keeper``).
        Raises UnknownNode, ConnectionFailed and the node's errors (``InvalidModule``, ``ResourceLimitExceeded``...).
        """
        if name is not None and workload not in (None, name):
            raise ValueError(f"name {name!r} and workload {workload!r} differ: name is the workload's id")
        life = lifecycle_spec(name=name, detached=detached, ttl=ttl, every=every, grace_s=grace_s)
        workload = name or workload
        if on == AUTO:
            return await _nodes.spawn_auto(self, module_bytes(module), needs=needs, policy=policy, app=app,
                                           workload=workload, idle_s=idle_s, lifecycle=life)
        return await self.spawn_on(on, module_bytes(module), app=app, workload=workload, idle_s=idle_s,
                                   lifecycle=life)

    async def spawn_on(self, on: str, module: bytes, *, app: str, workload: str | None, idle_s: float | None,
                       lifecycle: dict[str, Any] | None) -> Handle:
        """``spawn`` on node ``on``, with ``lifecycle`` (``_keeper.lifecycle_spec``): held if it has one."""
        address = await resolve(self, on, LOCAL)
        client = await self.client(address)
        sha256 = await _nodes.upload(self, client, module)
        reply = expect(MSpawned, await client.request(MSpawn, module_sha256=sha256, workload=workload, app=app,
                                                     idle_s=idle_s, lifecycle=lifecycle))
        self._modules[reply.workload] = module
        handle = Handle(self, reply.workload, node=client.node, address=address, epoch=reply.epoch)
        if lifecycle is not None:
            self.keeper.hold(handle, lifecycle["lease_s"])
        return handle

    async def post(self, name: str, export: str, *args: int | float | bytes | str) -> Any:
        """Deliver an event to workload ``name``: call its ``export`` with ``args`` exactly once, wherever it runs."""
        return await self.keeper.post(name, export, *args)

    async def pool(self, module: bytes | str | Path, *, init: str | None = None, max_per_node: int = 2,
                   nodes: str | list[str] = AUTO, name: str | None = None, idle_s: float = 30.0,
                   app: str = "") -> Pool:
        """A stateless function on ``nodes`` ("auto": every fitting node): ``init`` runs once per node,
        then every ``Pool.call`` gets an instance reset to that state (``_pool``)."""
        return await open_pool(self, module_bytes(module), name=name or f"p-{uuid.uuid4().hex[:12]}", init=init,
                               max_per_node=max_per_node, idle_s=idle_s, nodes=nodes, app=app)

    async def advise(self, target: Handle | bytes, work: Work | float) -> Advice:
        """Run ``target`` (a handle, or module bytes) locally or on which node, for ``work`` (``_advice``)."""
        return await _nodes.advise(self, module_bytes(target) if not isinstance(target, Handle) else target, work)

    def autoplace(self, handle: Handle, work: Work | float, *, every_s: float = 10.0,
                  decider: Autoplace | None = None) -> trio.CancelScope:
        """Move ``handle`` when advice finds a clearly better node, re-evaluated every ``every_s`` (``_autoplace``)."""
        return _autoplace.start(self, self._nursery, handle, work, every_s=every_s, decider=decider)

    # --- protection and events --------------------------------------------

    def events(self) -> trio.MemoryReceiveChannel[Event]:
        """A channel of ``Event``: workloads moved, failed over or diverged.

        Each call returns a new receiver; events are dropped, not buffered
        without bound, for receivers that fall 1,000 behind.
        """
        return self._event_receive.clone()

    def publish(self, kind: str, workload: str, node: str, detail: str = "") -> None:
        try:
            self._event_send.send_nowait(Event(kind, workload, node, detail))
        except trio.WouldBlock:
            logger.warning("event dropped: %s %s", kind, workload)

    async def protect(self, handle: Handle, protection: Protection) -> None:
        workload = handle.workload
        if protection.mode != "off":
            self.address_of(protection.to)  # raises UnknownNode now, not at failover
            if workload not in self._modules:
                raise ValueError(f"workload {workload} was not spawned by this cluster; its module is unknown")
        scope = self._protect_scopes.pop(workload, None)
        if scope is not None:
            scope.cancel()
        previous = self._protectors.pop(workload, None)
        if previous is not None:
            await previous.stop()
        if protection.mode == "off":
            return
        protector = Protector(self, workload, self._modules[workload], protection)
        await protector.start(handle)
        self._protectors[workload] = protector
        self._protect_scopes[workload] = scope = trio.CancelScope()

        async def loop() -> None:
            with scope:
                await protector.run()

        self._nursery.start_soon(loop)

    async def after_move(self, handle: Handle) -> None:
        """Tell the workload's protector where it went, and make sure the new owner feeds its standby."""
        protector = self._protectors.get(handle.workload)
        if protector is None:
            return
        protector.seen(handle._address, handle.epoch)
        if protector.protection.mode == "standby":
            try:
                await protector.follow(handle._address)
            except (NodeError, HostError, MigrateError) as exc:
                self.publish("standby_lost", handle.workload, protector.protection.to, str(exc))

    def standby_here(self, handle: Handle) -> bool:
        """True if the workload runs on its own hot-standby node: a move off it keeps its copy as the standby."""
        p = self._protectors.get(handle.workload)
        return p is not None and p.protection.mode == "standby" and self.address_of(p.protection.to) == handle._address

    def protection(self, workload: str) -> ProtectionStatus | None:
        """How this application protects ``workload`` now; None if it does not."""
        protector = self._protectors.get(workload)
        return protector.status() if protector is not None else None

    def protects(self, workload: str) -> bool:
        """True if this application logs the workload's operations for failover."""
        return workload in self._protectors

    def log_operation(self, workload: str, entry: dict[str, Any] | None) -> None:
        """Add an operation's log entry (``_oplog.log_entry``) to the workload's protector."""
        protector = self._protectors.get(workload)
        if protector is not None:
            protector.record(entry)

    async def recover(self, workload: str, epoch: int) -> tuple[str, str, int] | None:
        """Fail a protected workload over when no node owns it; None if unprotected.

        Raises FailoverFailed.
        """
        protector = self._protectors.get(workload)
        if protector is None:
            return None
        try:
            name, address, new_epoch, rebuilt = await protector.failover(epoch)
        except FailoverFailed as exc:
            self.publish("diverged" if exc.diverged else "failover_failed", workload, "", str(exc))
            raise
        if not rebuilt:
            return name, address, new_epoch
        how = "standby promoted" if protector.protection.mode == "standby" else "rebuilt from checkpoint and log"
        self.publish("failed_over", workload, name, f"{how} at epoch {new_epoch}")
        protector.wake()  # a fresh checkpoint (or standby) at once, so a second loss is survivable too
        return name, address, new_epoch

    async def attach(self, workload: str) -> Handle:
        """A new handle (a new caller) to an existing workload, found by id (its name), wherever it moved.

        Its lease is renewed while this cluster is open.  Raises
        WorkloadUnavailable if no known node owns it, Forbidden if it is another tenant's.
        """
        found = await self.locate(workload)
        if found is None:
            raise WorkloadUnavailable(f"no known node owns workload {workload!r}", ran=False)
        name, address, epoch = found
        handle = Handle(self, workload, node=name, address=address, epoch=epoch)
        self.keeper.hold(handle)  # its lease is renewed until this cluster closes
        return handle

    async def locate(self, workload: str) -> tuple[str, str, int] | None:
        """Ask every known node about ``workload``; return its owner (name, address, epoch) (``_discover.locate``)."""
        return await locate(self, workload)


def announces_shutdown(exc: BaseException | None) -> bool:
    """True if ``exc`` is a node saying it is shutting down (a goodbye, or a refused request)."""
    return isinstance(exc, NodeShuttingDown) or (
        isinstance(exc, RemoteNodeError) and exc.code == ErrorCode.SHUTTING_DOWN)


async def _close_quietly(client: NodeClient) -> None:
    with contextlib.suppress(Exception):
        await client.aclose()


@contextlib.asynccontextmanager
async def connect(*addresses: str, tls: Path | str | None = None, local: bool = True,
                  data_dir: Path | str | None = None, reconnect_timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S,
                  local_memory_bytes: int | None = None, discover: str | None = None,
                  log_level: str | None = None) -> AsyncIterator[Cluster]:
    """Open a cluster: start the local node and connect to ``addresses``, and to a node ``discover="mdns"``
    finds; the nodes they know are learned from the membership (``migrate._discover``).

    ``tls`` is a TLS directory (``migrate-node cert issue --role node``)
    used both to reach the nodes and for the local node's own listener;
    None means plain TCP, allowed on loopback only.  A call whose node
    cannot be reached waits up to ``reconnect_timeout_s`` for it to come
    back (a node restarted with SIGTERM keeps its workloads), then fails
    with WorkloadUnavailable.  ``local_memory_bytes`` caps each workload's
    memory on the local node (the node default otherwise); a workload that
    fails over or moves to "local" must fit it.  The local node logs JSON
    lines at ``log_level`` or $MIGRATE_LOG_LEVEL, else nothing of its own
    (``nodes.embedded_logging``).  Raises ConfigError, ConnectionFailed.
    """
    if discover is not None:
        addresses = (*addresses, await discover_node(discover, tls))
    with unwrap_group():  # the application's own exception reaches it as itself, not in a group
        async with trio.open_nursery() as nursery:
            cluster = Cluster(tls=tls, nursery=nursery, reconnect_timeout_s=reconnect_timeout_s)
            with contextlib.ExitStack() as stack:
                stack.enter_context(embedded_logging(LOCAL, log_level))
                if local:
                    directory = Path(data_dir) if data_dir else Path(
                        stack.enter_context(tempfile.TemporaryDirectory(prefix="wm-local-")))
                    config = NodeConfig(name=LOCAL, role="client", listen=Address("127.0.0.1", 0),
                                        data_dir=directory, tls_dir=Path(tls) if tls else None,
                                        insecure=tls is None, join=tuple(parse_address(a) for a in addresses),
                                        member=False)
                    if local_memory_bytes is not None:
                        config = dataclasses.replace(config, workload_memory_bytes=local_memory_bytes)
                    bound = await nursery.start(functools.partial(serve, config, plugins=PLUGINS))
                    cluster.learn(LOCAL, str(bound))
                for address in addresses:
                    await cluster.client(str(parse_address(address)))
                if local:
                    nursery.start_soon(follow_members, cluster, LOCAL)
                try:
                    yield cluster
                finally:
                    await cluster.aclose()
                    nursery.cancel_scope.cancel()
