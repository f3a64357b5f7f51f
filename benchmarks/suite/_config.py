"""What one suite run measures: workloads, links, strategies and timings, with the quick and full presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from benchmarks.netem import PROFILES, LinkProfile

#: Every strategy the suite knows, in table order.  Each is probed once per
#: run; one the nodes refuse (``dual`` before issue 5 lands) is reported as
#: not available and left out.
STRATEGIES = ("stop-copy", "precopy", "dual")
PAGE_BYTES = 4096


@dataclass(frozen=True, kw_only=True)
class DirtierSpec:
    """The synthetic ``dirtier``: ``memory_mib`` of typical memory, ``dirty_pages_per_s`` distinct pages written."""

    kind: ClassVar[str] = "dirtier"
    memory_mib: int
    dirty_pages_per_s: float

    @property
    def label(self) -> str:
        return f"dirtier {self.memory_mib} MiB, {self.dirty_pages_per_s:g} pages/s"

    @property
    def needs_mib(self) -> int:
        return self.memory_mib


@dataclass(frozen=True, kw_only=True)
class KvstoreSpec:
    """The C key-value store holding ``keys`` pairs, overwriting ``puts_per_s`` values of ``value_bytes``."""

    kind: ClassVar[str] = "kvstore"
    keys: int
    value_bytes: int = 1024
    puts_per_s: float

    @property
    def label(self) -> str:
        return f"kvstore {self.keys} keys x {self.value_bytes} B, {self.puts_per_s:g} puts/s"

    @property
    def needs_mib(self) -> int:
        return 2 * self.keys * (self.value_bytes + 64) // 2**20 + 1


@dataclass(frozen=True, kw_only=True)
class GrowerSpec:
    """The interpreter-like ``grower``: a heap of ``start_mib`` growing by ``grow_mib_per_s``."""

    kind: ClassVar[str] = "grower"
    start_mib: int
    grow_mib_per_s: float

    @property
    def label(self) -> str:
        return f"grower {self.start_mib} MiB + {self.grow_mib_per_s:g} MiB/s"

    @property
    def needs_mib(self) -> int:
        # Room to grow for a minute of moving.
        return self.start_mib + int(60 * self.grow_mib_per_s)


WorkloadSpec = DirtierSpec | KvstoreSpec | GrowerSpec


def spec_params(spec: WorkloadSpec) -> dict:
    """The spec as JSON-ready fields, ``kind`` first."""
    return {"kind": spec.kind, **dataclasses.asdict(spec)}


@dataclass(frozen=True, kw_only=True)
class SuiteConfig:
    """One run of the suite.

    The dirtier runs two sweeps: ``memory_sweep_mib`` at ``sweep_rate``
    pages/s (blackout against memory size) and ``rate_sweep`` at
    ``sweep_memory_mib`` (blackout against dirty rate).  The client calls
    once every ``call_interval_s`` (or back to back when calls are slower),
    for ``steady_s`` before each move and ``tail_s`` after it.
    """

    mode: str
    links: tuple[LinkProfile, ...]
    strategies: tuple[str, ...] = STRATEGIES
    memory_sweep_mib: tuple[int, ...]
    sweep_rate: float
    rate_sweep: tuple[float, ...]
    sweep_memory_mib: int
    kvstore: KvstoreSpec | None
    grower: GrowerSpec | None
    call_interval_s: float = 0.002
    steady_s: float
    tail_s: float
    # 30 ms: the migrate package's default, near Google's 50 ms median blackout.
    downtime_budget_s: float = 0.03
    max_rounds: int = 20
    #: A move (or a workload's set-up) taking longer is given up; its strategy is not run again on that link.
    move_timeout_s: float = 180.0

    def workloads(self) -> tuple[WorkloadSpec, ...]:
        """Every workload setting, sweeps merged, each once."""
        specs: list[WorkloadSpec] = [DirtierSpec(memory_mib=m, dirty_pages_per_s=self.sweep_rate)
                                     for m in self.memory_sweep_mib]
        specs += [DirtierSpec(memory_mib=self.sweep_memory_mib, dirty_pages_per_s=r) for r in self.rate_sweep]
        specs += [s for s in (self.kvstore, self.grower) if s is not None]
        return tuple(dict.fromkeys(specs))

    def node_memory_limit_bytes(self) -> int:
        """The per-workload memory cap to start nodes with: the largest need plus 256 MiB of slack."""
        return (max(s.needs_mib for s in self.workloads()) + 256) * 2**20

    def to_json(self) -> dict:
        return {
            "mode": self.mode, "links": [dataclasses.asdict(p) for p in self.links],
            "strategies": list(self.strategies), "memory_sweep_mib": list(self.memory_sweep_mib),
            "sweep_rate": self.sweep_rate, "rate_sweep": list(self.rate_sweep),
            "sweep_memory_mib": self.sweep_memory_mib,
            "workloads": [spec_params(s) for s in self.workloads()],
            "call_interval_s": self.call_interval_s, "steady_s": self.steady_s, "tail_s": self.tail_s,
            "downtime_budget_s": self.downtime_budget_s, "max_rounds": self.max_rounds,
        }


QUICK = SuiteConfig(
    mode="quick", links=(PROFILES["loopback"], PROFILES["1gbit"]),
    memory_sweep_mib=(1, 8), sweep_rate=1000, rate_sweep=(0, 1000, 10000), sweep_memory_mib=8,
    kvstore=KvstoreSpec(keys=512, puts_per_s=200), grower=GrowerSpec(start_mib=4, grow_mib_per_s=2),
    steady_s=0.3, tail_s=0.3)

FULL = SuiteConfig(
    mode="full", links=(PROFILES["loopback"], PROFILES["1gbit"], PROFILES["100mbit"]),
    memory_sweep_mib=(1, 16, 64, 256, 1024), sweep_rate=1000, rate_sweep=(0, 1000, 10000, 50000),
    sweep_memory_mib=64,
    kvstore=KvstoreSpec(keys=16384, puts_per_s=500), grower=GrowerSpec(start_mib=64, grow_mib_per_s=4),
    steady_s=1.0, tail_s=1.0)

PRESETS = {"quick": QUICK, "full": FULL}
