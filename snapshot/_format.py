"""The encoded snapshot format, with a sans-IO streaming encoder and decoder.

Layout::

    header  16 bytes: b"WMSNAP", version (u8), flags (u8), 8-byte nonce salt
    frame*  type (u8) | length (u32 BE) | payload | crc32 (u32 BE) of the rest

Frames are META (msgpack: module digest, state ids, memory sizes, globals,
tables), then PAGES (msgpack: memory index, page runs, zstd-compressed page
data) any number of times, then END (frame and page counts), so truncation is
always detected.  With a key, every payload is sealed with AES-GCM: the nonce
is the header's salt plus the frame's sequence number, and the header, frame
type and sequence number are authenticated, so frames cannot be dropped,
reordered or moved between snapshots without detection.  The crc32 catches
accidental corruption with or without a key.

Zero pages never travel.  Decoding never raises anything but a
``RemoteSnapshotError`` subclass (or ``LocalSnapshotError`` for a bad key).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from typing import Iterator

import msgpack
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._errors import (
    AuthenticationError,
    CorruptSnapshotError,
    LocalSnapshotError,
    OversizedSnapshotError,
    TruncatedSnapshotError,
    UnsupportedVersionError,
)
from ._state import PAGE_BYTES, GlobalState, MemoryState, PageRun, Snapshot, TableState, nonzero_runs

MAGIC = b"WMSNAP"
VERSION = 1
HEADER_BYTES = 16
FLAG_ENCRYPTED = 0x01
META, PAGES, END = 1, 2, 3
_FRAME_HEAD = struct.Struct(">BI")
_CRC = struct.Struct(">I")
_TAG_BYTES = 16
BATCH_PAGES = 1024  # 4 MiB of raw pages per frame: large enough for zstd, small enough to stream
_NUMERIC = {"i32": 32, "i64": 64, "f32": 32, "f64": 64, "v128": 128}


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds a decoder enforces before it allocates anything."""

    max_frame_bytes: int = 64 * 2**20
    max_memory_bytes: int = 4 * 2**30  # a wasm32 memory's maximum
    max_memories: int = 64
    max_globals: int = 1 << 20
    max_table_elements: int = 10_000_000


def _check_key(key: bytes | None) -> AESGCM | None:
    if key is None:
        return None
    if not isinstance(key, (bytes, bytearray)) or len(key) not in (16, 24, 32):
        raise LocalSnapshotError("an encryption key must be 16, 24 or 32 bytes (AES-128/192/256)")
    return AESGCM(bytes(key))


def generate_key() -> bytes:
    """Return a fresh random 256-bit key for ``to_bytes(key=...)``."""
    return AESGCM.generate_key(bit_length=256)


# --- encoding ----------------------------------------------------------------

def _encode_value(valtype: str, value):
    if valtype == "v128":
        return value.to_bytes(16, "little")
    return value


def _page_batches(index: int, runs, batch_pages: int) -> Iterator[tuple[list, list, list]]:
    """Split runs into batches of at most ``batch_pages`` pages.

    Yields (ranges, zero ranges, non-zero page chunks).  Zero pages inside
    the runs are named in the zero ranges and never sent.
    """
    ranges, zeros, chunks = [], [], []
    count = 0
    for run in runs:
        view = memoryview(run.data).cast("B") if not isinstance(run.data, bytes) else run.data
        page = run.first_page
        end = run.end_page
        while page < end:
            take = min(end - page, batch_pages - count)
            ranges.append([page, take])
            off = (page - run.first_page) * PAGE_BYTES
            piece = view[off:off + take * PAGE_BYTES]
            buf = piece if isinstance(piece, bytes) else bytes(piece)
            cursor = 0
            for a, b in nonzero_runs(buf):
                if a > cursor:
                    zeros.append([page + cursor, a - cursor])
                chunks.append(buf if (a, b) == (0, take) else buf[a * PAGE_BYTES:b * PAGE_BYTES])
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


class SnapshotEncoder:
    """Turn snapshots into frames (sans-IO: it returns bytes, it never writes).

    Use ``header()``, ``meta(snap)``, ``pages(index, runs)`` (any number of
    times) and ``end()``; or ``encode(snap)`` for all of them in order.
    """

    def __init__(self, *, key: bytes | None = None, level: int = 1,
                 batch_pages: int = BATCH_PAGES) -> None:
        self._aead = _check_key(key)
        self._salt = os.urandom(8) if self._aead else bytes(8)
        self._header = MAGIC + bytes([VERSION, FLAG_ENCRYPTED if self._aead else 0]) + self._salt
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._batch_pages = batch_pages
        self._seq = 0
        self._pages = 0
        self.raw_bytes = 0  # page bytes handed in, zero pages included
        self.wire_bytes = 0

    def header(self) -> bytes:
        self.wire_bytes += HEADER_BYTES
        return self._header

    def _frame(self, ftype: int, payload: bytes) -> bytes:
        if self._aead is not None:
            nonce = self._salt + self._seq.to_bytes(4, "big")
            payload = self._aead.encrypt(nonce, payload, self._header + bytes([ftype]) + self._seq.to_bytes(4, "big"))
        self._seq += 1
        head = _FRAME_HEAD.pack(ftype, len(payload))
        crc = zlib.crc32(payload, zlib.crc32(head))
        out = head + payload + _CRC.pack(crc)
        self.wire_bytes += len(out)
        return out

    def meta(self, snap: Snapshot) -> bytes:
        body = {
            "module": snap.module_sha256,
            "state": snap.state_id,
            "base": snap.base_id,
            "memories": [[m.index, m.size_bytes, m.page_count] for m in snap.memories],
            "globals": [[g.index, g.valtype, _encode_value(g.valtype, g.value)] for g in snap.globals],
            "tables": [[t.index, t.reftype, list(t.elements)] for t in snap.tables],
        }
        return self._frame(META, msgpack.packb(body, use_bin_type=True))

    def pages(self, index: int, runs) -> list[bytes]:
        """Encode page runs of memory ``index`` into PAGES frames."""
        out = []
        for ranges, zeros, chunks in _page_batches(index, runs, self._batch_pages):
            raw = b"".join(chunks)
            npages = sum(n for _, n in ranges)
            self._pages += npages
            self.raw_bytes += npages * PAGE_BYTES
            body = {"m": index, "runs": ranges, "zero": zeros, "raw": len(raw),
                    "data": self._compressor.compress(raw) if raw else b""}
            out.append(self._frame(PAGES, msgpack.packb(body, use_bin_type=True)))
        return out

    def end(self) -> bytes:
        return self._frame(END, msgpack.packb({"frames": self._seq, "pages": self._pages}))

    def encode(self, snap: Snapshot) -> Iterator[bytes]:
        yield self.header()
        yield self.meta(snap)
        for m in snap.memories:
            yield from self.pages(m.index, m.runs)
        yield self.end()


def encode(snap: Snapshot, *, key: bytes | None = None, level: int = 1) -> bytes:
    """Encode a snapshot into one bytes object."""
    return b"".join(SnapshotEncoder(key=key, level=level).encode(snap))


# --- decoding ----------------------------------------------------------------

@dataclass(frozen=True)
class Meta:
    """The META frame: everything but the pages."""

    module_sha256: str
    state_id: bytes
    base_id: bytes | None
    memories: tuple[tuple[int, int, int], ...]  # (index, size_bytes, page_count)
    globals: tuple[GlobalState, ...]
    tables: tuple[TableState, ...]


@dataclass(frozen=True)
class PageBatch:
    """One PAGES frame, decompressed: runs of one memory, zero pages filled in."""

    memory_index: int
    runs: tuple[PageRun, ...]


@dataclass(frozen=True)
class End:
    frames: int
    pages: int


def _corrupt(msg: str) -> CorruptSnapshotError:
    return CorruptSnapshotError(f"corrupt snapshot: {msg}")


def _want(cond: bool, msg: str) -> None:
    if not cond:
        raise _corrupt(msg)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _decode_value(valtype: str, value, where: str):
    if valtype == "v128":
        _want(isinstance(value, bytes) and len(value) == 16, f"{where} is not a v128")
        return int.from_bytes(value, "little")
    if valtype in _NUMERIC:
        bits = _NUMERIC[valtype]
        lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if valtype in ("i32", "i64") else (0, 1 << bits)
        _want(_is_int(value) and lo <= value < hi, f"{where} is not a valid {valtype}")
        return value
    _want(valtype in ("funcref", "externref"), f"{where} has unknown type {valtype!r}")
    _want(value is None or (_is_int(value) and value >= 0 and valtype == "funcref"),
          f"{where} is not a valid {valtype}")
    return value


class SnapshotDecoder:
    """Turn bytes into snapshot events (sans-IO: feed bytes, pull events).

    ``feed(data)`` buffers input; ``next_event()`` returns a ``Meta``,
    ``PageBatch`` or ``End``, or None when more bytes are needed.  Any
    malformed input raises a ``RemoteSnapshotError`` subclass and the decoder
    stays broken: every later call raises the same error.
    """

    def __init__(self, *, key: bytes | None = None, limits: DecodeLimits | None = None) -> None:
        self._aead = _check_key(key)
        self._limits = limits or DecodeLimits()
        self._buf = bytearray()
        self._header: bytes | None = None
        self._seq = 0
        self._pages = 0
        self._meta: Meta | None = None
        self._done = False
        self._error: Exception | None = None
        self._decompressor = zstandard.ZstdDecompressor()
        self._expected_pages: dict[int, int] = {}
        self._next_page: dict[int, int] = {}

    @property
    def finished(self) -> bool:
        return self._done

    def feed(self, data: bytes) -> None:
        if self._error:
            raise self._error
        if self._done and data:
            self._fail(_corrupt("trailing bytes after the END frame"))
        self._buf += data

    def _fail(self, exc: Exception):
        self._error = exc
        raise exc

    def next_event(self):
        if self._error:
            raise self._error
        try:
            return self._next()
        except (CorruptSnapshotError, AuthenticationError, OversizedSnapshotError, UnsupportedVersionError) as exc:
            self._fail(exc)

    def _next(self):
        if self._header is None:
            if len(self._buf) < HEADER_BYTES:
                if len(self._buf) >= len(MAGIC) and bytes(self._buf[:len(MAGIC)]) != MAGIC:
                    raise _corrupt("not a wasm-migrate snapshot (bad magic)")
                return None
            header = bytes(self._buf[:HEADER_BYTES])
            if header[:6] != MAGIC:
                raise _corrupt("not a wasm-migrate snapshot (bad magic)")
            if header[6] != VERSION:
                raise UnsupportedVersionError(f"snapshot format version {header[6]} is not supported "
                                              f"(this build reads version {VERSION})")
            flags = header[7]
            if flags & ~FLAG_ENCRYPTED:
                raise _corrupt(f"unknown header flags 0x{flags:02x}")
            if flags & FLAG_ENCRYPTED and self._aead is None:
                raise AuthenticationError("snapshot is encrypted; a key is required to read it")
            if not flags & FLAG_ENCRYPTED and self._aead is not None:
                raise AuthenticationError("a key was given but the snapshot is not encrypted; "
                                          "refusing unauthenticated input")
            self._header = header
            del self._buf[:HEADER_BYTES]
        if self._done:
            return None
        if len(self._buf) < _FRAME_HEAD.size:
            return None
        ftype, length = _FRAME_HEAD.unpack_from(self._buf)
        if ftype not in (META, PAGES, END):
            raise _corrupt(f"unknown frame type {ftype}")
        if length > self._limits.max_frame_bytes:
            raise OversizedSnapshotError(f"frame of {length} bytes exceeds the limit of "
                                         f"{self._limits.max_frame_bytes}")
        total = _FRAME_HEAD.size + length + _CRC.size
        if len(self._buf) < total:
            return None
        frame = bytes(self._buf[:total])
        del self._buf[:total]
        (crc,) = _CRC.unpack_from(frame, total - _CRC.size)
        if zlib.crc32(frame[:total - _CRC.size]) != crc:
            raise _corrupt(f"checksum mismatch in frame {self._seq}")
        payload = frame[_FRAME_HEAD.size:total - _CRC.size]
        if self._aead is not None:
            seq = self._seq.to_bytes(4, "big")
            try:
                payload = self._aead.decrypt(self._header[8:] + seq, payload, self._header + bytes([ftype]) + seq)
            except InvalidTag:
                raise AuthenticationError(f"frame {self._seq} failed authentication: "
                                          "wrong key, or the snapshot was tampered with") from None
        self._seq += 1
        try:
            body = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
        except Exception as exc:  # msgpack raises many types; all mean corruption
            raise _corrupt(f"frame {self._seq - 1} is not valid msgpack ({type(exc).__name__})") from None
        _want(isinstance(body, dict), "frame body is not a map")
        if ftype == META:
            return self._on_meta(body)
        if ftype == PAGES:
            return self._on_pages(body)
        return self._on_end(body)

    def _on_meta(self, body: dict) -> Meta:
        _want(self._meta is None, "second META frame")
        _want(set(body) == {"module", "state", "base", "memories", "globals", "tables"}, "META has wrong fields")
        module, state, base = body["module"], body["state"], body["base"]
        _want(isinstance(module, str) and len(module) == 64, "bad module digest")
        try:
            bytes.fromhex(module)
        except ValueError:
            raise _corrupt("bad module digest") from None
        _want(isinstance(state, bytes) and len(state) == 16, "bad state id")
        _want(base is None or (isinstance(base, bytes) and len(base) == 16), "bad base id")
        lim = self._limits
        mems = body["memories"]
        _want(isinstance(mems, list), "bad memory list")
        if len(mems) > lim.max_memories:
            raise OversizedSnapshotError(f"{len(mems)} memories exceed the limit of {lim.max_memories}")
        memories = []
        last = -1
        for m in mems:
            _want(isinstance(m, list) and len(m) == 3 and all(_is_int(x) for x in m), "bad memory entry")
            index, size, pages = m
            _want(index > last and size >= 0 and size % 65536 == 0 and 0 <= pages <= size // PAGE_BYTES,
                  f"bad memory entry {m}")
            if size > lim.max_memory_bytes:
                raise OversizedSnapshotError(f"memory {index} of {size} bytes exceeds the limit of "
                                             f"{lim.max_memory_bytes}")
            last = index
            memories.append((index, size, pages))
            self._expected_pages[index] = pages
            self._next_page[index] = 0
        globs = body["globals"]
        _want(isinstance(globs, list), "bad global list")
        if len(globs) > lim.max_globals:
            raise OversizedSnapshotError(f"{len(globs)} globals exceed the limit of {lim.max_globals}")
        globals_ = []
        last = -1
        for g in globs:
            _want(isinstance(g, list) and len(g) == 3 and _is_int(g[0]) and g[0] > last
                  and isinstance(g[1], str), "bad global entry")
            last = g[0]
            globals_.append(GlobalState(g[0], g[1], _decode_value(g[1], g[2], f"global {g[0]}")))
        tabs = body["tables"]
        _want(isinstance(tabs, list), "bad table list")
        tables = []
        total = 0
        last = -1
        for t in tabs:
            _want(isinstance(t, list) and len(t) == 3 and _is_int(t[0]) and t[0] > last
                  and t[1] in ("funcref", "externref") and isinstance(t[2], list), "bad table entry")
            last = t[0]
            total += len(t[2])
            if total > lim.max_table_elements:
                raise OversizedSnapshotError(f"tables exceed the limit of {lim.max_table_elements} elements")
            elements = tuple(_decode_value(t[1], e, f"table {t[0]}") for e in t[2])
            tables.append(TableState(t[0], t[1], elements))
        self._meta = Meta(module, state, base, tuple(memories), tuple(globals_), tuple(tables))
        return self._meta

    def _on_pages(self, body: dict) -> PageBatch:
        _want(self._meta is not None, "PAGES before META")
        _want(set(body) == {"m", "runs", "zero", "raw", "data"}, "PAGES has wrong fields")
        index, ranges, zeros, raw, data = body["m"], body["runs"], body["zero"], body["raw"], body["data"]
        _want(_is_int(index) and index in self._expected_pages, f"PAGES for unknown memory {index!r}")
        _want(isinstance(ranges, list) and isinstance(zeros, list) and _is_int(raw) and isinstance(data, bytes),
              "bad PAGES body")
        size = dict((i, s) for i, s, _ in self._meta.memories)[index]
        cursor = self._next_page[index]
        npages = 0
        for r in ranges:
            _want(isinstance(r, list) and len(r) == 2 and _is_int(r[0]) and _is_int(r[1]) and r[1] > 0,
                  "bad page run")
            _want(r[0] >= cursor, "page runs overlap or are out of order")
            cursor = r[0] + r[1]
            _want(cursor * PAGE_BYTES <= size, f"page {cursor - 1} lies outside memory {index}")
            npages += r[1]
        zero_pages = 0
        for z in zeros:
            _want(isinstance(z, list) and len(z) == 2 and _is_int(z[0]) and _is_int(z[1]) and z[1] > 0,
                  "bad zero-page range")
            zero_pages += z[1]
        nonzero = npages - zero_pages
        _want(nonzero >= 0 and raw == nonzero * PAGE_BYTES, "raw length does not match the page runs")
        if raw > self._limits.max_frame_bytes:
            raise OversizedSnapshotError(f"batch of {raw} raw bytes exceeds the limit")
        self._pages += npages
        _want(self._pages <= sum(p for _, _, p in self._meta.memories), "more pages than META announced")
        if raw:
            try:
                plain = self._decompressor.decompress(data, max_output_size=raw)
            except zstandard.ZstdError as exc:
                raise _corrupt(f"page data does not decompress ({exc})") from None
            _want(len(plain) == raw, "page data has the wrong length")
        else:
            _want(data == b"", "zero-only batch carries data")
            plain = b""
        # A delta's zero pages overwrite, so they become zero bytes; a full
        # snapshot's zero pages are simply absent.
        fill_zeros = self._meta.base_id is not None
        pieces: list[list] = []  # [first_page, end_page, [chunks]]

        def add(first: int, count: int, chunk: bytes) -> None:
            if pieces and pieces[-1][1] == first:
                pieces[-1][1] += count
                pieces[-1][2].append(chunk)
            else:
                pieces.append([first, first + count, [chunk]])

        zi = pos = 0
        for first, count in ranges:
            p, end = first, first + count
            while p < end:
                if zi < len(zeros) and zeros[zi][0] == p:
                    z_count = zeros[zi][1]
                    _want(p + z_count <= end, "zero range crosses a run boundary")
                    if fill_zeros:
                        add(p, z_count, bytes(z_count * PAGE_BYTES))
                    p += z_count
                    zi += 1
                else:
                    nxt = zeros[zi][0] if zi < len(zeros) and zeros[zi][0] < end else end
                    _want(nxt > p, "zero ranges overlap or are out of order")
                    add(p, nxt - p, plain[pos:pos + (nxt - p) * PAGE_BYTES])
                    pos += (nxt - p) * PAGE_BYTES
                    p = nxt
        _want(zi == len(zeros), "zero ranges lie outside the batch's runs")
        runs = [PageRun(first, chunks[0] if len(chunks) == 1 else b"".join(chunks)) for first, _, chunks in pieces]
        self._next_page[index] = cursor
        return PageBatch(index, tuple(runs))

    def _on_end(self, body: dict) -> End:
        _want(self._meta is not None, "END before META")
        _want(set(body) == {"frames", "pages"}, "END has wrong fields")
        _want(body["frames"] == self._seq - 1, "frame count mismatch: frames were lost")
        _want(body["pages"] == self._pages == sum(p for _, _, p in self._meta.memories),
              "page count mismatch: pages were lost")
        self._done = True
        if self._buf:
            raise _corrupt("trailing bytes after the END frame")
        return End(body["frames"], body["pages"])

    def close(self) -> None:
        """Declare the input complete; raises TruncatedSnapshotError if it is not."""
        if self._error:
            raise self._error
        if not self._done:
            self._fail(TruncatedSnapshotError("snapshot ends before its END frame (truncated)"))


class SnapshotAssembler:
    """Collect decoder events into a Snapshot (what ``decode`` does, streamed).

    ``add(event)`` takes the events of one encoded snapshot in order;
    ``snapshot()`` returns it once the END event was added.
    """

    def __init__(self) -> None:
        self._meta: Meta | None = None
        self._runs: dict[int, list[list]] = {}  # memory -> [[first_page, end_page, [chunks]]]
        self._ended = False

    def add(self, event) -> None:
        if isinstance(event, Meta):
            self._meta = event
            self._runs = {i: [] for i, _, _ in event.memories}
        elif isinstance(event, PageBatch):
            bucket = self._runs[event.memory_index]
            for r in event.runs:
                if bucket and bucket[-1][1] == r.first_page:
                    bucket[-1][1] = r.end_page
                    bucket[-1][2].append(r.data)
                else:
                    bucket.append([r.first_page, r.end_page, [r.data]])
        elif isinstance(event, End):
            self._ended = True

    @property
    def complete(self) -> bool:
        return self._ended

    def snapshot(self) -> Snapshot:
        """The assembled snapshot; raises TruncatedSnapshotError before END."""
        if not self._ended or self._meta is None:
            raise TruncatedSnapshotError("snapshot ends before its END frame (truncated)")
        meta = self._meta
        memories = tuple(
            MemoryState(i, size, tuple(PageRun(first, chunks[0] if len(chunks) == 1 else b"".join(chunks))
                                       for first, _, chunks in self._runs[i]))
            for i, size, _ in meta.memories)
        return Snapshot(module_sha256=meta.module_sha256, state_id=meta.state_id, base_id=meta.base_id,
                        memories=memories, globals=meta.globals, tables=meta.tables)


def decode(data: bytes, *, key: bytes | None = None, limits: DecodeLimits | None = None) -> Snapshot:
    """Decode one encoded snapshot completely.

    Raises CorruptSnapshotError, TruncatedSnapshotError,
    UnsupportedVersionError, AuthenticationError or OversizedSnapshotError.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CorruptSnapshotError(f"expected bytes, got {type(data).__name__}")
    dec = SnapshotDecoder(key=key, limits=limits)
    dec.feed(bytes(data))
    assembler = SnapshotAssembler()
    while (event := dec.next_event()) is not None:
        assembler.add(event)
    dec.close()
    return assembler.snapshot()
