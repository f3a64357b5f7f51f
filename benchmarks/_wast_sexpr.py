"""S-expressions of WebAssembly script (.wast) text, sans-IO: a string in, a tree out.

``parse(text)`` returns the top-level forms as ``List`` nodes whose items are
``Atom`` (a keyword, number or $id), ``String`` (the decoded bytes of a
quoted string) or nested ``List`` nodes.  Every node carries its line and
its [start, end) offsets in ``text``, so a module's original text can be
handed to ``wasmtime.wat2wasm`` unchanged.  Line comments (``;;``) and
nested block comments (``(; ... ;)``) are skipped.  Anything that does not
lex or balance raises ``WastSyntaxError`` naming the line.
"""

from __future__ import annotations

from dataclasses import dataclass


class WastSyntaxError(ValueError):
    """The script text is malformed; ``line`` is 1-based, ``file`` may be empty."""

    def __init__(self, message: str, line: int, file: str = "") -> None:
        super().__init__(f"{file or '<wast>'}:{line}: {message}")
        self.message, self.line, self.file = message, line, file


@dataclass(frozen=True)
class Atom:
    text: str
    line: int
    start: int
    end: int


@dataclass(frozen=True)
class String:
    data: bytes
    line: int
    start: int
    end: int


@dataclass(frozen=True)
class List:
    items: tuple
    line: int
    start: int
    end: int

    def head(self) -> str | None:
        """The keyword this form starts with, if it starts with an atom."""
        return self.items[0].text if self.items and isinstance(self.items[0], Atom) else None


_ESCAPES = {"t": 9, "n": 10, "r": 13, '"': 34, "'": 39, "\\": 92}
_HEX = "0123456789abcdefABCDEF"
_DELIMS = frozenset(' \t\n\r()"')


def decode_string(body: str, line: int) -> bytes:
    """Decode the text between a string's quotes (escapes as the text format defines them)."""
    out = bytearray()
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c != "\\":
            if ord(c) < 0x20 or c == "\x7f":
                raise WastSyntaxError(f"control character {ord(c):#x} in a string", line)
            out += c.encode("utf-8")
            i += 1
            continue
        if i + 1 >= n:
            raise WastSyntaxError("string ends inside an escape", line)
        e = body[i + 1]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        elif e == "u":
            close = body.find("}", i)
            digits = body[i + 3:close].replace("_", "") if body.startswith("{", i + 2) and close > 0 else ""
            if not digits or any(d not in _HEX for d in digits):
                raise WastSyntaxError("malformed \\u{...} escape", line)
            code = int(digits, 16)
            if code > 0x10FFFF or 0xD800 <= code < 0xE000:
                raise WastSyntaxError(f"\\u escape {code:#x} is not a Unicode scalar value", line)
            out += chr(code).encode("utf-8")
            i = close + 1
        elif e in _HEX and i + 2 < n and body[i + 2] in _HEX:
            out.append(int(body[i + 1:i + 3], 16))
            i += 3
        else:
            raise WastSyntaxError(f"unknown escape \\{e}", line)
    return bytes(out)


def _skip_block_comment(text: str, i: int, line: int) -> tuple[int, int]:
    start_line, nest, i, n = line, 1, i + 2, len(text)
    while nest:
        if i >= n:
            raise WastSyntaxError("unterminated block comment", start_line)
        if text.startswith("(;", i):
            nest, i = nest + 1, i + 2
        elif text.startswith(";)", i):
            nest, i = nest - 1, i + 2
        else:
            line += text[i] == "\n"
            i += 1
    return i, line


def parse(text: str, file: str = "") -> list[List]:
    """Split ``text`` into its top-level forms; raise WastSyntaxError on bad text."""
    try:
        return _parse(text)
    except WastSyntaxError as exc:
        raise WastSyntaxError(exc.message, exc.line, file) from None


def _parse(text: str) -> list[List]:
    top: list[List] = []
    stack: list[tuple[list, int, int]] = []  # (items, line, start) of each open list
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line, i = line + 1, i + 1
        elif c in " \t\r":
            i += 1
        elif text.startswith(";;", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("(;", i):
            i, line = _skip_block_comment(text, i, line)
        elif c == "(":
            stack.append(([], line, i))
            i += 1
        elif c == ")":
            if not stack:
                raise WastSyntaxError("unbalanced ')'", line)
            items, l0, s0 = stack.pop()
            node = List(tuple(items), l0, s0, i + 1)
            (stack[-1][0] if stack else top).append(node)
            i += 1
        elif c == '"':
            j, l0 = i + 1, line
            while j < n and text[j] != '"':
                if text[j] == "\n":
                    raise WastSyntaxError("newline inside a string", line)
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise WastSyntaxError("unterminated string", l0)
            node = String(decode_string(text[i + 1:j], l0), l0, i, j + 1)
            if not stack:
                raise WastSyntaxError("a string outside any form", l0)
            stack[-1][0].append(node)
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in _DELIMS and not text.startswith(";;", j) and not text.startswith("(;", j):
                j += 1
            if not stack:
                raise WastSyntaxError(f"{text[i:j]!r} outside any form", line)
            stack[-1][0].append(Atom(text[i:j], line, i, j))
            i = j
    if stack:
        raise WastSyntaxError("unclosed '('", stack[-1][1])
    return top


def render(node) -> str:
    """Text that parses back to ``node`` (strings are written with \\hh escapes where needed)."""
    if isinstance(node, Atom):
        return node.text
    if isinstance(node, String):
        return '"' + "".join(chr(b) if 0x20 <= b < 0x7f and b not in (0x22, 0x5c) else f"\\{b:02x}"
                             for b in node.data) + '"'
    return "(" + " ".join(render(x) for x in node.items) + ")"
