"""The WASI functions a host answers in Python, and the budget of the guest code calling them.

Four WASI functions are replaced by Python ones: the nondeterministic
``clock_time_get``, ``clock_res_get``, ``random_get`` and ``poll_oneoff``.
They answer through the running workload's ``InputGate`` (``nodes._replay``),
which records or replays what they return and keeps the guest's monotonic
clock going forward across restores.  ``poll_oneoff`` is also the only
blocking call a sandboxed guest has (sleep, nanosleep, poll).  wasmtime's
epoch deadline is checked only in wasm code, so a guest asleep in the host
could hold its thread for as long as it asked; ours refuses a sleep that
would outlast the call's budget (``CallBudget``) and the call fails as timed
out.  ``make_linker`` offers the rest of WASI preview 1 from wasmtime, the
sandbox of ``nodes._wasi``.
"""

from __future__ import annotations

import ctypes
import logging
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeAlias

import wasmtime
from wasmtime import _ffi as ffi

from ._replay import InputGate, ReplayDivergence
from ._wasi import WASI_MODULE

__all__ = ["CallBudget", "make_linker"]

logger = logging.getLogger(__name__)

_current = threading.local()  # .budget: the CallBudget of guest code running on this thread

if TYPE_CHECKING:  # ctypes._Pointer cannot be subscripted at run time
    _Caller: TypeAlias = ctypes._Pointer[ffi.wasmtime_caller_t]
    _Vals: TypeAlias = ctypes._Pointer[ffi.wasmtime_val_raw_t]
    #: A WASI function in Python: ``impl(budget, caller, vals)`` returns the errno.
    _Impl: TypeAlias = Callable[["CallBudget", _Caller, _Vals], int]


class CallBudget:
    """What the WASI functions need to know about the workload running on this thread.

    That is its wall-clock budget for sleeps, and its ``InputGate``
    (``inputs``), which answers every nondeterministic request (clocks,
    random, poll outcomes).  Wrap every entry into guest code in
    ``running``.  ``exhausted`` tells afterwards whether the guest was
    stopped for asking to sleep past the deadline.
    """

    def __init__(self, inputs: InputGate | None = None) -> None:
        self.inputs = inputs if inputs is not None else InputGate()
        self.deadline_ns: int | None = None
        self.exhausted = False
        self.memory: _GuestMemory | None = None  # found at the first WASI call that needs it

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
        """The guest's monotonic clock now (``InputGate.monotonic_ns``)."""
        return self.inputs.monotonic_ns()


# --- WASI functions in Python ---------------------------------------------
#
# wasmtime-py's Linker.define_func boxes every argument and result as a Val:
# about 10 us per call, against 0.1 us for wasmtime's own clock_time_get.
# The unchecked C entry point hands over raw values instead; with guest
# memory reached through direct C calls, each Python WASI call costs about
# 2 us: clockrand's sample() (four of them) went from 19 to 28 us a call
# through Host.call.  Measured with wasmtime-py 50, which pyproject pins:
# this uses its private ffi module.

_MASK32 = 0xFFFFFFFF
_LE_U64 = ctypes.c_uint64.__ctype_le__  # wasm memory is little-endian
_CLOCK_REALTIME, _CLOCK_MONOTONIC, _CLOCK_THREAD = 0, 1, 3  # 2 is the process CPU-time clock
_ERRNO_BADF, _ERRNO_FAULT, _ERRNO_INVAL, _ERRNO_NOTSUP = 8, 21, 28, 58
_MEMORY_NAME = b"memory"
_EXTERN_MEMORY = ffi.WASMTIME_EXTERN_MEMORY.value
_memory_data = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p)(("wasmtime_memory_data", ffi.dll))
_memory_size = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p)(
    ("wasmtime_memory_data_size", ffi.dll))
_caller_context = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(("wasmtime_caller_context", ffi.dll))
_no_finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda env: None)
_NO_BUDGET = CallBudget()  # guest code run outside CallBudget.running: live inputs, no deadline


class _Trap(Exception):
    """Raised inside a WASI function to trap the guest with this message."""


class _GuestMemory:
    """A guest's exported "memory", as WASI functions reach it: through C, without wasmtime-py objects.

    Found through the first caller and kept by its ``CallBudget`` (one
    store, one instance).  The size is asked on every use; the base address
    only when the size changed, since a memory moves only when it grows.
    """

    __slots__ = ("_item", "_context", "_address", "base", "size")

    def __init__(self, caller: _Caller) -> None:
        self._item = ffi.wasmtime_extern_t()
        if (not ffi.wasmtime_caller_export_get(caller, _MEMORY_NAME, len(_MEMORY_NAME), ctypes.byref(self._item))
                or self._item.kind != _EXTERN_MEMORY):
            raise _Trap("missing required memory export")
        self._context = _caller_context(ctypes.addressof(caller.contents))  # the store's, for its lifetime
        self._address = ctypes.addressof(self._item.of.memory)
        self.base = self.size = -1

    @staticmethod
    def of(caller: _Caller, budget: CallBudget) -> _GuestMemory:
        """The calling guest's memory, refreshed.  Traps if it exports none."""
        memory = budget.memory
        if memory is None:
            memory = _GuestMemory(caller)
            if budget is not _NO_BUDGET:  # shared by every store: never cache there
                budget.memory = memory
        size = _memory_size(memory._context, memory._address)
        if size != memory.size:
            memory.base, memory.size = _memory_data(memory._context, memory._address), size
        return memory

    def check(self, ptr: int, length: int) -> int:
        """Return the address of ``[ptr, ptr+length)``; traps when it is out of bounds (as wasmtime does)."""
        if ptr + length > self.size:
            raise _Trap(f"Pointer out of bounds: Region {{ start: {ptr}, len: {length} }}")
        return self.base + ptr

    def fits(self, ptr: int, length: int) -> bool:
        return ptr + length <= self.size


def _trap_pointer(message: str) -> int:
    text = message.encode()
    return ctypes.cast(ffi.wasmtime_trap_new(text, len(text)), ctypes.c_void_p).value or 0



def _wasi_function(name: str, params: Sequence[wasmtime.ValType]) -> Callable[[_Impl], _Impl]:
    """Wrap ``impl(budget, caller, vals)`` as an unchecked host callback for ``name``.

    ``impl`` reads its arguments from ``vals`` and returns the errno, which
    becomes the one i32 result.  ``_Trap`` traps the guest; a replay
    divergence traps it too, and the gate keeps the divergence for
    ``Host.call`` to raise.  Nothing may escape a C callback, so anything
    else is logged and traps.
    """
    def wrap(impl: _Impl) -> _Impl:
        def callback(env: int | None, caller: _Caller, vals: _Vals, nvals: int) -> int:
            budget = getattr(_current, "budget", None) or _NO_BUDGET
            try:
                vals[0].i32 = impl(budget, caller, vals)
                return 0
            except (_Trap, ReplayDivergence) as exc:
                return _trap_pointer(str(exc))
            except BaseException as exc:  # noqa: BLE001 - see the docstring
                logger.exception("WASI %s failed", name)
                return _trap_pointer(f"host error in {name}: {exc!r}")

        cfunc = ffi.wasmtime_func_unchecked_callback_t(callback)
        _WASI_FUNCTIONS[name] = (tuple(params), cfunc)
        return impl
    return wrap


# name -> (parameter types, the C callback, kept alive here)
_WASI_FUNCTIONS: dict[str, tuple[tuple[wasmtime.ValType, ...], object]] = {}
_i32, _i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()


def _clock_id(raw: int) -> int:
    if not 0 <= raw <= _CLOCK_THREAD:
        raise _Trap("Invalid enum value Clockid")
    return raw


@_wasi_function("clock_time_get", [_i32, _i64, _i32])
def _clock_time_get(budget: CallBudget, caller: _Caller, vals: _Vals) -> int:
    clock = _clock_id(vals[0].i32)
    if clock > _CLOCK_MONOTONIC:
        return _ERRNO_BADF  # CPU-time clocks: wasmtime has none either
    address = _GuestMemory.of(caller, budget).check(vals[2].i32 & _MASK32, 8)
    _LE_U64.from_address(address).value = budget.inputs.clock_time_ns(clock)
    return 0


@_wasi_function("clock_res_get", [_i32, _i32])
def _clock_res_get(budget: CallBudget, caller: _Caller, vals: _Vals) -> int:
    clock = _clock_id(vals[0].i32)
    if clock > _CLOCK_MONOTONIC:
        return _ERRNO_BADF
    address = _GuestMemory.of(caller, budget).check(vals[1].i32 & _MASK32, 8)
    _LE_U64.from_address(address).value = budget.inputs.clock_res_ns(clock)
    return 0


@_wasi_function("random_get", [_i32, _i32])
def _random_get(budget: CallBudget, caller: _Caller, vals: _Vals) -> int:
    length = vals[1].i32 & _MASK32
    address = _GuestMemory.of(caller, budget).check(vals[0].i32 & _MASK32, length)
    if length:
        ctypes.memmove(address, budget.inputs.random_bytes(length), length)
    return 0


# wasi_snapshot_preview1 layouts (witx): subscription_t is 48 bytes, event_t 32.
_SUBSCRIPTION = struct.Struct("<QB7xI4xQQH6x")  # userdata, tag, clock id | fd, timeout, precision, flags
_EVENT = struct.Struct("<QHB5xQH6x")  # userdata, errno, type, nbytes, flags
_NEVENTS = struct.Struct("<I")
_TAG_CLOCK, _TAG_FD_READ, _TAG_FD_WRITE = 0, 1, 2
_SUBCLOCK_ABSTIME = 1


@_wasi_function("poll_oneoff", [_i32] * 4)
def _poll_oneoff(budget: CallBudget, caller: _Caller, vals: _Vals) -> int:
    """wasi_snapshot_preview1.poll_oneoff, refusing to sleep past the budget.

    A sandboxed guest's descriptors (stdin without data, stdout, stderr,
    preopened files) never block, so fd subscriptions are ready at once (a
    bad descriptor too: the guest's read or write then gets EBADF); clock
    subscriptions sleep until the earliest one expires.  Which events fired
    is what the input gate records and replays; errors depend on the
    subscriptions alone.
    Traps (the call then times out) for a sleep past the deadline.
    """
    try:
        memory = _GuestMemory.of(caller, budget)
    except _Trap:
        return _ERRNO_NOTSUP
    # wasm passes i32s; pointers and counts are unsigned
    subs_ptr, events_ptr, nsubs, nevents_ptr = (vals[i].i32 & _MASK32 for i in range(4))
    if nsubs == 0:
        return _ERRNO_INVAL
    for ptr, length in ((subs_ptr, nsubs * _SUBSCRIPTION.size), (events_ptr, nsubs * _EVENT.size),
                        (nevents_ptr, _NEVENTS.size)):
        if not memory.fits(ptr, length):
            return _ERRNO_FAULT
    raw = ctypes.string_at(memory.base + subs_ptr, nsubs * _SUBSCRIPTION.size)
    ready, clocks = [], []  # (userdata, type) and (timeout, userdata, absolute clock or None)
    for userdata, tag, ident, timeout, _precision, flags in _SUBSCRIPTION.iter_unpack(raw):
        if tag in (_TAG_FD_READ, _TAG_FD_WRITE):
            ready.append((userdata, tag))
        elif tag == _TAG_CLOCK:
            if not flags & _SUBCLOCK_ABSTIME:
                clocks.append((timeout, userdata, None))
            elif ident in (_CLOCK_REALTIME, _CLOCK_MONOTONIC):
                clocks.append((timeout, userdata, ident))
            else:
                return _ERRNO_NOTSUP  # CPU-time clocks
        else:
            return _ERRNO_INVAL

    def poll() -> bytes:
        fired = list(ready)
        waits = [(max(0, timeout - _now_ns(budget, clock)) if clock is not None else timeout, userdata)
                 for timeout, userdata, clock in clocks]
        if not fired:
            wait = min(w for w, _ in waits)
            if budget.deadline_ns is not None and time.monotonic_ns() + wait > budget.deadline_ns:
                budget.exhausted = True
                raise _Trap("guest asked to sleep past its call budget")
            if wait:
                time.sleep(wait / 1e9)
            fired = [(userdata, _TAG_CLOCK) for w, userdata in waits if w <= wait]
        else:
            fired += [(userdata, _TAG_CLOCK) for w, userdata in waits if w == 0]
        return b"".join(_EVENT.pack(userdata, 0, tag, 0, 0) for userdata, tag in fired)

    events = budget.inputs.poll_events(zlib.crc32(raw), poll)
    count = len(events) // _EVENT.size
    ctypes.memmove(memory.check(events_ptr, len(events)), events, len(events))
    ctypes.memmove(memory.check(nevents_ptr, _NEVENTS.size), _NEVENTS.pack(count), _NEVENTS.size)
    return 0


def _now_ns(budget: CallBudget, clock: int) -> int:
    # The guest's own clocks: an absolute monotonic deadline is in its time.
    return time.time_ns() if clock == _CLOCK_REALTIME else budget.guest_monotonic_ns()


def make_linker(engine: wasmtime.Engine) -> wasmtime.Linker:
    """Return a linker offering WASI preview 1, with the nondeterministic functions in Python.

    ``clock_time_get``, ``clock_res_get``, ``random_get`` and the bounded
    ``poll_oneoff`` answer through the running workload's ``InputGate``.
    Raises ``WasmtimeError`` if wasmtime refuses a definition.
    """
    linker = wasmtime.Linker(engine)
    linker.allow_shadowing = True
    linker.define_wasi()
    module = WASI_MODULE.encode()
    for name, (params, cfunc) in _WASI_FUNCTIONS.items():
        # A new FuncType per engine: wasmtime ties a type to the first engine that uses it.
        ty = wasmtime.FuncType(list(params), [wasmtime.ValType.i32()])
        error = ffi.wasmtime_linker_define_func_unchecked(
            linker.ptr(), module, len(module), name.encode(), len(name), ty.ptr(), cfunc, None, _no_finalizer)
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
    linker.allow_shadowing = False
    return linker
