"""Decoding the snapshot format (see ``_format``): a sans-IO decoder of frames into events.

``SnapshotDecoder`` checks everything it reads against the format and
against ``DecodeLimits`` before it allocates, and never raises anything but
a ``RemoteSnapshotError`` subclass (or ``LocalSnapshotError`` for a bad
key).  Its events, ``Meta``, ``PageBatch`` and ``End``, become a
``Snapshot`` in ``_snapshot.SnapshotAssembler``.
"""

from __future__ import annotations

import mmap
import zlib
from dataclasses import dataclass, field
from typing import Any, NoReturn

import msgpack
import zstandard
from cryptography.exceptions import InvalidTag

from ._errors import (
    AuthenticationError,
    CorruptSnapshotError,
    OversizedSnapshotError,
    TruncatedSnapshotError,
    UnsupportedVersionError,
)
from ._format import (CRC, END, FLAG_ENCRYPTED, FRAME_HEAD, HEADER_BYTES, MAGIC, META, PAGES, VERSION, VERSIONS,
                      check_key, sealing)
from ._fields import corrupt as _corrupt, decode_value as _decode_value, entries as _entries, want as _want
from ._memory import buffer, decompressor
from ._pages import PAGE_BYTES, WASM_PAGE_BYTES, PageRun
from ._reftypes import ref_class
from ._state import DroppedSegments, GlobalState, TableState, is_int


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds a decoder enforces before it allocates anything."""

    max_frame_bytes: int = 64 * 2**20
    max_memory_bytes: int = 4 * 2**30  # a wasm32 memory's maximum
    max_memories: int = 64
    max_globals: int = 1 << 20
    max_table_elements: int = 10_000_000
    max_dropped_segments: int = 100_000  # of each kind: wasmtime's limit on a module's segments


@dataclass(frozen=True)
class Meta:
    """The META frame: everything but the pages."""

    module_sha256: str
    state_id: bytes
    base_id: bytes | None
    memories: tuple[tuple[int, int, int], ...]  # (index, size_bytes, page_count)
    globals: tuple[GlobalState, ...]
    tables: tuple[TableState, ...]
    dropped: DroppedSegments = DroppedSegments()


@dataclass(frozen=True)
class PageBatch:
    """One PAGES frame, decompressed: runs of one memory, a delta's zero pages filled in.

    Runs may touch (``SnapshotAssembler`` joins them).  A full snapshot's
    runs are consecutive views into ``data``, the batch's decompressed bytes
    (None for a delta).
    """

    memory_index: int
    runs: tuple[PageRun, ...]
    data: memoryview | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class End:
    frames: int
    pages: int


#: What ``SnapshotDecoder.next_event`` returns.
Event = Meta | PageBatch | End


class SnapshotDecoder:
    """Turn bytes into snapshot events (sans-IO: feed bytes, pull events).

    ``feed(data)`` buffers input; ``next_event()`` returns a ``Meta``,
    ``PageBatch`` or ``End``, or None when more bytes are needed.  Any
    malformed input raises a ``RemoteSnapshotError`` subclass and the decoder
    stays broken: every later call raises the same error.  With
    ``reuse_buffer`` batches are decompressed into two buffers in turn, so a
    ``PageBatch``'s runs hold only until the second ``next_event`` after it.
    """

    def __init__(self, *, key: bytes | None = None, limits: DecodeLimits | None = None,
                 reuse_buffer: bool = False) -> None:
        self._aead = check_key(key)
        self._limits = limits or DecodeLimits()
        self._buf: bytes | bytearray = bytearray()
        self._off = 0  # where the unread input starts in _buf
        self._header: bytes | None = None
        self._seq = 0
        self._pages = 0
        self._meta: Meta | None = None
        self._done = False
        self._error: Exception | None = None
        self._expected_pages: dict[int, int] = {}
        self._next_page: dict[int, int] = {}
        # With reuse_buffer, batches are decompressed into these two buffers
        # in turn: a PageBatch's runs hold until the second event after it.
        self._reuse = reuse_buffer
        self._scratch: list[bytearray | mmap.mmap] = [bytearray(), bytearray()]

    @property
    def finished(self) -> bool:
        return self._done

    def feed(self, data: bytes) -> None:
        if self._error:
            raise self._error
        if self._done and data:
            self._fail(_corrupt("trailing bytes after the END frame"))
        if self._off == len(self._buf) and type(data) is bytes:
            self._buf, self._off = data, 0  # nothing pending: read the caller's bytes in place, uncopied
            return
        if isinstance(self._buf, bytes):
            self._buf = bytearray(memoryview(self._buf)[self._off:])
        else:
            del self._buf[:self._off]
        self._off = 0
        self._buf += data

    def _fail(self, exc: Exception) -> NoReturn:
        self._error = exc
        raise exc

    def next_event(self) -> Event | None:
        if self._error:
            raise self._error
        try:
            return self._next()
        except (CorruptSnapshotError, AuthenticationError, OversizedSnapshotError, UnsupportedVersionError) as exc:
            self._fail(exc)

    def _next(self) -> Event | None:
        buf, off = self._buf, self._off
        if self._header is None:
            if len(buf) - off < HEADER_BYTES:
                if len(buf) - off >= len(MAGIC) and bytes(buf[off:off + len(MAGIC)]) != MAGIC:
                    raise _corrupt("not a wasm-migrate snapshot (bad magic)")
                return None
            header = bytes(buf[off:off + HEADER_BYTES])
            if header[:6] != MAGIC:
                raise _corrupt("not a wasm-migrate snapshot (bad magic)")
            if header[6] not in VERSIONS:
                raise UnsupportedVersionError(f"snapshot format version {header[6]} is not supported "
                                              f"(this build reads versions 1 to {VERSION})")
            flags = header[7]
            if flags & ~FLAG_ENCRYPTED:
                raise _corrupt(f"unknown header flags 0x{flags:02x}")
            if flags & FLAG_ENCRYPTED and self._aead is None:
                raise AuthenticationError("snapshot is encrypted; a key is required to read it")
            if not flags & FLAG_ENCRYPTED and self._aead is not None:
                raise AuthenticationError("a key was given but the snapshot is not encrypted; "
                                          "refusing unauthenticated input")
            self._header = header
            off = self._off = off + HEADER_BYTES
        header = self._header
        if self._done:
            return None
        if len(buf) - off < FRAME_HEAD.size:
            return None
        ftype, length = FRAME_HEAD.unpack_from(buf, off)
        if ftype not in (META, PAGES, END):
            raise _corrupt(f"unknown frame type {ftype}")
        if length > self._limits.max_frame_bytes:
            raise OversizedSnapshotError(f"frame of {length} bytes exceeds the limit of "
                                         f"{self._limits.max_frame_bytes}")
        total = FRAME_HEAD.size + length + CRC.size
        if len(buf) - off < total:
            return None
        self._off = off + total
        payload = self._open_frame(buf, off, total, ftype)
        self._seq += 1
        try:
            body = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
        except Exception as exc:  # msgpack raises many types; all mean corruption
            raise _corrupt(f"frame {self._seq - 1} is not valid msgpack ({type(exc).__name__})") from None
        _want(isinstance(body, dict), "frame body is not a map")
        if ftype == META:
            return self._on_meta(body, header[6])
        if ftype == PAGES:
            return self._on_pages(body)
        return self._on_end(body)

    def _open_frame(self, buf: bytes | bytearray, off: int, total: int, ftype: int) -> bytes:
        """The checked (and decrypted) payload of the frame of ``total`` bytes at ``off``.

        It is read through a view that is released before returning, so the
        input is not copied and ``feed`` can still resize the buffer.
        """
        with memoryview(buf) as whole, whole[off:off + total] as frame, \
                frame[FRAME_HEAD.size:total - CRC.size] as payload:
            (crc,) = CRC.unpack_from(frame, total - CRC.size)
            if zlib.crc32(frame[:total - CRC.size]) != crc:
                raise _corrupt(f"checksum mismatch in frame {self._seq}")
            if self._aead is None:
                return bytes(payload)
            nonce, aad = sealing(self._header or b"", ftype, self._seq)
            try:
                return self._aead.decrypt(nonce, payload, aad)
            except InvalidTag:
                raise AuthenticationError(f"frame {self._seq} failed authentication: "
                                          "wrong key, or the snapshot was tampered with") from None

    def _on_meta(self, body: dict[Any, Any], version: int) -> Meta:
        _want(self._meta is None, "second META frame")
        fields = {"module", "state", "base", "memories", "globals", "tables"}
        _want(set(body) == (fields | {"dropped"} if version == 2 else fields), "META has wrong fields")
        module, state, base = body["module"], body["state"], body["base"]
        _want(isinstance(module, str) and len(module) == 64, "bad module digest")
        try:
            bytes.fromhex(module)
        except ValueError:
            raise _corrupt("bad module digest") from None
        _want(isinstance(state, bytes) and len(state) == 16, "bad state id")
        _want(base is None or (isinstance(base, bytes) and len(base) == 16), "bad base id")
        lim = self._limits
        memories = []
        for m in _entries(body["memories"], "memory", "memories", lim.max_memories):
            _want(all(is_int(x) for x in m), "bad memory entry")
            index, size, pages = m
            _want(size >= 0 and size % WASM_PAGE_BYTES == 0 and 0 <= pages <= size // PAGE_BYTES,
                  f"bad memory entry {m}")
            if size > lim.max_memory_bytes:
                raise OversizedSnapshotError(f"memory {index} of {size} bytes exceeds the limit of "
                                             f"{lim.max_memory_bytes}")
            memories.append((index, size, pages))
            self._expected_pages[index] = pages
            self._next_page[index] = 0
        globals_ = []
        for g in _entries(body["globals"], "global", "globals", lim.max_globals):
            _want(isinstance(g[1], str), "bad global entry")
            globals_.append(GlobalState(g[0], g[1], _decode_value(g[1], g[2], f"global {g[0]}")))
        tables = []
        total = 0
        for t in _entries(body["tables"], "table", "tables"):
            _want(isinstance(t[1], str) and ref_class(t[1]) is not None and isinstance(t[2], list),
                  "bad table entry")
            total += len(t[2])
            if total > lim.max_table_elements:
                raise OversizedSnapshotError(f"tables exceed the limit of {lim.max_table_elements} elements")
            elements = tuple(_decode_value(t[1], e, f"table {t[0]}") for e in t[2])
            tables.append(TableState(t[0], t[1], elements))
        dropped = self._dropped(body["dropped"]) if "dropped" in body else DroppedSegments()
        self._meta = Meta(module, state, base, tuple(memories), tuple(globals_), tuple(tables), dropped)
        return self._meta

    def _dropped(self, value: object) -> DroppedSegments:
        """META's "dropped": [data indices, element indices], each a rising list of u32."""
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, list) for v in value)):
            raise _corrupt("bad dropped-segments field")
        limit = self._limits.max_dropped_segments
        for kind, indices in zip(("data", "element"), value):
            if len(indices) > limit:
                raise OversizedSnapshotError(f"{len(indices)} dropped {kind} segments exceed the limit of {limit}")
            _want(all(is_int(k) and 0 <= k < 2**32 for k in indices)
                  and all(a < b for a, b in zip(indices, indices[1:])),
                  f"dropped {kind} segments are not rising segment indices")
        return DroppedSegments(tuple(value[0]), tuple(value[1]))

    def _on_pages(self, body: dict[Any, Any]) -> PageBatch:
        meta = self._meta
        if meta is None:
            raise _corrupt("PAGES before META")
        _want(set(body) == {"m", "runs", "zero", "raw", "data"}, "PAGES has wrong fields")
        index, ranges, zeros, raw, data = body["m"], body["runs"], body["zero"], body["raw"], body["data"]
        _want(is_int(index) and index in self._expected_pages, f"PAGES for unknown memory {index!r}")
        _want(isinstance(ranges, list) and isinstance(zeros, list) and is_int(raw) and isinstance(data, bytes),
              "bad PAGES body")
        size = dict((i, s) for i, s, _ in meta.memories)[index]
        cursor = self._next_page[index]
        npages = 0
        # Checked with plain comparisons, not helpers: a 64 MiB memory's
        # batches hold thousands of ranges (msgpack makes plain ints).
        for r in ranges:
            if not (type(r) is list and len(r) == 2 and type(r[0]) is int and type(r[1]) is int and r[1] > 0):
                raise _corrupt("bad page run")
            if r[0] < cursor:
                raise _corrupt("page runs overlap or are out of order")
            cursor = r[0] + r[1]
            npages += r[1]
        _want(cursor * PAGE_BYTES <= size, f"page {cursor - 1} lies outside memory {index}")
        zero_pages = 0
        for z in zeros:
            if not (type(z) is list and len(z) == 2 and type(z[0]) is int and type(z[1]) is int and z[1] > 0):
                raise _corrupt("bad zero-page range")
            zero_pages += z[1]
        nonzero = npages - zero_pages
        _want(nonzero >= 0 and raw == nonzero * PAGE_BYTES, "raw length does not match the page runs")
        if raw > self._limits.max_frame_bytes:
            raise OversizedSnapshotError(f"batch of {raw} raw bytes exceeds the limit")
        self._pages += npages
        _want(self._pages <= sum(p for _, _, p in meta.memories), "more pages than META announced")
        if raw:
            plain = self._decompress(data, raw)
        else:
            _want(data == b"", "zero-only batch carries data")
            plain = bytearray()
        # A delta's zero pages overwrite, so they become zero bytes; a full
        # snapshot's zero pages are simply absent.  The runs are views into
        # the decompressed batch: slicing out copies cost a third of a decode.
        fill_zeros = meta.base_id is not None
        view = memoryview(plain)
        runs: list[PageRun] = []
        nzeros = len(zeros)
        zi = pos = 0
        for first, count in ranges:
            p, end = first, first + count
            while p < end:
                if zi < nzeros and zeros[zi][0] == p:
                    z_count = zeros[zi][1]
                    if p + z_count > end:
                        raise _corrupt("zero range crosses a run boundary")
                    if fill_zeros:
                        runs.append(PageRun(p, bytes(z_count * PAGE_BYTES)))
                    p += z_count
                    zi += 1
                else:
                    nxt = zeros[zi][0] if zi < nzeros and zeros[zi][0] < end else end
                    if nxt <= p:
                        raise _corrupt("zero ranges overlap or are out of order")
                    size = (nxt - p) * PAGE_BYTES
                    runs.append(PageRun(p, view[pos:pos + size]))
                    pos += size
                    p = nxt
        _want(zi == len(zeros), "zero ranges lie outside the batch's runs")
        self._next_page[index] = cursor
        return PageBatch(index, tuple(runs), None if fill_zeros else view)

    def _decompress(self, data: bytes, raw: int) -> bytearray | memoryview:
        """Decompress a batch's page data of exactly ``raw`` bytes into a new buffer (or the reused one)."""
        if not self._reuse:
            plain: bytearray | memoryview = bytearray(raw)
        else:
            if len(self._scratch[0]) < raw:
                # large: fresh memory zstd faults in without the GIL (a batch in a buffer of its own keeps
                # a bytearray: malloc may hand back memory already faulted in, a new mapping never is)
                self._scratch[0] = buffer(raw, fault_in=False)
            plain = memoryview(self._scratch[0])[:raw]
            self._scratch.reverse()
        view = memoryview(plain)
        got = 0
        try:
            with decompressor().stream_reader(data) as reader:
                while got < raw and (n := reader.readinto(view[got:])):
                    got += n
                extra = reader.read(1)
        except zstandard.ZstdError as exc:
            raise _corrupt(f"page data does not decompress ({exc})") from None
        _want(got == raw and not extra, "page data has the wrong length")
        return plain

    def _on_end(self, body: dict[Any, Any]) -> End:
        meta = self._meta
        if meta is None:
            raise _corrupt("END before META")
        _want(set(body) == {"frames", "pages"}, "END has wrong fields")
        _want(body["frames"] == self._seq - 1, "frame count mismatch: frames were lost")
        _want(body["pages"] == self._pages == sum(p for _, _, p in meta.memories),
              "page count mismatch: pages were lost")
        self._done = True
        if len(self._buf) > self._off:
            raise _corrupt("trailing bytes after the END frame")
        return End(body["frames"], body["pages"])

    def close(self) -> None:
        """Declare the input complete; raises TruncatedSnapshotError if it is not."""
        if self._error:
            raise self._error
        if not self._done:
            self._fail(TruncatedSnapshotError("snapshot ends before its END frame (truncated)"))
