"""ByteBudget: the node-wide budget of inbound bytes its connections share."""

import pytest
import trio

from nodes._budget import ByteBudget


async def take(budget: ByteBudget, n: int, got: list) -> None:
    await budget.acquire(n)
    got.append(n)


async def test_acquire_waits_until_the_bytes_fit_and_release_wakes_it():
    budget = ByteBudget(100)
    await budget.acquire(70)
    got = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, budget, 50, got)
        await trio.testing.wait_all_tasks_blocked()
        assert got == [] and budget.in_use == 70
        budget.release(20)  # 50 in use: 50 more fit
        await trio.testing.wait_all_tasks_blocked()
        assert got == [50] and budget.in_use == 100
    assert budget.peak == 100 and budget.available == 0


async def test_waiters_are_served_first_fit_so_a_small_frame_passes_a_large_one():
    budget = ByteBudget(100)
    await budget.acquire(60)
    order = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, budget, 90, order)  # waits for the 60 to come back
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, budget, 30, order)  # fits now, behind the large waiter
        await trio.testing.wait_all_tasks_blocked()
        assert order == [30]
        budget.release(90)
    assert order == [30, 90]


def test_what_can_never_fit_or_was_never_taken_is_an_error():
    budget = ByteBudget(10)
    with pytest.raises(ValueError, match="never fit"):
        budget.try_acquire(11)
    with pytest.raises(ValueError, match="cannot release"):
        budget.release(1)
    with pytest.raises(ValueError, match="positive"):
        ByteBudget(0)
