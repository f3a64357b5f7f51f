"""Tests of snapshot._dirty: both dirty-page backends against real wasmtime memories.

What each backend guarantees, and what these tests assert:
* both report every page whose bytes changed since the last epoch, plus
  every page added by a grow;
* uffd reports exactly the pages written (identical bytes included);
* compare reports exactly the pages whose bytes changed.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapshot import PAGE_BYTES as PAGE_SIZE
from snapshot import CompareDirtyTracker, DirtyTrackingError, UffdDirtyTracker, open_tracker, uffd_available

WASM_PAGE = 65536
PAGES_PER_WASM_PAGE = WASM_PAGE // PAGE_SIZE  # 16
INITIAL_WASM_PAGES = 2
MAX_WASM_PAGES = 16

WAT = f"""
(module
  (memory (export "memory") {INITIAL_WASM_PAGES} {MAX_WASM_PAGES})
  (func (export "store") (param i32 i32) (i32.store8 (local.get 0) (local.get 1)))
  (func (export "store32") (param i32 i32) (i32.store (local.get 0) (local.get 1)))
  (func (export "load") (param i32) (result i32) (i32.load8_u (local.get 0)))
  (func (export "fill") (param i32 i32 i32)  ;; addr, length, value
    (memory.fill (local.get 0) (local.get 2) (local.get 1)))
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  ;; grow by one wasm page and write into it within one call
  (func (export "grow_and_store") (param i32 i32) (result i32)
    (local $old i32)
    (local.set $old (memory.grow (i32.const 1)))
    (i32.store8 (i32.add (i32.mul (local.get $old) (i32.const {WASM_PAGE})) (local.get 0))
                (local.get 1))
    (local.get $old))
  ;; page 0 comes from a copy-on-write image of this segment
  (data (i32.const 100) "initialised by a data segment"))
"""

UFFD_SKIP = pytest.mark.skipif(
    not uffd_available(),
    reason="userfaultfd async write-protect with PAGEMAP_SCAN is not usable here "
           "(needs Linux 6.7+ on x86-64 and userfaultfd permitted)")
BACKENDS = [pytest.param("uffd", marks=UFFD_SKIP), "compare"]


@pytest.fixture(scope="module")
def engine() -> wasmtime.Engine:
    return wasmtime.Engine()


@pytest.fixture(scope="module")
def module(engine: wasmtime.Engine) -> wasmtime.Module:
    return wasmtime.Module(engine, WAT)


@dataclass
class Guest:
    """One instance of WAT and handles to call it."""

    store: wasmtime.Store
    memory: wasmtime.Memory
    exports: dict

    @classmethod
    def start(cls, engine: wasmtime.Engine, module: wasmtime.Module) -> Guest:
        store = wasmtime.Store(engine)
        instance = wasmtime.Instance(store, module, [])
        exports = instance.exports(store)
        return cls(store, exports["memory"], {name: exports[name] for name in (
            "store", "store32", "load", "fill", "grow", "grow_and_store")})

    def call(self, name: str, *args: int) -> int:
        return self.exports[name](self.store, *args)

    @property
    def base(self) -> int:
        return ctypes.addressof(self.memory.data_ptr(self.store).contents)

    @property
    def pages(self) -> int:
        return self.memory.data_len(self.store) // PAGE_SIZE

    def snapshot(self) -> bytes:
        return ctypes.string_at(self.base, self.memory.data_len(self.store))

    def host_write(self, address: int, data: bytes) -> None:
        ctypes.memmove(self.base + address, data, len(data))


@pytest.fixture
def guest(engine: wasmtime.Engine, module: wasmtime.Module) -> Guest:
    return Guest.start(engine, module)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tracker(guest: Guest, backend: str):
    with open_tracker(guest.store, guest.memory, backend=backend) as tracker:
        yield tracker


def collect(tracker, guest: Guest) -> list[int]:
    """Collect and check the result is sorted and free of duplicates."""
    pages = list(tracker.collect(guest.store))
    assert pages == sorted(set(pages))
    return pages


def test_no_writes_reports_nothing(tracker, guest: Guest) -> None:
    assert collect(tracker, guest) == []
    assert collect(tracker, guest) == []


def test_single_write_reports_its_page(tracker, guest: Guest) -> None:
    guest.call("store", 5 * PAGE_SIZE + 123, 7)
    assert collect(tracker, guest) == [5]
    assert collect(tracker, guest) == []


def test_page_boundaries(tracker, guest: Guest) -> None:
    last = INITIAL_WASM_PAGES * WASM_PAGE - 1
    for address in (0, PAGE_SIZE - 1, 3 * PAGE_SIZE, 7 * PAGE_SIZE - 1, last):
        guest.call("store", address, 0xEE)
    assert collect(tracker, guest) == [0, 3, 6, last // PAGE_SIZE]
    guest.call("store32", 10 * PAGE_SIZE - 2, 0x01020304)  # straddles pages 9 and 10
    assert collect(tracker, guest) == [9, 10]


def test_data_segment_page_is_tracked(tracker, guest: Guest) -> None:
    # Page 0 is mapped from wasmtime's copy-on-write image of the data segment.
    guest.call("store", 100, ord("X"))
    assert collect(tracker, guest) == [0]


def test_many_pages(tracker, guest: Guest) -> None:
    guest.call("fill", 3 * PAGE_SIZE + 1, 17 * PAGE_SIZE, 0x5A)  # pages 3 to 20
    for page in range(22, guest.pages, 2):
        guest.call("store", page * PAGE_SIZE + 8, 1)
    assert collect(tracker, guest) == list(range(3, 21)) + list(range(22, guest.pages, 2))


def test_reset_forgets_earlier_writes(tracker, guest: Guest) -> None:
    guest.call("store", 2 * PAGE_SIZE, 1)
    tracker.reset(guest.store)
    guest.call("store", 4 * PAGE_SIZE, 1)
    assert collect(tracker, guest) == [4]


def test_reads_are_not_reported(tracker, guest: Guest) -> None:
    for page in range(guest.pages):
        guest.call("load", page * PAGE_SIZE)
    assert collect(tracker, guest) == []


def test_host_memmove_is_tracked(tracker, guest: Guest) -> None:
    guest.host_write(PAGE_SIZE - 2, b"\x01\x02\x03\x04")  # pages 0 and 1
    guest.host_write(12 * PAGE_SIZE, b"\x09" * (3 * PAGE_SIZE))  # pages 12 to 14
    assert collect(tracker, guest) == [0, 1, 12, 13, 14]


def test_guest_grow_reports_new_pages_once(tracker, guest: Guest) -> None:
    old_pages = guest.pages
    assert guest.call("grow", 1) == INITIAL_WASM_PAGES
    guest.call("store", 1 * PAGE_SIZE, 1)
    guest.call("store", (old_pages + 3) * PAGE_SIZE, 1)
    assert collect(tracker, guest) == [1] + list(range(old_pages, guest.pages))
    assert collect(tracker, guest) == []
    guest.call("store", (old_pages + 3) * PAGE_SIZE, 2)  # the grown range is tracked now
    assert collect(tracker, guest) == [old_pages + 3]


def test_write_during_grow(tracker, guest: Guest) -> None:
    old_pages = guest.pages
    guest.call("grow_and_store", 5 * PAGE_SIZE, 9)
    assert collect(tracker, guest) == list(range(old_pages, guest.pages))
    guest.call("grow_and_store", 0, 9)
    guest.call("store", 2 * PAGE_SIZE, 9)
    assert collect(tracker, guest) == [2] + list(range(old_pages + PAGES_PER_WASM_PAGE, guest.pages))


def test_host_grow_reports_new_pages_once(tracker, guest: Guest) -> None:
    old_pages = guest.pages
    guest.memory.grow(guest.store, 2)
    guest.host_write((old_pages + 20) * PAGE_SIZE, b"\x07")
    assert collect(tracker, guest) == list(range(old_pages, old_pages + 2 * PAGES_PER_WASM_PAGE))
    guest.host_write((old_pages + 20) * PAGE_SIZE, b"\x08")
    guest.call("store", (old_pages + 31) * PAGE_SIZE, 8)
    assert collect(tracker, guest) == [old_pages + 20, old_pages + 31]


def test_reset_after_grow_forgets_grown_pages(tracker, guest: Guest) -> None:
    old_pages = guest.pages
    guest.memory.grow(guest.store, 1)
    tracker.reset(guest.store)
    assert collect(tracker, guest) == []
    guest.call("store", (old_pages + 1) * PAGE_SIZE, 3)
    assert collect(tracker, guest) == [old_pages + 1]


def test_identical_bytes_differ_by_backend(tracker, guest: Guest, backend: str) -> None:
    # The byte at 100 already holds "i"; rewriting it changes nothing.
    guest.call("store", 100, ord("i"))
    guest.host_write(3 * PAGE_SIZE, b"\x00" * 16)
    expected = {"uffd": [0, 3], "compare": []}[backend]  # written vs changed
    assert collect(tracker, guest) == expected


def test_moved_memory_loses_no_writes(backend: str) -> None:
    config = wasmtime.Config()
    config.memory_reservation = INITIAL_WASM_PAGES * WASM_PAGE  # growing past it moves the memory
    config.memory_reservation_for_growth = 0
    config.memory_may_move = True
    engine = wasmtime.Engine(config)
    guest = Guest.start(engine, wasmtime.Module(engine, WAT))
    with open_tracker(guest.store, guest.memory, backend=backend) as tracker:
        guest.call("store", 3 * PAGE_SIZE, 1)
        base = guest.base
        guest.memory.grow(guest.store, MAX_WASM_PAGES - INITIAL_WASM_PAGES)
        assert guest.base != base, "wasmtime did not move the memory; the test needs it to"
        old_pages = INITIAL_WASM_PAGES * PAGES_PER_WASM_PAGE
        if backend == "uffd":  # its bits stayed behind: it reports everything
            assert collect(tracker, guest) == list(range(guest.pages))
        else:  # the bytes moved along, so comparing stays exact
            assert collect(tracker, guest) == [3] + list(range(old_pages, guest.pages))
        guest.call("store", 200 * PAGE_SIZE, 1)
        assert collect(tracker, guest) == [200]


@UFFD_SKIP
def test_uffd_loops_when_the_region_vector_fills(guest: Guest) -> None:
    with UffdDirtyTracker(guest.store, guest.memory, regions_per_scan=1) as tracker:
        written = list(range(1, guest.pages, 3))
        for page in written:
            guest.call("store", page * PAGE_SIZE, 1)
        assert collect(tracker, guest) == written
        assert collect(tracker, guest) == []


@UFFD_SKIP
def test_uffd_failed_scan_reports_every_page_next(guest: Guest, monkeypatch) -> None:
    with UffdDirtyTracker(guest.store, guest.memory) as tracker:
        def fail(start: int, end: int):
            raise OSError(errno.EPERM, "simulated")
        monkeypatch.setattr(tracker._watch, "take_written", fail)
        with pytest.raises(DirtyTrackingError, match="lost track"):
            tracker.collect(guest.store)
        assert collect(tracker, guest) == list(range(guest.pages))
        guest.call("store", 7 * PAGE_SIZE, 1)
        assert collect(tracker, guest) == [7]


@UFFD_SKIP
def test_second_uffd_tracker_on_one_memory(guest: Guest) -> None:
    with open_tracker(guest.store, guest.memory, backend="uffd") as first:
        assert isinstance(first, UffdDirtyTracker)
        with pytest.raises(DirtyTrackingError, match="write-protect"):
            open_tracker(guest.store, guest.memory, backend="uffd")
        with open_tracker(guest.store, guest.memory) as second:
            assert isinstance(second, CompareDirtyTracker)


def test_auto_prefers_uffd(guest: Guest) -> None:
    with open_tracker(guest.store, guest.memory) as tracker:
        expected = UffdDirtyTracker if uffd_available() else CompareDirtyTracker
        assert isinstance(tracker, expected)


def test_unknown_backend(guest: Guest) -> None:
    with pytest.raises(DirtyTrackingError, match="unknown backend"):
        open_tracker(guest.store, guest.memory, backend="soft-dirty")


def test_close_releases_and_forbids_use(guest: Guest, backend: str) -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    tracker = open_tracker(guest.store, guest.memory, backend=backend)
    assert tracker.page_size == PAGE_SIZE
    with tracker:
        pass
    tracker.close()  # twice is harmless
    assert len(os.listdir("/proc/self/fd")) == fds_before
    with pytest.raises(DirtyTrackingError, match="closed"):
        tracker.collect(guest.store)
    with pytest.raises(DirtyTrackingError, match="closed"):
        tracker.reset(guest.store)
    guest.call("store", 2 * PAGE_SIZE, 1)  # the memory works unwatched
    with open_tracker(guest.store, guest.memory, backend=backend) as again:  # and can be watched again
        guest.call("store", 3 * PAGE_SIZE, 1)
        assert collect(again, guest) == [3]


def test_custom_page_size_partial_last_page(backend: str) -> None:
    config = wasmtime.Config()
    config.wasm_custom_page_sizes = True
    engine = wasmtime.Engine(config)
    store = wasmtime.Store(engine)
    instance = wasmtime.Instance(store, wasmtime.Module(
        engine, "(module (memory (export \"memory\") 5000 20000 (pagesize 1)))"), [])
    memory = instance.exports(store)["memory"]
    guest = Guest(store, memory, {})
    with open_tracker(store, memory, backend=backend) as tracker:
        guest.host_write(4999, b"\x01")
        assert collect(tracker, guest) == [1]
        memory.grow(store, 4000)  # 9,000 bytes: page 1 gains bytes, page 2 is new
        assert collect(tracker, guest) == [1, 2]
        guest.host_write(8999, b"\x01")
        assert collect(tracker, guest) == [2]


# --- property: random writes, grows, resets and collects ----------------------

_addresses = st.integers(0, MAX_WASM_PAGES * WASM_PAGE - 1)
_values = st.integers(0, 2)  # small, so identical rewrites are common
_operations = st.lists(st.one_of(
    st.tuples(st.just("store"), _addresses, _values),
    st.tuples(st.just("memmove"), _addresses, st.integers(1, 3 * PAGE_SIZE), _values),
    st.tuples(st.just("fill"), _addresses, st.integers(1, 3 * PAGE_SIZE), _values),
    st.tuples(st.just("grow_guest"), st.integers(0, 2)),
    st.tuples(st.just("grow_host"), st.integers(0, 2)),
    st.tuples(st.just("grow_and_store"), st.integers(0, WASM_PAGE - 1), _values),
    st.tuples(st.just("collect")),
    st.tuples(st.just("reset")),
    st.tuples(st.just("peek")),
), max_size=40)


class _Model:
    """What an epoch should report: pages written and grown, and the bytes it started from."""

    def __init__(self, guest: Guest) -> None:
        self.guest = guest
        self.new_epoch()

    def new_epoch(self) -> None:
        self.baseline = self.guest.snapshot()
        self.written: set[int] = set()

    def wrote(self, address: int, length: int) -> None:
        self.written.update(range(address // PAGE_SIZE, (address + length - 1) // PAGE_SIZE + 1))

    def peeked(self, count: int | None, backend: str) -> None:
        """``peek`` says how many pages the next collect reports (uffd), or that it cannot tell; nothing resets."""
        if backend != "uffd":
            assert count is None
            return
        old_pages = len(self.baseline) // PAGE_SIZE
        grown = len(self.guest.snapshot()) // PAGE_SIZE - old_pages
        assert count == len({p for p in self.written if p < old_pages}) + grown

    def check(self, reported: list[int], backend: str) -> None:
        now = self.guest.snapshot()
        old_pages = len(self.baseline) // PAGE_SIZE
        grown = set(range(old_pages, len(now) // PAGE_SIZE))
        changed = {page for page in range(old_pages)
                   if now[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
                   != self.baseline[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]}
        assert changed | grown <= set(reported)
        if backend == "uffd":
            assert set(reported) == {p for p in self.written if p < old_pages} | grown
        else:
            assert set(reported) == changed | grown
        self.new_epoch()


def _run(guest: Guest, tracker, model: _Model, backend: str, operation: tuple) -> None:
    kind, *args = operation
    length = guest.memory.data_len(guest.store)
    wasm_pages = length // WASM_PAGE
    if kind == "store":
        address, value = args[0] % length, args[1]
        guest.call("store", address, value)
        model.wrote(address, 1)
    elif kind in ("memmove", "fill"):
        address = args[0] % length
        count = min(args[1], length - address)
        if kind == "memmove":
            guest.host_write(address, bytes([args[2]]) * count)
        else:
            guest.call("fill", address, count, args[2])
        model.wrote(address, count)
    elif kind == "grow_guest":
        delta = min(args[0], MAX_WASM_PAGES - wasm_pages)
        assert guest.call("grow", delta) == wasm_pages
    elif kind == "grow_host":
        guest.memory.grow(guest.store, min(args[0], MAX_WASM_PAGES - wasm_pages))
    elif kind == "grow_and_store" and wasm_pages < MAX_WASM_PAGES:
        guest.call("grow_and_store", *args)  # the page is in the grown range
    elif kind == "collect":
        model.check(list(tracker.collect(guest.store)), backend)
    elif kind == "reset":
        tracker.reset(guest.store)
        model.new_epoch()
    elif kind == "peek":
        model.peeked(tracker.peek(guest.store), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=_operations)
def test_random_operations_match_the_model(engine, module, backend: str, operations) -> None:
    guest = Guest.start(engine, module)
    with open_tracker(guest.store, guest.memory, backend=backend) as tracker:
        model = _Model(guest)
        for operation in operations:
            _run(guest, tracker, model, backend, operation)
        model.check(list(tracker.collect(guest.store)), backend)


@UFFD_SKIP
@settings(max_examples=30, deadline=None)
@given(st.sets(st.integers(0, 40 * 256 - 1), max_size=40))
def test_the_watch_arms_and_scans_in_pieces_without_losing_a_page(pages):
    """A 40 MiB range spans three 16 MiB pieces: pages on either side of each boundary are reported once."""
    import mmap

    from snapshot._uffd import PROTECT_PIECE_BYTES, WriteWatch
    size = 40 << 20
    assert size > 2 * PROTECT_PIECE_BYTES
    edges = {PROTECT_PIECE_BYTES // 4096 - 1, PROTECT_PIECE_BYTES // 4096, 2 * PROTECT_PIECE_BYTES // 4096}
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    watch = WriteWatch(regions_per_scan=4)  # a small vector: scans resume inside pieces too
    try:
        watch.protect(base, size)
        for page in pages | edges:
            ctypes.memset(base + page * 4096 + 7, 1, 1)
        assert watch.count_written(base, base + size) == len(pages | edges)  # counts, re-arms nothing
        assert watch.take_written(base, base + size).tolist() == sorted(pages | edges)
        assert watch.count_written(base, base + size) == 0
        assert watch.take_written(base, base + size).tolist() == []
    finally:
        watch.close()
        del base
        region.close()
