"""The encoded snapshot format, and its sans-IO streaming encoder.

Layout::

    header  16 bytes: b"WMSNAP", version (u8), flags (u8), 8-byte nonce salt
    frame*  type (u8) | length (u32 BE) | payload | crc32 (u32 BE) of the rest

Frames are META (msgpack: module digest, state ids, memory sizes, globals,
tables and, from version 2, the dropped passive segments), then PAGES (msgpack: memory index, page runs, zstd-compressed page
data) any number of times, then END (frame and page counts), so truncation is
always detected.  With a key, every payload is sealed with AES-GCM: the nonce
is the header's salt plus the frame's sequence number, and the header, frame
type and sequence number are authenticated, so frames cannot be dropped,
reordered or moved between snapshots without detection.  The crc32 catches
accidental corruption with or without a key.

Version 2 differs from version 1 only by META's "dropped" field: the
sorted indices of the dropped passive data and element segments.  The
encoder writes version 1 when nothing is dropped, so such snapshots stay
readable by builds that read only version 1, and those builds refuse the
others by their version rather than lose the dropped state.

Zero pages never travel.  The decoder, which reads this format back, is
in ``_decoder``.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import zlib
from typing import TYPE_CHECKING, Iterable, Iterator, NamedTuple

import msgpack
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._errors import LocalSnapshotError
from ._memory import ZEROED_FROM, buffer, compressor
from ._pages import PAGE_BYTES, ZERO_PAGE, PageRun, nonzero_runs

if TYPE_CHECKING:
    from ._snapshot import Snapshot

MAGIC = b"WMSNAP"
VERSION = 2  # the newest; VERSIONS are all this build reads
VERSIONS = (1, 2)
HEADER_BYTES = 16
FLAG_ENCRYPTED = 0x01
META, PAGES, END = 1, 2, 3
FRAME_HEAD = struct.Struct(">BI")
CRC = struct.Struct(">I")
BATCH_PAGES = 1024  # 4 MiB of raw pages per frame: large enough for zstd, small enough to stream


def check_key(key: bytes | None) -> AESGCM | None:
    """The AEAD for ``key``, or None without a key; raises LocalSnapshotError for a bad key."""
    if key is None:
        return None
    if not isinstance(key, (bytes, bytearray)) or len(key) not in (16, 24, 32):
        raise LocalSnapshotError("an encryption key must be 16, 24 or 32 bytes (AES-128/192/256)")
    return AESGCM(bytes(key))


def generate_key() -> bytes:
    """Return a fresh random 256-bit key for ``to_bytes(key=...)``."""
    return AESGCM.generate_key(bit_length=256)


def sealing(header: bytes, ftype: int, seq: int) -> tuple[bytes, bytes]:
    """The AES-GCM nonce and associated data of frame number ``seq`` of type ``ftype``.

    The nonce is the header's 8-byte salt plus the sequence number; the
    associated data binds the header, the frame type and the number.
    """
    number = seq.to_bytes(4, "big")
    return header[8:HEADER_BYTES] + number, header + bytes([ftype]) + number


def _encode_value(valtype: str, value: int | None) -> int | bytes | None:
    if valtype == "v128" and value is not None:
        return value.to_bytes(16, "little")
    return value


def _page_batches(index: int, runs: Iterable[PageRun], batch_pages: int
                  ) -> Iterator[tuple[list[list[int]], list[list[int]], list[memoryview]]]:
    """Split runs into batches of at most ``batch_pages`` pages.

    Yields (ranges, zero ranges, non-zero page chunks).  Zero pages inside
    the runs are named in the zero ranges and never sent.  The chunks are
    memoryviews into the runs' own buffers: copying each piece into bytes
    first held the GIL for about 60% of the encode, stalling the event loop
    of a node encoding a round in a worker thread.
    """
    ranges: list[list[int]] = []
    zeros: list[list[int]] = []
    chunks: list[memoryview] = []
    count = 0
    for run in runs:
        view = memoryview(run.data).cast("B")
        page = run.first_page
        end = run.end_page
        while page < end:
            take = min(end - page, batch_pages - count)
            ranges.append([page, take])
            off = (page - run.first_page) * PAGE_BYTES
            piece = view[off:off + take * PAGE_BYTES]
            if take == 1:  # a delta's usual run, one page: tested in place, without ``nonzero_runs``'s setup
                if ZERO_PAGE.startswith(piece):
                    zeros.append([page, 1])
                else:
                    chunks.append(piece)
            else:
                cursor = 0
                for a, b in nonzero_runs(piece):
                    if a > cursor:
                        zeros.append([page + cursor, a - cursor])
                    chunks.append(piece if (a, b) == (0, take) else piece[a * PAGE_BYTES:b * PAGE_BYTES])
                    cursor = b
                if cursor < take:
                    zeros.append([page + cursor, take - cursor])
            count += take
            page += take
            if count == batch_pages:
                yield ranges, zeros, chunks
                ranges, zeros, chunks, count = [], [], [], 0
    if ranges:
        yield ranges, zeros, chunks


#: Chunks this large are joined with ctypes.memmove, which lets go of the GIL while it copies: a
#: slice assignment holds it throughout (about 0.3 ms per 4 MiB frame), and a node's event loop,
#: sending the round meanwhile, waits for it.
_MEMMOVE_BYTES = 64 << 10


class _Joiner:
    """Joins a batch's chunks into one of ``buffers`` reused buffers, in turn (one copy, no allocation per batch).

    With more than one buffer, a joined batch stays valid while the next
    ``buffers - 1`` are joined: ``write_encoded`` compresses one batch in a
    helper thread while the next is joined.  A buffer that grows past 256 KiB
    at least doubles, up to ``largest``, the size of a whole batch: a first
    round's batches grow it a few times, and a final round's 0.5 MiB (made
    while calls wait) faults in no more memory than it needs.
    """

    def __init__(self, buffers: int = 1, *, always: bool = False, largest: int = BATCH_PAGES * PAGE_BYTES) -> None:
        self._buffers: list[bytearray | mmap.mmap] = [bytearray() for _ in range(buffers)]
        self._turn = 0
        self._always = always  # copy a single chunk too: it may be live memory that changes under zstd
        self._largest = largest

    def join(self, chunks: list[memoryview]) -> memoryview | bytes:
        """The chunks' bytes, contiguous; valid until ``buffers`` more joins."""
        if len(chunks) == 1 and not self._always:
            return chunks[0]  # already contiguous: compress it in place
        total = sum(len(c) for c in chunks)
        turn = self._turn
        self._turn = (turn + 1) % len(self._buffers)
        if len(self._buffers[turn]) < total:
            grown = max(total, min(2 * len(self._buffers[turn]), self._largest))  # large: doubled, up to a batch
            self._buffers[turn] = buffer(total if total < ZEROED_FROM else grown)
        buf = self._buffers[turn]
        out, base = memoryview(buf), ctypes.addressof(ctypes.c_char.from_buffer(buf))
        pos = 0
        for chunk in chunks:
            n = len(chunk)
            if n >= _MEMMOVE_BYTES and not chunk.readonly:  # live memory, a capture's mmap: no GIL held
                ctypes.memmove(base + pos, ctypes.addressof(ctypes.c_char.from_buffer(chunk)), n)
            else:
                out[pos:pos + n] = chunk
            pos += n
        return out[:pos]


class Gathered(NamedTuple):
    """Up to a frame's worth of pages of memory number ``memory``, gathered: ``raw`` is its non-zero pages.

    ``raw`` is one buffer, or the pieces of an encoder that copies nothing
    (pages that hold still): joining them cost a final round, made while
    calls wait, a copy into memory faulted in for it (5-20 µs a page here).
    """

    memory: int
    ranges: list[list[int]]
    zeros: list[list[int]]
    raw: memoryview | bytes | tuple[memoryview, ...]


def _bin_header(n: int) -> bytes:
    """The msgpack bin header of ``n`` bytes, in the shortest form, as ``msgpack.packb`` writes it."""
    if n < 1 << 8:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 1 << 16:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


class SnapshotEncoder:
    """Turn snapshots into frames (sans-IO: it returns bytes, it never writes).

    Use ``header()``, ``meta(snap)``, ``pages(index, runs)`` (any number of
    times) and ``end()``; or ``encode(snap)`` for all of them in order.
    ``copy_pages`` copies each frame's pages into a buffer of the encoder's
    before compressing them, for runs that view memory a running instance
    may write meanwhile: zstd then reads bytes that hold still.
    """

    def __init__(self, *, key: bytes | None = None, level: int = 1,
                 batch_pages: int = BATCH_PAGES, buffers: int = 1, copy_pages: bool = False) -> None:
        self._aead = check_key(key)
        self._salt = os.urandom(8) if self._aead else bytes(8)
        self._header: bytes | None = None
        self._level = level
        compressor(level)  # a bad level fails here, as the encoder is made
        self._joiner = _Joiner(buffers, always=copy_pages, largest=batch_pages * PAGE_BYTES)
        self._batch_pages = batch_pages
        self._copy_pages = copy_pages
        self._seq = 0
        self._pages = 0
        self.raw_bytes = 0  # page bytes handed in, zero pages included
        self.wire_bytes = 0

    def header(self, snap: Snapshot | None = None) -> bytes:
        """The header; give the snapshot whose META follows if it may have dropped segments."""
        version = 2 if snap is not None and snap.dropped else 1
        self._header = MAGIC + bytes([version, FLAG_ENCRYPTED if self._aead else 0]) + self._salt
        self.wire_bytes += HEADER_BYTES
        return self._header

    def _frame(self, ftype: int, payload: bytes) -> bytes:
        return b"".join(self._frame_parts(ftype, (payload,)))

    def _frame_parts(self, ftype: int, payload: tuple[bytes, ...]) -> tuple[bytes, ...]:
        """A frame of the ``payload`` pieces, as pieces: the head, the payload's pieces, the checksum.

        Nothing is joined: the checksum runs over the pieces in turn
        (``zlib.crc32`` lets go of the GIL on large inputs), so a large
        payload is never copied here.  Sealing needs the payload whole.
        """
        if self._aead is not None:
            if self._header is None:
                raise LocalSnapshotError("write the header first")
            nonce, aad = sealing(self._header, ftype, self._seq)
            payload = (self._aead.encrypt(nonce, payload[0] if len(payload) == 1 else b"".join(payload), aad),)
        self._seq += 1
        size = sum(len(p) for p in payload)
        head = FRAME_HEAD.pack(ftype, size)
        crc = zlib.crc32(head)
        for piece in payload:
            crc = zlib.crc32(piece, crc)
        self.wire_bytes += len(head) + size + CRC.size
        return (head, *payload, CRC.pack(crc))

    def meta(self, snap: Snapshot) -> bytes:
        body = {
            "module": snap.module_sha256,
            "state": snap.state_id,
            "base": snap.base_id,
            "memories": [[m.index, m.size_bytes, m.page_count] for m in snap.memories],
            "globals": [[g.index, g.valtype, _encode_value(g.valtype, g.value)] for g in snap.globals],
            "tables": [[t.index, t.reftype, list(t.elements)] for t in snap.tables],
        }
        if self._header is None or (self._header[6] == 1 and snap.dropped):
            raise LocalSnapshotError("write the header first, with header(snap) for a snapshot "
                                     "that has dropped segments")
        if self._header[6] == 2:
            body["dropped"] = [list(snap.dropped.data), list(snap.dropped.elems)]
        return self._frame(META, msgpack.packb(body, use_bin_type=True))

    def pages(self, index: int, runs: Iterable[PageRun]) -> list[bytes]:
        """Encode page runs of memory ``index`` into PAGES frames."""
        return list(self._frames(index, runs))

    def _frames(self, index: int, runs: Iterable[PageRun]) -> Iterator[bytes]:
        """``pages``, a frame at a time: each batch is gathered and compressed only when its frame is taken."""
        return map(self.batch_frame, self.batches(index, runs))

    def batches(self, index: int, runs: Iterable[PageRun]) -> Iterator[Gathered]:
        """The batches ``pages`` makes frames of, one by one; ``batch_frame`` each, in order, to get the frames.

        A batch's ``raw`` is valid until ``buffers`` more are gathered.
        The work here (the zero scan, the joining) holds the GIL; the work
        of ``batch_frame`` (zstd, AES-GCM) mostly does not.
        """
        for ranges, zeros, chunks in _page_batches(index, runs, self._batch_pages):
            npages = sum(n for _, n in ranges)
            self._pages += npages
            self.raw_bytes += npages * PAGE_BYTES
            if len(chunks) > 1 and not self._copy_pages:  # pages that hold still: compressed in place, in turn
                yield Gathered(index, ranges, zeros, tuple(chunks))
            else:
                yield Gathered(index, ranges, zeros, self._joiner.join(chunks) if chunks else b"")

    def batch_frame(self, batch: Gathered) -> bytes:
        """The PAGES frame of ``batch``: frames are numbered, so make them in the order of ``batches``."""
        return b"".join(self.batch_frame_parts(batch))

    def batch_frame_parts(self, batch: Gathered) -> tuple[bytes, ...]:
        """``batch_frame``'s bytes in pieces, the compressed pages one of them, never copied.

        The payload is the msgpack map ``{"m", "runs", "zero", "raw",
        "data"}``, byte for byte as ``msgpack.packb`` writes it, but packed
        without its data, whose bin header is written here: packing the
        data in copied the compressed pages (about 0.8 ms per frame, through
        a buffer grown by realloc into fresh pages) and joining the frame
        copied them again, both with the GIL held, on the bulk thread a
        node's event loop shares the GIL with.
        """
        raw, zstd = batch.raw, compressor(self._level)
        if isinstance(raw, tuple):  # pages not joined: one zstd frame over them, as ``compress`` of them joined
            size = sum(len(piece) for piece in raw)
            stream = zstd.compressobj(size=size)
            data = [out for out in (*map(stream.compress, raw), stream.flush()) if out]
        else:
            size, data = len(raw), [zstd.compress(raw)] if raw else []
        head = msgpack.packb({"m": batch.memory, "runs": batch.ranges, "zero": batch.zeros, "raw": size,
                              "data": b""}, use_bin_type=True)
        head = head[:-2] + _bin_header(sum(len(out) for out in data))  # the empty data's bin header, c4 00, is last
        return self._frame_parts(PAGES, (head, *data))

    def end(self) -> bytes:
        return self._frame(END, msgpack.packb({"frames": self._seq, "pages": self._pages}))

    def encode(self, snap: Snapshot) -> Iterator[bytes]:
        """The encoding of ``snap``: the header, then each frame whole."""
        yield self.header(snap)
        yield self.meta(snap)
        for m in snap.memories:
            yield from self._frames(m.index, m.runs)
        yield self.end()

    def encode_pieces(self, snap: Snapshot) -> Iterator[bytes]:
        """The bytes of ``encode``, in pieces that need not be whole frames (a PAGES frame's pages never copied)."""
        yield self.header(snap)
        yield self.meta(snap)
        for m in snap.memories:
            for batch in self.batches(m.index, m.runs):
                yield from self.batch_frame_parts(batch)
        yield self.end()


def encode(snap: Snapshot, *, key: bytes | None = None, level: int = 1) -> bytes:
    """Encode a snapshot into one bytes object."""
    return b"".join(SnapshotEncoder(key=key, level=level).encode(snap))
