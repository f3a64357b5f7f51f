"""One hosted workload: its record, what runs on it, its guest's time budget.

A ``Workload`` (built by ``instantiate``) owns a wasmtime Store, its
instance, its WASI output files and its ``CallBudget`` (with the
``InputGate`` of ``nodes._replay``), and runs what touches them: first boot,
a call, memory reads and writes, captures and restores.  A Store is used
by one thread at a time: everything touching it holds the workload's lock,
through ``InUse`` (``nodes._in_use``).  Guest code (a call, first boot, and the accessor
functions a capture, restore or hash may run) runs under ``GuestTime``: the
engine's epoch deadline, and the same budget for sleeps in WASI functions;
``GuestTime.error`` translates what a guest raised into a ``WorkloadError``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import wasmtime

import snapshot

from . import _switching
from ._call_args import CallResults
from ._engine import memory_never_moves
from ._fed_workload import memory_fits
from ._guest_time import CallInterrupt, CancelToken, GuestTime
from ._host_errors import (
    BadArguments,
    CallCancelled,
    DeadlineExceeded,
    SnapshotFailed,
    UnknownWorkload,
    WorkloadError,
    WorkloadExited,
    WorkloadTimeout,
    WorkloadTrap,
)
from ._limits import Limits
from ._modules import CachedModule
from ._replay import CallInputs, InputGate, ReplayDivergence
from ._wasi import OutputSink, wasi_config
from ._wasi_inputs import CallBudget

if TYPE_CHECKING:
    from ._hibernate import Sleep

logger = logging.getLogger(__name__)

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")


def check_name(what: str, value: object) -> None:
    """Check a workload id (it becomes a file name).  Raises ``BadArguments``."""
    if not isinstance(value, str) or not _ID.match(value):
        raise BadArguments(f"{what} must match {_ID.pattern!r}, got {value!r}")


def check_app(value: object) -> None:
    """Check an app name: ``TENANT`` or ``TENANT/NAME``, each part like a workload id.  Raises ``BadArguments``."""
    if not isinstance(value, str) or not all(_ID.match(part) for part in value.split("/", 1)):
        raise BadArguments(f"app must be NAME or TENANT/NAME, each matching {_ID.pattern!r}, got {value!r}")


@dataclass(frozen=True)
class WorkloadInfo:
    """What a host knows about one workload.

    ``memory_bytes`` is the linear memory size as of the end of the last
    call (read under the workload's lock, never during a call).
    """

    workload_id: str
    module_sha256: str
    app: str
    state: str  # "ready", "busy" (a call, checkpoint or restore is running) or "hibernated" (nodes._hibernate)
    memory_bytes: int
    memory_limit_bytes: int
    calls: int
    traps: int
    timeouts: int


def _set_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


@dataclass(eq=False)
class Workload:
    """One workload.  Everything touching ``store`` holds ``lock``.

    While hibernated (``sleep``, ``nodes._hibernate``) it has no Store or
    instance (None); ``InUse`` wakes it.
    """

    workload_id: str
    module: CachedModule
    app: str
    memory_limit_bytes: int
    args: tuple[str, ...]
    env: dict[str, str]
    preopen: dict[str, str]
    directory: Path
    stdout: OutputSink
    stderr: OutputSink
    store: wasmtime.Store | None  # None while hibernated
    budget: CallBudget
    instance: wasmtime.Instance | None  # None while hibernated
    guest_time: GuestTime
    lock: threading.Lock = field(default_factory=threading.Lock)
    funcs: dict[str, wasmtime.Func] = field(default_factory=dict)
    memory: wasmtime.Memory | None = None
    calls: int = 0
    traps: int = 0
    timeouts: int = 0
    memory_bytes: int = 0
    busy: bool = False
    removed: bool = False
    tracker: snapshot.StateTracker | None = None
    thawed: threading.Event = field(default_factory=lambda: _set_event())  # cleared while paused
    interrupt: CallInterrupt | None = None  # ends a call at its deadline or when cancelled
    memory_fixed: bool = False  # it never moves (the host's own engine): ``copying_outside``
    copies: int = 0  # copies running without ``lock``; its own lock: one ending waits for no call
    copies_done: threading.Condition = field(default_factory=threading.Condition)
    sleep: Sleep | None = None  # while hibernated
    idle_s: float | None = None  # hibernated once unused this long (None: the node's default)
    last_used: float = field(default_factory=time.monotonic)  # when InUse last let it go

    def info(self) -> WorkloadInfo:
        return WorkloadInfo(
            workload_id=self.workload_id, module_sha256=self.module.sha256, app=self.app,
            state="hibernated" if self.sleep is not None else "busy" if self.busy else "ready", memory_bytes=self.memory_bytes,
            memory_limit_bytes=self.memory_limit_bytes, calls=self.calls, traps=self.traps,
            timeouts=self.timeouts)

    def log_extra(self) -> dict[str, str]:
        return {"workload": self.workload_id, "app": self.app, "module_sha256": self.module.sha256}

    def awake(self) -> tuple[wasmtime.Store, wasmtime.Instance]:
        """Its Store and instance; ``InUse`` wakes a hibernated workload before any use."""
        if self.store is None or self.instance is None:
            raise RuntimeError(f"workload {self.workload_id} is hibernated")
        return self.store, self.instance

    def memory0(self) -> wasmtime.Memory | None:
        if self.memory is None and self.module.memory0_export is not None:
            store, instance = self.awake()
            memory = instance.exports(store)[self.module.memory0_export]
            assert isinstance(memory, wasmtime.Memory)  # memory0_export names memory index 0
            self.memory = memory
        return self.memory

    def refresh_memory_bytes(self) -> None:
        memory = self.memory0()
        self.memory_bytes = memory.data_len(self.awake()[0]) if memory is not None else 0

    def settings_entry(self) -> dict[str, Any]:
        """What ``Host.restore`` needs to bring it back (a checkpoint manifest entry), but its clock."""
        entry = {"id": self.workload_id, "module_sha256": self.module.sha256, "app": self.app, "calls": self.calls,
                 "args": list(self.args), "env": dict(self.env), "preopen": dict(self.preopen),
                 "memory_limit_bytes": self.memory_limit_bytes}
        if self.idle_s is not None:
            entry["idle_s"] = self.idle_s
        return entry

    def output(self) -> tuple[bytes, bytes]:
        """What the workload wrote to stdout and stderr; raises UnknownWorkload once ``remove`` deleted them."""
        try:
            return self.stdout.path.read_bytes(), self.stderr.path.read_bytes()
        except FileNotFoundError:
            raise UnknownWorkload(f"no workload {self.workload_id!r} on this host") from None

    def release(self) -> None:
        """Drop the Store, freeing its memory now (the caller holds ``lock``; copies outside it end first)."""
        self.removed = True
        self.thawed.set()  # wake calls waiting out a pause: they find the workload gone
        with self.copies_done:
            self.copies_done.wait_for(lambda: self.copies == 0)
        self.drop_tracker()
        self.funcs.clear()
        self.memory = None
        if self.store is not None:  # None while hibernated
            self.store.close()

    def copying_outside(self) -> contextlib.AbstractContextManager[None]:
        """Keep the memory from being freed until the returned context ends (the caller holds ``lock``).

        For a copy that runs after the lock is let go, calls going on
        meanwhile: ``release`` waits for it.  Only if ``memory_fixed``.
        """
        with self.copies_done:
            self.copies += 1
        return self._copy_ends()

    @contextmanager
    def _copy_ends(self) -> Iterator[None]:
        try:
            yield
        finally:
            with self.copies_done:
                self.copies -= 1
                self.copies_done.notify_all()

    def track(self, tracker: snapshot.StateTracker) -> None:
        """Keep ``tracker`` (after ``drop_tracker``): the workload is being moved off until it is dropped."""
        self.tracker = tracker
        _switching.moving()

    def drop_tracker(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None
            _switching.moved()

    def running(self, token: CancelToken | None = None) -> contextlib.AbstractContextManager[None]:
        """Give guest code of this workload about to run on this thread its time budget (and ``token``)."""
        return self.guest_time.running(self.awake()[0], self.budget, self.interrupt, token)

    def guest_error(self, exc: Exception) -> WorkloadError:
        return self.guest_time.error(self.workload_id, exc, self.budget, self.interrupt)

    @contextmanager
    def touching_state(self, doing: str) -> Iterator[None]:
        """Run code that reads or writes the state (it may run accessor functions in the guest).

        Raises ``SnapshotFailed`` saying "cannot <doing>" for a snapshot
        error, a trap or a wasmtime error.
        """
        try:
            with self.running():
                yield
        except (snapshot.SnapshotError, wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise SnapshotFailed(self.workload_id, f"cannot {doing}: {exc}") from exc

    def capture(self, in_place: bool = False) -> snapshot.Snapshot:
        with self.touching_state("capture"):
            return snapshot.capture(*self.awake(), in_place=in_place)

    def restore_state(self, snap: snapshot.Snapshot) -> None:
        with self.touching_state("restore"):
            snapshot.restore(snap, *self.awake())

    def first_boot(self) -> None:
        """Run the module's start function and a reactor's ``_initialize``.  Raises a ``WorkloadError``."""
        try:
            with self.running():
                snapshot.first_boot(*self.awake())
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise self.guest_error(exc) from exc

    def load(self, snap: snapshot.Snapshot, monotonic_ns: int | None) -> None:
        """Load a snapshot (or a delta against the state held) into the workload.

        ``monotonic_ns`` is the guest's monotonic clock when the snapshot
        was taken; the guest's clock goes on from there.  Raises
        ``ResourceLimitExceeded`` (the snapshot's memory is over the cap) or
        ``SnapshotFailed``.
        """
        memory_fits(self.memory_limit_bytes)(snap)
        if monotonic_ns is not None:
            self.budget.inputs.continue_from(monotonic_ns)
        self.restore_state(snap)

    def load_encoded(self, source: bytes | BinaryIO, key: bytes | None, monotonic_ns: int | None) -> None:
        """``load(Snapshot.from_bytes(data, key=key), monotonic_ns)`` for a fresh workload, decoded straight into it
        from the bytes or a binary file (``snapshot.restore_encoded``).

        A bad file raises what ``from_bytes`` raises (a ``RemoteSnapshotError``),
        anything else what ``load`` raises.  After an error the workload may
        hold part of the snapshot (``snapshot.restore_encoded``): discard it.
        """
        if monotonic_ns is not None:
            self.budget.inputs.continue_from(monotonic_ns)
        bad_file: snapshot.RemoteSnapshotError | None = None
        with self.touching_state("restore"):
            try:
                snapshot.restore_encoded(source, *self.awake(), key=key, accept=memory_fits(self.memory_limit_bytes))
            except snapshot.RemoteSnapshotError as exc:
                bad_file = exc
        if bad_file is not None:
            raise bad_file

    def run(self, export: str, params: list[int | float], inputs: CallInputs | None,
            token: CancelToken | None = None) -> CallResults:
        """Run one call of ``export`` (the caller holds ``lock``), counting it and its trap or timeout.

        Raises a ``WorkloadError`` (``CallCancelled`` if ``token`` was
        cancelled before or while it ran) or ``ReplayDivergence`` (``Host.call``).
        """
        if token is not None and token.cancelled:
            raise CallCancelled(self.workload_id, started=False)
        store, instance = self.awake()
        func = self.funcs.get(export)
        if func is None:
            found = instance.exports(store)[export]
            assert isinstance(found, wasmtime.Func)  # Host.call checked that it names a function
            func = self.funcs[export] = found
        gate = self.budget.inputs
        gate.begin_call(self.calls, export, params, inputs)
        try:
            with self.running(token):
                result = func(store, *params)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            error = gate.end_call() or self.guest_error(exc)
            if isinstance(error, WorkloadTimeout):
                self.timeouts += 1
            elif not isinstance(error, ReplayDivergence):
                self.traps += 1
            logger.info("call failed: %s", error, extra={**self.log_extra(), "export": export})
            raise error from exc
        finally:
            self.calls += 1
            self.refresh_memory_bytes()
        divergence = gate.end_call()
        if divergence is not None:
            logger.info("replay diverged: %s", divergence, extra={**self.log_extra(), "export": export})
            raise divergence
        return tuple(result) if isinstance(result, list) else result

    def read(self, offset: int, length: int) -> bytes:
        """Copy ``length`` bytes out of memory 0 (the caller holds ``lock``).  Raises ``BadArguments``."""
        address = self.span(offset, length)
        buf = bytearray(length)
        if length:
            ctypes.memmove((ctypes.c_char * length).from_buffer(buf), address, length)
        return bytes(buf)

    def write(self, offset: int, data: bytes) -> None:
        """Copy ``data`` into memory 0 at ``offset`` (the caller holds ``lock``).  Raises ``BadArguments``."""
        address = self.span(offset, len(data))
        if data:
            ctypes.memmove(address, data, len(data))

    def span(self, offset: int, length: int) -> int:
        """Return the address of ``[offset, offset+length)`` in memory 0.

        Raises ``BadArguments``.
        """
        memory = self.memory0()
        if memory is None:
            raise BadArguments(f"workload {self.workload_id} has no memory")
        for name, value in (("offset", offset), ("length", length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BadArguments(f"{name} must be a non-negative int, got {value!r}")
        store = self.awake()[0]
        size = memory.data_len(store)
        if offset + length > size:
            raise BadArguments(f"[{offset}, {offset + length}) is outside memory of {size} bytes")
        return ctypes.addressof(memory.data_ptr(store).contents) + offset


def instantiate(engine: wasmtime.Engine, module: CachedModule, limits: Limits, guest_time: GuestTime, *,
                workload_id: str, app: str, memory_limit_bytes: int, args: Sequence[str], env: dict[str, str],
                preopen: Mapping[str, Path] | None, directory: Path) -> Workload:
    """Build a workload: its Store (capped by ``memory_limit_bytes`` and ``limits``), WASI sandbox and instance.

    Output goes to ``directory``.  Instantiating runs no guest code but the
    module's own start code, under the time budget.  Raises
    ``BadArguments`` (``nodes._wasi.wasi_config``) or a ``WorkloadError``.
    """
    stdout = OutputSink(directory / "stdout", limits.output_bytes)
    stderr = OutputSink(directory / "stderr", limits.output_bytes)
    store = wasmtime.Store(engine)
    store.set_limits(memory_size=memory_limit_bytes, table_elements=limits.table_elements)
    store.set_wasi(wasi_config(argv=[workload_id, *args], env=env, preopen=preopen,
                               stdout=stdout, stderr=stderr))
    budget = CallBudget(InputGate(workload_id))
    interrupt = CallInterrupt(store)
    try:
        with guest_time.running(store, budget, interrupt):
            instance = module.pre.instantiate(store)
    except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
        raise guest_time.error(workload_id, exc, budget, interrupt) from exc
    return Workload(workload_id=workload_id, module=module, app=app, memory_limit_bytes=memory_limit_bytes,
                    args=tuple(args), env=env, preopen={g: os.fspath(h) for g, h in (preopen or {}).items()},
                    directory=directory, stdout=stdout, stderr=stderr, store=store,
                    budget=budget, instance=instance, guest_time=guest_time, interrupt=interrupt,
                    memory_fixed=memory_never_moves(engine))
