"""The packages type-check: mypy with pyproject's [tool.mypy] settings reports no error.

Also: each package ships its ``py.typed`` marker (PEP 561), declared as
package data so that installed copies carry their type hints.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from mypy import api

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("snapshot", "nodes", "migrate")


def test_mypy_reports_no_errors() -> None:
    stdout, stderr, status = api.run(["--config-file", str(REPO / "pyproject.toml"), "--cache-dir", os.devnull,
                                      *(str(REPO / p) for p in PACKAGES)])
    assert status == 0, f"mypy found errors:\n{stdout}{stderr}"


def test_each_package_ships_py_typed() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_data = config["tool"]["setuptools"]["package-data"]
    for package in PACKAGES:
        assert (REPO / package / "py.typed").is_file(), package
        assert "py.typed" in package_data.get(package, []), package
