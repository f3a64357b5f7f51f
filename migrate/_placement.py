"""Placement: which node a new or moving workload goes to (pure: records in, a choice out).

``Needs`` says what a workload requires: memory (bytes), operator
capabilities (``"gpu"`` matches any ``gpu=...``; ``"gpu=nvidia-h100"``
only that value), a largest RTT from the application (ms), and
WebAssembly features.  A policy (``PlacementPolicy``: any object with
``place(nodes, needs) -> Placement``) ranks the nodes that fit and says,
for every other node, why not.

``DefaultPolicy`` rejects a node that is

* not ``alive`` in the membership view, or cordoned (``migrate-node cordon``);
* a client node (an application's own node; the application decides
  about its own with ``Cluster.advise``), or the one excluded (the source
  of a move);
* unreachable from this application (no RTT measured), or farther than
  ``max_rtt_ms``;
* without a needed capability or WebAssembly feature;
* without room: ``needs.memory`` over the node's per-workload memory
  limit, or over its free memory less ``HEADROOM`` (a quarter of the
  free memory stays free, so one workload cannot starve the node).

The tenant quota is not in the membership records: the chosen node
checks it when the workload arrives (``ResourceLimitExceeded`` at spawn,
or in the move's first message), and the caller tries the next ranked
node, giving that refusal as the node's reason.

The nodes that fit are ranked by a cost, lowest first::

    cost = W_RTT * rtt_ms / 10  +  W_LOAD * min(load / cores, 4)  +  W_MEM * memory / memory_free

with ``W_RTT = W_LOAD = W_MEM = 1``: 10 ms of RTT weigh as much as a
fully busy core per core (a 1-minute load equal to the core count), and
as a workload taking all of the node's free memory.  ``memory`` is
``needs.memory`` or ``DEFAULT_MEMORY`` (64 MiB) when not given.  Ties go
to the name, so the choice is deterministic.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from nodes import MemberRecord

MiB = 2**20
#: The memory a workload is assumed to take when its needs do not say.
DEFAULT_MEMORY = 64 * MiB
#: The share of a node's free memory that placement leaves free.
HEADROOM = 0.25
W_RTT = 1.0  # per 10 ms of RTT
W_LOAD = 1.0  # per unit of load per core
W_MEM = 1.0  # per fraction of the node's free memory taken
RTT_SCALE_MS = 10.0
MAX_LOAD_PER_CORE = 4.0


@dataclass(frozen=True)
class Needs:
    """What a workload requires of its node."""

    memory: int | None = None  # bytes
    capabilities: tuple[str, ...] = ()  # "gpu" (any value) or "gpu=nvidia-h100" (that value)
    max_rtt_ms: float | None = None
    wasm_features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.capabilities, str) or isinstance(self.wasm_features, str):
            raise TypeError("capabilities and wasm_features are lists of strings, not one string")
        object.__setattr__(self, "capabilities", tuple(self.capabilities))
        object.__setattr__(self, "wasm_features", tuple(self.wasm_features))
        if self.memory is not None and (not isinstance(self.memory, int) or self.memory <= 0):
            raise ValueError(f"Needs.memory must be a positive number of bytes, got {self.memory!r}")
        if self.max_rtt_ms is not None and not self.max_rtt_ms > 0:
            raise ValueError(f"Needs.max_rtt_ms must be positive, got {self.max_rtt_ms!r}")
        for cap in self.capabilities:
            if not isinstance(cap, str) or not cap or cap.startswith("="):
                raise ValueError(f"a capability is KEY or KEY=VALUE, got {cap!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeRecord(MemberRecord):
    """A node as the application sees it: its membership record and what the application measured to it.

    The fields of ``nodes.MemberRecord``, then ``rtt_ms``: the
    application's own ping (None: it could not reach the node), and
    ``throughput_bytes_per_s``: what the application's own transfers to it
    ran at (``throughput_source`` says from what: "modules" for module
    uploads, "migrations" for moves, "probe" for a probe upload, "" for
    none measured yet).
    """

    rtt_ms: float | None = None
    throughput_bytes_per_s: float | None = None
    throughput_source: str = ""

    @classmethod
    def of(cls, member: MemberRecord, **measured: object) -> NodeRecord:
        """``member``'s fields (its capabilities as a plain dict) with the application's ``measured`` ones."""
        fields = {f.name: getattr(member, f.name) for f in dataclasses.fields(MemberRecord)}
        return cls(**{**fields, "capabilities": dict(member.capabilities),
                      "wasm_features": tuple(member.wasm_features), **measured})


@dataclass(frozen=True)
class Placement:
    """A policy's answer: the nodes that fit, best first, and why each other node does not."""

    ranked: tuple[str, ...]
    rejected: Mapping[str, tuple[str, ...]]

    @property
    def chosen(self) -> str | None:
        return self.ranked[0] if self.ranked else None

    def explain(self) -> str:
        """One line per rejected node: ``NAME: reason; reason``."""
        return "; ".join(f"{name}: {', '.join(why)}" for name, why in sorted(self.rejected.items())) or "no nodes"


class PlacementPolicy(Protocol):
    def place(self, nodes: Sequence[NodeRecord], needs: Needs, *, exclude: str = "") -> Placement:
        """Rank the ``nodes`` that fit ``needs`` (never ``exclude``), and give a reason for every other one."""


def has_capability(capabilities: Mapping[str, str], wanted: str) -> bool:
    """``"gpu"`` matches any value of key gpu; ``"gpu=nvidia-h100"`` only that value."""
    key, eq, value = wanted.partition("=")
    return key in capabilities and (not eq or capabilities[key] == value)


def rejections(node: NodeRecord, needs: Needs, *, exclude: str = "") -> tuple[str, ...]:
    """Every reason ``node`` cannot take a workload with ``needs``; empty if it can."""
    why = []
    if node.name == exclude:
        why.append("it is where the workload is")
    if node.state != "alive":
        why.append(f"it is {node.state}")
    if node.cordoned:
        why.append("it is cordoned")
    if node.role == "client":
        why.append("it is an application's own node (role client)")
    if node.rtt_ms is None:
        why.append("this application cannot reach it")
    elif needs.max_rtt_ms is not None and node.rtt_ms > needs.max_rtt_ms:
        why.append(f"RTT {node.rtt_ms:.1f} ms over the {needs.max_rtt_ms:g} ms allowed")
    missing = [c for c in needs.capabilities if not has_capability(node.capabilities, c)]
    if missing:
        have = ", ".join(f"{k}={v}" for k, v in sorted(node.capabilities.items())) or "none"
        why.append(f"no capability {', '.join(missing)} (has {have})")
    features = [f for f in needs.wasm_features if f not in node.wasm_features]
    if features:
        why.append(f"no WebAssembly feature {', '.join(features)}")
    memory = needs.memory or DEFAULT_MEMORY
    if node.memory_limit_bytes is not None and memory > node.memory_limit_bytes:
        why.append(f"needs {memory / MiB:.0f} MiB, over its {node.memory_limit_bytes / MiB:.0f} MiB limit")
    room = node.memory_free_bytes * (1 - HEADROOM)
    if memory > room:
        why.append(f"needs {memory / MiB:.0f} MiB, {room / MiB:.0f} MiB free after headroom")
    return tuple(why)


def cost(node: NodeRecord, needs: Needs) -> float:
    """The ranking cost of a node that fits (module docstring); lower is better."""
    rtt = node.rtt_ms if node.rtt_ms is not None else math.inf
    load = min(node.load / max(node.cores, 1), MAX_LOAD_PER_CORE)
    memory = (needs.memory or DEFAULT_MEMORY) / max(node.memory_free_bytes, 1)
    return W_RTT * rtt / RTT_SCALE_MS + W_LOAD * load + W_MEM * memory


class DefaultPolicy:
    """Filter by the needs, room, state and reach; rank by RTT, load and free memory (module docstring)."""

    def place(self, nodes: Sequence[NodeRecord], needs: Needs, *, exclude: str = "") -> Placement:
        rejected = {}
        fitting = []
        for node in nodes:
            why = rejections(node, needs, exclude=exclude)
            if why:
                rejected[node.name] = why
            else:
                fitting.append(node)
        fitting.sort(key=lambda n: (cost(n, needs), n.name))
        return Placement(ranked=tuple(n.name for n in fitting), rejected=rejected)
