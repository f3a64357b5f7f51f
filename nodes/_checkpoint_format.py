"""The checkpoint format: a directory of workload snapshots and the manifest that names them.

A checkpoint is a directory: one snapshot file per workload
(``<id>.<generation>.snap``) and ``manifest.msgpack``, written last, which
lists each workload with what ``Host.restore`` needs and the records other
packages keep about it (``extensions``: the migration coordinator's epoch
and call ledger).  A checkpoint is complete when its manifest is in place
and every snapshot file it names exists.  With a data key
(``nodes._at_rest``) every file is encrypted: the snapshots by the
snapshot format, the manifest sealed whole, and each manifest entry names
its snapshot's 16-byte header (``sealed``), so a snapshot file cannot be
swapped for another.  ``write`` and ``restore_all``
serve ``Host.checkpoint_all`` and ``Host.restore_all``; the node's saved
state (``nodes._checkpoints``) swaps such directories in whole.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgpack

import snapshot

from . import _at_rest as at_rest
from . import _host_errors as he
from ._crash import crash_point
from ._errors import DamagedState, UndecryptableState
from ._files import fsync_dir, write_atomically
from ._workload import WorkloadInfo, check_name

logger = logging.getLogger(__name__)

MANIFEST = "manifest.msgpack"
FORMAT = "wasm-migrate/host-checkpoint"
VERSION = 1
#: The snapshot format's header: magic, version, flags and the file's random 8-byte nonce salt.
SNAPSHOT_HEADER_BYTES = 16
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class BulkReport:
    """Outcome of ``checkpoint_all`` or ``restore_all``: ids done, and
    ``(id, reason)`` for each workload that failed."""

    done: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()


class Checkpointed(Protocol):
    """What a checkpoint is written from and restored into: a ``nodes.Host``."""

    def workloads(self) -> list[WorkloadInfo]: ...

    def checkpoint_entry(self, workload_id: str) -> tuple[snapshot.Snapshot, dict[str, Any]]: ...

    def restore(self, module_sha256: str, snap: snapshot.Snapshot, *, workload_id: str, app: str,
                args: Sequence[str], env: Mapping[str, str] | None, preopen: Mapping[str, Path] | None,
                memory_limit_bytes: int | None, calls: int, monotonic_ns: int | None,
                idle_s: float | None) -> WorkloadInfo: ...

    def hibernated_entry(self, workload_id: str) -> dict[str, Any] | None: ...

    def adopt(self, module_sha256: str, **settings: Any) -> WorkloadInfo: ...


def snapshot_file(workload_id: str, generation: int) -> str:
    # Named by generation, so rewriting a checkpoint in place never
    # overwrites a file the current manifest still names.
    return f"{workload_id}.{generation}.snap"


def one_line(text: object) -> str:
    return " ".join(str(text).split())


# --- the manifest ----------------------------------------------------------

def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _str_map(value: Any) -> bool:
    return type(value) is dict and all(type(k) is str and type(v) is str for k, v in value.items())


#: What each field of a manifest entry must hold (``id`` and ``module_sha256``
#: are checked as names); a manifest is read from disk, so nothing is assumed.
_ENTRY_FIELDS = {
    "app": lambda v: type(v) is str,
    "calls": _count,
    "args": lambda v: type(v) is list and all(type(a) is str for a in v),
    "env": _str_map,
    "preopen": _str_map,
    "memory_limit_bytes": lambda v: v is None or _count(v),
    "monotonic_ns": lambda v: v is None or _count(v),
    "extensions": lambda v: v is None or type(v) is dict,
    "idle_s": lambda v: type(v) in (int, float) and v >= 0,
    "hibernated": lambda v: type(v) is bytes and len(v) == SNAPSHOT_HEADER_BYTES,
}
_OPTIONAL_FIELDS = ("monotonic_ns", "extensions", "idle_s", "hibernated")  # absent from manifests written before they existed


def read_manifest(directory: Path, *, key: bytes | None = None) -> dict[str, Any]:
    """Read a checkpoint manifest, sealed with ``key`` if given; an absent one reads as empty.

    Raises DamagedState if it cannot be read, does not parse, or is not a
    version 1 manifest; UndecryptableState if it fails authentication, or
    is sealed and no key is given.
    """
    path = directory / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise DamagedState(path, f"cannot read checkpoint manifest {path}: {exc.strerror}") from exc
    if key is not None:
        raw = at_rest.unseal(key, raw, b"manifest", path)
    elif at_rest.is_sealed(raw):
        raise UndecryptableState(path, f"checkpoint manifest {path} is encrypted; it needs the node's data key")
    try:
        manifest = msgpack.unpackb(raw)
    except (ValueError, msgpack.UnpackException) as exc:
        raise DamagedState(path, f"checkpoint manifest {path} is corrupt: {one_line(exc)}") from exc
    if (not isinstance(manifest, dict) or manifest.get("format") != FORMAT
            or manifest.get("version") != VERSION or not isinstance(manifest.get("generation"), int)
            or not isinstance(manifest.get("workloads"), list)
            or not all(isinstance(e, dict) for e in manifest["workloads"])):
        raise DamagedState(path, f"{path} is not a version {VERSION} checkpoint manifest")
    for entry in manifest["workloads"]:
        try:  # both become file names
            check_name("workload id", entry.get("id"))
            if not isinstance(entry.get("module_sha256"), str) or not _SHA256.match(entry["module_sha256"]):
                raise he.BadArguments(f"module_sha256 {entry.get('module_sha256')!r} is not a sha256")
            for name, fits in _ENTRY_FIELDS.items():
                if (name in entry or name not in _OPTIONAL_FIELDS) and not fits(entry.get(name)):
                    raise he.BadArguments(f"the entry of workload {entry['id']} lacks or mistypes {name!r}")
        except he.BadArguments as exc:
            raise DamagedState(path, f"checkpoint manifest {path} is damaged: {exc}") from exc
    return manifest


def write(host: Checkpointed, directory: Path, *, key: bytes | None = None,
          records: Mapping[str, Mapping[str, Any]] | None = None, leave_out: Collection[str] = (),
          node_records: Mapping[str, Any] | None = None, deadline: float | None = None) -> BulkReport:
    """Write every workload's snapshot and then the manifest into ``directory``.

    Snapshots are fsynced and the directory synced before the manifest names
    them, so a manifest in place means a complete checkpoint; stale
    snapshots of an earlier generation in ``directory`` are removed after.
    ``records`` (workload -> extension -> record) and ``node_records`` go
    into the manifest; ``leave_out`` names workloads not to save.  A
    workload that cannot be captured is left out and reported in
    ``failed`` (and in the manifest).
    Raises OSError naming the file that could not be written, TimeoutError
    when ``deadline`` (``time.monotonic()``) passes, DamagedState when
    ``directory`` holds an unreadable manifest.
    """
    directory.mkdir(parents=True, exist_ok=True)
    generation = read_manifest(directory, key=key).get("generation", 0) + 1
    records = records or {}
    ids = [info.workload_id for info in host.workloads() if info.workload_id not in leave_out]
    entries: list[dict[str, Any]] = []
    done: list[str] = []
    failed: list[tuple[str, str]] = []
    for workload_id in ids:
        _check_deadline(deadline, len(done), len(ids))
        try:
            entry = host.hibernated_entry(workload_id)  # its file, written at hibernation, stays where it is
            if entry is None:
                snap, entry = host.checkpoint_entry(workload_id)
                data = snap.to_bytes(key=key)  # compress outside the workload's lock: it runs on
        except he.UnknownWorkload:
            continue  # removed meanwhile
        except (he.HostError, snapshot.SnapshotError) as exc:
            logger.error("checkpoint failed: %s", exc, extra={"workload": workload_id})
            failed.append((workload_id, one_line(exc)))
            continue
        if "hibernated" not in entry:
            write_atomically(directory / snapshot_file(workload_id, generation), data, sync_dir=False)
            if key is not None:
                entry["sealed"] = data[:SNAPSHOT_HEADER_BYTES]  # its random salt: binds the file to this entry
        if records.get(workload_id):
            entry["extensions"] = dict(records[workload_id])
        entries.append(entry)
        done.append(workload_id)
        if len(done) == 1:
            crash_point("checkpoint:write")
    _check_deadline(deadline, len(done), len(ids))
    fsync_dir(directory)  # every snapshot is in place before the manifest names it
    manifest = {"format": FORMAT, "version": VERSION, "generation": generation, "workloads": entries,
                "failed": [list(f) for f in failed], "extensions": dict(node_records or {})}
    packed = msgpack.packb(manifest)
    write_atomically(directory / MANIFEST, at_rest.seal(key, packed, b"manifest") if key is not None else packed)
    keep = {snapshot_file(e["id"], generation) for e in entries if "hibernated" not in e}
    for stale in directory.glob("*.snap"):
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    logger.info("wrote checkpoint of %d workloads (%d failed)", len(done), len(failed),
                extra={"directory": os.fspath(directory)})
    return BulkReport(tuple(done), tuple(failed))


def _check_deadline(deadline: float | None, done: int, total: int) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError(f"the shutdown grace period ran out with {done} of {total} workloads written")


def restore_workload(host: Checkpointed, directory: Path, generation: int, entry: Mapping[str, Any], *,
                     key: bytes | None = None) -> None:
    """Restore one manifest entry's workload into ``host``.

    Raises OSError (its snapshot file), snapshot.SnapshotError (an
    AuthenticationError when the file is not the one the entry names), a
    HostError, or KeyError/TypeError for a malformed entry.
    """
    workload_id = entry["id"]
    if "hibernated" in entry:  # still hibernated: its file is in its workload directory (nodes._hibernate)
        host.adopt(entry["module_sha256"], workload_id=workload_id, app=entry["app"], args=entry["args"],
                   env=entry["env"], preopen=entry["preopen"], memory_limit_bytes=entry["memory_limit_bytes"],
                   calls=entry["calls"], monotonic_ns=entry["monotonic_ns"], header=entry["hibernated"],
                   idle_s=entry.get("idle_s"))
        return
    data = (directory / snapshot_file(workload_id, generation)).read_bytes()
    if key is not None and data[:SNAPSHOT_HEADER_BYTES] != entry.get("sealed"):
        raise snapshot.AuthenticationError(f"the snapshot file of {workload_id} is not the one its manifest "
                                           "entry names (swapped or replaced)")
    snap = snapshot.Snapshot.from_bytes(data, key=key)
    host.restore(entry["module_sha256"], snap, workload_id=workload_id, app=entry["app"], args=entry["args"],
                 env=entry["env"], preopen={g: Path(h) for g, h in entry["preopen"].items()},
                 memory_limit_bytes=entry["memory_limit_bytes"], calls=entry["calls"],
                 monotonic_ns=entry.get("monotonic_ns"),  # absent before replay existed
                 idle_s=entry.get("idle_s"))


def restore_all(host: Checkpointed, directory: Path, *, key: bytes | None = None) -> BulkReport:
    """Restore what ``write`` saved in ``directory``, skipping (and reporting) workloads that fail.

    Raises SnapshotFailed if the manifest itself is unreadable.
    """
    try:
        manifest = read_manifest(directory, key=key)
    except DamagedState as exc:
        raise he.SnapshotFailed("*", str(exc)) from exc
    done, failed = [], []
    for entry in manifest.get("workloads", []):
        try:
            restore_workload(host, directory, manifest["generation"], entry, key=key)
        except (he.HostError, snapshot.SnapshotError, OSError, KeyError, TypeError) as exc:
            logger.error("restore failed: %s", exc, extra={"workload": entry["id"]})
            failed.append((entry["id"], f"{type(exc).__name__}: {exc}"))
            continue
        done.append(entry["id"])
    return BulkReport(tuple(done), tuple(failed))
