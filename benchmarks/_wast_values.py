"""Values and result patterns of WebAssembly scripts, parsed exactly.

Numbers become raw bits: integers wrap to their width (two's complement),
floats are rounded from the exact rational value of the literal straight to
the target format (round to nearest, ties to even), so f32 literals are
never rounded twice through f64.  ``nan``, ``nan:0x...``, ``inf`` and hex
floats (``0x1.8p3``) are read as the text format defines them.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from ._wast_sexpr import Atom, List, String, WastSyntaxError

# type -> (exponent bits, fraction bits)
_FLOAT = {"f32": (8, 23), "f64": (11, 52)}
INT_BITS = {"i8": 8, "i16": 16, "i32": 32, "i64": 64}
LANES = {"i8x16": ("i8", 16), "i16x8": ("i16", 8), "i32x4": ("i32", 4), "i64x2": ("i64", 2),
         "f32x4": ("f32", 4), "f64x2": ("f64", 2)}
#: Heap types of ``ref.null`` and the value kind wasmtime uses for each.
HEAP_KINDS = {"func": "funcref", "nofunc": "funcref", "extern": "externref", "noextern": "externref",
              "any": "anyref", "eq": "anyref", "i31": "anyref", "struct": "anyref", "array": "anyref",
              "none": "anyref", "exn": "exnref", "noexn": "exnref"}


@dataclass(frozen=True)
class Num:
    """An i32/i64/f32/f64 value as raw bits (unsigned)."""
    type: str
    bits: int


@dataclass(frozen=True)
class V128:
    data: bytes


@dataclass(frozen=True)
class Ref:
    """A reference argument or exact result: ``kind`` is funcref/externref/anyref/exnref.

    ``host`` is None for null, else the integer N of ``ref.extern N`` (an externref)
    or ``ref.host N`` (an anyref wrapping host value N).
    """
    kind: str
    host: int | None


@dataclass(frozen=True)
class NanPattern:
    type: str
    which: str  # "canonical" or "arithmetic"


@dataclass(frozen=True)
class LanePattern:
    """A v128 result given lane by lane, some lanes possibly NaN patterns."""
    shape: str
    lanes: tuple


@dataclass(frozen=True)
class RefPattern:
    """Any non-null reference of a kind (func, extern, any, eq, i31, struct, array, exn), or "null": any null."""
    what: str


@dataclass(frozen=True)
class Either:
    options: tuple


def _int_value(text: str, line: int) -> int:
    t = text.replace("_", "")
    sign = -1 if t.startswith("-") else 1
    body = t[1:] if t[:1] in "+-" else t
    try:
        return sign * (int(body[2:], 16) if body.lower().startswith("0x") else int(body, 10))
    except ValueError:
        raise WastSyntaxError(f"bad integer {text!r}", line) from None


def int_bits(text: str, bits: int, line: int) -> int:
    """An integer literal wrapped to ``bits`` (refuses values no form of the literal allows)."""
    v = _int_value(text, line)
    if not -(1 << (bits - 1)) <= v < (1 << bits):
        raise WastSyntaxError(f"integer {text!r} out of range for {bits} bits", line)
    return v & ((1 << bits) - 1)


def _exact(body: str, line: int) -> Fraction:
    """The exact value of an unsigned decimal or hex float literal."""
    if body.lower().startswith("0x"):
        digits = body[2:].lower()
        mant, _, exp = digits.partition("p")
        whole, _, frac = mant.partition(".")
        if not (whole or frac) or any(c not in "0123456789abcdef" for c in whole + frac):
            raise WastSyntaxError(f"bad hex float {body!r}", line)
        try:
            value = Fraction(int(whole + frac or "0", 16), 16 ** len(frac))
            scale = int(exp) if exp else 0
        except ValueError:
            raise WastSyntaxError(f"bad hex float {body!r}", line) from None
        return value * (Fraction(2) ** _clamp(scale))
    mant, _, exp = body.lower().partition("e")
    try:
        return Fraction(mant) * (Fraction(10) ** _clamp(int(exp) if exp else 0))
    except (ValueError, ZeroDivisionError):
        raise WastSyntaxError(f"bad float {body!r}", line) from None


def _clamp(exponent: int) -> int:
    # Bounding the exponent keeps a literal such as 1e999999999 from building
    # a gigantic Fraction; only a mantissa of more than 19,000 digits could
    # bring a clamped literal back into f64 range.
    return max(-20000, min(20000, exponent))


def round_float(x: Fraction, ebits: int, fbits: int) -> int:
    """Round a non-negative rational to the nearest binary float's bits (ties to even; inf past the top)."""
    bias = (1 << (ebits - 1)) - 1
    if x == 0:
        return 0
    e = x.numerator.bit_length() - x.denominator.bit_length()
    if Fraction(2) ** e > x:
        e -= 1
    e = max(e, 1 - bias)  # subnormals share the smallest exponent
    scaled = x / (Fraction(2) ** (e - fbits))
    m = scaled.numerator // scaled.denominator
    rest = scaled - m
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and m & 1):
        m += 1
    if m >> (fbits + 1):
        m, e = m >> 1, e + 1
    if e > bias:
        return ((1 << ebits) - 1) << fbits
    biased = e + bias if m >> fbits else 0
    return (biased << fbits) | (m & ((1 << fbits) - 1))


def float_bits(text: str, ftype: str, line: int) -> int:
    """The bits of a float literal (nan, nan:0x.., inf, decimal or hex) in f32 or f64."""
    ebits, fbits = _FLOAT[ftype]
    t = text.replace("_", "")
    sign = 1 << (ebits + fbits) if t.startswith("-") else 0
    body = t[1:] if t[:1] in "+-" else t
    top = ((1 << ebits) - 1) << fbits
    if body == "inf":
        return sign | top
    if body == "nan":
        return sign | top | (1 << (fbits - 1))
    if body.startswith("nan:0x"):
        payload = _int_value(body[4:], line)
        if not 0 < payload < (1 << fbits):
            raise WastSyntaxError(f"NaN payload out of range in {text!r}", line)
        return sign | top | payload
    return sign | round_float(_exact(body, line), ebits, fbits)


def _lane(tok, ltype: str, line: int) -> int | NanPattern:
    if not isinstance(tok, Atom):
        raise WastSyntaxError("expected a lane value", line)
    if tok.text in ("nan:canonical", "nan:arithmetic"):
        if ltype not in _FLOAT:
            raise WastSyntaxError(f"{tok.text} in an integer lane", line)
        return NanPattern(ltype, tok.text[4:])
    if ltype in _FLOAT:
        return float_bits(tok.text, ltype, line)
    return int_bits(tok.text, INT_BITS[ltype], line)


def _v128(items: tuple, line: int, allow_patterns: bool) -> V128 | LanePattern:
    if len(items) < 2 or not isinstance(items[1], Atom) or items[1].text not in LANES:
        raise WastSyntaxError("v128.const needs a lane shape", line)
    shape = items[1].text
    ltype, count = LANES[shape]
    if len(items) != 2 + count:
        raise WastSyntaxError(f"v128.const {shape} needs {count} lanes, got {len(items) - 2}", line)
    lanes = tuple(_lane(t, ltype, line) for t in items[2:])
    if any(isinstance(v, NanPattern) for v in lanes):
        if not allow_patterns:
            raise WastSyntaxError("a NaN pattern is not an argument", line)
        return LanePattern(shape, lanes)
    width = {"i8": 1, "i16": 2, "i32": 4, "f32": 4, "i64": 8, "f64": 8}[ltype]
    return V128(b"".join(v.to_bytes(width, "little") for v in lanes))


def parse_value(node, *, pattern: bool = False):
    """An argument (``pattern=False``) or an expected result (``pattern=True``) from its form."""
    if not isinstance(node, List) or not node.items or not isinstance(node.items[0], Atom):
        raise WastSyntaxError("expected a value form such as (i32.const 1)", getattr(node, "line", 0))
    head, items, line = node.items[0].text, node.items, node.line
    if any(isinstance(x, String) for x in items[1:]):
        raise WastSyntaxError(f"a string inside ({head} ...)", line)
    if head in ("i32.const", "i64.const", "f32.const", "f64.const"):
        t = head[:3]
        if len(items) != 2 or not isinstance(items[1], Atom):
            raise WastSyntaxError(f"{head} needs one literal", line)
        text = items[1].text
        if t in _FLOAT:
            if text in ("nan:canonical", "nan:arithmetic"):
                if not pattern:
                    raise WastSyntaxError("a NaN pattern is not an argument", line)
                return NanPattern(t, text[4:])
            return Num(t, float_bits(text, t, line))
        return Num(t, int_bits(text, INT_BITS[t], line))
    if head == "v128.const":
        return _v128(items, line, pattern)
    if head == "ref.null" and len(items) == 1 and pattern:
        return RefPattern("null")  # (ref.null) as a result: any null reference
    if head == "ref.null":
        ht = items[1].text if len(items) == 2 and isinstance(items[1], Atom) else None
        if ht not in HEAP_KINDS:
            raise WastSyntaxError(f"ref.null needs a heap type, got {ht!r}", line)
        return Ref(HEAP_KINDS[ht], None)
    if head in ("ref.extern", "ref.host"):
        if len(items) == 1 and pattern:
            return RefPattern("extern" if head == "ref.extern" else "any")
        if len(items) != 2 or not isinstance(items[1], Atom):
            raise WastSyntaxError(f"{head} needs one integer", line)
        # ref.host N is the anyref wrapping host value N (any.convert_extern of ref.extern N).
        return Ref("externref" if head == "ref.extern" else "anyref", _int_value(items[1].text, line))
    if head in ("ref.func", "ref.i31", "ref.struct", "ref.array", "ref.any", "ref.eq", "ref.exn") and pattern:
        # (ref.func $f) or (ref.i31 N) narrow it further; only the kind is compared here.
        return RefPattern(head[4:])
    if head == "either" and pattern:
        return Either(tuple(parse_value(x, pattern=True) for x in items[1:]))
    raise WastSyntaxError(f"unsupported value form ({head} ...)" + ("" if pattern else " as an argument"), line)
