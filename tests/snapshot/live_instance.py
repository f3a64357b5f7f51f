"""A live instance of a prepared module, for the snapshot tests (imported by conftest and tests)."""

from __future__ import annotations

import wasmtime

import snapshot


class Live:
    """A store plus an instance of a prepared module, WASI linked in."""

    def __init__(self, engine: wasmtime.Engine, prepared: bytes, *, boot: bool = True) -> None:
        self.engine = engine
        self.prepared = prepared
        self.store = wasmtime.Store(engine)
        wasi = wasmtime.WasiConfig()
        self.store.set_wasi(wasi)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        self.module = wasmtime.Module(engine, prepared)
        self.instance = linker.instantiate(self.store, self.module)
        self.exports = self.instance.exports(self.store)
        if boot:
            snapshot.first_boot(self.store, self.instance)

    def __call__(self, name: str, *args):
        return self.exports[name](self.store, *args)

    def fresh(self) -> "Live":
        """A new, un-booted instance of the same module: a restore target."""
        return Live(self.engine, self.prepared, boot=False)

    def capture(self) -> snapshot.Snapshot:
        return snapshot.capture(self.store, self.instance)

    def restore(self, snap: snapshot.Snapshot) -> None:
        snapshot.restore(snap, self.store, self.instance)

    def memory(self, index: int = 0) -> bytes:
        mem = self.exports[f"__wm_memory_{index}"]
        return bytes(mem.read(self.store, 0, mem.data_len(self.store)))
