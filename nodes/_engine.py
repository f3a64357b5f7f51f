"""The wasmtime engine a host runs workloads on, and the thread that ticks its epoch.

A host's engine interrupts wasm at epoch deadlines (``epoch_interruption``)
and does not count fuel: the epoch deadline bounds a call's time at the same
cost (measured: about 3x on a tight loop for either), and a cwasm compiled
with fuel would be refused by an engine without it.  ``fingerprint`` names
the engine settings, the wasmtime version, the CPU architecture and the
version of ``snapshot.prepare``, which a compiled module must match to be
loaded (a module compiled without fuel is refused by an engine with fuel,
for example, and a module prepared by other code may inject other
accessors).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import threading
import weakref
from collections.abc import Mapping

import wasmtime

import snapshot

from ._limits import Limits

#: How often the ticker thread advances the engine's epoch.  A call's budget
#: is counted in ticks, so this is the granularity of every deadline: 10 ms
#: keeps a 5 s budget within 0.2 % while costing 100 wake-ups a second.  The
#: check compiled into wasm costs the same at any tick rate (about 3x on a
#: tight loop, like fuel).
EPOCH_TICK_S = 0.010


def open_engine(limits: Limits, engine: wasmtime.Engine | None = None,
                engine_fingerprint: str = "external") -> tuple[wasmtime.Engine, str]:
    """A host's engine and the fingerprint naming it: a new one for ``limits``, or ``engine`` (checked).

    ``engine_fingerprint`` names a caller's engine config.  Raises
    ``ValueError`` if ``engine`` lacks epoch interruption.
    """
    if engine is None:
        settings = engine_settings(limits)
        return make_engine(settings), fingerprint(settings)
    require_epoch_interruption(engine)
    return engine, fingerprint({"external": engine_fingerprint})


#: Engines whose linear memories never move (``memory_may_move`` off).
_FIXED_MEMORY: weakref.WeakSet[wasmtime.Engine] = weakref.WeakSet()
_RESERVATION_BYTES = 4 * 2**30  # wasmtime's default memory_reservation on 64-bit hosts


def engine_settings(limits: Limits) -> dict[str, object]:
    """The ``wasmtime.Config`` settings of a host's own engine.

    ``memory_may_move`` is off: a linear memory stays where it was
    reserved, so a migration copies its pages while calls run
    (``nodes._hold``).  Measured with wasmtime 50: 32-bit memories never
    moved anyway (4 GiB reserved, growth to 4 GiB in place either way); a
    memory64 memory growing past the reservation moved with the default
    and fails to grow without it (``memory.grow`` returns -1).  So the
    reservation is raised to the memory cap when the cap is above 4 GiB
    (address space only, nothing is committed).
    """
    settings: dict[str, object] = {
        "consume_fuel": False,
        "epoch_interruption": True,
        "max_wasm_stack": limits.max_wasm_stack_bytes,
        "memory_may_move": False,
    }
    if limits.memory_bytes > _RESERVATION_BYTES:
        settings["memory_reservation"] = -(-limits.memory_bytes // 65536) * 65536
    return settings


def make_engine(settings: Mapping[str, object]) -> wasmtime.Engine:
    config = wasmtime.Config()
    for name, value in settings.items():
        setattr(config, name, value)
    engine = wasmtime.Engine(config)
    if settings.get("memory_may_move") is False:
        _FIXED_MEMORY.add(engine)
    return engine


def memory_never_moves(engine: wasmtime.Engine) -> bool:
    """Whether ``engine`` keeps every linear memory where it is (False for a caller's engine: unknown)."""
    return engine in _FIXED_MEMORY


def fingerprint(settings: Mapping[str, object]) -> str:
    """16 hex digits naming ``settings``, the wasmtime version, the CPU architecture and ``prepare``'s code.

    A cwasm holds a *prepared* module, so the version of ``prepare`` that
    made it is part of what it must match (``snapshot.preparation_id``).
    """
    key = {
        "preparation": snapshot.preparation_id(),
        "wasmtime": importlib.metadata.version("wasmtime"),
        "machine": platform.machine(),
        "settings": dict(settings),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def require_epoch_interruption(engine: wasmtime.Engine) -> None:
    """Check that a caller's engine interrupts wasm at epoch deadlines.

    A new Store's deadline is 0, so with epoch interruption on even an empty
    function traps with INTERRUPT at once.
    Raises ``ValueError`` if it does not.
    """
    module = wasmtime.Module(engine, '(module (func (export "f")))')
    store = wasmtime.Store(engine)
    func = wasmtime.Instance(store, module, []).exports(store)["f"]
    assert isinstance(func, wasmtime.Func)  # the module above exports "f" as a function
    try:
        func(store)
    except wasmtime.Trap as exc:
        if exc.trap_code is wasmtime.TrapCode.INTERRUPT:
            return
        raise
    raise ValueError("Host needs an engine with Config.epoch_interruption = True")


class EpochTicker:
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
