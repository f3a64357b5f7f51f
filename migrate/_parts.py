"""Which parts of a checkpoint being fetched are encoded, waiting, or fetched (sans-IO).

The owner encodes a checkpoint lazily, in parts, as the application asks
for them; the application asks for several at once and the node serves
them concurrently, in any order.  ``PartQueue`` keeps the bookkeeping:
each part is handed out once, a part is encoded together with the one
after it (so its reply can say whether it is the last), parts encoded
before their turn wait in ``ready`` (at most ``max_ahead`` + 2 of them),
and parts past the end are answered as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class PartRefused(Exception):
    """A part asked for twice, before 0, or too far past the parts fetched so far."""


@dataclass
class PartQueue:
    """The state of one checkpoint's parts; the caller does the encoding."""

    max_ahead: int
    ready: dict[int, bytes] = field(default_factory=dict)  # encoded, not yet fetched
    encoded: int = 0   # parts encoded so far
    fetched: int = 0   # parts handed out so far
    exhausted: bool = False  # the encoder has no more parts

    @property
    def done(self) -> bool:
        """Every part was handed out: the encoder may be dropped."""
        return self.exhausted and self.fetched == self.encoded

    def check(self, part: int) -> None:
        """Raise PartRefused unless ``part`` may be asked for now."""
        if part < 0:
            raise PartRefused(f"part {part} does not exist")
        if self.exhausted and part >= self.encoded:
            return  # past the end: answered as such
        if part < self.encoded and part not in self.ready:
            raise PartRefused(f"part {part} was fetched already")
        if part > self.fetched + self.max_ahead:
            raise PartRefused(f"part {part} is more than {self.max_ahead} parts past the {self.fetched} fetched")

    def wanted(self, part: int) -> int:
        """How many more parts to encode before ``part`` can be answered (it and the one after it)."""
        return 0 if self.exhausted else max(0, part + 2 - self.encoded)

    def add(self, parts: list[bytes], asked: int) -> None:
        """Take ``parts``, the encoder's answer to a request for ``asked`` more (fewer: it ended)."""
        self.ready.update(enumerate(parts, self.encoded))
        self.encoded += len(parts)
        self.exhausted = len(parts) < asked

    def take(self, part: int) -> tuple[bytes, bool]:
        """Hand out ``part`` (call after ``wanted`` is 0): its bytes and whether it is the last.

        A part past the end is (b"", True).  Raises PartRefused for a part
        handed out already.
        """
        data = self.ready.pop(part, None)
        if data is None:
            if self.exhausted and part >= self.encoded:
                return b"", True
            raise PartRefused(f"part {part} was fetched already")
        self.fetched += 1
        return data, self.exhausted and part == self.encoded - 1
