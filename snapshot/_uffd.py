"""The userfaultfd write-watch behind ``UffdDirtyTracker``: kernel ABI, one watch, and a probe.

userfaultfd in async write-protect mode, read and re-armed by the
``PAGEMAP_SCAN`` ioctl (Linux 6.7 and later), through ctypes on x86-64.
Write-protecting 256 MiB takes about 4 ms; a scan that reads and re-arms
it 0.6 ms (0.12 ms when nothing was written, 2.4 ms when every page was);
the guest pays about 0.85 us on its first write to each protected page.
Soft-dirty bits would be the other kernel route, but ``CONFIG_MEM_SOFT_DIRTY``
is off on the kernels this runs on.  ``uffd_available`` runs the whole
recipe once on scratch pages to tell whether it works here.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import logging
import mmap
import os
import platform
import sys
import weakref
from array import array
from collections.abc import Iterator

from ._pages import PAGE_BYTES, PAGE_SHIFT

logger = logging.getLogger(__name__)

#: The most memory one ioctl write-protects or scans: see ``WriteWatch.protect``.
PROTECT_PIECE_BYTES = 16 << 20

# --- kernel ABI ---------------------------------------------------------
# Numbers from include/uapi/linux/userfaultfd.h and include/uapi/linux/fs.h;
# structs as laid out in Documentation/admin-guide/mm/userfaultfd.rst and
# pagemap.rst.

# arch/x86/entry/syscalls/syscall_64.tbl.  Other architectures are left to
# the compare backend until someone tests them.
_SYS_USERFAULTFD = {"x86_64": 323}
_UFFD_USER_MODE_ONLY = 1
_UFFD_API = 0xAA
_UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
_UFFD_FEATURE_WP_ASYNC = 1 << 15
_UFFDIO_REGISTER_MODE_WP = 1 << 1
_UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0
_PM_SCAN_WP_MATCHING = 1 << 0
_PM_SCAN_CHECK_WPASYNC = 1 << 1
_PAGE_IS_WRITTEN = 1 << 1


class _UffdioApi(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


class _UffdioRange(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _UffdioRegister(ctypes.Structure):
    _fields_ = [("range", _UffdioRange), ("mode", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


class _UffdioWriteprotect(ctypes.Structure):
    _fields_ = [("range", _UffdioRange), ("mode", ctypes.c_uint64)]


class _PmScanArg(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len",
        "max_pages", "category_inverted", "category_mask",
        "category_anyof_mask", "return_mask")]


# struct page_region is three u64s: start, end (exclusive), categories.
_PAGE_REGION_WORDS = 3


def _iowr(kind: int, number: int, size: int) -> int:
    """Encode ``_IOWR(kind, number, size)`` (include/uapi/asm-generic/ioctl.h)."""
    return (3 << 30) | (size << 16) | (kind << 8) | number


_UFFDIO_API = _iowr(0xAA, 0x3F, ctypes.sizeof(_UffdioApi))
_UFFDIO_REGISTER = _iowr(0xAA, 0x00, ctypes.sizeof(_UffdioRegister))
_UFFDIO_WRITEPROTECT = _iowr(0xAA, 0x06, ctypes.sizeof(_UffdioWriteprotect))
_PAGEMAP_SCAN = _iowr(ord("f"), 16, ctypes.sizeof(_PmScanArg))  # 96 bytes

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class WriteWatch:
    """A userfaultfd in async write-protect mode, and the pagemap fd that reads it.

    No thread serves faults: in async mode the kernel lifts the protection on
    the first write itself and clears the page's uffd-wp bit, which
    ``PAGEMAP_SCAN`` then reports as PAGE_IS_WRITTEN.
    Every method raises ``OSError`` when the kernel refuses.
    """

    def __init__(self, *, regions_per_scan: int) -> None:
        """Open the userfaultfd and /proc/self/pagemap.

        Raises OSError if the kernel lacks userfaultfd, async write-protect
        or a syscall number for this machine.
        """
        number = _SYS_USERFAULTFD.get(platform.machine())
        if number is None:
            raise OSError(errno.ENOSYS, f"no userfaultfd syscall number for {platform.machine()}")
        fd = _libc.syscall(number, os.O_CLOEXEC | os.O_NONBLOCK | _UFFD_USER_MODE_ONLY)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"userfaultfd: {os.strerror(code)}")
        self._uffd = fd
        self._close_uffd = weakref.finalize(self, os.close, fd)
        self._close_pagemap = None
        try:
            features = _UFFD_FEATURE_WP_ASYNC | _UFFD_FEATURE_WP_UNPOPULATED
            fcntl.ioctl(fd, _UFFDIO_API, _UffdioApi(api=_UFFD_API, features=features))
            self._pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            self.close()
            raise
        self._close_pagemap = weakref.finalize(self, os.close, self._pagemap)
        # The kernel writes page_regions straight into this array's buffer.
        self._vector = array("Q", bytes(8 * _PAGE_REGION_WORDS * regions_per_scan))
        self._scan = _PmScanArg(
            size=ctypes.sizeof(_PmScanArg),
            flags=_PM_SCAN_WP_MATCHING | _PM_SCAN_CHECK_WPASYNC,
            vec=self._vector.buffer_info()[0],
            vec_len=regions_per_scan,
            category_mask=_PAGE_IS_WRITTEN,
            return_mask=_PAGE_IS_WRITTEN,
        )
        # The same scan without re-arming: it only reads the bits (``count_written``).
        self._peek = _PmScanArg(size=ctypes.sizeof(_PmScanArg), flags=_PM_SCAN_CHECK_WPASYNC,
                                vec=self._scan.vec, vec_len=regions_per_scan, category_mask=_PAGE_IS_WRITTEN,
                                return_mask=_PAGE_IS_WRITTEN)

    def protect(self, start: int, length: int) -> None:
        """Register ``[start, start+length)`` for write-protect and arm it.

        Raises OSError, e.g. EBUSY when another userfaultfd watches the range.
        """
        if length == 0:
            return
        span = _UffdioRange(start=start, len=length)
        fcntl.ioctl(self._uffd, _UFFDIO_REGISTER,
                    _UffdioRegister(range=span, mode=_UFFDIO_REGISTER_MODE_WP))
        # In pieces: the kernel holds the process's mmap lock for reading through each ioctl, and a
        # thread waiting to take it for writing (an mmap or munmap, as malloc does) makes every page
        # fault wait behind it.  One ioctl over 256 MiB took 4 ms alone and 8-12 ms in a busy node,
        # during which its event loop and its calls stalled; 16 MiB pieces take about 0.25 ms each.
        for piece in range(start, start + length, PROTECT_PIECE_BYTES):
            fcntl.ioctl(self._uffd, _UFFDIO_WRITEPROTECT, _UffdioWriteprotect(
                range=_UffdioRange(start=piece, len=min(PROTECT_PIECE_BYTES, start + length - piece)),
                mode=_UFFDIO_WRITEPROTECT_MODE_WP))

    def take_written(self, start: int, end: int) -> array:
        """Return the pages of ``[start, end)`` written since the last call, and re-arm them.

        Page indices count from ``start``.  Reading and re-arming happen in
        one ioctl per page-table walk, so no write falls between them.
        Raises OSError: EPERM if part of the range is not armed (the scan
        then has re-armed some pages it could not report, so the caller has
        lost track).
        """
        pages = array("Q")
        for first, last in self._regions(self._scan, start, end):
            pages.extend(range((first - start) >> PAGE_SHIFT, (last - start) >> PAGE_SHIFT))
        return pages

    def count_written(self, start: int, end: int) -> int:
        """How many pages of ``[start, end)`` were written since the last ``take_written``; nothing re-armed.

        Raises OSError as ``take_written`` does.
        """
        return sum((last - first) >> PAGE_SHIFT for first, last in self._regions(self._peek, start, end))

    def _regions(self, scan: _PmScanArg, start: int, end: int) -> Iterator[tuple[int, int]]:
        """The written regions of ``[start, end)`` as ``scan`` reports them, one ioctl per piece (or more)."""
        for piece in range(start, end, PROTECT_PIECE_BYTES):  # in pieces, as ``protect`` arms
            scan.start, scan.end = piece, min(piece + PROTECT_PIECE_BYTES, end)
            while True:
                count = fcntl.ioctl(self._pagemap, _PAGEMAP_SCAN, scan)
                words = self._vector[: _PAGE_REGION_WORDS * count]
                yield from zip(words[0::3], words[1::3])
                if scan.walk_end >= scan.end:
                    break
                if scan.walk_end <= scan.start:
                    raise OSError(errno.EIO, f"PAGEMAP_SCAN stopped at {scan.walk_end:#x}")
                # The vector filled up: continue where the walk stopped.
                scan.start = scan.walk_end

    def close(self) -> None:
        """Close both fds; the kernel drops the registrations with the userfaultfd."""
        self._close_uffd()
        if self._close_pagemap is not None:
            self._close_pagemap()


def _probe_uffd() -> str | None:
    """Run the whole recipe on two scratch pages; return why it failed, or None."""
    if sys.platform != "linux":
        return f"userfaultfd is Linux-only, this is {sys.platform}"
    if mmap.PAGESIZE != PAGE_BYTES:
        return f"host pages are {mmap.PAGESIZE} bytes, not {PAGE_BYTES}"
    scratch = mmap.mmap(-1, 2 * PAGE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        base = ctypes.addressof(ctypes.c_char.from_buffer(scratch))
        watch = WriteWatch(regions_per_scan=4)
        try:
            watch.protect(base, 2 * PAGE_BYTES)
            ctypes.memmove(base + PAGE_BYTES, b"\x01", 1)
            written = watch.take_written(base, base + 2 * PAGE_BYTES).tolist()
        finally:
            watch.close()
    except OSError as exc:
        return f"userfaultfd async write-protect or PAGEMAP_SCAN failed: {exc}"
    finally:
        scratch.close()
    if written != [1]:
        return f"PAGEMAP_SCAN reported pages {written} after a write to page 1 only"
    return None


@functools.cache
def unusable_reason() -> str | None:
    """Return why the userfaultfd backend does not work here, or None; probed once."""
    reason = _probe_uffd()
    if reason is not None:
        logger.info("userfaultfd dirty tracking unavailable: %s", reason)
    return reason


def uffd_available() -> bool:
    """Tell whether the userfaultfd backend works in this process (probed once)."""
    return unusable_reason() is None
