"""The pre-copy planner, in memory with a fake clock."""

from hypothesis import given, strategies as st

from migrate import Action, PrecopyConfig, PrecopyPlanner

PAGE = 4096


def simulate(memory_pages: int, dirty_pps: float, link_bps: float, config: PrecopyConfig, rtt_s: float = 0.001):
    """Run a migration against a model workload and link; return (decisions, final blackout)."""
    planner = PrecopyPlanner(config, rtt_s=rtt_s)
    now = 0.0
    planner.start(now)
    to_send = memory_pages
    decisions = []
    while True:
        duration = to_send * PAGE / link_bps
        now += duration
        # The workload dirties pages while the round is on the wire, slowed by the throttle.
        dirtied = min(memory_pages, int(dirty_pps * (1 - planner.throttle) * duration))
        d = planner.round_sent(pages=to_send, wire_bytes=to_send * PAGE, duration_s=duration,
                               dirty_after=dirtied, now=now)
        decisions.append(d)
        if d.action is Action.STOP_AND_COPY:
            return decisions, dirtied * PAGE / link_bps + rtt_s
        to_send = dirtied


def test_idle_workload_stops_after_the_first_round():
    decisions, blackout = simulate(65536, 0, 125e6, PrecopyConfig())
    assert len(decisions) == 1 and decisions[0].reason == "fits the downtime budget"
    assert blackout <= 0.03


def test_moderate_dirtying_converges_within_budget_without_throttle():
    decisions, blackout = simulate(65536, 2000, 125e6, PrecopyConfig(downtime_budget_s=0.03))
    assert decisions[-1].action is Action.STOP_AND_COPY
    assert blackout <= 0.03
    assert all(d.throttle == 0 for d in decisions)


def test_dirtying_faster_than_the_link_is_throttled_until_it_converges():
    # 100k pages/s dirtied against a 100 Mbit/s link (about 3k pages/s).
    decisions, blackout = simulate(65536, 100_000, 12.5e6, PrecopyConfig(downtime_budget_s=0.05))
    throttles = [d.throttle for d in decisions]
    assert max(throttles) > 0, "auto-converge never kicked in"
    assert throttles == sorted(throttles), "throttle only ever increases"
    assert decisions[-1].action is Action.STOP_AND_COPY


@given(memory_pages=st.integers(1, 200_000), dirty_pps=st.floats(0, 1e7), link_bps=st.floats(1e5, 1e10),
       budget=st.floats(0.001, 1.0), max_rounds=st.integers(1, 40))
def test_every_migration_converges_within_the_round_limit(memory_pages, dirty_pps, link_bps, budget, max_rounds):
    config = PrecopyConfig(downtime_budget_s=budget, max_rounds=max_rounds)
    decisions, _ = simulate(memory_pages, dirty_pps, link_bps, config)
    assert len(decisions) <= max_rounds
    assert decisions[-1].action is Action.STOP_AND_COPY
    assert all(d.action is Action.SEND_ROUND for d in decisions[:-1])


def test_expected_blackout_uses_measured_throughput_and_rtt():
    planner = PrecopyPlanner(PrecopyConfig(), rtt_s=0.005)
    assert planner.expected_blackout_s(0) == 0.005
    planner.round_sent(pages=1000, wire_bytes=1000 * 1024, duration_s=0.1, dirty_after=500, now=0.1)
    # 1 KiB per page after compression at 10 MiB/s: 500 pages take 0.05 s, plus the RTT.
    assert abs(planner.expected_blackout_s(500) - (500 * 1024 / (1000 * 1024 / 0.1) + 0.005)) < 1e-9
