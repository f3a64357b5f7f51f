"""unwrap_group: one error leaving a trio nursery reaches the caller as itself."""

from __future__ import annotations

import pytest
import trio

from nodes._groups import unwrap_group


async def _fail(exc: BaseException) -> None:
    with trio.CancelScope(shield=True):  # a sibling's failure cannot cancel this one first
        await trio.sleep(0.01)
    raise exc


async def test_one_error_leaves_the_nursery_as_itself_with_its_cause():
    cause = OSError("disk")
    with pytest.raises(ValueError, match="bad") as info:
        with unwrap_group():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)  # cancelled by the failure, not reported
                try:
                    raise cause
                except OSError as exc:
                    raise ValueError("bad") from exc
    assert info.value.__cause__ is cause


async def test_an_error_in_a_nested_nursery_is_found():
    with pytest.raises(KeyError):
        with unwrap_group():
            async with trio.open_nursery() as outer:
                async def inner() -> None:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_fail, KeyError("deep"))
                outer.start_soon(inner)


async def test_several_errors_stay_a_group():
    with pytest.raises(ExceptionGroup) as info:
        with unwrap_group():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_fail, KeyError("a"))
                nursery.start_soon(_fail, ValueError("b"))
    assert {type(e) for e in info.value.exceptions} == {KeyError, ValueError}


async def test_an_outer_cancellation_passes_through():
    with trio.move_on_after(0.01) as scope:
        with unwrap_group():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                await trio.sleep_forever()
    assert scope.cancelled_caught
