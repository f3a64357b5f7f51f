"""Crash points: a node dies at a named phase, at once, as SIGKILL would kill it.

Crash tests start a real node with ``MIGRATE_NODE_CRASH_AT=<phase>``; when
the node reaches that phase it ends its process with status 137 (no
cleanup, no checkpoint, no goodbye), so a test can check what a restart or
the rest of the cluster makes of the state left behind.  Without the
variable a crash point costs one environment lookup.

Phases of the node itself (``nodes._checkpoints``):

``checkpoint:write``
    SIGTERM's checkpoint has written the first workload's snapshot file
    into ``checkpoints.new/`` and nothing after it: no other snapshot, no
    manifest.  A restart finds an incomplete ``checkpoints.new/``.
``checkpoint:written``
    ``checkpoints.new/`` is complete and synced (manifest included); the
    swap has not begun.
``checkpoint:swapping``
    The previous ``checkpoints/`` was renamed to ``checkpoints.old/``;
    ``checkpoints.new/`` has not taken its place.  Reached only when a
    ``checkpoints/`` existed at shutdown.
``checkpoint:swapped``
    ``checkpoints.new/`` became ``checkpoints/``; ``checkpoints.old/`` (if
    any) is not removed yet.
``restore:before-retire``
    At start, every workload and its records were restored from the
    checkpoint; the checkpoint was not yet retired to
    ``checkpoints.restored/`` and no request was served.

Phases of a live migration (``migrate._service``): ``target:chunk``,
``target:before-commit``, ``target:after-commit``, ``source:frozen``,
``source:after-commit``.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

ENV = "MIGRATE_NODE_CRASH_AT"
#: Exit status of a crashed node: 128 + SIGKILL, what a shell reports for a kill -9.
CRASH_STATUS = 137
PHASES = frozenset({
    "checkpoint:write", "checkpoint:written", "checkpoint:swapping", "checkpoint:swapped",
    "restore:before-retire",
    "target:chunk", "target:before-commit", "target:after-commit", "source:frozen", "source:after-commit",
})


def crash_point(phase: str) -> None:
    """End the process at once if ``MIGRATE_NODE_CRASH_AT`` names ``phase``.

    Raises ValueError for a phase this module does not document (a typo
    would make a crash test pass without crashing).
    """
    if phase not in PHASES:
        raise ValueError(f"unknown crash phase {phase!r}")
    if os.environ.get(ENV) == phase:
        logger.critical("crashing at %s (%s)", phase, ENV)
        os._exit(CRASH_STATUS)
