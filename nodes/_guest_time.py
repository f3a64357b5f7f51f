"""The time a guest may run: the per-call deadline, and stopping a call its caller cancelled.

Every workload's Store gets an epoch-deadline callback (``CallInterrupt``).
A call starts with a deadline one epoch tick away (``EPOCH_TICK_S``, 10
ms); at each tick wasmtime calls back, and the callback either lets the
call run one more tick or ends it with an error: when the call's
``CancelToken`` was cancelled (its caller gave up on it) or when its
budget of ticks (``Limits.call_timeout_s``) is spent.  So a cancelled call
stops within about one tick, and the Store stays usable.  Code that sets
a deadline itself (``store.set_epoch_deadline(n)``) is stopped when it is
reached, as without a callback.  wasmtime-py 50 has no Python API for the
callback; the C function ``wasmtime_store_epoch_deadline_callback`` is in
its ctypes bindings and is used through them.

A call stopped midway keeps what it did so far, like a trap; a caller that
cancels accepts that, as a caller whose call passes its deadline does.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator
from contextlib import contextmanager

import wasmtime
from wasmtime import _bindings as ffi

from ._engine import EPOCH_TICK_S
from ._host_errors import CallCancelled, DeadlineExceeded, WorkloadError, WorkloadExited, WorkloadTrap
from ._wasi_inputs import CallBudget

__all__ = ["CallInterrupt", "CancelToken", "GuestTime"]

_CALLBACK = ffi._wasmtime_store_epoch_deadline_callback.argtypes[1]
_FINALIZER = ffi._wasmtime_store_epoch_deadline_callback.argtypes[3]
_NO_FINALIZER = _FINALIZER(lambda data: None)
_CONTINUE = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE


class CancelToken:
    """A caller's way to stop one call: ``cancel()`` from any thread."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class CallInterrupt:
    """The epoch-deadline callback of one Store, and the call it watches."""

    __slots__ = ("_callback", "ticks_left", "token", "ended")

    def __init__(self, store: wasmtime.Store) -> None:
        self._callback = _CALLBACK(self._on_deadline)  # kept alive as long as the Store
        self.ticks_left = 0
        self.token: CancelToken | None = None
        #: Why the callback ended the last call ("cancelled", "deadline"), or None.
        self.ended: str | None = None
        ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), self._callback, None, _NO_FINALIZER)

    def begin(self, store: wasmtime.Store, ticks: int, token: CancelToken | None) -> None:
        """Watch a call about to run on this thread: ``ticks`` ticks at most, stopped if ``token`` is cancelled."""
        self.ticks_left, self.token, self.ended = ticks, token, None
        store.set_epoch_deadline(1)

    def _on_deadline(self, context: ctypes._Pointer[ffi.wasmtime_context_t], data: int | None,
                     delta: ctypes._Pointer[ctypes.c_uint64], kind: ctypes._Pointer[ctypes.c_uint8]) -> int:
        # Runs on the thread running the guest, at each tick; must not raise.
        try:
            token = self.token
            if token is not None and token.cancelled:
                return self._end("cancelled")
            self.ticks_left -= 1
            if self.ticks_left <= 0:
                return self._end("deadline")
            delta[0] = 1
            kind[0] = _CONTINUE
            return 0
        except BaseException:  # noqa: BLE001 - a raise here would let the guest run on
            return self._end("deadline")

    def _end(self, why: str) -> int:
        self.ended = why
        error = ffi.wasmtime_error_new(ctypes.create_string_buffer(f"call stopped: {why}".encode()))
        return ctypes.cast(error, ctypes.c_void_p).value or 0


class GuestTime:
    """The time budget of guest code on one host: ``call_timeout_s``, as epoch ticks and as a sleep budget."""

    def __init__(self, call_timeout_s: float) -> None:
        self.timeout_s = call_timeout_s
        # ceil() ticks could end one tick early (the first tick may come at
        # once); one more guarantees at least the budget, at most 10 ms over.
        self.deadline_ticks = math.ceil(call_timeout_s / EPOCH_TICK_S) + 1

    @contextmanager
    def running(self, store: wasmtime.Store, budget: CallBudget, interrupt: CallInterrupt | None = None,
                token: CancelToken | None = None) -> Iterator[None]:
        """Give guest code about to run on this thread its time budget (and ``token``, with an ``interrupt``)."""
        if interrupt is None:
            store.set_epoch_deadline(self.deadline_ticks)
        else:
            interrupt.begin(store, self.deadline_ticks, token)
        with budget.running(self.timeout_s):
            yield

    def error(self, workload_id: str, exc: Exception, budget: CallBudget,
              interrupt: CallInterrupt | None = None) -> WorkloadError:
        """Translate a wasmtime trap or error raised by guest code."""
        ended = interrupt.ended if interrupt is not None else None
        if ended == "cancelled":
            return CallCancelled(workload_id, started=True)
        if budget.exhausted or ended == "deadline":
            return DeadlineExceeded(workload_id, self.timeout_s)
        if isinstance(exc, wasmtime.ExitTrap):
            return WorkloadExited(workload_id, exc.code)
        if isinstance(exc, wasmtime.Trap):
            code = exc.trap_code
            if code is wasmtime.TrapCode.INTERRUPT:
                return DeadlineExceeded(workload_id, self.timeout_s)
            return WorkloadTrap(workload_id, _last_line(exc.message), trap_code=code.name.lower() if code else None)
        return WorkloadTrap(workload_id, _last_line(str(exc)))


def _last_line(message: str) -> str:
    # wasmtime puts a backtrace first and the cause last; keep the cause.
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else "trapped"
