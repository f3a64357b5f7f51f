"""A node's saved state: SIGTERM's checkpoint, swapped in whole, checked before a start uses it.

A checkpoint is a directory of workload snapshots and a manifest, written
last (``nodes._checkpoint_format``); it is complete when its manifest is in
place and every snapshot file it names exists.

In the data directory::

    checkpoints/            the last complete checkpoint, not restored yet
    checkpoints.new/        a checkpoint being written
    checkpoints.old/        the previous checkpoints/, while checkpoints.new/ takes its place
    checkpoints.restored/   the checkpoint the node last started from (kept, never restored again)
    checkpoints*.discarded-<UTC time>/   state set aside by --discard-state

Saving (``save``): every snapshot in ``checkpoints.new/`` is written and
fsynced, the directory synced, the manifest written and fsynced; then
``checkpoints/`` (if there is one) becomes ``checkpoints.old/``,
``checkpoints.new/`` becomes ``checkpoints/``, the data directory is
synced and ``checkpoints.old/`` removed.  A failure while writing removes
``checkpoints.new/`` and touches nothing else.

Starting (``find`` and ``restore``, read-only until the end): the newest
complete directory of ``checkpoints.new/``, ``checkpoints/`` and
``checkpoints.old/`` is the checkpoint, which recovers a crash at any step
of a save.  The start is refused with ``DamagedState`` naming the file
when the newest state is damaged: an incomplete ``checkpoints.new/`` with
nothing complete beside it (the node died while saving), a manifest that
is missing beside snapshot files or does not parse, a snapshot or module
that is missing, a snapshot that does not decode, a directory that cannot
be read.  Only once every workload is restored (``retire``) are the other
directories removed and the checkpoint renamed ``checkpoints.restored/``:
from then on the running workloads are the truth, and a crash must not
bring back their older state (calls answered since would be lost).

Every checkpoint is encrypted with the node's data key (``key``,
``nodes._at_rest``); one that fails authentication is refused with
``UndecryptableState``, a DamagedState, like any other damage.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import snapshot

from . import _host_errors as he
from ._checkpoint_format import (
    MANIFEST,
    BulkReport,
    Checkpointed,
    one_line,
    read_manifest,
    restore_workload,
    snapshot_file,
    write,
)
from ._crash import crash_point
from ._errors import CheckpointFailed, DamagedState, UndecryptableState
from ._files import fsync_dir, remove_tree
from ._modules import module_file

__all__ = ["BulkReport", "Restored", "Saved", "discard", "failure", "find", "restore", "retire", "save", "write"]

logger = logging.getLogger(__name__)

CURRENT = "checkpoints"
NEW = CURRENT + ".new"
OLD = CURRENT + ".old"
RESTORED = CURRENT + ".restored"


def _os_error(exc: OSError) -> str:
    """``cannot write PATH: No space left on device (ENOSPC)``."""
    name = errno.errorcode.get(exc.errno or 0)
    reason = f"{exc.strerror or exc}" + (f" ({name})" if name else "")
    return f"{exc.filename}: {reason}" if exc.filename else reason


# --- starting ----------------------------------------------------------------

@dataclass(frozen=True)
class Saved:
    """What a start found in the data directory: the checkpoint to restore, and leftovers."""

    data_dir: Path
    checkpoint: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    leftovers: tuple[Path, ...] = ()  # superseded or empty directories, removed by ``retire``


@dataclass(frozen=True)
class Restored:
    """The workloads ``restore`` brought back, and the records saved with them."""

    workloads: tuple[str, ...] = ()
    records: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # workload -> extension -> record
    node_records: Mapping[str, Any] = field(default_factory=dict)          # extension -> record
    manifest_path: Path | None = None


def _inspect(path: Path, key: bytes | None) -> tuple[str, dict[str, Any]]:
    """Classify a checkpoint directory: ("complete", manifest), ("partial", {}) or ("empty", {}).

    "partial" means files but no manifest.  Raises DamagedState when it
    cannot be read, its manifest is damaged or names a missing snapshot.
    """
    if not path.is_dir():
        raise DamagedState(path, f"{path} is not a directory")
    try:
        names = set(os.listdir(path))
    except OSError as exc:
        raise DamagedState(path, f"cannot read checkpoint directory {path}: {exc.strerror}") from exc
    if MANIFEST not in names:
        return ("partial" if names else "empty"), {}
    manifest = read_manifest(path, key=key)
    for entry in manifest["workloads"]:
        if "hibernated" in entry:
            continue  # its file is checked when it is adopted (nodes._hibernate)
        name = snapshot_file(entry["id"], manifest["generation"])
        if name not in names:
            raise DamagedState(path / name, f"snapshot {path / name} named by {path / MANIFEST} is missing")
    return "complete", manifest


def find(data_dir: Path, *, key: bytes | None = None) -> Saved:
    """Find the checkpoint a start should restore, reading only; ``key`` is the data key it is sealed with.

    Raises DamagedState (naming the file) when the data directory or the
    newest saved state is damaged or incomplete, or a module the
    checkpoint needs is missing; UndecryptableState when a manifest fails
    authentication.
    """
    try:
        names = set(os.listdir(data_dir))
    except FileNotFoundError:
        return Saved(data_dir)
    except OSError as exc:
        raise DamagedState(data_dir, f"cannot read the data directory {data_dir}: {exc.strerror}") from exc
    checkpoint, manifest, leftovers = None, {}, []
    interrupted = None  # an unfinished checkpoints.new/
    for name in (NEW, CURRENT, OLD):  # newest first
        if name not in names:
            continue
        path = data_dir / name
        if checkpoint is not None:
            leftovers.append(path)  # older than the checkpoint found
            continue
        status, found = _inspect(path, key)
        if status == "complete":
            checkpoint, manifest = path, found
        elif name == NEW:
            interrupted = path
            leftovers.append(path)
        elif status == "partial":
            raise DamagedState(path / MANIFEST, f"checkpoint manifest {path / MANIFEST} is missing, "
                                                f"but {path} holds saved files")
        else:
            leftovers.append(path)
    if checkpoint is None and interrupted is not None:
        raise DamagedState(interrupted, f"{interrupted} is an incomplete checkpoint (no {MANIFEST}: the node "
                                        "stopped while saving it), and there is no complete one")
    for entry in manifest.get("workloads", []):
        assert checkpoint is not None  # the manifest is empty unless a checkpoint was found
        module = module_file(data_dir, str(entry.get("module_sha256")))
        if not module.is_file():
            raise DamagedState(module, f"module {module} of workload {entry['id']} (checkpoint "
                                       f"{checkpoint / MANIFEST}) is missing")
    return Saved(data_dir, checkpoint, manifest, tuple(leftovers))


def restore(host: Checkpointed, saved: Saved, *, key: bytes | None = None) -> Restored:
    """Restore every workload of ``saved.checkpoint`` into ``host``, changing nothing on disk.

    Raises DamagedState naming the file at the first workload that cannot
    be restored (UndecryptableState when it fails authentication); the
    workloads restored before it stay in ``host`` (close it).
    """
    if saved.checkpoint is None:
        return Restored()
    directory, manifest = saved.checkpoint, saved.manifest
    generation = manifest["generation"]
    for item in manifest.get("failed") or []:
        if isinstance(item, list) and len(item) == 2:
            logger.warning("workload was not saved at the last shutdown: %s", item[1], extra={"workload": item[0]})
    records = {}
    for entry in manifest["workloads"]:
        workload_id = entry["id"]
        path = directory / snapshot_file(workload_id, generation)
        try:
            restore_workload(host, directory, generation, entry, key=key)
        except he.UnknownModule as exc:
            module = module_file(saved.data_dir, str(entry.get("module_sha256")))
            raise DamagedState(module, f"cannot restore workload {workload_id}: module {module}: "
                                       f"{one_line(exc)}") from exc
        except OSError as exc:
            raise DamagedState(path, f"cannot read snapshot {path}: {exc.strerror}") from exc
        except (KeyError, TypeError, AttributeError) as exc:
            raise DamagedState(directory / MANIFEST, f"checkpoint manifest {directory / MANIFEST} is damaged: "
                                                     f"the entry of workload {workload_id} lacks or mistypes "
                                                     f"{one_line(exc)}") from exc
        except snapshot.AuthenticationError as exc:
            raise UndecryptableState(path, f"cannot restore workload {workload_id}: {path} failed "
                                           f"authentication: {one_line(exc)}") from exc
        except (he.HostError, snapshot.SnapshotError) as exc:
            raise DamagedState(path, f"cannot restore workload {workload_id} from {path}: "
                                     f"{type(exc).__name__}: {one_line(exc)}") from exc
        extensions = entry.get("extensions") or {}
        if not isinstance(extensions, dict):
            raise DamagedState(directory / MANIFEST, f"{directory / MANIFEST}: the records of workload "
                                                     f"{workload_id} are malformed")
        records[workload_id] = extensions
    node_records = manifest.get("extensions") or {}
    if not isinstance(node_records, dict):
        raise DamagedState(directory / MANIFEST, f"{directory / MANIFEST}: the node's records are malformed")
    logger.info("restored %d workloads", len(records), extra={"directory": os.fspath(directory)})
    return Restored(tuple(records), records, node_records, directory / MANIFEST)


def retire(saved: Saved) -> None:
    """Retire a restored checkpoint: remove the leftovers, rename it ``checkpoints.restored``.

    Call it once the restored workloads are about to be served.
    Raises DamagedState when the data directory cannot be changed.
    """
    try:
        if saved.checkpoint is not None:
            crash_point("restore:before-retire")
        for path in saved.leftovers:
            logger.info("removing a superseded or unfinished checkpoint", extra={"directory": os.fspath(path)})
            remove_tree(path)
        if saved.checkpoint is not None:
            retired = saved.data_dir / RESTORED
            remove_tree(retired)
            saved.checkpoint.rename(retired)
            fsync_dir(saved.data_dir)
    except OSError as exc:
        raise DamagedState(exc.filename or saved.data_dir,
                           f"cannot retire the restored checkpoint: {_os_error(exc)}") from exc


def discard(data_dir: Path, damage: DamagedState) -> tuple[tuple[Path, Path], ...]:
    """Set every unrestored checkpoint directory aside (``--discard-state``); return (from, to) pairs.

    Nothing is deleted.  Raises DamagedState when a directory cannot be
    renamed.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = []
    for name in (NEW, CURRENT, OLD):
        source = data_dir / name
        if not os.path.lexists(source):
            continue
        target = data_dir / f"{name}.discarded-{stamp}"
        suffix = 1
        while os.path.lexists(target):
            target = data_dir / f"{name}.discarded-{stamp}-{suffix}"
            suffix += 1
        try:
            source.rename(target)
        except OSError as exc:
            raise DamagedState(source, f"{damage}; --discard-state cannot set {source} aside: "
                                       f"{exc.strerror}") from exc
        moved.append((source, target))
        logger.warning("discarded saved state: moved %s to %s", source, target,
                       extra={"reason": str(damage), "directory": os.fspath(target)})
    if moved:
        fsync_dir(data_dir)
    return tuple(moved)


# --- saving -----------------------------------------------------------------

def save(host: Checkpointed, data_dir: Path, *, records: Mapping[str, Mapping[str, Any]] | None = None,
         leave_out: Collection[str] = (), node_records: Mapping[str, Any] | None = None,
         deadline: float | None = None, key: bytes | None = None) -> BulkReport:
    """Checkpoint every workload into ``checkpoints.new/`` and swap it in as ``checkpoints/``.

    Arguments are as for ``write``; ``key`` is the data key to seal with.  Raises CheckpointFailed saying what
    failed and where; the previous checkpoint is unchanged then (a
    failure after the new one is complete leaves both, and the next start
    takes the new one).
    """
    new = data_dir / NEW
    try:
        remove_tree(new)
        new.mkdir()
        report = write(host, new, records=records, leave_out=leave_out, node_records=node_records,
                       deadline=deadline, key=key)
    except (OSError, DamagedState) as exc:
        shutil.rmtree(new, ignore_errors=True)  # incomplete: it frees the space it took
        what = str(exc) if isinstance(exc, (TimeoutError, DamagedState)) else f"cannot write {_os_error(exc)}"
        raise failure(data_dir, what, removed=new) from exc
    crash_point("checkpoint:written")
    try:
        _swap_in(data_dir)
    except OSError as exc:
        raise CheckpointFailed(f"shutdown checkpoint: {new} is complete but could not replace {data_dir / CURRENT}: "
                               f"{_os_error(exc)}; the next start takes it") from exc
    return report


def failure(data_dir: Path, what: str, *, removed: Path | None = None) -> CheckpointFailed:
    """A CheckpointFailed saying ``what`` failed and which checkpoint the next start will find."""
    current, restored = data_dir / CURRENT, data_dir / RESTORED
    if current.exists():
        kept = f"the previous checkpoint {current} is unchanged"
    elif restored.exists():
        kept = (f"no new checkpoint was saved: {restored}, which this node started from, is unchanged, "
                "and the workloads' changes since then are lost")
    else:
        kept = "no checkpoint was saved: the workloads' state is lost"
    removed_text = f"; removed the partial {removed}" if removed is not None else ""
    return CheckpointFailed(f"shutdown checkpoint failed: {one_line(what)}; {kept}{removed_text}")


def _swap_in(data_dir: Path) -> None:
    current, new, old = data_dir / CURRENT, data_dir / NEW, data_dir / OLD
    if current.exists():
        remove_tree(old)  # a leftover of a swap that completed
        current.rename(old)
        fsync_dir(data_dir)
        crash_point("checkpoint:swapping")
    new.rename(current)
    fsync_dir(data_dir)
    crash_point("checkpoint:swapped")
    remove_tree(old)
