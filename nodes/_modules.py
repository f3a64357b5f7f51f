"""The module cache: modules by sha256, as given (.wasm) and compiled (.cwasm), on disk and in memory.

Layout under a host's ``data_dir``::

    modules/<sha256>.wasm             module bytes as given (what peers ask for)
    modules/<sha256>.<engine>.cwasm   Module.serialize() of the prepared module

A module is prepared with ``snapshot.prepare``, its imports checked
(``nodes._wasi.check_imports``), compiled and linked once; ``<engine>``
fingerprints the engine (``nodes._engine.fingerprint``), so a cwasm
compiled under another configuration is recompiled rather than loaded: a
deserialised module must match the engine's config.  wasmtime also checks
this itself; a refused cwasm is recompiled and overwritten.  A cwasm is
native code that is mapped and run, so ``data_dir`` must be writable by the
node operator only.  One lock per sha256 keeps two threads from compiling
the same module at once.

Also here: what a module's callable exports take and return
(``Signature``); ``nodes._call_args`` checks call arguments against it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import wasmtime

import snapshot

from ._files import write_atomically
from ._host_errors import BadArguments, InvalidModule, ResourceLimitExceeded, UnknownModule
from ._wasi import check_imports

logger = logging.getLogger(__name__)

MODULES_DIR = "modules"
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_WASM_PAGE_BYTES = 65536
#: Exports the engine owns: ``snapshot.prepare`` adds ``__wm_*`` (the start
#: function becomes ``__wm_start``), and a WASI reactor's ``_initialize`` runs
#: once, at first boot.
_RESERVED_PREFIX = "__wm_"
_RESERVED_EXPORTS = frozenset({"_initialize"})
#: ``snapshot.prepare`` exports memory index 0 under this name.
_MEMORY0_EXPORT = "__wm_memory_0"


def module_file(data_dir: Path, sha256: str) -> Path:
    """Where a host keeps the bytes of module ``sha256``, as given, under ``data_dir``."""
    return Path(data_dir) / MODULES_DIR / f"{sha256}.wasm"


@dataclass(frozen=True)
class HostStats:
    """Counters of one ``Host``: modules, compilation and workloads."""

    modules: int  # compiled modules loaded in this process
    compiles: int  # modules compiled from wasm
    deserializations: int  # modules loaded from a cwasm on disk
    cache_hits: int  # add_module() calls that found the module already cached
    workloads: int
    memory_bytes: int  # sum of the workloads' linear memory


@dataclass(frozen=True)
class Signature:
    params: tuple[str, ...]
    results: tuple[str, ...]


@dataclass(frozen=True)
class CachedModule:
    sha256: str
    module: wasmtime.Module
    pre: wasmtime.InstancePre
    signatures: Mapping[str, Signature]  # callable function exports
    memory0_export: str | None
    min_memory_bytes: int  # of the largest memory
    min_table_elements: int  # of all tables
    #: Callable exports that provably finish within ``snapshot.DEFAULT_MAX_INSTRUCTIONS`` instructions
    #: (``snapshot.bounded_exports``): a node may run them on its event loop.
    bounded: frozenset[str] = frozenset()

    @classmethod
    def build(cls, sha256: str, module: wasmtime.Module, pre: wasmtime.InstancePre, wasm: bytes) -> CachedModule:
        """The cache entry of ``module``, compiled from the prepared form of ``wasm``."""
        signatures: dict[str, Signature] = {}
        memories: list[str] = []
        min_memory_bytes = min_table_elements = 0
        for export in module.exports:
            ty = export.type
            if isinstance(ty, wasmtime.FuncType):
                if not (export.name.startswith(_RESERVED_PREFIX) or export.name in _RESERVED_EXPORTS):
                    signatures[export.name] = Signature(
                        tuple(str(t) for t in ty.params), tuple(str(t) for t in ty.results))
            elif isinstance(ty, wasmtime.MemoryType):
                memories.append(export.name)
                if export.name.startswith(_RESERVED_PREFIX):
                    # wasmtime's memory_size limit applies to each memory
                    min_memory_bytes = max(min_memory_bytes, ty.limits.min * _WASM_PAGE_BYTES)
            elif isinstance(ty, wasmtime.TableType) and export.name.startswith(_RESERVED_PREFIX):
                min_table_elements += ty.limits.min
        memory0 = _MEMORY0_EXPORT if _MEMORY0_EXPORT in memories else (memories[0] if memories else None)
        bounded = frozenset(snapshot.bounded_exports(wasm)) & signatures.keys()
        return cls(sha256, module, pre, signatures, memory0, min_memory_bytes, min_table_elements, bounded)

    def check_fits(self, memory_limit_bytes: int, table_elements: int) -> None:
        """Raises ``ResourceLimitExceeded`` if the module's initial memory or tables exceed the limits."""
        if self.min_memory_bytes > memory_limit_bytes:
            raise ResourceLimitExceeded("memory_bytes", self.min_memory_bytes, memory_limit_bytes,
                                        "the module's initial memory")
        if self.min_table_elements > table_elements:
            raise ResourceLimitExceeded("table_elements", self.min_table_elements,
                                        table_elements, "the module's initial tables")


class ModuleCache:
    """Compiled modules by sha256, in memory and as cwasm files on disk."""

    def __init__(self, directory: Path, engine: wasmtime.Engine, linker: wasmtime.Linker, fingerprint: str) -> None:
        self._dir = directory
        self._engine = engine
        self._linker = linker
        self._fingerprint = fingerprint
        self._loaded: dict[str, CachedModule] = {}
        self._lock = threading.Lock()  # guards _loading and the counters
        self._loading: dict[str, threading.Lock] = {}
        self.compiles = self.deserializations = self.cache_hits = 0
        directory.mkdir(parents=True, exist_ok=True)

    def _wasm_path(self, sha256: str) -> Path:
        return module_file(self._dir.parent, sha256)

    def _cwasm_path(self, sha256: str) -> Path:
        return self._dir / f"{sha256}.{self._fingerprint}.cwasm"

    def __len__(self) -> int:
        return len(self._loaded)

    def has(self, sha256: str) -> bool:
        if not isinstance(sha256, str) or not _SHA256.match(sha256):
            return False
        return sha256 in self._loaded or self._wasm_path(sha256).exists()

    def wasm_bytes(self, sha256: str) -> bytes:
        """Return the module's bytes as given.  Raises ``UnknownModule``."""
        if not self.has(sha256):
            raise UnknownModule(f"no module {sha256!r} on this host")
        return self._wasm_path(sha256).read_bytes()

    def add(self, wasm: bytes) -> str:
        """Prepare, check, compile and cache ``wasm``; return its sha256.

        Raises ``InvalidModule`` or ``UnsupportedImports``.
        """
        if not isinstance(wasm, (bytes, bytearray, memoryview)):
            raise BadArguments(f"module must be bytes, got {type(wasm).__name__}")
        wasm = bytes(wasm)
        sha256 = hashlib.sha256(wasm).hexdigest()
        with self._lock_for(sha256):
            if sha256 in self._loaded or self._wasm_path(sha256).exists():
                self._load_locked(sha256)
                with self._lock:
                    self.cache_hits += 1
                return sha256
            self._loaded[sha256] = self._compile(sha256, wasm)
            write_atomically(self._wasm_path(sha256), wasm)
        return sha256

    def get(self, sha256: str) -> CachedModule:
        """Return a compiled module, loading or recompiling it from disk.

        Raises ``UnknownModule``.
        """
        cached = self._loaded.get(sha256)
        if cached is not None:
            return cached
        if not self.has(sha256):
            raise UnknownModule(f"no module {sha256!r} on this host")
        with self._lock_for(sha256):
            return self._load_locked(sha256)

    def _lock_for(self, sha256: str) -> threading.Lock:
        with self._lock:
            return self._loading.setdefault(sha256, threading.Lock())

    def _load_locked(self, sha256: str) -> CachedModule:
        cached = self._loaded.get(sha256)
        if cached is not None:
            return cached
        cwasm = self._cwasm_path(sha256)
        if cwasm.exists():
            try:
                module = wasmtime.Module.deserialize_file(self._engine, os.fspath(cwasm))
                cached = CachedModule.build(sha256, module, self._linker.instantiate_pre(module),
                                            self._wasm_path(sha256).read_bytes())
                with self._lock:
                    self.deserializations += 1
            except wasmtime.WasmtimeError as exc:
                logger.warning("recompiling module: cached code refused: %s", exc,
                               extra={"module_sha256": sha256})
        if cached is None:
            wasm = self._wasm_path(sha256).read_bytes()
            if hashlib.sha256(wasm).hexdigest() != sha256:
                raise UnknownModule(f"cached bytes of module {sha256} are corrupt")
            cached = self._compile(sha256, wasm)
        self._loaded[sha256] = cached
        return cached

    def _compile(self, sha256: str, wasm: bytes) -> CachedModule:
        try:
            prepared = snapshot.prepare(wasm)
        except snapshot.SnapshotError as exc:
            raise InvalidModule(f"cannot prepare module: {exc}") from exc
        try:
            module = wasmtime.Module(self._engine, prepared)
        except wasmtime.WasmtimeError as exc:
            raise InvalidModule(f"cannot compile module: {exc}") from exc
        check_imports(module)
        try:
            pre = self._linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:  # e.g. a WASI function that does not exist
            raise InvalidModule(f"cannot link module: {exc}") from exc
        with self._lock:
            self.compiles += 1
        write_atomically(self._cwasm_path(sha256), module.serialize())
        logger.info("compiled module", extra={"module_sha256": sha256})
        return CachedModule.build(sha256, module, pre, wasm)
