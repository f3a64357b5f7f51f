"""The WASI sandbox a hosted workload runs in: what it may import, its argv, env, files and output.

A workload gets exactly what its deployer granted: its own args and env,
WASI clocks and random, stdout and stderr captured to capped files, no stdin,
and no filesystem unless a directory is preopened for it.  Nothing is
inherited from the node process (no ``inherit_env``, ``inherit_stdout``...).
Only functions of ``wasi_snapshot_preview1`` can be imported.  The WASI
functions that answer nondeterministic requests are ours
(``nodes._wasi_inputs``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import wasmtime

from ._host_errors import BadArguments, UnsupportedImports

__all__ = ["WASI_MODULE", "OutputSink", "check_imports", "wasi_config"]

logger = logging.getLogger(__name__)

WASI_MODULE = "wasi_snapshot_preview1"


def check_imports(module: wasmtime.Module) -> None:
    """Refuse a module that imports anything but WASI preview 1 functions.

    Raises ``UnsupportedImports`` listing every such import.
    """
    refused = []
    for imp in module.imports:
        if imp.module != WASI_MODULE or not isinstance(imp.type, wasmtime.FuncType):
            refused.append(f"{imp.module}::{imp.name} ({_kind(imp.type)})")
    if refused:
        raise UnsupportedImports(refused)


def _kind(ty: object) -> str:
    return {
        wasmtime.FuncType: "func",
        wasmtime.MemoryType: "memory",
        wasmtime.TableType: "table",
        wasmtime.GlobalType: "global",
    }.get(type(ty), type(ty).__name__)


class OutputSink:
    """Appends a guest's output stream to a file, keeping at most ``cap_bytes``.

    Used as a ``WasiConfig.stdout_custom`` callback.  It appends (a restored
    workload keeps the output of its earlier life, where ``stdout_file``
    would truncate), opens the file per write (a thousand idle workloads hold
    no descriptors), and drops what exceeds the cap, counting it in
    ``dropped_bytes``.  It never raises: wasmtime-py prints and swallows
    callback exceptions, and the guest should see its write succeed.
    While ``muted`` (a follower replaying calls its leader already ran and
    printed), writes succeed and go nowhere.
    """

    def __init__(self, path: Path, cap_bytes: int) -> None:
        self.path = path
        self.cap_bytes = cap_bytes
        self.dropped_bytes = 0
        self.muted = False
        try:
            self.written_bytes = path.stat().st_size
        except FileNotFoundError:
            self.written_bytes = 0
            path.touch()

    def __call__(self, data: bytes) -> None:
        if self.muted:
            return
        room = max(0, self.cap_bytes - self.written_bytes)
        keep = data[:room]
        self.dropped_bytes += len(data) - len(keep)
        if not keep:
            return
        try:
            with open(self.path, "ab") as f:
                f.write(keep)
            self.written_bytes += len(keep)
        except OSError as exc:  # a full disk must not crash the guest's write
            self.dropped_bytes += len(keep)
            logger.warning("dropping guest output: %s", exc, extra={"path": str(self.path)})


def wasi_config(
    *,
    argv: Sequence[str],
    env: Mapping[str, str],
    preopen: Mapping[str, Path] | None,
    stdout: OutputSink,
    stderr: OutputSink,
) -> wasmtime.WasiConfig:
    """Build the WASI configuration of one workload.

    ``preopen`` maps a guest path to a host directory the guest may read and
    write; without it the guest has no filesystem at all.
    Raises ``BadArguments`` for strings WASI cannot carry (NUL bytes, ``=``
    in an env name) or a preopen that is not an existing directory.
    """
    for arg in argv:
        _check_c_string("argument", arg)
    for name, value in env.items():
        _check_c_string("env name", name)
        _check_c_string("env value", value)
        if "=" in name or not name:
            raise BadArguments(f"env name {name!r} is empty or contains '='")
    config = wasmtime.WasiConfig()
    config.argv = list(argv)
    config.env = [(name, value) for name, value in env.items()]
    config.stdout_custom = stdout
    config.stderr_custom = stderr
    for guest_path, host_dir in (preopen or {}).items():
        _check_c_string("preopen guest path", guest_path)
        host_dir = Path(host_dir)
        if not host_dir.is_dir():
            raise BadArguments(f"preopen {guest_path!r}: {host_dir} is not a directory")
        config.preopen_dir(os.fspath(host_dir.resolve()), guest_path)
    return config


def _check_c_string(what: str, value: object) -> None:
    if not isinstance(value, str):
        raise BadArguments(f"{what} must be a str, got {type(value).__name__}")
    if "\0" in value:
        raise BadArguments(f"{what} {value!r} contains a NUL byte")
