"""Crash points: a node dies, or pauses, at a named phase of its work.

Crash tests start a real node with ``MIGRATE_NODE_CRASH_AT=<phase>``; when
the node reaches that phase it ends its process with status 137 (no
cleanup, no checkpoint, no goodbye), so a test can check what a restart or
the rest of the cluster makes of the state left behind.

With ``MIGRATE_NODE_PAUSE_AT=<phase>`` the node instead logs ``paused at
<phase>`` the first time it gets there and holds that step until the next
SIGTERM or SIGINT reaches it (``release``), or for at most
``MIGRATE_NODE_PAUSE_S`` seconds (default 30).  The rest of the node keeps
serving meanwhile.  A test waits for the log line, then SIGKILLs the node at
that phase, or SIGTERMs it and watches it shut down cleanly from there.

Without the variables a crash point costs two environment lookups, and
``crash_point_async`` does not yield to the scheduler.

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

Plugins name their own phases (``Plugin.crash_phases``: the migration
coordinator's are listed in ``migrate._codes``); ``allow`` adds them for
the node this process serves.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable

import trio

from ._errors import ConfigError

logger = logging.getLogger(__name__)

ENV = "MIGRATE_NODE_CRASH_AT"
PAUSE_ENV = "MIGRATE_NODE_PAUSE_AT"
PAUSE_S_ENV = "MIGRATE_NODE_PAUSE_S"
DEFAULT_PAUSE_S = 30.0
#: Exit status of a crashed node: 128 + SIGKILL, what a shell reports for a kill -9.
CRASH_STATUS = 137
#: The node's own phases (documented above).
NODE_PHASES = frozenset({
    "checkpoint:write", "checkpoint:written", "checkpoint:swapping", "checkpoint:swapped",
    "restore:before-retire",
})

_phases = set(NODE_PHASES)  # and those of the plugins this process's node serves with (``allow``)

_paused = False  # a process pauses once: its first arrival at the phase
_release: threading.Event | None = None


def allow(phases: Iterable[str]) -> None:
    """Let crash points name ``phases`` too: the phases of a plugin this process's node serves with."""
    _phases.update(phases)


def check_environment() -> None:
    """Refuse crash-test settings that name no phase (of the node or an allowed plugin), or a bad pause length.

    Raises ConfigError.
    """
    for var in (ENV, PAUSE_ENV):
        value = os.environ.get(var)
        if value and value not in _phases:
            raise ConfigError(f"{var}={value!r} names no phase; phases: {', '.join(sorted(_phases))}")
    _pause_s()


def _pause_s() -> float:
    raw = os.environ.get(PAUSE_S_ENV)
    if not raw:
        return DEFAULT_PAUSE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise ConfigError(f"{PAUSE_S_ENV} must be a number of seconds in (0, 3600], got {raw!r}")
    return value


def _crash_or_arm_pause(phase: str) -> threading.Event | None:
    """End the process if it should crash at ``phase``; return the pause to hold, if any."""
    global _paused, _release
    if phase not in _phases:
        raise ValueError(f"unknown crash phase {phase!r}")
    if os.environ.get(ENV) == phase:
        logger.critical("crashing at %s (%s)", phase, ENV)
        os._exit(CRASH_STATUS)
    if _paused or os.environ.get(PAUSE_ENV) != phase:
        return None
    _paused, _release = True, threading.Event()
    logger.warning("paused at %s", phase, extra={"phase": phase, "pause_s": _pause_s()})
    return _release


def release() -> None:
    """End the pause in progress, if any (a SIGTERM or SIGINT arrived)."""
    if _release is not None:
        _release.set()


def crash_point(phase: str) -> None:
    """End the process at once if ``MIGRATE_NODE_CRASH_AT`` names ``phase``; pause the thread if asked.

    For code in worker threads.  Raises ValueError for a phase neither this
    module nor an allowed plugin names (a typo would make a crash test pass
    without crashing).
    """
    pause = _crash_or_arm_pause(phase)
    if pause is not None:
        pause.wait(_pause_s())
        logger.warning("resumed at %s", phase)


async def crash_point_async(phase: str) -> None:
    """``crash_point`` for the event loop: a pause holds only the calling task.

    Raises ValueError for an undocumented phase.
    """
    pause = _crash_or_arm_pause(phase)
    if pause is not None:
        await trio.to_thread.run_sync(pause.wait, _pause_s(), abandon_on_cancel=True)
        logger.warning("resumed at %s", phase)
