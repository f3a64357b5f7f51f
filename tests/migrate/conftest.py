"""Fixtures for the migration tests: real migrate-node processes on loopback."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nodes"))

from nodeproc import cluster_tls, node_procs  # noqa: E402,F401  (pytest fixtures)
