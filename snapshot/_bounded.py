"""Which exported functions provably finish within a bounded number of instructions (``bounded_exports``).

A function body without ``loop`` branches only forward (``br`` to a
``block``, ``if`` or ``try_table`` jumps to its end), so each instruction
in it runs at most once per call, and it has fewer instructions than
bytes.  One call of such a function therefore runs at most its body's
size in instructions, plus the bound of each function it calls, once per
call site.  ``bounded_exports`` gives the exports whose bound is at most
``max_instructions``: a node may run those on its event loop (there is no
way to move a running wasmtime call to another thread, so a call that
might run long must start on a worker).

A function has no bound when its body, or the body of a function it
calls, has:

* ``loop`` (the only backward branch);
* a call whose callee is not a constant (``call_indirect``, ``call_ref``
  and their tail-call forms), or a call of an imported function (a host
  function may block: WASI's ``poll_oneoff`` sleeps);
* a cycle of calls (recursion);
* an instruction whose time grows with an operand: ``memory.grow``, the
  bulk memory and table instructions, an atomic wait;
* an instruction the decoder does not know (GC's, anything newer), or a
  body that does not decode exactly.

Each instruction that remains takes constant time, so the bound holds in
time too: for 10,000 instructions, tens of microseconds.  Bodies longer
than the limit are never decoded, so a module of large functions costs
little to check.
"""

from __future__ import annotations

from . import _wasmbin as wb
from ._errors import InvalidModuleError
from ._leb128 import read_u
from ._tablewrites import UNBOUNDED, _scan_body

__all__ = ["DEFAULT_MAX_INSTRUCTIONS", "bounded_exports"]

#: The bound ``bounded_exports`` allows by default, in instructions.
DEFAULT_MAX_INSTRUCTIONS = 10_000


def _spans(payload: bytes) -> list[tuple[int, int]] | None:
    """Where each function body of a code section's ``payload`` starts and ends; None if they do not fit."""
    count, pos = read_u(payload, 0)
    spans = []
    for _ in range(count):
        size, pos = read_u(payload, pos)
        spans.append((pos, pos + size))
        pos += size
    return spans if pos == len(payload) else None


class _Bounds:
    """Bounds of a module's functions by index, found on demand; None for a function without one."""

    def __init__(self, info: wb.ModuleInfo, payload: bytes, spans: list[tuple[int, int]], limit: int) -> None:
        self._imported = info.imported_funcs
        self._payload = payload
        self._spans = spans
        self._limit = limit
        self._known: dict[int, int | None] = {}

    def _facts(self, func: int) -> tuple[int, list[int]] | None:
        """A defined function's body size and the functions it calls (once per call site); None if unbounded."""
        at = func - self._imported
        if not 0 <= at < len(self._spans):
            return None  # an import, or no such function
        pos, end = self._spans[at]
        if end - pos > self._limit:
            return None
        calls: list[int] = []
        if not _scan_body(self._payload, pos, end, set(), calls) or UNBOUNDED in calls:
            return None
        return end - pos, calls

    def bound(self, root: int) -> int | None:
        """How many instructions one call of function ``root`` runs at most; None if no bound within the limit."""
        known = self._known
        facts: dict[int, tuple[int, list[int]] | None] = {}
        on_path: set[int] = set()
        stack = [root]
        while stack:
            func = stack[-1]
            if func in known:
                stack.pop()
                continue
            if func not in facts:
                facts[func] = self._facts(func)
            found = facts[func]
            if found is None:
                known[func] = None
                stack.pop()
                continue
            size, calls = found
            if func not in on_path:  # first visit: find the callees' bounds first
                on_path.add(func)
                if any(callee in on_path for callee in calls):  # recursion
                    known[func] = None
                    on_path.discard(func)
                    stack.pop()
                    continue
                pending = [callee for callee in dict.fromkeys(calls) if callee not in known]
                if pending:
                    stack.extend(pending)
                    continue
            total: int | None = size
            for callee in calls:
                sub = known[callee]
                if sub is None or total is None or total + sub > self._limit:
                    total = None
                    break
                total += sub
            known[func] = total
            on_path.discard(func)
            stack.pop()
        return known[root]


def bounded_exports(wasm: bytes, max_instructions: int = DEFAULT_MAX_INSTRUCTIONS) -> dict[str, int]:
    """The exported functions of module ``wasm`` that finish within ``max_instructions``, each with its bound.

    Empty for bytes that do not parse.  The module must validate (as any
    module a host compiled does), so that its bodies decode as written.
    """
    try:
        info = wb.parse_module(wasm)
        code = info.section(wb.CODE)
        spans = None if code is None else _spans(code.payload)
        if code is None or spans is None:
            return {}
        bounds = _Bounds(info, code.payload, spans, max_instructions)
        found = {e.name: bounds.bound(e.index) for e in info.exports if e.kind == wb.KIND_FUNC}
    except (IndexError, InvalidModuleError):
        return {}
    return {name: bound for name, bound in found.items() if bound is not None}
