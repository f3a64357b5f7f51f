"""A third-party-built workload: QuickJS-NG's WASI reactor, from PyPI.

The PyPI distribution ``qjs-wasi-reactor.wasm`` (data only, about 0.5 MB
download) installs ``qjs-wasi-reactor/qjs-wasi-reactor.wasm`` (1.5 MB) into
site-packages: QuickJS-NG's JavaScript engine built upstream as a wasm32-wasi
reactor. Versions 0.15.x export the QuickJS C API (``JS_Eval``, ``JS_Call``,
``JS_FreeValue`` ...) beside ``qjs_init``/``qjs_get_context`` and ``malloc``/
``free``; from 0.16 on only ``qjs_init*``/``qjs_destroy`` remain, which leaves
no way to run code after start-up, so only 0.15.x is accepted here.

Its state (the JS heap, the runtime and context) lives in linear memory, so a
memory copy carries a running JS session to a fresh instance: after restoring,
wrap the new instance in :class:`QuickJS` and call :meth:`QuickJS.eval`
without :meth:`QuickJS.start`.

Install as a test dependency with ``pip install "qjs-wasi-reactor.wasm>=0.15,<0.16"``.
"""

from __future__ import annotations

import importlib.metadata
import struct
from pathlib import Path

import wasmtime

__all__ = ["DIST", "REQUIREMENT", "JSError", "QuickJS", "find_thirdparty"]

DIST = "qjs-wasi-reactor.wasm"
REQUIREMENT = "qjs-wasi-reactor.wasm>=0.15,<0.16"
_FILE_IN_DIST = "qjs-wasi-reactor/qjs-wasi-reactor.wasm"


def find_thirdparty() -> Path | None:
    """Return the path of the installed QuickJS reactor module, or None.

    None means the distribution is not installed, or is a version outside
    ``REQUIREMENT`` (whose module lacks the exports :class:`QuickJS` needs).
    """
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    major_minor = tuple(int(p) for p in dist.version.split(".")[:2] if p.isdigit())
    if major_minor != (0, 15):
        return None
    path = Path(str(dist.locate_file(_FILE_IN_DIST)))
    return path if path.is_file() else None


class JSError(Exception):
    """A JavaScript exception thrown by code run with :meth:`QuickJS.eval`."""


class QuickJS:
    """Evaluates JavaScript in an instance of the QuickJS reactor module.

    The instance must have been created with WASI defined in its linker.
    Call :meth:`start` once on a fresh instance; an instance whose memory was
    restored from a started one needs no start.
    """

    def __init__(self, store: wasmtime.Store, instance: wasmtime.Instance):
        self._store = store
        self._x = instance.exports(store)
        self._memory: wasmtime.Memory = self._x["memory"]

    def _call(self, name: str, *args):
        return self._x[name](self._store, *args)

    def start(self) -> None:
        """Run ``_initialize`` and create the JS runtime and context."""
        self._call("_initialize")
        if self._call("qjs_init") != 0:
            raise RuntimeError("qjs_init failed")

    def _cstring(self, data: bytes) -> int:
        ptr = self._call("malloc", len(data) + 1)
        if not ptr:
            raise MemoryError("guest malloc failed")
        self._memory.write(self._store, data + b"\0", ptr)
        return ptr

    def _to_str(self, ctx: int, value: int) -> str | None:
        lenp = self._call("malloc", 4)
        try:
            s = self._call("JS_ToCStringLen2", ctx, lenp, value, 0)
            if not s:
                return None
            (n,) = struct.unpack("<I", self._memory.read(self._store, lenp, lenp + 4))
            text = self._memory.read(self._store, s, s + n).decode()
            self._call("JS_FreeCString", ctx, s)
            return text
        finally:
            self._call("free", lenp)

    def eval(self, code: str) -> str:
        """Evaluate ``code`` as a global script and return ``String(result)``.

        Raises JSError if the script throws.
        """
        ctx = self._call("qjs_get_context")
        src = code.encode()
        srcp = self._cstring(src)
        namep = self._cstring(b"<wasm-migrate>")
        try:
            value = self._call("JS_Eval", ctx, srcp, len(src), namep, 0)
        finally:
            self._call("free", srcp)
            self._call("free", namep)
        if self._call("JS_HasException", ctx):
            self._call("JS_FreeValue", ctx, value)
            exc = self._call("JS_GetException", ctx)
            message = self._to_str(ctx, exc)
            self._call("JS_FreeValue", ctx, exc)
            raise JSError(message)
        try:
            text = self._to_str(ctx, value)
        finally:
            self._call("JS_FreeValue", ctx, value)
        if text is None:
            raise JSError("result cannot be converted to a string")
        return text
