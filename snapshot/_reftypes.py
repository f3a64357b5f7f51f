"""Reference types (typed function references, GC, exceptions): names, classes, refusals.

A value type is carried as a canonical string: ``i32`` .. ``v128``; the
nullable abstract references by their short names (``funcref``,
``i31ref``, ``nullexternref`` ...); a non-nullable abstract one as
``(ref i31)``; a concrete one as ``(ref null $3)`` / ``(ref $3)`` (the
index of a type in the module's type section).

What a reference can be captured as depends on its *class*:

* ``func`` (funcref, concrete function types): a function index, as before;
* ``extern``: null only (a host object has no portable form);
* ``i31``: its 31-bit signed value (i31.get_s);
* ``none`` (nullref, nullfuncref, nullexternref, nullexnref): always null;
* ``gc`` (anyref, eqref, structref, arrayref, concrete struct/array types):
  a live struct or array has an identity and sharing that no injected
  export can read and rebuild, so a table or mutable global that can hold
  one is refused at prepare time, naming the item (``_refcheck``);
* ``exn`` (exnref): a live exception can be re-thrown (throw_ref) and
  caught by tag to read its payload, but one of a tag this module neither
  defines nor imports can only be caught with catch_all_ref, which gives no
  payload, and a payload holding a GC reference brings back the ``gc``
  problem; so a mutable exnref global or an exnref table is refused at
  prepare time.  An immutable exnref global is always null (no constant
  expression makes an exception) and holds no state.

Pure functions, no wasmtime: the decoder checks snapshot values with them.
"""

from __future__ import annotations

import re

from ._errors import InvalidModuleError, UnsupportedFeatureError
from ._leb128 import read_s, write_s

#: Abstract heap types: binary code -> (name, class, nullable short name).
HEAP_TYPES = {
    0x73: ("nofunc", "none", "nullfuncref"), 0x72: ("noextern", "none", "nullexternref"),
    0x71: ("none", "none", "nullref"), 0x70: ("func", "func", "funcref"),
    0x6F: ("extern", "extern", "externref"), 0x6E: ("any", "gc", "anyref"),
    0x6D: ("eq", "gc", "eqref"), 0x6C: ("i31", "i31", "i31ref"),
    0x6B: ("struct", "gc", "structref"), 0x6A: ("array", "gc", "arrayref"),
    0x69: ("exn", "exn", "exnref"), 0x74: ("noexn", "none", "nullexnref"),
}
_HEAP_BY_NAME = {name: code for code, (name, _, _) in HEAP_TYPES.items()}
_SHORT = {short: name for name, _, short in HEAP_TYPES.values()}
NUMERIC = ("i32", "i64", "f32", "f64", "v128")
_REF = re.compile(r"\(ref (null )?(\$(0|[1-9][0-9]{0,9})|[a-z0-9]+)\)")
#: The i31 range: i31.get_s gives a signed 31-bit value.
I31_MIN, I31_MAX = -(1 << 30), (1 << 30) - 1


def read_heaptype(data: bytes, pos: int) -> tuple[str, int]:
    """A heap type at ``pos``: an abstract name or ``$N``; raises InvalidModuleError."""
    if pos >= len(data):
        raise InvalidModuleError("unexpected end of module inside a heap type")
    if data[pos] in HEAP_TYPES:
        return HEAP_TYPES[data[pos]][0], pos + 1
    index, end = read_s(data, pos, 33)
    if index < 0:
        raise UnsupportedFeatureError(f"heap type 0x{data[pos]:02x} is not supported")
    return f"${index}", end


def read_reftype(data: bytes, pos: int) -> tuple[str, int] | None:
    """A reference type at ``pos`` as its canonical string, or None if there is none."""
    code = data[pos]
    if code in HEAP_TYPES:
        return HEAP_TYPES[code][2], pos + 1
    if code in (0x63, 0x64):  # (ref null ht) / (ref ht)
        heap, end = read_heaptype(data, pos + 1)
        return ref_name(heap, code == 0x63), end
    return None


def ref_name(heap: str, nullable: bool) -> str:
    if nullable and heap in _HEAP_BY_NAME:
        return HEAP_TYPES[_HEAP_BY_NAME[heap]][2]
    return f"(ref {'null ' if nullable else ''}{heap})"


def split(valtype: str) -> tuple[str, bool] | None:
    """(heap type, nullable) of a canonical reference type string, None for anything else."""
    if valtype in _SHORT:
        return _SHORT[valtype], True
    m = _REF.fullmatch(valtype)
    if m is None or (not m.group(2).startswith("$") and m.group(2) not in _HEAP_BY_NAME):
        return None
    return m.group(2), m.group(1) is not None


def ref_parts(valtype: str) -> tuple[str, bool]:
    """``split`` for a string known to be a reference type; raises ValueError for anything else."""
    parts = split(valtype)
    if parts is None:
        raise ValueError(f"{valtype!r} is not a reference type")
    return parts


def heap_bytes(heap: str) -> bytes:
    """The binary heap type: an abstract code or the s33 type index."""
    if heap in _HEAP_BY_NAME:
        return bytes([_HEAP_BY_NAME[heap]])
    return write_s(int(heap[1:]))


def encode(valtype: str) -> bytes:
    """The binary form of a canonical reference type string."""
    heap, nullable = ref_parts(valtype)
    if nullable and heap in _HEAP_BY_NAME:
        return bytes([_HEAP_BY_NAME[heap]])
    return bytes([0x63 if nullable else 0x64]) + heap_bytes(heap)


def ref_class(valtype: str, kinds: list[str] | None = None) -> str | None:
    """The class of a reference type (see the module doc), None for a numeric type or a bad string.

    A concrete type is ``func`` or ``gc`` by ``kinds`` (the kind of each
    type index); without them (a snapshot, a prepared module's export) it
    is ``func``: prepare refuses every table and mutable global of a
    concrete struct or array type.
    """
    parts = split(valtype)
    if parts is None:
        return None
    heap = parts[0]
    if heap.startswith("$"):
        if kinds is None:
            return "func"
        index = int(heap[1:])
        return "func" if index < len(kinds) and kinds[index] == "func" else "gc"
    return HEAP_TYPES[_HEAP_BY_NAME[heap]][1]


def nullable(valtype: str) -> bool:
    return ref_parts(valtype)[1]


def value_fits(valtype: str, value: object) -> bool:
    """True if ``value`` is a portable value of reference type ``valtype`` (as a snapshot carries it)."""
    cls = ref_class(valtype)
    if cls is None or cls in ("gc", "exn"):
        return False
    if value is None:
        return nullable(valtype)
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    if cls == "func":
        return value >= 0
    return cls == "i31" and I31_MIN <= value <= I31_MAX
