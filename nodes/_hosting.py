"""Workload hosting: ``Host``, the synchronous, thread-safe wasm host a node daemon wraps.

``Host`` keeps a cache of compiled modules (``nodes._modules``) and runs
workloads (``nodes._workload``), each in its own wasmtime Store with its own
WASI sandbox (``nodes._wasi``), limits (``nodes._limits``) and input gate
(``nodes._replay``: clocks, random and poll outcomes, recorded or replayed
on demand), on one engine whose epoch a ticker thread advances
(``nodes._engine``).  Its methods deploy, restore, remove, call, read and
write memory, read output and checkpoint; ``hold`` gives the operations
only a migration needs (``nodes._hold``).  Every method blocks; the daemon
runs them in worker threads.  Calls into one workload are serialised by its
lock (a Store is used by one thread at a time); other workloads run in
parallel: wasmtime-py's ctypes calls release the GIL.

Layout of ``data_dir``::

    modules/                          the module cache (``nodes._modules``)
    workloads/<id>/stdout, stderr     captured guest output
    workloads/<id>/hibernated.snap    a hibernated workload's state (``nodes._hibernate``)
    checkpoints*/                     the daemon's shutdown checkpoint (``nodes._checkpoints``)

``data_dir`` holds compiled native code that is run: only its operator may write it.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import wasmtime

import snapshot

from ._call_args import CallResults, convert_args
from ._checkpoint_format import BulkReport
from ._engine import EPOCH_TICK_S, EpochTicker, open_engine
from ._fed_workload import FedWorkload
from ._files import sweep_leftovers
from ._hibernate import Hibernator
from ._host_checkpoints import Checkpointing
from ._hold import Held
from ._host_errors import BadArguments, UnknownExport
from ._limits import Limits
from ._modules import MODULES_DIR, HostStats, ModuleCache
from ._registry import Registry
from ._replay import CallInputs, ReplayMode
from ._wasi_inputs import make_linker
from ._guest_time import CancelToken, GuestTime
from ._in_use import NOT_NOW, InUse, NotNow
from ._workload import Workload, WorkloadInfo, check_app, check_name, instantiate

__all__ = ["Host", "WorkloadInfo", "HostStats", "BulkReport", "EPOCH_TICK_S"]

logger = logging.getLogger(__name__)


class Host(Checkpointing):
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
        engine, engine_id = open_engine(limits, engine, engine_fingerprint)
        self._engine = engine
        linker = make_linker(engine)
        self._modules = ModuleCache(self._data_dir / MODULES_DIR, engine, linker, engine_id)
        self._workloads_dir = self._data_dir / "workloads"
        self._workloads_dir.mkdir(parents=True, exist_ok=True)
        for leftover in sweep_leftovers(self._data_dir):  # a killed node's half-written hibernation or checkpoint
            logger.warning("deleted a partly written file", extra={"path": str(leftover)})
        self._guest_time = GuestTime(limits.call_timeout_s)
        self._registry = Registry(limits)
        self._ticker = EpochTicker(engine, EPOCH_TICK_S)
        self.hibernator = Hibernator(engine, limits, self._guest_time, self._registry)  # its ``key`` seals files

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def engine(self) -> wasmtime.Engine:
        return self._engine

    @property
    def registry(self) -> Registry:
        """The workload table: whose each workload is (``owner``), and admission (``admit``)."""
        return self._registry

    # --- lifecycle --------------------------------------------------------

    def close(self) -> None:
        """Drop every workload (their files stay) and stop the epoch ticker."""
        workloads = self._registry.close()
        if workloads is None:
            return
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
        self._registry.check_open()
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
        idle_s: float | None = None,
    ) -> WorkloadInfo:
        """Start a new workload from a cached module and run its first boot.

        First boot runs the module's start function and a reactor's
        ``_initialize``, within the call time budget.  The guest sees argv
        ``[workload_id, *args]``, ``env``, and the ``preopen`` directories
        (guest path -> host directory), nothing else.  ``memory_limit_bytes``
        lowers the workload's memory cap below ``Limits.memory_bytes``; it
        hibernates once unused for ``idle_s`` (``nodes._hibernate.sweep``).
        Raises ``UnknownModule``, ``WorkloadExists``, ``BadArguments``,
        ``ResourceLimitExceeded``, ``WorkloadTrap`` (first boot failed) or
        ``HostClosed``.
        """
        workload_id = workload_id if workload_id is not None else f"w-{uuid.uuid4().hex[:12]}"
        w = self._create(module_sha256, workload_id=workload_id, app=app, args=args, env=env,
                         preopen=preopen, memory_limit_bytes=memory_limit_bytes,
                         init=Workload.first_boot, fresh_output=True, idle_s=idle_s)
        logger.info("deployed workload", extra=w.log_extra())
        return w.info()

    def restore(self, module_sha256: str, snap: snapshot.Snapshot, *, workload_id: str, app: str = "default",
                args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                preopen: Mapping[str, Path] | None = None, memory_limit_bytes: int | None = None, calls: int = 0,
                monotonic_ns: int | None = None, idle_s: float | None = None) -> WorkloadInfo:
        """Start a workload in the state ``snap`` captured, without first boot.

        ``calls`` carries the call count over from where the snapshot was
        taken (a replayed call must have the index it had at the leader).
        ``monotonic_ns`` is the guest's monotonic clock when the snapshot was
        taken (``Held.clock_state`` at the source): the restored guest's clock
        goes on from there.  Without it the clock starts near 0, as for a
        new workload, and a guest may see it go backwards.
        Output files already in the workload's directory are kept.
        Raises what ``deploy`` raises (``ResourceLimitExceeded`` if the
        snapshot's memory is over the cap), and ``SnapshotFailed`` when the
        snapshot does not fit the module.
        """
        if not isinstance(snap, snapshot.Snapshot):
            raise BadArguments(f"snap must be a snapshot.Snapshot, got {type(snap).__name__}")

        def init(w: Workload) -> None:
            w.load(snap, monotonic_ns)
            w.calls = calls

        w = self._create(module_sha256, workload_id=workload_id, app=app, args=args, env=env,
                         preopen=preopen, memory_limit_bytes=memory_limit_bytes,
                         init=init, fresh_output=False, idle_s=idle_s)
        logger.info("restored workload", extra=w.log_extra())
        return w.info()

    def restore_fed(self, module_sha256: str, *, workload_id: str, app: str = "default", args: Sequence[str] = (),
                    env: Mapping[str, str] | None = None, memory_limit_bytes: int | None = None,
                    idle_s: float | None = None) -> FedWorkload:
        """``restore`` of a snapshot that arrives encoded, in pieces: ``feed`` the returned ``FedWorkload`` each.

        The workload is published once its snapshot is complete; until then
        its id is claimed and nothing sees it.  Raises what ``deploy`` raises.
        """
        w = self._create(module_sha256, workload_id=workload_id, app=app, args=args, env=env, preopen=None,
                         memory_limit_bytes=memory_limit_bytes, init=_nothing, fresh_output=False, idle_s=idle_s,
                         publish=False)
        return FedWorkload(w, self._registry, idle_s)

    def remove(self, workload_id: str) -> None:
        """Stop a workload and delete its output files.

        Waits for a running call to end (at most the call time budget).
        Raises ``UnknownWorkload``.
        """
        w = self._registry.take(workload_id)
        try:
            with w.lock:
                w.release()
            shutil.rmtree(w.directory, ignore_errors=True)
        finally:
            self._registry.unclaim(workload_id)
        logger.info("removed workload", extra=w.log_extra())

    def _create(self, module_sha256: str, *, workload_id: str, app: str, args: Sequence[str],
                env: Mapping[str, str] | None, preopen: Mapping[str, Path] | None, memory_limit_bytes: int | None,
                init: Callable[[Workload], None], fresh_output: bool, idle_s: float | None,
                publish: bool = True) -> Workload:
        self._registry.check_open()
        check_name("workload_id", workload_id)
        check_app(app)
        if idle_s is not None and (type(idle_s) not in (int, float) or not idle_s >= 0):
            raise BadArguments(f"idle_s must be a non-negative number of seconds, got {idle_s!r}")
        if not isinstance(args, Sequence) or isinstance(args, str):
            raise BadArguments("args must be a sequence of str")
        env = dict(env or {})
        cap = self._registry.memory_cap(memory_limit_bytes)
        module = self._modules.get(module_sha256)
        module.check_fits(cap, self._limits.table_elements)
        self._registry.reserve(workload_id, app, cap)
        directory = self._workloads_dir / workload_id
        try:
            if fresh_output:
                shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True, exist_ok=True)
            w = instantiate(self._engine, module, self._limits, self._guest_time, workload_id=workload_id,
                            app=app, memory_limit_bytes=cap, args=args, env=env, preopen=preopen,
                            directory=directory)
            init(w)
            if not publish:  # a FedWorkload publishes it
                return w
            w.refresh_memory_bytes()
            w.idle_s = idle_s
        except BaseException:
            self._registry.unclaim(workload_id)
            if fresh_output:
                shutil.rmtree(directory, ignore_errors=True)
            raise
        self._registry.publish(workload_id, w, "starting")
        return w

    # --- using a workload -------------------------------------------------

    def call(self, workload_id: str, export: str, args: Sequence[int | float] = (), *,
             inputs: CallInputs | None = None, cancel: CancelToken | None = None) -> CallResults:
        """Call an exported function and return its result.

        Returns None, one value, or a tuple for several results (arguments:
        ``nodes._call_args``).  Blocks while another call into the workload
        runs.  Stopped after ``Limits.call_timeout_s`` (``DeadlineExceeded``);
        after a trap or a deadline the workload stays usable, as the call left it.
        In replay mode (``Held.set_replay_mode``) every call takes ``inputs``, the
        ``CallInputs`` the leader recorded for it, and the guest's clock,
        random and poll requests are answered from them.
        Raises ``UnknownWorkload``, ``UnknownExport``, ``BadArguments``,
        ``DeadlineExceeded``, ``WorkloadExited``, ``WorkloadTrap``,
        ``ReplayDivergence`` (replay only; it takes precedence), ``HostClosed``, or
        ``CallCancelled`` once ``cancel`` is cancelled: stopped within a tick, or never started.
        """
        w = self._registry.get(workload_id)
        signature = w.module.signatures.get(export) if isinstance(export, str) else None
        if signature is None:
            raise UnknownExport(f"workload {workload_id} has no callable export {export!r}")
        params = convert_args(export, signature, args)
        with self._using(w, guest=True):
            return w.run(export, params, inputs, cancel)

    def call_now(self, workload_id: str, export: str, args: Sequence[int | float] = (), *,
                 cancel: CancelToken | None = None) -> CallResults | NotNow:
        """``call`` on this thread (an event loop's), if ``export`` provably ends fast and can start at once.

        ``export`` must be in the module's ``bounded`` (``snapshot.bounded_exports``), and the workload
        not in use, paused, hibernated, recording or replaying.  Else returns ``NOT_NOW``, having run
        nothing: the caller uses ``call`` on a worker thread.  Raises what ``call`` raises.
        """
        w = self._registry.get(workload_id)
        if export not in w.module.bounded:
            return NOT_NOW
        params = convert_args(export, w.module.signatures[export], args)
        use = self._using(w, guest=True)
        if not use.enter_now():
            return NOT_NOW
        try:
            if w.budget.inputs.mode is not ReplayMode.OFF:
                return NOT_NOW
            return w.run(export, params, None, cancel)
        finally:
            use.__exit__()

    def read_memory(self, workload_id: str, offset: int, length: int) -> bytes:
        """Copy ``length`` bytes out of the workload's memory 0.

        Raises ``UnknownWorkload`` or ``BadArguments`` (out of bounds, or the
        module has no memory).
        """
        w = self._registry.get(workload_id)
        with self._using(w, guest=True):
            return w.read(offset, length)

    def write_memory(self, workload_id: str, offset: int, data: bytes) -> None:
        """Copy ``data`` into the workload's memory 0 at ``offset``.

        Raises ``UnknownWorkload`` or ``BadArguments``.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise BadArguments(f"data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        w = self._registry.get(workload_id)
        with self._using(w, guest=True):
            w.write(offset, data)

    def output(self, workload_id: str) -> tuple[bytes, bytes]:
        """Return what the workload wrote to stdout and stderr (capped).

        Raises ``UnknownWorkload``.
        """
        return self._registry.get(workload_id).output()  # no lock: output can be read while a call runs

    # --- snapshots --------------------------------------------------------

    def checkpoint(self, workload_id: str) -> snapshot.Snapshot:
        """Capture the workload's state between calls.

        Raises ``UnknownWorkload`` or ``SnapshotFailed``.
        """
        w = self._registry.get(workload_id)
        with self._using(w):
            return w.capture()

    # --- introspection ----------------------------------------------------

    def workloads(self) -> list[WorkloadInfo]:
        """List the workloads, as of the end of their last call."""
        return [w.info() for w in self._registry.all()]

    def info(self, workload_id: str) -> WorkloadInfo:
        """Describe one workload.  Raises ``UnknownWorkload``."""
        return self._registry.get(workload_id).info()

    def stats(self) -> HostStats:
        """Return the host's counters."""
        m = self._modules
        workloads = self._registry.all()
        return HostStats(modules=len(m), compiles=m.compiles, deserializations=m.deserializations,
                         cache_hits=m.cache_hits, workloads=len(workloads),
                         memory_bytes=sum(w.memory_bytes for w in workloads))

    def hold(self, workload_id: str) -> Held:
        """Hold one workload for the operations only a migration needs (``Held``).  Raises ``UnknownWorkload``."""
        return Held(self._registry.get(workload_id), self._registry, self._workloads_dir)

    # --- helpers ----------------------------------------------------------

    def _using(self, w: Workload, *, guest: bool = False) -> InUse:
        return InUse(self._registry.check_open, w, guest)


def _nothing(_: Workload) -> None:
    pass
