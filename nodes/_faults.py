"""Crash testing: make a node die, or pause, at a named phase of its work.

A node started with ``MIGRATE_NODE_CRASH_AT=<phase>`` dies at once, as
SIGKILL would kill it (exit status 137, no cleanup, nothing flushed), the
first time it reaches ``<phase>``.  With ``MIGRATE_NODE_PAUSE_AT=<phase>``
it logs ``paused at <phase>`` and holds that step the first time it gets
there, until the next SIGTERM or SIGINT (``release``) or for at most
``MIGRATE_NODE_PAUSE_S`` seconds (default 30), whichever comes first; the
rest of the node keeps serving meanwhile.  So a test waits for the log line
and then SIGKILLs the node at that phase, or SIGTERMs it and watches it
shut down cleanly from there.

Phases are registered by the modules that reach them (``register``);
``check_environment`` refuses a setting that names an unknown phase, so a
typo cannot silently disable a crash test.
"""

from __future__ import annotations

import logging
import os
import threading

import trio

from ._errors import ConfigError

logger = logging.getLogger(__name__)

CRASH_ENV = "MIGRATE_NODE_CRASH_AT"
PAUSE_ENV = "MIGRATE_NODE_PAUSE_AT"
PAUSE_S_ENV = "MIGRATE_NODE_PAUSE_S"
DEFAULT_PAUSE_S = 30.0
#: The exit status of a crash: what a shell reports for a SIGKILLed process.
CRASH_STATUS = 137

_phases: set[str] = set()
_paused = False  # a process pauses once: its first arrival at the phase
_release: threading.Event | None = None


def register(*phases: str) -> None:
    """Declare phases that code in this process may reach."""
    _phases.update(phases)


def phases() -> frozenset[str]:
    return frozenset(_phases)


def check_environment() -> None:
    """Refuse crash-testing settings that name no registered phase.

    Raises ConfigError.
    """
    for var in (CRASH_ENV, PAUSE_ENV):
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
    """Die if the process should crash at ``phase``; return the pause to hold, if any."""
    global _paused, _release
    if phase not in _phases:
        raise ValueError(f"unregistered crash-test phase {phase!r}")
    if os.environ.get(CRASH_ENV) == phase:
        logger.critical("crashing at %s (%s)", phase, CRASH_ENV, extra={"phase": phase})
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


def point_blocking(phase: str) -> None:
    """Crash or pause here, blocking the calling thread; for code in worker threads."""
    pause = _crash_or_arm_pause(phase)
    if pause is not None:
        pause.wait(_pause_s())
        logger.warning("resumed at %s", phase, extra={"phase": phase})


async def point(phase: str) -> None:
    """Crash or pause here; a pause holds only this task, the event loop runs on.

    Does not yield to the scheduler when nothing is armed.
    """
    pause = _crash_or_arm_pause(phase)
    if pause is not None:
        await trio.to_thread.run_sync(pause.wait, _pause_s(), abandon_on_cancel=True)
        logger.warning("resumed at %s", phase, extra={"phase": phase})
