"""FedRestore and restore_encoded: an encoded snapshot decoded straight into a fresh instance, fed in pieces, from bytes or a file."""

from __future__ import annotations

import io
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

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
        monkeypatch.setattr(snapshot._fed_restore, "_CHUNK_BYTES", chunk)
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
        monkeypatch.setattr(snapshot._fed_restore, "_CHUNK_BYTES", len(data) if chunk == "whole" else chunk)
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


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=0, max_value=10**9), max_size=12), key=st.sampled_from([None, KEY]))
def test_fed_in_any_pieces_it_completes_on_the_last_one_with_the_restored_state(live, cuts, key):
    w = _busy(live)
    snap = w.capture()
    data = _encoded(snap, key)
    bounds = sorted({c % len(data) for c in cuts} | {0, len(data)})
    target = w.fresh()
    fed = snapshot.FedRestore(target.store, target.instance, key=key)
    pieces = [data[a:b] for a, b in zip(bounds, bounds[1:])]
    assert [fed.feed(p) for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert fed.done
    fed.close()  # complete: no TruncatedSnapshotError
    assert target.capture().same_state(snap)
    assert target("getg") == -2**40


def test_fed_a_piece_short_it_is_truncated_and_fed_more_it_is_corrupt(live):
    w = _busy(live)
    data = _encoded(w.capture(), KEY)
    target = w.fresh()
    fed = snapshot.FedRestore(target.store, target.instance, key=KEY)
    assert not fed.feed(data[:-1])
    with pytest.raises(snapshot.TruncatedSnapshotError):
        fed.close()
    other = w.fresh()
    again = snapshot.FedRestore(other.store, other.instance, key=KEY)
    with pytest.raises(snapshot.CorruptSnapshotError, match="trailing bytes"):
        again.feed(data + b"\0")


def test_fed_a_delta_it_applies_it_at_its_end_onto_the_base(live):
    w = _busy(live)
    with snapshot.StateTracker(w.store, w.instance) as tracker:
        base = tracker.capture(w.store)
        w("poke", 7 * 4096 + 1, 33)
        w("setg", 12)
        delta = tracker.capture_delta(w.store)
    target = w.fresh()
    target.restore(base)
    fed = snapshot.FedRestore(target.store, target.instance)
    data = _encoded(delta, None)
    assert not fed.feed(data[:len(data) // 2])
    assert target("getg") == -2**40  # nothing of a delta is applied before its END
    assert fed.feed(data[len(data) // 2:])
    assert target.memory(0) == w.memory(0) and target("getg") == 12
