"""Call arguments: in-range values reach the guest exactly, out-of-range ones are refused and change nothing."""

from __future__ import annotations

import math
import struct

import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes import BadArguments, Host, check_call_args
from nodes._messages import Call

# Identity exports, and "bits" exports that return a float parameter's bits as
# an integer; every call adds one to the global "seen", which "seen" returns.
IDENTITY = wasmtime.wat2wasm("""
(module
  (global $seen (mut i64) (i64.const 0))
  (func $tick (global.set $seen (i64.add (global.get $seen) (i64.const 1))))
  (func (export "seen") (result i64) (global.get $seen))
  (func (export "i32") (param i32) (result i32) (call $tick) (local.get 0))
  (func (export "i64") (param i64) (result i64) (call $tick) (local.get 0))
  (func (export "f32") (param f32) (result f32) (call $tick) (local.get 0))
  (func (export "f64") (param f64) (result f64) (call $tick) (local.get 0))
  (func (export "f32_bits") (param f32) (result i32) (call $tick) (i32.reinterpret_f32 (local.get 0)))
  (func (export "f64_bits") (param f64) (result i64) (call $tick) (i64.reinterpret_f64 (local.get 0)))
  (func (export "pair") (param i32 f64) (result f64) (call $tick) (local.get 1)))
""")
RANGE = {"i32": (-(2**31), 2**32 - 1), "i64": (-(2**63), 2**64 - 1)}
FITTING = st.sampled_from(["i32", "i64"]).flatmap(lambda ty: st.tuples(st.just(ty), st.integers(*RANGE[ty])))
OUTSIDE = st.sampled_from(["i32", "i64"]).flatmap(lambda ty: st.tuples(st.just(ty), st.one_of(
    st.integers(max_value=RANGE[ty][0] - 1), st.integers(min_value=RANGE[ty][1] + 1))))
F32_MAX = struct.unpack("<f", struct.pack("<I", 0x7F7FFFFF))[0]
F32_ROUNDS_TO_INF = 2.0**128 - 2.0**103  # F32_MAX plus half its ulp: from here on, rounding gives infinity
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    with Host(tmp_path_factory.mktemp("host")) as host:
        yield host, host.deploy(host.add_module(IDENTITY), workload_id="identity").workload_id


def signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def bits64(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


@PROPERTY
@given(case=FITTING)
def test_every_integer_in_range_reaches_the_guest_exactly(identity, case):
    host, wid = identity
    ty, value = case
    bits = 32 if ty == "i32" else 64
    assert host.call(wid, ty, [value]) == signed(value, bits)  # the same bits, read back signed


@PROPERTY
@given(case=OUTSIDE)
def test_every_integer_out_of_range_is_refused_and_changes_nothing(identity, case):
    host, wid = identity
    ty, value = case
    before = (host.call(wid, "seen"), host.info(wid).calls)
    with pytest.raises(BadArguments, match=f"does not fit in {ty}"):
        host.call(wid, ty, [value])
    assert (host.call(wid, "seen"), host.info(wid).calls) == (before[0], before[1] + 1)  # only "seen" ran


@PROPERTY
@given(x=st.floats(allow_nan=True, allow_infinity=True) | st.integers(0, 2**64 - 1).map(
    lambda b: struct.unpack("<d", struct.pack("<Q", b))[0]))
def test_every_f64_reaches_the_guest_bit_for_bit_nan_payloads_included(identity, x):
    host, wid = identity
    assert host.call(wid, "f64_bits", [x]) == signed(bits64(x), 64)
    assert bits64(host.call(wid, "f64", [x])) == bits64(x)


@PROPERTY
@given(x=st.floats(width=32, allow_nan=False))
def test_every_f32_value_round_trips_exactly(identity, x):
    host, wid = identity
    assert host.call(wid, "f32", [x]) == x
    assert host.call(wid, "f32_bits", [x]) == signed(struct.unpack("<I", struct.pack("<f", x))[0], 32)


@PROPERTY
@given(payload=st.integers(1, 2**22 - 1), sign=st.sampled_from([0, 1 << 31]))
def test_quiet_f32_nan_payloads_survive(identity, payload, sign):
    host, wid = identity
    nan_bits = sign | 0x7FC00000 | payload
    x = struct.unpack("<f", struct.pack("<I", nan_bits))[0]
    assert host.call(wid, "f32_bits", [x]) == signed(nan_bits, 32)


@PROPERTY
@given(x=st.floats(min_value=F32_ROUNDS_TO_INF, allow_infinity=False) | st.floats(
    max_value=-F32_ROUNDS_TO_INF, allow_infinity=False))
def test_a_finite_value_beyond_f32_is_refused_not_turned_into_infinity(identity, x):
    host, wid = identity
    with pytest.raises(BadArguments, match="does not fit in f32"):
        host.call(wid, "f32", [x])
    just_under = math.nextafter(F32_ROUNDS_TO_INF, 0)
    assert host.call(wid, "f32", [just_under]) == F32_MAX and host.call(wid, "f32", [-math.inf]) == -math.inf


@PROPERTY
@given(n=st.integers(-(2**70), 2**70))
def test_an_int_for_a_float_parameter_must_convert_exactly(identity, n):
    host, wid = identity
    for ty in ("f32", "f64"):
        exact = float(n) == n and (ty == "f64" or struct.unpack("<f", struct.pack("<f", float(n)))[0] == n)
        if exact:
            assert host.call(wid, ty, [n]) == n
        else:
            with pytest.raises(BadArguments, match=f"does not fit in {ty}"):
                host.call(wid, ty, [n])


def test_wrong_types_and_counts_are_refused(identity):
    host, wid = identity
    seen = host.call(wid, "seen")
    for export, args, match in (("i32", [True], "must be a number"), ("i32", ["1"], "must be a number"),
                                ("i32", [None], "must be a number"), ("i32", [1.0], "got a float"),
                                ("i32", [], "takes 1 arguments, got 0"), ("pair", [1], "takes 2 arguments"),
                                ("pair", [1, 2.0, 3], "takes 2 arguments, got 3"), ("i64", "1", "sequence")):
        with pytest.raises(BadArguments, match=match):
            host.call(wid, export, args)
    assert host.call(wid, "seen") == seen
    assert host.call(wid, "pair", [2**32 - 1, 2]) == 2.0


@given(value=st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=True))
def test_the_client_check_passes_anything_some_export_could_take(value):
    assert check_call_args([value]) == (value,) or math.isnan(value)


@given(value=st.integers(max_value=-(2**63) - 1) | st.integers(min_value=2**64))
def test_the_client_check_refuses_an_int_no_export_could_take(value):
    with pytest.raises(ValueError, match="does not fit in any wasm integer type"):
        check_call_args([1, value])


def test_the_client_check_refuses_what_is_no_number():
    for bad in ([True], [None], ["1"], [b"1"], [[1]], "12", 12, None):
        with pytest.raises(TypeError):
            check_call_args(bad)


async def test_a_real_node_refuses_what_an_export_cannot_take_with_bad_arguments(node_procs, cluster_tls):
    """Over the wire: the client's own check first; past it (a raw Call), the node's."""
    node = node_procs.start("edge-1", "edge")
    async with await node.client(cluster_tls.app) as client:
        wid = (await client.deploy(IDENTITY, workload_id="identity")).workload_id
        for ty, (low, high) in RANGE.items():
            bits = 32 if ty == "i32" else 64
            assert [await client.call(wid, ty, v) for v in (low, -1, high)] == [low, -1, signed(high, bits)]
        with pytest.raises(TypeError):
            await client.call(wid, "i32", True)
        with pytest.raises(ValueError, match="any wasm integer type"):
            await client.call(wid, "i64", 2**64)
        for export, args, match in (("i32", (2**32,), "does not fit in i32"),
                                    ("i32", (-(2**31) - 1,), "does not fit in i32"),
                                    ("f32", (1e39,), "does not fit in f32"), ("i32", (1.5,), "got a float"),
                                    ("pair", (1,), "takes 2 arguments")):
            with pytest.raises(BadArguments, match=match) as refused:
                await client.request(Call, workload=wid, export=export, args=args)
            assert isinstance(refused.value, ValueError)
        assert await client.call(wid, "seen") == 6  # the six good calls above; no refused one ran
        nan = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000ABC))[0]
        assert bits64(await client.call(wid, "f64", nan)) == 0x7FF0000000000ABC
