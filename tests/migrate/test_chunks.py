"""``_chunks``: a round's lazy encoding sent as the bulk thread makes it (``made_ahead``)."""

from __future__ import annotations

import random

import pytest
import trio

import snapshot
from migrate import _chunks


def _round(pages: int) -> snapshot.Snapshot:
    data = random.Random(pages).randbytes(pages * snapshot.PAGE_BYTES)  # incompressible: a piece per MiB
    memory = snapshot.MemoryState(0, len(data), (snapshot.PageRun(0, memoryview(data)),))
    return snapshot.Snapshot(module_sha256="0" * 64, state_id=bytes(16), base_id=None, memories=(memory,),
                             globals=(), tables=())


async def test_the_pieces_go_in_order_a_few_jobs_ahead_and_decode_to_the_round():
    snap = _round(3072)  # 12 MiB raw: several jobs of 1 MiB pieces
    encoder = snapshot.SnapshotEncoder()
    pieces = _chunks.stream(snap, 1 << 20, encoder)
    spent, jobs, sent = {"encode": 0.0}, [], []

    async def send(each):
        async for piece in each:
            sent.append(piece)
            await trio.sleep(0)

    await _chunks.made_ahead(pieces, send, spent, lambda: jobs.append(encoder.wire_bytes))
    assert len(sent) >= 3 * _chunks.PIECES_PER_JOB
    assert snapshot.Snapshot.from_bytes(b"".join(sent)).same_state(snap)
    assert sum(map(len, sent)) == encoder.wire_bytes
    assert len(jobs) == -(-len(sent) // _chunks.PIECES_PER_JOB) and jobs == sorted(jobs)
    assert spent["encode"] > 0
    assert pieces.gi_frame is None  # the generator was closed (or ran out)


async def test_an_encoding_failure_ends_the_pieces_at_a_piece_and_is_raised_as_itself():
    def pieces():
        for n in range(_chunks.PIECES_PER_JOB * 2):
            yield bytes([n]) * 10
        raise snapshot.LocalSnapshotError("the round cannot be encoded")

    sent: list[bytes] = []

    async def send(each):
        async for piece in each:
            sent.append(piece)

    with pytest.raises(snapshot.LocalSnapshotError, match="cannot be encoded"):
        await _chunks.made_ahead(pieces(), send, {"encode": 0.0}, lambda: None)
    assert sent == [bytes([n]) * 10 for n in range(_chunks.PIECES_PER_JOB * 2)]


async def test_a_sending_failure_is_raised_as_itself_and_the_encoding_stops():
    made = []

    def pieces():
        for n in range(1000):
            made.append(n)
            yield b"x" * 10

    async def send(each):
        async for _piece in each:
            raise ConnectionError("the target went away")

    gen = pieces()
    with pytest.raises(ConnectionError, match="went away"):
        await _chunks.made_ahead(gen, send, {"encode": 0.0}, lambda: None)
    assert gen.gi_frame is None  # closed
    assert len(made) <= _chunks.PIECES_PER_JOB * (_chunks.AHEAD_JOBS + 1)  # never far ahead of the link
