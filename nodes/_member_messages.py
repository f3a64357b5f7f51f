"""The membership's wire records and requests, and the limits a received entry must keep.

``MemberEntry`` is one node's entry as nodes gossip it (``nodes._membership``
keeps a table of them); ``MemberRecord`` is what ``Members`` answers: the
entry as this node sees it, with its state and when it was last heard of.
``Gossip`` carries the sender's entries and is answered with the receiver's
(push-pull anti-entropy); only a node certificate may send it.  ``Members``
may be sent by anyone: applications learn the cluster from it.

Bounds (``check_entries``): a Gossip or its reply carries at most
``MAX_ENTRIES`` entries, each within the field sizes below; a message that
breaks one is refused whole (``BadMemberEntry``), nothing of it merged.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from ._config import NODE_ROLES, parse_address
from ._errors import ConfigError, RemoteProtocolError
from ._member_config import KEY_PATTERN, MAX_CAPABILITIES, MAX_LOCATION, capability_refusal
from ._messages import ANY_ROLE, NODE_ONLY, Reply, Request, message

#: Member states, in the order a third party may raise them (``nodes._membership``).
STATES = ("alive", "suspect", "dead")
#: Entries in one Gossip or GossipReply, and members one node keeps.
MAX_ENTRIES = 256
MAX_NAME = 64
MAX_ADDRESS = 300
MAX_FEATURES = 64
_MAX_INT = 2**63 - 1
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")


class BadMemberEntry(RemoteProtocolError):
    """A membership message broke a bound or carried a malformed entry; none of it was merged."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MemberEntry:
    """One node as the cluster gossips it.

    ``(incarnation, version, rank of state)`` orders entries of one node: the
    higher wins.  Only the node itself raises its incarnation (on start and
    to refute suspicion) and its version (its heartbeat and any change of
    its metadata); another node may only raise the state, at the same
    incarnation and version.
    """

    name: str
    address: str
    incarnation: int
    version: int
    state: str = "alive"
    role: str = "edge"
    location: str = ""
    cores: int = 1
    memory_free_bytes: int = 0
    memory_limit_bytes: int | None = None
    load: float = 0.0
    workloads: int = 0
    wasm_features: tuple[str, ...] = ()
    capabilities: dict[str, str] = field(default_factory=dict)
    cordoned: bool = False

    @property
    def key(self) -> tuple[int, int, int]:
        return self.incarnation, self.version, STATES.index(self.state)


@dataclass(frozen=True, kw_only=True, slots=True)
class MemberRecord:
    """One node as this node sees it: its entry, its state and how long since it was last heard of.

    ``last_heard_s`` is 0 for the answering node itself; ``capabilities`` is
    a read-only mapping once received (``capability_map``).
    """

    name: str
    address: str
    role: str
    location: str
    state: str
    version: int
    last_heard_s: float
    cores: int
    memory_free_bytes: int
    memory_limit_bytes: int | None
    load: float
    workloads: int
    wasm_features: tuple[str, ...]
    capabilities: dict[str, str]
    cordoned: bool
    incarnation: int = 0

    @property
    def capability_map(self) -> Mapping[str, str]:
        return MappingProxyType(self.capabilities)


def record_of(entry: MemberEntry, last_heard_s: float) -> MemberRecord:
    return MemberRecord(
        name=entry.name, address=entry.address, role=entry.role, location=entry.location, state=entry.state,
        version=entry.version, incarnation=entry.incarnation, last_heard_s=round(max(0.0, last_heard_s), 3),
        cores=entry.cores, memory_free_bytes=entry.memory_free_bytes, memory_limit_bytes=entry.memory_limit_bytes,
        load=entry.load, workloads=entry.workloads, wasm_features=entry.wasm_features,
        capabilities=dict(entry.capabilities), cordoned=entry.cordoned)


@message("member_list")
class MemberList(Reply):
    members: tuple[MemberRecord, ...]


@message("members", reply=MemberList, roles=ANY_ROLE)
class Members(Request):
    """Every node this node knows, itself first, with its metadata and state."""


@message("gossip_reply")
class GossipReply(Reply):
    entries: tuple[MemberEntry, ...]


@message("gossip", reply=GossipReply, roles=NODE_ONLY)
class Gossip(Request):
    """The sender's membership entries; the reply carries the receiver's."""

    entries: tuple[MemberEntry, ...]


def entry_refusal(entry: MemberEntry) -> str | None:
    """Why ``entry`` may not be merged; None if it may."""
    if not _NAME.match(entry.name):
        return f"member name {entry.name[:MAX_NAME]!r}... is not 1-{MAX_NAME} letters, digits, '.', '_' or '-'"
    if len(entry.address) > MAX_ADDRESS:
        return f"member {entry.name}: address longer than {MAX_ADDRESS} characters"
    try:
        parse_address(entry.address)
    except ConfigError as exc:
        return f"member {entry.name}: {exc}"
    if entry.state not in STATES or entry.role not in NODE_ROLES:
        return f"member {entry.name}: state {entry.state[:16]!r} or role {entry.role[:16]!r} is not one we know"
    if len(entry.location) > MAX_LOCATION or not entry.location.isprintable():
        return f"member {entry.name}: location must be at most {MAX_LOCATION} printable characters"
    ints = (entry.incarnation, entry.version, entry.cores, entry.memory_free_bytes, entry.workloads,
            0 if entry.memory_limit_bytes is None else entry.memory_limit_bytes)
    if not all(0 <= n <= _MAX_INT for n in ints) or not (math.isfinite(entry.load) and entry.load >= 0):
        return f"member {entry.name}: a count or size is negative or out of range"
    if len(entry.wasm_features) > MAX_FEATURES or any(not KEY_PATTERN.match(f) for f in entry.wasm_features):
        return f"member {entry.name}: at most {MAX_FEATURES} wasm features, each a short lower-case name"
    if len(entry.capabilities) > MAX_CAPABILITIES:
        return f"member {entry.name}: more than {MAX_CAPABILITIES} capabilities"
    for key, value in entry.capabilities.items():
        why = capability_refusal(key, value)
        if why is not None:
            return f"member {entry.name}: {why}"
    return None


def check_entries(entries: tuple[MemberEntry, ...]) -> None:
    """Raise BadMemberEntry if the message's ``entries`` break a bound; do nothing otherwise."""
    if len(entries) > MAX_ENTRIES:
        raise BadMemberEntry(f"a membership message carries at most {MAX_ENTRIES} entries, not {len(entries)}")
    for entry in entries:
        why = entry_refusal(entry)
        if why is not None:
            raise BadMemberEntry(why)
    if len({e.name for e in entries}) != len(entries):
        raise BadMemberEntry("a membership message names a member twice")
