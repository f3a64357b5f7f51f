"""A move's progress: what the nodes keep of each move under way, and how a mover watches it.

The source keeps its figures on its ``Migration`` (``Transfer``): bytes
sent, counted as each piece of a round is handed to the link, the round
being sent and what is left of it, and the step (capture, encode, send,
commit).  The target keeps the rounds and bytes it received on its
``Incoming``.  Both show in ``status`` (``outgoing`` and ``incoming``
below, one dict per move).

A request gets one reply, so a mover (``Handle.migrate(progress=...)``,
``migrate-node migrate`` and ``drain``) learns the figures by asking the
source's ``status`` every ``interval_s`` while its MMigrate runs
(``watch``), and gets a last event built from the report: its
``bytes_sent`` is the report's.  A move shorter than the interval shows
that last event only.

``Handle.migrating`` gives the same events as an async iterator
(``moving``): ``async with h.migrating("cloud-1") as move: async for
event in move: ...``; ``move.report`` is the report once the block ends.

``remaining_bytes`` and ``eta_s`` are of the round being sent (a round is
encoded whole before it is sent, so its size is known): later pre-copy
rounds carry what the workload dirtied meanwhile, decided round by round.
``rate_bps`` is the bytes sent over the seconds spent sending them.
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import trio

from nodes import NodeClient, unwrap_group

from ._messages import MigrationReport

if TYPE_CHECKING:
    from ._source import Migration
    from ._state import Incoming

#: How often a mover asks the source for the figures.
DEFAULT_INTERVAL_S = 0.25


@dataclass(frozen=True)
class MoveProgress:
    """One look at a move under way, or its end (``phase`` "done")."""

    workload: str
    phase: str  # capture, encode, send, commit (the source's step), or done
    round: int  # the round under way (1 is the full copy), or the rounds sent once done
    bytes_sent: int
    remaining_bytes: int | None  # of the round being sent; None while it is captured or encoded
    rate_bps: float | None  # bytes sent per second spent sending
    eta_s: float | None  # until the round under way is sent
    elapsed_s: float

    @classmethod
    def from_status(cls, record: dict) -> MoveProgress:
        return cls(workload=record["workload"], phase=record["phase"], round=record["round"],
                   bytes_sent=record["bytes_sent"], remaining_bytes=record.get("remaining_bytes"),
                   rate_bps=record.get("rate_bps"), eta_s=record.get("eta_s"), elapsed_s=record["elapsed_s"])

    @classmethod
    def done(cls, report: MigrationReport) -> MoveProgress:
        rate = report.bytes_sent / report.send_s if report.send_s else None
        return cls(workload=report.workload, phase="done", round=report.rounds, bytes_sent=report.bytes_sent,
                   remaining_bytes=0, rate_bps=rate, eta_s=0.0, elapsed_s=report.total_s)

    def line(self) -> str:
        """One line: ``w1 send round 2: 12.0 MiB sent, 3.5 MiB left, 120.0 MiB/s, ETA 0.03 s``."""
        parts = [f"{self.bytes_sent / 2**20:.1f} MiB sent"]
        if self.remaining_bytes is not None and self.phase != "done":
            parts.append(f"{self.remaining_bytes / 2**20:.1f} MiB left")
        if self.rate_bps:
            parts.append(f"{self.rate_bps / 2**20:.1f} MiB/s")
        if self.eta_s is not None and self.phase != "done":
            parts.append(f"ETA {self.eta_s:.2f} s")
        what = f"{self.round} rounds" if self.phase == "done" else f"round {self.round}"
        return f"{self.workload} {self.phase} {what}: {', '.join(parts)} ({self.elapsed_s:.1f} s)"


def _rate(sent: int, seconds: float) -> float | None:
    return sent / seconds if seconds > 0 and sent else None


def outgoing(m: Migration, now: float) -> dict:
    """The status record of the source's move ``m`` (a ``Migration``)."""
    sent = m.bytes_sent + m.round_streamed
    sending_s = m.spent["send"] + (now - m.stream_started if m.stream_started is not None else 0.0)
    rate = _rate(sent, sending_s)
    remaining = m.round_bytes - m.round_streamed if m.stream_started is not None else None
    eta = remaining / rate if remaining is not None and rate else None
    return {"workload": m.workload, "app": m.app, "state": "outgoing", "target": str(m.target),
            "strategy": m.req.strategy, "phase": m.step, "round": m.rounds + 1, "rounds": m.rounds,
            "bytes_sent": sent, "remaining_bytes": remaining, "rate_bps": rate, "eta_s": eta,
            "elapsed_s": now - m.started_s}


def incoming(inc: Incoming, state: str) -> dict:
    """The status record of a copy being received (``state`` "incoming" or "staging")."""
    elapsed = time.perf_counter() - inc.started_s
    return {"workload": inc.workload, "app": inc.app, "state": state, "source": inc.source, "rounds": inc.rounds,
            "bytes_received": inc.bytes_received, "rate_bps": _rate(inc.bytes_received, elapsed),
            "elapsed_s": elapsed}


Callback = Callable[[MoveProgress], Any]


async def _deliver(callback: Callback, event: MoveProgress) -> None:
    result = callback(event)
    if inspect.isawaitable(result):
        await result


async def watch(client: NodeClient, workload: str, move: Callable[[], Awaitable[MigrationReport]], progress: Callback,
                interval_s: float = DEFAULT_INTERVAL_S) -> MigrationReport:
    """Run ``move()`` while ``progress`` gets the source's figures (from ``client``'s status) as they change.

    ``progress`` is a plain function or a coroutine function; it is called
    in the caller's task tree, one event at a time, and last with the
    report's figures (phase "done").  What ``move`` raises is raised, and no
    "done" event is sent then.  A failing status request ends the watching,
    not the move.
    """
    report: MigrationReport | None = None
    last: tuple | None = None

    async def poll() -> None:
        nonlocal last
        while True:
            await trio.sleep(interval_s)
            try:
                status = await client.status()
            except Exception:  # the move's own request reports what matters
                return
            for record in status.migrations:
                if isinstance(record, dict) and record.get("workload") == workload \
                        and record.get("state") == "outgoing":
                    event = MoveProgress.from_status(record)
                    key = (event.phase, event.round, event.bytes_sent)
                    if key != last:
                        last = key
                        await _deliver(progress, event)

    async def run_move() -> None:
        nonlocal report
        report = await move()
        nursery.cancel_scope.cancel()

    with unwrap_group():  # what ``move`` raises leaves as itself, for the caller's except clauses
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            nursery.start_soon(run_move)
    assert report is not None
    await _deliver(progress, MoveProgress.done(report))
    return report


class Moving:
    """A move under way (``Handle.migrating``): its ``MoveProgress`` events as an async iterator.

    The events come through an unbuffered channel: the watcher waits for
    the iterator to take each one, so a slow consumer sees fewer, fresher
    events, never a backlog.  ``report`` is the move's report once it ended.
    """

    def __init__(self, events: trio.MemoryReceiveChannel) -> None:
        self._events = events
        self.report: MigrationReport | None = None

    def __aiter__(self) -> Moving:
        return self

    async def __anext__(self) -> MoveProgress:
        try:
            return await self._events.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


@asynccontextmanager
async def moving(migrate: Callable[..., Awaitable[MigrationReport]], to: str,
                 options: Mapping[str, Any]) -> AsyncIterator[Moving]:
    """Run ``migrate(to, progress=..., **options)`` while the block iterates its events.

    Leaving the block waits for the move to end, taking the events nobody
    read; what the move raises leaves the block as itself.  An exception
    from the block cancels the move's request (the move then fails or
    completes on the nodes as a cancelled ``Handle.migrate`` would).
    Raises TypeError if ``options`` has its own ``progress``.
    """
    if "progress" in options:
        raise TypeError("migrating() delivers progress through its iterator; do not pass progress=")
    send, receive = trio.open_memory_channel[MoveProgress](0)
    move = Moving(receive)

    async def run() -> None:
        async with send:
            move.report = await migrate(to, progress=send.send, **options)

    with unwrap_group():
        async with trio.open_nursery() as nursery, receive:
            nursery.start_soon(run)
            yield move
            async for _ in receive:  # the events after the block stopped reading
                pass


class ProgressPrinter:
    """Shows progress events on ``stream``: one line rewritten in place on a terminal, else a line each.

    Plain ``\\r`` rewriting, no progress-bar package: a move shows one line
    of figures, and piped output (logs, CI) wants whole lines.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self._width = 0

    def __call__(self, event: MoveProgress) -> None:
        text = event.line()
        if not self.tty:
            print(f"progress: {text}", file=self.stream, flush=True)
            return
        pad = max(0, self._width - len(text))
        self._width = len(text)
        end = "\n" if event.phase == "done" else ""
        self.stream.write(f"\r{text}{' ' * pad}{end}")
        self.stream.flush()
        if end:
            self._width = 0
