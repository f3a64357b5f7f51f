"""How many snapshot pieces to keep in flight: the link's bandwidth-delay product, measured as pieces are answered.

``SendWindow`` is sans-IO: the sender tells it when each piece went out
and when its reply came (``sent``, ``answered``, with its own clock) and
reads ``pieces``.  It keeps the least round trip seen (later replies also
wait behind the pieces ahead of them) and the delivery rate (bytes
answered per second since the first piece went out), and asks for twice
their product in pieces, so a window that limits the rate still grows
(the rate it measures is then the window's, and twice it is more) until
the link's rate limits it instead.  The window stays within [``initial``,
``max_pieces``]: the receiver's limits (requests it serves at once per
connection, chunks it lets wait ahead, its inbound byte budget) bound the
top; below ``initial`` (``_chunks.WINDOW_PIECES``, 8 MiB) a window saves
nothing on a link the receiver keeps up with.
"""

from __future__ import annotations

import math
from collections import deque

#: Requests a node serves at once per connection (``NodeConfig.max_in_flight``
#: by default); one more waits in its socket buffer, so keep one spare.
PEER_IN_FLIGHT = 16
#: Share of the receiver's node-wide inbound byte budget (256 MiB by default,
#: ``NodeConfig.inbound_buffer_bytes``) one move's pieces in flight may hold.
BUDGET_SHARE = 4
#: The window asks for this many times the measured bandwidth-delay product.
GAIN = 2.0


def max_pieces(piece_bytes: int, *, in_flight: int = PEER_IN_FLIGHT, inbound_budget_bytes: int = 256 << 20,
               chunks_ahead: int = 64) -> int:
    """The most pieces of ``piece_bytes`` a receiver with these limits takes in flight, at least 1."""
    by_budget = inbound_budget_bytes // BUDGET_SHARE // max(1, piece_bytes)
    return max(1, min(in_flight - 1, chunks_ahead, by_budget))


class SendWindow:
    """The pieces to keep unanswered; see the module docstring."""

    def __init__(self, piece_bytes: int, *, initial: int, max_pieces: int) -> None:
        if piece_bytes < 1 or initial < 1 or max_pieces < 1:
            raise ValueError(f"piece size and windows must be positive, got {piece_bytes}, {initial}, {max_pieces}")
        self.piece_bytes = piece_bytes
        self.max_pieces = max_pieces
        self.floor = min(initial, max_pieces)
        self._pieces = self.floor
        # (sent at, bytes, bytes answered then, when those were) of the unanswered pieces, in order
        self._out: deque[tuple[float, int, int, float]] = deque()
        self.min_rtt_s: float | None = None
        self.max_rate: float = 0.0  # bytes per second, the best delivery rate of the stream
        self._answered_bytes = 0
        self._answered_at: float | None = None

    @property
    def pieces(self) -> int:
        """Pieces to keep unanswered now."""
        return self._pieces

    @property
    def unanswered(self) -> int:
        return len(self._out)

    def restart(self) -> None:
        """A new stream begins (a round): measure its rate afresh; the round trip and the window carry over."""
        self._out.clear()
        self.max_rate, self._answered_bytes, self._answered_at = 0.0, 0, None

    def sent(self, now: float, nbytes: int) -> None:
        """A piece of ``nbytes`` went out at ``now``."""
        if self._answered_at is None:
            self._answered_at = now  # the stream's start: nothing answered yet
        self._out.append((now, nbytes, self._answered_bytes, self._answered_at))

    def answered(self, now: float, *, more: bool = True) -> None:
        """The oldest unanswered piece was answered at ``now``.  Raises ValueError if none is unanswered.

        The piece's delivery rate is the bytes answered since it went out
        over the time since the answer before it went out (BBR's sample).
        ``more`` says the sender has pieces waiting for room in the window;
        without (the end of a stream) the rate is the sender's, not the
        link's, and only the round trip is learnt.
        """
        if not self._out:
            raise ValueError("no piece is unanswered")
        sent_at, nbytes, answered_then, answered_then_at = self._out.popleft()
        rtt = max(0.0, now - sent_at)
        self.min_rtt_s = rtt if self.min_rtt_s is None else min(self.min_rtt_s, rtt)
        self._answered_bytes += nbytes
        self._answered_at = now
        if more and now > answered_then_at:
            self.max_rate = max(self.max_rate, (self._answered_bytes - answered_then) / (now - answered_then_at))
            bdp_pieces = math.ceil(GAIN * self.max_rate * self.min_rtt_s / self.piece_bytes)
            self._pieces = max(self.floor, min(self.max_pieces, bdp_pieces))
