"""Capture the state of a live prepared instance: a full snapshot, a delta of given pages, a digest.

``capture(store, instance)`` reads naturally in wasmtime-py style and needs
no module bytes (see ``_instance``).  Memory is copied out with memmove,
outside the GIL for large copies; zero pages are left out of the runs.
"""

from __future__ import annotations

import bisect
import ctypes
import hashlib
import mmap
import os

import wasmtime

from ._instance import Layout, layout, memory_view, read_dropped, read_globals, read_tables, record_state_id
from ._pages import PAGE_BYTES, PageRun, nonzero_blocks, page_ranges
from ._snapshot import Snapshot
from ._state import MemoryState


class CaptureBuffers:
    """Reusable host buffers for memory captures, one per memory index.

    Capturing into warm buffers runs at memcpy speed (13 to 15 GB/s for
    64 to 512 MiB here); a fresh allocation pays for its cold pages, about
    2 GB/s.  A snapshot taken with buffers borrows them: the next capture
    overwrites its pages.
    """

    def __init__(self) -> None:
        self._buffers: dict[int, bytearray] = {}

    def get(self, index: int, size: int) -> bytearray:
        buf = self._buffers.get(index)
        if buf is None or len(buf) != size:
            buf = bytearray(size)
            self._buffers[index] = buf
        return buf


#: Copies larger than this go into an anonymous mmap rather than a bytearray.
_MMAP_COPY_BYTES = 1 << 20


def copy_out(address: int, length: int) -> bytearray | memoryview:
    """Copy ``length`` bytes from ``address`` into new memory; return a buffer.

    Large copies must not hold the GIL: ``bytearray(n)`` zeroes its memory
    with the GIL held and ``ctypes.string_at`` copies with it held, either of
    which stalls every other thread (a node's event loop among them) for
    about 150 ms per 256 MiB.  An anonymous mmap is zero-filled lazily by
    the kernel, and ctypes.memmove releases the GIL while it copies.
    """
    if length < _MMAP_COPY_BYTES:
        out = bytearray(length)
        if length:
            ctypes.memmove((ctypes.c_char * length).from_buffer(out), address, length)
        return out
    region = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    ctypes.memmove((ctypes.c_char * length).from_buffer(region), address, length)
    return memoryview(region)


_madvise = ctypes.CDLL(None, use_errno=True).madvise
_madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
#: The most memory ``release_copies`` gives back per system call.
RELEASE_PIECE_BYTES = 16 << 20


def release_copies(snap: Snapshot) -> None:
    """Give the memory of ``snap``'s copied pages back to the system, 16 MiB at a time; its pages read as zeros after.

    For a snapshot about to be dropped that nobody reads any more.  Dropping
    a large capture unmaps it in one munmap, which holds the process's mmap
    lock for writing throughout: 55-64 ms for a 256 MiB first round in a
    busy node, and every page fault and malloc of the process (the node's
    event loop among them) waited for it.  MADV_DONTNEED takes the lock for
    reading, piece by piece, and the munmap that follows finds no pages.
    Pages held in bytes or bytearrays are left to the garbage collector.
    """
    for memory in snap.memories:
        for run in memory.runs:
            region = run.data.obj if isinstance(run.data, memoryview) else None
            if isinstance(region, mmap.mmap) and not region.closed:
                address = ctypes.addressof(ctypes.c_char.from_buffer(region))
                for offset in range(0, len(region), RELEASE_PIECE_BYTES):  # through ctypes: without the GIL
                    _madvise(address + offset, min(RELEASE_PIECE_BYTES, len(region) - offset), mmap.MADV_DONTNEED)


#: Runs shorter than this (a wasm page) are copied into shared buffers of this size.
_SHARED_COPY_BYTES = 64 << 10
#: The size of each shared buffer.
_SHARED_BUFFER_BYTES = 256 << 10


def copy_runs(address: int, ranges: list[tuple[int, int]]) -> tuple[PageRun, ...]:
    """Copy the [start, end) page ranges of the memory at ``address`` out into runs.

    A delta round is mostly short runs (a dirtier writing 3,000 random pages
    of 256 MiB gave 2,871 runs): one bytearray, one ctypes array and one
    memmove each cost 6.3 µs a run on the 2-CPU machine (a slow day),
    and the final round is copied while calls wait.  Runs under 64 KiB are
    copied by slice assignment (the GIL held a few µs) into shared 256 KiB
    buffers, each run a view of its part (1.8 µs a run); longer ones, such
    as the 64 KiB blocks of ``copy_nonzero``, still go through ``copy_out``,
    whose copy lets go of the GIL.
    """
    if not ranges:
        return ()
    lo, hi = min(a for a, _ in ranges), max(b for _, b in ranges)
    view = memoryview((ctypes.c_char * ((hi - lo) * PAGE_BYTES)).from_address(address + lo * PAGE_BYTES)).cast("B")
    runs: list[PageRun] = []
    shared, used = memoryview(bytearray()), 0
    for a, b in ranges:
        n = (b - a) * PAGE_BYTES
        if n >= _SHARED_COPY_BYTES:
            runs.append(PageRun(a, copy_out(address + a * PAGE_BYTES, n)))
            continue
        if used + n > len(shared):
            shared, used = memoryview(bytearray(_SHARED_BUFFER_BYTES)), 0
        start = (a - lo) * PAGE_BYTES
        shared[used:used + n] = view[start:start + n]
        runs.append(PageRun(a, shared[used:used + n]))
        used += n
    return tuple(runs)


def copy_nonzero(address: int, size: int) -> tuple[PageRun, ...]:
    """Copy out the 64 KiB blocks that are not all zero of ``size`` bytes at ``address``.

    Finding them in place and copying only those beats filling a cold
    allocation the size of the memory.
    """
    return copy_runs(address, nonzero_blocks((ctypes.c_char * size).from_address(address)) if size else [])


def live_runs(address: int, size: int, ranges: list[tuple[int, int]] | None = None) -> tuple[PageRun, ...]:
    """Runs that view ``size`` bytes of memory at ``address``, nothing copied.

    They cover its non-zero 64 KiB blocks, or the [start, end) page
    ``ranges``.  The views read the memory when they are read: it must
    neither move nor be freed until the last read, and what it holds then
    may be torn by a write in progress (copy a piece before compressing it).
    """
    if not size:
        return ()
    view = memoryview((ctypes.c_char * size).from_address(address)).cast("B")
    return tuple(PageRun(a, view[a * PAGE_BYTES:b * PAGE_BYTES])
                 for a, b in (nonzero_blocks(view) if ranges is None else ranges))


def _snapshot_of(store: wasmtime.Store, instance: wasmtime.Instance, lay: Layout, memories: list[MemoryState],
                 base_id: bytes | None = None) -> Snapshot:
    """A new state id for ``memories`` plus the globals and tables read now; the instance holds it."""
    snap = Snapshot(module_sha256=lay.digest, state_id=os.urandom(16), base_id=base_id,
                    memories=tuple(memories), globals=read_globals(store, lay), tables=read_tables(store, lay),
                    dropped=read_dropped(store, lay))
    record_state_id(instance, snap.state_id)
    return snap


def capture(store: wasmtime.Store, instance: wasmtime.Instance, *,
            buffers: CaptureBuffers | None = None, in_place: bool = False) -> Snapshot:
    """Take a full snapshot of a prepared instance.

    Memory pages are copied out with one memmove per memory; zero pages are
    then left out of the runs.  With ``in_place`` nothing is copied: the
    runs are views of the live memory, valid only until the instance runs,
    grows or is freed, so encode the snapshot before (a workload about to
    be dropped, held by its lock).  Raises InvalidModuleError for an unprepared
    instance and UnrepresentableStateError for state that has no portable
    form (a host externref, a foreign function in a table).
    """
    lay = layout(store, instance)
    memories = []
    for index, memory in lay.memories:
        ptr, size = memory_view(store, memory)
        if in_place:
            runs = live_runs(ptr, size)
        elif buffers is not None:
            # Warm buffer: one memcpy, then scan the copy by offset.
            buf = buffers.get(index, size)
            if size:
                ctypes.memmove((ctypes.c_char * size).from_buffer(buf), ptr, size)
            view = memoryview(buf)
            runs = tuple(PageRun(a, view[a * PAGE_BYTES:b * PAGE_BYTES]) for a, b in nonzero_blocks(buf))
        else:
            runs = copy_nonzero(ptr, size)
        memories.append(MemoryState(index, size, runs))
    return _snapshot_of(store, instance, lay, memories)


def capture_pages(store: wasmtime.Store, instance: wasmtime.Instance,
                  dirty: dict[int, list[int]], *, base_id: bytes) -> Snapshot:
    """Take a delta snapshot holding only the given pages of each memory.

    ``dirty`` maps memory index to sorted 4 KiB page indices, as a dirty
    tracker reports them.  Pages past a memory's end are ignored.
    """
    lay = layout(store, instance)
    memories = []
    for index, memory in lay.memories:
        ptr, size = memory_view(store, memory)
        limit = size // PAGE_BYTES
        pages = dirty.get(index, ())
        inside = pages[:bisect.bisect_left(pages, limit)]  # sorted: the pages inside the memory come first
        memories.append(MemoryState(index, size, copy_runs(ptr, page_ranges(inside))))
    return _snapshot_of(store, instance, lay, memories, base_id)


def pages_digest(store: wasmtime.Store, instance: wasmtime.Instance, pages: dict[int, list[int]]) -> str:
    """Digest the given 4 KiB pages of each memory, plus memory sizes and globals.

    Two replicas that should be identical compare the pages one of them
    wrote since they last agreed (a delta's pages): far cheaper than hashing
    whole memories, and it catches every divergence in what was written.
    Pages past a memory's end are digested as absent.
    """
    lay = layout(store, instance)
    h = hashlib.blake2b(digest_size=16)
    for index, memory in lay.memories:
        ptr, size = memory_view(store, memory)
        h.update(b"M%d:%d;" % (index, size))
        limit = size // PAGE_BYTES
        for page in pages.get(index, ()):
            if page < limit:
                h.update(page.to_bytes(8, "little"))
                h.update(ctypes.string_at(ptr + page * PAGE_BYTES, PAGE_BYTES))
    for g in read_globals(store, lay):
        h.update(b"G%d:%s;" % (g.index, repr(g.value).encode()))
    return h.hexdigest()
