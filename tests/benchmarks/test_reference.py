"""The CPU reference of a move: /proc/stat arithmetic, the window's sizing, and real burner processes.

Nothing here asserts a time: the burners are checked by the CPU their
children used (more than none) and the window by its arithmetic.
"""

import resource

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.suite._reference import (MAX_WINDOW_S, CpuReference, burn, busy_fraction, cpus, read_cpu_counters,
                                         reference_for)

counters = st.lists(st.integers(0, 10**9), min_size=10, max_size=10)


def test_the_machine_counters_are_read_and_only_grow():
    first = read_cpu_counters()
    sum(range(200_000))  # some CPU time to count
    second = read_cpu_counters()
    assert len(first) == len(second) >= 8
    assert all(b >= a for a, b in zip(first, second))
    assert 0 <= busy_fraction(first, second) <= 1


@given(counters, counters)
def test_busy_is_everything_but_idle_and_iowait_over_the_time_that_passed(start, step):
    after = [a + d for a, d in zip(start, step)]
    got = busy_fraction(start, after)
    total = sum(step[:8])
    assert got == (0.0 if total == 0 else (total - step[3] - step[4]) / total)
    assert 0 <= got <= 1


def test_busy_refuses_readings_that_do_not_pair():
    with pytest.raises(ValueError):
        busy_fraction((1, 2, 3, 4, 5), (1, 2, 3, 4))
    with pytest.raises(ValueError):
        busy_fraction((5, 5, 5, 5, 5), (4, 5, 5, 5, 5))


@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 100), st.integers(1, 64))
def test_the_reference_burns_what_the_move_added_for_as_long_as_it_ran(steady, move, seconds, n):
    ref = reference_for(steady, move, seconds, n)
    assert ref.processes == n and ref.steady_busy == steady and ref.move_busy == move
    assert ref.duty == round(max(0.0, move - steady), 3)
    assert ref.seconds == min(seconds, MAX_WINDOW_S)


@pytest.mark.parametrize("args", [(-0.1, 0.5, 1, 2), (0.1, 1.5, 1, 2), (0.1, 0.5, -1, 2), (0.1, 0.5, 1, 0)])
def test_the_reference_refuses_impossible_figures(args):
    with pytest.raises(ValueError):
        reference_for(*args)


async def test_burners_are_real_processes_that_use_the_cpu_and_the_window_follows_the_reference():
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    ref = CpuReference(processes=cpus(), duty=0.5, seconds=0.3, steady_busy=0.1, move_busy=0.6)
    start, end = await burn(ref)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert end - start == pytest.approx(ref.seconds)
    assert trio.current_time() >= end  # burn returns once the burners have exited
    assert after.ru_utime > before.ru_utime  # they ran, busy, in other processes


async def test_a_move_that_added_no_cpu_gets_an_idle_window_of_its_length():
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start, end = await burn(CpuReference(processes=2, duty=0.0, seconds=0.05, steady_busy=0.5, move_busy=0.4))
    assert end - start == pytest.approx(0.05) and trio.current_time() >= end
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime == before.ru_utime  # nothing started
