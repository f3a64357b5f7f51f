"""preparation_id names the code of prepare: it changes when that code does, and only then."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import snapshot
from snapshot._preparation import PREPARING

_PRINT_ID = "import snapshot, nodes._engine as e; print(snapshot.preparation_id(), e.fingerprint({}))"


def _ids_from_copy(tmp_path: Path, edit: str | None) -> list[str]:
    """The (preparation id, engine fingerprint) of a copy of the packages, with ``edit`` appended to a module."""
    root = Path(snapshot.__file__).parent.parent
    for package in ("snapshot", "nodes"):
        shutil.copytree(root / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    if edit is not None:
        with open(tmp_path / "snapshot" / f"{edit}.py", "a") as f:
            f.write("\n# a change\n")
    done = subprocess.run([sys.executable, "-c", _PRINT_ID], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, check=True)
    return done.stdout.split()


def test_the_id_is_stable_and_short():
    assert snapshot.preparation_id() == snapshot.preparation_id()
    assert len(snapshot.preparation_id()) == 16
    int(snapshot.preparation_id(), 16)


def test_a_copy_of_the_same_code_has_the_same_ids(tmp_path):
    from nodes._engine import fingerprint

    assert _ids_from_copy(tmp_path, None) == [snapshot.preparation_id(), fingerprint({})]


def test_changing_prepare_changes_the_id_and_the_cache_key_of_compiled_modules(tmp_path):
    from nodes._engine import fingerprint

    prepared_by, engine = _ids_from_copy(tmp_path, "_prepare")
    assert prepared_by != snapshot.preparation_id()
    assert engine != fingerprint({})


def test_changing_a_module_prepare_does_not_run_keeps_the_id(tmp_path):
    assert "_format" not in PREPARING
    assert _ids_from_copy(tmp_path, "_format")[0] == snapshot.preparation_id()
