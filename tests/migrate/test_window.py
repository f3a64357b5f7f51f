"""SendWindow: the pieces in flight follow the link's bandwidth-delay product, within the receiver's limits.

A small simulated link (its own clock, no I/O): the link serializes pieces
at ``rate`` bytes/s and answers each ``delay`` s after it crossed.
"""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrate._window import GAIN, SendWindow, max_pieces

PIECE = 2**20


def simulate(window: SendWindow, *, rate: float, delay: float, pieces: int) -> list[int]:
    """Stream ``pieces`` through the simulated link, keeping ``window.pieces`` unanswered; the windows seen."""
    now, link_free = 0.0, 0.0
    due: list[float] = []  # reply times of the unanswered pieces, in order
    seen = []
    for i in range(pieces):
        while len(due) >= window.pieces:
            now = max(now, due.pop(0))
            window.answered(now)
            seen.append(window.pieces)
        link_free = max(now, link_free) + PIECE / rate
        due.append(link_free + delay)
        window.sent(now, PIECE)
    while due:
        now = max(now, due.pop(0))
        window.answered(now, more=False)
        seen.append(window.pieces)
    return seen


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(1e6, 1e10), delay=st.floats(1e-5, 0.5), top=st.integers(1, 64), initial=st.integers(1, 16),
       pieces=st.integers(1, 400))
def test_window_stays_within_its_bounds(rate, delay, top, initial, pieces):
    window = SendWindow(PIECE, initial=initial, max_pieces=top)
    seen = simulate(window, rate=rate, delay=delay, pieces=pieces)
    assert all(min(initial, top) <= w <= top for w in seen)
    assert window.unanswered == 0


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(1e6, 1e10), delay=st.floats(1e-4, 0.5), top=st.integers(8, 64))
def test_a_long_stream_keeps_the_link_busy(rate, delay, top):
    """After enough pieces the window covers the bandwidth-delay product (up to the receiver's limit)."""
    window = SendWindow(PIECE, initial=2, max_pieces=top)
    simulate(window, rate=rate, delay=delay, pieces=400)
    bdp = math.ceil(rate * delay / PIECE)
    assert window.pieces >= min(top, bdp)
    assert window.pieces <= max(2, min(top, math.ceil(GAIN * rate * (delay + PIECE / rate) / PIECE) + 1))


def test_the_round_trip_and_window_carry_over_a_restart():
    window = SendWindow(PIECE, initial=2, max_pieces=32)
    simulate(window, rate=125e6, delay=0.03, pieces=200)  # 1 Gbit/s, 30 ms: about 4 MiB in flight
    grown, rtt = window.pieces, window.min_rtt_s
    window.restart()
    assert (window.pieces, window.min_rtt_s, window.unanswered) == (grown, rtt, 0)
    assert grown >= 4


def test_bad_use_is_a_clear_error():
    with pytest.raises(ValueError, match="positive"):
        SendWindow(0, initial=8, max_pieces=8)
    with pytest.raises(ValueError, match="no piece is unanswered"):
        SendWindow(PIECE, initial=8, max_pieces=8).answered(1.0)


def test_receiver_limits_bound_the_window():
    assert max_pieces(PIECE) == 15  # 16 requests in flight, one spare
    assert max_pieces(PIECE, inbound_budget_bytes=16 * PIECE) == 4  # a quarter of the budget
    assert max_pieces(PIECE, chunks_ahead=3) == 3
    assert max_pieces(2**30, inbound_budget_bytes=2**20) == 1
