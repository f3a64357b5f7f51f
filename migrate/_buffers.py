"""Bytes in and out of a workload through its handle: the wm_alloc convention of workloads/src/wm.h.

A module that exports ``wm_alloc(size) -> ptr`` and ``wm_free(ptr)`` takes
byte strings as (pointer, length) pairs of a buffer in its memory 0, and
returns them as a pointer to a u32 length followed by the bytes.
``Handle.call`` passes ``bytes`` and ``str`` arguments this way by itself
(``_call_with_buffers``); ``put_bytes``, ``call_with_bytes`` and
``read_prefixed`` are the steps, for callers that manage buffers.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING

import trio

from nodes import ExportSignature, check_call_args

logger = logging.getLogger(__name__)

#: Call arguments passed through the guest's wm_alloc buffers.
BUFFERS = (bytes, bytearray, memoryview, str)


class GuestBuffers:
    """The buffer methods of ``Handle`` (it provides ``call``, ``exports``, ``read_memory``...)."""

    _allocates: bool | None = None  # has wm_alloc and wm_free (asked once)

    if TYPE_CHECKING:  # what ``Handle`` provides
        workload: str

        async def call(self, export: str, *args: int | float | bytes | str,
                       timeout: float | None = None) -> None | int | float | tuple[int | float, ...]: ...

        async def exports(self) -> tuple[ExportSignature, ...]: ...

        async def read_memory(self, offset: int, length: int) -> bytes: ...

        async def write_memory(self, offset: int, data: bytes) -> None: ...

    async def put_bytes(self, data: bytes) -> int:
        """Copy ``data`` into a guest buffer from ``wm_alloc``; return its address.

        Free it with ``call("wm_free", ptr)``.  Raises MemoryError if the
        guest could not allocate, TypeError if its wm_alloc returns no address (an i32).
        """
        ptr = await self.call("wm_alloc", len(data))
        if not ptr:
            raise MemoryError(f"workload {self.workload} could not allocate {len(data)} bytes")
        if not isinstance(ptr, int):
            raise TypeError(f"wm_alloc of workload {self.workload} returned {ptr!r}, not an address")
        await self.write_memory(ptr, data)
        return ptr

    async def call_with_bytes(self, export: str, *blobs: bytes, extra: tuple = ()) -> None | int | float | tuple:
        """Call ``export(ptr1, len1, ptr2, len2, ..., *extra)`` with each blob in guest memory."""
        return await self._call_with_buffers(export, (*(bytes(b) for b in blobs), *extra))

    async def read_prefixed(self, ptr: int) -> bytes | None:
        """Read a u32-length-prefixed result buffer at ``ptr`` (None for a null pointer)."""
        if not ptr:
            return None
        (length,) = struct.unpack("<I", await self.read_memory(ptr, 4))
        return await self.read_memory(ptr + 4, length)

    async def _call_with_buffers(self, export: str, args: tuple) -> None | int | float | tuple:
        blobs = [a.encode() if isinstance(a, str) else bytes(a) for a in args if isinstance(a, BUFFERS)]
        check_call_args(tuple(a for a in args if not isinstance(a, BUFFERS)))
        if self._allocates is None:
            names = {e.name for e in await self.exports()}
            self._allocates = {"wm_alloc", "wm_free"} <= names
        if not self._allocates:
            raise TypeError(f"{export!r} was given bytes or str, but workload {self.workload} has no "
                            "wm_alloc and wm_free exports to put them in its memory")
        ptrs: list[int] = []
        try:
            for blob in blobs:
                ptrs.append(await self.put_bytes(blob))
            flat: list = []
            buffers = iter(zip(ptrs, blobs))
            for a in args:
                if isinstance(a, BUFFERS):
                    ptr, blob = next(buffers)
                    flat += (ptr, len(blob))
                else:
                    flat.append(a)
            return await self.call(export, *flat)
        finally:
            with trio.CancelScope(shield=True):
                for ptr in ptrs:
                    try:
                        await self.call("wm_free", ptr)
                    except Exception as exc:  # the call's own outcome matters more than a leaked buffer
                        logger.warning("could not free guest buffer %#x of %s: %s", ptr, self.workload, exc)
