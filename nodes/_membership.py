"""Cluster membership as a sans-IO state machine: versioned entries spread by anti-entropy, with suspicion.

Every node keeps one ``MemberEntry`` per node it knows (``nodes._member_messages``),
its own included.  The design is gossip-style failure detection (van Renesse,
Minsky and Hayden, 1998) with SWIM's suspicion and refutation:

* **Heartbeat.**  A node raises the ``version`` of its own entry on every
  ``tick`` (once per refresh interval) and on every change of its metadata
  (``update_self``).  Only the node itself raises its version or its
  ``incarnation``.
* **Anti-entropy.**  Two nodes exchange their entries (``outgoing``, then
  ``merge`` on each side: push-pull).  For each name the entry with the
  higher ``(incarnation, version, state)`` wins (alive < suspect < dead);
  equal keys with different contents are settled by a fixed order of the
  contents, so merging is commutative, associative and idempotent.
* **Suspicion.**  A node that has not seen another's version go up --
  directly or through anyone's gossip -- for ``suspect_after_s`` marks it
  suspect, and after ``dead_after_s`` dead, at the same incarnation and
  version: the mark spreads like any entry and the next heartbeat (a higher
  version) overrides it.
* **Refutation.**  A node that hears of itself at a key at least as high as
  its own (suspect or dead, or an earlier process under its name) raises its
  incarnation above it and is alive again.  A restarted node also starts at
  a higher incarnation (the daemon passes its start time), so it comes back
  alive without waiting to hear of its old entry.

Time is passed in (``now``, seconds on any monotonic clock); nothing here
reads a clock, sleeps or does IO.  Entries are checked before anything is
merged (``check_entries``): a message that breaks a bound changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from ._member_messages import MAX_ENTRIES, MemberEntry, MemberRecord, check_entries, record_of

#: Members one node keeps: entries about further names are dropped (and counted).
MAX_MEMBERS = 1024


def _order(entry: MemberEntry) -> tuple[tuple[int, int, int], str]:
    """The total order of entries of one name: the key, then the contents (a fixed tie-break)."""
    e = entry
    return e.key, repr((e.address, e.role, e.location, e.cores, e.memory_free_bytes, e.memory_limit_bytes,
                        e.load, e.workloads, e.wasm_features, sorted(e.capabilities.items()), e.cordoned))


class Membership:
    """One node's view of the cluster.

    ``me`` is this node's own entry; None for a node that follows the
    membership without being a member (an application's embedded node).
    """

    def __init__(self, me: MemberEntry | None, *, now: float, suspect_after_s: float, dead_after_s: float,
                 max_members: int = MAX_MEMBERS) -> None:
        if not 0 < suspect_after_s < dead_after_s:
            raise ValueError(f"need 0 < suspect_after_s < dead_after_s, got {suspect_after_s}, {dead_after_s}")
        self.name = me.name if me is not None else None
        self.suspect_after_s = suspect_after_s
        self.dead_after_s = dead_after_s
        self.max_members = max_members
        self._entries: dict[str, MemberEntry] = {}
        self._heard: dict[str, float] = {}  # name -> when its version last went up, as we saw it
        self.dropped = 0  # entries about names beyond max_members
        self.refuted = 0  # times we raised our incarnation over what was said of us
        self._cursor = 0  # where the next oversized outgoing starts
        if me is not None:
            self._entries[me.name] = dataclasses.replace(me, state="alive")
            self._heard[me.name] = now

    # --- reading ----------------------------------------------------------

    @property
    def me(self) -> MemberEntry | None:
        return None if self.name is None else self._entries[self.name]

    def get(self, name: str) -> MemberEntry | None:
        return self._entries.get(name)

    def entries(self) -> dict[str, MemberEntry]:
        return dict(self._entries)

    def records(self, now: float) -> tuple[MemberRecord, ...]:
        """Every member as ``Members`` answers: this node first, then by name."""
        names = sorted(self._entries, key=lambda n: (n != self.name, n))
        return tuple(record_of(self._entries[n], 0.0 if n == self.name else now - self._heard[n]) for n in names)

    def outgoing(self, limit: int = MAX_ENTRIES) -> tuple[MemberEntry, ...]:
        """The entries to send a peer: ours first; if there are more than ``limit``, a rotating window."""
        others = sorted(n for n in self._entries if n != self.name)
        room = limit - (self.name is not None)
        if len(others) > room:
            start = self._cursor % len(others)
            others = (others[start:] + others[:start])[:room]
            self._cursor = start + room
        mine = () if self.name is None else (self._entries[self.name],)
        return mine + tuple(self._entries[n] for n in others)

    # --- changing ---------------------------------------------------------

    def update_self(self, **fields: Any) -> MemberEntry:
        """Change this node's own metadata; its version goes up if anything changed.  Raises ValueError."""
        if self.name is None:
            raise ValueError("this node is not a member: it has no entry of its own")
        if {"name", "incarnation", "version", "state"} & fields.keys():
            raise ValueError("name, incarnation, version and state are the membership's own")
        me = self._entries[self.name]
        changed = dataclasses.replace(me, **fields)
        if changed != me:
            self._entries[self.name] = dataclasses.replace(changed, version=me.version + 1)
        return self._entries[self.name]

    def tick(self, now: float) -> list[MemberEntry]:
        """A refresh interval passed: beat our heart, suspect the silent; return the entries whose state changed."""
        if self.name is not None:
            me = self._entries[self.name]
            self._entries[self.name] = dataclasses.replace(me, version=me.version + 1)
            self._heard[self.name] = now
        changed = []
        for name, entry in self._entries.items():
            silent_s = now - self._heard[name]
            state = ("dead" if silent_s > self.dead_after_s else
                     "suspect" if silent_s > self.suspect_after_s else entry.state)
            if name != self.name and _RANK[state] > _RANK[entry.state]:
                changed.append(dataclasses.replace(entry, state=state))
        for entry in changed:
            self._entries[entry.name] = entry
        return changed

    def merge(self, entries: Iterable[MemberEntry], now: float) -> list[MemberEntry]:
        """Take in a peer's entries; return those that were new or won (ours, if we refuted).

        Raises BadMemberEntry (and merges nothing) if they break a bound.
        """
        entries = tuple(entries)
        check_entries(entries)
        won = []
        for entry in entries:
            if entry.name == self.name:
                if self._refute(entry):
                    won.append(self._entries[entry.name])
                continue
            current = self._entries.get(entry.name)
            if current is None:
                if len(self._entries) >= self.max_members:
                    self.dropped += 1
                    continue
                self._heard[entry.name] = now
            elif _order(entry) <= _order(current):
                continue
            elif (entry.incarnation, entry.version) > (current.incarnation, current.version):
                self._heard[entry.name] = now  # its owner moved it on: it was alive since we last heard
            self._entries[entry.name] = entry
            won.append(entry)
        return won

    def _refute(self, said: MemberEntry) -> bool:
        """``said`` is about us (its name is ours)."""
        me = self._entries[said.name]
        if said == me or _order(said) < _order(me):
            return False
        self._entries[said.name] = dataclasses.replace(
            me, incarnation=max(me.incarnation, said.incarnation) + 1, version=me.version + 1)
        self.refuted += 1
        return True


_RANK = {"alive": 0, "suspect": 1, "dead": 2}
