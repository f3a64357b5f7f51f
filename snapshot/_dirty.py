"""Dirty-page tracking for a wasmtime linear memory.

A tracker answers the question a pre-copy round asks: which 4 KiB pages of
the memory were written since the last round?  ``collect`` returns their
indices (counted from the memory's base) and starts the next epoch in the
same step, like QEMU's dirty-log sync.  Two backends share one interface:

* ``UffdDirtyTracker`` reads the kernel's write-protect bits: userfaultfd in
  async write-protect mode, read and re-armed by the ``PAGEMAP_SCAN`` ioctl
  (Linux 6.7 and later).  It reports exactly the pages *written*, even with
  the bytes they already held.  Its cost follows the written pages, not the
  memory size: 0.4 ms a round for 655 of 65,536 pages written
  (benchmarks/bench_dirty.py; a memcpy of those 256 MiB takes 17 ms).
* ``CompareDirtyTracker`` keeps a shadow copy and compares it with memcmp,
  using only the standard library.  It reports exactly the pages whose bytes
  *changed*.  Every round reads the whole memory (24 ms for 256 MiB), and
  the shadow doubles the memory it needs.

What both promise: every page whose bytes differ from the previous epoch is
reported.  Pages that ``memory.grow`` (from the guest or the host) added are
new state, so both report them once, in the next ``collect``.

Call a tracker between calls into the guest, from the thread that uses the
store (a wasmtime Store is used by one thread at a time).
"""

from __future__ import annotations

import abc
import ctypes
import logging
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from typing import Protocol, Self

import wasmtime

from ._errors import DirtyTrackingError
from ._pages import PAGE_BYTES, PAGE_SHIFT
from ._uffd import WriteWatch, uffd_available, unusable_reason

__all__ = [
    "CompareDirtyTracker",
    "DirtyTracker",
    "UffdDirtyTracker",
    "open_tracker",
    "uffd_available",
]

logger = logging.getLogger(__name__)


class DirtyTracker(Protocol):
    """What both backends provide; also a context manager that closes it."""

    page_size: int  # 4096: page indices count pages of this size from the memory's base

    def reset(self, store: wasmtime.Storelike) -> None:
        """Start a new epoch, forgetting every write made so far."""

    def collect(self, store: wasmtime.Storelike) -> array:
        """Return sorted page indices dirtied since the last epoch (array 'Q') and start a new one."""

    def peek(self, store: wasmtime.Storelike) -> int | None:
        """How many pages ``collect`` would report now, without starting a new epoch; None if unknown."""

    def close(self) -> None:
        """Release file descriptors, registrations and shadow copies."""

    def __enter__(self) -> DirtyTracker: ...

    def __exit__(self, *exc_info: object) -> None: ...


@dataclass(frozen=True)
class _Extent:
    """Where a linear memory lies at one moment."""

    base: int
    length_bytes: int

    @classmethod
    def of(cls, memory: wasmtime.Memory, store: wasmtime.Storelike) -> _Extent:
        """Read the memory's base address and length now."""
        base = ctypes.addressof(memory.data_ptr(store).contents)
        return cls(base, memory.data_len(store))

    @property
    def pages(self) -> int:
        """4 KiB pages, counting a partial last one (custom page sizes allow it)."""
        return -(-self.length_bytes // PAGE_BYTES)

    @property
    def page_bytes(self) -> int:
        """Bytes from the base to the end of the last page."""
        return self.pages * PAGE_BYTES

    def view(self) -> memoryview:
        """Return a byte view of the memory; valid only while it neither moves nor is freed."""
        raw = (ctypes.c_ubyte * self.length_bytes).from_address(self.base)
        return memoryview(raw).cast("B")


def extent_of(memory: wasmtime.Memory, store: wasmtime.Storelike) -> _Extent:
    """Where ``memory`` lies now: pass it to ``open_tracker`` to arm a tracker without the store."""
    return _Extent.of(memory, store)


def _grown_pages(old: _Extent, new: _Extent) -> range:
    """Pages that hold bytes added by growth from ``old`` to ``new``."""
    if new.length_bytes == old.length_bytes:
        return range(0)
    return range(old.length_bytes // PAGE_BYTES, new.pages)


def _with_grown(pages: array, grown: range) -> array:
    """Append the grown pages to sorted ``pages``, keeping it sorted and duplicate-free."""
    if grown:
        del pages[bisect_left(pages, grown.start):]
        pages.extend(grown)
    return pages


class _Tracker(abc.ABC):
    """What both backends share: epochs, growth bookkeeping, closing."""

    page_size = PAGE_BYTES

    def __init__(self, store: wasmtime.Storelike | None, memory: wasmtime.Memory,
                 extent: _Extent | None = None) -> None:
        # Given ``extent`` (read earlier, holding the store), the store is not
        # touched: the tracker can be armed while other threads run guest code.
        self._memory = memory
        if extent is None:
            if store is None:
                raise TypeError("a tracker needs the store or the memory's extent")
            extent = _Extent.of(memory, store)
        self._extent = extent
        self._closed = False

    def collect(self, store: wasmtime.Storelike) -> array:
        """Return the sorted indices of pages dirtied since the last epoch, and start a new one.

        Pages added by a grow since the last epoch are included.
        Raises DirtyTrackingError if the tracker is closed, if the memory
        shrank (so it is not the memory this tracker watches) or if the
        backend failed; after a backend failure the next ``collect``
        reports every page.
        """
        if self._closed:
            raise DirtyTrackingError("the dirty tracker is closed")
        new = _Extent.of(self._memory, store)
        old = self._extent
        if new.length_bytes < old.length_bytes:
            raise DirtyTrackingError(
                f"memory shrank from {old.length_bytes} to {new.length_bytes} bytes; "
                "wasm memories never shrink")
        pages = self._collect(old, new)
        self._extent = new
        return pages

    def reset(self, store: wasmtime.Storelike) -> None:
        """Start a new epoch, forgetting every write made so far.

        Raises DirtyTrackingError as ``collect`` does.
        """
        self.collect(store)

    def peek(self, store: wasmtime.Storelike) -> int | None:
        """None: only trackers that read the kernel's bits (uffd) can tell without a collect."""
        return None

    @abc.abstractmethod
    def _collect(self, old: _Extent, new: _Extent) -> array:
        """Return the pages written in ``old`` plus those ``new`` adds (each backend's own way)."""

    def close(self) -> None:
        """Release the backend's resources; closing twice is harmless."""
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class UffdDirtyTracker(_Tracker):
    """Reports the pages written, from the kernel's write-protect bits (Linux 6.7+, x86-64)."""

    def __init__(self, store: wasmtime.Storelike | None, memory: wasmtime.Memory, *,
                 regions_per_scan: int = 1024, extent: _Extent | None = None) -> None:
        """Write-protect the whole memory; writes from now on are tracked.

        ``regions_per_scan`` sizes the reusable page_region vector (24 bytes
        each): 1024 covers 1% of 65,536 pages written at random in one
        ioctl; more regions just take more ioctls.
        Raises DirtyTrackingError if the backend does not work here or the
        memory cannot be registered (e.g. another tracker already watches it).
        """
        reason = unusable_reason()
        if reason is not None:
            raise DirtyTrackingError(reason)
        if regions_per_scan < 1:
            raise DirtyTrackingError(f"regions_per_scan must be at least 1, not {regions_per_scan}")
        super().__init__(store, memory, extent)
        self._regions_per_scan = regions_per_scan
        self._watch: WriteWatch | None = None
        self._watch_all(self._extent)

    def _watch_all(self, extent: _Extent) -> None:
        """Replace the watch with a fresh userfaultfd armed over the whole extent."""
        self._drop_watch()
        try:
            watch = WriteWatch(regions_per_scan=self._regions_per_scan)
        except OSError as exc:
            raise DirtyTrackingError(f"cannot open a userfaultfd: {exc}") from exc
        try:
            watch.protect(extent.base, extent.page_bytes)
        except OSError as exc:
            watch.close()
            raise DirtyTrackingError(
                f"cannot write-protect {extent.page_bytes} bytes at {extent.base:#x}: {exc}") from exc
        self._watch = watch
        logger.debug("write-protected %d pages at %#x", extent.pages, extent.base)

    def _drop_watch(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def _collect(self, old: _Extent, new: _Extent) -> array:
        if self._watch is None or new.base != old.base:
            # The memory moved (wasmtime copied it elsewhere) or an earlier
            # scan failed: the old bits say nothing, so re-arm and report all.
            if self._watch is None:
                logger.warning("re-arming dirty tracking after a failed scan; reporting all pages")
            else:
                logger.info("memory moved from %#x to %#x; reporting all pages", old.base, new.base)
            self._watch_all(new)
            return array("Q", range(new.pages))
        try:
            # Arm the grown range before scanning: a scan over a range not
            # yet registered fails with EPERM, and that failed scan also
            # loses a dirty bit in the range that was registered.
            self._watch.protect(new.base + old.page_bytes, new.page_bytes - old.page_bytes)
            written = self._watch.take_written(new.base, new.base + old.page_bytes)
        except OSError as exc:
            self._drop_watch()
            raise DirtyTrackingError(
                f"lost track of writes to the memory at {new.base:#x}: {exc}; "
                "the next collect reports every page") from exc
        return _with_grown(written, _grown_pages(old, new))

    def peek(self, store: wasmtime.Storelike) -> int | None:
        if self._closed or self._watch is None:
            return None
        new, old = _Extent.of(self._memory, store), self._extent
        if new.base != old.base or new.length_bytes < old.length_bytes:
            return None  # the next collect reports every page (or fails)
        try:
            written = self._watch.count_written(new.base, new.base + old.page_bytes)
        except OSError:
            return None
        return written + len(_grown_pages(old, new))

    def close(self) -> None:
        """Close the userfaultfd and pagemap fds; the kernel drops the protection."""
        self._drop_watch()
        super().close()


# 64 KiB, one wasm page, is the first-level compare unit.  A clean round
# over 256 MiB took 18 to 24 ms with 64 KiB or 256 KiB blocks, as long as
# one memcmp of the whole memory (17 to 21 ms): bound by memory bandwidth.
_BLOCK_BYTES = 65536


class CompareDirtyTracker(_Tracker):
    """Reports the pages whose bytes changed, by comparing with a shadow copy (stdlib only).

    ``shadow.startswith(view_slice, offset)`` runs memcmp on the memory in
    place (Objects/bytes_methods.c, tailmatch), whereas ``memoryview ==
    memoryview`` compares item by item and slicing the bytearray copies.
    Blocks of 64 KiB are compared first, then the 4 KiB pages of a block
    that differs: 4.9 us per such block, against 11.6 us when the shadow
    side is sliced (a copy) and 14 us for libc memcmp through ctypes.
    If the memory moves, its bytes moved with it, so comparing stays exact
    and, unlike the uffd backend, this one need not report every page.
    The shadow costs as much memory as the tracked memory.
    """

    def __init__(self, store: wasmtime.Storelike | None, memory: wasmtime.Memory, *,
                 extent: _Extent | None = None) -> None:
        """Copy the memory into the shadow; changes from now on are tracked."""
        super().__init__(store, memory, extent)
        self._shadow = bytearray(self._extent.view())

    def _collect(self, old: _Extent, new: _Extent) -> array:
        shadow, matches = self._shadow, self._shadow.startswith
        view = new.view()
        known = view[: old.length_bytes]  # the bytes the shadow has a copy of
        changed = array("Q")
        for block in range(0, old.length_bytes, _BLOCK_BYTES):
            if matches(known[block: block + _BLOCK_BYTES], block):
                continue
            for offset in range(block, min(block + _BLOCK_BYTES, old.length_bytes), PAGE_BYTES):
                now = known[offset: offset + PAGE_BYTES]
                if not matches(now, offset):
                    shadow[offset: offset + len(now)] = now
                    changed.append(offset >> PAGE_SHIFT)
        shadow += view[old.length_bytes:]
        return _with_grown(changed, _grown_pages(old, new))

    def close(self) -> None:
        """Free the shadow copy."""
        self._shadow = bytearray()
        super().close()


def open_tracker(store: wasmtime.Storelike | None, memory: wasmtime.Memory, *,
                 backend: str = "auto", extent: _Extent | None = None) -> DirtyTracker:
    """Start tracking the dirty pages of ``memory``; writes from now on are reported.

    ``backend`` is "uffd", "compare", or "auto": uffd if it works here (and
    on this memory), otherwise compare.  Given ``extent`` (``extent_of``
    read earlier, holding the store), the store is not used: arming can run
    while guest code runs, if the memory neither moves nor is freed meanwhile;
    the first ``reset`` or ``collect``, holding the store, then arms what
    grew since and forgets the writes made while arming.
    Raises DirtyTrackingError for an unknown backend or when the chosen
    backend cannot be set up.
    """
    if backend == "uffd":
        return UffdDirtyTracker(store, memory, extent=extent)
    if backend == "compare":
        return CompareDirtyTracker(store, memory, extent=extent)
    if backend != "auto":
        raise DirtyTrackingError(f"unknown backend {backend!r}; use 'auto', 'uffd' or 'compare'")
    if uffd_available():
        try:
            return UffdDirtyTracker(store, memory, extent=extent)
        except DirtyTrackingError as exc:
            logger.warning("falling back to the compare backend: %s", exc)
    return CompareDirtyTracker(store, memory, extent=extent)
