"""Which version of ``prepare`` made a prepared module.

``prepare`` injects accessor exports and rewrites sections; what it
injects can change between versions of this package.  A node caches the
compiled prepared module (a cwasm) keyed by the original module's sha256
and its engine, so after an upgrade it would load a module prepared by the
old code: accessors named or typed differently from what this version's
capture and restore expect.  ``preparation_id()`` names the preparing code
(a digest of the source of every module ``prepare`` runs), so a key that
includes it changes whenever that code does, in a release or an editable
checkout alike.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util

#: The modules whose code decides the bytes ``prepare`` returns.
PREPARING = ("_prepare", "_segments", "_refaccess", "_refcheck", "_reftypes", "_wasmbin", "_leb128")


@functools.cache
def preparation_id() -> str:
    """16 hex digits naming the source of the modules in ``PREPARING``."""
    digest = hashlib.sha256()
    for name in PREPARING:
        spec = importlib.util.find_spec(f"{__package__}.{name}")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "get_source"):
            raise RuntimeError(f"cannot read the source of {__package__}.{name}")
        source = spec.loader.get_source(spec.name)
        if source is None:  # installed without sources: the compiled code names the version
            code = spec.loader.get_code(spec.name)  # type: ignore[attr-defined]
            source = repr(code.co_code) if code is not None else ""
        digest.update(name.encode() + b"\0" + source.encode() + b"\0")
    return digest.hexdigest()[:16]
