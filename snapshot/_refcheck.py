"""What prepare refuses: tables, globals and segments holding state no export can read back.

The classes of reference types are in ``_reftypes``.  A table or mutable
global of the ``gc`` class (it can hold a struct or an array, whose
identity and sharing no injected export can read and rebuild) or of the
``exn`` class is refused; so is an immutable global or a passive element
segment of the ``gc`` class when some struct or array type has a mutable
field (their objects are made once, at instantiation, and can change
afterwards).  Each refusal names the item and the feature, at prepare time,
never in the middle of a move.
"""

from __future__ import annotations

from typing import Iterator

from . import _wasmbin as wb
from ._errors import InvalidModuleError, UnsupportedFeatureError
from ._leb128 import read_u
from ._reftypes import ref_class, ref_parts


def refusal(what: str, valtype: str, kinds: list[str]) -> str | None:
    """Why a table or mutable global of ``valtype`` cannot be captured, or None if it can."""
    cls = ref_class(valtype, kinds)
    if cls == "gc":
        return f"{what} holds GC references ({_described(valtype, kinds)}), which cannot be captured"
    if cls == "exn":
        return (f"{what} holds exception references ({valtype}), which cannot be captured "
                "(exception handling: a live exception cannot be read back through an export)")
    return None


def _described(valtype: str, kinds: list[str]) -> str:
    """``valtype``, with the kind of a concrete type: ``struct type (ref null $2)``."""
    heap = ref_parts(valtype)[0]
    return f"{kinds[int(heap[1:])]} type {valtype}" if heap.startswith("$") else valtype


def check_module(info: wb.ModuleInfo) -> None:
    """Refuse, naming the item and feature, a module whose tables or globals hold uncapturable references.

    Tables and mutable globals of a ``gc`` or ``exn`` class are refused.  An
    immutable global of a ``gc`` class is refused only if some struct or
    array type has a mutable field: its object is rebuilt by instantiation,
    which is exact while no object can change.
    """
    kinds = info.type_kinds
    for i, (reftype, _) in enumerate(info.tables):
        reason = refusal(f"table {info.imported_tables + i}", reftype, kinds)
        if reason:
            raise UnsupportedFeatureError(reason)
    for i, g in enumerate(info.globals):
        what = f"global {info.imported_globals + i}"
        if g.mutable:
            reason = refusal(what, g.valtype, kinds)
        elif ref_class(g.valtype, kinds) == "gc" and info.mutable_fields:
            reason = (f"{what} holds GC references ({_described(g.valtype, kinds)}) to objects with mutable fields, "
                      "which cannot be captured")
        else:
            reason = None
        if reason:
            raise UnsupportedFeatureError(reason)
    if info.mutable_fields:
        for index, reftype in _passive_segments(info):
            if ref_class(reftype, kinds) == "gc":
                raise UnsupportedFeatureError(
                    f"element segment {index} holds GC references ({_described(reftype, kinds)}) to objects "
                    "with mutable fields, which cannot be captured")


def _passive_segments(info: wb.ModuleInfo) -> Iterator[tuple[int, str]]:
    """(segment index, reference type) of each passive element segment given by expressions.

    Its references are made once, at instantiation, and array.new_elem or
    table.init hand out the same objects on every call: a struct changed
    through one of them stays changed in the segment.
    """
    section = info.section(wb.ELEMENT)
    if section is None:
        return
    p = section.payload
    count, pos = read_u(p, 0)
    for index in range(count):
        flags, pos = read_u(p, pos)
        if flags > 7:
            raise InvalidModuleError(f"unknown element segment flags {flags}")
        if flags & 3 == 2:  # active with an explicit table
            _, pos = read_u(p, pos)
        if not flags & 1:  # active: offset expression
            pos = wb.skip_const_expr(p, pos)
        reftype = "funcref"
        if flags & 3:  # element kind or reference type
            if flags & 4:
                reftype, pos = wb.read_valtype(p, pos)
            else:
                pos += 1
        n, pos = read_u(p, pos)
        for _ in range(n):
            pos = wb.skip_const_expr(p, pos) if flags & 4 else read_u(p, pos)[1]
        if flags == 5:
            yield index, reftype
