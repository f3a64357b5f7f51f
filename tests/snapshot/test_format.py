"""The encoded format: round trips, streaming, and refusal of bad input."""

import dataclasses
import mmap
import random
import struct
import zlib

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import snapshot
from snapshot import (
    AuthenticationError,
    CorruptSnapshotError,
    DecodeLimits,
    OversizedSnapshotError,
    PageRun,
    RemoteSnapshotError,
    Snapshot,
    SnapshotDecoder,
    SnapshotEncoder,
    TruncatedSnapshotError,
    UnsupportedVersionError,
)
from snapshot._format import BATCH_PAGES
from snapshot._state import DroppedSegments, GlobalState, MemoryState, TableState

from damage import EDITS, damage

PAGE = snapshot.PAGE_BYTES

_VALUES = {
    "i32": st.integers(-(2**31), 2**31 - 1),
    "i64": st.integers(-(2**63), 2**63 - 1),
    "f32": st.integers(0, 2**32 - 1),
    "f64": st.integers(0, 2**64 - 1),
    "v128": st.integers(0, 2**128 - 1),
    "funcref": st.one_of(st.none(), st.integers(0, 1000)),
    "externref": st.none(),
    "i31ref": st.one_of(st.none(), st.integers(-(2**30), 2**30 - 1)),
    "(ref i31)": st.integers(-(2**30), 2**30 - 1),
    "(ref null $3)": st.one_of(st.none(), st.integers(0, 1000)),
    "(ref $70)": st.integers(0, 1000),
    "nullref": st.none(),
    "nullexnref": st.none(),
}
_REFS = sorted(t for t in _VALUES if t not in ("i32", "i64", "f32", "f64", "v128"))


@st.composite
def page_data(draw):
    kind = draw(st.sampled_from(["zero", "byte", "random", "text"]))
    if kind == "zero":
        return bytes(PAGE)
    if kind == "byte":
        return bytes([draw(st.integers(1, 255))]) * PAGE
    if kind == "random":
        return random.Random(draw(st.integers())).randbytes(PAGE)
    return ((b"int %d ptr 0x%x " % (draw(st.integers()), draw(st.integers(0, 2**32)))) * 100 + bytes(PAGE))[:PAGE]


@st.composite
def snapshots(draw, delta=None):
    is_delta = draw(st.booleans()) if delta is None else delta
    memories = []
    for index in range(draw(st.integers(0, 3))):
        size_pages = draw(st.integers(0, 6)) * 16
        pages = sorted(draw(st.sets(st.integers(0, max(size_pages - 1, 0)), max_size=min(size_pages, 40))))
        chunks = []
        for p in pages:
            data = draw(page_data())
            if not is_delta and data == bytes(PAGE):
                continue  # full snapshots hold only non-zero pages
            chunks.append((p, data))
        runs = snapshot._pages.merge_runs(chunks)
        memories.append(MemoryState(index * 2, size_pages * PAGE, runs))
    globals_ = []
    for i in range(draw(st.integers(0, 8))):
        vt = draw(st.sampled_from(sorted(_VALUES)))
        globals_.append(GlobalState(i * 3, vt, draw(_VALUES[vt])))
    tables = []
    for i in range(draw(st.integers(0, 2))):
        rt = draw(st.sampled_from(_REFS))
        tables.append(TableState(i, rt, tuple(draw(st.lists(_VALUES[rt], max_size=30)))))
    indices = st.sets(st.integers(0, 2**32 - 1), max_size=20).map(lambda s: tuple(sorted(s)))
    dropped = DroppedSegments(draw(indices), draw(indices)) if draw(st.booleans()) else DroppedSegments()
    return Snapshot(
        module_sha256=draw(st.binary(min_size=32, max_size=32)).hex(),
        state_id=draw(st.binary(min_size=16, max_size=16)),
        base_id=draw(st.binary(min_size=16, max_size=16)) if is_delta else None,
        memories=tuple(memories), globals=tuple(globals_), tables=tuple(tables), dropped=dropped)


KEY = bytes(range(32))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(snapshots(), st.booleans(), st.integers(1, 5))
def test_any_snapshot_round_trips(snap, encrypt, batch_pages):
    key = KEY if encrypt else None
    data = b"".join(SnapshotEncoder(key=key, batch_pages=batch_pages).encode(snap))
    assert Snapshot.from_bytes(data, key=key) == snap
    assert data[6] == (2 if snap.dropped else 1)  # version 1 unless segments were dropped


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(snapshots(), st.integers(1, 50))
def test_streaming_decoder_accepts_any_fragmentation(snap, piece):
    data = snap.to_bytes()
    dec = SnapshotDecoder()
    events = []
    for i in range(0, len(data), piece):
        dec.feed(data[i:i + piece])
        while (e := dec.next_event()) is not None:
            events.append(e)
    dec.close()
    assert isinstance(events[0], snapshot.Meta) and isinstance(events[-1], snapshot.End)
    pages = sum(r.page_count for e in events if isinstance(e, snapshot.PageBatch) for r in e.runs)
    assert pages == snap.page_count


def _sample():
    rng = random.Random(7)
    runs = (PageRun(0, rng.randbytes(PAGE) + bytes(100) * 40 + bytes(96)), PageRun(5, b"\x01" * PAGE * 3))
    return Snapshot(
        module_sha256="ab" * 32, state_id=b"s" * 16,
        memories=(MemoryState(0, 65536, runs),),
        globals=(GlobalState(0, "i32", 5), GlobalState(1, "v128", 2**127 + 3), GlobalState(2, "f32", 0x7FA00001)),
        tables=(TableState(0, "funcref", (None, 1, 2)), TableState(1, "(ref $2)", (0, 3)),
                TableState(2, "i31ref", (None, -(2**30), 2**30 - 1))))


def _sample_dropped():
    return dataclasses.replace(_sample(), dropped=DroppedSegments((0, 3, 64, 65, 2**31), (1, 130)))


@pytest.mark.parametrize("sample", [_sample, _sample_dropped])
def test_fuzzed_encodings_are_rejected_or_decode_exactly(sample):
    """Thousands of mutated encodings: each is refused with a
    RemoteSnapshotError or decodes to exactly the original."""
    snap = sample()
    rng = random.Random(1234)
    for key in (None, KEY):
        good = SnapshotEncoder(key=key, batch_pages=2).encode(snap)
        good = b"".join(good)
        outcomes = {"rejected": 0, "same": 0}
        for _ in range(2500):
            data = bytearray(good)
            op = rng.randrange(6)
            at = rng.randrange(len(data))
            if op < len(EDITS):
                damage(data, rng, op, at, delete_max=64, insert_max=16)
            elif op == 4:
                data = data[:at]
            else:
                span = rng.randrange(1, 32)
                data[at:at] = data[at:at + span]  # duplicate a slice
            try:
                decoded = Snapshot.from_bytes(bytes(data), key=key)
            except RemoteSnapshotError:
                outcomes["rejected"] += 1
                continue
            assert decoded == snap
            outcomes["same"] += 1
        assert outcomes["rejected"] > 2000, outcomes


@pytest.mark.parametrize("sample", [_sample, _sample_dropped])
def test_every_truncation_is_reported_as_truncated_or_corrupt(sample):
    data = sample().to_bytes()
    for n in range(len(data)):
        with pytest.raises((TruncatedSnapshotError, CorruptSnapshotError)):
            Snapshot.from_bytes(data[:n])


def test_wrong_version_is_refused():
    data = bytearray(_sample().to_bytes())
    data[6] = 9
    with pytest.raises(UnsupportedVersionError, match="version 9"):
        Snapshot.from_bytes(bytes(data))


def _forged(version: int, **changes) -> bytes:
    """An encoding of ``_sample_dropped()`` under header ``version`` whose META body has ``changes``
    (a value of None removes the field), with valid checksums."""
    snap = _sample_dropped()
    enc = SnapshotEncoder()
    enc.header(snap)
    body = msgpack.unpackb(enc.meta(snap)[5:-4])
    for name, value in changes.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    header = snapshot._format.MAGIC + bytes([version, 0]) + bytes(8)
    enc = SnapshotEncoder()
    enc._header = header
    frames = [enc._frame(snapshot._format.META, msgpack.packb(body, use_bin_type=True))]
    frames += [f for m in snap.memories for f in enc.pages(m.index, m.runs)]
    return header + b"".join(frames) + enc.end()


def test_forged_dropped_segment_fields_are_refused():
    assert Snapshot.from_bytes(_forged(2)) == _sample_dropped()
    assert Snapshot.from_bytes(_forged(1, dropped=None)).dropped == DroppedSegments()
    bad = [
        (1, {}),  # "dropped" in a version 1 META
        (2, {"dropped": None}),  # missing in version 2
        (2, {"dropped": [[1, 2]]}),
        (2, {"dropped": [[1], [2], []]}),
        (2, {"dropped": {"data": []}}),
        (2, {"dropped": [[1, 1], []]}),  # repeated
        (2, {"dropped": [[], [5, 3]]}),  # falling
        (2, {"dropped": [[-1], []]}),
        (2, {"dropped": [[2**32], []]}),
        (2, {"dropped": [[True], []]}),
        (2, {"dropped": [["1"], []]}),
        (2, {"dropped": [[1.0], []]}),
        (2, {"dropped": [[], None]}),
    ]
    for version, changes in bad:
        with pytest.raises(CorruptSnapshotError):
            Snapshot.from_bytes(_forged(version, **changes))
    with pytest.raises(OversizedSnapshotError, match="dropped data segments"):
        Snapshot.from_bytes(_forged(2, dropped=[list(range(11)), []]), limits=DecodeLimits(max_dropped_segments=10))
    Snapshot.from_bytes(_forged(2, dropped=[list(range(10)), []]), limits=DecodeLimits(max_dropped_segments=10))


def test_an_encoder_refuses_dropped_segments_under_a_version_1_header():
    enc = SnapshotEncoder()
    enc.header()
    with pytest.raises(snapshot.LocalSnapshotError, match="header"):
        enc.meta(_sample_dropped())
    with pytest.raises(snapshot.LocalSnapshotError, match="header"):
        SnapshotEncoder().meta(_sample())


def test_wrong_key_missing_key_and_unexpected_plaintext_are_refused():
    enc = _sample().to_bytes(key=KEY)
    with pytest.raises(AuthenticationError, match="wrong key"):
        Snapshot.from_bytes(enc, key=bytes(32))
    with pytest.raises(AuthenticationError, match="key is required"):
        Snapshot.from_bytes(enc)
    with pytest.raises(AuthenticationError, match="not encrypted"):
        Snapshot.from_bytes(_sample().to_bytes(), key=KEY)


def _frames(data: bytes):
    pos, out = 16, []
    while pos < len(data):
        ftype, length = struct.unpack_from(">BI", data, pos)
        out.append((pos, ftype, length))
        pos += 5 + length + 4
    return out


def _rewrite_crc(data: bytearray, pos: int, length: int) -> None:
    end = pos + 5 + length
    struct.pack_into(">I", data, end, zlib.crc32(bytes(data[pos:end])))


def test_tampering_with_a_valid_checksum_is_caught_by_authentication():
    data = bytearray(_sample().to_bytes(key=KEY))
    pos, _, length = _frames(bytes(data))[1]
    data[pos + 10] ^= 0x40
    _rewrite_crc(data, pos, length)
    with pytest.raises(AuthenticationError, match="tampered"):
        Snapshot.from_bytes(bytes(data), key=KEY)


def test_dropping_or_reordering_encrypted_frames_is_caught():
    data = _sample().to_bytes(key=KEY)
    (h, *frames) = [data[:16]] + [data[p:p + 9 + n] for p, _, n in _frames(data)]
    swapped = h + frames[0] + frames[2] + frames[1] + b"".join(frames[3:])
    dropped = h + frames[0] + b"".join(frames[2:])
    for bad in (swapped, dropped):
        with pytest.raises(AuthenticationError):
            Snapshot.from_bytes(bad, key=KEY)


def test_dropping_a_plaintext_frame_is_caught_by_the_end_frame():
    data = SnapshotEncoder(batch_pages=1).encode(_sample())
    data = b"".join(data)
    frames = [data[p:p + 9 + n] for p, _, n in _frames(data)]
    with pytest.raises(CorruptSnapshotError, match="lost"):
        Snapshot.from_bytes(data[:16] + frames[0] + b"".join(frames[2:]))


def test_oversized_frames_and_memories_are_refused_before_allocation():
    data = _sample().to_bytes()
    with pytest.raises(OversizedSnapshotError, match="frame"):
        Snapshot.from_bytes(data, limits=DecodeLimits(max_frame_bytes=64))
    with pytest.raises(OversizedSnapshotError, match="memory 0"):
        Snapshot.from_bytes(data, limits=DecodeLimits(max_memory_bytes=1024))
    # A forged header claiming a 4 GiB frame is refused without waiting for it.
    forged = data[:16] + struct.pack(">BI", 1, 2**32 - 1)
    dec = SnapshotDecoder()
    dec.feed(forged)
    with pytest.raises(OversizedSnapshotError):
        dec.next_event()


def test_trailing_bytes_are_refused():
    with pytest.raises(CorruptSnapshotError, match="trailing"):
        Snapshot.from_bytes(_sample().to_bytes() + b"\0")


def test_a_broken_decoder_stays_broken():
    dec = SnapshotDecoder()
    dec.feed(b"NOTSNAP" + bytes(20))
    with pytest.raises(CorruptSnapshotError):
        dec.next_event()
    with pytest.raises(CorruptSnapshotError):
        dec.feed(b"more")


@pytest.mark.parametrize("key", [b"short", "a string", bytes(33)])
def test_bad_keys_are_a_local_error(key):
    with pytest.raises(snapshot.LocalSnapshotError, match="16, 24 or 32"):
        _sample().to_bytes(key=key)


def test_non_bytes_input_is_refused():
    with pytest.raises(CorruptSnapshotError):
        Snapshot.from_bytes("not bytes")


def test_equality_compares_contents_not_layout():
    snap = _sample()
    m = snap.memories[0]
    # The same bytes split differently, zero pages spelled out: same state.

    spelled = dataclasses.replace(snap, memories=(MemoryState(0, m.size_bytes, (
        PageRun(0, bytes(m.runs[0].data) + bytes(3 * PAGE) + bytes(m.runs[1].data)),)),))
    assert spelled == snap and spelled.same_state(snap)
    changed = bytearray(bytes(m.runs[1].data))
    changed[100] ^= 1
    other = dataclasses.replace(snap, memories=(MemoryState(0, m.size_bytes, (m.runs[0], PageRun(5, bytes(changed)))),))
    assert other != snap and not other.same_state(snap)
    assert dataclasses.replace(snap, state_id=b"x" * 16) != snap
    assert dataclasses.replace(snap, state_id=b"x" * 16).same_state(snap)
    assert not _sample_dropped().same_state(snap) and _sample_dropped() != snap


def _batches_by_copying(runs, batch_pages):
    """The encoder's batches as first written: each piece copied into bytes, the chunks joined."""
    ranges, zeros, chunks, count = [], [], [], 0
    for run in runs:
        data = bytes(run.data)
        page = run.first_page
        while page < run.end_page:
            take = min(run.end_page - page, batch_pages - count)
            ranges.append([page, take])
            buf = data[(page - run.first_page) * PAGE:(page - run.first_page + take) * PAGE]
            cursor = 0
            for a, b in snapshot._pages.nonzero_runs(buf):
                if a > cursor:
                    zeros.append([page + cursor, a - cursor])
                chunks.append(buf[a * PAGE:b * PAGE])
                cursor = b
            if cursor < take:
                zeros.append([page + cursor, take - cursor])
            count += take
            page += take
            if count == batch_pages:
                yield ranges, zeros, b"".join(chunks)
                ranges, zeros, chunks, count = [], [], [], 0
    if ranges:
        yield ranges, zeros, b"".join(chunks)


def _as(kind: str, data: bytes):
    if kind == "bytes":
        return data
    if kind == "bytearray":
        return bytearray(data)
    region = mmap.mmap(-1, len(data))  # as copy_out hands out large copies
    region[:] = data
    return memoryview(region)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(snapshots(), st.integers(1, 20), st.sampled_from(["bytes", "bytearray", "mmap"]))
def test_batches_from_memoryviews_are_those_of_copied_bytes(snap, batch_pages, kind):
    """Zero-copy batching yields the same ranges, zero ranges and page bytes, so the same frames."""
    joiner = snapshot._format._Joiner()
    for m in snap.memories:
        runs = tuple(PageRun(r.first_page, _as(kind, bytes(r.data))) for r in m.runs if len(r.data))
        ours = [(r, z, bytes(joiner.join(c)) if c else b"")
                for r, z, c in snapshot._format._page_batches(m.index, runs, batch_pages)]
        assert ours == list(_batches_by_copying(runs, batch_pages))
        copied = SnapshotEncoder(batch_pages=batch_pages)
        viewed = SnapshotEncoder(batch_pages=batch_pages)
        assert viewed.pages(m.index, runs) == copied.pages(m.index, tuple(PageRun(r.first_page, bytes(r.data))
                                                                          for r in runs))


@pytest.mark.parametrize("valtype, value", [
    ("anyref", None), ("exnref", None), ("structref", None), ("(ref null $01)", None), ("(ref  i31)", 1),
    ("(ref null $99999999999)", None), ("i31ref", 2**30), ("i31ref", -(2**30) - 1), ("(ref i31)", None),
    ("(ref $2)", None), ("(ref $2)", -1), ("nullref", 0), ("funcref", True), ("i31ref", 1.0), (7, None),
])
def test_decoding_refuses_reference_types_and_values_no_capture_makes(valtype, value):
    for snap in (Snapshot(module_sha256="ab" * 32, state_id=b"s" * 16, globals=(GlobalState(0, valtype, value),)),
                 Snapshot(module_sha256="ab" * 32, state_id=b"s" * 16, tables=(TableState(0, valtype, (value,)),))):
        with pytest.raises(CorruptSnapshotError):
            Snapshot.from_bytes(snap.to_bytes())


def test_encoding_is_lazy_a_frame_of_pages_at_a_time():
    # A move streams a round as it is encoded: taking the first PAGES frame
    # must not encode the whole memory (a 256 MiB round held all 31 MiB of
    # its frames, and an incompressible one would hold as much as the memory).
    pages = 4 * BATCH_PAGES
    data = random.Random(7).randbytes(pages * PAGE)
    snap = Snapshot(module_sha256="ab" * 32, state_id=b"s" * 16,
                    memories=(MemoryState(0, pages * PAGE, (PageRun(0, data),)),))
    encoder = SnapshotEncoder()
    frames = encoder.encode(snap)
    taken = [next(frames) for _ in range(3)]  # the header, META and the first PAGES frame
    assert encoder.raw_bytes == BATCH_PAGES * PAGE
    rest = list(frames)
    assert encoder.raw_bytes == pages * PAGE and len(rest) == 4  # three more PAGES frames and END
    assert Snapshot.from_bytes(b"".join(taken + rest)).memories[0].runs[0].data == data


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(snapshots(), st.booleans(), st.integers(1, 5))
def test_pieces_join_to_the_whole_encoding(snap, encrypt, batch_pages):
    """``encode_pieces`` writes the bytes ``encode`` does, and a frame's parts join to ``batch_frame``."""
    salt = bytes(range(8))
    whole = SnapshotEncoder(key=KEY if encrypt else None, batch_pages=batch_pages)
    pieces = SnapshotEncoder(key=KEY if encrypt else None, batch_pages=batch_pages)
    whole._salt = pieces._salt = salt  # the same nonces, so the same sealed bytes
    data = b"".join(pieces.encode_pieces(snap))
    assert data == b"".join(whole.encode(snap))
    assert pieces.wire_bytes == whole.wire_bytes == len(data)
    assert Snapshot.from_bytes(data, key=KEY if encrypt else None) == snap


def test_a_frames_compressed_pages_are_a_part_of_their_own():
    # The PAGES frame's compressed pages travel as the very bytes zstd made,
    # between the head and the checksum: no copy of them is made to frame them.
    pages = BATCH_PAGES
    data = random.Random(3).randbytes(pages * PAGE)
    snap = Snapshot(module_sha256="ab" * 32, state_id=b"s" * 16,
                    memories=(MemoryState(0, pages * PAGE, (PageRun(0, data),)),))
    pieces = list(SnapshotEncoder().encode_pieces(snap))
    assert len(pieces) == 2 + 4 + 1  # header, META, a PAGES frame in four parts, END
    frame_head, head, compressed, crc = pieces[2:6]
    assert frame_head == struct.pack(">BI", 2, len(head) + len(compressed))
    assert len(compressed) > len(data) // 2 and head[-5:-4] == b"\xc6"  # a bin32 header ends the head
    assert crc == struct.pack(">I", zlib.crc32(compressed, zlib.crc32(head, zlib.crc32(frame_head))))


@pytest.mark.parametrize("buffers", [1, 3])
def test_a_joiner_past_its_small_size_takes_zeroed_memory(buffers):
    joiner = snapshot._format._Joiner(buffers, always=True, largest=256 * PAGE)
    rng = random.Random(5)
    for pages in (1, 2, 70, 71, 300, 64, 3):
        chunks = [memoryview(rng.randbytes(PAGE * n)) for n in (pages // 2, pages - pages // 2) if n]
        assert bytes(joiner.join(chunks)) == b"".join(chunks)
    # small joins keep small bytearrays; large ones take zeroed memory
    assert all(isinstance(b, mmap.mmap) if len(b) > 2 * PAGE else isinstance(b, bytearray) for b in joiner._buffers)
    if buffers == 1:  # 70 pages, then 71 doubled it (within ``largest``), then 300 went past ``largest``
        assert len(joiner._buffers[0]) == 300 * PAGE
        joiner = snapshot._format._Joiner(1, always=True, largest=256 * PAGE)
        for pages in (70, 71):
            joiner.join([memoryview(bytes(PAGE * pages))])
        assert len(joiner._buffers[0]) == 140 * PAGE


def test_a_batch_of_many_runs_is_compressed_in_place_and_decodes_as_a_copy_does():
    # A final round is many single pages: compressed in turn, in place (one
    # zstd frame streamed over them), they decode to the pages a copy holds.
    # The zstd frames need not be the same bytes.
    rng = random.Random(11)
    pages = sorted(rng.sample(range(4 * BATCH_PAGES), BATCH_PAGES + 300))
    runs = tuple(PageRun(p, rng.randbytes(PAGE // 4) + bytes(PAGE - PAGE // 4)) for p in pages)
    snap = Snapshot(module_sha256="ab" * 32, state_id=b"s" * 16, base_id=b"b" * 16,
                    memories=(MemoryState(0, 4 * BATCH_PAGES * PAGE, runs),))
    in_place, copying = SnapshotEncoder(), SnapshotEncoder(copy_pages=True)
    batches = list(in_place.batches(0, runs))
    assert [type(b.raw) for b in batches] == [tuple] * len(batches)  # nothing joined
    assert [len(b"".join(b.raw)) for b in batches] == [len(b.raw) for b in copying.batches(0, runs)]
    data = b"".join(SnapshotEncoder().encode_pieces(snap))
    copied = b"".join(SnapshotEncoder(copy_pages=True).encode(snap))
    decoded = Snapshot.from_bytes(data)
    assert decoded == Snapshot.from_bytes(copied)
    assert {r.first_page + i: bytes(r.data[i * PAGE:(i + 1) * PAGE])
            for r in decoded.memories[0].runs for i in range(r.page_count)} == {r.first_page: r.data for r in runs}
