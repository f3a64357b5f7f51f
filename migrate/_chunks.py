"""Encoded snapshots cut into pieces that fit protocol frames.

Moves, standbys and protection checkpoints all carry a snapshot as a byte
stream in pieces (``MChunk``, ``MCheckpointPart``).  The receiver feeds the
pieces to a ``snapshot.SnapshotDecoder``, which takes the stream cut
anywhere, so a piece can be cut again to fit a smaller frame.  Pieces
travel ``WINDOW_PIECES`` at a time (``send``, ``NodeClient.pipeline``).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator

import trio

import snapshot
from nodes import NodeClient

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


def recut(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The bytes of ``pieces``, in order, in pieces of exactly ``size`` (the last may be shorter)."""
    pending = b""
    for piece in pieces:
        if not pending and len(piece) == size:
            yield piece  # already cut to size: no copy
            continue
        data = pending + piece if pending else piece
        view, pos = memoryview(data), 0
        while len(data) - pos >= size:
            yield bytes(view[pos:pos + size])
            pos += size
        pending = bytes(view[pos:])
    if pending:
        yield pending


def stream(snap: snapshot.Snapshot, size: int) -> Iterator[bytes]:
    """Encode ``snap`` lazily, in pieces of ``size`` bytes (compression runs as pieces are taken)."""
    return recut(snapshot.SnapshotEncoder().encode(snap), size)


def encode(snap: snapshot.Snapshot, size: int) -> list[bytes]:
    """Encode ``snap`` into pieces of ``size`` bytes at once."""
    return list(stream(snap, size))


async def send(client: NodeClient, pieces: Iterable[bytes], *, workload: str, epoch: int, seq: int = 0,
               standby: bool = False, window: int | SendWindow = WINDOW_PIECES) -> int:
    """Send ``pieces`` to an incoming copy as MChunk requests numbered from ``seq``; return the next number.

    Up to ``window`` pieces are unanswered at a time (a ``SendWindow``
    sizes it as the replies come); the target applies them in order of
    their numbers.  Raises what ``NodeClient.request`` raises for the first
    piece refused; the replies to pieces already sent after it are dropped
    and no more are sent.
    """
    if isinstance(window, SendWindow):
        return await _send_windowed(client, pieces, window, workload=workload, epoch=epoch, seq=seq,
                                    standby=standby)
    sent = 0

    def answered(_reply: object) -> bool:
        nonlocal sent
        sent += 1
        return False

    requests = ((MChunk, {"workload": workload, "epoch": epoch, "data": piece, "seq": n, "standby": standby})
                for n, piece in enumerate(pieces, seq))
    await client.pipeline(requests, window=window, on_reply=answered)
    return seq + sent


async def _send_windowed(client: NodeClient, pieces: Iterable[bytes], window: SendWindow, *, workload: str, epoch: int,
                         seq: int, standby: bool) -> int:
    """``send`` with the window a ``SendWindow`` measures (trio's clock times the replies)."""
    window.restart()
    unanswered: collections.deque = collections.deque()
    n = seq
    try:
        for piece in pieces:
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
