"""Run script actions on wasmtime bit-exactly, and the "spectest" host module.

wasmtime-py's ``Func.__call__`` converts floats through Python floats (which
quietens signalling NaNs on x86) and cannot pass or return v128, anyref or
exnref values; asking for such a type's name even aborts the process.  So
calls here build the C API's ``wasmtime_val_t`` directly: float arguments
and results move as raw bits through the union's integer member, v128 as 16
bytes, and a function's result count is read from its type's vector length
without describing any value type.
"""

from __future__ import annotations

import ctypes
import functools
import weakref
from dataclasses import dataclass

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime._func import enter_wasm
from wasmtime._value import Val, _unintern

from nodes import Limits, open_engine

from ._wast_values import LANES, Either, LanePattern, NanPattern, Num, Ref, RefPattern, V128

_KINDS = {"i32": 0, "i64": 1, "f32": 2, "f64": 3, "v128": 4, "funcref": 5, "externref": 6, "anyref": 7,
          "exnref": 8}
_NAMES = {v: k for k, v in _KINDS.items()}
_MASK = {"i32": 2**32 - 1, "f32": 2**32 - 1, "i64": 2**64 - 1, "f64": 2**64 - 1}


def product_engine() -> wasmtime.Engine:
    """An engine with the settings a migrate node uses for its own engine (default limits)."""
    return open_engine(Limits())[0]


def new_store(engine: wasmtime.Engine) -> wasmtime.Store:
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(1)  # epoch interruption is on; nothing advances the epoch here
    return store


@dataclass(frozen=True)
class RefResult:
    """A reference result: ``detail`` None for null, else what can be observed of it
    ("func", "extern", an int host value, ("i31", n), "struct", "array", "any", "exn")."""
    kind: str
    detail: object


@dataclass(frozen=True)
class Outcome:
    """What an action did: ``status`` is ok, trap, exhaustion, exception or error."""
    status: str
    values: tuple = ()
    message: str = ""


def _to_raw(store: wasmtime.Store, value, out: ffi.wasmtime_val_t) -> None:
    if isinstance(value, Num):
        out.kind = _KINDS[value.type]
        bits = value.bits
        if value.type in ("i32", "f32"):
            out.of.i32 = bits - (1 << 32) if bits >> 31 else bits
        else:
            out.of.i64 = bits - (1 << 64) if bits >> 63 else bits
    elif isinstance(value, V128):
        out.kind = _KINDS["v128"]
        ctypes.memmove(out.of.v128, value.data, 16)
    elif isinstance(value, Ref) and value.host is not None:
        raw = Val.externref(value.host)._new_raw(store)
        if value.kind == "anyref":
            raw = _convert(store, "in", raw)
        out.kind, out.of = raw.kind, raw.of
    elif isinstance(value, Ref):
        out.kind = _KINDS[value.kind]  # a null reference: the union stays zeroed
    else:
        raise TypeError(f"cannot pass {value!r}")


def _from_raw(store: wasmtime.Store, raw: ffi.wasmtime_val_t):
    kind = _NAMES.get(raw.kind)
    if kind in ("i32", "f32"):
        return Num(kind, raw.of.i32 & _MASK[kind])
    if kind in ("i64", "f64"):
        return Num(kind, raw.of.i64 & _MASK[kind])
    if kind == "v128":
        return V128(bytes(raw.of.v128))
    ctx = store._context()
    if kind == "funcref":
        return RefResult(kind, None if raw.of.funcref.store_id == 0 else "func")
    if kind == "externref":
        if raw.of.externref.store_id == 0:
            return RefResult(kind, None)
        data = ffi.wasmtime_externref_data(ctx, ctypes.byref(raw.of.externref))
        return RefResult(kind, _unintern(data) if data else "extern")
    if kind == "anyref":
        ref = ctypes.byref(raw.of.anyref)
        if raw.of.anyref.store_id == 0:
            return RefResult(kind, None)
        # wasmtime_anyref_is_i31 answers true for structs and arrays too (wasmtime 50,
        # measured), so an i31 is an eqref that is neither.
        if ffi.wasmtime_anyref_is_struct(ctx, ref):
            return RefResult(kind, "struct")
        if ffi.wasmtime_anyref_is_array(ctx, ref):
            return RefResult(kind, "array")
        if ffi.wasmtime_anyref_is_eqref(ctx, ref):
            n = ctypes.c_uint32()
            ffi.wasmtime_anyref_i31_get_u(ctx, ref, ctypes.byref(n))
            return RefResult(kind, ("i31", n.value))
        ext = _convert(store, "out", raw)
        data = ffi.wasmtime_externref_data(ctx, ctypes.byref(ext.of.externref))
        ffi.wasmtime_val_unroot(ctypes.byref(ext))
        return RefResult(kind, _unintern(data) if data else "any")
    if kind == "exnref":
        return RefResult(kind, None if raw.of.exnref.store_id == 0 else "exn")
    raise TypeError(f"unknown value kind {raw.kind}")


def result_count(store: wasmtime.Store, func: wasmtime.Func) -> int:
    ft = ffi.wasmtime_func_type(store._context(), ctypes.byref(func._func))
    try:
        return ffi.wasm_functype_results(ft).contents.size
    finally:
        ffi.wasm_functype_delete(ft)


def _trap_outcome(exc: Exception) -> Outcome:
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    message = lines[-1] if lines else type(exc).__name__  # the cause, after the backtrace
    if isinstance(exc, wasmtime.Trap):
        if exc.trap_code is wasmtime.TrapCode.STACK_OVERFLOW:
            return Outcome("exhaustion", message=message)
        if exc.trap_code is None and "thrown Wasm exception" in message:
            return Outcome("exception", message=message)
        return Outcome("trap", message=message)
    return Outcome("error", message=message)


def _call_raw(store: wasmtime.Store, func: wasmtime.Func, params, nargs: int, nres: int):
    """Call with raw parameters; return the raw results (the caller unroots them)."""
    results = (ffi.wasmtime_val_t * max(1, nres))()
    with enter_wasm(store) as trap:
        error = ffi.wasmtime_func_call(store._context(), ctypes.byref(func._func), params, nargs, results, nres, trap)
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
    return results


def call(store: wasmtime.Store, func: wasmtime.Func, args: tuple) -> Outcome:
    """Call ``func`` with raw-bit arguments; every result is read back raw."""
    nres = result_count(store, func)
    params = (ffi.wasmtime_val_t * max(1, len(args)))()
    try:
        for slot, arg in zip(params, args):
            _to_raw(store, arg, slot)
        results = _call_raw(store, func, params, len(args), nres)
    except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
        return _trap_outcome(exc)
    values = tuple(_from_raw(store, results[i]) for i in range(nres))
    for i in range(nres):
        ffi.wasmtime_val_unroot(ctypes.byref(results[i]))
    return Outcome("ok", values)


# The C API has no conversion between externref and anyref, so a helper
# module in the same store does it with any.convert_extern / extern.convert_any
# (the spec's ``ref.host N`` is an anyref that wraps host value N).
_CONVERT_WAT = """(module
  (func (export "in") (param externref) (result anyref) (any.convert_extern (local.get 0)))
  (func (export "out") (param anyref) (result externref) (extern.convert_any (local.get 0))))"""
_converters: "weakref.WeakKeyDictionary[wasmtime.Store, dict]" = weakref.WeakKeyDictionary()


def _convert(store: wasmtime.Store, name: str, raw: ffi.wasmtime_val_t) -> ffi.wasmtime_val_t:
    funcs = _converters.get(store)
    if funcs is None:
        funcs = _converters[store] = wasmtime.Instance(store, _helper(store.engine, _CONVERT_WAT), []).exports(store)
    params = (ffi.wasmtime_val_t * 1)(raw)
    return _call_raw(store, funcs[name], params, 1, 1)[0]


def get_global(store: wasmtime.Store, glob: wasmtime.Global) -> Outcome:
    raw = ffi.wasmtime_val_t()
    ffi.wasmtime_global_get(store._context(), ctypes.byref(glob._global), ctypes.byref(raw))
    value = _from_raw(store, raw)
    ffi.wasmtime_val_unroot(ctypes.byref(raw))
    return Outcome("ok", (value,))


@functools.lru_cache(maxsize=8)
def _helper(engine: wasmtime.Engine, wat: str) -> wasmtime.Module:
    return wasmtime.Module(engine, wasmtime.wat2wasm(wat))


_PRINTS = (("print", ()), ("print_i32", ("i32",)), ("print_i64", ("i64",)), ("print_f32", ("f32",)),
           ("print_f64", ("f64",)), ("print_i32_f32", ("i32", "f32")), ("print_f64_f64", ("f64", "f64")))
_TABLE64_WAT = '(module (table (export "t") i64 10 20 funcref))'


def spectest(store: wasmtime.Store) -> dict[str, object]:
    """The host module the spec interpreter provides, as its exports (spectest.wast's definition)."""
    out: dict[str, object] = {}
    for name, params in _PRINTS:
        functype = wasmtime.FuncType([getattr(wasmtime.ValType, p)() for p in params], [])
        out[name] = wasmtime.Func(store, functype, lambda *a: None)
    for t, v in (("i32", 666), ("i64", 666), ("f32", 666.6), ("f64", 666.6)):
        vt = getattr(wasmtime.ValType, t)()
        out[f"global_{t}"] = wasmtime.Global(store, wasmtime.GlobalType(vt, False), getattr(Val, t)(v))
    out["table"] = wasmtime.Table(store, wasmtime.TableType(wasmtime.ValType.funcref(), wasmtime.Limits(10, 20)),
                                  None)
    out["memory"] = wasmtime.Memory(store, wasmtime.MemoryType(wasmtime.Limits(1, 2)))
    # wasmtime-py cannot make a 64-bit table, so a one-table module in the same store provides it.
    out["table64"] = wasmtime.Instance(store, _helper(store.engine, _TABLE64_WAT), []).exports(store)["t"]
    return out


def _nan_ok(bits: int, ftype: str, which: str) -> bool:
    fbits = 23 if ftype == "f32" else 52
    ebits = 8 if ftype == "f32" else 11
    exp = (bits >> fbits) & ((1 << ebits) - 1)
    frac = bits & ((1 << fbits) - 1)
    quiet = 1 << (fbits - 1)
    if exp != (1 << ebits) - 1 or frac == 0:
        return False
    return frac == quiet if which == "canonical" else bool(frac & quiet)


def _lanes_match(pattern: LanePattern, data: bytes) -> bool:
    ltype, count = LANES[pattern.shape]
    width = 16 // count
    for k, want in enumerate(pattern.lanes):
        got = int.from_bytes(data[k * width:(k + 1) * width], "little")
        if isinstance(want, NanPattern):
            if not _nan_ok(got, ltype, want.which):
                return False
        elif got != want:
            return False
    return True


_ANY_DETAILS = {"any": None, "eq": ("i31", "struct", "array", "any"), "i31": ("i31",), "struct": ("struct",),
                "array": ("array",)}


def matches(expected, actual) -> bool:
    """Whether a result value satisfies the spec's expectation."""
    if isinstance(expected, Either):
        return any(matches(e, actual) for e in expected.options)
    if isinstance(expected, Num):
        return isinstance(actual, Num) and actual == expected
    if isinstance(expected, NanPattern):
        return isinstance(actual, Num) and actual.type == expected.type and \
            _nan_ok(actual.bits, expected.type, expected.which)
    if isinstance(expected, V128):
        return actual == expected
    if isinstance(expected, LanePattern):
        return isinstance(actual, V128) and _lanes_match(expected, actual.data)
    if not isinstance(actual, RefResult):
        return False
    if isinstance(expected, Ref):
        if expected.host is None:
            return actual.detail is None and actual.kind == expected.kind
        return actual.kind == expected.kind and actual.detail == expected.host
    if isinstance(expected, RefPattern):
        if expected.what == "null":
            return actual.detail is None
        if actual.detail is None:
            return False
        if expected.what in ("func", "extern", "exn"):
            return actual.kind == expected.what + "ref"
        allowed = _ANY_DETAILS.get(expected.what)
        got = actual.detail[0] if isinstance(actual.detail, tuple) else actual.detail
        return actual.kind == "anyref" and (allowed is None or got in allowed)
    return False


__all__ = ["Outcome", "RefResult", "call", "get_global", "matches", "new_store", "product_engine",
           "result_count", "spectest"]
