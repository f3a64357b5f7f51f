"""Encoded snapshots cut into pieces that fit protocol frames.

Moves, standbys and protection checkpoints all carry a snapshot as a byte
stream in pieces (``MChunk``, ``MCheckpointPart``).  The receiver feeds the
pieces to a ``snapshot.SnapshotDecoder``, which takes the stream cut
anywhere, so a piece can be cut again to fit a smaller frame.  Pieces
travel ``WINDOW_PIECES`` at a time (``send``, ``NodeClient.pipeline``).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Generator, Iterable, Iterator

import trio

import snapshot
from nodes import NodeClient, run_bulk

from ._messages import MChunk
from ._window import SendWindow

#: Bytes of encoded snapshot per piece at most.  Framing and TLS encryption
#: of a piece run on the node's event loop; 1 MiB keeps each such step to
#: about a millisecond, so calls keep flowing while a snapshot is sent.
CHUNK_BYTES = 1 * 2**20
#: Room a frame keeps for a message's other fields (ids, names, epochs).
FRAME_OVERHEAD_BYTES = 4096
#: Pieces sent (or asked for) before the first one is answered: 8 MiB in
#: flight lets the sender encode and encrypt while the receiver decrypts and
#: applies, instead of each side waiting one round trip per piece.  Below a
#: node's requests-in-flight limit (16 by default), so none waits in its
#: socket buffer.
WINDOW_PIECES = 8


def chunk_bytes(*frame_limits: int) -> int:
    """The piece size that fits a frame under every limit in ``frame_limits``, at most CHUNK_BYTES."""
    return max(1, min(CHUNK_BYTES, *(limit - FRAME_OVERHEAD_BYTES for limit in frame_limits)))


def recut(pieces: Iterable[bytes], size: int) -> Generator[bytes, None, None]:
    """The bytes of ``pieces``, in order, in pieces of exactly ``size`` (the last may be shorter).

    Each byte is copied once, by the join that makes its piece (none when
    a piece is already cut to size).  Appending each frame to the pending
    bytes and slicing pieces off them copied every byte three to four
    times with the GIL held, on the bulk thread a node's calls share it with.
    """
    parts: list[memoryview] = []
    held = 0
    for piece in pieces:
        if not parts and len(piece) == size:
            yield piece  # already cut to size: no copy
            continue
        view = memoryview(piece)
        while held + len(view) >= size:
            take = size - held
            parts.append(view[:take])
            yield b"".join(parts)
            parts, held, view = [], 0, view[take:]
        if view:
            parts.append(view)
            held += len(view)
    if parts:
        yield b"".join(parts)


def stream(snap: snapshot.Snapshot, size: int,
           encoder: snapshot.SnapshotEncoder | None = None) -> Generator[bytes, None, None]:
    """Encode ``snap`` lazily, in pieces of ``size`` bytes (compression runs as pieces are taken).

    Give an ``encoder`` to read its byte counts as the pieces are taken.
    """
    return recut((encoder or snapshot.SnapshotEncoder()).encode_pieces(snap), size)


def encode(snap: snapshot.Snapshot, size: int) -> list[bytes]:
    """Encode ``snap`` into pieces of ``size`` bytes at once."""
    return list(stream(snap, size))


#: A round is encoded on the bulk thread this many pieces per job, at most ``AHEAD_JOBS`` jobs ahead
#: of the link (``made_ahead``): 16 MiB of 1 MiB pieces, twice the first window, so the link never
#: waits for the encoder while it is faster.
PIECES_PER_JOB = 4
AHEAD_JOBS = 4


async def made_ahead(pieces: Generator[bytes, None, None], send: Callable[[AsyncIterator[bytes]], Awaitable[None]],
                     spent: dict[str, float], on_job: Callable[[], None], *, bulk: bool = True) -> None:
    """``send`` the ``pieces`` of a lazy encoding (``stream``) as the bulk thread makes them, a few jobs ahead.

    The encoding runs on the node's bulk thread (``nodes.run_bulk``), or
    with ``bulk=False`` (a frozen round: calls wait for it) on a worker
    thread at the usual priority, ``PIECES_PER_JOB`` pieces per job and at
    most ``AHEAD_JOBS`` jobs ahead of ``send``, its seconds added to ``spent["encode"]``;
    ``on_job()`` runs as each job's pieces start to go.  The pieces are
    made in memory the ones sent have just freed.  Encoding a 1 GiB round
    whole first held 1 GiB of pieces, each copied with the GIL held into
    memory the process had never touched; on a VM whose host backs guest
    memory lazily such a copy took milliseconds, and the node's calls
    waited for the GIL meanwhile.  An encoding failure ends the pieces at
    a piece's end (never mid-frame) and is raised after ``send`` returns.
    """
    jobs, made = trio.open_memory_channel[list[bytes]](AHEAD_JOBS - 1)
    failures: list[Exception] = []

    async def encode() -> None:
        async with jobs:
            while True:
                t0 = trio.current_time()
                try:
                    batch = await (run_bulk if bulk else trio.to_thread.run_sync)(_take, pieces, PIECES_PER_JOB)
                except Exception as exc:
                    failures.append(exc)
                    return
                finally:
                    spent["encode"] += trio.current_time() - t0
                if not batch:
                    return
                await jobs.send(batch)

    async def each() -> AsyncIterator[bytes]:
        async with made:
            async for batch in made:
                on_job()
                batch.reverse()
                while batch:
                    yield batch.pop()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(encode)
            try:
                await send(each())
            except Exception as exc:  # re-raised below, not as an exception group
                failures.insert(0, exc)
                nursery.cancel_scope.cancel()
    finally:
        pieces.close()  # the bulk thread is done with it: the nursery waited for its last job
    if failures:
        raise failures[0]


def _take(pieces: Iterator[bytes], count: int) -> list[bytes]:
    """The next ``count`` items of ``pieces``, fewer at its end."""
    return list(itertools.islice(pieces, count))


async def send(client: NodeClient, pieces: Iterable[bytes] | AsyncIterable[bytes], *, workload: str, epoch: int,
               seq: int = 0, standby: bool = False, window: int | SendWindow = WINDOW_PIECES) -> int:
    """Send ``pieces`` to an incoming copy as MChunk requests numbered from ``seq``; return the next number.

    Up to ``window`` pieces are unanswered at a time (a ``SendWindow``
    sizes it as the replies come, and only it takes ``pieces`` as they are
    made, from an async iterable); the target applies them in order of
    their numbers.  Raises what ``NodeClient.request`` raises for the first
    piece refused; the replies to pieces already sent after it are dropped
    and no more are sent.
    """
    if isinstance(window, SendWindow):
        return await _send_windowed(client, pieces if isinstance(pieces, AsyncIterable) else _async(pieces), window,
                                    workload=workload, epoch=epoch, seq=seq, standby=standby)
    assert not isinstance(pieces, AsyncIterable), "pieces made as they go need a SendWindow"
    sent = 0

    def answered(_reply: object) -> bool:
        nonlocal sent
        sent += 1
        return False

    requests = ((MChunk, {"workload": workload, "epoch": epoch, "data": piece, "seq": n, "standby": standby})
                for n, piece in enumerate(pieces, seq))
    await client.pipeline(requests, window=window, on_reply=answered)
    return seq + sent


async def _async(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def _send_windowed(client: NodeClient, pieces: AsyncIterable[bytes], window: SendWindow, *, workload: str,
                         epoch: int, seq: int, standby: bool) -> int:
    """``send`` with the window a ``SendWindow`` measures (trio's clock times the replies)."""
    window.restart()
    unanswered: collections.deque = collections.deque()
    n = seq
    try:
        async for piece in pieces:
            while len(unanswered) >= window.pieces:
                await unanswered.popleft().reply()
                window.answered(trio.current_time())
            unanswered.append(await client.send_request(MChunk, workload=workload, epoch=epoch, data=piece,
                                                        seq=n, standby=standby))
            window.sent(trio.current_time(), len(piece))
            n += 1
        while unanswered:
            await unanswered.popleft().reply()
            window.answered(trio.current_time(), more=False)
    finally:
        for pending in unanswered:
            pending.discard()
    return n
