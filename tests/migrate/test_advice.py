"""The offload model (pure), on fixed inputs: stay local, offload, and autoplace's hysteresis."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migrate import Work
from migrate._advice import MARGIN, MOVE_ROUND_TRIPS, Autoplace, Candidate, Estimate, advise, estimate

MiB = 2**20
LOCAL = Candidate("local", rtt_s=0.0002, throughput_bytes_per_s=None, speed_units_per_s=100.0, cores=4, here=True)


def test_a_tiny_workload_over_a_slow_link_stays_local():
    slow_edge = Candidate("edge-1", rtt_s=0.080, throughput_bytes_per_s=1 * MiB / 8,  # 1 Mbit/s
                          speed_units_per_s=400.0, cores=8)
    advice = advise(LOCAL, [slow_edge], Work(units=5, calls=20), state_bytes=2 * MiB)
    assert advice.decision == "local"
    assert advice.reason.startswith("stay local")
    # the edge computes faster, but the 2 MiB state takes 16 s over the link and 20 calls 1.6 s
    edge = advice.estimates["edge-1"]
    assert edge.transfer_s == pytest.approx(16 + MOVE_ROUND_TRIPS * 0.080)
    assert edge.calls_s == pytest.approx(1.6)
    assert edge.compute_s == pytest.approx(5 / 400)
    assert advice.estimates["local"] == Estimate(transfer_s=0.0, calls_s=20 * 0.0002, compute_s=5 / 100)


def test_a_heavy_workload_and_a_fast_idle_edge_offload():
    fast_edge = Candidate("edge-1", rtt_s=0.002, throughput_bytes_per_s=100 * MiB, speed_units_per_s=800.0,
                          load=0.0, cores=16)
    busy_cloud = Candidate("cloud-1", rtt_s=0.030, throughput_bytes_per_s=50 * MiB, speed_units_per_s=800.0,
                           load=15.0, cores=16)
    advice = advise(LOCAL, [busy_cloud, fast_edge], Work(units=20_000, calls=50), state_bytes=64 * MiB)
    assert advice.decision == "edge-1"
    assert advice.reason.startswith("offload to edge-1")
    assert advice.estimates["local"].total_s == pytest.approx(200 + 50 * 0.0002)
    assert advice.estimates["edge-1"].total_s == pytest.approx(0.64 + 3 * 0.002 + 50 * 0.002 + 25)
    # the loaded cloud gets 1/16 of its cores: 20,000 / (800 / 16) = 400 s
    assert advice.estimates["cloud-1"].compute_s == pytest.approx(400)


def test_a_node_must_beat_local_by_the_margin():
    just_better = Candidate("edge-1", rtt_s=0.0, throughput_bytes_per_s=math.inf, speed_units_per_s=100 / (1 - MARGIN / 2))
    assert advise(LOCAL, [just_better], Work(units=100, calls=0), state_bytes=0).decision == "local"
    clearly = Candidate("edge-1", rtt_s=0.0, throughput_bytes_per_s=math.inf, speed_units_per_s=200.0)
    assert advise(LOCAL, [clearly], Work(units=100, calls=0), state_bytes=0).decision == "edge-1"
    assert advise(LOCAL, [], Work(units=100), state_bytes=0).reason == "stay local: no other node to run on"


def test_a_node_with_no_measured_link_cannot_take_state():
    unknown = Candidate("edge-1", rtt_s=0.001, throughput_bytes_per_s=None, speed_units_per_s=1e6)
    assert estimate(unknown, Work(units=1), state_bytes=1).transfer_s == math.inf
    assert advise(LOCAL, [unknown], Work(units=1e6), state_bytes=1).decision == "local"


def test_bad_work_is_refused():
    with pytest.raises(ValueError):
        Work(units=-1)
    with pytest.raises(ValueError):
        Work(units=1, calls=-1)


def est(total):
    return Estimate(transfer_s=0.0, calls_s=0.0, compute_s=total)


def test_autoplace_moves_only_after_the_gain_holds_twice_in_a_row():
    auto = Autoplace(move_gain=0.3, confirm=2)
    assert auto.step("local", {"local": est(10), "edge-1": est(5)}) is None  # first sighting
    assert auto.step("local", {"local": est(10), "edge-1": est(8)}) is None  # gain 20 %: under 30 %, reset
    assert auto.step("local", {"local": est(10), "edge-1": est(5)}) is None  # first again
    assert auto.step("local", {"local": est(10), "edge-1": est(5)}) == "edge-1"
    # once there, flickering around the threshold does not bounce it back
    for local_total in (4.0, 3.6, 4.0, 3.6):
        assert auto.step("edge-1", {"local": est(local_total), "edge-1": est(5)}) is None
    # a best node that changes between evaluations restarts the count
    assert auto.step("edge-1", {"edge-1": est(10), "a": est(1), "b": est(2)}) is None
    assert auto.step("edge-1", {"edge-1": est(10), "a": est(2), "b": est(1)}) is None
    assert auto.step("edge-1", {"edge-1": est(10), "a": est(2), "b": est(1)}) == "b"


@given(st.floats(0, 1e6), st.integers(0, 10_000), st.integers(0, 2**34),
       st.lists(st.tuples(st.floats(0, 1), st.floats(1, 1e10), st.floats(0.1, 1e4), st.floats(0, 64)), max_size=5))
def test_the_decision_is_local_or_the_fastest_node_and_beats_local_by_the_margin(units, calls, state, params):
    nodes = [Candidate(f"n{i}", rtt_s=r, throughput_bytes_per_s=t, speed_units_per_s=s, load=load, cores=4)
             for i, (r, t, s, load) in enumerate(params)]
    advice = advise(LOCAL, nodes, Work(units=units, calls=calls), state)
    local = advice.estimates["local"].total_s
    if advice.decision != "local":
        chosen = advice.estimates[advice.decision].total_s
        assert chosen < local * (1 - MARGIN)
        assert chosen == min(advice.estimates[n.name].total_s for n in nodes)
    else:
        assert all(not advice.estimates[n.name].total_s < local * (1 - MARGIN) for n in nodes)
