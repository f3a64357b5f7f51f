"""Deterministic replay: record a workload's nondeterministic inputs per call, serve them elsewhere.

A workload that neither opens files nor times out is a deterministic
function of its state, the call (export and arguments) and what the host
answers to a few WASI requests.  Every such answer passes through the
workload's ``InputGate`` (the WASI functions in ``nodes._wasi`` ask it):

* ``clock_time_get`` and ``clock_res_get`` (realtime and monotonic clocks);
* ``random_get``;
* ``poll_oneoff``: which subscriptions fired (how a sleep or timeout ended).

Everything else a sandboxed guest can ask is fixed by its configuration or
deterministic: args and env, an empty stdin (``fd_read`` on fd 0 gets end of
file), the CPU-time clocks (EBADF, as in wasmtime), ``sched_yield``, output
writes (the guest always sees every byte written).

The gate has three modes:

* ``off``: answers come from the host (the clocks, ``os.urandom``, sleeping);
* ``record``: the same, and each answer is appended to the current call's
  record, which ends as a ``CallInputs``;
* ``replay``: answers come from a given ``CallInputs``; a request that is not
  the next one recorded (another function, clock or length), or one past the
  end of the record, or a record not used up when the call ends, is a
  ``ReplayDivergence``.

The gate also owns the guest's monotonic clock: the host's
``time.monotonic_ns()`` plus a per-workload offset, never going backwards.
Restoring a workload elsewhere, or replaying recorded readings, moves its
floor forward (``continue_from``), so the guest's clock resumes where the
previous host (or the record) left it instead of restarting near 0.

``state_hash`` digests a workload's full state, to compare a leader with a
follower after replayed calls.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import math
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import wasmtime

from snapshot import PAGE_BYTES, layout, nonzero_runs, read_dropped, read_globals, read_tables

from ._host_errors import BadArguments, RequestError, WorkloadError

__all__ = [
    "CallInputs",
    "InputGate",
    "ReplayDivergence",
    "ReplayMode",
    "ReplayUnsupported",
    "state_hash",
]

CLOCK_REALTIME, CLOCK_MONOTONIC = 0, 1


class ReplayMode(enum.StrEnum):
    """What a workload's ``InputGate`` does with nondeterministic inputs."""

    OFF = "off"
    RECORD = "record"
    REPLAY = "replay"


class Request(enum.IntEnum):
    """The WASI requests whose answers are recorded; the values are the wire codes.

    Entries hold the plain ints (``_CLOCK_TIME`` ...), which msgpack and
    ``nodes._wire.check_plain`` take as they are.
    """

    CLOCK_TIME_GET = 0  # arg: clock id; answer: ns
    CLOCK_RES_GET = 1  # arg: clock id; answer: ns
    RANDOM_GET = 2  # arg: length; answer: the bytes
    POLL_ONEOFF = 3  # arg: crc32 of the subscriptions; answer: the event records written


_CLOCK_TIME, _CLOCK_RES, _RANDOM, _POLL = (int(r) for r in Request)
_U64 = 1 << 64


class ReplayDivergence(WorkloadError):
    """A replayed call asked for other inputs than the recorded call received.

    ``call_index`` is the workload's call counter at the diverging call,
    ``position`` the index of the first input that did not match (-1 when
    the call itself did not match the record: another export, arguments or
    call index).  The workload's state is then not the leader's: discard it.
    """

    def __init__(self, workload_id: str, message: str, *, call_index: int, position: int) -> None:
        self.call_index = call_index
        self.position = position
        super().__init__(workload_id, f"replay diverged at call {call_index}: {message}")


class ReplayUnsupported(RequestError):
    """The workload cannot be recorded or replayed: it has preopened directories.

    Files are inputs the gate does not record, and a follower's writes would
    land twice.
    """


Entry = tuple[int, int, "int | bytes"]  # (Request, arg, answer)


@dataclass(frozen=True)
class CallInputs:
    """The nondeterministic inputs one call received, in order.

    ``call_index`` is the workload's call counter when the call began (its
    ``WorkloadInfo.calls``), ``export`` and ``args`` the call as run (integer
    arguments signed).  ``entries`` are ``(Request, arg, answer)`` triples.
    ``to_wire`` gives plain msgpack data.
    """

    call_index: int
    export: str
    args: tuple[int | float, ...]
    entries: tuple[Entry, ...] = ()

    def to_wire(self) -> list[Any]:
        """Return the inputs as plain msgpack data: ``[call_index, export, args, entries]``."""
        return [self.call_index, self.export, list(self.args), [list(e) for e in self.entries]]

    @classmethod
    def from_wire(cls, data: Any) -> CallInputs:
        """Rebuild inputs from ``to_wire`` data (lists or tuples).

        Raises ``BadArguments`` for anything malformed.
        """
        try:
            call_index, export, args, entries = data
            if not (_is_int(call_index) and call_index >= 0 and isinstance(export, str)):
                raise ValueError("bad call index or export")
            if not all((_is_int(a) or isinstance(a, float)) for a in args):
                raise ValueError("arguments must be numbers")
            checked = []
            for kind, arg, answer in entries:
                kind = Request(kind)
                if kind in (Request.RANDOM_GET, Request.POLL_ONEOFF):
                    ok = isinstance(answer, bytes)
                else:
                    ok = _is_int(answer) and 0 <= answer < _U64
                if not (ok and _is_int(arg)):
                    raise ValueError(f"malformed {kind.name.lower()} entry")
                checked.append((int(kind), arg, answer))
        except (TypeError, ValueError) as exc:
            raise BadArguments(f"malformed call inputs: {exc}") from None
        return cls(call_index, export, tuple(args), tuple(checked))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _same_args(a: Sequence[int | float], b: Sequence[int | float]) -> bool:
    # NaN arguments are the same argument when their bits are.
    return len(a) == len(b) and all(
        x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)
                   and struct.pack("<d", x) == struct.pack("<d", y))
        for x, y in zip(a, b))


def _resolution_ns(clock_id: int) -> int:
    which = time.CLOCK_REALTIME if clock_id == CLOCK_REALTIME else time.CLOCK_MONOTONIC
    return max(1, round(time.clock_getres(which) * 1e9))


def _describe(kind: int, arg: int) -> str:
    name = Request(kind).name.lower()
    if kind in (_CLOCK_TIME, _CLOCK_RES):
        return f"{name}(clock {arg})"
    if kind == _RANDOM:
        return f"{name}({arg} bytes)"
    return f"{name}(subscriptions crc {arg:#010x})"


class InputGate:
    """Where one workload's nondeterministic inputs come from: the host or a record.

    Not thread-safe: the workload's lock serialises everything, calls and
    mode changes alike.  ``monotonic`` is the host clock (a parameter for tests).
    """

    def __init__(self, workload_id: str = "", *, monotonic: Callable[[], int] = time.monotonic_ns) -> None:
        self.workload_id = workload_id
        self.mode = ReplayMode.OFF
        self._monotonic = monotonic
        # A new workload's clock starts near 0, as wasmtime's own does.
        self._offset_ns = -monotonic()
        self._floor_ns = 0  # the latest monotonic reading the guest has seen
        self._call: tuple[int, str, tuple[int | float, ...]] | None = None
        self._entries: list[Entry] = []
        self._replaying: tuple[Entry, ...] = ()
        self._position = 0
        self.last: CallInputs | None = None  # the last recorded call
        self.divergence: ReplayDivergence | None = None  # sticky until the mode is set again

    # --- mode and calls -----------------------------------------------------

    def set_mode(self, mode: str) -> None:
        """Switch to ``off``, ``record`` or ``replay``; forgets the last record and any divergence.

        Raises ``BadArguments`` for another mode.
        """
        try:
            self.mode = ReplayMode(mode)
        except ValueError:
            raise BadArguments(f"replay mode must be one of {[m.value for m in ReplayMode]}, got {mode!r}") from None
        self.last = None
        self.divergence = None

    def begin_call(self, call_index: int, export: str, args: Sequence[int | float],
                   inputs: CallInputs | None) -> None:
        """Prepare for a call into the guest.

        In replay mode ``inputs`` must be the record of this very call.
        Raises ``BadArguments`` (inputs missing, or given outside replay
        mode) or ``ReplayDivergence`` (the record is of another call, which
        leaves the state intact, or the workload diverged before), before
        any guest code runs.
        """
        if self.mode is not ReplayMode.REPLAY:
            if inputs is not None:
                raise BadArguments(f"workload {self.workload_id} is not replaying ({self.mode.value} mode); "
                                   "set replay mode before passing inputs")
            if self.mode is ReplayMode.RECORD:
                self._call = (call_index, export, tuple(args))
                self._entries = []
            return
        if not isinstance(inputs, CallInputs):
            raise BadArguments(f"workload {self.workload_id} replays: every call needs its CallInputs")
        if self.divergence is not None:
            raise ReplayDivergence(self.workload_id, f"the workload diverged before, at call "
                                   f"{self.divergence.call_index}", call_index=call_index, position=-1)
        expected = (inputs.call_index, inputs.export)
        if expected != (call_index, export) or not _same_args(inputs.args, args):
            raise ReplayDivergence(
                self.workload_id, f"the record is of call {inputs.call_index} {inputs.export}{tuple(inputs.args)}, "
                f"not of {export}{tuple(args)}", call_index=call_index, position=-1)
        self._call = (call_index, export, tuple(args))
        self._replaying = inputs.entries
        self._position = 0

    def end_call(self) -> ReplayDivergence | None:
        """Finish the call: keep its record, or check that replay used the whole record.

        Returns the divergence found during the call, if any.
        """
        call, self._call = self._call, None
        if call is None:
            return None
        if self.mode is ReplayMode.RECORD:
            self.last = CallInputs(call[0], call[1], call[2], tuple(self._entries))
            self._entries = []
        elif self.mode is ReplayMode.REPLAY:
            if self.divergence is None and self._position < len(self._replaying):
                kind, arg, _ = self._replaying[self._position]
                self.divergence = ReplayDivergence(
                    self.workload_id, f"the call ended before input {self._position}, {_describe(kind, arg)}, "
                    f"of {len(self._replaying)}", call_index=call[0], position=self._position)
            self._replaying = ()
            return self.divergence
        return None

    # --- the guest's inputs -------------------------------------------------

    def clock_time_ns(self, clock_id: int) -> int:
        """Answer ``clock_time_get`` for the realtime or monotonic clock.

        Raises ``ReplayDivergence`` in replay mode for an unexpected request
        (so do the other answers).
        """
        if clock_id == CLOCK_REALTIME:
            return self._answer(_CLOCK_TIME, clock_id, time.time_ns)
        value = self._answer(_CLOCK_TIME, clock_id, self.monotonic_ns)
        self._floor_ns = max(self._floor_ns, value)  # a replayed reading moves the clock on too
        return value

    def clock_res_ns(self, clock_id: int) -> int:
        """Answer ``clock_res_get`` for the realtime or monotonic clock."""
        return self._answer(_CLOCK_RES, clock_id, lambda: _resolution_ns(clock_id))

    def random_bytes(self, length: int) -> bytes:
        """Answer ``random_get``."""
        return self._answer(_RANDOM, length, lambda: os.urandom(length))

    def poll_events(self, subscriptions_crc: int, poll: Callable[[], bytes]) -> bytes:
        """Answer ``poll_oneoff``: the event records, from ``poll()`` (which may sleep) or the record."""
        return self._answer(_POLL, subscriptions_crc, poll)

    def _answer(self, kind: int, arg: int, live: Callable[[], Any]) -> Any:
        if self.mode is ReplayMode.REPLAY:
            return self._serve(kind, arg)
        value = live()
        if self.mode is ReplayMode.RECORD:
            self._entries.append((kind, arg, value))
        return value

    def _serve(self, kind: int, arg: int) -> Any:
        call_index = self._call[0] if self._call is not None else -1
        if self.divergence is not None:
            raise self.divergence
        if self._position >= len(self._replaying):
            why = f"{_describe(kind, arg)} is past the end of the record ({len(self._replaying)} inputs)"
        else:
            want_kind, want_arg, answer = self._replaying[self._position]
            if (want_kind, want_arg) == (kind, arg):
                self._position += 1
                return answer
            why = f"input {self._position} is {_describe(kind, arg)}, the record has {_describe(want_kind, want_arg)}"
        self.divergence = ReplayDivergence(self.workload_id, why, call_index=call_index, position=self._position)
        raise self.divergence

    # --- the monotonic clock ----------------------------------------------

    def monotonic_ns(self) -> int:
        """Read the guest's monotonic clock: never behind any reading it was given before."""
        now = self._monotonic() + self._offset_ns
        if now < self._floor_ns:
            # Restored elsewhere or replayed ahead: resume from the last reading.
            self._offset_ns += self._floor_ns - now
            now = self._floor_ns
        self._floor_ns = now
        return now

    def continue_from(self, monotonic_ns: int) -> None:
        """Make the guest's monotonic clock go on from at least ``monotonic_ns``.

        Raises ``BadArguments`` for a negative or non-integer reading.
        """
        if not _is_int(monotonic_ns) or monotonic_ns < 0:
            raise BadArguments(f"monotonic_ns must be a non-negative int, got {monotonic_ns!r}")
        self._floor_ns = max(self._floor_ns, monotonic_ns)


# --- state hash -------------------------------------------------------------

_HASH_DOMAIN = b"wasm-migrate state hash 1\0"
_RUN = struct.Struct("<QQ")


def state_hash(store: wasmtime.Store, instance: wasmtime.Instance) -> str:
    """Return a hex digest of a prepared instance's state: memories, globals, tables, dropped segments.

    Equal states give equal digests wherever their pages came from: each
    memory contributes its size and the maximal runs of its non-zero 4 KiB
    pages, read in place.  SHA-256 (about 1.8 GB/s with SHA-NI, twice
    blake2b's 0.9 GB/s on the project's machines).  Raises
    ``snapshot.SnapshotError`` for an instance ``snapshot.capture`` refuses.
    """
    lay = layout(store, instance)
    h = hashlib.sha256(_HASH_DOMAIN)
    h.update(lay.digest.encode())
    for index, memory in lay.memories:
        size = memory.data_len(store)
        h.update(_RUN.pack(index, size))
        if not size:
            continue
        view = memoryview((ctypes.c_char * size).from_address(ctypes.addressof(memory.data_ptr(store).contents)))
        view = view.cast("B")
        for a, b in nonzero_runs(view):
            h.update(_RUN.pack(a, b))
            h.update(view[a * PAGE_BYTES:b * PAGE_BYTES])
    # Globals and tables are small next to memory; their reprs are exact
    # (ints and None), so they serve as a canonical encoding.
    globals_ = read_globals(store, lay)
    tables = read_tables(store, lay)
    h.update(repr([(g.index, g.valtype, g.value) for g in globals_]).encode())
    h.update(repr([(t.index, t.reftype, t.elements) for t in tables]).encode())
    dropped = read_dropped(store, lay)
    if dropped:  # passive segments dropped (probed only for modules that have them)
        h.update(repr((dropped.data, dropped.elems)).encode())
    return h.hexdigest()
