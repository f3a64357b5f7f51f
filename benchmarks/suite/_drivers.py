"""Drive each workload through a handle: set its state up, stream calls at a rate, check the state after.

A driver's ``tick(elapsed_s)`` is one entry of the client's steady stream.
It does the work owed by the time elapsed (pages dirtied, values put,
MiB grown), so the rate holds however fast calls are, and returns the
bytes it wrote.  ``state_ok`` then checks, from the workload's own
counters, that every call took effect exactly once across the move.
"""

from __future__ import annotations

import logging

import trio

from nodes import unwrap_group

from ._config import PAGE_BYTES, DirtierSpec, GrowerSpec, KvstoreSpec, WorkloadSpec

logger = logging.getLogger(__name__)

#: Pages one dt_dirty call may write: a client that fell behind catches up
#: over several calls instead of one long one.
MAX_PAGES_PER_CALL = 4096
#: Concurrent callers while filling the key-value store: a round trip of
#: 5 ms per put would make 16,384 puts one after another take minutes.
FILL_CALLERS = 32


class DirtierDriver:
    """``dirtier``: dt_init, then dt_dirty(pages owed); checks the guest's write counter."""

    workload = "dirtier"

    def __init__(self, spec: DirtierSpec) -> None:
        self.spec = spec
        self.pages = 0
        self.requested = 0  # pages asked for so far
        self.expected_writes = 0
        self.seed = 1


    async def setup(self, h) -> None:
        self.pages = await h.call("dt_init", self.spec.memory_mib)
        if self.pages <= 0:
            raise MemoryError(f"dt_init({self.spec.memory_mib}) failed")

    async def tick(self, h, elapsed_s: float) -> int:
        n = max(0, min(MAX_PAGES_PER_CALL, int(self.spec.dirty_pages_per_s * elapsed_s) - self.requested))
        self.requested += n
        self.seed += 1
        await h.call("dt_dirty", n, self.seed)
        written = min(n, self.pages)
        self.expected_writes += written
        return written * PAGE_BYTES

    async def state_ok(self, h) -> bool:
        return await h.call("dt_dirty", 0, 0) == self.expected_writes


class KvstoreDriver:
    """``kvstore``: fills ``keys`` pairs, then overwrites values; checks the pair count and the last value."""

    workload = "kvstore"

    def __init__(self, spec: KvstoreSpec) -> None:
        self.spec = spec
        self.puts = 0
        self.buffer = 0
        self.last: tuple[bytes, bytes] | None = None


    def _pair(self, i: int, version: int) -> tuple[bytes, bytes]:
        key = b"key-%08d" % (i % self.spec.keys)
        value = (b"v%08d-%08d;" % (i, version) * (self.spec.value_bytes // 19 + 1))[:self.spec.value_bytes]
        return key, value

    async def _put(self, h, buffer: int, key: bytes, value: bytes) -> None:
        await h.write_memory(buffer, key + value)
        if await h.call("kv_put", buffer, len(key), buffer + len(key), len(value)) < 0:
            raise MemoryError("kv_put failed")

    async def setup(self, h) -> None:
        size = 16 + self.spec.value_bytes
        buffers = [await h.put_bytes(bytes(size)) for _ in range(FILL_CALLERS)]
        self.buffer = buffers[0]

        async def fill(worker: int) -> None:
            for i in range(worker, self.spec.keys, FILL_CALLERS):
                await self._put(h, buffers[worker], *self._pair(i, 0))

        with unwrap_group():  # the caller catches a failed put by its class
            async with trio.open_nursery() as nursery:
                for worker in range(FILL_CALLERS):
                    nursery.start_soon(fill, worker)
        for ptr in buffers[1:]:
            await h.call("wm_free", ptr)

    async def tick(self, h, elapsed_s: float) -> int:
        if int(self.spec.puts_per_s * elapsed_s) <= self.puts:
            await h.call("kv_count")
            return 0
        self.puts += 1
        self.last = self._pair(self.puts * 7919, self.puts)
        await self._put(h, self.buffer, *self.last)
        # An overwrite rewrites the value in place: count one page.
        return PAGE_BYTES

    async def state_ok(self, h) -> bool:
        if await h.call("kv_count") != self.spec.keys:
            return False
        if self.last is None:
            return True
        key, value = self.last
        await h.write_memory(self.buffer, key)
        got = await h.read_prefixed(await h.call("kv_get", self.buffer, len(key)))
        return got == value


class GrowerDriver:
    """``grower``: grow_mb(start), then grow_mb(MiB owed) or pages(); checks the MiB allocated."""

    workload = "grower"

    def __init__(self, spec: GrowerSpec) -> None:
        self.spec = spec
        self.grown_mib = 0
        self.capped = False  # the node's memory cap refused a grow: stop growing, keep streaming


    async def setup(self, h) -> None:
        left = self.spec.start_mib
        while left > 0:
            step = min(left, 1024)
            if await h.call("grow_mb", step) < 0:
                raise MemoryError(f"grow_mb({step}) failed")
            left -= step

    async def tick(self, h, elapsed_s: float) -> int:
        owed = int(self.spec.grow_mib_per_s * elapsed_s) - self.grown_mib
        if owed <= 0 or self.capped:
            await h.call("pages")
            return 0
        step = min(owed, 64)
        if await h.call("grow_mb", step) < 0:  # a refused grow allocates nothing
            logger.warning("grower hit its memory cap at %d MiB", self.spec.start_mib + self.grown_mib)
            self.capped = True
            return 0
        self.grown_mib += step
        return step * 2**20

    async def state_ok(self, h) -> bool:
        return await h.call("grower_mb") == self.spec.start_mib + self.grown_mib


def driver_for(spec: WorkloadSpec) -> DirtierDriver | KvstoreDriver | GrowerDriver:
    """A fresh driver for ``spec``."""
    return {"dirtier": DirtierDriver, "kvstore": KvstoreDriver, "grower": GrowerDriver}[spec.kind](spec)
