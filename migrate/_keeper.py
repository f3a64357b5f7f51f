"""The application's side of workload lifecycles: the lease keeper, names and posted events.

A ``Cluster`` keeps one ``Keeper``.  Every workload it spawned with a
lifecycle, or attached, is *held*: a task renews its lease with an
``MTouch`` to its owner every third of its lease (at most every
``MAX_RENEW_S``), following it when it moved.  When the cluster closes,
each held workload is told goodbye: a workload that is not ``detached``
is removed by its owner once its grace period passes without another
application attaching it; a detached one lives on until its ``ttl``
passes unseen (or forever without one).

``post`` delivers an event: a call of the workload's export through a
handle the keeper keeps per workload, so a post is exactly once (the
owner's call ledger) and follows moves like any call.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from nodes import ConnectionFailed, NodeError, RemoteNodeError

from ._codes import MigrationCode
from ._errors import WorkloadUnavailable
from ._life_node import MTouch, MTouched
from ._lifecycle import spec
from ._replies import expect

if TYPE_CHECKING:
    from ._cluster import Cluster
    from ._handle import Handle

logger = logging.getLogger(__name__)

#: The longest between two renewals of a held workload's lease.
MAX_RENEW_S = 5.0
#: The shortest: a lease shorter than three times this is renewed this often.
MIN_RENEW_S = 0.05
#: A workload that is not detached is removed once its application is gone this long (``spawn(grace_s=)``).
DEFAULT_GRACE_S = 30.0
#: How long closing the cluster waits for each goodbye.
GOODBYE_S = 1.0


def lifecycle_spec(*, name: str | None, detached: bool | None, ttl: float | None,
                   every: dict[str, float] | None, grace_s: float) -> dict[str, Any] | None:
    """What MSpawn asks for: None (unmanaged) unless a name, ``detached`` or a schedule was given.

    Raises ValueError (``_lifecycle.LifecycleError``) for bounds, and for
    a ``ttl`` without ``detached=True``.
    """
    if name is None and detached is None and not every:
        return None
    if ttl is not None and not detached:
        raise ValueError("ttl is the lease of a detached workload: pass detached=True too")
    return spec(detached=bool(detached), lease_s=ttl if detached else grace_s, every=every)


class Keeper:
    """The workloads one application holds, their lease renewals, and the handles it posts through."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._held: dict[str, Handle] = {}
        self._posters: dict[str, Handle] = {}
        self._period = MAX_RENEW_S
        self._changed = trio.Event()
        self._running = False

    def hold(self, handle: Handle, lease_s: float | None = None) -> None:
        """Renew ``handle``'s workload's lease from now on (a first renewal at once), until the cluster closes."""
        if handle.workload not in self._held:
            self._held[handle.workload] = handle
            self._changed.set()
        self._shorten(lease_s)
        if not self._running:
            self._running = True
            self._cluster._nursery.start_soon(self._run)

    def holds(self, workload: str) -> bool:
        """True while this application renews ``workload``'s lease."""
        return workload in self._held

    def _shorten(self, lease_s: float | None) -> None:
        if lease_s is not None and lease_s / 3 < self._period:
            self._period = max(MIN_RENEW_S, lease_s / 3)
            self._changed.set()

    async def _run(self) -> None:
        while True:
            with trio.move_on_after(self._period):
                await self._changed.wait()
            self._changed = trio.Event()
            for handle in list(self._held.values()):
                await self.touch(handle)

    async def touch(self, handle: Handle, *, goodbye: bool = False, timeout_s: float = 2.0) -> MTouched | None:
        """Renew (or end, ``goodbye``) the lease of ``handle``'s workload at its owner, finding it if it moved.

        None if it could not be reached (it is tried again next time), or
        its owner said it no longer has it and no node does (it was removed:
        it is no longer held).  The owner is looked for once, without
        waiting: a node that is down (restarting) is asked again next time.
        """
        for attempt in range(2):
            try:
                reply = expect(MTouched, await self._cluster.ask(handle._address, MTouch, workload=handle.workload,
                                                                 goodbye=goodbye, timeout_s=timeout_s))
                self._shorten(reply.lease_s)
                return reply
            except RemoteNodeError as exc:
                if exc.code != MigrationCode.NOT_OWNER or attempt:
                    logger.warning("lease renewal of %s failed: %s", handle.workload, exc)
                    return None
                denied = True
            except (ConnectionFailed, NodeError, trio.TooSlowError) as exc:
                logger.info("lease renewal of %s: owner unreachable: %s", handle.workload, exc)
                if attempt:
                    return None
                denied = False
            try:
                await handle._relocate(trio.current_time())
            except (WorkloadUnavailable, NodeError) as exc:  # NodeError: Forbidden (the id is another tenant's now)
                if denied and not goodbye:
                    logger.info("%s is no longer held: %s", handle.workload, exc)
                    self._held.pop(handle.workload, None)
                return None
        return None

    async def goodbye(self) -> None:
        """The application leaves: tell each held workload's owner, so its grace period starts now."""
        held, self._held = list(self._held.values()), {}
        for handle in held:
            with trio.move_on_after(GOODBYE_S):
                await self.touch(handle, goodbye=True, timeout_s=GOODBYE_S)

    async def post(self, name: str, export: str, *args: int | float | bytes | str) -> Any:
        """Deliver an event to workload ``name``: call ``export`` with ``args``, exactly once."""
        handle = self._posters.get(name)
        if handle is None:
            handle = self._posters[name] = await self._cluster.attach(name)
        return await handle.call(export, *args)
