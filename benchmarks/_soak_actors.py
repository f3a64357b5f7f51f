"""The soak's actors and its settings: the node fleet with its chaos, the movers, and the tally they keep.

``Fleet`` starts edge-1, edge-2 and cloud-1 and, one task a node, kills
each now and then (SIGKILL, sometimes SIGTERM, or a crash armed at a random
phase of a move) and restarts it on its address and data dir.  ``Mover``
moves one workload to random other nodes that are up with random
strategies until the run has its moves.  Both count what happened in a
``Tally``; ``SoakConfig`` says how much of it a run does.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

import trio

import migrate
from migrate.launcher import LocalCluster, NodeProcess
from migrate.wire import MIGRATION_PHASES
from nodes import NodeError

NODES = (("edge-1", "edge"), ("edge-2", "edge"), ("cloud-1", "cloud"))
STRATEGIES = ("precopy", "stop-copy", "dual")


@dataclass(frozen=True)
class SoakConfig:
    """What one soak run does; ``QUICK`` is the smoke-test size."""

    moves: int = 1000            # moves done (aborted ones come on top)
    callers: int = 4             # incr callers, split over the workloads
    seed: int = 1
    kill_every_s: float = 10.0   # mean time between one node's random kills
    sigterm_share: float = 0.2   # of random kills, the share that are SIGTERM (clean stop) instead
    phase_share: float = 0.5     # of restarts, the share armed to crash at a random phase
    down_s: tuple[float, float] = (0.2, 1.0)  # how long a node stays down, uniform
    buffer_bytes: int = 256 * 1024
    checkpoint_interval_s: float = 0.5
    call_pause_s: float = 0.002  # between one caller's calls
    protections: tuple[str, ...] = ("checkpoint", "standby")  # one workload each, both to the local node
    deadline_s: float = 3600.0   # a run that has not done its moves by then stops and fails


QUICK = SoakConfig(moves=50, kill_every_s=6.0, deadline_s=90.0)


@dataclass
class Tally:
    """What happened during the run, for the figures."""

    moves: list[dict] = field(default_factory=list)
    kills: Counter = field(default_factory=Counter)  # "sigkill", "sigterm", "phase:<phase>"
    restarts: int = 0
    events: Counter = field(default_factory=Counter)
    unclean_sigterm: int = 0  # SIGTERMs after which the node did not exit 0

    @property
    def done(self) -> int:
        return sum(m["outcome"] == "done" for m in self.moves)


class Fleet:
    """The node processes, and the chaos that kills and restarts them."""

    def __init__(self, lc: LocalCluster, config: SoakConfig, tally: Tally) -> None:
        self.lc, self.config, self.tally = lc, config, tally
        self.nodes: dict[str, NodeProcess] = {}
        # One generator per node, so each node's kills repeat whatever the others do.
        self.rngs = {name: random.Random(f"{config.seed}:{name}") for name, _ in NODES}

    def start(self) -> None:
        for name, role in NODES:
            self.nodes[name] = self.lc.start(name, role, env=self._arm(name))

    def _arm(self, name: str) -> dict[str, str]:
        rng = self.rngs[name]
        if rng.random() < self.config.phase_share:
            return {"MIGRATE_NODE_CRASH_AT": rng.choice(MIGRATION_PHASES)}
        return {}

    def alive(self, name: str) -> bool:
        return self.nodes[name].proc.poll() is None

    async def chaos(self, name: str, stop: trio.Event) -> None:
        """Kill node ``name`` now and then, notice when it crashed at its phase, and restart it."""
        rng = self.rngs[name]
        while not stop.is_set():
            with trio.move_on_after(rng.expovariate(1 / self.config.kill_every_s)):
                while self.alive(name) and not stop.is_set():
                    await trio.sleep(0.05)
            if stop.is_set():
                return
            node = self.nodes[name]
            if not self.alive(name):
                self.tally.kills[f"phase:{node.env.get('MIGRATE_NODE_CRASH_AT', '?')}"] += 1
            elif rng.random() < self.config.sigterm_share:
                self.tally.kills["sigterm"] += 1
                if await trio.to_thread.run_sync(node.stop, 30.0) != 0:
                    self.tally.unclean_sigterm += 1
            else:
                self.tally.kills["sigkill"] += 1
                node.kill()
            await trio.sleep(rng.uniform(*self.config.down_s))
            self.nodes[name] = await trio.to_thread.run_sync(lambda: self.lc.restart(node, env=self._arm(name)))
            self.tally.restarts += 1


class Mover:
    """Moves one workload to random other nodes until the run has its moves."""

    def __init__(self, handle, fleet: Fleet, config: SoakConfig, tally: Tally, rng: random.Random) -> None:
        self.handle, self.fleet, self.config, self.tally, self.rng = handle, fleet, config, tally, rng

    async def run(self) -> None:
        failed_in_a_row = 0
        while self.tally.done < self.config.moves:
            here = self.handle.node
            # Like an operator, pick among the nodes that are up; one may still die on the way.
            targets = [name for name, _ in NODES if name != here and self.fleet.alive(name)]
            if not targets:
                await trio.sleep(0.1)
                continue
            target = self.rng.choice(targets)
            strategy = self.rng.choice(STRATEGIES)
            record = {"workload": self.handle.workload, "from": here, "to": target, "strategy": strategy}
            started = time.perf_counter()
            try:
                report = await self.handle.migrate(target, strategy=strategy)
                record.update(outcome="done", node_blackout_s=report.frozen_s)
                failed_in_a_row = 0
            except (migrate.MigrateError, NodeError) as exc:
                record.update(outcome="aborted", reason=_reason(exc))
                failed_in_a_row += 1
            ended = time.perf_counter()
            record.update(took_s=ended - started, started_s=started, ended_s=ended)
            self.tally.moves.append(record)
            # Back off while moves keep failing (a node on the way down or up): 20 ms to 1 s.
            await trio.sleep(min(1.0, 0.02 * 2 ** failed_in_a_row) * self.rng.uniform(0.5, 1.0))


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("cannot reach", "shutting down", "already moving", "diverged", "no node can serve",
                   "aborted", "failover"):
        if marker in text:
            return marker
    return type(exc).__name__
