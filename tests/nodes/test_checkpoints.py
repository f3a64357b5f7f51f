"""The shutdown checkpoint on disk: written whole, swapped in, recovered after a crash at any step.

Crash states are built from real checkpoints the way the save leaves them
when a node dies between two of its steps (``nodes._checkpoints``); the
process-level crash tests kill real nodes at the same steps.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import msgpack
import pytest

import workloads
from nodes import CheckpointFailed, DamagedState, Host, Limits
from nodes import _checkpoints as checkpoints
from nodes._checkpoint_format import FORMAT
from nodes._modules import module_file

FAST = Limits(call_timeout_s=0.5)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes (None for directories) under ``root``, by relative path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = None
        for name in filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = Path(path).read_bytes()
    return out


@pytest.fixture
def data_dir(tmp_path):
    """A data directory whose checkpoints/ holds counters a (at 7) and b (at 100), with records."""
    data = tmp_path / "data"
    with Host(data, limits=FAST) as host:
        sha = host.add_module(workloads.load("counter"))
        host.deploy(sha, workload_id="a")
        host.deploy(sha, workload_id="b")
        host.call("a", "incr", [7])
        host.call("b", "incr", [100])
        report = checkpoints.save(host, data, records={"a": {"test": {"epoch": 3}}},
                                  node_records={"test": {"moved": {}}})
    assert sorted(report.done) == ["a", "b"]
    return data


def assert_damage_at(data_dir: Path, path: Path) -> str:
    """``find`` refuses the data directory, naming ``path``; return the message."""
    with pytest.raises(DamagedState) as info:
        checkpoints.find(data_dir)
    assert info.value.path == str(path)
    return str(info.value)


def restored_counters(data: Path, saved: checkpoints.Saved) -> dict[str, int]:
    with Host(data, limits=FAST) as host:
        checkpoints.restore(host, saved)
        return {w.workload_id: host.call(w.workload_id, "get", []) for w in host.workloads()}


def test_a_save_swaps_in_a_complete_checkpoint_and_leaves_nothing_else(data_dir):
    names = sorted(p.name for p in data_dir.iterdir())
    assert "checkpoints" in names and "checkpoints.new" not in names and "checkpoints.old" not in names
    manifest = msgpack.unpackb((data_dir / "checkpoints" / "manifest.msgpack").read_bytes())
    by_id = {e["id"]: e for e in manifest["workloads"]}
    assert by_id["a"]["extensions"] == {"test": {"epoch": 3}} and "extensions" not in by_id["b"]
    assert manifest["extensions"] == {"test": {"moved": {}}}
    saved = checkpoints.find(data_dir)
    assert saved.checkpoint == data_dir / "checkpoints" and saved.leftovers == ()
    assert restored_counters(data_dir, saved) == {"a": 7, "b": 100}


def test_a_second_save_replaces_the_first_only_once_complete(data_dir):
    with Host(data_dir, limits=FAST) as host:
        saved = checkpoints.find(data_dir)
        checkpoints.restore(host, saved)
        host.call("a", "incr", [1])
        checkpoints.save(host, data_dir)
    saved = checkpoints.find(data_dir)
    assert restored_counters(data_dir, saved) == {"a": 8, "b": 100}
    assert not (data_dir / "checkpoints.old").exists()


def test_restore_hands_back_the_records_saved_with_each_workload(data_dir):
    with Host(data_dir, limits=FAST) as host:
        restored = checkpoints.restore(host, checkpoints.find(data_dir))
    assert sorted(restored.workloads) == ["a", "b"]
    assert restored.records == {"a": {"test": {"epoch": 3}}, "b": {}}
    assert restored.node_records == {"test": {"moved": {}}}


# --- a crash at each step of a save ------------------------------------------

def test_crash_while_writing_with_nothing_complete_beside_refuses_naming_the_new_directory(data_dir):
    current = data_dir / "checkpoints"
    current.rename(data_dir / "checkpoints.new")
    (data_dir / "checkpoints.new" / "manifest.msgpack").unlink()  # died before the manifest
    assert "incomplete" in assert_damage_at(data_dir, data_dir / "checkpoints.new")


def test_crash_while_writing_beside_a_complete_checkpoint_keeps_the_complete_one(data_dir):
    new = data_dir / "checkpoints.new"
    shutil.copytree(data_dir / "checkpoints", new)
    (new / "manifest.msgpack").unlink()
    saved = checkpoints.find(data_dir)
    assert saved.checkpoint == data_dir / "checkpoints" and saved.leftovers == (new,)


def test_crash_after_writing_takes_the_complete_new_checkpoint_over_the_older_one(data_dir):
    new = data_dir / "checkpoints.new"
    shutil.copytree(data_dir / "checkpoints", new)
    # the older checkpoint says 0 for both: it must not win
    with Host(tmp := data_dir.parent / "older", limits=FAST) as host:
        sha = host.add_module(workloads.load("counter"))
        host.deploy(sha, workload_id="a")
        host.deploy(sha, workload_id="b")
        checkpoints.write(host, tmp / "ckpt")
    shutil.rmtree(data_dir / "checkpoints")
    shutil.copytree(tmp / "ckpt", data_dir / "checkpoints")
    saved = checkpoints.find(data_dir)
    assert saved.checkpoint == new and saved.leftovers == (data_dir / "checkpoints",)
    assert restored_counters(data_dir, saved) == {"a": 7, "b": 100}


def test_crash_in_the_middle_of_the_swap_takes_the_new_checkpoint(data_dir):
    shutil.copytree(data_dir / "checkpoints", data_dir / "checkpoints.new")
    (data_dir / "checkpoints").rename(data_dir / "checkpoints.old")
    saved = checkpoints.find(data_dir)
    assert saved.checkpoint == data_dir / "checkpoints.new"
    assert saved.leftovers == (data_dir / "checkpoints.old",)


def test_crash_before_the_old_checkpoint_is_removed_takes_the_current_one(data_dir):
    shutil.copytree(data_dir / "checkpoints", data_dir / "checkpoints.old")
    (data_dir / "checkpoints.old" / "manifest.msgpack").unlink()  # half removed
    saved = checkpoints.find(data_dir)
    assert saved.checkpoint == data_dir / "checkpoints"
    assert saved.leftovers == (data_dir / "checkpoints.old",)


def test_only_an_old_checkpoint_is_used(data_dir):
    (data_dir / "checkpoints").rename(data_dir / "checkpoints.old")
    saved = checkpoints.find(data_dir)
    assert saved.checkpoint == data_dir / "checkpoints.old"
    assert restored_counters(data_dir, saved) == {"a": 7, "b": 100}


# --- damage ----------------------------------------------------------------------

def test_a_missing_manifest_beside_snapshots_is_damage(data_dir):
    manifest = data_dir / "checkpoints" / "manifest.msgpack"
    manifest.unlink()
    assert_damage_at(data_dir, manifest)


def test_an_empty_checkpoint_directory_is_no_checkpoint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    saved = checkpoints.find(tmp_path)
    assert saved.checkpoint is None and saved.leftovers == (tmp_path / "checkpoints",)
    assert checkpoints.find(tmp_path / "absent") == checkpoints.Saved(tmp_path / "absent")


@pytest.mark.parametrize("garbage", [b"\xc1", msgpack.packb({"format": "other"}),
                                     msgpack.packb({"format": FORMAT, "version": 1, "generation": 1,
                                                    "workloads": [{"id": "../../etc", "module_sha256": "0"}]})])
def test_an_unusable_manifest_is_damage(data_dir, garbage):
    manifest = data_dir / "checkpoints" / "manifest.msgpack"
    manifest.write_bytes(garbage)
    assert_damage_at(data_dir, manifest)


def test_a_missing_snapshot_is_damage(data_dir):
    snap = data_dir / "checkpoints" / "b.1.snap"
    snap.unlink()
    assert_damage_at(data_dir, snap)


def test_a_missing_module_is_damage(data_dir):
    manifest = msgpack.unpackb((data_dir / "checkpoints" / "manifest.msgpack").read_bytes())
    module = module_file(data_dir, manifest["workloads"][0]["module_sha256"])
    shutil.rmtree(module.parent)
    assert_damage_at(data_dir, module)


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_a_damaged_snapshot_fails_the_restore_naming_it_and_changes_nothing(data_dir, damage):
    snap = data_dir / "checkpoints" / "b.1.snap"
    data = snap.read_bytes()
    if damage == "truncated":
        snap.write_bytes(data[: len(data) // 2])
    else:
        middle = len(data) // 2
        snap.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    before = tree(data_dir)
    saved = checkpoints.find(data_dir)
    with Host(data_dir, limits=FAST) as host, pytest.raises(DamagedState) as info:
        checkpoints.restore(host, saved)
    assert info.value.path == str(snap)
    assert "\n" not in str(info.value)
    assert tree(data_dir) == before


# --- after the restore -------------------------------------------------------------

def test_retire_removes_leftovers_and_keeps_the_restored_checkpoint_aside(data_dir):
    shutil.copytree(data_dir / "checkpoints", data_dir / "checkpoints.old")
    saved = checkpoints.find(data_dir)
    restored_counters(data_dir, saved)
    kept = tree(data_dir / "checkpoints")
    checkpoints.retire(saved)
    assert not (data_dir / "checkpoints").exists() and not (data_dir / "checkpoints.old").exists()
    assert tree(data_dir / "checkpoints.restored") == kept
    assert checkpoints.find(data_dir).checkpoint is None  # never restored twice


def test_discard_sets_every_unrestored_checkpoint_aside_without_deleting(data_dir):
    shutil.copytree(data_dir / "checkpoints", data_dir / "checkpoints.new")
    (data_dir / "checkpoints" / "manifest.msgpack").unlink()
    before = {name: tree(data_dir / name) for name in ("checkpoints", "checkpoints.new")}
    moved = checkpoints.discard(data_dir, DamagedState(data_dir / "checkpoints", "damaged"))
    assert [source.name for source, _ in moved] == ["checkpoints.new", "checkpoints"]
    for source, target in moved:
        assert target.name.startswith(source.name + ".discarded-")
        assert tree(target) == before[source.name]
    assert checkpoints.find(data_dir).checkpoint is None


# --- a failed save ------------------------------------------------------------------

def test_a_save_that_runs_out_of_time_keeps_the_previous_checkpoint(data_dir):
    before = tree(data_dir / "checkpoints")
    with Host(data_dir, limits=FAST) as host:
        checkpoints.restore(host, checkpoints.find(data_dir))
        host.call("a", "incr", [1])
        with pytest.raises(CheckpointFailed) as info:
            checkpoints.save(host, data_dir, deadline=time.monotonic() - 1)
    assert "grace period" in str(info.value) and str(data_dir / "checkpoints") in str(info.value)
    assert not (data_dir / "checkpoints.new").exists()
    assert tree(data_dir / "checkpoints") == before
