"""Deterministic replay: recording a leader's inputs, replaying them at a follower, state hashes, clocks."""

from __future__ import annotations

import struct
import threading
import uuid

import msgpack
import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workloads
from nodes import BadArguments, Host, HostError, Limits, WorkloadError, WorkloadTrap
from nodes._replay import CallInputs, InputGate, ReplayDivergence, ReplayUnsupported
from test_hosting import WASI_PROBE

FAST = Limits(call_timeout_s=2.0)
SLOW_TESTS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# A probe of the recorded clock and random requests (``WASI_PROBE`` sleeps);
# readings land in memory, so the state hash sees them.
PROBE = wasmtime.wat2wasm(r"""
(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_res_get" (func $res (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $calls (mut i32) (i32.const 0))
  ;; clock `id` read into [0, 8); returns the errno, or the reading when 0
  (func (export "now") (param $id i32) (result i64)
    (local $errno i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (local.set $errno (call $clock (local.get $id) (i64.const 0) (i32.const 0)))
    (if (result i64) (local.get $errno)
      (then (i64.extend_i32_u (local.get $errno)))
      (else (i64.load (i32.const 0)))))
  (func (export "res") (param $id i32) (result i64)
    (drop (call $res (local.get $id) (i32.const 8)))
    (i64.load (i32.const 8)))
  ;; `len` random bytes at 4096 (a page of their own); returns the errno
  (func (export "random") (param $len i32) (result i32)
    (call $random (i32.const 4096) (local.get $len)))
  (func (export "clock_then_trap")
    (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 0)))
    unreachable)
  (func (export "calls") (result i32) (global.get $calls))
)
""")


@pytest.fixture
def hosts(tmp_path):
    with Host(tmp_path / "leader", limits=FAST) as leader, Host(tmp_path / "follower", limits=FAST) as follower:
        yield leader, follower


@pytest.fixture(scope="module")
def shared_hosts(tmp_path_factory):
    """Hosts for property tests, which deploy a workload of their own per example."""
    root = tmp_path_factory.mktemp("replay")
    with Host(root / "leader", limits=FAST) as leader, Host(root / "follower", limits=FAST) as follower:
        yield leader, follower


def deploy(host: Host, wasm: bytes, workload_id: str | None = None, **kwargs) -> str:
    return host.deploy(host.add_module(wasm), workload_id=workload_id or f"w-{uuid.uuid4().hex[:8]}",
                       **kwargs).workload_id


def wire(inputs: CallInputs) -> CallInputs:
    """What the follower gets: the inputs after a msgpack round trip."""
    return CallInputs.from_wire(msgpack.unpackb(msgpack.packb(inputs.to_wire())))


class Pair:
    """A leader workload recording and a follower restored from its snapshot cut.

    ``cut()`` takes the snapshot the follower starts from and starts
    recording; ``run`` calls the leader and logs each call with its inputs
    (through msgpack); ``follow()`` creates the follower (same id, so the
    guest sees the same argv, on the other host) and replays the log.
    """

    def __init__(self, leader: Host, follower: Host, wasm: bytes) -> None:
        self.leader, self.follower = leader, follower
        self.wid = deploy(leader, wasm)
        self.sha = leader.info(self.wid).module_sha256
        follower.add_module(wasm)
        self.log: list[tuple[str, list, object, CallInputs]] = []

    def cut(self) -> None:
        self.snap = self.leader.checkpoint(self.wid)
        self.calls = self.leader.info(self.wid).calls
        self.clock = self.leader.hold(self.wid).clock_state()
        self.leader.hold(self.wid).set_replay_mode("record")

    def run(self, export: str, args: list | tuple = ()) -> object:
        try:
            result = self.leader.call(self.wid, export, list(args))
        except WorkloadTrap as exc:
            result = exc
        self.log.append((export, list(args), result, wire(self.leader.hold(self.wid).last_inputs())))
        return result

    def start_follower(self) -> None:
        self.follower.restore(self.sha, self.snap, workload_id=self.wid, calls=self.calls, monotonic_ns=self.clock)
        self.follower.hold(self.wid).set_replay_mode("replay")

    def replay(self, entries=None) -> list:
        results = []
        for export, args, expected, inputs in self.log if entries is None else entries:
            try:
                results.append(self.follower.call(self.wid, export, args, inputs=inputs))
            except WorkloadTrap as exc:  # a ReplayDivergence is no WorkloadTrap: it propagates
                assert isinstance(expected, WorkloadTrap) and str(exc) == str(expected)
                results.append(expected)
        return results

    def follow(self) -> list:
        self.start_follower()
        return self.replay()

    def same_state(self) -> bool:
        return self.leader.hold(self.wid).state_hash() == self.follower.hold(self.wid).state_hash()


# --- replay reproduces the leader -------------------------------------------

def test_replayed_clockrand_calls_give_the_leaders_results_and_state(hosts):
    pair = Pair(*hosts, workloads.load("clockrand"))
    pair.leader.call(pair.wid, "sample")
    pair.cut()
    expected = [pair.run("sample") for _ in range(20)] + [pair.run("say", [5]), pair.run("state")]
    assert pair.follow() == expected
    assert pair.same_state()
    assert pair.leader.checkpoint(pair.wid).same_state(pair.follower.checkpoint(pair.wid))
    assert pair.follower.info(pair.wid).calls == pair.leader.info(pair.wid).calls


def test_what_a_clockrand_sample_records(hosts):
    pair = Pair(*hosts, workloads.load("clockrand"))
    pair.cut()
    pair.run("sample")
    inputs = pair.log[0][3]
    assert (inputs.call_index, inputs.export, inputs.args) == (0, "sample", ())
    # getentropy, then CLOCK_REALTIME, CLOCK_MONOTONIC and time() (realtime)
    assert [(kind, arg) for kind, arg, _ in inputs.entries] == [(2, 8), (0, 0), (0, 1), (0, 0)]
    assert len(msgpack.packb(inputs.to_wire())) < 80


def test_without_replay_a_copy_diverges(hosts):
    """The control: clockrand really is nondeterministic."""
    pair = Pair(*hosts, workloads.load("clockrand"))
    pair.cut()
    pair.run("sample")
    pair.follower.restore(pair.sha, pair.snap, workload_id=pair.wid, calls=pair.calls)
    pair.follower.call(pair.wid, "sample")
    assert not pair.same_state()


def test_every_recorded_request_replays(hosts):
    pair = Pair(*hosts, PROBE)
    pair.cut()
    for export, args in [("now", [0]), ("now", [1]), ("res", [0]), ("res", [1]), ("random", [300]),
                         ("now", [2]), ("random", [0]), ("clock_then_trap", []), ("now", [1])]:
        pair.run(export, args)
    assert pair.log[5][2] == 8  # CPU-time clocks: EBADF, as in wasmtime, and nothing recorded
    assert pair.log[5][3].entries == ()
    assert isinstance(pair.log[7][2], WorkloadTrap)
    assert [r if not isinstance(r, WorkloadTrap) else "trap" for r in pair.follow()] == \
        [r if not isinstance(r, WorkloadTrap) else "trap" for _, _, r, _ in pair.log]
    assert pair.same_state()


def test_a_sleeps_outcome_replays(hosts):
    pair = Pair(*hosts, WASI_PROBE)
    pair.cut()
    assert pair.run("sleep", [1000]) == 0
    assert [kind for kind, _, _ in pair.log[0][3].entries] == [3]  # poll_oneoff
    assert pair.follow() == [0]
    assert pair.same_state()
    event = pair.follower.read_memory(pair.wid, 128, 11)
    assert struct.unpack("<QHB", event) == (77, 0, 0)  # the sleep's event, written from the record


@SLOW_TESTS
@given(calls=st.lists(st.one_of(st.just(("sample", [])), st.just(("state", [])), st.just(("samples", [])),
                                st.tuples(st.just("say"), st.lists(st.integers(-5, 5), min_size=1, max_size=1))),
                      max_size=12),
       before=st.integers(0, 3))
def test_any_sequence_of_clockrand_calls_replays_exactly(shared_hosts, calls, before):
    pair = Pair(*shared_hosts, workloads.load("clockrand"))
    for _ in range(before):
        pair.leader.call(pair.wid, "sample")
    pair.cut()
    expected = [pair.run(export, args) for export, args in calls]
    assert pair.follow() == expected
    assert pair.same_state()


def test_a_promoted_follower_goes_on_live(hosts):
    pair = Pair(*hosts, workloads.load("clockrand"))
    pair.cut()
    pair.run("sample")
    pair.follow()
    pair.follower.hold(pair.wid).set_replay_mode("record")
    pair.follower.call(pair.wid, "sample")
    assert pair.follower.hold(pair.wid).last_inputs().call_index == 1  # the leader ran call 0
    assert pair.follower.call(pair.wid, "samples") == 2


def test_a_follower_restored_without_the_call_count_is_aligned_before_replaying(hosts):
    pair = Pair(*hosts, workloads.load("clockrand"))
    pair.leader.call(pair.wid, "sample")
    pair.cut()
    pair.run("sample")
    pair.follower.restore(pair.sha, pair.snap, workload_id=pair.wid)  # as a pre-copy round does
    pair.follower.hold(pair.wid).set_replay_mode("replay")
    with pytest.raises(ReplayDivergence, match="record is of call 1"):
        pair.replay()
    pair.follower.hold(pair.wid).set_call_count(pair.calls)  # nothing ran: align and go on
    pair.replay()
    assert pair.same_state()
    with pytest.raises(BadArguments):
        pair.follower.hold(pair.wid).set_call_count(-1)


def test_workloads_recording_in_parallel_threads_keep_their_own_records(hosts):
    pairs = [Pair(*hosts, workloads.load("clockrand")) for _ in range(4)]
    for pair in pairs:
        pair.cut()

    def drive(pair: Pair) -> None:
        for i in range(200):
            pair.run("sample" if i % 7 else "say", [] if i % 7 else [i])

    threads = [threading.Thread(target=drive, args=(pair,)) for pair in pairs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for pair in pairs:
        assert [inputs.call_index for _, _, _, inputs in pair.log] == list(range(200))
        assert pair.follow() == [result for _, _, result, _ in pair.log]
        assert pair.same_state()


# --- divergence ---------------------------------------------------------------

@pytest.fixture
def recorded(hosts):
    """A clockrand pair with three recorded samples and the follower ready to replay."""
    pair = Pair(*hosts, workloads.load("clockrand"))
    pair.cut()
    for _ in range(3):
        pair.run("sample")
    pair.start_follower()
    return pair


def test_replaying_call_ns_inputs_for_the_next_call_diverges_before_running(recorded):
    pair = recorded
    pair.replay(pair.log[:1])
    before = pair.follower.hold(pair.wid).state_hash()
    with pytest.raises(ReplayDivergence) as info:
        pair.replay(pair.log[:1])  # call 0's inputs again, for call 1
    assert (info.value.call_index, info.value.position) == (1, -1)
    assert isinstance(info.value, WorkloadError) and isinstance(info.value, HostError)
    assert info.value.workload_id == pair.wid
    assert pair.follower.hold(pair.wid).state_hash() == before  # refused before any guest code ran
    pair.replay(pair.log[1:])  # so the right inputs still replay
    assert pair.same_state()


def test_a_different_request_diverges(recorded):
    pair = recorded
    export, args, result, inputs = pair.log[0]
    kind, _, answer = inputs.entries[0]
    changed = CallInputs(inputs.call_index, export, inputs.args, ((kind, 16, answer * 2),) + inputs.entries[1:])
    with pytest.raises(ReplayDivergence, match="random_get.8 bytes.* random_get.16 bytes") as info:
        pair.follower.call(pair.wid, export, args, inputs=changed)
    assert info.value.position == 0


def test_a_divergence_sticks_until_the_mode_is_set_again(recorded):
    pair = recorded
    export, args, _, inputs = pair.log[0]
    with pytest.raises(ReplayDivergence):
        pair.follower.call(pair.wid, export, args, inputs=CallInputs(0, export, (), inputs.entries[:2]))
    with pytest.raises(ReplayDivergence, match="diverged before"):
        pair.replay(pair.log[1:2])
    pair.follower.hold(pair.wid).set_replay_mode("replay")
    pair.replay(pair.log[1:2])  # the caller's decision: the state is still wrong


def test_a_record_that_runs_out_or_is_left_over_diverges(recorded):
    pair = recorded
    export, args, _, inputs = pair.log[0]
    with pytest.raises(ReplayDivergence, match="past the end") as info:
        pair.follower.call(pair.wid, export, args, inputs=CallInputs(0, export, (), inputs.entries[:2]))
    assert info.value.position == 2
    assert pair.follower.info(pair.wid).traps == 0  # a divergence is not counted as a guest trap

    pair.follower.remove(pair.wid)  # diverged: start a new follower from the cut
    pair.start_follower()
    extra = CallInputs(0, export, (), inputs.entries + inputs.entries[:1])
    with pytest.raises(ReplayDivergence, match="ended before input 4") as info:
        pair.follower.call(pair.wid, export, args, inputs=extra)
    assert info.value.position == 4


@SLOW_TESTS
@given(data=st.data())
def test_changed_requests_diverge_and_changed_answers_change_the_state(shared_hosts, data):
    pair = Pair(*shared_hosts, workloads.load("clockrand"))
    pair.cut()
    pair.run("sample")
    export, args, result, inputs = pair.log[0]
    entries = list(inputs.entries)
    i = data.draw(st.integers(0, len(entries) - 1), label="entry")
    kind, arg, answer = entries[i]
    how = data.draw(st.sampled_from(["request", "answer", "drop"]), label="change")
    if how == "request":
        entries[i] = (kind, arg + data.draw(st.integers(1, 3)), answer)
    elif how == "answer":
        entries[i] = (kind, arg, bytes(b ^ 0xFF for b in answer) if isinstance(answer, bytes) else answer + 10**12)
    else:
        del entries[i]
    pair.start_follower()
    changed = CallInputs(inputs.call_index, export, inputs.args, tuple(entries))
    if how == "answer":
        assert pair.follower.call(pair.wid, export, args, inputs=changed) != result
        assert not pair.same_state()
    else:
        with pytest.raises(ReplayDivergence):
            pair.follower.call(pair.wid, export, args, inputs=changed)
    pair.follower.remove(pair.wid)
    pair.leader.remove(pair.wid)


# --- modes ----------------------------------------------------------------

def test_modes_refuse_misuse(hosts):
    leader, _ = hosts
    wid = deploy(leader, workloads.load("clockrand"))
    leader.call(wid, "sample")
    with pytest.raises(BadArguments):
        leader.hold(wid).last_inputs()  # off: nothing is recorded
    with pytest.raises(BadArguments):
        leader.call(wid, "sample", inputs=CallInputs(1, "sample", ()))
    with pytest.raises(BadArguments):
        leader.hold(wid).set_replay_mode("fast-forward")
    leader.hold(wid).set_replay_mode("record")
    with pytest.raises(BadArguments):
        leader.hold(wid).last_inputs()  # nothing recorded since
    leader.hold(wid).set_replay_mode("replay")
    with pytest.raises(BadArguments):
        leader.call(wid, "sample")  # a replaying workload runs nothing live
    leader.hold(wid).set_replay_mode("off")
    assert leader.call(wid, "samples") == 1


def test_a_workload_with_preopened_directories_cannot_record(hosts, tmp_path):
    leader, _ = hosts
    (tmp_path / "files").mkdir()
    wid = deploy(leader, workloads.load("clockrand"), preopen={"/data": tmp_path / "files"})
    for mode in ("record", "replay"):
        with pytest.raises(ReplayUnsupported):
            leader.hold(wid).set_replay_mode(mode)
    leader.hold(wid).set_replay_mode("off")


def test_replay_writes_no_output_but_the_guest_sees_its_writes_succeed(hosts):
    pair = Pair(*hosts, workloads.load("clockrand"))
    pair.cut()
    written = pair.run("say", [1])
    assert pair.follow() == [written] and written > 0
    assert pair.follower.output(pair.wid) == (b"", b"")
    assert pair.leader.output(pair.wid)[0].startswith(b"clockrand say 1 ")
    pair.follower.hold(pair.wid).set_replay_mode("off")  # promoted: it prints from now on
    pair.follower.call(pair.wid, "say", [2])
    assert pair.follower.output(pair.wid)[0].startswith(b"clockrand say 2 ")


def test_inputs_survive_the_wire_and_malformed_ones_are_refused():
    inputs = CallInputs(3, "f", (1, -2, 0.5), ((0, 1, 2**64 - 1), (2, 3, b"abc"), (3, 7, b"")))
    assert wire(inputs) == inputs
    for bad in [None, [1, "f", []], [-1, "f", [], []], [0, "f", ["x"], []], [0, "f", [], [[9, 0, 0]]],
                [0, "f", [], [[2, 8, 5]]], [0, "f", [], [[0, 1, b"x"]]], [0, "f", [], [[0, 1, -1]]],
                [True, "f", [], []]]:
        with pytest.raises(BadArguments):
            CallInputs.from_wire(bad)


@given(st.builds(
    CallInputs,
    call_index=st.integers(0, 2**63),
    export=st.text(max_size=20),
    args=st.lists(st.one_of(st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=False)), max_size=4).map(tuple),
    entries=st.lists(st.one_of(
        st.tuples(st.sampled_from([0, 1]), st.integers(0, 3), st.integers(0, 2**64 - 1)),
        st.tuples(st.sampled_from([2, 3]), st.integers(0, 2**32 - 1), st.binary(max_size=64))), max_size=20).map(tuple),
))
def test_any_inputs_round_trip_through_msgpack(inputs):
    assert wire(inputs) == inputs


# --- state hash -----------------------------------------------------------

def test_state_hash_follows_state_not_layout(hosts):
    leader, follower = hosts
    wid = deploy(leader, workloads.load("kvstore"))
    empty = leader.hold(wid).state_hash()
    ptr = leader.call(wid, "wm_alloc", [3 * 4096])
    leader.write_memory(wid, ptr, b"x" * 3 * 4096)
    written = leader.hold(wid).state_hash()
    assert written != empty
    leader.write_memory(wid, ptr, bytes(3 * 4096))  # zero pages again: gone from the hash as from a snapshot
    leader.call(wid, "wm_free", [ptr])
    snap = leader.checkpoint(wid)
    follower.add_module(workloads.load("kvstore"))
    follower.restore(leader.info(wid).module_sha256, snap, workload_id=wid)
    assert follower.hold(wid).state_hash() == leader.hold(wid).state_hash()
    leader.call(wid, "wm_alloc", [16])  # the allocator's globals or memory move on
    assert follower.hold(wid).state_hash() != leader.hold(wid).state_hash()


def test_state_hash_sees_dropped_segments(hosts):
    leader, follower = hosts
    wasm = wasmtime.wat2wasm('(module (memory 1) (data "x") (func (export "drop") (data.drop 0)))')
    wid, other = deploy(leader, wasm), deploy(leader, wasm)
    assert leader.hold(wid).state_hash() == leader.hold(other).state_hash()
    leader.call(wid, "drop", [])
    assert leader.hold(wid).state_hash() != leader.hold(other).state_hash()
    follower.add_module(wasm)
    follower.restore(leader.info(wid).module_sha256, leader.checkpoint(wid), workload_id=wid)
    assert follower.hold(wid).state_hash() == leader.hold(wid).state_hash()


@SLOW_TESTS
@given(writes=st.lists(st.tuples(st.integers(0, 60), st.binary(min_size=1, max_size=9000)), min_size=1, max_size=8),
       order=st.randoms(use_true_random=False))
def test_equal_memories_hash_equal_whatever_the_order_of_writes(shared_hosts, writes, order):
    leader, _ = shared_hosts
    a, b = deploy(leader, PROBE), deploy(leader, PROBE)
    base = 65536  # the probe's second page is free
    # Writes to disjoint ranges commute: apply them in two orders.
    placed, end = [], base
    for gap, data in writes:
        placed.append((end + gap, data))
        end += gap + len(data)
    shuffled = list(placed)
    order.shuffle(shuffled)
    for wid, plan in ((a, placed), (b, shuffled)):
        for offset, data in plan:
            leader.write_memory(wid, offset, data)
    assert leader.hold(a).state_hash() == leader.hold(b).state_hash()
    leader.write_memory(b, base, b"\x01")
    assert (leader.hold(a).state_hash() == leader.hold(b).state_hash()) == (leader.read_memory(a, base, 1) == b"\x01")
    leader.remove(a)
    leader.remove(b)


def test_state_hash_sees_globals(hosts):
    leader, _ = hosts
    a, b = deploy(leader, PROBE), deploy(leader, PROBE)
    leader.call(a, "now", [2])  # CPU-time clock: memory unchanged, the call counter global moves
    assert leader.read_memory(a, 0, 16) == leader.read_memory(b, 0, 16)
    assert leader.hold(a).state_hash() != leader.hold(b).state_hash()


# --- the monotonic clock ----------------------------------------------------

def test_monotonic_time_goes_on_across_checkpoint_and_restore(hosts):
    leader, follower = hosts
    wid = deploy(leader, PROBE)
    leader.hold(wid).set_replay_mode("record")  # the clock is the same in every mode
    readings = [leader.call(wid, "now", [1]) for _ in range(5)]
    snap, clock = leader.checkpoint(wid), leader.hold(wid).clock_state()
    assert readings == sorted(readings) and clock >= readings[-1]
    follower.add_module(PROBE)
    follower.restore(leader.info(wid).module_sha256, snap, workload_id=wid, monotonic_ns=clock)
    later = [follower.call(wid, "now", [1]) for _ in range(5)]
    assert later == sorted(later) and later[0] >= clock


def test_monotonic_time_goes_on_across_checkpoint_all_and_restore_all(tmp_path):
    node, ckpt = tmp_path / "node", tmp_path / "ckpt"
    with Host(node, limits=FAST) as host:
        wid = deploy(host, PROBE, workload_id="probe")
        host.restore(host.info(wid).module_sha256, host.checkpoint(wid), workload_id="ahead",
                     monotonic_ns=10**15)  # as if it had run for 11 days elsewhere
        before = {w: host.call(w, "now", [1]) for w in ("probe", "ahead")}
        assert host.checkpoint_all(ckpt).failed == ()
    with Host(node, limits=FAST) as host:
        assert host.restore_all(ckpt).failed == ()
        for w, reading in before.items():
            assert host.call(w, "now", [1]) >= reading


def test_a_follower_clock_goes_on_from_the_last_replayed_reading(hosts):
    leader, follower = hosts
    pair = Pair(leader, follower, PROBE)
    ahead = "ahead"
    leader.restore(pair.sha, leader.checkpoint(pair.wid), workload_id=ahead, monotonic_ns=10**15)
    pair.wid = ahead
    pair.cut()
    pair.clock = 0  # the follower starts from an old clock; the replayed readings carry it forward
    readings = [pair.run("now", [1]) for _ in range(3)]
    pair.follow()
    follower.hold(ahead).set_replay_mode("off")
    assert follower.call(ahead, "now", [1]) >= readings[-1] >= 10**15


@given(steps=st.lists(st.one_of(
    st.tuples(st.just("tick"), st.integers(0, 10**9)),
    st.tuples(st.just("continue"), st.integers(0, 10**12)),
    st.tuples(st.just("read"), st.just(0))), max_size=40))
def test_the_gates_monotonic_clock_never_goes_back(steps):
    now = [5_000_000_000]  # a fake host clock, moved by "tick"
    gate = InputGate("w", monotonic=lambda: now[0])
    assert gate.monotonic_ns() == 0  # a new workload's clock starts at 0
    last, floor = 0, 0
    for op, value in steps:
        if op == "tick":
            now[0] += value
        elif op == "continue":
            gate.continue_from(value)
            floor = max(floor, value)
        else:
            reading = gate.monotonic_ns()
            assert reading >= last and reading >= floor
            last = reading


def test_a_divergence_crosses_the_wire_with_its_details():
    from nodes._error_codes import error_reply

    exc = ReplayDivergence("w", "input 0 differs", call_index=7, position=0)
    reply = error_reply(1, exc)
    assert reply.details == {"workload_id": "w", "call_index": 7, "position": 0}
    assert "replay diverged at call 7" in reply.message
