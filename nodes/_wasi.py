"""The WASI sandbox a hosted workload runs in.

A workload gets exactly what its deployer granted: its own args and env,
WASI clocks and random, stdout and stderr captured to capped files, no stdin,
and no filesystem unless a directory is preopened for it.  Nothing is
inherited from the node process (no ``inherit_env``, ``inherit_stdout``...).
Only functions of ``wasi_snapshot_preview1`` can be imported.

One WASI function is replaced: ``poll_oneoff``, the only blocking call a
sandboxed guest has (sleep, nanosleep, poll).  wasmtime's epoch deadline is
checked only in wasm code, so a guest asleep in the host could hold its
thread for as long as it asked; ours refuses a sleep that would outlast the
call's budget (``CallBudget``) and the call fails as timed out.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import wasmtime

from ._host_errors import BadArguments, UnsupportedImports

__all__ = ["WASI_MODULE", "CallBudget", "OutputSink", "check_imports", "make_linker", "wasi_config"]

logger = logging.getLogger(__name__)

WASI_MODULE = "wasi_snapshot_preview1"


def check_imports(module: wasmtime.Module) -> None:
    """Refuse a module that imports anything but WASI preview 1 functions.

    Raises ``UnsupportedImports`` listing every such import.
    """
    refused = []
    for imp in module.imports:
        if imp.module != WASI_MODULE or not isinstance(imp.type, wasmtime.FuncType):
            refused.append(f"{imp.module}::{imp.name} ({_kind(imp.type)})")
    if refused:
        raise UnsupportedImports(refused)


def _kind(ty: object) -> str:
    return {
        wasmtime.FuncType: "func",
        wasmtime.MemoryType: "memory",
        wasmtime.TableType: "table",
        wasmtime.GlobalType: "global",
    }.get(type(ty), type(ty).__name__)


class OutputSink:
    """Appends a guest's output stream to a file, keeping at most ``cap_bytes``.

    Used as a ``WasiConfig.stdout_custom`` callback.  It appends (a restored
    workload keeps the output of its earlier life, where ``stdout_file``
    would truncate), opens the file per write (a thousand idle workloads hold
    no descriptors), and drops what exceeds the cap, counting it in
    ``dropped_bytes``.  It never raises: wasmtime-py prints and swallows
    callback exceptions, and the guest should see its write succeed.
    """

    def __init__(self, path: Path, cap_bytes: int) -> None:
        self.path = path
        self.cap_bytes = cap_bytes
        self.dropped_bytes = 0
        try:
            self.written_bytes = path.stat().st_size
        except FileNotFoundError:
            self.written_bytes = 0
            path.touch()

    def __call__(self, data: bytes) -> None:
        room = max(0, self.cap_bytes - self.written_bytes)
        keep = data[:room]
        self.dropped_bytes += len(data) - len(keep)
        if not keep:
            return
        try:
            with open(self.path, "ab") as f:
                f.write(keep)
            self.written_bytes += len(keep)
        except OSError as exc:  # a full disk must not crash the guest's write
            self.dropped_bytes += len(keep)
            logger.warning("dropping guest output: %s", exc, extra={"path": str(self.path)})


def wasi_config(
    *,
    argv: Sequence[str],
    env: Mapping[str, str],
    preopen: Mapping[str, Path] | None,
    stdout: OutputSink,
    stderr: OutputSink,
) -> wasmtime.WasiConfig:
    """Build the WASI configuration of one workload.

    ``preopen`` maps a guest path to a host directory the guest may read and
    write; without it the guest has no filesystem at all.
    Raises ``BadArguments`` for strings WASI cannot carry (NUL bytes, ``=``
    in an env name) or a preopen that is not an existing directory.
    """
    for arg in argv:
        _check_c_string("argument", arg)
    for name, value in env.items():
        _check_c_string("env name", name)
        _check_c_string("env value", value)
        if "=" in name or not name:
            raise BadArguments(f"env name {name!r} is empty or contains '='")
    config = wasmtime.WasiConfig()
    config.argv = list(argv)
    config.env = [(name, value) for name, value in env.items()]
    config.stdout_custom = stdout
    config.stderr_custom = stderr
    for guest_path, host_dir in (preopen or {}).items():
        _check_c_string("preopen guest path", guest_path)
        host_dir = Path(host_dir)
        if not host_dir.is_dir():
            raise BadArguments(f"preopen {guest_path!r}: {host_dir} is not a directory")
        config.preopen_dir(os.fspath(host_dir.resolve()), guest_path)
    return config


def _check_c_string(what: str, value: object) -> None:
    if not isinstance(value, str):
        raise BadArguments(f"{what} must be a str, got {type(value).__name__}")
    if "\0" in value:
        raise BadArguments(f"{what} {value!r} contains a NUL byte")


# --- bounded sleeping -----------------------------------------------------

_current = threading.local()  # .budget: the CallBudget of guest code running on this thread


class CallBudget:
    """The wall-clock budget of one workload's guest code, for WASI sleeps.

    Create it right after ``Store.set_wasi`` (its clock origin then matches
    the guest's monotonic clock, which wasmtime starts with the WASI context)
    and wrap every entry into guest code in ``running``.  ``exhausted`` tells
    afterwards whether the guest was stopped for asking to sleep past the
    deadline.
    """

    def __init__(self) -> None:
        self.monotonic_origin_ns = time.monotonic_ns()
        self.deadline_ns: int | None = None
        self.exhausted = False

    @contextmanager
    def running(self, timeout_s: float) -> Iterator[CallBudget]:
        self.deadline_ns = time.monotonic_ns() + int(timeout_s * 1e9)
        self.exhausted = False
        _current.budget = self
        try:
            yield self
        finally:
            _current.budget = None

    def guest_monotonic_ns(self) -> int:
        # Read after the guest's clock started, so never ahead of it: a sleep
        # to an absolute time may overshoot by microseconds, never undershoot.
        return time.monotonic_ns() - self.monotonic_origin_ns


class _BudgetExhausted(wasmtime.Trap):
    pass


# wasi_snapshot_preview1 layouts (witx): subscription_t is 48 bytes, event_t 32.
_SUBSCRIPTION = struct.Struct("<QB7xI4xQQH6x")  # userdata, tag, clock id | fd, timeout, precision, flags
_EVENT = struct.Struct("<QHB5xQH6x")  # userdata, errno, type, nbytes, flags
_NEVENTS = struct.Struct("<I")
_TAG_CLOCK, _TAG_FD_READ, _TAG_FD_WRITE = 0, 1, 2
_CLOCK_REALTIME, _CLOCK_MONOTONIC = 0, 1
_SUBCLOCK_ABSTIME = 1
_ERRNO_FAULT, _ERRNO_INVAL, _ERRNO_NOTSUP = 21, 28, 58


def _poll_oneoff(caller: wasmtime.Caller, subs_ptr: int, events_ptr: int, nsubs: int, nevents_ptr: int) -> int:
    """wasi_snapshot_preview1.poll_oneoff, refusing to sleep past the budget.

    A sandboxed guest's descriptors (stdin without data, stdout, stderr,
    preopened files) never block, so fd subscriptions are ready at once (a
    bad descriptor too: the guest's read or write then gets EBADF); clock
    subscriptions sleep until the earliest one expires.
    Raises a trap (the call then times out) for a sleep past the deadline.
    """
    memory = caller.get("memory")
    if not isinstance(memory, wasmtime.Memory):
        return _ERRNO_NOTSUP
    # wasm passes i32s; pointers and counts are unsigned
    subs_ptr, events_ptr, nsubs, nevents_ptr = (v & 0xFFFFFFFF for v in (subs_ptr, events_ptr, nsubs, nevents_ptr))
    if nsubs == 0:
        return _ERRNO_INVAL
    size = memory.data_len(caller)
    for ptr, length in ((subs_ptr, nsubs * _SUBSCRIPTION.size), (events_ptr, nsubs * _EVENT.size),
                        (nevents_ptr, _NEVENTS.size)):
        if ptr + length > size:
            return _ERRNO_FAULT
    raw = memory.read(caller, subs_ptr, subs_ptr + nsubs * _SUBSCRIPTION.size)
    budget: CallBudget | None = getattr(_current, "budget", None)
    now_ns = time.monotonic_ns()
    ready, clocks = [], []  # (userdata, type) and (wait_ns, userdata)
    for userdata, tag, ident, timeout, _precision, flags in _SUBSCRIPTION.iter_unpack(raw):
        if tag in (_TAG_FD_READ, _TAG_FD_WRITE):
            ready.append((userdata, tag))
        elif tag == _TAG_CLOCK:
            if not flags & _SUBCLOCK_ABSTIME:
                wait = timeout
            elif ident == _CLOCK_REALTIME:
                wait = timeout - time.time_ns()
            elif ident == _CLOCK_MONOTONIC and budget is not None:
                wait = timeout - budget.guest_monotonic_ns()
            else:
                return _ERRNO_NOTSUP  # CPU-time clocks
            clocks.append((max(0, wait), userdata))
        else:
            return _ERRNO_INVAL
    if not ready:
        wait = min(w for w, _ in clocks)
        if budget is not None and budget.deadline_ns is not None and now_ns + wait > budget.deadline_ns:
            budget.exhausted = True
            raise _BudgetExhausted("guest asked to sleep past its call budget")
        if wait:
            time.sleep(wait / 1e9)
        ready = [(userdata, _TAG_CLOCK) for w, userdata in clocks if w <= wait]
    else:
        ready += [(userdata, _TAG_CLOCK) for w, userdata in clocks if w == 0]
    events = b"".join(_EVENT.pack(userdata, 0, tag, 0, 0) for userdata, tag in ready)
    memory.write(caller, bytearray(events), events_ptr)
    memory.write(caller, bytearray(_NEVENTS.pack(len(ready))), nevents_ptr)
    return 0


def make_linker(engine: wasmtime.Engine) -> wasmtime.Linker:
    """Return a linker offering WASI preview 1 with the bounded ``poll_oneoff``."""
    linker = wasmtime.Linker(engine)
    linker.allow_shadowing = True
    linker.define_wasi()
    i32 = wasmtime.ValType.i32()
    linker.define_func(WASI_MODULE, "poll_oneoff", wasmtime.FuncType([i32] * 4, [i32]),
                       _poll_oneoff, access_caller=True)
    linker.allow_shadowing = False
    return linker
