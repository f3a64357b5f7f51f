"""restore_encoded: an encoded snapshot decoded straight into a fresh instance, from bytes or a file."""

from __future__ import annotations

import io
import random

import pytest

import snapshot
from snapshot import SnapshotEncoder

from damage import EDITS, damage

KEY = bytes(range(32))

# Two memories, a mutable global and a table: pages are written at scattered
# places so the encoded snapshot has many runs and zero gaps, over several
# batches when encoded with small batches.
MODULE = """
(module
  (memory (export "mem") 2)
  (memory (export "mem1") 1)
  (global $g (export "g") (mut i64) (i64.const 5))
  (table $t (export "t") 4 funcref)
  (func $a (result i32) (i32.const 11))
  (elem (i32.const 1) $a)
  (data (i32.const 100) "data segment")
  (func (export "poke") (param i32 i32) (i32.store8 (local.get 0) (local.get 1)))
  (func (export "poke1") (param i32 i32) (i32.store8 1 (local.get 0) (local.get 1)))
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "setg") (param i64) (global.set $g (local.get 0)))
  (func (export "getg") (result i64) (global.get $g))
)
"""


def _busy(live):
    w = live(MODULE)
    w("grow", 30)
    rng = random.Random(7)
    for page in rng.sample(range(32 * 16), 120):
        w("poke", page * 4096 + rng.randrange(4096), rng.randrange(1, 256))
    w("poke1", 5 * 4096 + 3, 9)
    w("setg", -2**40)
    return w


def _encoded(snap, key=None, batch_pages=16):
    return b"".join(SnapshotEncoder(key=key, batch_pages=batch_pages).encode(snap))


@pytest.mark.parametrize("key", [None, KEY])
@pytest.mark.parametrize("as_file, chunk", [(False, None), (True, None), (True, 5)])
@pytest.mark.parametrize("system_call", [True, False])
def test_decoding_into_the_instance_gives_the_state_a_restore_of_the_decoded_snapshot_gives(
        live, monkeypatch, key, as_file, chunk, system_call):
    w = _busy(live)
    snap = w.capture()
    data = _encoded(snap, key)
    if chunk is not None:
        monkeypatch.setattr(snapshot._restore, "_CHUNK_BYTES", chunk)
    if not system_call:  # as where process_vm_readv is missing: one memmove per run
        monkeypatch.setattr(snapshot._restore, "_vm_readv", None)
    else:
        assert snapshot._restore._vm_readv is not None  # this test's host has it
    target = w.fresh()
    snapshot.restore_encoded(io.BytesIO(data) if as_file else data, target.store, target.instance, key=key)
    assert snapshot.state_id(target.instance) == snap.state_id
    assert target.capture().same_state(snap)
    assert target.memory(0) == w.memory(0) and target.memory(1) == w.memory(1)
    assert target("getg") == -2**40


def test_a_delta_is_assembled_and_applied_onto_its_base(live):
    w = _busy(live)
    with snapshot.StateTracker(w.store, w.instance) as tracker:
        base = tracker.capture(w.store)
        for page in range(32 * 16):
            w("poke", page * 4096 + 100, 0)  # writes zero pages a delta must carry
        w("poke", 40 * 4096 + 1, 77)
        delta = tracker.capture_delta(w.store)
    assert delta.is_delta
    target = w.fresh()
    target.restore(base)
    snapshot.restore_encoded(io.BytesIO(_encoded(delta, KEY)), target.store, target.instance, key=KEY)
    assert target.memory(0) == w.memory(0)


def test_what_accept_refuses_and_a_mismatched_module_leave_the_instance_untouched(live):
    w = _busy(live)
    data = _encoded(w.capture())
    target = w.fresh()
    before = target.capture()

    def refuse(head):
        assert head.memories[0].size_bytes == 32 * 65536 and not head.memories[0].runs  # META only
        raise ValueError("too large")

    with pytest.raises(ValueError, match="too large"):
        snapshot.restore_encoded(data, target.store, target.instance, accept=refuse)
    other = live(MODULE.replace("i64.const 5", "i64.const 6")).fresh()
    with pytest.raises(snapshot.ModuleMismatchError):
        snapshot.restore_encoded(data, other.store, other.instance)
    assert target.capture().same_state(before)


@pytest.mark.parametrize("as_file, chunk", [(False, None), (True, 7), (True, "whole")])
def test_damaged_truncated_or_extended_input_is_a_typed_error(live, monkeypatch, as_file, chunk):
    w = _busy(live)
    data = _encoded(w.capture(), KEY)
    if chunk is not None:  # a file read in small pieces, or in one piece that ends right after END
        monkeypatch.setattr(snapshot._restore, "_CHUNK_BYTES", len(data) if chunk == "whole" else chunk)
    rng = random.Random(3)
    inputs = [data[:n] for n in range(0, len(data), max(1, len(data) // 60))] + [data + b"\0"]
    for _ in range(60):
        bad = bytearray(data)
        damage(bad, rng, rng.randrange(len(EDITS)), rng.randrange(len(bad)), delete_max=64, insert_max=64)
        if bad != data:  # setting a byte can leave it as it was
            inputs.append(bytes(bad))
    for bad in inputs:
        target = w.fresh()
        with pytest.raises(snapshot.RemoteSnapshotError):
            snapshot.restore_encoded(io.BytesIO(bad) if as_file else bad, target.store, target.instance, key=KEY)
