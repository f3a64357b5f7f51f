"""Stateless pools on a host: pristine instances of one module, one per slot, reset after every call.

``InstancePool`` initialises the module once (first boot, then its
``init`` export), captures that state and keeps ``max_instances`` slots.
A slot holds at most one instance (a ``Workload`` of its own, with its
Store, WASI sandbox, memory cap and time budget); it is started on the
slot's first call from the captured state (``snapshot.Resettable``:
only the pages, globals and tables initialisation changed are written),
and reset after each call to exactly that state, writing back only the
pages the call dirtied.  So no call sees what another call left: memory,
globals and tables are reset, whatever the module does.  An instance
that cannot be reset in place (its memory or a table grew, a segment
was dropped, the tracker failed) is dropped; the slot's next call starts
a fresh one.  ``trim`` drops the instances idle longer than ``idle_s``:
a pool nobody calls holds no instance, only the captured state.

Each instance, while it exists (the two made to initialise the pool too),
counts against the host's limits as a workload of the pool's ``app``
does: the workload counts and the memory caps of the node and of the
tenant (``nodes._registry``).  A call that would pass one is refused with
``ResourceLimitExceeded`` before anything runs; idle instances trimmed
give their room back.

The caller runs one call per slot at a time (the node keys its fair
executor by slot); different slots run in parallel.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import snapshot

from ._call_args import CallResults, convert_args
from ._guest_time import CancelToken
from ._host_errors import InvalidModule, SnapshotFailed, UnknownExport, WorkloadError
from ._workload import Workload, instantiate

if TYPE_CHECKING:
    from ._hosting import Host

logger = logging.getLogger(__name__)

#: The most instances one pool may hold on a node.
MAX_INSTANCES = 64


@dataclass(frozen=True)
class PoolStats:
    """A pool's counters on one node.

    ``left_state`` counts the calls after which a reset found memory, a
    global or a table different from the captured state (scratch data a
    call leaves in memory counts); ``discarded`` the instances dropped
    because they could not be reset in place.
    """

    instances: int
    calls: int
    started: int
    discarded: int
    left_state: int
    pages_reset: int
    memory_bytes: int  # of the captured state


class InstancePool:
    """Pristine instances of one cached module on ``host``, initialised once by ``init`` (None: first boot only).

    Raises ``UnknownModule``, ``UnknownExport`` (``init`` is not a
    callable export), a ``WorkloadError`` (initialisation trapped or ran
    out of time), ``InvalidModule`` (its state cannot be reset: tables of
    non-function references) or ``BadArguments``.
    """

    def __init__(self, host: Host, module_sha256: str, *, name: str, app: str, init: str | None,
                 max_instances: int, idle_s: float) -> None:
        self.module = module = host._modules.get(module_sha256)
        self.name = name
        self.app = app
        self.max_instances = max_instances
        self.idle_s = idle_s
        self._host = host
        self._directory = host._data_dir / "pools" / uuid.uuid4().hex[:12]
        self._cap = host.registry.memory_cap(None)
        module.check_fits(self._cap, host.limits.table_elements)
        self._lock = threading.Lock()
        self._slots: list[tuple[Workload, snapshot.Resettable] | None] = [None] * max_instances
        self._last_used = [0.0] * max_instances
        self._calls = self._started = self._discarded = self._left_state = self._pages = 0
        if init is not None and init not in module.signatures:
            raise UnknownExport(f"module {module_sha256[:16]}… has no callable export {init!r} to initialise with")
        fresh = self._instantiate("fresh")
        try:
            booted = self._instantiate("init")
        except BaseException:
            self._release(fresh, "fresh")
            shutil.rmtree(self._directory, ignore_errors=True)
            raise
        try:
            booted.first_boot()
            if init is not None:
                with booted.lock:
                    booted.run(init, convert_args(init, module.signatures[init], ()), None)
            captured = booted.capture()
            try:
                self.pristine = snapshot.Pristine(captured, fresh.capture(),
                                                  module=host._modules.wasm_bytes(module_sha256))
            except snapshot.SnapshotError as exc:
                raise InvalidModule(f"module {module_sha256[:16]}… cannot be pooled: {exc}") from exc
        except BaseException:
            shutil.rmtree(self._directory, ignore_errors=True)
            raise
        finally:
            self._release(fresh, "fresh")
            self._release(booted, "init")

    def _claim(self, label: str) -> str:
        """The registry id an instance's claim is kept under: no workload id has a ':'."""
        return f"pool:{self._directory.name}:{label}"

    def _instantiate(self, label: str) -> Workload:
        """A new instance, claimed under the host's and tenant's limits.  Raises ``ResourceLimitExceeded``."""
        directory = self._directory / label
        directory.mkdir(parents=True, exist_ok=True)
        host = self._host
        host.registry.reserve(self._claim(label), self.app, self._cap)
        try:
            return instantiate(host.engine, self.module, host.limits, host._guest_time,
                               workload_id=f"{self.name}.{label}", app=self.app, memory_limit_bytes=self._cap,
                               args=(), env={}, preopen=None, directory=directory)
        except BaseException:
            host.registry.unclaim(self._claim(label))
            raise

    def _release(self, w: Workload, label: str) -> None:
        w.release()
        self._host.registry.unclaim(self._claim(label))

    def check_call(self, export: object, args: Sequence[int | float]) -> list[int | float]:
        """The call's parameters, converted.  Raises ``UnknownExport`` or ``BadArguments``."""
        if not isinstance(export, str) or (signature := self.module.signatures.get(export)) is None:
            raise UnknownExport(f"pool {self.name} has no callable export {export!r}")
        return convert_args(export, signature, args)

    def call(self, slot: int, export: str, params: list[int | float],
             cancel: CancelToken | None = None) -> CallResults:
        """Run one call on the instance in ``slot`` (starting one if it has none), then reset it.

        The caller runs one call per slot at a time.  Raises what a call
        raises (``WorkloadTrap``, ``DeadlineExceeded`` ...): the instance
        is reset after a trap too.
        """
        held = self._slots[slot]
        if held is None:
            held = self._start(slot)
        w, resettable = held
        if export not in w.funcs:  # fetched alone: wrapping every export of a large module costs ms
            w.funcs[export] = resettable.exports[export]
        try:
            with w.lock:
                return w.run(export, params, None, cancel)
        finally:
            self._reset(slot, w, resettable)

    def _start(self, slot: int) -> tuple[Workload, snapshot.Resettable]:
        w = self._instantiate(f"slot{slot}")
        try:
            with w.touching_state("start from the pool's state"):
                resettable = snapshot.Resettable(self.pristine, *w.awake())
        except BaseException:
            self._release(w, f"slot{slot}")
            raise
        with self._lock:
            self._slots[slot] = (w, resettable)
            self._started += 1
        return w, resettable

    def _reset(self, slot: int, w: Workload, resettable: snapshot.Resettable) -> None:
        try:
            report = resettable.reset()
        except (snapshot.SnapshotError, SnapshotFailed) as exc:
            logger.info("dropping a pool instance: %s", exc, extra={"pool": self.name})
            self._drop(slot, discarded=True)
            with self._lock:
                self._calls += 1
                self._left_state += 1
            return
        with self._lock:
            self._calls += 1
            self._left_state += report.changed
            self._pages += report.pages
            self._last_used[slot] = time.monotonic()

    def _drop(self, slot: int, *, discarded: bool = False) -> None:
        with self._lock:
            held, self._slots[slot] = self._slots[slot], None
            self._discarded += discarded
        if held is not None:
            w, resettable = held
            resettable.close()
            with w.lock:
                self._release(w, f"slot{slot}")

    def idle_slots(self, now: float) -> list[int]:
        """The slots whose instance has been idle longer than ``idle_s`` (at ``now``, time.monotonic)."""
        with self._lock:
            return [s for s, held in enumerate(self._slots)
                    if held is not None and now - self._last_used[s] > self.idle_s]

    def trim(self, slots: Sequence[int]) -> None:
        """Drop the instances of ``slots`` (the caller runs no call on them meanwhile)."""
        for slot in slots:
            self._drop(slot)

    def has_instance(self, slot: int) -> bool:
        return self._slots[slot] is not None

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(instances=sum(h is not None for h in self._slots), calls=self._calls,
                             started=self._started, discarded=self._discarded, left_state=self._left_state,
                             pages_reset=self._pages, memory_bytes=self.pristine.memory_bytes)

    def close(self) -> None:
        """Drop every instance, the captured state and the output files."""
        for slot in range(self.max_instances):
            self._drop(slot)
        self.pristine.close()
        shutil.rmtree(self._directory, ignore_errors=True)


__all__ = ["MAX_INSTANCES", "InstancePool", "PoolStats", "WorkloadError"]
