"""Workload hosting: the synchronous, thread-safe wasm host a node daemon wraps.

``Host`` keeps a content-addressed cache of compiled modules and runs
workloads, each in its own wasmtime Store with its own WASI sandbox
(``nodes._wasi``), limits (``nodes._limits``) and input gate
(``nodes._replay``: clocks, random and poll outcomes, recorded or replayed
on demand).  Every method blocks; the daemon calls them through
``trio.to_thread.run_sync``.  Calls into one workload are serialised by that
workload's lock (a Store is used by one thread at a time); different
workloads run in parallel, since wasmtime-py's ctypes calls release the GIL.

Layout of ``data_dir``::

    modules/<sha256>.wasm             module bytes as given (what peers ask for)
    modules/<sha256>.<engine>.cwasm   Module.serialize() of the prepared module
    workloads/<id>/stdout, stderr     captured guest output
    checkpoints*/                     the daemon's shutdown checkpoint (``nodes._checkpoints``)

``<engine>`` fingerprints the wasmtime version, the CPU architecture and the
engine settings, so a cwasm compiled under another configuration is
recompiled rather than loaded (NOTES.md: a deserialised module must match the
engine's config).  wasmtime also checks this itself; a refused cwasm is
recompiled and overwritten.  A cwasm is native code that is mapped and run,
so ``data_dir`` must be writable by the node operator only.
"""

from __future__ import annotations

from typing import Any

import ctypes
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import shutil
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import wasmtime

import snapshot

from ._host_errors import (
    BadArguments,
    HostClosed,
    InvalidModule,
    ResourceLimitExceeded,
    SnapshotFailed,
    UnknownExport,
    UnknownModule,
    UnknownWorkload,
    WorkloadError,
    WorkloadExists,
    WorkloadExited,
    WorkloadTimeout,
    WorkloadTrap,
)
from ._files import write_atomically
from ._limits import Limits
from ._replay import CallInputs, InputGate, ReplayDivergence, ReplayMode, ReplayUnsupported, state_hash
from ._wasi import CallBudget, OutputSink, check_imports, make_linker, wasi_config

__all__ = ["Host", "WorkloadInfo", "HostStats", "BulkReport", "EPOCH_TICK_S"]

logger = logging.getLogger(__name__)

#: How often the ticker thread advances the engine's epoch.  A call's budget
#: is counted in ticks, so this is the granularity of every deadline: 10 ms
#: keeps a 5 s budget within 0.2 % while costing 100 wake-ups a second.  The
#: check compiled into wasm costs the same at any tick rate (NOTES.md: about
#: 3x on a tight loop, like fuel).
EPOCH_TICK_S = 0.010

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_WASM_PAGE_BYTES = 65536
#: Exports the engine owns: ``snapshot.prepare`` adds ``__wm_*`` (the start
#: function becomes ``__wm_start``), and a WASI reactor's ``_initialize`` runs
#: once, at first boot.
_RESERVED_PREFIX = "__wm_"
_RESERVED_EXPORTS = frozenset({"_initialize"})
#: ``snapshot.prepare`` exports memory index 0 under this name.
_MEMORY0_EXPORT = "__wm_memory_0"
_INT_RANGES = {"i32": 32, "i64": 64}
MODULES_DIR = "modules"
_FLOAT_TYPES = frozenset({"f32", "f64"})


@dataclass(frozen=True)
class WorkloadInfo:
    """What a host knows about one workload.

    ``memory_bytes`` is the linear memory size as of the end of the last
    call (read under the workload's lock, never during a call).
    """

    workload_id: str
    module_sha256: str
    app: str
    state: str  # "ready" or "busy" (a call, checkpoint or restore is running)
    memory_bytes: int
    memory_limit_bytes: int
    calls: int
    traps: int
    timeouts: int


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
class BulkReport:
    """Outcome of ``checkpoint_all`` or ``restore_all``: ids done, and
    ``(id, reason)`` for each workload that failed."""

    done: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()


# --- engine ---------------------------------------------------------------

def _engine_settings(limits: Limits) -> dict[str, object]:
    # Fuel stays off: the epoch deadline bounds a call's time and costs the
    # same (NOTES.md), and a cwasm built with fuel would not load here.
    return {
        "consume_fuel": False,
        "epoch_interruption": True,
        "max_wasm_stack": limits.max_wasm_stack_bytes,
    }


def _make_engine(settings: Mapping[str, object]) -> wasmtime.Engine:
    config = wasmtime.Config()
    for name, value in settings.items():
        setattr(config, name, value)
    return wasmtime.Engine(config)


def _fingerprint(settings: Mapping[str, object]) -> str:
    key = {
        "wasmtime": importlib.metadata.version("wasmtime"),
        "machine": platform.machine(),
        "settings": dict(settings),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _require_epoch_interruption(engine: wasmtime.Engine) -> None:
    """Check that a caller's engine interrupts wasm at epoch deadlines.

    A new Store's deadline is 0, so with epoch interruption on even an empty
    function traps with INTERRUPT at once.
    Raises ``ValueError`` if it does not.
    """
    module = wasmtime.Module(engine, wasmtime.wat2wasm('(module (func (export "f")))'))
    store = wasmtime.Store(engine)
    func = wasmtime.Instance(store, module, []).exports(store)["f"]
    try:
        func(store)
    except wasmtime.Trap as exc:
        if exc.trap_code is wasmtime.TrapCode.INTERRUPT:
            return
        raise
    raise ValueError("Host needs an engine with Config.epoch_interruption = True")


class _EpochTicker:
    """A daemon thread that advances an engine's epoch every ``interval_s``."""

    def __init__(self, engine: wasmtime.Engine, interval_s: float) -> None:
        self._engine = engine
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wasm-epoch-ticker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._engine.increment_epoch()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# --- module cache ---------------------------------------------------------

def module_file(data_dir: Path, sha256: str) -> Path:
    """Where a host keeps the bytes of module ``sha256``, as given, under ``data_dir``."""
    return Path(data_dir) / MODULES_DIR / f"{sha256}.wasm"


@dataclass(frozen=True)
class _Signature:
    params: tuple[str, ...]
    results: tuple[str, ...]


@dataclass(frozen=True)
class _CachedModule:
    sha256: str
    module: wasmtime.Module
    pre: wasmtime.InstancePre
    signatures: Mapping[str, _Signature]  # callable function exports
    memory0_export: str | None
    min_memory_bytes: int  # of the largest memory
    min_table_elements: int  # of all tables

    @classmethod
    def build(cls, sha256: str, module: wasmtime.Module, pre: wasmtime.InstancePre) -> _CachedModule:
        signatures: dict[str, _Signature] = {}
        memories: list[str] = []
        min_memory_bytes = min_table_elements = 0
        for export in module.exports:
            ty = export.type
            if isinstance(ty, wasmtime.FuncType):
                if not (export.name.startswith(_RESERVED_PREFIX) or export.name in _RESERVED_EXPORTS):
                    signatures[export.name] = _Signature(
                        tuple(str(t) for t in ty.params), tuple(str(t) for t in ty.results))
            elif isinstance(ty, wasmtime.MemoryType):
                memories.append(export.name)
                if export.name.startswith(_RESERVED_PREFIX):
                    # wasmtime's memory_size limit applies to each memory
                    min_memory_bytes = max(min_memory_bytes, ty.limits.min * _WASM_PAGE_BYTES)
            elif isinstance(ty, wasmtime.TableType) and export.name.startswith(_RESERVED_PREFIX):
                min_table_elements += ty.limits.min
        memory0 = _MEMORY0_EXPORT if _MEMORY0_EXPORT in memories else (memories[0] if memories else None)
        return cls(sha256, module, pre, signatures, memory0, min_memory_bytes, min_table_elements)


class _ModuleCache:
    """Compiled modules by sha256, in memory and as cwasm files on disk."""

    def __init__(self, directory: Path, engine: wasmtime.Engine, linker: wasmtime.Linker, fingerprint: str) -> None:
        self._dir = directory
        self._engine = engine
        self._linker = linker
        self._fingerprint = fingerprint
        self._loaded: dict[str, _CachedModule] = {}
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

    def get(self, sha256: str) -> _CachedModule:
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

    def _load_locked(self, sha256: str) -> _CachedModule:
        cached = self._loaded.get(sha256)
        if cached is not None:
            return cached
        cwasm = self._cwasm_path(sha256)
        if cwasm.exists():
            try:
                module = wasmtime.Module.deserialize_file(self._engine, os.fspath(cwasm))
                cached = _CachedModule.build(sha256, module, self._linker.instantiate_pre(module))
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

    def _compile(self, sha256: str, wasm: bytes) -> _CachedModule:
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
        return _CachedModule.build(sha256, module, pre)


# --- workloads ------------------------------------------------------------

@dataclass(eq=False)
class _Workload:
    """One running workload.  Everything touching ``store`` holds ``lock``."""

    workload_id: str
    module: _CachedModule
    app: str
    memory_limit_bytes: int
    args: tuple[str, ...]
    env: dict[str, str]
    preopen: dict[str, str]
    directory: Path
    stdout: OutputSink
    stderr: OutputSink
    store: wasmtime.Store
    budget: CallBudget
    instance: wasmtime.Instance
    lock: threading.Lock = field(default_factory=threading.Lock)
    funcs: dict[str, wasmtime.Func] = field(default_factory=dict)
    memory: wasmtime.Memory | None = None
    calls: int = 0
    traps: int = 0
    timeouts: int = 0
    memory_bytes: int = 0
    busy: bool = False
    removed: bool = False
    tracker: snapshot.StateTracker | None = None
    thawed: threading.Event = field(default_factory=lambda: _set_event())

    def info(self) -> WorkloadInfo:
        return WorkloadInfo(
            workload_id=self.workload_id, module_sha256=self.module.sha256, app=self.app,
            state="busy" if self.busy else "ready", memory_bytes=self.memory_bytes,
            memory_limit_bytes=self.memory_limit_bytes, calls=self.calls, traps=self.traps,
            timeouts=self.timeouts)

    def log_extra(self) -> dict[str, str]:
        return {"workload": self.workload_id, "app": self.app, "module_sha256": self.module.sha256}

    def memory0(self) -> wasmtime.Memory | None:
        if self.memory is None and self.module.memory0_export is not None:
            self.memory = self.instance.exports(self.store)[self.module.memory0_export]
        return self.memory

    def refresh_memory_bytes(self) -> None:
        memory = self.memory0()
        self.memory_bytes = memory.data_len(self.store) if memory is not None else 0

    def release(self) -> None:
        """Drop the Store, freeing its memory now rather than at the next GC."""
        self.removed = True
        self.thawed.set()  # wake calls waiting out a freeze: they find the workload gone
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None
        self.funcs.clear()
        self.memory = None
        self.store.close()


@dataclass(frozen=True)
class _Reservation:
    app: str
    memory_limit_bytes: int


class Host:
    """Runs sandboxed wasm workloads with a compiled-module cache on disk.

    Thread-safe.  Starts one daemon thread, the epoch ticker, which
    ``close()`` stops; use it as a context manager.  A caller-supplied
    ``engine`` must have ``epoch_interruption`` on (its ``max_wasm_stack`` is
    its own); pass ``engine_fingerprint`` naming its config so its cwasm files
    do not collide with other configurations'.
    Raises ``ValueError`` if ``engine`` lacks epoch interruption.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        limits: Limits = Limits(),
        engine: wasmtime.Engine | None = None,
        engine_fingerprint: str = "external",
    ) -> None:
        self._data_dir = Path(data_dir)
        self._limits = limits
        if engine is None:
            settings = _engine_settings(limits)
            engine = _make_engine(settings)
            fingerprint = _fingerprint(settings)
        else:
            _require_epoch_interruption(engine)
            fingerprint = _fingerprint({"external": engine_fingerprint})
        self._engine = engine
        linker = make_linker(engine)
        self._modules = _ModuleCache(self._data_dir / MODULES_DIR, engine, linker, fingerprint)
        self._workloads_dir = self._data_dir / "workloads"
        self._workloads_dir.mkdir(parents=True, exist_ok=True)
        # ceil() ticks could end one tick early (the first tick may come at
        # once); one more guarantees at least the budget, at most 10 ms over.
        self._deadline_ticks = math.ceil(limits.call_timeout_s / EPOCH_TICK_S) + 1
        self._lock = threading.Lock()  # guards _workloads, _pending, _closed
        self._workloads: dict[str, _Workload] = {}
        self._pending: dict[str, _Reservation] = {}  # being created or removed
        self._closed = False
        self._ticker = _EpochTicker(engine, EPOCH_TICK_S)

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def engine(self) -> wasmtime.Engine:
        return self._engine

    # --- lifecycle --------------------------------------------------------

    def close(self) -> None:
        """Drop every workload (their files stay) and stop the epoch ticker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workloads = list(self._workloads.values())
            self._workloads.clear()
        # The ticker must outlive running calls: only it can interrupt them.
        for w in workloads:
            with w.lock:
                w.release()
        self._ticker.stop()
        logger.info("host closed", extra={"workloads": len(workloads)})

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- modules ----------------------------------------------------------

    def has_module(self, sha256: str) -> bool:
        """Tell whether the module is cached here (in memory or on disk)."""
        return self._modules.has(sha256)

    def add_module(self, wasm: bytes) -> str:
        """Cache a module and return the sha256 of ``wasm`` as given.

        The module is prepared with ``snapshot.prepare``, checked and compiled,
        and the compiled code is kept on disk; a module already cached costs
        no compilation, even after a restart.
        Raises ``InvalidModule``, ``UnsupportedImports`` (listing the
        imports) or ``HostClosed``.
        """
        self._check_open()
        return self._modules.add(wasm)

    def module_bytes(self, sha256: str) -> bytes:
        """Return a cached module's bytes as given, e.g. to send to a peer.

        Raises ``UnknownModule``.
        """
        return self._modules.wasm_bytes(sha256)

    # --- deploy, restore, remove ------------------------------------------

    def deploy(
        self,
        module_sha256: str,
        *,
        workload_id: str | None = None,
        app: str = "default",
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        preopen: Mapping[str, Path] | None = None,
        memory_limit_bytes: int | None = None,
    ) -> WorkloadInfo:
        """Start a new workload from a cached module and run its first boot.

        First boot runs the module's start function and a reactor's
        ``_initialize``, within the call time budget.  The guest sees argv
        ``[workload_id, *args]``, ``env``, and the ``preopen`` directories
        (guest path -> host directory), nothing else.  ``memory_limit_bytes``
        lowers the workload's memory cap below ``Limits.memory_bytes``.
        Raises ``UnknownModule``, ``WorkloadExists``, ``BadArguments``,
        ``ResourceLimitExceeded``, ``WorkloadTrap`` (first boot failed) or
        ``HostClosed``.
        """
        workload_id = workload_id if workload_id is not None else f"w-{uuid.uuid4().hex[:12]}"
        w = self._create(module_sha256, workload_id=workload_id, app=app, args=args, env=env,
                         preopen=preopen, memory_limit_bytes=memory_limit_bytes,
                         init=self._first_boot, fresh_output=True)
        logger.info("deployed workload", extra=w.log_extra())
        return w.info()

    def restore(
        self,
        module_sha256: str,
        snap: snapshot.Snapshot,
        *,
        workload_id: str,
        app: str = "default",
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        preopen: Mapping[str, Path] | None = None,
        memory_limit_bytes: int | None = None,
        calls: int = 0,
        monotonic_ns: int | None = None,
    ) -> WorkloadInfo:
        """Start a workload in the state ``snap`` captured, without first boot.

        ``calls`` carries the call count over from where the snapshot was
        taken (a replayed call must have the index it had at the leader).
        ``monotonic_ns`` is the guest's monotonic clock when the snapshot was
        taken (``clock_state`` at the source): the restored guest's clock
        goes on from there.  Without it the clock starts near 0, as for a
        new workload, and a guest may see it go backwards.
        Output files already in the workload's directory are kept.
        Raises what ``deploy`` raises (``ResourceLimitExceeded`` if the
        snapshot's memory is over the cap), and ``SnapshotFailed`` when the
        snapshot does not fit the module.
        """
        if not isinstance(snap, snapshot.Snapshot):
            raise BadArguments(f"snap must be a snapshot.Snapshot, got {type(snap).__name__}")

        def init(w: _Workload) -> None:
            largest = max((m.size_bytes for m in snap.memories), default=0)
            if largest > w.memory_limit_bytes:
                raise ResourceLimitExceeded("memory_bytes", largest, w.memory_limit_bytes,
                                            "the snapshot's memory")
            if monotonic_ns is not None:
                w.budget.inputs.continue_from(monotonic_ns)
            self._restore_state(w, snap)
            w.calls = calls

        w = self._create(module_sha256, workload_id=workload_id, app=app, args=args, env=env,
                         preopen=preopen, memory_limit_bytes=memory_limit_bytes,
                         init=init, fresh_output=False)
        logger.info("restored workload", extra=w.log_extra())
        return w.info()

    def remove(self, workload_id: str) -> None:
        """Stop a workload and delete its output files.

        Waits for a running call to end (at most the call time budget).
        Raises ``UnknownWorkload``.
        """
        with self._lock:
            self._raise_if_closed()
            w = self._workloads.pop(workload_id, None)
            if w is None:
                raise UnknownWorkload(f"no workload {workload_id!r} on this host")
            self._pending[workload_id] = _Reservation(w.app, 0)  # keeps the id until its files are gone
        try:
            with w.lock:
                w.release()
            shutil.rmtree(w.directory, ignore_errors=True)
        finally:
            with self._lock:
                del self._pending[workload_id]
        logger.info("removed workload", extra=w.log_extra())

    def rename(self, workload_id: str, new_id: str) -> None:
        """Give a workload another id, its output files moving along; its state is untouched.

        The guest's argv[0] stays the id it started with.  Waits for a
        running call to end (at most the call time budget).  Raises
        ``UnknownWorkload``, ``WorkloadExists`` or ``BadArguments`` (a bad id).
        """
        _check_name("workload_id", new_id)
        with self._lock:
            self._raise_if_closed()
            if new_id in self._workloads or new_id in self._pending:
                raise WorkloadExists(f"workload {new_id!r} already exists on this host")
            w = self._workloads.pop(workload_id, None)
            if w is None:
                raise UnknownWorkload(f"no workload {workload_id!r} on this host")
            self._pending[new_id] = _Reservation(w.app, 0)  # keeps the new id while the files move
        try:
            with w.lock:
                directory = self._workloads_dir / new_id
                shutil.rmtree(directory, ignore_errors=True)  # a leftover of a workload removed uncleanly
                os.replace(w.directory, directory)
                w.directory, w.workload_id, w.budget.inputs.workload_id = directory, new_id, new_id
                w.stdout.path, w.stderr.path = directory / "stdout", directory / "stderr"
        except BaseException:
            with self._lock:
                del self._pending[new_id]
                self._workloads[workload_id] = w
            raise
        self._publish(new_id, w, "being renamed")
        logger.info("renamed workload", extra={**w.log_extra(), "from": workload_id})

    def _create(self, module_sha256, *, workload_id, app, args, env, preopen, memory_limit_bytes,
                init, fresh_output) -> _Workload:
        self._check_open()
        _check_name("workload_id", workload_id)
        _check_name("app", app)
        if not isinstance(args, Sequence) or isinstance(args, str):
            raise BadArguments("args must be a sequence of str")
        env = dict(env or {})
        cap = self._memory_cap(memory_limit_bytes)
        module = self._modules.get(module_sha256)
        if module.min_memory_bytes > cap:
            raise ResourceLimitExceeded("memory_bytes", module.min_memory_bytes, cap,
                                        "the module's initial memory")
        if module.min_table_elements > self._limits.table_elements:
            raise ResourceLimitExceeded("table_elements", module.min_table_elements,
                                        self._limits.table_elements, "the module's initial tables")
        self._reserve(workload_id, app, cap)
        directory = self._workloads_dir / workload_id
        try:
            if fresh_output:
                shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True, exist_ok=True)
            stdout = OutputSink(directory / "stdout", self._limits.output_bytes)
            stderr = OutputSink(directory / "stderr", self._limits.output_bytes)
            store = wasmtime.Store(self._engine)
            store.set_limits(memory_size=cap, table_elements=self._limits.table_elements)
            store.set_wasi(wasi_config(argv=[workload_id, *args], env=env, preopen=preopen,
                                       stdout=stdout, stderr=stderr))
            budget = CallBudget(InputGate(workload_id))
            try:
                with self._running(store, budget):
                    instance = module.pre.instantiate(store)
            except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                raise self._guest_error(workload_id, exc, budget) from exc
            w = _Workload(workload_id=workload_id, module=module, app=app, memory_limit_bytes=cap,
                          args=tuple(args), env=env,
                          preopen={g: os.fspath(h) for g, h in (preopen or {}).items()},
                          directory=directory, stdout=stdout, stderr=stderr, store=store,
                          budget=budget, instance=instance)
            init(w)
            w.refresh_memory_bytes()
        except BaseException:
            with self._lock:
                self._pending.pop(workload_id, None)
            if fresh_output:
                shutil.rmtree(directory, ignore_errors=True)
            raise
        self._publish(workload_id, w, "starting")
        return w

    def _publish(self, workload_id: str, w: _Workload, doing: str) -> None:
        """Make ``w`` callable as ``workload_id``, releasing its reservation.

        Raises HostClosed (and frees ``w``) if the host closed meanwhile.
        """
        with self._lock:
            del self._pending[workload_id]
            if self._closed:
                w.release()
                raise HostClosed(f"host closed while the workload was {doing}")
            self._workloads[workload_id] = w

    def _memory_cap(self, memory_limit_bytes: int | None) -> int:
        if memory_limit_bytes is None:
            return self._limits.memory_bytes
        if not isinstance(memory_limit_bytes, int) or memory_limit_bytes <= 0:
            raise BadArguments(f"memory_limit_bytes must be a positive int, got {memory_limit_bytes!r}")
        if memory_limit_bytes > self._limits.memory_bytes:
            raise ResourceLimitExceeded("memory_bytes", memory_limit_bytes, self._limits.memory_bytes)
        return memory_limit_bytes

    def _reserve(self, workload_id: str, app: str, cap: int) -> None:
        """Claim a workload slot under the host and app limits.

        Raises ``WorkloadExists``, ``ResourceLimitExceeded`` or ``HostClosed``.
        """
        limits = self._limits
        with self._lock:
            self._raise_if_closed()
            if workload_id in self._workloads or workload_id in self._pending:
                raise WorkloadExists(f"workload {workload_id!r} already exists on this host")
            claims = [(w.app, w.memory_limit_bytes) for w in self._workloads.values()]
            claims += [(r.app, r.memory_limit_bytes) for r in self._pending.values()]
            if len(claims) + 1 > limits.max_workloads:
                raise ResourceLimitExceeded("max_workloads", len(claims) + 1, limits.max_workloads)
            app_caps = [c for a, c in claims if a == app]
            if len(app_caps) + 1 > limits.max_workloads_per_app:
                raise ResourceLimitExceeded("max_workloads_per_app", len(app_caps) + 1,
                                            limits.max_workloads_per_app, f"app {app!r}")
            if limits.app_memory_bytes is not None and sum(app_caps) + cap > limits.app_memory_bytes:
                raise ResourceLimitExceeded("app_memory_bytes", sum(app_caps) + cap,
                                            limits.app_memory_bytes, f"app {app!r}")
            self._pending[workload_id] = _Reservation(app, cap)

    def _first_boot(self, w: _Workload) -> None:
        try:
            with self._running(w.store, w.budget):
                snapshot.first_boot(w.store, w.instance)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise self._guest_error(w.workload_id, exc, w.budget) from exc

    def _restore_state(self, w: _Workload, snap: snapshot.Snapshot) -> None:
        try:
            with self._running(w.store, w.budget):  # restore may run prepared accessor functions
                snapshot.restore(snap, w.store, w.instance)
        except (snapshot.SnapshotError, wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise SnapshotFailed(w.workload_id, f"cannot restore: {exc}") from exc

    # --- using a workload -------------------------------------------------

    def call(self, workload_id: str, export: str, args: Sequence[int | float] = (), *,
             inputs: CallInputs | None = None) -> None | int | float | tuple:
        """Call an exported function and return its result.

        Returns None, one value, or a tuple for several results.  Blocks
        while another call into the same workload runs; calls into different
        workloads run in parallel.  The call is interrupted after
        ``Limits.call_timeout_s``; the workload stays usable after a trap.
        In replay mode (``set_replay_mode``) every call takes ``inputs``, the
        ``CallInputs`` the leader recorded for it, and the guest's clock,
        random and poll requests are answered from them.
        Raises ``UnknownWorkload``, ``UnknownExport``, ``BadArguments``,
        ``WorkloadTimeout``, ``WorkloadExited``, ``WorkloadTrap``,
        ``ReplayDivergence`` (replay only; it takes precedence over the
        others) or ``HostClosed``.
        """
        w = self._get(workload_id)
        signature = w.module.signatures.get(export) if isinstance(export, str) else None
        if signature is None:
            raise UnknownExport(f"workload {workload_id} has no callable export {export!r}")
        params = _convert_args(export, signature, args)
        with self._using(w, guest=True):
            func = w.funcs.get(export)
            if func is None:
                func = w.funcs[export] = w.instance.exports(w.store)[export]
            gate = w.budget.inputs
            gate.begin_call(w.calls, export, params, inputs)
            try:
                with self._running(w.store, w.budget):
                    result = func(w.store, *params)
            except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                error = gate.end_call() or self._guest_error(workload_id, exc, w.budget)
                if isinstance(error, WorkloadTimeout):
                    w.timeouts += 1
                elif not isinstance(error, ReplayDivergence):
                    w.traps += 1
                logger.info("call failed: %s", error, extra={**w.log_extra(), "export": export})
                raise error from exc
            finally:
                w.calls += 1
                w.refresh_memory_bytes()
            divergence = gate.end_call()
            if divergence is not None:
                logger.info("replay diverged: %s", divergence, extra={**w.log_extra(), "export": export})
                raise divergence
        return tuple(result) if isinstance(result, list) else result

    def read_memory(self, workload_id: str, offset: int, length: int) -> bytes:
        """Copy ``length`` bytes out of the workload's memory 0.

        Raises ``UnknownWorkload`` or ``BadArguments`` (out of bounds, or the
        module has no memory).
        """
        w = self._get(workload_id)
        with self._using(w, guest=True):
            address = self._span(w, offset, length)
            buf = bytearray(length)
            if length:
                ctypes.memmove((ctypes.c_char * length).from_buffer(buf), address, length)
        return bytes(buf)

    def write_memory(self, workload_id: str, offset: int, data: bytes) -> None:
        """Copy ``data`` into the workload's memory 0 at ``offset``.

        Raises ``UnknownWorkload`` or ``BadArguments``.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise BadArguments(f"data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        w = self._get(workload_id)
        with self._using(w, guest=True):
            address = self._span(w, offset, len(data))
            if data:
                ctypes.memmove(address, data, len(data))

    @staticmethod
    def _span(w: _Workload, offset: int, length: int) -> int:
        """Return the address of ``[offset, offset+length)`` in memory 0.

        Raises ``BadArguments``.
        """
        memory = w.memory0()
        if memory is None:
            raise BadArguments(f"workload {w.workload_id} has no memory")
        for name, value in (("offset", offset), ("length", length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BadArguments(f"{name} must be a non-negative int, got {value!r}")
        size = memory.data_len(w.store)
        if offset + length > size:
            raise BadArguments(f"[{offset}, {offset + length}) is outside memory of {size} bytes")
        return ctypes.addressof(memory.data_ptr(w.store).contents) + offset

    def output(self, workload_id: str) -> tuple[bytes, bytes]:
        """Return what the workload wrote to stdout and stderr (capped).

        Raises ``UnknownWorkload``.
        """
        w = self._get(workload_id)
        return w.stdout.path.read_bytes(), w.stderr.path.read_bytes()

    # --- snapshots --------------------------------------------------------

    def checkpoint(self, workload_id: str) -> snapshot.Snapshot:
        """Capture the workload's state between calls.

        Raises ``UnknownWorkload`` or ``SnapshotFailed``.
        """
        w = self._get(workload_id)
        with self._using(w):
            return self._capture(w)

    def _capture(self, w: _Workload) -> snapshot.Snapshot:
        try:
            with self._running(w.store, w.budget):  # capture may run prepared accessor functions
                return snapshot.capture(w.store, w.instance)
        except (snapshot.SnapshotError, wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise SnapshotFailed(w.workload_id, f"cannot capture: {exc}") from exc

    # --- live migration -----------------------------------------------------

    def start_tracking(self, workload_id: str, *, backend: str = "auto") -> snapshot.Snapshot:
        """Copy the workload's state and start tracking the pages it writes.

        Only arming the tracker and reading globals and tables hold the
        workload; the memory copy runs while calls go on, and whatever they
        write is dirty, so the next ``capture_delta`` sends it again.  The
        result is a base for deltas, not a consistent snapshot on its own.
        Raises ``UnknownWorkload`` or ``SnapshotFailed``.
        """
        w = self._get(workload_id)
        with self._using(w):
            self._drop_tracker(w)
            try:
                w.tracker = snapshot.StateTracker(w.store, w.instance, backend=backend)
                with self._running(w.store, w.budget):
                    pending = w.tracker.begin_capture(w.store)
            except (snapshot.SnapshotError, wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                self._drop_tracker(w)
                raise SnapshotFailed(w.workload_id, f"cannot start tracking: {exc}") from exc
        return pending.finish()

    def capture_delta(self, workload_id: str) -> snapshot.Snapshot:
        """Return the pages, globals and tables changed since the previous capture.

        Raises ``UnknownWorkload`` or ``SnapshotFailed`` (also when tracking
        was not started).
        """
        w = self._get(workload_id)
        with self._using(w):
            if w.tracker is None:
                raise SnapshotFailed(w.workload_id, "dirty tracking was not started")
            try:
                with self._running(w.store, w.budget):
                    return w.tracker.capture_delta(w.store)
            except (snapshot.SnapshotError, wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                raise SnapshotFailed(w.workload_id, f"cannot capture a delta: {exc}") from exc

    def stop_tracking(self, workload_id: str) -> None:
        """Stop tracking dirty pages (a migration ended); unknown ids are ignored."""
        with self._lock:
            w = self._workloads.get(workload_id)
        if w is not None:
            with self._using(w):
                self._drop_tracker(w)

    @staticmethod
    def _drop_tracker(w: _Workload) -> None:
        if w.tracker is not None:
            w.tracker.close()
            w.tracker = None

    def freeze(self, workload_id: str) -> None:
        """Hold every call and memory access to the workload until ``thaw``.

        Captures still work.  A migration freezes the workload for its final
        round, so nothing runs between the last capture and the commit.
        Raises ``UnknownWorkload``.
        """
        w = self._get(workload_id)
        with self._using(w):
            w.thawed.clear()

    def thaw(self, workload_id: str) -> None:
        """Let held calls run again; unknown ids are ignored (a moved workload is gone)."""
        with self._lock:
            w = self._workloads.get(workload_id)
        if w is not None:
            w.thawed.set()

    def apply_snapshot(self, workload_id: str, snap: snapshot.Snapshot, *, monotonic_ns: int | None = None) -> None:
        """Load a delta (or a full snapshot) into an existing workload.

        Used while a migration streams rounds in.  The delta must have been
        taken against the state the workload holds.  ``monotonic_ns`` is as
        for ``restore``: give the source's ``clock_state`` with the final
        round.  Raises ``UnknownWorkload``, ``ResourceLimitExceeded``,
        ``BadArguments`` or ``SnapshotFailed``.
        """
        w = self._get(workload_id)
        largest = max((m.size_bytes for m in snap.memories), default=0)
        if largest > w.memory_limit_bytes:
            raise ResourceLimitExceeded("memory_bytes", largest, w.memory_limit_bytes, "the snapshot's memory")
        with self._using(w):
            if monotonic_ns is not None:
                w.budget.inputs.continue_from(monotonic_ns)
            self._restore_state(w, snap)
            w.refresh_memory_bytes()

    # --- deterministic replay ---------------------------------------------

    def set_replay_mode(self, workload_id: str, mode: str) -> None:
        """Set how the workload's nondeterministic inputs are handled: "off", "record" or "replay".

        ``record``: each call's inputs are kept for ``last_inputs``.
        ``replay``: every call must pass the ``inputs`` recorded for it, and
        the guest's output is dropped (its leader already wrote it).
        Setting a mode forgets the last record and any divergence.  Waits
        for a running call.  Raises ``UnknownWorkload``, ``BadArguments``
        (an unknown mode) or ``ReplayUnsupported`` (record or replay of a
        workload with preopened directories: files are inputs and outputs
        that are not recorded).
        """
        w = self._get(workload_id)
        if mode != ReplayMode.OFF and w.preopen:
            raise ReplayUnsupported(f"workload {workload_id} has preopened directories; "
                                    "file contents are not recorded, so it cannot be replayed")
        with self._using(w):
            w.budget.inputs.set_mode(mode)
            w.stdout.muted = w.stderr.muted = w.budget.inputs.mode is ReplayMode.REPLAY

    def last_inputs(self, workload_id: str) -> CallInputs:
        """Return the inputs recorded by the workload's last call (record mode).

        Pair them with the call by ``CallInputs.call_index``: another caller
        may have run a call in between.  Raises ``UnknownWorkload`` or
        ``BadArguments`` (no call recorded since record mode was set).
        """
        w = self._get(workload_id)
        with self._using(w):
            inputs = w.budget.inputs.last
        if inputs is None:
            raise BadArguments(f"workload {workload_id} has recorded no call "
                               f"({w.budget.inputs.mode.value} mode)")
        return inputs

    def state_hash(self, workload_id: str) -> str:
        """Return a hex digest of the workload's state (memories, globals, tables).

        Equal states give equal digests on any host.  Works while frozen,
        like a capture.  Raises ``UnknownWorkload`` or ``SnapshotFailed``.
        """
        w = self._get(workload_id)
        with self._using(w):
            try:
                with self._running(w.store, w.budget):  # reading globals may run accessor functions
                    return state_hash(w.store, w.instance)
            except (snapshot.SnapshotError, wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                raise SnapshotFailed(w.workload_id, f"cannot hash state: {exc}") from exc

    def set_call_count(self, workload_id: str, calls: int) -> None:
        """Set the workload's call counter, e.g. to the leader's before replaying its calls.

        A replayed call must run at the index it had at the leader (its
        ``CallInputs.call_index``); ``restore(calls=...)`` sets the same
        counter at creation.  Raises ``UnknownWorkload`` or ``BadArguments``.
        """
        if not isinstance(calls, int) or isinstance(calls, bool) or calls < 0:
            raise BadArguments(f"calls must be a non-negative int, got {calls!r}")
        w = self._get(workload_id)
        with self._using(w):
            w.calls = calls

    def pages_digest(self, workload_id: str, pages: Mapping[int, Sequence[int]]) -> str:
        """Digest the given 4 KiB pages of each memory, with memory sizes and globals.

        ``snapshot.pages_digest``: replicas compare what was written since
        they last agreed.  Raises ``UnknownWorkload`` or ``SnapshotFailed``.
        """
        w = self._get(workload_id)
        with self._using(w):
            try:
                with self._running(w.store, w.budget):  # reading globals may run accessor functions
                    return snapshot.pages_digest(w.store, w.instance, {i: list(p) for i, p in pages.items()})
            except (snapshot.SnapshotError, wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                raise SnapshotFailed(w.workload_id, f"cannot digest pages: {exc}") from exc

    def clock_state(self, workload_id: str) -> int:
        """Return the guest's monotonic clock now, in ns, to carry to a restore.

        Read it with the snapshot (after the final capture, while frozen)
        and pass it as ``monotonic_ns`` to ``restore`` or ``apply_snapshot``.
        Raises ``UnknownWorkload``.
        """
        w = self._get(workload_id)
        with self._using(w):
            return w.budget.inputs.monotonic_ns()

    def checkpoint_entry(self, workload_id: str) -> tuple[snapshot.Snapshot, dict[str, Any]]:
        """Capture the workload between calls, with what ``restore`` needs to bring it back.

        The dict (a checkpoint manifest entry) holds the module, app, args,
        env, preopened directories, memory cap, call count and guest clock,
        all read under the lock the capture holds.
        Raises ``UnknownWorkload`` or ``SnapshotFailed``.
        """
        w = self._get(workload_id)
        with self._using(w):
            snap = self._capture(w)
            return snap, {"id": w.workload_id, "module_sha256": w.module.sha256, "app": w.app,
                          "calls": w.calls, "args": list(w.args), "env": dict(w.env),
                          "preopen": dict(w.preopen), "memory_limit_bytes": w.memory_limit_bytes,
                          "monotonic_ns": w.budget.inputs.monotonic_ns()}

    def checkpoint_all(self, directory: Path, *, key: bytes | None = None) -> BulkReport:
        """Write every workload's snapshot and then a manifest into ``directory``.

        ``nodes._checkpoints.write``: a workload that cannot be captured is
        skipped and reported in ``failed``.  Raises ``OSError`` naming the
        file that could not be written.
        """
        from . import _checkpoints  # the checkpoint format builds on this module

        return _checkpoints.write(self, Path(directory), key=key)

    def restore_all(self, directory: Path, *, key: bytes | None = None) -> BulkReport:
        """Restore every workload ``checkpoint_all`` wrote into ``directory``.

        A directory without a manifest restores nothing.  A workload that
        cannot be restored (its module is gone, its snapshot is corrupt, the
        limits refuse it) is skipped and reported in ``failed``.
        Raises ``SnapshotFailed`` if the manifest itself is unreadable.
        """
        from . import _checkpoints

        return _checkpoints.restore_all(self, Path(directory), key=key)

    # --- introspection ----------------------------------------------------

    def workloads(self) -> list[WorkloadInfo]:
        """List the workloads, as of the end of their last call."""
        with self._lock:
            return [w.info() for w in self._workloads.values()]

    def info(self, workload_id: str) -> WorkloadInfo:
        """Describe one workload.  Raises ``UnknownWorkload``."""
        return self._get(workload_id).info()

    def launch_settings(self, workload_id: str) -> dict[str, Any]:
        """The settings a copy of the workload must start with elsewhere: args, env, memory cap.

        (Preopened directories are local to this host and do not travel.)
        Raises ``UnknownWorkload``.
        """
        w = self._get(workload_id)
        return {"args": tuple(w.args), "env": dict(w.env), "memory_limit_bytes": w.memory_limit_bytes}

    def continue_clock(self, workload_id: str, monotonic_ns: int) -> None:
        """Make the guest's monotonic clock carry on from ``monotonic_ns`` (after a move).

        Raises ``UnknownWorkload``.
        """
        w = self._get(workload_id)
        with self._using(w):
            w.budget.inputs.continue_from(monotonic_ns)

    def stats(self) -> HostStats:
        """Return the host's counters."""
        m = self._modules
        with self._lock:
            workloads = list(self._workloads.values())
        return HostStats(modules=len(m), compiles=m.compiles, deserializations=m.deserializations,
                         cache_hits=m.cache_hits, workloads=len(workloads),
                         memory_bytes=sum(w.memory_bytes for w in workloads))

    # --- helpers ----------------------------------------------------------

    def _check_open(self) -> None:
        with self._lock:
            self._raise_if_closed()

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise HostClosed("host is closed")

    def _get(self, workload_id: str) -> _Workload:
        with self._lock:
            self._raise_if_closed()
            w = self._workloads.get(workload_id) if isinstance(workload_id, str) else None
        if w is None:
            raise UnknownWorkload(f"no workload {workload_id!r} on this host")
        return w

    def _using(self, w: _Workload, *, guest: bool = False) -> _InUse:
        return _InUse(self, w, guest)

    @contextmanager
    def _running(self, store: wasmtime.Store, budget: CallBudget) -> Iterator[None]:
        """Give guest code about to run on this thread its time budget."""
        store.set_epoch_deadline(self._deadline_ticks)
        with budget.running(self._limits.call_timeout_s):
            yield

    def _guest_error(self, workload_id: str, exc: Exception, budget: CallBudget) -> WorkloadError:
        """Translate a wasmtime trap or error raised by guest code."""
        if budget.exhausted:
            return WorkloadTimeout(workload_id, self._limits.call_timeout_s)
        if isinstance(exc, wasmtime.ExitTrap):
            return WorkloadExited(workload_id, exc.code)
        if isinstance(exc, wasmtime.Trap):
            code = exc.trap_code
            if code is wasmtime.TrapCode.INTERRUPT:
                return WorkloadTimeout(workload_id, self._limits.call_timeout_s)
            return WorkloadTrap(workload_id, _last_line(exc.message), trap_code=code.name.lower() if code else None)
        return WorkloadTrap(workload_id, _last_line(str(exc)))


def _set_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


class _InUse:
    """Holds a workload's lock and marks it busy; refuses a removed one.

    With ``guest=True`` (calls and memory access) it also waits out a
    freeze, checking under the lock, so nothing runs between a migration's
    final capture and the commit.
    """

    def __init__(self, host: Host, w: _Workload, guest: bool = False) -> None:
        self._host = host
        self._w = w
        self._guest = guest

    def __enter__(self) -> _Workload:
        w = self._w
        w.lock.acquire()
        while self._guest and not w.thawed.is_set() and not w.removed:
            w.lock.release()
            w.thawed.wait()
            w.lock.acquire()
        if w.removed:
            w.lock.release()
            self._host._check_open()
            raise UnknownWorkload(f"no workload {w.workload_id!r} on this host")
        w.busy = True
        return w

    def __exit__(self, *exc_info: object) -> None:
        self._w.busy = False
        self._w.lock.release()


def _last_line(message: str) -> str:
    # wasmtime puts a backtrace first and the cause last; keep the cause.
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else "trapped"


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str) or not _ID.match(value):
        raise BadArguments(f"{what} must match {_ID.pattern!r}, got {value!r}")


def _convert_args(export: str, signature: _Signature, args: Sequence[int | float]) -> list[int | float]:
    """Check call arguments against the export's signature and convert them.

    Integers may be given signed or unsigned; they are passed signed.
    Raises ``BadArguments``.
    """
    unsupported = [t for t in signature.params + signature.results
                   if t not in _INT_RANGES and t not in _FLOAT_TYPES]
    if unsupported:
        raise BadArguments(f"export {export!r} uses {', '.join(unsupported)}, which calls cannot carry")
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
        raise BadArguments("args must be a sequence of numbers")
    if len(args) != len(signature.params):
        raise BadArguments(f"export {export!r} takes {len(signature.params)} arguments, got {len(args)}")
    converted: list[int | float] = []
    for i, (ty, value) in enumerate(zip(signature.params, args)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadArguments(f"argument {i} of {export!r} must be a number, got {type(value).__name__}")
        if ty in _FLOAT_TYPES:
            converted.append(float(value))
            continue
        if not isinstance(value, int):
            raise BadArguments(f"argument {i} of {export!r} is {ty}, got a float")
        bits = _INT_RANGES[ty]
        if not -(1 << (bits - 1)) <= value < (1 << bits):
            raise BadArguments(f"argument {i} of {export!r} does not fit in {ty}: {value}")
        converted.append(value - (1 << bits) if value >= (1 << (bits - 1)) else value)
    return converted
