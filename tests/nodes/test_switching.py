"""The short switch interval of ``move_work`` blocks, nested and overlapping, and its end on an error."""

import sys

import pytest

from nodes import _switching, move_work


def test_move_work_shortens_the_interval_for_its_block_and_restores_it_even_on_error():
    before = sys.getswitchinterval()
    short = min(before, _switching.MOVING_SWITCH_INTERVAL_S)
    with move_work():
        assert sys.getswitchinterval() == pytest.approx(short, abs=2e-6)  # kept in whole microseconds
        with move_work():  # a second round decoding at once
            assert _switching.moves_in_flight() == 2
        assert sys.getswitchinterval() == pytest.approx(short, abs=2e-6)  # kept in whole microseconds
    assert sys.getswitchinterval() == before
    with pytest.raises(ZeroDivisionError), move_work():
        1 / 0
    assert sys.getswitchinterval() == before
    assert _switching.moves_in_flight() == 0
