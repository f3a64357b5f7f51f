"""Call arguments: the one check a node makes against an export's signature, and the check a client can make without it.

Wasm integers are sign-agnostic, so an ``i32`` parameter takes any int in
``-2**31 .. 2**32 - 1`` and an ``i64`` any in ``-2**63 .. 2**64 - 1``; the
guest gets the two's-complement bits (4294967295 and -1 are the same i32)
and results come back signed.  Anything outside is refused, never wrapped.

An ``f64`` parameter takes any float, NaN payloads included (they reach the
guest bit for bit), and an int only if it converts to f64 exactly.  An
``f32`` parameter takes a float rounded to the nearest f32 (0.1 becomes
0.100000001490116...), infinities and NaNs (quiet NaN payloads survive; a
Python float cannot carry a signalling f32 NaN), but not a finite value
that would round to infinity (from 2**128 - 2**103 on), and an int only
if it is exactly an f32.  ``bool`` is not a number here, and the
count must match.

``convert_args`` is the node's check (``Host.call``): it raises
``BadArguments`` (a ``ValueError``; wire code ``bad_arguments``).
``check_call_args`` is the client's (``NodeClient.call``, migrate's
``Handle.call``), which does not know the signature: ``TypeError`` for a
value that is no number, ``BadArguments`` for an int no parameter type can
take.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Protocol, TypeAlias

from ._host_errors import BadArguments

__all__ = ["INT_BITS", "FLOAT_TYPES", "convert_args", "check_call_args"]

INT_BITS = {"i32": 32, "i64": 64}
FLOAT_TYPES = frozenset({"f32", "f64"})
_WIDEST = INT_BITS["i64"]


#: What a call returns: None, one value, or a tuple of several.
CallResults: TypeAlias = int | float | tuple[int | float, ...] | None


class _Signature(Protocol):
    @property
    def params(self) -> tuple[str, ...]: ...

    @property
    def results(self) -> tuple[str, ...]: ...


def check_call_args(args: Sequence[object]) -> tuple[int | float, ...]:
    """Check call arguments without the export's signature; return them as a tuple.

    Raises ``TypeError`` (not a sequence of numbers, or a bool) or
    ``BadArguments`` (an int that fits no parameter type).
    """
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
        raise TypeError(f"call arguments must be a sequence of numbers, got {type(args).__name__}")
    numbers: list[int | float] = []
    for i, value in enumerate(args):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"argument {i} must be an int or a float, got {type(value).__name__}")
        if isinstance(value, int) and not _fits(value, _WIDEST):
            raise BadArguments(f"argument {i} does not fit in any wasm integer type: {value}")
        numbers.append(value)
    return tuple(numbers)


def convert_args(export: str, signature: _Signature, args: Sequence[int | float]) -> list[int | float]:
    """Check call arguments against the export's signature and convert them.

    Integers may be given signed or unsigned; they are passed signed.
    Raises ``BadArguments``.
    """
    unsupported = [t for t in signature.params + signature.results if t not in INT_BITS and t not in FLOAT_TYPES]
    if unsupported:
        raise BadArguments(f"export {export!r} uses {', '.join(unsupported)}, which calls cannot carry")
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
        raise BadArguments("args must be a sequence of numbers")
    if len(args) != len(signature.params):
        raise BadArguments(f"export {export!r} takes {len(signature.params)} arguments, got {len(args)}")
    return [_convert(export, i, ty, value) for i, (ty, value) in enumerate(zip(signature.params, args))]


def _convert(export: str, i: int, ty: str, value: object) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadArguments(f"argument {i} of {export!r} must be a number, got {type(value).__name__}")
    if ty in FLOAT_TYPES:
        converted = _as_float(ty, value)
        if converted is None:
            raise BadArguments(f"argument {i} of {export!r} does not fit in {ty}: {value!r}")
        return converted
    if not isinstance(value, int):
        raise BadArguments(f"argument {i} of {export!r} is {ty}, got a float")
    bits = INT_BITS[ty]
    if not _fits(value, bits):
        raise BadArguments(f"argument {i} of {export!r} does not fit in {ty}: {value}")
    return value - (1 << bits) if value >= (1 << (bits - 1)) else value


def _fits(value: int, bits: int) -> bool:
    return -(1 << (bits - 1)) <= value < (1 << bits)


def _as_float(ty: str, value: int | float) -> float | None:
    """``value`` as the float a ``ty`` parameter gets, or None if it does not fit."""
    try:
        converted = float(value)
        if ty == "f32" and math.isfinite(converted):
            narrowed = struct.unpack("<f", struct.pack("<f", converted))[0]
            if isinstance(value, int) and narrowed != value:
                return None
    except OverflowError:
        return None
    if isinstance(value, int) and converted != value:
        return None
    return converted
