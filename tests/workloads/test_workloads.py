"""Behaviour of the prebuilt example workloads (workloads/*.wasm).

Each test instantiates a module with wasmtime and WASI, runs ``_initialize``
and checks what its exports do against references written here in Python.
``migrated`` copies a guest's linear memory into a fresh, uninitialised
instance: the workloads keep all their state in memory, so the copy must
carry on exactly where the original stopped.
"""

from __future__ import annotations

import re
import struct

import pytest
import wasmtime

import workloads
from workloads import thirdparty

M64 = (1 << 64) - 1
FNV_INIT = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
EXPECTED = ["clockrand", "counter", "dirtier", "grower", "imgfilter", "kvstore", "trap"]


# --- Python references for the guests' checksums ---------------------------

def fnv64(data: bytes, h: int = FNV_INIT) -> int:
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & M64
    return h


def fnv64_words(words, h: int = FNV_INIT) -> int:
    for w in words:
        h = ((h ^ w) * FNV_PRIME) & M64
    return h


def mix64(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def signed(x: int, bits: int = 64) -> int:
    x &= (1 << bits) - 1
    return x - (1 << bits) if x >> (bits - 1) else x


# --- Harness ---------------------------------------------------------------

@pytest.fixture(scope="module")
def engine():
    return wasmtime.Engine()


_modules: dict[tuple[int, str], wasmtime.Module] = {}


def module(engine: wasmtime.Engine, name: str) -> wasmtime.Module:
    key = (id(engine), name)
    if key not in _modules:
        _modules[key] = wasmtime.Module(engine, workloads.load(name))
    return _modules[key]


class Guest:
    """An instance of a workload; ``guest.f(*args)`` calls export ``f``."""

    def __init__(self, engine, mod, wasi=None, init=True, limits=None, fuel=None):
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        self.module = mod
        self.store = wasmtime.Store(engine)
        self.store.set_wasi(wasi or wasmtime.WasiConfig())
        if limits is not None:
            self.store.set_limits(memory_size=limits)
        if fuel is not None:
            self.store.set_fuel(fuel)
        self.instance = linker.instantiate(self.store, mod)
        self.exports = self.instance.exports(self.store)
        self.memory: wasmtime.Memory = self.exports["memory"]
        if init:
            self._initialize()

    def __getattr__(self, name):
        func = self.exports[name]
        return lambda *args: func(self.store, *args)

    def read(self, ptr: int, n: int) -> bytes:
        return bytes(self.memory.read(self.store, ptr, ptr + n))

    def write(self, ptr: int, data: bytes) -> None:
        self.memory.write(self.store, data, ptr)

    def snapshot(self) -> bytes:
        return self.read(0, self.memory.data_len(self.store))

    def bytes_in(self, data: bytes) -> int:
        """Copy data into a wm_alloc buffer and return its pointer."""
        ptr = self.wm_alloc(len(data))
        assert ptr != 0
        self.write(ptr, data)
        return ptr


def start(engine, name, **kw) -> Guest:
    return Guest(engine, module(engine, name), **kw)


def migrated(engine, guest: Guest) -> Guest:
    """Copy guest's memory into a fresh instance that never ran _initialize."""
    fresh = Guest(engine, guest.module, init=False)
    extra = guest.memory.size(guest.store) - fresh.memory.size(fresh.store)
    if extra:
        fresh.memory.grow(fresh.store, extra)
    fresh.write(0, guest.snapshot())
    return fresh


# --- The package API -------------------------------------------------------

def test_names_lists_every_workload():
    assert workloads.names() == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_path_and_load(name):
    p = workloads.path(name)
    assert p.name == f"{name}.wasm" and p.is_file()
    assert (p.parent / "src" / f"{name}.c").is_file()
    data = workloads.load(name)
    assert data[:8] == b"\0asm\1\0\0\0" and data == p.read_bytes()


@pytest.mark.parametrize("bad", ["nope", "", "../pyproject", "src/counter", "counter.wasm"])
def test_unknown_name_raises_key_error(bad):
    with pytest.raises(KeyError) as info:
        workloads.path(bad)
    assert isinstance(info.value, workloads.UnknownWorkloadError)
    assert "unknown workload" in str(info.value) and "counter" in str(info.value)
    with pytest.raises(workloads.UnknownWorkloadError):
        workloads.load(bad)


@pytest.mark.parametrize("name", EXPECTED)
def test_every_workload_is_a_wasi_reactor(engine, name):
    mod = module(engine, name)
    exports = {e.name for e in mod.exports}
    assert {"memory", "_initialize", "wm_alloc", "wm_free"} <= exports
    assert "_start" not in exports
    assert {i.module for i in mod.imports} <= {"wasi_snapshot_preview1"}


@pytest.mark.parametrize("name", EXPECTED)
def test_wm_alloc_and_free(engine, name):
    g = start(engine, name)
    a, b = g.wm_alloc(100), g.wm_alloc(100)
    assert a and b and abs(a - b) >= 100
    g.write(a, b"x" * 100)
    assert g.wm_alloc(-1) == 0
    g.wm_free(a)
    g.wm_free(b)
    g.wm_free(0)


# --- counter ---------------------------------------------------------------

def counter_script(g: Guest) -> list[int]:
    out = [g.incr(5), g.incr(-2), g.get()]
    out += [g.add_and_get_log(x * 7 - 50) for x in range(100)]
    return out + [g.log_checksum()]


def test_counter_counts_and_wraps(engine):
    g = start(engine, "counter")
    assert g.get() == 0
    assert g.incr(5) == 5 and g.incr(-7) == -2 and g.get() == -2
    g.incr(2)
    assert g.incr(2**63 - 1) == 2**63 - 1
    assert g.incr(1) == -(2**63)


def test_counter_log_grows_and_checksums(engine):
    g = start(engine, "counter")
    assert g.log_checksum() == signed(FNV_INIT, 32)
    values = [(-1) ** i * i * 1000003 for i in range(200)]  # crosses several reallocs
    lengths = [g.add_and_get_log(v) for v in values]
    assert lengths == list(range(1, 201))
    expected = fnv64(b"".join(struct.pack("<i", v) for v in values))
    assert g.log_checksum() == signed(expected, 32)


def test_counter_is_deterministic(engine):
    a, b = start(engine, "counter"), start(engine, "counter")
    assert counter_script(a) == counter_script(b)
    assert a.snapshot() == b.snapshot()


def test_counter_survives_memory_copy(engine):
    g = start(engine, "counter")
    counter_script(g)
    m = migrated(engine, g)
    assert m.get() == g.get() == 3
    assert m.log_checksum() == g.log_checksum()
    assert m.add_and_get_log(1) == g.add_and_get_log(1) == 101
    assert m.incr(10) == g.incr(10) == 13
    assert m.snapshot() == g.snapshot()


# --- kvstore ---------------------------------------------------------------

class KV:
    def __init__(self, g: Guest):
        self.g = g

    def _with(self, fn, *blobs):
        ptrs = [self.g.bytes_in(b) for b in blobs]
        try:
            args = [x for p, b in zip(ptrs, blobs) for x in (p, len(b))]
            return fn(*args)
        finally:
            for p in ptrs:
                self.g.wm_free(p)

    def put(self, k: bytes, v: bytes) -> int:
        return self._with(self.g.kv_put, k, v)

    def get(self, k: bytes) -> bytes | None:
        ptr = self._with(self.g.kv_get, k)
        if ptr == 0:
            return None
        (n,) = struct.unpack("<I", self.g.read(ptr, 4))
        return self.g.read(ptr + 4, n)

    def delete(self, k: bytes) -> int:
        return self._with(self.g.kv_del, k)


def kv_digest(pairs: dict[bytes, bytes]) -> int:
    total = sum(mix64(fnv64(struct.pack("<I", len(k)) + k + v)) for k, v in pairs.items())
    return signed(total)


def test_kv_round_trips(engine):
    kv = KV(start(engine, "kvstore"))
    assert kv.get(b"a") is None and kv.g.kv_count() == 0 and kv.g.kv_checksum() == 0
    assert kv.put(b"a", b"1") == 1
    assert kv.put(b"bin\0key", bytes(range(256))) == 1
    assert kv.put(b"", b"empty key") == 1
    assert kv.put(b"empty value", b"") == 1
    assert kv.get(b"a") == b"1"
    assert kv.get(b"bin\0key") == bytes(range(256))
    assert kv.get(b"bin") is None
    assert kv.get(b"") == b"empty key" and kv.get(b"empty value") == b""
    assert kv.put(b"a", b"a much longer value than before" * 10) == 0
    assert kv.get(b"a") == b"a much longer value than before" * 10
    assert kv.g.kv_count() == 4
    assert kv.delete(b"a") == 1 and kv.delete(b"a") == 0
    assert kv.get(b"a") is None and kv.g.kv_count() == 3
    assert kv.g.kv_put(0, -1, 0, 0) == -1


def test_kv_many_keys_and_checksum(engine):
    kv = KV(start(engine, "kvstore"))
    pairs = {f"key-{i}".encode(): f"value-{i * i}".encode() * (i % 5) for i in range(2000)}
    for k, v in pairs.items():
        assert kv.put(k, v) == 1
    for k in list(pairs)[::3]:
        assert kv.delete(k) == 1
        del pairs[k]
    assert kv.g.kv_count() == len(pairs)
    assert all(kv.get(k) == v for k, v in pairs.items())
    assert kv.g.kv_checksum() == kv_digest(pairs)


def test_kv_checksum_is_order_independent_and_content_sensitive(engine):
    pairs = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(300)]
    a, b = KV(start(engine, "kvstore")), KV(start(engine, "kvstore"))
    for k, v in pairs:
        a.put(k, v)
    for k, v in reversed(pairs):
        b.put(k, b"placeholder")
        b.put(k, v)
    assert a.g.kv_checksum() == b.g.kv_checksum() == kv_digest(dict(pairs))
    b.put(b"k7", b"changed")
    assert b.g.kv_checksum() != a.g.kv_checksum()


def test_kv_survives_memory_copy(engine):
    kv = KV(start(engine, "kvstore"))
    for i in range(500):
        kv.put(str(i).encode(), str(i * 3).encode())
    moved = KV(migrated(engine, kv.g))
    assert moved.g.kv_count() == 500
    assert moved.get(b"123") == b"369"
    assert moved.g.kv_checksum() == kv.g.kv_checksum()
    assert moved.put(b"new", b"x") == 1 and moved.get(b"new") == b"x"


# --- imgfilter -------------------------------------------------------------

def ref_blur(px: bytes, w: int, h: int, r: int) -> bytes:
    """Box blur as img_blur does it: rows, then columns, clamped edges."""
    r = min(r, max(w, h))
    win = 2 * r + 1

    def blur_pass(src, n, lines, offset):
        # offset(line, i) is the byte offset of sample i of a line
        dst = bytearray(len(src))
        for line in lines:
            vals = [src[offset(line, i)] for i in range(n)]
            for i in range(n):
                total = sum(vals[min(max(i + k, 0), n - 1)] for k in range(-r, r + 1))
                dst[offset(line, i)] = (total + win // 2) // win
        return dst

    rows = blur_pass(px, w, [(y, c) for y in range(h) for c in range(4)],
                     lambda yc, x: (yc[0] * w + x) * 4 + yc[1])
    cols = blur_pass(rows, h, [(x, c) for x in range(w) for c in range(4)],
                     lambda xc, y: (y * w + xc[0]) * 4 + xc[1])
    return bytes(cols)


def pattern_pixels(w, h):
    return bytes((x * 37 + y * 11 + c * 50 + (x * y) % 7 * 30) % 256
                 for y in range(h) for x in range(w) for c in range(4))


def image(g: Guest, w: int, h: int, px: bytes) -> int:
    img = g.img_new(w, h)
    assert img > 0
    g.write(g.img_data(img), px)
    return img


def img_checksum_ref(w, h, px):
    return signed(fnv64(struct.pack("<II", w, h) + px))


def test_img_new_validates_and_zeroes(engine):
    g = start(engine, "imgfilter")
    assert g.img_new(0, 5) == 0 and g.img_new(5, -1) == 0 and g.img_new(1 << 16, 1 << 16) == 0
    img = g.img_new(3, 2)
    assert img > 0 and g.read(g.img_data(img), 24) == bytes(24)
    assert g.img_checksum(img) == img_checksum_ref(3, 2, bytes(24))
    assert g.img_data(img + 1) == 0 and g.img_data(0) == 0 and g.img_checksum(99) == 0


@pytest.mark.parametrize("w,h,r", [(7, 5, 1), (9, 4, 2), (3, 3, 10), (1, 6, 1)])
def test_img_blur_matches_reference(engine, w, h, r):
    g = start(engine, "imgfilter")
    px = pattern_pixels(w, h)
    img = image(g, w, h, px)
    g.img_blur(img, r)
    out = g.read(g.img_data(img), len(px))
    assert out == ref_blur(px, w, h, r)
    assert out != px
    assert g.img_checksum(img) == img_checksum_ref(w, h, out)


def test_img_blur_is_deterministic_and_counts_frames(engine):
    px = pattern_pixels(64, 48)
    sums = []
    for _ in range(2):
        g = start(engine, "imgfilter")
        img = image(g, 64, 48, px)
        before = g.img_checksum(img)
        assert before == img_checksum_ref(64, 48, px)
        g.img_blur(img, 3)
        assert g.img_checksum(img) != before
        g.img_blur(img, 0)  # no-op, not a frame
        assert g.img_frames() == 1
        sums.append(g.img_checksum(img))
    assert sums[0] == sums[1]


def test_img_blur_keeps_flat_image(engine):
    g = start(engine, "imgfilter")
    px = bytes([10, 200, 30, 255]) * (16 * 8)
    img = image(g, 16, 8, px)
    g.img_blur(img, 4)
    assert g.read(g.img_data(img), len(px)) == px


def test_img_gray(engine):
    g = start(engine, "imgfilter")
    px = pattern_pixels(5, 3)
    img = image(g, 5, 3, px)
    g.img_gray(img)
    out = g.read(g.img_data(img), len(px))
    for i in range(0, len(px), 4):
        r, gr, b, a = px[i:i + 4]
        y = (77 * r + 150 * gr + 29 * b + 128) >> 8
        assert out[i:i + 4] == bytes([y, y, y, a])
    assert g.img_frames() == 1


def test_img_handles_are_freed_and_reused(engine):
    g = start(engine, "imgfilter")
    a, b = g.img_new(4, 4), g.img_new(8, 8)
    assert a != b
    g.img_free(a)
    assert g.img_data(a) == 0
    g.img_blur(a, 1)  # freed handle: ignored
    assert g.img_frames() == 0
    assert g.img_new(2, 2) == a


def test_img_survives_memory_copy(engine):
    g = start(engine, "imgfilter")
    img = image(g, 32, 16, pattern_pixels(32, 16))
    g.img_gray(img)
    m = migrated(engine, g)
    assert m.img_frames() == 1 and m.img_checksum(img) == g.img_checksum(img)
    m.img_blur(img, 2)
    g.img_blur(img, 2)
    assert m.img_checksum(img) == g.img_checksum(img)


# --- grower ----------------------------------------------------------------

def test_grower_grows_memory(engine):
    g = start(engine, "grower")
    p0 = g.pages()
    assert p0 == g.memory.size(g.store)
    assert g.grow_mb(3) == g.pages() >= p0 + 48
    assert g.grow_mb(2) == g.pages() >= p0 + 80
    assert g.memory.size(g.store) == g.pages()
    assert g.grower_mb() == 5
    assert g.grow_mb(0) == -1 and g.grow_mb(-3) == -1 and g.grow_mb(5000) == -1


def test_grower_checksum_matches_pattern(engine):
    g = start(engine, "grower")
    assert g.grower_checksum() == signed(FNV_INIT)
    g.grow_mb(1)
    words = 1 << 18
    expected = fnv64_words((i * 2654435761) & 0xFFFFFFFF for i in range(words))
    assert g.grower_checksum() == signed(expected)


def test_grower_is_deterministic_and_survives_copy(engine):
    a, b = start(engine, "grower"), start(engine, "grower")
    for g in (a, b):
        g.grow_mb(2)
        g.grow_mb(1)
    assert a.grower_checksum() == b.grower_checksum()
    m = migrated(engine, a)
    assert m.pages() == a.pages()
    assert m.grower_checksum() == a.grower_checksum()
    assert m.grow_mb(1) == a.grow_mb(1)
    assert m.grower_checksum() == a.grower_checksum()


def test_grower_respects_store_memory_limit(engine):
    g = start(engine, "grower", limits=8 << 20)
    assert g.grow_mb(4) > 0
    assert g.grow_mb(16) == -1  # the guest's memory.grow returns -1
    assert g.grower_mb() == 4
    assert g.pages() * 65536 <= 8 << 20


# --- dirtier ---------------------------------------------------------------

PAGE = 4096


def region_pages(g: Guest) -> list[bytes]:
    base, n = g.dt_base(), g.dt_pages()
    data = g.read(base, n * PAGE)
    return [data[i * PAGE:(i + 1) * PAGE] for i in range(n)]


def test_dirtier_init_makes_typical_memory(engine):
    g = start(engine, "dirtier")
    assert g.dt_base() == 0 and g.dt_pages() == 0 and g.dt_checksum() == 0
    assert g.dt_init(4) == 1024 == g.dt_pages()
    assert g.dt_base() % PAGE == 0
    pages = region_pages(g)
    zero = sum(p == bytes(PAGE) for p in pages)
    sparse = sum(p != bytes(PAGE) and p[PAGE // 5:] == bytes(PAGE - PAGE // 5) for p in pages)
    full = sum(p.count(0) < 64 for p in pages)  # random-looking pages
    assert zero + sparse + full == 1024
    assert 0.5 < zero / 1024 < 0.7
    assert 0.2 < sparse / 1024 < 0.4
    assert 0.05 < full / 1024 < 0.15
    assert any(b"state=ok" in p for p in pages)
    assert g.dt_init(0) == -1 and g.dt_init(5000) == -1


def test_dirtier_checksum_matches_region(engine):
    g = start(engine, "dirtier")
    g.dt_init(1)
    data = g.read(g.dt_base(), g.dt_pages() * PAGE)
    words = struct.unpack(f"<{len(data) // 8}Q", data)
    assert g.dt_checksum() == signed(fnv64_words(words))


@pytest.mark.parametrize("mib,n", [(4, 1), (4, 37), (4, 1024), (3, 500), (3, 768), (1, 256)])
def test_dirtier_dirties_exactly_n_distinct_pages(engine, mib, n):
    g = start(engine, "dirtier")
    total = g.dt_init(mib)
    assert total == mib * 256
    before, mem_before = region_pages(g), g.snapshot()
    assert g.dt_dirty(n, 12345) == n
    after, mem_after = region_pages(g), g.snapshot()
    changed = [i for i in range(total) if before[i] != after[i]]
    assert len(changed) == n
    for i in changed:  # one word per page
        diff = [j for j in range(0, PAGE, 4) if before[i][j:j + 4] != after[i][j:j + 4]]
        assert len(diff) == 1
    # Outside the region only the workload's own small bookkeeping may change.
    base, end = g.dt_base(), g.dt_base() + total * PAGE
    outside = {o // PAGE for o in range(0, len(mem_before), PAGE)
               if not base <= o < end and mem_before[o:o + PAGE] != mem_after[o:o + PAGE]}
    assert len(outside) <= 1


def test_dirtier_seed_decides_pages_and_counter_runs(engine):
    def dirtied(seed):
        g = start(engine, "dirtier")
        g.dt_init(2)
        before = region_pages(g)
        g.dt_dirty(50, seed)
        return {i for i, (p, q) in enumerate(zip(before, region_pages(g))) if p != q}, g

    s1, g1 = dirtied(7)
    s2, _ = dirtied(7)
    s3, _ = dirtied(8)
    assert s1 == s2 and s1 != s3
    assert g1.dt_dirty(10, 1) == 60
    assert g1.dt_dirty(10_000, 2) == 60 + 512  # clamped to the region
    assert g1.dt_dirty(0, 3) == 572


def test_dirtier_survives_memory_copy(engine):
    g = start(engine, "dirtier")
    g.dt_init(2)
    g.dt_dirty(100, 1)
    m = migrated(engine, g)
    assert m.dt_checksum() == g.dt_checksum()
    assert m.dt_dirty(5, 9) == g.dt_dirty(5, 9) == 105
    assert m.dt_checksum() == g.dt_checksum()


# --- clockrand -------------------------------------------------------------

def test_clockrand_samples_mix_clock_and_entropy(engine):
    a, b = start(engine, "clockrand"), start(engine, "clockrand")
    assert a.state() == 0 and a.samples() == 0
    s1 = a.sample()
    assert s1 != 0 and a.state() == s1
    s2 = a.sample()
    assert s2 not in (0, s1) and a.samples() == 2
    # Same calls, different entropy: fresh instances disagree.
    assert b.sample() != s1


def test_clockrand_say_prints_to_stdout(engine, tmp_path):
    out = tmp_path / "stdout.txt"
    wasi = wasmtime.WasiConfig()
    wasi.stdout_file = str(out)
    g = start(engine, "clockrand", wasi=wasi)
    n1 = g.say(1)
    g.sample()
    n2 = g.say(-42)
    lines = out.read_text().splitlines(keepends=True)
    assert len(lines) == 2 and [len(s) for s in lines] == [n1, n2]
    assert lines[0] == "clockrand say 1 samples=0 state=0000000000000000\n"
    m = re.fullmatch(r"clockrand say -42 samples=1 state=([0-9a-f]{16})\n", lines[1])
    assert m and int(m.group(1), 16) == g.state() & M64


# --- trap ------------------------------------------------------------------

def test_trap_boom_traps(engine):
    g = start(engine, "trap")
    with pytest.raises(wasmtime.Trap) as info:
        g.boom()
    assert info.value.trap_code == wasmtime.TrapCode.UNREACHABLE
    assert g.spin(3) == 3  # the store stays usable after a trap


def test_trap_spin_runs_until_fuel_runs_out():
    cfg = wasmtime.Config()
    cfg.consume_fuel = True
    fuel_engine = wasmtime.Engine(cfg)
    g = start(fuel_engine, "trap", fuel=10_000_000)
    assert g.spin(1000) == 1000
    with pytest.raises(wasmtime.Trap) as info:
        g.spin(-1)
    assert info.value.trap_code == wasmtime.TrapCode.OUT_OF_FUEL


def test_trap_hog(engine):
    g = start(engine, "trap", limits=32 << 20)
    assert g.hog(4) == 1 and g.hog(4) == 1 and g.hog_mb() == 8
    assert g.hog(64) == 0 and g.hog(-1) == 0 and g.hog(4096) == 0
    assert g.hog_mb() == 8
    assert g.memory.data_len(g.store) <= 32 << 20


# --- third-party module: QuickJS-NG reactor from PyPI ----------------------

@pytest.fixture(scope="module")
def qjs_module(engine):
    path = thirdparty.find_thirdparty()
    if path is None:
        pytest.skip(f"third-party workload not installed: pip install '{thirdparty.REQUIREMENT}'")
    return wasmtime.Module.from_file(engine, str(path))


def test_thirdparty_quickjs_keeps_state(engine, qjs_module):
    g = Guest(engine, qjs_module, init=False)
    js = thirdparty.QuickJS(g.store, g.instance)
    js.start()
    assert js.eval("1 + 2") == "3"
    js.eval("globalThis.log = []; function add(x) { log.push(x); return log.length; }")
    assert [js.eval(f"add({i})") for i in range(5)] == ["1", "2", "3", "4", "5"]
    assert js.eval("JSON.stringify(log)") == "[0,1,2,3,4]"
    with pytest.raises(thirdparty.JSError, match="ReferenceError"):
        js.eval("missing_name")
    assert js.eval("log.length") == "5"  # still usable after a JS exception


def test_thirdparty_quickjs_survives_memory_copy(engine, qjs_module):
    g = Guest(engine, qjs_module, init=False)
    js = thirdparty.QuickJS(g.store, g.instance)
    js.start()
    js.eval("globalThis.m = new Map(); for (let i = 0; i < 1000; i++) m.set('k' + i, i * i);")
    fresh = migrated(engine, g)
    moved = thirdparty.QuickJS(fresh.store, fresh.instance)
    assert moved.eval("m.get('k999')") == "998001"
    moved.eval("m.set('new', 1)")
    assert moved.eval("m.size") == "1001"
    assert js.eval("m.size") == "1000"  # the original is untouched


class _FakeDist:
    def __init__(self, version, root):
        self.version, self._root = version, root

    def locate_file(self, rel):
        return self._root / rel


@pytest.mark.parametrize("version,found", [("0.15.1.1", True), ("0.15.0.1", True),
                                           ("0.16.2", False), ("0.17.0", False)])
def test_find_thirdparty_accepts_only_015(monkeypatch, tmp_path, version, found):
    wasm = tmp_path / "qjs-wasi-reactor" / "qjs-wasi-reactor.wasm"
    wasm.parent.mkdir()
    wasm.write_bytes(b"\0asm\1\0\0\0")
    monkeypatch.setattr(thirdparty.importlib.metadata, "distribution",
                        lambda name: _FakeDist(version, tmp_path))
    assert thirdparty.find_thirdparty() == (wasm if found else None)


def test_find_thirdparty_absent(monkeypatch):
    def missing(name):
        raise thirdparty.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(thirdparty.importlib.metadata, "distribution", missing)
    assert thirdparty.find_thirdparty() is None
