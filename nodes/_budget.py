"""A node-wide budget of inbound bytes: a trio-aware byte semaphore shared by all its connections.

A connection's reader takes bytes from the budget before it pulls them off
the socket (``nodes._transport``), and gives them back when the frame they
form has been handled (its reply sent) or the connection closes.  When the
budget is spent, readers wait and leave the peers' bytes in the kernel: TCP
flow control stops the peers, and nothing is buffered beyond the budget.

The rule that keeps this free of deadlock: a reader waits for budget while
holding at most ``LOOKAHEAD_BYTES`` of its own, the start of the frame it
waits to read; it reserves a whole frame at once, never a frame piece by
piece.  ``NodeConfig`` requires ``max_frame_bytes + max_connections *
LOOKAHEAD_BYTES <= inbound_buffer_bytes``, so once the frames being handled
are released, whatever the waiting readers hold still leaves room for the
largest frame.  Handlers release their frame whatever happens, and never
wait for another frame without a timeout.  Waiters are served first-fit,
not first-come: a reader waiting for a whole 60 MiB frame does not hold up
a 100-byte call that fits now.
"""

from __future__ import annotations

import trio

#: Bytes a reader may take from the budget before it knows the size of the
#: next frame: room for many small frames per read.  16 KiB is one TLS record.
LOOKAHEAD_BYTES = 16 << 10


class ByteBudget:
    """``total`` bytes shared by many tasks; ``acquire`` waits until its bytes fit."""

    def __init__(self, total: int) -> None:
        if total <= 0:
            raise ValueError(f"a byte budget must be positive, got {total!r}")
        self.total = total
        self.in_use = 0
        self.peak = 0
        self._released = trio.Event()

    @property
    def available(self) -> int:
        return self.total - self.in_use

    def try_acquire(self, n: int) -> bool:
        """Take ``n`` bytes if they fit now; return whether they were taken."""
        if n > self.total:
            raise ValueError(f"{n} bytes can never fit a budget of {self.total}")
        if self.in_use + n > self.total:
            return False
        self.in_use += n
        if self.in_use > self.peak:
            self.peak = self.in_use
        return True

    async def acquire(self, n: int) -> None:
        """Take ``n`` bytes, waiting until they fit.  Raises ValueError if they never can."""
        while not self.try_acquire(n):
            await self._released.wait()

    def release(self, n: int) -> None:
        """Give back ``n`` bytes taken before, and wake the waiters to see if they fit now."""
        if n < 0 or n > self.in_use:
            raise ValueError(f"cannot release {n} bytes of {self.in_use} in use")
        if n:
            self.in_use -= n
            self._released.set()
            self._released = trio.Event()
