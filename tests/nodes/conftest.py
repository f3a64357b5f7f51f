"""Fixtures for the nodes tests; the subprocess-node fixtures live in ``nodeproc.py`` for reuse."""

from nodeproc import cluster_tls, node_procs  # noqa: F401  (pytest fixtures)
