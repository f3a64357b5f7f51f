"""Moves that a test interrupts on purpose (imported by tests)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

import migrate


async def interrupted_move(h: migrate.Handle, to: str, target, action: Callable[[], Awaitable[object]], *,
                           strategy: str = "precopy", phase: str = "target:chunk",
                           timeout_s: float = 120.0) -> list[migrate.MigrationFailed]:
    """Move ``h`` to ``to``; once ``target`` (a node started with MIGRATE_NODE_PAUSE_AT=``phase``) logs
    that it paused there, await ``action()``.  Returns the MigrationFailed errors the move raised."""
    failures: list[migrate.MigrationFailed] = []

    async def move() -> None:
        try:
            await h.migrate(to, strategy=strategy)
        except migrate.MigrationFailed as exc:
            failures.append(exc)

    with trio.fail_after(timeout_s):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(move)
            await target.wait_for_log(f"paused at {phase}")
            await action()
    return failures
