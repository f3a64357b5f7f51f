"""Hibernation: an idle workload's state goes to disk, encrypted, and its Store is dropped until it is used.

``Hibernator.hibernate`` captures a workload between calls, writes the
snapshot to ``workloads/<id>/hibernated.snap`` (sealed with the node's data
key by the snapshot format, as the shutdown checkpoint is:
``nodes._at_rest``), and closes its wasmtime Store, which frees its memory.
The ``Workload`` stays in the host's table with a ``Sleep`` in place of its
Store: its id, app, settings and call count stay, and so does everything
other packages keep about it (the migration plugin's epoch and call ledger),
so a call that wakes it runs exactly once.  ``info`` says ``hibernated``.

Whatever uses the workload's Store enters ``InUse`` (``nodes._in_use``),
which wakes a sleeping workload first, under its lock: a call, a memory
access, a checkpoint and every step of a move.  The caller only sees a
slower first call.  Waking reads and authenticates the file, builds a new
Store and instance and restores the snapshot; if any of that fails
(a tampered or missing file, no memory room) the call gets a typed error
with ``started = False`` (``SnapshotFailed`` or ``ResourceLimitExceeded``),
and the workload stays hibernated with its file.

Quotas (``nodes._registry``): a hibernated workload counts towards the
workload counts and ``Limits.hibernated_bytes`` (its file's size), not the
memory caps; waking admits its memory cap again.  At shutdown the
checkpoint names the file instead of writing a snapshot
(``nodes._checkpoint_format``), so a restarted node adopts the workload
still hibernated (``adopt``), without reading the file.

``sweep`` is the node's background task: every ``tick_s`` it hibernates the
workloads idle for their ``idle_s`` (or the node's ``--idle-s``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio
import wasmtime

import snapshot

from ._files import atomic_file, scratch_path
from ._guest_time import GuestTime
from ._host_errors import ResourceLimitExceeded, SnapshotFailed
from ._limits import Limits
from ._modules import CachedModule
from ._registry import Registry
from ._replay import InputGate, ReplayMode
from ._wasi import OutputSink
from ._wasi_inputs import CallBudget
from ._workload import Workload, instantiate

if TYPE_CHECKING:
    from ._hosting import Host

__all__ = ["FILE", "Hibernator", "Sleep", "sweep"]

logger = logging.getLogger(__name__)

FILE = "hibernated.snap"
HEADER_BYTES = 16  # the snapshot format's header, with the file's random salt: binds the file to its record
# zstd level -1 rather than the format's default 1: hibernating is on a caller's path and the file is local.
# Measured on the 64 MiB dirtier (25 MiB of non-zero pages), encode + seal: 22.3 ms against 30.3 ms at
# level 1, for a file 0.6% larger (7.97 against 7.92 MiB); level -5 was no faster (21.4 ms) and 5% larger.
LEVEL = -1


@dataclass(eq=False)
class Sleep:
    """What stands for a hibernated workload's Store: its file and how to wake it."""

    hibernator: Hibernator
    path: Path
    header: bytes
    size_bytes: int
    monotonic_ns: int
    holds_memory: bool = True  # its memory cap counts (its Store exists, or it is waking)

    def wake(self, w: Workload) -> None:
        self.hibernator.wake(w)


class Hibernator:
    """Hibernates and wakes the workloads of one host; ``key`` is the data key files are sealed with."""

    def __init__(self, engine: wasmtime.Engine, limits: Limits, guest_time: GuestTime, registry: Registry) -> None:
        self._engine = engine
        self._limits = limits
        self._guest_time = guest_time
        self._registry = registry
        self.key: bytes | None = None

    def refusal(self, w: Workload) -> str | None:
        """Why ``w`` cannot hibernate now (the caller holds its lock); None if it can."""
        if w.removed:
            return "it was removed"
        if w.sleep is not None:
            return "it is hibernated already"
        if w.tracker is not None or not w.thawed.is_set() or w.copies:
            return "it is being moved"
        if w.budget.inputs.mode is not ReplayMode.OFF:
            return "its calls are recorded or replayed"
        return None

    def hibernate(self, w: Workload, idle_s: float | None = None) -> int:
        """Write ``w``'s state to its file and drop its Store; return the file's size.

        Waits for a running call to end; with ``idle_s``, only if ``w`` is
        still unused for that long then.  Raises ``SnapshotFailed`` (it
        cannot be captured, or hibernated now: the reason is in the
        message), ``ResourceLimitExceeded`` (``hibernated_bytes``) or
        OSError (the file); the workload is unchanged then.
        """
        with w.lock:
            why = self.refusal(w)
            if why is None and idle_s is not None and time.monotonic() - w.last_used < idle_s:
                why = "it was used meanwhile"
            if why is not None:
                raise SnapshotFailed(w.workload_id, f"cannot hibernate: {why}")
            snap = w.capture(in_place=True)  # encoded straight from the memory: nothing runs meanwhile
            path = w.directory / FILE
            try:
                with atomic_file(path) as file:
                    written = snapshot.write_encoded(snap, file, key=self.key, level=LEVEL)
                    sleep = Sleep(self, path, written.header, written.size_bytes, w.budget.inputs.monotonic_ns())
                    self._registry.admit_sleep(w, sleep)  # sets w.sleep; the file is kept only if admitted
            except BaseException:
                w.sleep = None
                raise
            del snap
            store = w.awake()[0]
            w.drop_tracker()
            w.funcs.clear()
            w.memory = None
            w.store = w.instance = None
            w.memory_bytes = 0
            sleep.holds_memory = False
        _free_in_thread(store)
        logger.info("hibernated workload", extra={**w.log_extra(), "bytes": sleep.size_bytes})
        return sleep.size_bytes

    def wake(self, w: Workload) -> None:
        """Bring ``w`` back from its file (the caller holds its lock).

        Raises ``SnapshotFailed`` or ``ResourceLimitExceeded``, both with
        ``started = False``: the workload stays hibernated, its file kept.
        """
        sleep = w.sleep
        assert sleep is not None  # InUse wakes only a hibernated workload
        try:
            self._registry.admit_wake(w)
        except ResourceLimitExceeded as exc:
            exc.started = False
            raise
        try:
            fresh = self._restore(w, sleep)
        except BaseException as exc:
            sleep.holds_memory = False
            if isinstance(exc, (OSError, snapshot.SnapshotError)):
                error = SnapshotFailed(w.workload_id, f"cannot wake it from {sleep.path}: {_reason(exc)}; "
                                                      "it stays hibernated")
                error.started = False
                logger.error("wake failed: %s", error, extra=w.log_extra())
                raise error from exc
            if isinstance(exc, (SnapshotFailed, ResourceLimitExceeded)):
                exc.started = False
            raise
        w.store, w.instance, w.budget, w.interrupt = fresh.store, fresh.instance, fresh.budget, fresh.interrupt
        w.stdout, w.stderr, w.memory_fixed = fresh.stdout, fresh.stderr, fresh.memory_fixed
        w.funcs.clear()
        w.memory = None
        w.refresh_memory_bytes()
        w.sleep = None
        _delete_in_thread(sleep.path)
        logger.info("woke workload", extra=w.log_extra())

    def _restore(self, w: Workload, sleep: Sleep) -> Workload:
        with sleep.path.open("rb") as file:  # read a MiB at a time as it is decoded
            if file.read(HEADER_BYTES) != sleep.header:
                raise snapshot.AuthenticationError("the file is not the one this workload hibernated into "
                                                   "(replaced or swapped)")
            file.seek(0)
            fresh = instantiate(self._engine, w.module, self._limits, self._guest_time, workload_id=w.workload_id,
                                app=w.app, memory_limit_bytes=w.memory_limit_bytes, args=w.args, env=w.env,
                                preopen={g: Path(h) for g, h in w.preopen.items()}, directory=w.directory)
            try:
                fresh.load_encoded(file, self.key, sleep.monotonic_ns)
            except BaseException:
                fresh.awake()[0].close()
                raise
        return fresh

    def adopt(self, module: CachedModule, directory: Path, *, workload_id: str, app: str, args: Sequence[str],
              env: dict[str, str], preopen: Mapping[str, str], memory_limit_bytes: int, calls: int,
              monotonic_ns: int, header: bytes, idle_s: float | None) -> Workload:
        """A hibernated workload saved at shutdown, still hibernated; its file is not read.

        A missing or damaged file is found when it wakes, and only that
        workload's wake fails (``SnapshotFailed``).
        """
        path = directory / FILE
        directory.mkdir(parents=True, exist_ok=True)
        try:
            size = os.path.getsize(path)
        except OSError:
            size = 0
        w = _blank(module, self._limits, self._guest_time, workload_id=workload_id, app=app, args=args, env=env,
                  preopen=preopen, memory_limit_bytes=memory_limit_bytes, directory=directory)
        w.calls, w.idle_s = calls, idle_s
        w.sleep = Sleep(self, path, header, size, monotonic_ns, holds_memory=False)
        return w


def _delete_in_thread(path: Path) -> None:
    """Delete a woken workload's file without making the waking call wait: 2.0-2.3 ms for 8 MiB here.

    The file is renamed first (at once, and a later hibernation may write
    ``path`` again meanwhile), to a name the sweep of a starting node
    deletes if this process dies before the thread does (``_files``).
    """
    doomed = scratch_path(path)
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    threading.Thread(target=doomed.unlink, kwargs={"missing_ok": True}, name="hibernation-file-delete").start()


def _free_in_thread(store: wasmtime.Store) -> None:
    """Close ``store`` in a thread of its own, so that the caller's reply does not wait for it.

    Nothing else holds the Store any more.  Closing it unmaps the
    workload's memory: 3.5 ms for 64 MiB with 25 MiB touched, which the
    hibernate request no longer waits for.  wasmtime's Store is not tied
    to the thread that made it, and the close runs in C without the GIL.
    """
    threading.Thread(target=store.close, name="wasm-store-free").start()


def _blank(module: CachedModule, limits: Limits, guest_time: GuestTime, *, workload_id: str, app: str,
          args: Sequence[str], env: dict[str, str], preopen: Mapping[str, str], memory_limit_bytes: int,
          directory: Path) -> Workload:
    """A workload with no Store or instance yet: one adopted hibernated (``nodes._hibernate``)."""
    return Workload(workload_id=workload_id, module=module, app=app, memory_limit_bytes=memory_limit_bytes,
                    args=tuple(args), env=dict(env), preopen=dict(preopen), directory=directory,
                    stdout=OutputSink(directory / "stdout", limits.output_bytes),
                    stderr=OutputSink(directory / "stderr", limits.output_bytes), store=None,
                    budget=CallBudget(InputGate(workload_id)), instance=None, guest_time=guest_time)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def idle(workloads: list[Workload], default_idle_s: float | None, now: float) -> list[tuple[Workload, float]]:
    """The awake workloads idle for at least their ``idle_s`` (else ``default_idle_s``; 0 or None: never)."""
    found = []
    for w in workloads:
        limit = w.idle_s if w.idle_s is not None else default_idle_s
        if limit and w.sleep is None and not w.busy and now - w.last_used >= limit:
            found.append((w, limit))
    return found


async def sweep(host: Host, default_idle_s: float | None, *, tick_s: float = 1.0,
                run: Callable[..., Awaitable[object]] = trio.to_thread.run_sync) -> None:
    """Hibernate idle workloads every ``tick_s``, one at a time in a worker thread, until cancelled."""
    while True:
        await trio.sleep(tick_s)
        for w, limit in idle(host.registry.all(), default_idle_s, time.monotonic()):
            try:
                await run(host.hibernator.hibernate, w, limit)
            except Exception as exc:  # refused now (moving, recorded, over quota): tried again when idle again
                w.last_used = time.monotonic()
                logger.info("not hibernated: %s", exc, extra=w.log_extra())
