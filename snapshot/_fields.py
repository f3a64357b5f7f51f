"""Checked reading of the snapshot format's fields (for ``_decoder``): the errors it raises and META's entries and values."""

from __future__ import annotations

from typing import Any, Iterator

from ._errors import CorruptSnapshotError, OversizedSnapshotError
from ._reftypes import ref_class, value_fits
from ._state import NUMERIC_BITS, is_int, numeric_fits


def corrupt(msg: str) -> CorruptSnapshotError:
    return CorruptSnapshotError(f"corrupt snapshot: {msg}")


def want(cond: bool, msg: str) -> None:
    if not cond:
        raise corrupt(msg)


def entries(items: object, what: str, plural: str, limit: int | None = None) -> Iterator[list[Any]]:
    """The ``[index, x, y]`` entries of a META list, checked: a list of at most ``limit``, indices rising."""
    if not isinstance(items, list):
        raise corrupt(f"bad {what} list")
    if limit is not None and len(items) > limit:
        raise OversizedSnapshotError(f"{len(items)} {plural} exceed the limit of {limit}")
    last = -1
    for entry in items:
        want(isinstance(entry, list) and len(entry) == 3 and is_int(entry[0]) and entry[0] > last,
             f"bad {what} entry")
        last = entry[0]
        yield entry


def decode_value(valtype: str, value: object, where: str) -> int | None:
    if valtype == "v128":
        if not (isinstance(value, bytes) and len(value) == 16):
            raise corrupt(f"{where} is not a v128")
        return int.from_bytes(value, "little")
    if valtype in NUMERIC_BITS:
        if not (is_int(value) and numeric_fits(valtype, value)):
            raise corrupt(f"{where} is not a valid {valtype}")
        return value
    want(isinstance(valtype, str) and ref_class(valtype) is not None, f"{where} has unknown type {valtype!r}")
    if not (value is None or is_int(value)) or not value_fits(valtype, value):
        raise corrupt(f"{where} is not a valid {valtype}")
    return value
