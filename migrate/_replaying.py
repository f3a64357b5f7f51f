"""Replaying logged operations on an incoming copy, many in one worker-thread trip (``replay_trip``).

A dual move's target, a standby and a failover replay the owner's
logged calls.  Each used to be a trip of its own to a worker thread and
back, and the switch of a dual move waits for the last few: in traced
256 MiB dual moves on the 2-CPU benchmark machine, replaying the 2-4
calls the commit carried took 1.6-2.1 ms, then checking the digest of
the pages written since the cut took one trip more.  One trip now runs
up to ``REPLAY_PER_TRIP`` entries in order, stops at the first that is
malformed or diverges, and (for a commit) reads the digest after the
last, so the switch waits for one trip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nodes import Host

from . import _hostops as ops
from ._ledger import CallLedger, Outcome
from ._messages import MCall
from ._oplog import divergence, outcome_index, replayed_call
from ._owner import _operate, _outcome
from ._state import Owned

__all__ = ["REPLAY_PER_TRIP", "Replayed", "already_run", "replay_trip"]

#: Entries replayed in one worker-thread trip: a trip holds a worker (and the workload) until its
#: last call ends, so a long log goes in several, each a chance for cancellation and other work.
REPLAY_PER_TRIP = 64


@dataclass
class Replayed:
    """What one ``replay_trip`` did: the operations that matched, in order, then why it stopped early."""

    done: list[tuple[MCall, Outcome]] = field(default_factory=list)
    why: str | None = None  # the first entry's fault (malformed, out of order, diverged); None if all matched
    digest: str | None = None  # of ``pages`` after the last entry, when asked and all matched


def already_run(entries: Sequence[dict[str, Any]], index: int, ledger: CallLedger | None) -> tuple[int, str | None]:
    """How many of ``entries``, from the first, a copy at operation ``index`` has run already; or why one contradicts it.

    A standby is fed by its owner without waiting, so when the owner dies
    a failover may read the standby's index, then send the application's
    log from there while the owner's last forwards are still being
    replayed: the standby is past the first entries when they arrive.  It
    skips them rather than calling them a gap (which dropped the only copy
    left).  An entry it skips must agree with the outcome the copy's
    ``ledger`` recorded for its call, where the ledger still has it: the
    same result, as the same operation.
    Returns (count, None), or (count, why) for the first skipped entry
    that disagrees; a malformed entry ends the count (``replay_trip``
    reports it).
    """
    count = 0
    for entry in entries:
        at = entry.get("index") if isinstance(entry, dict) else None
        if type(at) is not int or at > index:
            break
        seen = None
        caller, seq = entry.get("caller"), entry.get("seq")
        if ledger is not None and isinstance(caller, str) and type(seq) is int:
            seen = ledger.lookup(caller, seq)
        if seen is not None:
            try:
                why = divergence(entry, seen) or _ran_elsewhere(at, seen)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                why = f"bad log entry: {exc}"
            if why is not None:
                return count, f"operation {at} already ran here, differently: {why}"
        count += 1
    return count, None


def _ran_elsewhere(at: int, seen: Outcome) -> str | None:
    """Why the call ``seen`` records is not operation ``at`` here (it ran as another), or None."""
    ran_at = outcome_index(seen)
    return None if ran_at == at else f"its call ran here as operation {ran_at}"


def replay_trip(host: Host, workload: str, entries: Sequence[dict[str, Any]], shadow: Owned,
                pages: Mapping[int, Sequence[int]] | None = None) -> Replayed:
    """Run ``entries`` on ``workload`` with their recorded inputs; ``shadow.index`` follows each.

    Stops at the first entry that is malformed, out of order (its index
    is not the next), whose outcome differs from the logged one
    (``divergence``) or whose replay raised; the entries before it ran,
    so a caller given a ``why`` drops the copy.  With ``pages``, and if
    every entry matched, reads their digest (``ops.pages_digest``) in the
    same trip.
    """
    out = Replayed()
    for entry in entries:
        try:
            op = replayed_call(workload, entry)
            if entry["index"] != shadow.index + 1:
                raise ValueError(f"log has a gap before operation {entry['index']} (at {shadow.index})")
            got = _outcome(_operate(host, op, entry.get("inputs"), False, None), op, shadow)
            why = divergence(entry, got)
        except (KeyError, TypeError, ValueError) as exc:
            out.why = f"bad log entry: {exc}"
            return out
        except Exception as exc:  # noqa: BLE001 - the entries before it ran: the caller must drop the copy, not raise
            out.why = f"replay failed: {type(exc).__name__}: {exc}"
            return out
        if why is not None:
            out.why = why
            return out
        out.done.append((op, got))
    if pages is not None:
        out.digest = ops.pages_digest(host, workload, pages)
    return out
