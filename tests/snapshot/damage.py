"""Random edits of encoded bytes, for the tests that feed damaged input to a decoder or to ``prepare``."""

from __future__ import annotations

import random

#: The edits ``damage`` makes, by number.
EDITS = ("flip a bit", "set a byte", "delete bytes", "insert random bytes")


def damage(data: bytearray, rng: random.Random, edit: int, at: int, *, delete_max: int, insert_max: int) -> None:
    """Apply edit number ``edit`` of ``EDITS`` to ``data`` at offset ``at``, in place.

    Deletes 1 to ``delete_max - 1`` bytes, inserts 1 to ``insert_max - 1``;
    the sizes and values come from ``rng``.
    """
    if edit == 0:
        data[at] ^= 1 << rng.randrange(8)
    elif edit == 1:
        data[at] = rng.randrange(256)
    elif edit == 2:
        del data[at:at + rng.randrange(1, delete_max)]
    elif edit == 3:
        data[at:at] = rng.randbytes(rng.randrange(1, insert_max))
    else:
        raise ValueError(f"no edit number {edit}")
