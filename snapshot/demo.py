"""Demo: snapshot a running workload, restore it in another process, carry on.

Process A boots the C key-value store, fills it, and snapshots it (sealed
with AES-GCM) into a real file.  Process B, a separate Python process,
restores the file into a fresh instance and keeps serving: the data is
there and new writes work.  Run with ``python -m snapshot.demo``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import wasmtime

import snapshot
import workloads


class _Exports:
    """The kvstore's exports: its functions by name, and its memory."""

    def __init__(self, store: wasmtime.Store, inst: wasmtime.Instance) -> None:
        exports = inst.exports(store)
        self.funcs = {name: f for name in exports.keys() if isinstance(f := exports[name], wasmtime.Func)}
        memory = exports["memory"]
        if not isinstance(memory, wasmtime.Memory):
            raise TypeError("the kvstore's export 'memory' is not a memory")
        self.memory = memory

    def __getitem__(self, name: str) -> wasmtime.Func:
        return self.funcs[name]


def _instance(engine: wasmtime.Engine, prepared: bytes) -> tuple[wasmtime.Store, wasmtime.Instance, _Exports]:
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    inst = linker.instantiate(store, wasmtime.Module(engine, prepared))
    return store, inst, _Exports(store, inst)


def _put(store: wasmtime.Store, ex: _Exports, key: bytes, value: bytes) -> None:
    kp, vp = ex["wm_alloc"](store, len(key)), ex["wm_alloc"](store, len(value))
    ex.memory.write(store, key, kp)
    ex.memory.write(store, value, vp)
    ex["kv_put"](store, kp, len(key), vp, len(value))
    ex["wm_free"](store, kp)
    ex["wm_free"](store, vp)


def _get(store: wasmtime.Store, ex: _Exports, key: bytes) -> bytes | None:
    kp = ex["wm_alloc"](store, len(key))
    ex.memory.write(store, key, kp)
    out = ex["kv_get"](store, kp, len(key))
    ex["wm_free"](store, kp)
    if not out:
        return None
    mem = ex.memory
    n = int.from_bytes(mem.read(store, out, out + 4), "little")
    return bytes(mem.read(store, out + 4, out + 4 + n))


def produce(path: Path, key: bytes, entries: int) -> None:
    engine = wasmtime.Engine()
    prepared = snapshot.prepare(workloads.load("kvstore"))
    store, inst, ex = _instance(engine, prepared)
    snapshot.first_boot(store, inst)
    for i in range(entries):
        _put(store, ex, b"user:%d" % i, b"session state %d " % i * 8)
    print(f"[A pid {os.getpid()}] kv_count={ex['kv_count'](store)} checksum={ex['kv_checksum'](store) & (2**64 - 1):#018x}")
    t0 = time.perf_counter()
    snap = snapshot.capture(store, inst)
    data = snap.to_bytes(key=key)
    path.write_bytes(data)
    took = time.perf_counter() - t0
    print(f"[A] captured {snap.memory_bytes_total / 2**20:.1f} MiB of memory ({snap.page_count} non-zero pages) "
          f"into {len(data) / 1024:.0f} KiB, encrypted, in {took * 1e3:.1f} ms -> {path}")


def consume(path: Path, key: bytes, entries: int) -> None:
    engine = wasmtime.Engine()
    prepared = snapshot.prepare(workloads.load("kvstore"))
    store, inst, ex = _instance(engine, prepared)
    t0 = time.perf_counter()
    snapshot.restore(snapshot.Snapshot.from_bytes(path.read_bytes(), key=key), store, inst)
    took = time.perf_counter() - t0
    print(f"[B pid {os.getpid()}] restored in {took * 1e3:.1f} ms without re-running initialisation")
    print(f"[B] kv_count={ex['kv_count'](store)} checksum={ex['kv_checksum'](store) & (2**64 - 1):#018x}")
    probe = b"user:%d" % (entries // 2)
    print(f"[B] get {probe.decode()!r} -> {(_get(store, ex, probe) or b'')[:24]!r}...")
    _put(store, ex, b"user:new", b"written after the move")
    print(f"[B] carried on: put user:new, kv_count={ex['kv_count'](store)}, "
          f"get -> {_get(store, ex, b'user:new')!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--role", choices=["produce", "consume"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    key_hex = os.environ.get("WM_DEMO_KEY", "")
    if args.role:
        (produce if args.role == "produce" else consume)(args.file, bytes.fromhex(key_hex), args.entries)
        return 0
    key = snapshot.generate_key()
    env = dict(os.environ, WM_DEMO_KEY=key.hex())
    with tempfile.TemporaryDirectory(prefix="wm-demo-") as tmp:
        path = Path(tmp) / "kvstore.wmsnap"
        for role in ("produce", "consume"):
            subprocess.run([sys.executable, "-m", "snapshot.demo", "--role", role, "--file", str(path),
                            "--entries", str(args.entries)], env=env, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
