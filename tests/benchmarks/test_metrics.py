"""The suite's pure computations: blackout from a call timeline, latency percentiles, the physical floor."""

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.suite import (CallSample, client_blackout, latency_stats, percentile, physical_floor)
from benchmarks.suite._metrics import calls_during, ratio


def stream(period_s: float, n: int, *, missing: range = range(0), latency_s: float = 0.0005) -> list[CallSample]:
    """Calls completing every ``period_s``, except the indices in ``missing``."""
    return [CallSample(i * period_s - latency_s, i * period_s) for i in range(n) if i not in missing]


def test_an_undisturbed_stream_has_no_blackout():
    calls = stream(0.002, 500)
    got = client_blackout(calls, 0.3, 0.6)
    assert got.largest_gap_s == pytest.approx(0.002)
    assert got.steady_gap_s == pytest.approx(0.002)
    assert got.blackout_s == pytest.approx(0.0, abs=1e-12)


def test_a_hole_in_the_stream_is_the_blackout():
    # Completions 200..249 never happen: one gap of 51 periods, 50 beyond the steady one.
    got = client_blackout(stream(0.002, 500, missing=range(200, 250)), 0.39, 0.41)
    assert got.largest_gap_s == pytest.approx(51 * 0.002)
    assert got.blackout_s == pytest.approx(50 * 0.002)
    assert got.largest_gap_started_s == pytest.approx(199 * 0.002 - 0.39)  # before the move began


def test_the_handover_is_the_gap_from_the_sources_last_call_to_the_targets_first():
    # A stall early in the move (calls 150..179 missing, all on the source) is the largest gap;
    # the switch is the 11-period gap from call 299 (source) to call 310 (target).
    calls = [CallSample(c.started_s, c.finished_s, "edge-1" if i < 300 else "cloud-1")
             for i, c in enumerate(stream(0.002, 500)) if not (150 <= i < 180 or 300 <= i < 310)]
    got = client_blackout(calls, 0.25, 0.7, source="edge-1", target="cloud-1")
    assert got.blackout_s == pytest.approx(30 * 0.002)
    assert got.handover_s == pytest.approx(11 * 0.002)  # the raw gap, as a node's report measures it
    assert client_blackout(calls, 0.25, 0.7).handover_s is None  # nodes not named
    only_source = [CallSample(c.started_s, c.finished_s, "edge-1") for c in stream(0.002, 100)]
    assert client_blackout(only_source, 0.05, 0.1, source="edge-1", target="cloud-1").handover_s is None


def test_a_slower_stream_after_the_move_is_not_blackout():
    before = [CallSample(i * 0.002 - 0.001, i * 0.002) for i in range(100)]  # up to 0.198
    after = [CallSample(0.3 + i * 0.035 - 0.03, 0.3 + i * 0.035) for i in range(20)]
    got = client_blackout(before + after, 0.2, 0.25)
    assert got.steady_gap_s == pytest.approx(0.035)
    assert got.largest_gap_s == pytest.approx(0.3 - 0.198)
    assert got.blackout_s == pytest.approx(0.3 - 0.198 - 0.035)


def test_gaps_are_counted_only_when_they_overlap_the_move():
    calls = stream(0.01, 100, missing=range(10, 20))  # a hole long before the move
    assert client_blackout(calls, 0.7, 0.8).blackout_s == pytest.approx(0.0, abs=1e-12)


def test_no_calls_around_the_move_means_no_gap():
    assert client_blackout([], 1.0, 2.0).largest_gap_s == 0.0
    assert client_blackout([], 1.0, 2.0).largest_gap_started_s is None
    assert client_blackout(stream(0.01, 10), 5.0, 6.0).blackout_s == 0.0


def test_a_move_cannot_end_before_it_starts():
    with pytest.raises(ValueError):
        client_blackout(stream(0.01, 10), 2.0, 1.0)


@given(period=st.floats(1e-4, 0.05), n=st.integers(20, 300), data=st.data())
def test_a_hole_of_k_calls_costs_k_periods(period, n, data):
    start = data.draw(st.integers(5, n - 10))
    k = data.draw(st.integers(1, n - start - 5))
    calls = stream(period, n, missing=range(start, start + k))
    # The move spans the hole.
    got = client_blackout(calls, (start - 0.5) * period, (start + k - 0.5) * period)
    assert got.blackout_s == pytest.approx(k * period, rel=1e-6)


@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 1)), max_size=60),
       st.floats(0, 100), st.floats(0, 10), st.randoms())
def test_blackout_is_never_negative_and_ignores_order(raw, start, length, rnd):
    calls = [CallSample(t, t + d) for t, d in raw]
    got = client_blackout(calls, start, start + length)
    assert got.blackout_s >= 0
    assert got.blackout_s == pytest.approx(max(0.0, got.largest_gap_s - got.steady_gap_s), abs=1e-12)
    shuffled = calls[:]
    rnd.shuffle(shuffled)
    assert client_blackout(shuffled, start, start + length) == got


def test_calls_during_are_those_in_flight_during_the_move():
    calls = [CallSample(0.0, 1.0), CallSample(1.5, 2.5), CallSample(2.6, 2.7), CallSample(4.0, 5.0)]
    assert calls_during(calls, 2.0, 3.0) == calls[1:3]


@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=200))
def test_percentiles_are_ordered_values_of_the_sample(values):
    stats = latency_stats(values)
    assert stats.count == len(values)
    assert stats.p50_s in values and stats.p99_s in values
    assert min(values) <= stats.p50_s <= stats.p99_s <= stats.max_s == max(values)


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    random.Random(1).shuffle(values)
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert latency_stats([]) is None
    with pytest.raises(ValueError):
        percentile([], 0.5)
    with pytest.raises(ValueError):
        percentile([1.0], 0.0)


def test_the_floor_is_final_dirty_bytes_over_bandwidth_plus_one_rtt():
    # 1,000 pages/s for a 30 ms round trip: 30 pages must cross a 100 Mbit/s link.
    floor = physical_floor(dirty_bytes_per_s=1000 * 4096, rtt_s=0.03, bandwidth_bytes_per_s=100e6 / 8)
    assert floor.final_dirty_bytes == pytest.approx(30 * 4096)
    assert floor.floor_s == pytest.approx(30 * 4096 / 12.5e6 + 0.03)


@given(dirty=st.floats(0, 1e10), rtt=st.floats(0, 1), bandwidth=st.floats(1e3, 1e11), more=st.floats(0, 1e10))
def test_the_floor_grows_with_the_dirty_rate_and_never_beats_one_rtt(dirty, rtt, bandwidth, more):
    floor = physical_floor(dirty_bytes_per_s=dirty, rtt_s=rtt, bandwidth_bytes_per_s=bandwidth)
    assert floor.floor_s >= rtt
    assert math.isclose(floor.floor_s, floor.final_dirty_bytes / bandwidth + rtt, rel_tol=1e-9)
    faster = physical_floor(dirty_bytes_per_s=dirty + more, rtt_s=rtt, bandwidth_bytes_per_s=bandwidth)
    assert faster.floor_s >= floor.floor_s


def test_the_floor_refuses_impossible_links():
    with pytest.raises(ValueError):
        physical_floor(dirty_bytes_per_s=1, rtt_s=0.01, bandwidth_bytes_per_s=0)
    with pytest.raises(ValueError):
        physical_floor(dirty_bytes_per_s=-1, rtt_s=0.01, bandwidth_bytes_per_s=1)


def test_ratio_is_none_without_a_positive_reference():
    assert ratio(3.0, 1.5) == 2.0
    assert ratio(None, 1.0) is None and ratio(1.0, 0.0) is None and ratio(1.0, None) is None
