"""Workloads whose right answer is known: for the crash tests and the soak run.

* ``CounterLoad``: callers each call ``incr(1)`` on one ``counter`` workload,
  each through its own handle (its own caller id in the call ledger).  Calls
  run exactly once if the results of all callers together are 1..N, each
  once, and ``get()`` is N.
* ``MemoryLoad``: one writer puts random bytes at random places in a buffer
  of the workload's memory (from ``wm_alloc``) and applies the same writes
  to a model; now and then it reads a random range back.  The buffer must
  equal the model byte for byte, at every read and at the end.

A call that raises counts as lost: the handle promises that calls survive
moves, kills and restarts, so no call may fail.  ``check_counter`` and
``MemoryCheck`` turn what was seen into figures (lost, duplicated,
mismatched bytes); they are pure and tested on their own.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from .suite import CallSample

#: The largest read or write one request carries here; frames allow more,
#: but smaller requests keep each call short while moves run.
PIECE_BYTES = 256 * 1024


@dataclass(frozen=True)
class CounterCheck:
    """The verdict on a counter: ``final`` is ``get()`` at the end.

    ``duplicated`` counts values in 1..final that no caller received: an
    execution nobody asked for (a call that ran twice).  ``lost`` counts
    calls that raised, plus results that are repeated or above ``final``:
    the effect of a call that ran and then vanished from the state.
    """

    calls: int
    final: int
    errors: int
    lost: int
    duplicated: int

    @property
    def exact(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.final == self.calls


def check_counter(results: Sequence[int], final: int, errors: int = 0) -> CounterCheck:
    """Judge ``incr(1)`` results (all callers) against the final ``get()``."""
    expected = set(range(1, final + 1))
    seen = set(results) & expected
    return CounterCheck(calls=len(results) + errors, final=final, errors=errors,
                        lost=errors + len(results) - len(seen), duplicated=len(expected - seen))


@dataclass
class CounterLoad:
    """Callers calling ``incr(1)`` until stopped; one handle per caller."""

    handles: Sequence  # migrate.Handle, one per caller
    results: list[int] = field(default_factory=list)
    samples: list[CallSample] = field(default_factory=list)  # time.perf_counter seconds
    errors: list[str] = field(default_factory=list)
    pause_s: float = 0.0

    async def run(self, stop: trio.Event) -> None:
        """Call until ``stop`` is set; every caller finishes its call in flight."""
        async with trio.open_nursery() as nursery:
            for handle in self.handles:
                nursery.start_soon(self._caller, handle, stop)

    async def _caller(self, handle, stop: trio.Event) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                value = await handle.call("incr", 1)
            except Exception as exc:  # every failure is a lost call; the run goes on to count them
                self.errors.append(f"{type(exc).__name__}: {exc}")
                await trio.sleep(0.05)
                continue
            self.samples.append(CallSample(started, time.perf_counter()))
            self.results.append(value)
            await trio.sleep(self.pause_s)

    async def check(self, handle) -> CounterCheck:
        """Read ``get()`` (after ``run`` ended) and judge the results."""
        return check_counter(self.results, await handle.call("get"), len(self.errors))


@dataclass(frozen=True)
class MemoryCheck:
    """The verdict on a memory buffer: writes and reads done, and what differed."""

    writes: int
    reads: int
    errors: int
    mismatched_reads: int
    mismatched_bytes: int  # in the final comparison of the whole buffer

    @property
    def exact(self) -> bool:
        return self.errors == 0 and self.mismatched_reads == 0 and self.mismatched_bytes == 0


@dataclass
class MemoryLoad:
    """One writer of random bytes into a ``size_bytes`` buffer, checked against a model."""

    handle: object  # migrate.Handle
    size_bytes: int
    seed: int = 0
    read_every: int = 8
    max_write_bytes: int = 4096
    pause_s: float = 0.0
    base: int = 0
    model: bytearray = field(default_factory=bytearray)
    writes: int = 0
    reads: int = 0
    errors: list[str] = field(default_factory=list)
    mismatched_reads: int = 0

    async def setup(self) -> None:
        """Allocate the buffer and fill it with random bytes (model and workload alike).

        Raises MemoryError if the workload cannot allocate it.
        """
        rng = random.Random(self.seed)
        self.model = bytearray(rng.randbytes(self.size_bytes))
        self.base = await self.handle.call("wm_alloc", self.size_bytes)
        if not self.base:
            raise MemoryError(f"cannot allocate {self.size_bytes} bytes in {self.handle.workload}")
        for offset in range(0, self.size_bytes, PIECE_BYTES):
            await self.handle.write_memory(self.base + offset, bytes(self.model[offset:offset + PIECE_BYTES]))

    async def run(self, stop: trio.Event) -> None:
        """Write (and now and then read back) until ``stop`` is set."""
        rng = random.Random(self.seed + 1)
        while not stop.is_set():
            length = rng.randint(1, self.max_write_bytes)
            offset = rng.randrange(0, self.size_bytes - length + 1)
            data = rng.randbytes(length)
            try:
                await self.handle.write_memory(self.base + offset, data)
            except Exception as exc:  # a lost write: the model can no longer be trusted there
                self.errors.append(f"{type(exc).__name__}: {exc}")
                await trio.sleep(0.05)
                continue
            self.model[offset:offset + length] = data
            self.writes += 1
            if self.writes % self.read_every == 0:
                await self._read_back(rng)
            await trio.sleep(self.pause_s)

    async def _read_back(self, rng: random.Random) -> None:
        length = rng.randint(1, self.max_write_bytes)
        offset = rng.randrange(0, self.size_bytes - length + 1)
        try:
            got = await self.handle.read_memory(self.base + offset, length)
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        self.reads += 1
        if got != self.model[offset:offset + length]:
            self.mismatched_reads += 1

    async def check(self) -> MemoryCheck:
        """Read the whole buffer (after ``run`` ended) and compare it with the model."""
        mismatched = 0
        for offset in range(0, self.size_bytes, PIECE_BYTES):
            want = self.model[offset:offset + PIECE_BYTES]
            got = await self.handle.read_memory(self.base + offset, len(want))
            mismatched += sum(a != b for a, b in zip(got, want)) + abs(len(got) - len(want))
        return MemoryCheck(writes=self.writes, reads=self.reads, errors=len(self.errors),
                           mismatched_reads=self.mismatched_reads, mismatched_bytes=mismatched)
