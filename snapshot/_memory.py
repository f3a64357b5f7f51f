"""Warm zstd contexts, one per thread, and large buffers made without the GIL held.

A node encodes and decodes on threads its event loop shares the GIL with,
and the memory they touch for the first time costs a page fault each:
3.2-3.6 µs of CPU on the 2-CPU machine here, and 5-20 µs on memory
freed before (it goes back to the host) or not touched since boot.

- A zstd context holds its tables for as long as it lives; a new one for
  each round, or each decoder, allocated and faulted them in again.  A
  move's final round is encoded while the workload's calls wait.
  Contexts are not safe to share between threads, so each thread keeps
  its own.
- ``bytearray(n)`` zero-fills its memory with the GIL held.  Growing a
  4 MiB joining buffer that way held the GIL for 22 ms in a bulk thread
  (uprobes on libpython's take_gil/drop_gil) while the event loop waited.
  An anonymous mmap is zeroed by the kernel, and its pages are faulted in
  where they are first written: by ``ctypes.memset`` or a zstd call, which
  both let go of the GIL.
"""

from __future__ import annotations

import ctypes
import mmap
import threading

import zstandard

__all__ = ["ZEROED_FROM", "buffer", "compressor", "decompressor", "zeroed"]

_contexts = threading.local()

#: Buffers this large or larger are ``zeroed`` memory (``buffer``); smaller ones are bytearrays, whose
#: zero-fill with the GIL held is short and whose memory malloc may hand back already faulted in.
ZEROED_FROM = 256 << 10


def compressor(level: int) -> zstandard.ZstdCompressor:
    """This thread's compressor at ``level``, made on first use and kept."""
    kept: dict[int, zstandard.ZstdCompressor] | None = getattr(_contexts, "compressors", None)
    if kept is None:
        kept = _contexts.compressors = {}
    found = kept.get(level)
    if found is None:
        found = kept[level] = zstandard.ZstdCompressor(level=level)
    return found


def decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor, made on first use and kept."""
    found: zstandard.ZstdDecompressor | None = getattr(_contexts, "decompressor", None)
    if found is None:
        found = _contexts.decompressor = zstandard.ZstdDecompressor()
    return found


def zeroed(size: int, *, fault_in: bool = True) -> mmap.mmap:
    """``size`` bytes of new zeroed memory, made without holding the GIL.

    With ``fault_in`` every page is faulted in now, by ``ctypes.memset``,
    outside the GIL; without it, pages fault where they are first written,
    for a buffer that a call made without the GIL (zstd) fills.
    """
    region = mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if fault_in and size:
        ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(region)), 0, size)
    return region


def buffer(size: int, *, fault_in: bool = True) -> bytearray | mmap.mmap:
    """A new zeroed buffer of ``size`` bytes: a bytearray below ``ZEROED_FROM``, ``zeroed`` memory from it on."""
    return bytearray(size) if size < ZEROED_FROM else zeroed(size, fault_in=fault_in)
