"""The soak's and crash matrix's verdicts: what counts as lost and as duplicated."""

from benchmarks.loads import MemoryCheck, check_counter


def test_every_value_once_is_exact():
    check = check_counter([3, 1, 2, 4], final=4)
    assert check.exact and check.lost == 0 and check.duplicated == 0 and check.calls == 4


def test_a_call_that_ran_twice_leaves_a_value_nobody_received():
    # The first execution's answer was lost, the retry ran again and answered 3.
    check = check_counter([1, 3, 4], final=4)
    assert check.duplicated == 1 and check.lost == 0 and not check.exact


def test_a_call_whose_effect_vanished_makes_a_value_come_back():
    # State rolled back after 2: the next call answered 2 again.
    check = check_counter([1, 2, 2, 3], final=3)
    assert check.lost == 1 and check.duplicated == 0 and not check.exact


def test_results_above_the_final_value_are_lost_effects():
    check = check_counter([1, 2, 3], final=2)
    assert check.lost == 1 and not check.exact


def test_a_call_that_raised_is_lost():
    check = check_counter([1, 2], final=2, errors=1)
    assert check.lost == 1 and check.calls == 3 and not check.exact


def test_memory_is_exact_only_without_errors_and_differences():
    assert MemoryCheck(writes=5, reads=1, errors=0, mismatched_reads=0, mismatched_bytes=0).exact
    assert not MemoryCheck(writes=5, reads=1, errors=0, mismatched_reads=0, mismatched_bytes=1).exact
    assert not MemoryCheck(writes=5, reads=1, errors=0, mismatched_reads=1, mismatched_bytes=0).exact
    assert not MemoryCheck(writes=5, reads=1, errors=1, mismatched_reads=0, mismatched_bytes=0).exact
