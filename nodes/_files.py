"""Durable file writes: a crash leaves the old file or the new one, and a failure names the file."""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: Path, data: bytes | bytearray, *, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old or the new file.

    The rename is durable once the directory is synced: here, or by the
    caller after a batch (``sync_dir=False``).
    Raises OSError whose ``filename`` is ``path`` (a failed ``write``, such
    as ENOSPC, names no file by itself).
    """
    with atomic_file(path, sync_dir=sync_dir) as f:
        f.write(data)


@contextmanager
def atomic_file(path: Path, *, sync_dir: bool = True) -> Iterator[BinaryIO]:
    """A new file to write; it replaces ``path`` when the block ends, as ``write_atomically`` does.

    If the block raises, ``path`` is left as it was and the new file is deleted.
    """
    tmp = scratch_path(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if sync_dir:
            fsync_dir(path.parent)
    except OSError as exc:
        if exc.filename is not None and exc.filename != os.fspath(tmp):
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), os.fspath(path)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def scratch_path(path: Path) -> Path:
    """A new name beside ``path`` (``.NAME.HEX.tmp``) that ``sweep_leftovers`` deletes when a node starts."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


#: A leftover of ``atomic_file`` untouched this long belongs to no live writer (a write takes milliseconds).
LEFTOVER_AGE_S = 60.0


def sweep_leftovers(root: Path, *, older_than_s: float = LEFTOVER_AGE_S) -> list[Path]:
    """Delete the new files ``atomic_file`` left under ``root`` when its process died mid-write; return them.

    They are named ``.NAME.HEX.tmp`` beside the file they would have
    replaced, which is intact.  A node killed while it hibernated a
    workload or wrote a checkpoint leaves one; the node sweeps them when it
    starts.  Only files untouched for ``older_than_s`` go, so a writer
    that shares the directory keeps its file.  Raises OSError only if
    ``root`` cannot be listed.
    """
    now = time.time()
    removed = []
    for path in root.rglob(".*.tmp"):
        if not _LEFTOVER.fullmatch(path.name):
            continue
        try:
            if now - path.lstat().st_mtime < older_than_s:
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


_LEFTOVER = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")


def fsync_dir(directory: Path) -> None:
    """Make the entries (creations, renames, removals) of ``directory`` durable.  Raises OSError."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(directory: Path) -> None:
    """Delete ``directory`` and everything in it, if it exists, and sync its parent.  Raises OSError."""
    if directory.exists():
        shutil.rmtree(directory)
        fsync_dir(directory.parent)
