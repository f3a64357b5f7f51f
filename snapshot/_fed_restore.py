"""Decode an encoded snapshot straight into an instance as its bytes arrive: ``FedRestore`` and ``restore_encoded``.

Restoring a decoded ``Snapshot`` holds every decompressed page twice: in
the snapshot's buffers and in the instance.  Here each batch is
decompressed into one of the decoder's two reused buffers and copied into
the instance's memory at once, so the pages are faulted in only once, in
the instance.  That matters where fresh memory is dear: on the 2-CPU
Firecracker VMs these figures come from, freed memory goes back to the
host (free page reporting), and the first write to a page taken again
cost 5-20 µs, so 100 MiB written into fresh buffers cost 0.13-0.53 s of
CPU before a single page reached the instance (against 38 ms for the
same copy into memory already touched).

META is checked against the instance (``_check``) before the instance is
touched, but a frame found corrupt, forged or missing after the first
page batch leaves the instance partly written: the caller discards the
instance on any error.  A delta is assembled whole and restored by
``restore`` at its END (a delta is small, and goes onto a live state).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Callable

import wasmtime

from ._decoder import DecodeLimits, Event, Meta, PageBatch, SnapshotDecoder
from ._errors import CorruptSnapshotError
from ._instance import Layout, layout
from ._pages import PageRun
from ._restore import _check, _close, _open, _scatter_copy, restore
from ._snapshot import Snapshot, SnapshotAssembler
from ._state import MemoryState

__all__ = ["FedRestore", "restore_encoded"]

_CHUNK_BYTES = 1 << 20  # what restore_encoded reads of a file at a time


class FedRestore:
    """Decode an encoded snapshot into ``instance`` (of the snapshot's prepared module) as its bytes are fed.

    Sans-IO: ``feed(data)`` takes the bytes cut anywhere and returns True
    once the END frame was read and the whole state is in the instance
    (globals and table entries last).  ``accept`` is called with the
    snapshot's META (a ``Snapshot`` without pages) before the instance is
    touched, and may raise to refuse it.  With a ``worker`` (an executor of
    one thread), each batch's copy into the instance runs there while the
    next batch is decoded.

    Raises what ``Snapshot.from_bytes`` raises for the bytes (a
    ``RemoteSnapshotError``: the decoder stays broken) and what ``restore``
    raises for a snapshot that does not fit the instance.  After an error
    the instance may hold part of the snapshot: discard it.
    """

    def __init__(self, store: wasmtime.Store, instance: wasmtime.Instance, *, key: bytes | None = None,
                 limits: DecodeLimits | None = None, accept: Callable[[Snapshot], None] | None = None,
                 worker: ThreadPoolExecutor | None = None) -> None:
        self._decoder = SnapshotDecoder(key=key, limits=limits, reuse_buffer=True)
        self._store, self._instance = store, instance
        self._accept = accept
        self._worker = worker
        self._copying: Future[None] | None = None
        self._head: Snapshot | None = None
        self._assembler: SnapshotAssembler | None = None  # a delta's, assembled whole
        self._opened: tuple[Layout, list[object], dict[int, int]] | None = None
        self.done = False

    def feed(self, data: bytes) -> bool:
        """Decode ``data`` into the instance, as far as it goes; True once the snapshot is complete."""
        self._decoder.feed(data)
        while (event := self._decoder.next_event()) is not None:
            self._take(event)
        return self.done

    def close(self) -> None:
        """Declare the input complete: raises TruncatedSnapshotError if the END frame was not read."""
        self._decoder.close()

    def drain(self) -> None:
        """Wait for the copy in the worker, if any (raising its error); call before dropping the worker."""
        copying, self._copying = self._copying, None
        if copying is not None:
            copying.result()

    def _take(self, event: Event) -> None:
        if isinstance(event, Meta):
            self._begin(event)
        elif isinstance(event, PageBatch):
            if self._assembler is not None:  # copied out of the reused buffer
                self._assembler.add(PageBatch(event.memory_index,
                                              tuple(PageRun(r.first_page, bytes(r.data)) for r in event.runs)))
                return
            assert self._opened is not None  # the decoder gives META first
            copy = _scatter_copy(self._opened[2][event.memory_index], event)
            if self._worker is None:
                copy()
                return
            self.drain()  # its buffer is the next one the decoder fills
            self._copying = self._worker.submit(copy)
        else:  # the END
            if self._assembler is not None:
                self._assembler.add(event)
            self._end()

    def _begin(self, meta: Meta) -> None:
        head = Snapshot(module_sha256=meta.module_sha256, state_id=meta.state_id, base_id=meta.base_id,
                        memories=tuple(MemoryState(i, size, zero_free=True) for i, size, _ in meta.memories),
                        globals=meta.globals, tables=meta.tables, dropped=meta.dropped)
        if self._accept is not None:
            self._accept(head)
        self._head = head
        if head.is_delta:
            self._assembler = SnapshotAssembler()
            self._assembler.add(meta)
            return
        lay = layout(self._store, self._instance)
        _check(head, self._store, self._instance, lay)
        ptrs, funcs = _open(head, self._store, lay)
        self._opened = (lay, funcs, {ms.index: ptr for ms, ptr in zip(head.memories, ptrs)})

    def _end(self) -> None:
        self.drain()
        if self._assembler is not None:
            restore(self._assembler.snapshot(), self._store, self._instance)
        else:
            assert self._head is not None and self._opened is not None  # END comes after META
            lay, funcs, _ = self._opened
            _close(self._head, self._store, self._instance, lay, funcs)
        self.done = True


def restore_encoded(source: bytes | BinaryIO, store: wasmtime.Store, instance: wasmtime.Instance, *,
                    key: bytes | None = None, limits: DecodeLimits | None = None,
                    accept: Callable[[Snapshot], None] | None = None) -> None:
    """Decode an encoded snapshot straight into a fresh instance (a ``FedRestore`` fed ``source``).

    ``restore(Snapshot.from_bytes(data, key=key), ...)`` without holding the
    input or the decompressed pages: ``source`` is the encoded bytes or a
    binary file read a MiB at a time.  A worker thread copies batch k with
    one system call, GIL released, while this thread decodes batch k + 1.
    Raises what ``FedRestore`` raises, CorruptSnapshotError if bytes follow
    the END frame, and OSError from reading ``source``.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="restore") as worker:
        fed = FedRestore(store, instance, key=key, limits=limits, accept=accept, worker=worker)
        try:
            if isinstance(source, bytes):
                if not fed.feed(source):
                    fed.close()  # raises TruncatedSnapshotError
                return
            while not fed.feed(chunk := source.read(_CHUNK_BYTES)):
                if not chunk:
                    fed.close()
            if source.read(1):
                raise CorruptSnapshotError("trailing bytes after the END frame")
        finally:
            fed.drain()
