"""The dual-execution planner, in memory: backlogs, holds and divergences with times passed in."""

import pytest
from hypothesis import given, strategies as st

from migrate._dual_plan import (
    DEFAULT_SWITCH_BACKLOG,
    DualConfig,
    DualOrderError,
    DualPhase,
    DualPlanner,
    DualStep,
)

times = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
holds = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)


def following(switch_backlog: int = DEFAULT_SWITCH_BACKLOG, cut_s: float = 0.002) -> DualPlanner:
    plan = DualPlanner(DualConfig(switch_backlog=switch_backlog))
    plan.cut_taken(held_from_s=10.0, held_until_s=10.0 + cut_s)
    return plan


def test_a_backlog_over_the_limit_is_replayed_with_calls_running():
    plan = following(switch_backlog=32)
    decision = plan.backlog(33)
    assert decision.step is DualStep.REPLAY and decision.entries == 33
    assert plan.phase is DualPhase.FOLLOWING


def test_a_backlog_at_the_limit_switches():
    plan = following(switch_backlog=32)
    decision = plan.backlog(32)
    assert decision.step is DualStep.SWITCH and decision.entries == 32
    assert plan.phase is DualPhase.SWITCHING


def test_an_empty_log_switches_at_once():
    plan = following()
    assert plan.backlog(0).step is DualStep.SWITCH


@given(limit=st.integers(min_value=0, max_value=100),
       backlogs=st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=30))
def test_replays_while_over_the_limit_then_switches_once(limit, backlogs):
    """Fed the backlogs a flow drains in turn, it replays each over the limit and switches at the first within."""
    plan = following(switch_backlog=limit)
    replayed = 0
    for waiting in backlogs:
        decision = plan.backlog(waiting)
        if waiting > limit:
            assert decision.step is DualStep.REPLAY
            plan.replayed(waiting)
            replayed += waiting
            continue
        assert decision.step is DualStep.SWITCH
        with pytest.raises(DualOrderError):
            plan.backlog(waiting)  # one switch: no more backlogs once it began
        break
    else:
        assert plan.phase is DualPhase.FOLLOWING  # every backlog was over the limit
    assert plan.forwarded == replayed


@given(cut_from=times, cut_hold=holds, switch_from=times, switch_hold=holds, committed=st.booleans())
def test_the_blackout_is_the_longer_hold(cut_from, cut_hold, switch_from, switch_hold, committed):
    plan = DualPlanner()
    # The holds as the clock readings carry them: (from + hold) - from, which
    # differs from ``hold`` in the last bits when ``from`` is large.
    cut_held, switch_held = (cut_from + cut_hold) - cut_from, (switch_from + switch_hold) - switch_from
    plan.cut_taken(held_from_s=cut_from, held_until_s=cut_from + cut_hold)
    assert plan.blackout_s == cut_held
    assert plan.backlog(0).step is DualStep.SWITCH
    plan.switch_ended(held_from_s=switch_from, held_until_s=switch_from + switch_hold, committed=committed)
    assert plan.blackout_s == max(cut_held, switch_held)
    assert plan.phase is (DualPhase.COMMITTED if committed else DualPhase.SWITCH_FAILED)


@given(at_switch=st.integers(min_value=0, max_value=32), before=st.lists(st.integers(33, 500), max_size=5))
def test_the_switch_replays_count_towards_the_forwarded_calls(at_switch, before):
    plan = following(switch_backlog=32)
    for waiting in before:
        assert plan.backlog(waiting).step is DualStep.REPLAY
        plan.replayed(waiting)
    assert plan.backlog(at_switch).step is DualStep.SWITCH
    plan.replayed(at_switch + 3)  # what arrived while the switch took the lock
    assert plan.forwarded == sum(before) + at_switch + 3


@pytest.mark.parametrize("reach", ["following", "switching", "switch_failed"])
def test_a_divergence_before_the_commit_falls_back(reach):
    plan = following()
    if reach != "following":
        plan.backlog(0)
    if reach == "switch_failed":
        plan.switch_ended(held_from_s=1.0, held_until_s=1.5, committed=False)
    decision = plan.diverged()
    assert decision.step is DualStep.FALL_BACK
    assert plan.phase is DualPhase.FELL_BACK


def test_no_divergence_before_the_cut_or_after_the_commit():
    with pytest.raises(DualOrderError):
        DualPlanner().diverged()
    plan = following()
    plan.backlog(0)
    plan.switch_ended(held_from_s=1.0, held_until_s=1.1, committed=True)
    with pytest.raises(DualOrderError):
        plan.diverged()


def test_steps_out_of_order_are_refused():
    plan = DualPlanner()
    with pytest.raises(DualOrderError):
        plan.backlog(1)  # no cut yet
    with pytest.raises(DualOrderError):
        plan.replayed(1)
    with pytest.raises(DualOrderError):
        plan.switch_ended(held_from_s=0.0, held_until_s=1.0, committed=True)
    plan.cut_taken(held_from_s=0.0, held_until_s=0.001)
    with pytest.raises(DualOrderError):
        plan.cut_taken(held_from_s=0.0, held_until_s=0.001)  # one cut
    with pytest.raises(DualOrderError):
        plan.switch_ended(held_from_s=0.0, held_until_s=1.0, committed=True)  # no switch began
    with pytest.raises(ValueError):
        plan.replayed(-1)


@given(arrivals_per_round_trip=st.integers(min_value=0, max_value=32),
       replay_per_round_trip=st.integers(min_value=1, max_value=400),
       start_backlog=st.integers(min_value=0, max_value=5000))
def test_a_link_that_outpaces_the_calls_reaches_the_switch(arrivals_per_round_trip, replay_per_round_trip,
                                                           start_backlog):
    """Model: each replay round trip takes up to what the link carries, and calls keep arriving meanwhile.

    When at most ``switch_backlog`` calls arrive per round trip and the
    target replays more than arrive, the backlog shrinks to the limit and
    the planner switches, within the rounds the margin allows.
    """
    plan = following(switch_backlog=32)
    backlog, rounds = start_backlog, 0
    while plan.backlog(backlog).step is DualStep.REPLAY:
        rounds += 1
        sent = min(backlog, replay_per_round_trip)
        plan.replayed(sent)
        backlog = backlog - sent + arrivals_per_round_trip
        if arrivals_per_round_trip >= replay_per_round_trip and rounds > start_backlog + 2:
            return  # the log grows as fast as it is replayed: no switch to plan
    assert backlog <= 32 and plan.phase is DualPhase.SWITCHING
    if arrivals_per_round_trip < replay_per_round_trip:
        assert rounds <= start_backlog // (replay_per_round_trip - arrivals_per_round_trip) + 2
