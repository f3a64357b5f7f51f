"""Soak run: a thousand moves under steady calls while nodes are killed and restarted.

    python -m benchmarks.soak [--quick] [--moves N] [--seed S] [--out DIR]
    ./dev bench --soak [--quick]

Three real ``migrate-node`` processes (edge-1, edge-2, cloud-1, mutual TLS)
and an application with its local node.  Two ``counter`` workloads run, each
with incr callers (4 in all, each its own handle) and a writer of random
bytes into a buffer of its memory (``benchmarks.loads``).  Workload "a" is
protected by checkpoints to the local node, workload "b" by a hot standby
on the local node, so a killed owner's workload fails over there.

* A mover per workload moves it again and again to a random other node
  that is up, with a random strategy (pre-copy, stop-copy, dual) until the moves done
  reach the target.
* Each node has a chaos task: after a random time it SIGKILLs the node (or
  now and then SIGTERMs it), waits a moment and restarts it on its address
  and data dir; half the restarts arm MIGRATE_NODE_CRASH_AT with a random
  phase of a move, so the node dies by itself when a move reaches it.
* At the end the callers stop and every answer is checked: counter results
  exactly 1..N with ``get() == N`` and buffers equal to their models byte
  for byte.  Lost and duplicated calls must be 0 (exit status 1 otherwise).

Figures: moves done and aborted, kills, failovers, restarts, calls, lost,
duplicated, wall time, move latency p50/p99 and the client-observed
blackout (the longest gap in a workload's call completions during its
move, less the steady gap; ``benchmarks.suite.client_blackout``) p50/p99/max.
``--seed`` fixes every random choice (targets, strategies, kill times and
phases, bytes written); how they interleave with real time does not repeat.
Writes soak.json and soak.md (soak-quick.* with ``--quick``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import bisect
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import trio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import migrate  # noqa: E402
import workloads  # noqa: E402
from benchmarks.loads import CounterLoad, MemoryLoad  # noqa: E402
from benchmarks.suite import client_blackout, percentile  # noqa: E402
from migrate.launcher import LocalCluster, NodeProcess  # noqa: E402
from migrate.wire import MIGRATION_PHASES  # noqa: E402
from nodes import NodeError, configure_logging  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
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
                record.update(outcome="done", node_blackout_s=report.blackout_s)
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


def _blackouts(tally: Tally, loads: dict[str, CounterLoad], handles: dict[str, object]) -> list[float]:
    """The client-observed blackout of every move done, from its workload's call completions.

    Only calls within a second of the move are looked at: enough for the
    steady gap around it, and it keeps this linear in the calls.
    """
    by_workload = {}
    for key, load in loads.items():
        samples = sorted(load.samples, key=lambda s: s.finished_s)
        by_workload[handles[key].workload] = (samples, [s.finished_s for s in samples])
    out = []
    for move in tally.moves:
        if move["outcome"] != "done":
            continue
        samples, finished = by_workload[move["workload"]]
        t0, t1 = move["started_s"], move["ended_s"]
        near = samples[bisect.bisect_left(finished, t0 - 1.0):bisect.bisect_right(finished, t1 + 1.0)]
        out.append(client_blackout(near, t0, t1).blackout_s)
    return out


async def soak(config: SoakConfig, root: Path) -> dict:
    """Run the soak; return its figures and verdicts."""
    tally = Tally()
    rng = random.Random(config.seed)
    started = time.perf_counter()
    loads: dict[str, CounterLoad] = {}
    memories: dict[str, MemoryLoad] = {}
    handles: dict[str, object] = {}
    verdict_errors: list[str] = []
    stalled = False
    with LocalCluster(root) as lc:
        fleet = Fleet(lc, config, tally)
        fleet.start()
        addresses = [str(node.address) for node in fleet.nodes.values()]
        async with migrate.connect(*addresses, tls=lc.tls_for("soak-app", "node")) as cluster:
            events = cluster.events()
            counter = workloads.load("counter")
            per_workload = [config.callers // len(config.protections) + (i < config.callers % len(config.protections))
                            for i in range(len(config.protections))]
            for key, (mode, callers) in enumerate(zip(config.protections, per_workload)):
                h = handles[key] = await _spawn_somewhere(cluster, counter, fleet, rng)
                await h.protect(mode, interval_s=config.checkpoint_interval_s, to=migrate.LOCAL)
                memories[key] = MemoryLoad(await cluster.attach(h.workload), config.buffer_bytes,
                                           seed=rng.randrange(2**32), pause_s=config.call_pause_s)
                await memories[key].setup()
                loads[key] = CounterLoad([await cluster.attach(h.workload) for _ in range(callers)],
                                         pause_s=config.call_pause_s)
            stop_loads, stop_chaos = trio.Event(), trio.Event()
            async with trio.open_nursery() as outer:
                outer.start_soon(_count_events, events, tally)
                outer.start_soon(_print_progress, config, tally, loads, started)
                async with trio.open_nursery() as nursery:
                    for key in handles:
                        nursery.start_soon(loads[key].run, stop_loads)
                        nursery.start_soon(memories[key].run, stop_loads)
                    for name, _ in NODES:
                        nursery.start_soon(fleet.chaos, name, stop_chaos)
                    with trio.move_on_after(config.deadline_s) as deadline:
                        async with trio.open_nursery() as movers:
                            for h in handles.values():
                                movers.start_soon(Mover(h, fleet, config, tally, random.Random(rng.randrange(2**32))).run)
                    stalled = deadline.cancelled_caught
                    stop_chaos.set()
                    await trio.sleep(0.5)  # calls flow once more after the last kill and restart
                    stop_loads.set()
                checks, memory_checks = {}, {}
                for key in handles:
                    try:
                        checks[key] = await loads[key].check(handles[key])
                        memory_checks[key] = await memories[key].check()
                    except Exception as exc:  # the verdict itself could not be read: a failure to report
                        verdict_errors.append(f"workload {key}: {type(exc).__name__}: {exc}")
                outer.cancel_scope.cancel()
    wall_s = time.perf_counter() - started
    result = _figures(config, tally, loads, memories, checks, memory_checks, wall_s, handles)
    result["stalled"] = stalled
    result["verdict_errors"] = verdict_errors
    result["ok"] = result["ok"] and not stalled and not verdict_errors
    return result


async def _print_progress(config: SoakConfig, tally: Tally, loads: dict[str, CounterLoad], started: float) -> None:
    while True:
        await trio.sleep(5.0)
        aborted = len(tally.moves) - tally.done
        calls = sum(len(load.results) for load in loads.values())
        errors = sum(len(load.errors) for load in loads.values())
        print(f"[soak] {time.perf_counter() - started:6.1f} s  {tally.done}/{config.moves} moves done, "
              f"{aborted} aborted, {sum(tally.kills.values())} kills, {tally.events['failed_over']} failovers, "
              f"{tally.restarts} restarts, {calls} calls, {errors} failed", file=sys.stderr, flush=True)


async def _spawn_somewhere(cluster, module: bytes, fleet: Fleet, rng: random.Random):
    """Spawn on a random node that is up (an armed node may die at once; the caller copes)."""
    while True:
        name = rng.choice([n for n, _ in NODES if fleet.alive(n)])
        try:
            return await cluster.spawn(module, on=name)
        except (migrate.MigrateError, NodeError):
            await trio.sleep(0.2)


async def _count_events(events, tally: Tally) -> None:
    async for event in events:
        tally.events[event.kind] += 1


def _figures(config, tally, loads, memories, checks, memory_checks, wall_s, handles) -> dict:
    done = [m for m in tally.moves if m["outcome"] == "done"]
    latencies = [m["took_s"] for m in done]
    blackouts = _blackouts(tally, loads, handles)
    calls = (sum(c.calls for c in checks.values())
             + sum(m.writes + m.reads + m.errors for m in memory_checks.values()))
    lost = sum(c.lost for c in checks.values()) + sum(m.errors for m in memory_checks.values())
    # A workload whose verdict could not be read: at least its failed calls are lost.
    unverified = [key for key in handles if key not in checks or key not in memory_checks]
    for key in unverified:
        failed = len(loads[key].errors) + len(memories[key].errors)
        calls += len(loads[key].results) + memories[key].writes + memories[key].reads + failed
        lost += failed
    duplicated = sum(c.duplicated for c in checks.values())
    mismatched = sum(m.mismatched_bytes for m in memory_checks.values())
    ms = lambda v: round(v * 1e3, 2) if v is not None else None  # noqa: E731
    pct = lambda vs, q: percentile(vs, q) if vs else None  # noqa: E731
    figures = {
        "moves_done": len(done),
        "moves_aborted": len(tally.moves) - len(done),
        "aborted_reasons": dict(Counter(m["reason"] for m in tally.moves if m["outcome"] != "done")),
        "kills": sum(tally.kills.values()),
        "kills_by_kind": dict(tally.kills),
        "failovers": tally.events["failed_over"],
        "restarts": tally.restarts,
        "unclean_sigterm": tally.unclean_sigterm,
        "events": dict(tally.events),
        "calls": calls,
        "lost": lost,
        "duplicated": duplicated,
        "mismatched_bytes": mismatched,
        "mismatched_reads": sum(m.mismatched_reads for m in memory_checks.values()),
        "unverified_workloads": len(unverified),
        "wall_s": round(wall_s, 1),
        "move_latency_p50_ms": ms(pct(latencies, 0.5)),
        "move_latency_p99_ms": ms(pct(latencies, 0.99)),
        "blackout_p50_ms": ms(pct(blackouts, 0.5)),
        "blackout_p99_ms": ms(pct(blackouts, 0.99)),
        "blackout_max_ms": ms(max(blackouts) if blackouts else None),
        "strategies": dict(Counter(m["strategy"] for m in done)),
    }
    return {
        "config": dataclasses.asdict(config),
        "figures": figures,
        "workloads": [{"protection": config.protections[key],
                       "counter": dataclasses.asdict(checks[key]) if key in checks else None,
                       "memory": dataclasses.asdict(memory_checks[key]) if key in memory_checks else None,
                       "first_errors": (loads[key].errors + memories[key].errors)[:5]}
                      for key in handles],
        "ok": lost == 0 and duplicated == 0 and mismatched == 0 and not unverified,
    }


def markdown(result: dict) -> str:
    f, c = result["figures"], result["config"]
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(f["kills_by_kind"].items())) or "none"
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(f["aborted_reasons"].items())) or "none"
    rows = [
        ("moves done", f["moves_done"]),
        ("moves aborted", f"{f['moves_aborted']} ({reasons})"),
        ("kills", f"{f['kills']} ({kinds})"),
        ("failovers", f["failovers"]),
        ("restarts", f["restarts"]),
        ("calls made", f["calls"]),
        ("lost", f["lost"]),
        ("duplicated", f["duplicated"]),
        ("bytes differing from the model", f["mismatched_bytes"]),
        ("workloads whose state could not be read at the end", f["unverified_workloads"]),
        ("wall time", f"{f['wall_s']} s"),
        ("move latency p50 / p99", f"{f['move_latency_p50_ms']} / {f['move_latency_p99_ms']} ms"),
        ("client-observed blackout p50 / p99 / max",
         f"{f['blackout_p50_ms']} / {f['blackout_p99_ms']} / {f['blackout_max_ms']} ms"),
    ]
    lines = [
        "# Soak: moves under calls while nodes are killed and restarted",
        "",
        f"Seed {c['seed']}; edge-1, edge-2 and cloud-1 (real migrate-node processes, mutual TLS) and the "
        f"application's local node. {len(c['protections'])} counter workloads, protected by "
        f"{' and '.join(c['protections'])} on the local node, with {c['callers']} incr callers in all and a "
        f"memory writer each into a {c['buffer_bytes'] // 1024} KiB buffer; moves to random nodes with random "
        "strategies; every "
        f"node is killed about every {c['kill_every_s']} s (SIGKILL, {int(c['sigterm_share'] * 100)}% SIGTERM) "
        f"and restarted on its data dir, {int(c['phase_share'] * 100)}% of restarts armed to crash at a random "
        "phase of a move. Lost and duplicated are checked from the counter values and the buffer bytes "
        "at the end.",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        f"Verdict: {'nothing lost, nothing duplicated, state exact' if result['ok'] else 'FAILED'}.",
        *(["", f"Stopped at the {c['deadline_s']} s deadline before the moves were done."] if result["stalled"] else []),
        *(f"\n{error}" for error in result["verdict_errors"]),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.moves} moves, kills every {QUICK.kill_every_s} s")
    parser.add_argument("--moves", type=int, help="moves done before the run ends")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--protection", help="modes of the workloads' protection, comma-separated "
                        "(checkpoint, standby; one workload each)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", type=Path, help="run in this directory and keep the node and application logs")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else SoakConfig()
    config = dataclasses.replace(config, seed=args.seed, **({"moves": args.moves} if args.moves else {}))
    if args.protection:
        modes = tuple(args.protection.split(","))
        if not set(modes) <= {"checkpoint", "standby"}:
            parser.error(f"--protection takes checkpoint and standby, not {args.protection!r}")
        config = dataclasses.replace(config, protections=modes)
    if config.moves < 1:
        parser.error("--moves must be at least 1")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        with open(args.keep / "app.log", "w") as log:
            configure_logging("app", "info", stream=log)
            result = trio.run(soak, config, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="wm-soak-") as tmp:
            result = trio.run(soak, config, Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    name = "soak-quick" if args.quick else "soak"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / f"{name}.md").write_text(table)
    print(table)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
