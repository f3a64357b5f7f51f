"""The pieces of an instance's state: memories as page runs, globals and tables.

A memory is carried as runs of 4 KiB pages (``_pages``); globals and tables
are always carried whole, since they are small next to memory.  The values
are portable: numbers as raw bits, references as function indices.  The
whole, ``Snapshot``, is in ``_snapshot``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeGuard

from ._pages import PageRun

#: Bit width of each numeric value type.
NUMERIC_BITS = {"i32": 32, "i64": 64, "f32": 32, "f64": 64, "v128": 128}
#: The value types held as signed integers (as wasmtime reports them).
SIGNED_TYPES = frozenset({"i32", "i64"})


def is_int(value: object) -> TypeGuard[int]:
    """True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def numeric_fits(valtype: str, value: object) -> bool:
    """True if ``value`` is a valid ``GlobalState`` value of numeric ``valtype``.

    i32 and i64 are signed integers of their width; f32, f64 and v128 are
    unsigned bit patterns of theirs.
    """
    bits = NUMERIC_BITS[valtype]
    lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if valtype in SIGNED_TYPES else (0, 1 << bits)
    return is_int(value) and lo <= value < hi


@dataclass(frozen=True)
class MemoryState:
    """One linear memory: its size and the pages the snapshot carries.

    ``zero_free`` says that no run holds a zero page (a decoded full
    snapshot: the encoder leaves zero pages out), so a restore writes the
    runs without looking for zero pages in them.  It is only a hint for
    speed: a zero page written into a fresh instance's zero page is still
    exact.
    """

    index: int
    size_bytes: int
    runs: tuple[PageRun, ...] = ()
    zero_free: bool = field(default=False, compare=False)

    @property
    def page_count(self) -> int:
        return sum(r.page_count for r in self.runs)


@dataclass(frozen=True)
class GlobalState:
    """A mutable global's value, as raw bits.

    i32/i64 hold signed integers as wasmtime reports them; f32/f64/v128 hold
    the unsigned bit pattern (so NaN payloads survive); a function
    reference holds a function index or None, an i31ref its signed 31-bit
    value or None; externref and the bottom types can only be None (see
    ``_reftypes``).
    """

    index: int
    valtype: str
    value: int | None


@dataclass(frozen=True)
class TableState:
    """A table's size and elements, valued as a ``GlobalState`` of its ``reftype`` is."""

    index: int
    reftype: str
    elements: tuple[int | None, ...]


@dataclass(frozen=True)
class DroppedSegments:
    """The passive segments an instance has dropped: data and element segment indices, sorted.

    Only passive segments of non-zero length are ever listed: active and
    declarative segments are dropped by instantiation itself, in a restored
    instance as in the original, and whether an empty segment was dropped
    cannot be observed.
    """

    data: tuple[int, ...] = ()
    elems: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.data or self.elems)
