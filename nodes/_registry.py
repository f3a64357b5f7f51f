"""The workload table of a host: workloads by id, the ids being claimed, and the limits on both.

An id is claimed (``reserve``) before its workload is built, and stays
claimed while it is being removed or renamed, so no two workloads ever share
an id or its directory.  ``reserve`` also admits the workload under
``Limits``: the host's workload count and the sum of its workloads' memory
caps (``workloads_memory_bytes``), and each tenant's workload count and
memory budget (``tenant_of``: all the apps of one tenant together).  A cap
is counted from the moment its id is claimed, so a workload being built
counts too; a hibernated one (``nodes._hibernate``) counts its file against
``hibernated_bytes`` instead of its memory cap (``admit_sleep``,
``admit_wake``).  ``admit`` runs the same checks without claiming anything: a
move announces itself before its bytes come, and is refused there.
``owner`` says which app a workload (or a claimed id) belongs to, and
``serving`` makes lookups on one thread find only the workloads of the apps
a request's sender may use.  Closing
the table (``close``) hands back the workloads to release; from then on
every lookup raises ``HostClosed``.  Thread-safe: one lock guards it all.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._host_errors import BadArguments, HostClosed, ResourceLimitExceeded, UnknownWorkload, WorkloadExists
from ._limits import Limits, tenant_of
from ._workload import Workload

if TYPE_CHECKING:
    from ._hibernate import Sleep


def _memory_claim(w: Workload) -> int:
    """A workload's memory cap counts unless it is hibernated (``nodes._hibernate``)."""
    return w.memory_limit_bytes if w.sleep is None or w.sleep.holds_memory else 0


@dataclass(frozen=True)
class _Reservation:
    app: str
    memory_limit_bytes: int


class Registry:
    """The workloads of one host by id, with the ids claimed for workloads being created, removed or renamed."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._lock = threading.Lock()  # guards _workloads, _pending, _closed
        self._workloads: dict[str, Workload] = {}
        self._pending: dict[str, _Reservation] = {}  # being created, removed or renamed
        self._closed = False
        self._serving = threading.local()  # per thread: ``may_use`` of the request it runs, if any

    def check_open(self) -> None:
        """Raises ``HostClosed`` once the table is closed."""
        with self._lock:
            self._raise_if_closed()

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise HostClosed("host is closed")

    def get(self, workload_id: str) -> Workload:
        """Raises ``UnknownWorkload`` or ``HostClosed``."""
        with self._lock:
            self._raise_if_closed()
            w = self._workloads.get(workload_id) if isinstance(workload_id, str) else None
            if w is None or not self._may_use(w):
                raise UnknownWorkload(f"no workload {workload_id!r} on this host")
        return w

    @contextlib.contextmanager
    def serving(self, may_use: Callable[[str], bool]) -> Iterator[None]:
        """Within it, on this thread, a workload whose app ``may_use`` refuses is not found.

        The daemon runs a client's request about a workload in it, so the
        tenant check also holds when the workload is looked up, under the
        table's lock: a workload another tenant created under that id after
        the request was authorized (while it waited for a worker thread) is
        ``UnknownWorkload``, as it was when the request came.
        """
        self._serving.may_use = may_use
        try:
            yield
        finally:
            self._serving.may_use = None

    def _may_use(self, w: Workload) -> bool:
        may_use = getattr(self._serving, "may_use", None)
        return may_use is None or may_use(w.app)

    def all(self) -> list[Workload]:
        with self._lock:
            return list(self._workloads.values())

    def close(self) -> list[Workload] | None:
        """Close the table and return the workloads it held; None if it was closed already."""
        with self._lock:
            if self._closed:
                return None
            self._closed = True
            workloads = list(self._workloads.values())
            self._workloads.clear()
        return workloads

    # --- claiming ids ---------------------------------------------------------

    def memory_cap(self, memory_limit_bytes: int | None) -> int:
        """The memory cap of a new workload: ``Limits.memory_bytes`` or lower.

        Raises ``BadArguments`` or ``ResourceLimitExceeded``.
        """
        if memory_limit_bytes is None:
            return self._limits.memory_bytes
        if not isinstance(memory_limit_bytes, int) or memory_limit_bytes <= 0:
            raise BadArguments(f"memory_limit_bytes must be a positive int, got {memory_limit_bytes!r}")
        if memory_limit_bytes > self._limits.memory_bytes:
            raise ResourceLimitExceeded("memory_bytes", memory_limit_bytes, self._limits.memory_bytes)
        return memory_limit_bytes

    def reserve(self, workload_id: str, app: str, cap: int) -> None:
        """Claim a workload slot under the host and tenant limits.

        Raises ``WorkloadExists``, ``ResourceLimitExceeded`` or ``HostClosed``.
        """
        with self._lock:
            self._raise_if_closed()
            self._check_free(workload_id)
            self._check_limits(app, cap, leaving=())
            self._pending[workload_id] = _Reservation(app, cap)

    def admit(self, app: str, memory_limit_bytes: int | None, *, leaving: Iterable[str] = ()) -> int:
        """Check that a workload of ``app`` would fit under every limit; claim nothing; return its cap.

        ``leaving`` names workloads that go before it comes (a copy it
        replaces): their claims are not counted.  Raises
        ``BadArguments``, ``ResourceLimitExceeded`` or ``HostClosed``.
        """
        cap = self.memory_cap(memory_limit_bytes)
        with self._lock:
            self._raise_if_closed()
            self._check_limits(app, cap, leaving=frozenset(leaving))
        return cap

    def owner(self, workload_id: str) -> str | None:
        """The app a workload, or an id claimed for one, belongs to; None if there is none."""
        with self._lock:
            w = self._workloads.get(workload_id)
            if w is not None:
                return w.app
            claim = self._pending.get(workload_id)
            return claim.app if claim is not None else None

    def _check_limits(self, app: str, cap: int, leaving: Collection[str]) -> None:
        """Raise ``ResourceLimitExceeded`` naming the first limit one more workload would pass; under the lock."""
        limits = self._limits
        claims = [(w.app, _memory_claim(w)) for i, w in self._workloads.items() if i not in leaving]
        claims += [(r.app, r.memory_limit_bytes) for i, r in self._pending.items() if i not in leaving]
        if len(claims) + 1 > limits.max_workloads:
            raise ResourceLimitExceeded("max_workloads", len(claims) + 1, limits.max_workloads)
        total = sum(c for _, c in claims) + cap
        if limits.workloads_memory_bytes is not None and total > limits.workloads_memory_bytes:
            raise ResourceLimitExceeded("workloads_memory_bytes", total, limits.workloads_memory_bytes,
                                        "the memory caps of all workloads on this node")
        tenant = tenant_of(app)
        tenant_caps = [c for a, c in claims if tenant_of(a) == tenant]
        if len(tenant_caps) + 1 > limits.max_workloads_per_app:
            raise ResourceLimitExceeded("max_workloads_per_app", len(tenant_caps) + 1,
                                        limits.max_workloads_per_app, f"application {tenant!r}")
        if limits.app_memory_bytes is not None and sum(tenant_caps) + cap > limits.app_memory_bytes:
            raise ResourceLimitExceeded("app_memory_bytes", sum(tenant_caps) + cap,
                                        limits.app_memory_bytes, f"application {tenant!r}")

    # --- hibernation (nodes._hibernate) ---------------------------------------

    def admit_sleep(self, w: Workload, sleep: Sleep) -> None:
        """Count ``sleep``'s file against ``Limits.hibernated_bytes`` and make it ``w``'s.

        Raises ``ResourceLimitExceeded`` (``w`` unchanged) or ``HostClosed``.
        """
        with self._lock:
            self._raise_if_closed()
            cap = self._limits.hibernated_bytes
            used = sum(o.sleep.size_bytes for o in self._workloads.values() if o.sleep is not None)
            if cap is not None and used + sleep.size_bytes > cap:
                raise ResourceLimitExceeded("hibernated_bytes", used + sleep.size_bytes, cap,
                                            "the hibernation files on this node")
            w.sleep = sleep

    def admit_wake(self, w: Workload) -> None:
        """Count hibernated ``w``'s memory cap again, if every limit allows it.

        Raises ``ResourceLimitExceeded`` or ``HostClosed``.
        """
        with self._lock:
            self._raise_if_closed()
            self._check_limits(w.app, w.memory_limit_bytes, leaving=(w.workload_id,))
            assert w.sleep is not None  # the caller wakes a hibernated workload
            w.sleep.holds_memory = True

    def adopt(self, workload_id: str, w: Workload) -> None:
        """Put hibernated ``w`` (saved at shutdown) in the table, counting its workload but not its memory.

        Only the host's workload count is checked, in constant time: a start
        adopts thousands, each admitted when it was made (a tenant over a
        since lowered ``max_workloads_per_app`` keeps them).
        Raises ``WorkloadExists``, ``ResourceLimitExceeded`` or ``HostClosed``.
        """
        with self._lock:
            self._raise_if_closed()
            self._check_free(workload_id)
            count = len(self._workloads) + len(self._pending) + 1
            if count > self._limits.max_workloads:
                raise ResourceLimitExceeded("max_workloads", count, self._limits.max_workloads)
            self._workloads[workload_id] = w

    def _check_free(self, workload_id: str) -> None:
        if workload_id in self._workloads or workload_id in self._pending:
            raise WorkloadExists(f"workload {workload_id!r} already exists on this host")

    def publish(self, workload_id: str, w: Workload, doing: str) -> None:
        """Make ``w`` callable as ``workload_id``, releasing its claim.

        Raises HostClosed (and frees ``w``) if the host closed meanwhile.
        """
        with self._lock:
            del self._pending[workload_id]
            if self._closed:
                w.release()
                raise HostClosed(f"host closed while the workload was {doing}")
            self._workloads[workload_id] = w

    def unclaim(self, workload_id: str) -> None:
        """Give up a claim (the workload was not built, or its files are gone)."""
        with self._lock:
            self._pending.pop(workload_id, None)

    def take(self, workload_id: str) -> Workload:
        """Take a workload out of the table, its id staying claimed until ``unclaim``.

        Raises ``UnknownWorkload`` or ``HostClosed``.
        """
        with self._lock:
            self._raise_if_closed()
            w = self._workloads.get(workload_id)
            if w is None or not self._may_use(w):
                raise UnknownWorkload(f"no workload {workload_id!r} on this host")
            del self._workloads[workload_id]
            self._pending[workload_id] = _Reservation(w.app, 0)  # keeps the id until its files are gone
        return w

    def take_for_rename(self, w: Workload, new_id: str) -> None:
        """Take ``w`` out of the table and claim ``new_id`` for it; ``publish`` it under ``new_id`` after.

        Raises ``HostClosed``, ``WorkloadExists`` or ``UnknownWorkload`` (``w`` is gone).
        """
        with self._lock:
            self._raise_if_closed()
            self._check_free(new_id)
            if self._workloads.get(w.workload_id) is not w:
                raise UnknownWorkload(f"no workload {w.workload_id!r} on this host")
            del self._workloads[w.workload_id]
            self._pending[new_id] = _Reservation(w.app, 0)  # keeps the new id while the files move

    def put_back(self, w: Workload, workload_id: str, claimed_id: str) -> None:
        """Undo ``take_for_rename``: ``w`` is back as ``workload_id``, ``claimed_id`` free."""
        with self._lock:
            del self._pending[claimed_id]
            self._workloads[workload_id] = w
