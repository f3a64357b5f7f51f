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
from typing import Any, Callable

#: Outcomes kept per caller beyond its acknowledgement, at most.  A handle
#: has at most a few calls in flight; this bounds what a misbehaving caller
#: can make a node remember.
MAX_UNACKED_PER_CALLER = 4096
#: Callers one ledger keeps.  Every handle that ever called the workload is
#: one (a new id per application start), and the ledger travels in every
#: commit and checkpoint, so a client minting ids must not grow it forever.
MAX_CALLERS = 10_000
#: A caller silent this long may be forgotten to make room for a new one.
#: Forgetting it is safe: only a retry of one of its old calls could run
#: twice, and no handle retries a call for anything near an hour.
IDLE_CALLER_S = 3600.0


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
    #: when (``time.monotonic``, this process) each caller last called or
    #: acknowledged; not carried on the wire: a new owner starts them at its now
    _active: dict[str, float] = field(default_factory=dict, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    def admits(self, caller: str) -> bool:
        """Whether a call from ``caller`` may run: it is known, or there is room for it.

        Room is made by forgetting the callers silent for ``IDLE_CALLER_S``,
        longest silent first.  False means the ledger holds ``MAX_CALLERS``
        callers all heard from within the hour: refuse the call, unrun.
        """
        now = self.clock()
        if caller in self._active:
            return True
        if len(self._active) < MAX_CALLERS:
            return True
        idle = sorted((t, c) for c, t in self._active.items() if now - t >= IDLE_CALLER_S)
        for _, old in idle[:max(1, len(idle) // 2)]:  # half of them at once: the sort is paid rarely
            self._forget_caller(old)
        return len(self._active) < MAX_CALLERS

    def callers(self) -> int:
        """How many callers this ledger remembers."""
        return len(self._active)

    def _forget_caller(self, caller: str) -> None:
        self._active.pop(caller, None)
        self._by_caller.pop(caller, None)
        self._acked.pop(caller, None)

    def _touch(self, caller: str) -> None:
        self._active[caller] = self.clock()

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
        self._touch(caller)
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
        if caller not in self._active and len(self._active) >= MAX_CALLERS:
            return  # a caller this ledger has no room for: nothing of it to forget
        self._touch(caller)
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
            now = ledger.clock()
            ledger._active = {c: now for c in (*ledger._by_caller, *ledger._acked)}
            return ledger
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed call ledger: {exc}") from None
