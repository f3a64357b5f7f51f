"""Injected accessors for tables and globals wasmtime-py cannot read or write itself.

wasmtime-py 50 handles funcref and externref only: ``Table.type``, ``set``
and ``grow`` raise "support for non-externref and non-funcref references is
not implemented" on a table of typed function references or i31ref,
``get`` cannot return an i31ref, and ``TableType.limits`` aborts the whole
process (a Rust panic in the C API) on a table64 whose limits pass 2**32.
So ``prepare`` gives every such table (``needs_accessors``) functions that
do the work in wasm, and a *descriptor* export naming its type, which
``layout`` reads instead of asking wasmtime:

* ``__wm_ttype_<i>:<i32|i64>:<maximum or ->:<type>`` (the table itself),
  ``__wm_tsize_<i>`` (table.size), ``__wm_tget_<i>``, ``__wm_tset_<i>``,
  ``__wm_tgrow_<i>`` (table.grow; the fill value is one of the snapshot's
  own elements, so a non-nullable table is never filled with null) and,
  for function references, ``__wm_ttest_<i>`` (ref.test);
* for a mutable global, ``__wm_gtype_<i>:<type>`` (the global itself) and
  ``__wm_get_<i>`` / ``__wm_set_<i>`` / ``__wm_gtest_<i>``.

Values cross as integers: a function reference as its index in
``__wm_functable`` (-1 for null; the setter takes it from there and
``ref.cast``s it to the element type, which needs the GC proposal, on in
wasmtime 50's default engine and the product's), an i31ref as
(is-null, i31.get_s), anything else as is-null.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import wasmtime

from . import _reftypes as rt
from ._errors import IncompatibleSnapshotError, UnrepresentableStateError
from ._leb128 import write_u

PLAIN_REFS = ("funcref", "externref")
TABLE_TYPE, GLOBAL_TYPE = "__wm_ttype_", "__wm_gtype_"
TABLE_FUNCS = ("tsize", "tget", "tfill", "tgrow", "ttest")


def needs_table_accessors(reftype: str, is64: bool) -> bool:
    return is64 or reftype not in PLAIN_REFS


def needs_global_accessors(valtype: str) -> bool:
    return valtype not in rt.NUMERIC and valtype not in PLAIN_REFS


def accessor_name(kind: str, index: int) -> str:
    return f"__wm_{kind}_{index}"


def table_descriptor(index: int, reftype: str, is64: bool, maximum: int | None) -> str:
    return f"{TABLE_TYPE}{index}:{'i64' if is64 else 'i32'}:{'-' if maximum is None else maximum}:{reftype}"


def global_descriptor(index: int, valtype: str) -> str:
    return f"{GLOBAL_TYPE}{index}:{valtype}"


@dataclass(frozen=True)
class Accessor:
    """One injected function: its export name, signature, locals and body (without the final ``end``)."""

    name: str
    params: tuple[str, ...]
    results: tuple[str, ...]
    body: bytes
    locals: bytes = b"\x00"

    def code(self) -> bytes:
        code = self.locals + self.body + b"\x0b"
        return write_u(len(code)) + code


def _get(p: int) -> bytes:
    return b"\x20" + write_u(p)


def _make(valtype: str, p: int, functable: int | None) -> tuple[tuple[str, ...], bytes] | None:
    """(params, code) that push a value of ``valtype`` built from params from local ``p`` on, or None."""
    cls = rt.ref_class(valtype)
    heap, nullable = rt.ref_parts(valtype)
    ht = rt.heap_bytes(heap)
    null = b"\xd0" + ht
    if cls == "func":
        if functable is None:
            return (("i32",), null) if nullable else None
        cast = _get(p) + b"\x25" + write_u(functable) + (b"\xfb\x17" if nullable else b"\xfb\x16") + ht
        if not nullable:
            return ("i32",), cast
        return ("i32",), _get(p) + b"\x41\x7f\x46\x04" + rt.encode(valtype) + null + b"\x05" + cast + b"\x0b"
    if cls == "i31":
        make = _get(p + 1) + b"\xfb\x1c"
        if not nullable:
            return ("i32", "i32"), make
        return ("i32", "i32"), _get(p) + b"\x04" + rt.encode(valtype) + null + b"\x05" + make + b"\x0b"
    return ((), null) if nullable else None


def _getter(name: str, valtype: str, params: tuple[str, ...], read: bytes) -> Accessor:
    cls = rt.ref_class(valtype)
    if cls == "func":
        return Accessor(name, params, ("funcref",), read)
    if cls == "i31":
        loc = write_u(len(params))
        body = (read + b"\x22" + loc + b"\xd1" + b"\x20" + loc + b"\xd1"
                + b"\x04\x7f\x41\x00\x05\x20" + loc + b"\xfb\x1d\x0b")
        return Accessor(name, params, ("i32", "i32"), body, locals=b"\x01\x01\x6c")
    return Accessor(name, params, ("i32",), read + b"\xd1")


def _tester(name: str, valtype: str, functable: int | None) -> list[Accessor]:
    if rt.ref_class(valtype) != "func" or functable is None:
        return []
    body = _get(0) + b"\x25" + write_u(functable) + b"\xfb\x14" + rt.heap_bytes(rt.ref_parts(valtype)[0])
    return [Accessor(name, ("i32",), ("i32",), body)]


def table_accessors(index: int, reftype: str, is64: bool, functable: int | None) -> list[Accessor]:
    addr = "i64" if is64 else "i32"
    t = write_u(index)
    out = [Accessor(accessor_name("tsize", index), (), (addr,), b"\xfc\x10" + t)]
    if rt.ref_class(reftype) != "func":  # Table.get reads function references of any table
        out.append(_getter(accessor_name("tget", index), reftype, (addr,), _get(0) + b"\x25" + t))
    made = _make(reftype, 2, functable)
    if made is not None:  # table.fill (start, count, value): one call per run of equal elements
        params, value = made
        out.append(Accessor(accessor_name("tfill", index), (addr, addr) + params, (),
                            _get(0) + value + _get(1) + b"\xfc\x11" + t))
        grow = _make(reftype, 1, functable)
        if grow is None:  # never: whether _make gives None depends on the type and functable only
            raise ValueError(f"no table.grow accessor for {reftype}")
        value = grow[1]
        out.append(Accessor(accessor_name("tgrow", index), (addr,) + params, (addr,),
                            value + _get(0) + b"\xfc\x0f" + t))
    return out + _tester(accessor_name("ttest", index), reftype, functable)


def global_accessors(index: int, valtype: str, functable: int | None) -> list[Accessor]:
    g = write_u(index)
    out = [_getter(accessor_name("get", index), valtype, (), b"\x23" + g)]
    made = _make(valtype, 0, functable)
    if made is not None:
        params, value = made
        out.append(Accessor(accessor_name("set", index), params, (), value + b"\x24" + g))
    return out + _tester(accessor_name("gtest", index), valtype, functable)


# --- at run time -------------------------------------------------------------

def parse_descriptor(name: str) -> tuple[str, int, list[str]] | None:
    """("t" or "g", item index, the remaining ``:`` fields) of a descriptor export name, or None."""
    for kind, prefix, fields in (("t", TABLE_TYPE, 3), ("g", GLOBAL_TYPE, 1)):
        if name.startswith(prefix):
            parts = name[len(prefix):].split(":", fields)
            if len(parts) == fields + 1 and parts[0].isdigit():
                return kind, int(parts[0]), parts[1:]
    return None


def from_result(valtype: str, raw: Any, to_index: Callable[[object], int | None], where: str) -> int | None:
    """A portable value from a getter's result (``to_index`` maps a function reference)."""
    cls = rt.ref_class(valtype)
    if cls == "func":
        return to_index(raw)
    if cls == "i31":
        is_null, value = raw
        return None if is_null else value
    if raw:
        return None
    raise UnrepresentableStateError(f"{where} holds a host externref; only null externrefs can be captured")


def to_args(valtype: str, value: int | None) -> tuple[int, ...]:
    """A setter's arguments for a portable value (checked beforehand by ``check_value``)."""
    cls = rt.ref_class(valtype)
    if cls == "func":
        return (-1 if value is None else value,)
    if cls == "i31":
        return (1, 0) if value is None else (0, value)
    return ()


def check_value(valtype: str, value: int | None, nfuncs: int, test: wasmtime.Func | None,
                store: wasmtime.Storelike, where: str) -> None:
    """Refuse a value the target cannot take, before anything is written.

    ``test`` is the injected ref.test for function references (None where
    there is none): a function of the wrong type would trap in ref.cast.
    """
    if not rt.value_fits(valtype, value):
        raise IncompatibleSnapshotError(f"{where}: {value!r} is not a valid {valtype}")
    if rt.ref_class(valtype) == "func" and value is not None:
        if value >= nfuncs:
            raise IncompatibleSnapshotError(f"{where}: function index {value!r} is out of range")
        if test is None or not test(store, value):
            raise IncompatibleSnapshotError(f"{where}: function {value} is not of type {valtype}")
