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

The actors (fleet, chaos, movers) are in ``benchmarks._soak_actors``, the
figures and the report in ``benchmarks._soak_report``; this module runs them.
"""

from __future__ import annotations

import dataclasses
import random
import sys
import tempfile
import time
from pathlib import Path

import trio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import migrate  # noqa: E402
import workloads  # noqa: E402
from benchmarks._measure import argument_parser, write_results  # noqa: E402
from benchmarks._soak_actors import NODES, QUICK, STRATEGIES, Fleet, Mover, SoakConfig, Tally  # noqa: E402
from benchmarks._soak_report import markdown, summarise  # noqa: E402
from benchmarks.loads import CounterLoad, MemoryLoad  # noqa: E402
from migrate.launcher import LocalCluster  # noqa: E402
from nodes import NodeError, configure_logging  # noqa: E402

__all__ = ["NODES", "QUICK", "STRATEGIES", "Fleet", "Mover", "SoakConfig", "Tally", "main", "markdown", "soak"]


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
    result = summarise(config, tally, loads, memories, checks, memory_checks, wall_s, handles)
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


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, f"{QUICK.moves} moves, kills every {QUICK.kill_every_s} s")
    parser.add_argument("--moves", type=int, help="moves done before the run ends")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--protection", help="modes of the workloads' protection, comma-separated "
                        "(checkpoint, standby; one workload each)")
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
    write_results(args.out, "soak", args.quick, result, markdown(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
