"""``Held``: one workload of a host, held for the operations only a migration needs.

``Host.hold(workload_id)`` returns one.  It pauses and resumes the
workload's calls, tracks the pages it writes and captures deltas, applies
received rounds, records or replays its nondeterministic inputs, sets its
call count and guest clock, digests its state, and renames it.  Everything
else (deploy, call, checkpoint...) is on ``Host``.  A ``Held`` is bound to
the workload it was made for, under whatever id it has: once that workload
is removed, its methods raise ``UnknownWorkload`` (``HostClosed`` if the host
closed), except ``resume`` and ``stop_tracking``, which have nothing left to
undo and return.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, overload

import snapshot

from ._host_errors import BadArguments, SnapshotFailed, UnknownWorkload
from ._in_use import Copying, InUse
from ._registry import Registry
from ._replay import CallInputs, ReplayMode, ReplayUnsupported, state_hash
from ._workload import Workload, check_name

__all__ = ["Held"]

T = TypeVar("T")

logger = logging.getLogger(__name__)


class _Pending(Protocol):
    """A capture begun under the workload's lock (``StateTracker``): ``finish`` copies its pages, ``views`` does not."""

    def finish(self) -> snapshot.Snapshot: ...

    def views(self) -> snapshot.Snapshot: ...


def _nothing() -> None:
    pass


class Held:
    """One workload, for migration: pause, track, apply, replay, clock, rename."""

    def __init__(self, w: Workload, registry: Registry, workloads_dir: Path) -> None:
        self._w = w
        self._registry = registry
        self._workloads_dir = workloads_dir

    @property
    def workload_id(self) -> str:
        """The workload's id now (``rename`` changes it)."""
        return self._w.workload_id

    def _using(self) -> InUse:
        return InUse(self._registry.check_open, self._w)

    def _check_there(self) -> Workload:
        """Raises ``UnknownWorkload`` (``HostClosed``) once the workload is removed."""
        w = self._w
        if w.removed:
            self._registry.check_open()
            raise UnknownWorkload(f"no workload {w.workload_id!r} on this host")
        return w

    # --- pausing ----------------------------------------------------------

    def pause(self) -> None:
        """Hold every call and memory access to the workload until ``resume``.

        Captures still work.  A migration pauses the workload for its final
        round, so nothing runs between the last capture and the commit.
        Raises ``UnknownWorkload``.
        """
        with self._using() as w:
            w.thawed.clear()

    def resume(self) -> None:
        """Let held calls run again (a removed workload has none)."""
        self._w.thawed.set()

    # --- dirty tracking and rounds ----------------------------------------

    def start_tracking(self, *, backend: str = "auto") -> snapshot.Snapshot:
        """Copy the workload's state and start tracking the pages it writes.

        Only reading the memory extents, then globals and tables, hold the
        workload; arming the tracker (write-protecting the memory: 4 to 9 ms
        per 256 MiB, 18 to 26 ms per GiB) and the memory copy run while
        calls go on, if the memory never moves.  Whatever calls write
        before a page is armed the copy, begun after arming, reads; what
        they write after is dirty, so the next ``capture_delta`` sends it
        again.  The result is a base for deltas, not a consistent snapshot
        on its own.  Raises ``UnknownWorkload`` or ``SnapshotFailed``.
        """
        snap, done = self._start_tracking(backend, live=False)
        done()
        return snap

    def start_tracking_live(self, *, backend: str = "auto") -> tuple[snapshot.Snapshot, Callable[[], None]]:
        """``start_tracking`` without the copy, where calls may go on during it: the runs view the live memory.

        Returns the snapshot and ``done``, to call once nothing reads its
        runs any more (more calls do nothing): until then the memory is not
        freed (removing the workload waits), and a page the views read torn
        is dirty, so the next delta sends it again.  Encode it with
        ``SnapshotEncoder(copy_pages=True)``.  Where calls could not go on
        during a copy (a memory that moves, a tracker that compares), the
        snapshot is a copy and ``done`` does nothing.  So a 1 GiB first
        round needs no 1 GiB of new memory on the source.
        """
        return self._start_tracking(backend, live=True)

    def _start_tracking(self, backend: str, *, live: bool) -> tuple[snapshot.Snapshot, Callable[[], None]]:
        with self._using() as w:
            w.drop_tracker()
            with w.touching_state("start tracking"):
                arming = snapshot.StateTracker.arming(*w.awake(), backend=backend)
                if not w.memory_fixed:  # it may move when it grows: arm and copy holding it
                    w.track(arming.arm())
            if not w.memory_fixed:
                return self._begin_capture(w), _nothing
            keeping = w.copying_outside()  # the memory is not freed while it is armed
        with keeping:
            try:
                tracker = arming.arm()
            except snapshot.SnapshotError as exc:
                raise SnapshotFailed(w.workload_id, f"cannot start tracking: {exc}") from exc
        try:
            with self._using() as w:
                w.drop_tracker()  # another start_tracking's, armed meanwhile
                w.track(tracker)
                if not self._copies_while_running(w):
                    return self._begin_capture(w), _nothing
                pending = self._begin_capture(w, finish=False, forget_writes=False)  # armed just now
                copying = Copying(w)
        except BaseException:
            tracker.close()  # closing it twice (once as the workload's) is harmless
            raise
        try:
            snap = pending.views() if live else pending.finish()
        except BaseException:
            copying.done()
            raise
        if not live:
            copying.done()
        return snap, copying.done

    @overload
    @staticmethod
    def _begin_capture(w: Workload) -> snapshot.Snapshot: ...

    @overload
    @staticmethod
    def _begin_capture(w: Workload, finish: Literal[False], forget_writes: bool = True) -> _Pending: ...

    @staticmethod
    def _begin_capture(w: Workload, finish: bool = True, forget_writes: bool = True) -> snapshot.Snapshot | _Pending:
        """Start the tracker's first epoch and read globals, tables and extents (the caller holds ``lock``).

        ``forget_writes=False``: see ``StateTracker.begin_capture``.
        """
        tracker = w.tracker
        assert tracker is not None  # the caller has just tracked it
        try:
            with w.touching_state("start tracking"):
                pending = tracker.begin_capture(w.awake()[0], forget_writes=forget_writes)
                return pending.finish() if finish else pending
        except SnapshotFailed:
            w.drop_tracker()
            raise

    def capture_delta(self, *, consistent: bool = True) -> snapshot.Snapshot:
        """Return the pages, globals and tables changed since the previous capture.

        ``consistent=False`` (a pre-copy round, or any capture while the
        workload is paused) copies the pages after letting calls go on
        where the dirty tracking allows it: a page a call writes meanwhile
        may be copied torn, but it is dirty again, so the next delta carries
        it; a chain ending with a delta taken while paused restores exactly.
        ``consistent=True`` holds calls until the copy is done (a replay
        starts from the delta).  Raises ``UnknownWorkload`` or
        ``SnapshotFailed`` (also when tracking was not started).
        """
        with self._using() as w:
            if w.tracker is None:
                raise SnapshotFailed(w.workload_id, "dirty tracking was not started")
            with w.touching_state("capture a delta"):
                pending = w.tracker.begin_delta(w.awake()[0])
                if consistent or not self._copies_while_running(w):
                    return pending.finish()
            copying = w.copying_outside()
        with copying:
            return pending.finish()

    def read_paused(self, read: Callable[[snapshot.Snapshot], T], *, delta: bool = False) -> T:
        """``read(snap)`` on the paused workload's state (or, ``delta``, what changed since the last capture).

        ``snap``'s runs are views of the memory, valid only inside ``read``,
        which runs holding the lock while the workload is paused: no call,
        removal or growth reaches the memory.  For a final round encoded
        while calls wait: copying it out first cost a 256 MiB stop-copy
        round 187-216 ms (2-CPU machine, a slow day).  Raises
        ``UnknownWorkload``, ``SnapshotFailed`` (not paused; for a delta,
        not tracking) and what ``read`` raises.
        """
        with self._using() as w:
            self._check_paused(w)
            if delta and w.tracker is None:
                raise SnapshotFailed(w.workload_id, "dirty tracking was not started")
            with w.touching_state("capture"):
                if delta:
                    assert w.tracker is not None  # checked above
                    return read(w.tracker.begin_delta(w.awake()[0]).views())
                return read(snapshot.capture(*w.awake(), in_place=True))

    def view_paused(self) -> tuple[snapshot.Snapshot, Callable[[], None]] | None:
        """``read_paused``'s whole state for a round encoded over many trips, and the ``done`` that lets it go.

        Until ``done`` (any thread; more calls do nothing) removing the
        workload waits; resume it only after.  None where the memory may
        move (``read_paused`` then).  Raises ``UnknownWorkload`` or
        ``SnapshotFailed`` (not paused).
        """
        with self._using() as w:
            self._check_paused(w)
            if not w.memory_fixed:
                return None
            snap = w.capture(in_place=True)
            copying = Copying(w)
        return snap, copying.done

    @staticmethod
    def _check_paused(w: Workload) -> None:
        if w.thawed.is_set():
            raise SnapshotFailed(w.workload_id, "its pages are read in place only while it is paused")

    def dirty_now(self) -> int | None:
        """How many pages a delta taken now would carry; None if tracking cannot tell (or was not started)."""
        with self._using() as w:
            return None if w.tracker is None else w.tracker.dirty_now(w.awake()[0])

    @staticmethod
    def _copies_while_running(w: Workload) -> bool:
        # The pages are read at the addresses read under the lock: the memory
        # must not move (a caller's engine may move it when it grows), and the
        # tracker must report every page written during the copy (uffd).
        return w.memory_fixed and w.tracker is not None and w.tracker.copies_while_running

    def stop_tracking(self) -> None:
        """Stop tracking dirty pages (a migration ended); a removed workload's tracking went with it."""
        w = self._w
        with w.lock:
            w.drop_tracker()

    def apply(self, snap: snapshot.Snapshot, *, monotonic_ns: int | None = None) -> None:
        """Load a delta (or a full snapshot) into the workload.

        Used while a migration streams rounds in.  The delta must have been
        taken against the state the workload holds.  ``monotonic_ns`` is as
        for ``Host.restore``: give the source's ``clock_state`` with the
        final round.  Raises ``UnknownWorkload``, ``ResourceLimitExceeded``
        or ``SnapshotFailed``.
        """
        with self._using() as w:
            w.load(snap, monotonic_ns)
            w.refresh_memory_bytes()

    # --- deterministic replay ---------------------------------------------

    def set_replay_mode(self, mode: str) -> None:
        """Set how the workload's nondeterministic inputs are handled: "off", "record" or "replay".

        ``record``: each call's inputs are kept for ``last_inputs``.
        ``replay``: every call must pass the ``inputs`` recorded for it, and
        the guest's output is dropped (its leader already wrote it).
        Setting a mode forgets the last record and any divergence.  Waits
        for a running call.  Raises ``UnknownWorkload``, ``BadArguments``
        (an unknown mode) or ``ReplayUnsupported`` (record or replay of a
        workload with preopened directories: files are inputs and outputs
        that are not recorded).
        """
        w = self._w
        if mode != ReplayMode.OFF and w.preopen:
            raise ReplayUnsupported(f"workload {w.workload_id} has preopened directories; "
                                    "file contents are not recorded, so it cannot be replayed")
        with self._using():
            w.budget.inputs.set_mode(mode)
            w.stdout.muted = w.stderr.muted = w.budget.inputs.mode is ReplayMode.REPLAY

    def last_inputs(self) -> CallInputs:
        """Return the inputs recorded by the workload's last call (record mode).

        Pair them with the call by ``CallInputs.call_index``: another caller
        may have run a call in between.  Raises ``UnknownWorkload`` or
        ``BadArguments`` (no call recorded since record mode was set).
        """
        with self._using() as w:
            inputs = w.budget.inputs.last
        if inputs is None:
            raise BadArguments(f"workload {w.workload_id} has recorded no call "
                               f"({w.budget.inputs.mode.value} mode)")
        return inputs

    def set_call_count(self, calls: int) -> None:
        """Set the workload's call counter, e.g. to the leader's before replaying its calls.

        A replayed call must run at the index it had at the leader (its
        ``CallInputs.call_index``); ``Host.restore(calls=...)`` sets the same
        counter at creation.  Raises ``UnknownWorkload`` or ``BadArguments``.
        """
        if not isinstance(calls, int) or isinstance(calls, bool) or calls < 0:
            raise BadArguments(f"calls must be a non-negative int, got {calls!r}")
        with self._using() as w:
            w.calls = calls

    # --- digests ----------------------------------------------------------

    def state_hash(self) -> str:
        """Return a hex digest of the workload's state (memories, globals, tables).

        Equal states give equal digests on any host.  Works while paused,
        like a capture.  Raises ``UnknownWorkload`` or ``SnapshotFailed``.
        """
        with self._using() as w, w.touching_state("hash state"):
            return state_hash(*w.awake())

    def pages_digest(self, pages: Mapping[int, Sequence[int]]) -> str:
        """Digest the given 4 KiB pages of each memory, with memory sizes and globals.

        ``snapshot.pages_digest``: replicas compare what was written since
        they last agreed.  Raises ``UnknownWorkload`` or ``SnapshotFailed``.
        """
        with self._using() as w, w.touching_state("digest pages"):
            return snapshot.pages_digest(*w.awake(), {i: list(p) for i, p in pages.items()})

    # --- the guest clock and settings -------------------------------------

    def clock_state(self) -> int:
        """Return the guest's monotonic clock now, in ns, to carry to a restore.

        Read it with the snapshot (after the final capture, while paused)
        and pass it as ``monotonic_ns`` to ``Host.restore`` or ``apply``.
        Raises ``UnknownWorkload``.
        """
        with self._using() as w:
            return w.budget.inputs.monotonic_ns()

    def continue_clock(self, monotonic_ns: int) -> None:
        """Make the guest's monotonic clock carry on from ``monotonic_ns`` (after a move).

        Raises ``UnknownWorkload``.
        """
        with self._using() as w:
            w.budget.inputs.continue_from(monotonic_ns)

    def launch_settings(self) -> dict[str, Any]:
        """The settings a copy of the workload must start with elsewhere: args, env, memory cap.

        (Preopened directories are local to this host and do not travel.)
        Raises ``UnknownWorkload``.
        """
        w = self._check_there()
        return {"args": tuple(w.args), "env": dict(w.env), "memory_limit_bytes": w.memory_limit_bytes}

    # --- renaming ---------------------------------------------------------

    def rename(self, new_id: str) -> None:
        """Give the workload another id, its output files moving along; its state is untouched.

        The guest's argv[0] stays the id it started with.  Waits for a
        running call to end (at most the call time budget).  Raises
        ``UnknownWorkload``, ``WorkloadExists`` or ``BadArguments`` (a bad id).
        """
        check_name("workload_id", new_id)
        w, old_id = self._w, self._w.workload_id
        self._registry.take_for_rename(w, new_id)
        try:
            with w.lock:
                directory = self._workloads_dir / new_id
                shutil.rmtree(directory, ignore_errors=True)  # a leftover of a workload removed uncleanly
                os.replace(w.directory, directory)
                w.directory, w.workload_id, w.budget.inputs.workload_id = directory, new_id, new_id
                w.stdout.path, w.stderr.path = directory / "stdout", directory / "stderr"
                if w.sleep is not None:  # hibernated: its file moved along (nodes._hibernate)
                    w.sleep.path = directory / w.sleep.path.name
        except BaseException:
            self._registry.put_back(w, old_id, new_id)
            raise
        self._registry.publish(new_id, w, "being renamed")
        logger.info("renamed workload", extra={**w.log_extra(), "from": old_id})
