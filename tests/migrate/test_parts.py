"""PartQueue: the owner's bookkeeping of a checkpoint fetched several parts at a time, served in any order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrate._parts import PartQueue, PartRefused


def _serve(queue: PartQueue, encoder, part: int) -> tuple[bytes, bool]:
    """What the node does for one request: check, encode what is wanted, take."""
    queue.check(part)
    if wanted := queue.wanted(part):
        queue.add(list(_take(encoder, wanted)), wanted)
    return queue.take(part)


def _take(encoder, count: int):
    for _ in range(count):
        item = next(encoder, None)
        if item is None:
            return
        yield item


@settings(max_examples=300, deadline=None)
@given(total=st.integers(1, 40), window=st.integers(1, 10), max_ahead=st.integers(10, 64), data=st.data())
def test_every_part_is_handed_out_once_in_any_service_order(total, window, max_ahead, data):
    stream = [bytes([n % 251]) * (1 + n % 7) for n in range(total)]
    queue, encoder = PartQueue(max_ahead), iter(stream)
    got: dict[int, tuple[bytes, bool]] = {}
    in_flight: list[int] = []
    asked, last = 0, None
    while last is None or in_flight:
        while last is None and len(in_flight) < window:  # the application keeps the window full
            in_flight.append(asked)
            asked += 1
        # the node serves any one of the requests in flight next
        part = in_flight.pop(data.draw(st.integers(0, len(in_flight) - 1)))
        reply = _serve(queue, encoder, part)
        assert len(queue.ready) <= max_ahead + 2
        if part < total:
            assert part not in got
            got[part] = reply
        else:
            assert reply == (b"", True)  # past the end
        # the application reads replies in order: it learns of the last one once all before it came
        if last is None and all(n in got for n in range(total)):
            last = total - 1  # the requests still in flight are answered; the application drops those replies
    assert [got[n][0] for n in range(total)] == stream
    assert [n for n in range(total) if got[n][1]] == [total - 1]
    assert queue.done and not queue.ready


def test_refusals():
    queue, encoder = PartQueue(4), iter([b"a", b"b", b"c"])
    with pytest.raises(PartRefused, match="does not exist"):
        queue.check(-1)
    with pytest.raises(PartRefused, match="more than 4 parts past the 0 fetched"):
        queue.check(5)
    assert _serve(queue, encoder, 0) == (b"a", False)
    with pytest.raises(PartRefused, match="fetched already"):
        _serve(queue, encoder, 0)
    assert _serve(queue, encoder, 2) == (b"c", True)
    assert _serve(queue, encoder, 1) == (b"b", False)
    assert queue.done
    assert _serve(queue, encoder, 7) == (b"", True)
