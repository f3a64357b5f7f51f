"""Prebuilt example workloads: small C programs compiled to wasm32-wasi reactors.

Sources are in ``workloads/src/NAME.c``; ``workloads/build.sh`` rebuilds
``workloads/NAME.wasm``, which are committed so nothing here needs a compiler.
Each module exports ``memory`` and ``_initialize`` (call it once after
instantiating) plus the functions its source file documents.

>>> import workloads
>>> workloads.names()[:2]
['clockrand', 'counter']
>>> wasm = workloads.load("counter")
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["UnknownWorkloadError", "load", "names", "path"]

_DIR = Path(__file__).resolve().parent


class UnknownWorkloadError(KeyError):
    """Raised for a workload name that has no ``.wasm`` in this package."""

    def __str__(self) -> str:
        # KeyError would show the message with quotes around it.
        return str(self.args[0]) if self.args else ""


def names() -> list[str]:
    """Return the names of the available workloads, sorted."""
    return sorted(p.stem for p in _DIR.glob("*.wasm"))


def path(name: str) -> Path:
    """Return the path of workload ``name``'s ``.wasm`` file.

    Raises UnknownWorkloadError (a KeyError) if there is no such workload.
    """
    known = names()
    if name not in known:
        raise UnknownWorkloadError(
            f"unknown workload {name!r}; available: {', '.join(known)}"
        )
    return _DIR / f"{name}.wasm"


def load(name: str) -> bytes:
    """Return the bytes of workload ``name``'s ``.wasm`` module."""
    return path(name).read_bytes()
