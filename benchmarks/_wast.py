"""WebAssembly script (.wast) commands, parsed sans-IO: ``parse_script(text, file)`` -> commands.

Each top-level form becomes one typed command.  Modules keep what the
engine needs: the text of a text module (for ``wasmtime.wat2wasm``), the
decoded bytes of ``(module binary ...)``, or the joined strings of
``(module quote ...)``.  Forms this parser cannot express become ``Skip``
with a reason, so a runner can count them; malformed forms raise
``WastSyntaxError`` with the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._wast_sexpr import Atom, List, String, WastSyntaxError, parse, render
from ._wast_values import parse_value

__all__ = ["Action", "Assert", "AssertReturn", "Instance", "Module", "Register", "Skip",
           "WastSyntaxError", "parse_script"]


@dataclass(frozen=True)
class Module:
    """A module: ``form`` is "text", "binary" or "quote"; ``source`` is str (text/quote) or bytes."""
    line: int
    name: str | None
    form: str
    source: str | bytes
    definition: bool = False  # (module definition ...): compiled, not instantiated


@dataclass(frozen=True)
class Instance:
    """``(module instance $i $m)``: instantiate a module definition."""
    line: int
    name: str | None
    module: str | None


@dataclass(frozen=True)
class Register:
    line: int
    as_name: str
    module: str | None


@dataclass(frozen=True)
class Action:
    """``invoke`` (call an export with ``args``) or ``get`` (read an exported global)."""
    line: int
    kind: str
    module: str | None
    field: str
    args: tuple = ()


@dataclass(frozen=True)
class AssertReturn:
    line: int
    action: Action
    expected: tuple


@dataclass(frozen=True)
class Assert:
    """Every other assertion: ``kind`` is trap, exhaustion, exception, invalid, malformed,
    unlinkable or uninstantiable; ``target`` an Action or a Module; ``message`` the spec's text."""
    line: int
    kind: str
    target: Action | Module
    message: str


@dataclass(frozen=True)
class Skip:
    line: int
    head: str
    reason: str


def _name(items: tuple, i: int) -> tuple[str | None, int]:
    if i < len(items) and isinstance(items[i], Atom) and items[i].text.startswith("$"):
        return items[i].text, i + 1
    return None, i


def _text(node: String) -> str:
    try:
        return node.data.decode("utf-8")
    except UnicodeDecodeError:
        raise WastSyntaxError("name is not valid UTF-8", node.line) from None


def _module(node: List, source_text: str) -> Module | Instance:
    items, line = node.items, node.line
    i, definition = 1, False
    if i < len(items) and isinstance(items[i], Atom) and items[i].text in ("definition", "instance"):
        if items[i].text == "instance":
            inst, j = _name(items, 2)
            mod, j = _name(items, j)
            if j != len(items):
                raise WastSyntaxError("(module instance $i $m) takes two names", line)
            return Instance(line, inst, mod)
        definition, i = True, 2
    name, i = _name(items, i)
    if i < len(items) and isinstance(items[i], Atom) and items[i].text in ("binary", "quote"):
        form, strings = items[i].text, items[i + 1:]
        if not all(isinstance(s, String) for s in strings):
            raise WastSyntaxError(f"(module {form} ...) takes only strings", line)
        if form == "binary":
            return Module(line, name, "binary", b"".join(s.data for s in strings), definition)
        body = b" ".join(s.data for s in strings).decode("utf-8", errors="replace")
        return Module(line, name, "quote", f"(module {body})", definition)
    start = items[i].start if i < len(items) else node.end - 1
    return Module(line, name, "text", f"(module {_ascii_strings(node, source_text, start)})", definition)


def _strings(node):
    for x in node.items:
        if isinstance(x, String):
            yield x
        elif isinstance(x, List):
            yield from _strings(x)


def _ascii_strings(node: List, text: str, start: int) -> str:
    """The module's body from ``start``, its strings written with escapes if the body is not ASCII.

    wasmtime's text parser refuses "likely-confusing" Unicode characters such
    as U+202E even inside strings (names.wast); escaped, they mean the same bytes.
    """
    body = text[start:node.end - 1]
    if body.isascii():
        return body
    out, at = [], start
    for s in _strings(node):
        if s.start >= start:
            out += [text[at:s.start], render(s)]
            at = s.end
    return "".join(out) + text[at:node.end - 1]


def _action(node, line: int) -> Action:
    if not isinstance(node, List) or node.head() not in ("invoke", "get"):
        raise WastSyntaxError("expected (invoke ...) or (get ...)", getattr(node, "line", line))
    items = node.items
    module, i = _name(items, 1)
    if i >= len(items) or not isinstance(items[i], String):
        raise WastSyntaxError(f"({node.head()} ...) needs an export name string", node.line)
    args = tuple(parse_value(a) for a in items[i + 1:])
    if node.head() == "get" and args:
        raise WastSyntaxError("(get ...) takes no arguments", node.line)
    return Action(node.line, node.head(), module, _text(items[i]), args)


_MODULE_ASSERTS = {"assert_invalid": "invalid", "assert_malformed": "malformed",
                   "assert_unlinkable": "unlinkable", "assert_uninstantiable": "uninstantiable"}
_ACTION_ASSERTS = {"assert_exhaustion": "exhaustion", "assert_exception": "exception"}


def _message(items: tuple, i: int, line: int) -> str:
    if i < len(items) and isinstance(items[i], String):
        return items[i].data.decode("utf-8", errors="replace")
    raise WastSyntaxError("assertion needs its message string", line)


def _command(node: List, text: str):
    head, items, line = node.head(), node.items, node.line
    if head == "module":
        return _module(node, text)
    if head == "register":
        if len(items) < 2 or not isinstance(items[1], String):
            raise WastSyntaxError('(register "name" $module?) needs a name string', line)
        module, i = _name(items, 2)
        if i != len(items):
            raise WastSyntaxError("(register ...) has extra items", line)
        return Register(line, _text(items[1]), module)
    if head in ("invoke", "get"):
        return _action(node, line)
    if head == "assert_return":
        if len(items) < 2:
            raise WastSyntaxError("assert_return needs an action", line)
        return AssertReturn(line, _action(items[1], line), tuple(parse_value(x, pattern=True) for x in items[2:]))
    if head in ("assert_trap", "assert_exhaustion", "assert_exception", *_MODULE_ASSERTS):
        if len(items) < 2 or not isinstance(items[1], List):
            raise WastSyntaxError(f"{head} needs a form", line)
        target = items[1]
        if target.head() == "module" and head in ("assert_trap", *_MODULE_ASSERTS):
            module = _module(target, text)
            if isinstance(module, Instance):
                return Skip(line, head, "assertion on (module instance ...)")
            kind = "uninstantiable" if head == "assert_trap" else _MODULE_ASSERTS[head]
            return Assert(line, kind, module, _message(items, 2, line))
        kind = "trap" if head == "assert_trap" else _ACTION_ASSERTS.get(head)
        if kind is None:
            raise WastSyntaxError(f"{head} needs a (module ...)", line)
        message = _message(items, 2, line) if head != "assert_exception" else ""
        return Assert(line, kind, _action(target, line), message)
    if head is None:
        raise WastSyntaxError("a form must start with a keyword", line)
    if head.startswith("@"):
        return Skip(line, head, "top-level annotation")
    return Skip(line, head, f"({head} ...) is not part of the core script language this runner runs")


_FIELDS = frozenset(["func", "memory", "table", "global", "type", "import", "export", "start", "elem",
                     "data", "tag", "rec"])


def _unannotated(node: List) -> List:
    """The form without the annotations ``(@name ...)`` among its own items."""
    kept = tuple(x for x in node.items if not (isinstance(x, List) and (x.head() or "").startswith("@")))
    return node if len(kept) == len(node.items) else List(kept, node.line, node.start, node.end)


def parse_script(text: str, file: str = "") -> list:
    """The commands of a script, in order; WastSyntaxError (with file and line) on malformed text.

    A script made of bare module fields (``(func) (memory 0)``) is one inline module.
    """
    try:
        nodes = [_unannotated(n) for n in parse(text, file)]
        if nodes and all(n.head() in _FIELDS for n in nodes):
            return [Module(nodes[0].line, None, "text", f"(module {text[nodes[0].start:nodes[-1].end]})")]
        return [_command(node, text) for node in nodes]
    except WastSyntaxError as exc:
        raise WastSyntaxError(exc.message, exc.line, file) from None
