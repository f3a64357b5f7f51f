"""Pull the top-level ``(module ...)`` forms out of spec-test ``.wast`` files."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def testsuite_dir() -> Path | None:
    """The WebAssembly spec test suite, from $WASM_TESTSUITE or the workplace's shared/ folder."""
    for candidate in (os.environ.get("WASM_TESTSUITE"), ROOT.parent / "shared" / "wasm-testsuite",
                      Path("/work/shared/wasm-testsuite")):
        if candidate and Path(candidate, "address.wast").exists():
            return Path(candidate)
    return None


def top_level_forms(text: str) -> list[str]:
    """Split wast text into its top-level s-expressions, skipping comments and strings."""
    forms, depth, start, i, n = [], 0, None, 0, len(text)
    while i < n:
        c = text[i]
        if c == ";" and text.startswith(";;", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
            continue
        if c == "(" and text.startswith("(;", i):
            nest, i = 1, i + 2
            while i < n and nest:
                if text.startswith("(;", i):
                    nest, i = nest + 1, i + 2
                elif text.startswith(";)", i):
                    nest, i = nest - 1, i + 2
                else:
                    i += 1
            continue
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "(":
            if depth == 0:
                start = i
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                forms.append(text[start:i + 1])
        i += 1
    return forms


def modules(path: Path) -> list[str]:
    """The text of each plain top-level module in one .wast file."""
    out = []
    for form in top_level_forms(path.read_text(encoding="utf-8", errors="replace")):
        head = form[1:].lstrip()
        if head.startswith("module") and not any(k in form[:40] for k in (" binary", " quote", " definition", " instance")):
            out.append(form)
    return out
