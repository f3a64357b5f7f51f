"""The operation log's entry format and the pieces snapshots travel in (pure, no nodes)."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

import snapshot
import workloads
from migrate import _chunks
from migrate._ledger import Outcome
from migrate._messages import MCall, MResult
from migrate._oplog import (
    batches,
    divergence,
    entry_bytes,
    entry_outcome,
    error_outcome,
    log_entry,
    replayed_call,
    reply_outcome,
)
from nodes import WorkloadTrap
from nodes._hosting import Host


def _write(data: bytes = b"\x01\x02\x03") -> MCall:
    return MCall(id=7, workload="w", op="write", caller="c", seq=3, offset=64, data=data)


def test_a_write_keeps_its_payload_apart_from_the_reply_data():
    reply = MResult(id=7, values=(), data=b"", epoch=2, index=5)
    entry = log_entry(_write(), reply_outcome(reply))
    assert entry["payload"] == b"\x01\x02\x03" and entry["result"] == b""
    assert replayed_call("w", entry).data == b"\x01\x02\x03"
    # Replaying the write gives the reply it gave originally: no divergence.
    assert divergence(entry, Outcome(True, ([], b"", 5, None))) is None
    assert "other bytes" in divergence(entry, Outcome(True, ([], b"x", 5, None)))


def test_handles_and_owners_build_the_same_entry():
    call = MCall(id=1, workload="w", op="call", caller="c", seq=9, export="incr", args=(4,))
    owner_outcome = Outcome(True, ([4], b"", 12, [3, "incr", [4], []]))
    reply = MResult(id=1, values=(4,), epoch=1, index=12, inputs=[3, "incr", [4], []])
    assert log_entry(call, reply_outcome(reply)) == log_entry(call, owner_outcome)
    assert entry_outcome(log_entry(call, owner_outcome)) == owner_outcome


def test_a_trapped_call_is_logged_with_its_code_and_reads_are_not():
    call = MCall(id=1, workload="w", op="call", caller="c", seq=1, export="boom")
    trap = WorkloadTrap.__new__(WorkloadTrap)
    Exception.__init__(trap, "unreachable")
    trap.op_index, trap.op_inputs = 3, None
    entry = log_entry(call, error_outcome(trap))
    assert entry["ok"] is False and entry["index"] == 3 and entry["code"] == "workload_trap"
    assert divergence(entry, Outcome(False, None, "workload_trap")) is None
    assert divergence(entry, Outcome(True, ([], b"", 3, None))) is not None
    read = MCall(id=2, workload="w", op="read", caller="c", seq=2, offset=0, length=4)
    assert log_entry(read, Outcome(True, ([], b"abcd", 0, None))) is None


def test_batches_stay_under_the_limit_and_keep_order():
    entries = [log_entry(_write(os.urandom(n)), Outcome(True, ([], b"", i + 1, None)))
               for i, n in enumerate([10, 90_000, 90_000, 200_000, 5, 5])]
    out = list(batches(entries, 100_000))
    assert [e for b in out for e in b] == entries
    for batch in out:
        assert len(batch) == 1 or sum(entry_bytes(e) for e in batch) <= 100_000
    assert [len(b) for b in out] == [2, 1, 1, 2]  # the 200 KB entry goes alone


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(1, 257))
def test_recut_keeps_every_byte_in_order(pieces, size):
    out = list(_chunks.recut(pieces, size))
    assert b"".join(out) == b"".join(pieces)
    assert all(len(p) == size for p in out[:-1]) and all(0 < len(p) <= size for p in out)


def test_chunk_size_fits_the_smallest_frame():
    assert _chunks.chunk_bytes(64 * 2**20) == _chunks.CHUNK_BYTES
    assert _chunks.chunk_bytes(64 * 2**20, 256 * 1024) == 256 * 1024 - _chunks.FRAME_OVERHEAD_BYTES


def test_a_snapshot_streamed_in_small_pieces_decodes_to_the_same_state(tmp_path):
    with Host(tmp_path) as host:
        workload = host.deploy(host.add_module(workloads.load("kvstore"))).workload_id
        ptr = host.call(workload, "wm_alloc", [300_000])
        host.write_memory(workload, ptr, os.urandom(300_000))
        snap = host.checkpoint(workload)
    pieces = _chunks.encode(snap, 4096)
    assert len(pieces) > 70 and all(len(p) <= 4096 for p in pieces)
    decoder, assembler = snapshot.SnapshotDecoder(), snapshot.SnapshotAssembler()
    for piece in _chunks.recut(pieces, 1000):  # cut again, as a failover to a smaller frame does
        decoder.feed(piece)
        while (event := decoder.next_event()) is not None:
            assembler.add(event)
    assert assembler.complete and assembler.snapshot() == snap
