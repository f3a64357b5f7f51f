"""The sending half of a move, mixed into ``Migration``: capture, encode, stream, account, and the report.

``_first_capture_while`` starts tracking and takes the first round, its
pages left in the live memory, while the target gets ready (module,
MIncoming), so the two overlap.  Every round goes through ``_send``,
encoded as it is sent (or, the final one, ``frozen_round`` and
``_stream`` beside the commit, or a stop-copy round ``_frozen_whole``);
the figures they keep are the report's (``_report``): rounds and their
bytes, and the seconds spent capturing, encoding, sending and
committing.  After the commit, ``_ask_first_call`` asks the new owner
when it served its first call, for the client blackout
(``MigrationReport.client_blackout_s`` says how it is estimated).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, TypeVarTuple

import msgpack
import trio

import snapshot
from nodes import (ConnectionFailed, Node, NodeClient, NodeError, UnknownModule, WorkloadInfo,
                   crash_point_async)

from . import _chunks
from . import _hostops as ops
from ._frozen import FrozenRound, frozen_round
from ._messages import MFirstCall, MFirstServed, MIncoming, MigrationReport, MMigrate
from ._precopy import PrecopyPlanner
from ._replies import expect
from ._state import FIRST_CALL_WAIT_S
from ._window import SendWindow, max_pieces

_R = TypeVar("_R")

#: Pages written after the last pre-copy round, beyond twice that round's, that make a burst (256 KiB).
BURST_SLACK_PAGES = 64
_Args = TypeVarTuple("_Args")


@dataclass
class _Handover:
    """What the report's client blackout is estimated from (``time.perf_counter`` seconds at the source)."""

    last_served_s: float | None = None  # the source's last call served before the freeze
    replied_s: float = 0.0  # the commit's reply received
    waiting: int = 0  # calls waiting on the workload at the commit, which the redirect answers
    client_blackout_s: float | None = None


def _nothing() -> None:
    pass


def _fits_commit(piece: bytes, ledger_wire: dict[str, Any], *frame_limits: int) -> bool:
    """Whether an MCommit carrying ``piece`` and the ledger fits a frame under every limit."""
    return len(piece) + len(msgpack.packb(ledger_wire)) + _chunks.FRAME_OVERHEAD_BYTES <= min(frame_limits)


class Transfer:
    """Rounds sent and what they cost; ``Migration`` sets the fields (``_start_figures``)."""

    # The move's, set by ``Migration``:
    node: Node
    workload: str
    epoch: int
    req: MMigrate
    planner: PrecopyPlanner
    clock: Callable[[], float]
    notes: list[str]
    settings: dict[str, Any]  # the workload's launch settings, for MIncoming
    _first: snapshot.Snapshot | None  # the first round, until it is sent

    def _start_figures(self) -> None:
        self.bytes_sent = 0
        self.pages_sent = 0
        self.chunks_sent = 0  # MChunk numbers used: the next round's go on from here
        self.rounds = 0
        self.bytes_per_round: list[int] = []
        self.final_round_bytes = 0
        self.frozen_s = 0.0
        self.spent = {"capture": 0.0, "encode": 0.0, "send": 0.0, "commit": 0.0}  # seconds, summed
        self.handover = _Handover()
        self.window: SendWindow | None = None  # sized from the link as the first round's pieces are answered
        # What the move does now, for its progress (migrate._progress): its step, the round being sent
        # (encoded) and how much of it went to the link, and when its sending started.
        self.step = "capture"
        self.round_bytes = self.round_streamed = 0
        self.stream_started: float | None = None
        self.started_s = self.clock()
        self._first_done: Callable[[], None] = _nothing  # ends the first round's hold on the live memory
        self._stop_asked = False
        self._stop_scope: trio.CancelScope | None = None

    async def _ask_first_call(self, client: NodeClient) -> None:
        """Ask the new owner when it served its first call, for the client blackout (after the redirect)."""
        h = self.handover
        if h.waiting == 0:
            self.notes.append("no call was waiting at the source when it committed: no client blackout to report")
            return
        if h.last_served_s is None:
            self.notes.append("no call was served at the source before the freeze: no client blackout to report")
            return
        after = None
        with trio.move_on_after(FIRST_CALL_WAIT_S + 1.0):
            try:
                after = expect(MFirstServed, await client.request(MFirstCall, workload=self.workload, epoch=self.epoch,
                                                                 wait_s=FIRST_CALL_WAIT_S)).after_s
            except (NodeError, OSError) as exc:
                self.notes.append(f"the target did not say when it served its first call ({exc}): "
                                  "no client blackout to report")
                return
        if after is None:
            self.notes.append(f"no call reached the target within {FIRST_CALL_WAIT_S} s of the commit: "
                              "no client blackout to report")
            return
        h.client_blackout_s = h.replied_s - h.last_served_s + after

    async def _ready_target(self, client: NodeClient, module: bytes, info: WorkloadInfo) -> None:
        """Have the target get ready for the copy, storing the module (compiled there if new) if it lacks it.

        MIncoming goes first: the target's admission (cordon, memory limit,
        quota) refuses a move that cannot fit in the move's first message,
        before the module or any page is sent.  A target without the module
        answers UnknownModule; it then gets the module (its imports and
        features are checked as it is stored) and the same MIncoming again.
        A target that has the module is ready after one round trip, not two.
        """
        await crash_point_async("source:before-incoming")
        try:
            await self._incoming(client, info)
        except UnknownModule:
            await client.ensure_module(module)
            await self._incoming(client, info)

    async def _first_capture_while(self, setup: Callable[[*_Args], Awaitable[None]],
                                   *args: *_Args) -> snapshot.Snapshot:
        """Start tracking and take the first round while ``setup(*args)`` readies the target.

        The round's runs view the live memory (``ops.start_tracking_live``):
        send it with ``_send(..., live=True)``, then ``_drop_first``.

        Arming the tracker and taking the views took 48-80 ms at 1 GiB
        (a copy took 0.7 s); readying the target is one round trip
        (MIncoming), three and a compile for a module new to it (0.72 s for
        QuickJS): one waits for the other instead of both in turn.  Nothing is sent before the
        target accepted the copy.  Raises setup's error first, then the
        capture's (the caller's ``run`` stops the tracking of a move that
        does not commit).
        """
        failures: list[Exception] = []
        snap: snapshot.Snapshot | None = None

        async def ready() -> None:
            try:
                await setup(*args)
            except Exception as exc:  # re-raised below, not as an exception group
                failures.insert(0, exc)
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ready)
            self.planner.start(self.clock())
            try:
                snap, self._first_done = await self._capture(ops.start_tracking_live, self.node.host, self.workload)
            except Exception as exc:
                failures.append(exc)
                nursery.cancel_scope.cancel()
        if failures:
            self._drop_first()
            raise failures[0]
        assert snap is not None  # nothing failed: the capture returned
        return snap

    def stop(self) -> None:
        """Abort the move if it has not begun its final round (``_stoppable``): its node is shutting down.

        A node stopping waits for its requests before it checkpoints its
        workloads.  A move whose target hangs (it stopped answering
        mid-round) never ends by itself, and the stopping node saved
        nothing at all: every workload it held was lost.  Stopped here, the
        move aborts as for a lost target and the workload stays, to be
        checkpointed.  A final round runs to its end (its commit may have
        reached the target).
        """
        self._stop_asked = True
        if self._stop_scope is not None:
            self._stop_scope.cancel()

    @contextlib.contextmanager
    def _stoppable(self) -> Iterator[None]:
        """A part of the move before the final round, which ``stop`` ends with ConnectionFailed."""
        with trio.CancelScope() as scope:
            if self._stop_asked:
                scope.cancel()
            self._stop_scope = scope
            try:
                yield
            finally:
                self._stop_scope = None
        if scope.cancelled_caught:
            raise ConnectionFailed(f"the move was stopped: {self.node.config.name} is shutting down")

    def _drop_first(self) -> None:
        """Let the first round's views of the live memory go (``ops.start_tracking_live``); again does nothing."""
        done, self._first_done = self._first_done, _nothing
        done()

    async def _incoming(self, client: NodeClient, info: WorkloadInfo) -> None:
        """Have the target get ready for a fresh copy; its chunks are numbered from 0."""
        await client.request(MIncoming, workload=self.workload, module_sha256=info.module_sha256, app=info.app,
                             epoch=self.epoch, source=self.node.config.name, live=self.req.strategy != "stop-copy",
                             **self.settings)
        self.chunks_sent = 0

    async def _keep_bursts_out(self, client: NodeClient, last_pages: int) -> None:
        """Before the freeze, send one more round while the workload runs if it wrote a burst since the last one.

        The pages written while the last round (``last_pages``) travelled go
        in the frozen round.  At a steady rate they are about as many as that
        round carried.  A workload that writes in bursts (a heap that grows a
        MiB at a time) can write many more just then: one burst made a frozen
        phase of 79 ms over a 1 Gbit/s link with a 30 ms round trip, 2.8
        times the floor.  So while the pages written since the last round are
        more than twice its pages plus ``BURST_SLACK_PAGES``, they go in one
        more round with the workload running, up to ``max_rounds`` rounds in
        all.  The tracker counts them without taking them (uffd); one that
        cannot tell changes nothing.
        """
        host = self.node.host
        while self.rounds < self.planner.config.max_rounds:
            pending = await self.node.run_host(ops.dirty_now, host, self.workload)
            if pending is None or pending <= 2 * last_pages + BURST_SLACK_PAGES:
                return
            self.notes.append(f"{pending} pages written since the last round of {last_pages}: "
                              "one more round before the freeze")
            delta = await self._capture(ops.capture_delta, host, self.workload)
            last_pages = delta.page_count
            await self._send(client, delta)

    async def _capture(self, fn: Callable[[*_Args], _R], *args: *_Args) -> _R:
        """``fn(*args)`` in the node's host thread, timed as capture."""
        t0 = self.clock()
        self.step = "capture"
        try:
            return await self.node.run_host(fn, *args)
        finally:
            self.spent["capture"] += self.clock() - t0

    async def _send_first(self, client: NodeClient) -> tuple[float, int, int]:
        """Send the first round (``_first_capture_while``'s) and let it go; its seconds, pages and wire bytes."""
        assert self._first is not None  # taken while the target got ready
        full, self._first = [self._first], None
        sent_before = self.bytes_sent
        try:
            took = await self._send(client, full[0], live=True)
            pages = full[0].page_count
            await free_in_thread(full)  # a copy, where the memory could not be read live
        finally:
            self._drop_first()
        return took, pages, self.bytes_sent - sent_before

    async def _send(self, client: NodeClient, snap: snapshot.Snapshot, *, live: bool = False,
                    frozen: bool = False) -> float:
        """Stream one snapshot to the target as a round, encoding it as it goes; return the seconds it took.

        The pieces are made a few jobs ahead of the link (``made_ahead``)
        on the node's bulk thread, at a lower priority (the usual one if
        ``frozen``: calls wait), so a round never sits encoded whole in
        memory.  ``live``: the runs view memory calls may write."""
        t0 = self.clock()
        size = _chunks.chunk_bytes(self.node.config.max_frame_bytes, client.peer_max_frame_bytes)
        encoder = snapshot.SnapshotEncoder(copy_pages=live)
        raw_total = snap.page_count * snapshot.PAGE_BYTES

        def estimate() -> None:  # the bytes encoded, plus the pages left at the round's ratio so far
            done, wire = encoder.raw_bytes, encoder.wire_bytes
            self.round_bytes = wire + ((raw_total - done) * wire // done if done else raw_total)

        await _chunks.made_ahead(_chunks.stream(snap, size, encoder), lambda pieces: self._stream(client, pieces),
                                 self.spent, estimate, bulk=not frozen)
        self._sent_round(encoder.wire_bytes, snap.page_count)
        return self.clock() - t0

    async def _frozen_whole(self, client: NodeClient) -> tuple[int, int] | None:
        """Freeze, then stream the whole state as it is encoded from the memory in place; the commit's facts.

        Encoding a stop-copy round whole before sending it put the encoding,
        the transfer and the target's decoding one after another while calls
        waited.  None, with nothing sent and the workload frozen, where the
        memory may move (``Held.view_paused``): ``_frozen_round`` then.
        """
        viewed = await self._capture(ops.freeze_view, self.node.host, self.workload)
        if viewed is None:
            return None
        snap, done, facts = viewed
        try:
            await self._send(client, snap, frozen=True)
        finally:
            done()  # before any thaw: the views must not outlive the pause
        return facts

    async def _frozen_round(self, client: NodeClient, delta: bool) -> FrozenRound:
        """``frozen_round`` in a worker thread, in pieces that fit both nodes' frames; its seconds are counted."""
        size = _chunks.chunk_bytes(self.node.config.max_frame_bytes, client.peer_max_frame_bytes)
        made = await self._capture(frozen_round, delta, self.node.host, self.workload, size)
        self.spent["capture"] -= made.encode_s
        self.spent["encode"] += made.encode_s
        return made

    async def _stream(self, client: NodeClient, chunks: list[bytes] | AsyncIterator[bytes]) -> None:
        """Send ``chunks`` as the round's pieces, letting each go as it is sent.

        A list (a final round, encoded whole while calls wait) is emptied
        as it goes, so the round's memory is freed a piece at a time:
        dropping a 1 GiB round's pieces together, on the event loop, was one
        15-17 ms step, and every call waited for it.
        """
        t0 = self.stream_started = self.clock()
        self.step, self.round_streamed = "send", 0
        if isinstance(chunks, list):
            self.round_bytes = sum(map(len, chunks))
        try:
            if self.window is None:
                size = _chunks.chunk_bytes(self.node.config.max_frame_bytes, client.peer_max_frame_bytes)
                self.window = SendWindow(size, initial=_chunks.WINDOW_PIECES, max_pieces=max_pieces(size))
            self.chunks_sent = await _chunks.send(client, self._counted(chunks), workload=self.workload,
                                                  epoch=self.epoch, seq=self.chunks_sent, window=self.window)
        finally:
            self.spent["send"] += self.clock() - t0
            self.stream_started = None

    async def _counted(self, chunks: list[bytes] | AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``chunks`` one by one (a list is emptied as it goes), counted into ``round_streamed``."""
        if isinstance(chunks, list):
            chunks.reverse()
            while chunks:
                piece = chunks.pop()
                self.round_streamed += len(piece)
                yield piece
                del piece
            return
        async for piece in chunks:
            self.round_streamed += len(piece)
            yield piece
            del piece

    def _sent_round(self, wire_bytes: int, pages: int) -> None:
        self.bytes_sent += wire_bytes
        self.round_bytes = self.round_streamed = 0
        self.pages_sent += pages
        self.rounds += 1
        self.bytes_per_round.append(wire_bytes)

    def _report(self, target_name: str, total_s: float) -> MigrationReport:
        spent = self.spent
        return MigrationReport(
            workload=self.workload, strategy=self.req.strategy, source=self.node.config.name, target=target_name,
            total_s=total_s, frozen_s=self.frozen_s, rounds=self.rounds,
            bytes_sent=self.bytes_sent, pages_sent=self.pages_sent,
            dirty_pages_per_s=self.planner.dirty_pages_per_s, throttle=self.planner.throttle,
            epoch=self.epoch, notes=tuple(self.notes), client_blackout_s=self.handover.client_blackout_s,
            final_round_bytes=self.final_round_bytes, bytes_per_round=tuple(self.bytes_per_round),
            capture_s=spent["capture"], encode_s=spent["encode"], send_s=spent["send"], commit_s=spent["commit"])


async def free_in_thread(holder: list[snapshot.Snapshot]) -> None:
    """Empty ``holder``, the only reference to a snapshot, in a worker thread.

    A full capture's memory is in anonymous mmaps; unmapping them took 13 to
    17 ms for 256 MiB and 55 to 73 ms for 1 GiB, a stall of the event loop
    (every call waits) when the snapshot was dropped there.  In a thread,
    one munmap still held the process's mmap lock throughout, and the
    loop's own allocations waited for it: the pages are given back in
    pieces first (``snapshot.release_copies``).
    """
    def release() -> None:
        for snap in holder:
            snapshot.release_copies(snap)
        holder.clear()
    await trio.to_thread.run_sync(release)
