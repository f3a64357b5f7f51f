"""Take apart the exception groups that trio nurseries raise.

Since trio 0.25 whatever leaves a nursery leaves it inside an
``ExceptionGroup``, even a single error.  Callers that catch one error
class, and users who should see one line, need that error itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import trio


def meaningful_leaf(group: BaseExceptionGroup) -> BaseException | None:
    """The one exception in ``group``, at any depth, that is not trio.Cancelled.

    None when there are several (each matters) or only cancellations.
    """
    leaves = [leaf for leaf in _leaves(group) if not isinstance(leaf, trio.Cancelled)]
    return leaves[0] if len(leaves) == 1 else None


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@contextlib.contextmanager
def unwrap_group() -> Iterator[None]:
    """Re-raise an exception group that leaves the block as its one meaningful leaf.

    The leaf keeps its own traceback, cause and context.  A group with
    several meaningful leaves, or with cancellations only, leaves unchanged.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaf = meaningful_leaf(group)
        if leaf is None:
            raise
        context = leaf.__context__
        try:
            raise leaf
        finally:
            leaf.__context__ = context  # not the group that held it
            del leaf, context, group
