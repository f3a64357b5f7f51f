"""LEB128 integers, names and vectors: the encodings the WebAssembly binary format is built from."""

from __future__ import annotations

from ._errors import InvalidModuleError


def _read(data: bytes, pos: int, bits: int) -> tuple[int, int, int, int]:
    """Read the bytes of one LEB128 integer at ``pos``: (raw value, bits read, its last byte, new pos).

    Raises InvalidModuleError on truncation or more bytes than ``bits`` allows.
    """
    result = shift = 0
    for _ in range((bits + 6) // 7):
        if pos >= len(data):
            raise InvalidModuleError("unexpected end of module inside an integer")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, shift, byte, pos
    raise InvalidModuleError("integer representation too long")


def read_u(data: bytes, pos: int, bits: int = 32) -> tuple[int, int]:
    """Decode an unsigned LEB128 integer at ``pos``; return (value, new_pos).

    Raises InvalidModuleError on truncation or an over-long encoding.
    """
    result, _, _, pos = _read(data, pos, bits)
    if result >> bits:
        raise InvalidModuleError("integer too large")
    return result, pos


def read_s(data: bytes, pos: int, bits: int) -> tuple[int, int]:
    """Decode a signed LEB128 integer at ``pos``; return (value, new_pos)."""
    result, shift, last, pos = _read(data, pos, bits)
    if last & 0x40:
        result -= 1 << shift
    return result, pos


def write_u(value: int) -> bytes:
    """Encode a non-negative integer as minimal unsigned LEB128."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def write_s(value: int) -> bytes:
    """Encode an integer as minimal signed LEB128."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def write_s64_padded(value: int) -> bytes:
    """Encode an i64 as signed LEB128 padded to exactly 10 bytes.

    A fixed width lets us patch the value in place after hashing the module
    with it zeroed (see ``_prepare.module_digest``).
    """
    value &= (1 << 64) - 1
    out = bytearray()
    for i in range(9):
        out.append(((value >> (7 * i)) & 0x7F) | 0x80)
    top = value >> 63  # bits 63..69 must all equal the sign bit
    out.append(0x7F if top else 0x00)
    return bytes(out)


def write_name(name: str) -> bytes:
    raw = name.encode("utf-8")
    return write_u(len(raw)) + raw


def read_name(data: bytes, pos: int) -> tuple[str, int]:
    length, pos = read_u(data, pos)
    end = pos + length
    if end > len(data):
        raise InvalidModuleError("unexpected end of module inside a name")
    try:
        return bytes(data[pos:end]).decode("utf-8"), end
    except UnicodeDecodeError as exc:
        raise InvalidModuleError("a name is not valid UTF-8") from exc


def write_vec(items: list[bytes]) -> bytes:
    return write_u(len(items)) + b"".join(items)
