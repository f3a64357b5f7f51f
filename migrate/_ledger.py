"""The call ledger: what makes a call through a handle run exactly once.

Every call carries ``(caller, seq)``: a handle's id and a number it never
reuses.  The node that owns the workload records each call's outcome in the
workload's ledger before it replies, and the ledger travels with the
workload's state in the same atomic commit.  So a retry -- after a lost
reply, a move, or a failover -- finds the recorded outcome instead of
running the call again.  Handles acknowledge the outcomes they have seen,
which lets owners forget them.  (Cloudflare Durable Objects and Orleans
make the same promise: an idempotency key per request, remembered by the
owner of the state and carried with it.)

Pure data, no I/O: the node and the tests drive it directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

#: Outcomes kept per caller beyond its acknowledgement, at most.  A handle
#: has at most a few calls in flight; this bounds what a misbehaving caller
#: can make a node remember.
MAX_UNACKED_PER_CALLER = 4096


@dataclass(frozen=True)
class Outcome:
    """A call's recorded result: a value, or an error code and message."""

    ok: bool
    value: Any = None
    code: str = ""
    message: str = ""

    def to_wire(self) -> list:
        return [self.ok, self.value, self.code, self.message]

    @classmethod
    def from_wire(cls, item: list) -> "Outcome":
        ok, value, code, message = item
        return cls(bool(ok), value, str(code), str(message))


@dataclass
class CallLedger:
    """Recorded outcomes by caller and sequence number."""

    _by_caller: dict[str, dict[int, Outcome]] = field(default_factory=dict)
    _acked: dict[str, int] = field(default_factory=dict)
    #: when (``time.perf_counter``) this ledger first and last recorded a
    #: call: a move's report reads them (the source's last call served
    #: before the freeze, the new owner's first after the commit)
    first_served_s: float | None = field(default=None, compare=False)
    last_served_s: float | None = field(default=None, compare=False)

    def lookup(self, caller: str, seq: int) -> Outcome | None:
        """The recorded outcome of (caller, seq), or None if it never ran here."""
        return self._by_caller.get(caller, {}).get(seq)

    def was_forgotten(self, caller: str, seq: int) -> bool:
        """True if (caller, seq) was acknowledged, so its outcome is gone."""
        return seq <= self._acked.get(caller, -1)

    def record(self, caller: str, seq: int, outcome: Outcome) -> None:
        self.last_served_s = time.perf_counter()
        if self.first_served_s is None:
            self.first_served_s = self.last_served_s
        entries = self._by_caller.setdefault(caller, {})
        entries[seq] = outcome
        if len(entries) > MAX_UNACKED_PER_CALLER:
            oldest = min(entries)
            del entries[oldest]
            self._acked[caller] = max(self._acked.get(caller, -1), oldest)

    def acknowledge(self, caller: str, upto: int) -> None:
        """Forget the caller's outcomes with seq <= upto: it has seen them."""
        if upto <= self._acked.get(caller, -1):
            return
        self._acked[caller] = upto
        entries = self._by_caller.get(caller)
        if entries:
            for seq in [s for s in entries if s <= upto]:
                del entries[seq]

    def next_seq(self, caller: str) -> int:
        """One past the highest seq of ``caller`` recorded or acknowledged here; 0 if none."""
        return max([self._acked.get(caller, -1), *self._by_caller.get(caller, {})]) + 1

    def __len__(self) -> int:
        return sum(len(e) for e in self._by_caller.values())

    def to_wire(self) -> dict:
        return {"outcomes": {c: [[s, o.to_wire()] for s, o in sorted(e.items())]
                             for c, e in self._by_caller.items() if e},
                "acked": dict(self._acked)}

    @classmethod
    def from_wire(cls, data: Any) -> "CallLedger":
        """Rebuild a ledger; raises ValueError on a malformed encoding."""
        try:
            ledger = cls()
            for caller, items in data["outcomes"].items():
                ledger._by_caller[str(caller)] = {int(s): Outcome.from_wire(o) for s, o in items}
            ledger._acked = {str(c): int(s) for c, s in data["acked"].items()}
            return ledger
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed call ledger: {exc}") from None
