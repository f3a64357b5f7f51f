"""Run the suite: for each link, start edge-1 and cloud-1, then move every workload with every strategy.

Each move: spawn the workload on edge-1 and set its state up; stream calls
from the client for ``steady_s``; move it to cloud-1 while the stream goes
on; keep streaming for ``tail_s``; check its state; remove it.  The client
runs in this process (in the client namespace on emulated links) and
keeps the time of every call.

Setting up and tearing down processes and namespaces is synchronous and
happens outside trio; each link's moves run in one ``trio.run``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import math
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

import migrate
import nodes
import workloads
from benchmarks import netem

from ._config import SuiteConfig, WorkloadSpec, spec_params
from ._deploy import SOURCE, TARGET, Deployment, client_side, deploy
from ._drivers import driver_for
from ._links import LinkFigures, link_figures
from ._memory import NodeMemory, after_move, before_move
from ._metrics import (CallSample, ClientBlackout, Floor, LatencyStats, calls_during, client_blackout,
                       latency_stats, physical_floor, ratio)
from ._reference import CpuReference, burn, busy_fraction, cpus, read_cpu_counters, reference_for

logger = logging.getLogger(__name__)

#: How long the call stream may take to stop after a move, and a state check to answer.
STREAM_GRACE_S = 30.0
#: Errors that mean a move (or a probe) failed rather than the suite.
MOVE_ERRORS = (nodes.NodeError, nodes.HostError, migrate.MigrateError, MemoryError, trio.TooSlowError)


@dataclass(frozen=True)
class MoveResult:
    """One move of one workload with one strategy over one link: a row of the results."""

    link: str
    workload: str
    label: str
    params: dict
    strategy: str
    raw_memory_bytes: int | None = None
    total_s: float | None = None
    #: the node's report: the client blackout as the nodes saw it (None, with
    #: a note, when it could not tell), how long the source held calls, and
    #: the snapshot bytes sent while it held them
    node_blackout_s: float | None = None
    frozen_s: float | None = None
    final_round_bytes: int | None = None
    rounds: int | None = None
    bytes_sent: int | None = None
    pages_sent: int | None = None
    throttle: float | None = None
    notes: tuple[str, ...] = ()
    calls: int = 0
    client: ClientBlackout | None = None
    latency_steady: LatencyStats | None = None
    latency_during: LatencyStats | None = None
    #: the move's CPU reference (``_reference``): calls in a window without a move while burners use the CPU it used
    reference: CpuReference | None = None
    latency_reference: LatencyStats | None = None
    #: the worst call during the move, and in the reference window, over the steady p99
    worst_to_steady_p99: float | None = None
    reference_worst_to_steady_p99: float | None = None
    dirty_bytes_per_s: float | None = None
    memory: dict[str, NodeMemory] | None = None  # each node's resident set as the move began, and its peak
    floor: Floor | None = None
    blackout_to_floor: float | None = None
    state_ok: bool | None = None
    error: str | None = None


async def _remove_quietly(h) -> None:
    with trio.move_on_after(30) as scope:
        scope.shield = True
        with contextlib.suppress(*MOVE_ERRORS):
            await h.remove()


async def probe_strategy(cluster, strategy: str) -> str | None:
    """Move a 1 MiB workload with ``strategy``; None if it worked, else why not."""
    h = await cluster.spawn(workloads.load("dirtier"), on=SOURCE)
    try:
        await h.call("dt_init", 1)
        with trio.fail_after(60):
            await h.migrate(TARGET, strategy=strategy)
        return None
    except MOVE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await _remove_quietly(h)


async def _raw_memory_bytes(cluster, h) -> int | None:
    client = await cluster.client(cluster.address_of(h.node))
    for w in await client.workloads():
        if w.workload_id == h.workload:
            return w.memory_bytes
    return None


async def measure_move(cluster, link: str, figures: LinkFigures, spec: WorkloadSpec, strategy: str,
                       cfg: SuiteConfig, pids: dict[str, int] | None = None) -> MoveResult:
    """Move one workload from edge-1 to cloud-1 under a steady stream of calls; return its row."""
    driver = driver_for(spec)
    row = MoveResult(link=link, workload=spec.kind, label=spec.label, params=spec_params(spec), strategy=strategy)
    try:
        with trio.fail_after(STREAM_GRACE_S):
            h = await cluster.spawn(workloads.load(driver.workload), on=SOURCE)
    except MOVE_ERRORS as exc:
        return dataclasses.replace(row, error=f"{type(exc).__name__}: {exc}")
    calls: list[CallSample] = []
    dirtied: list[int] = []
    errors: list[str] = []  # caught inside the nursery, so no exception group has to be taken apart
    stop = trio.Event()
    counters: list[tuple[int, ...]] = []  # the machine's CPU counters as the stream, the move and the tail start
    reference: CpuReference | None = None
    window: tuple[float, float] | None = None  # the CPU reference's, after the tail
    memory: dict[str, NodeMemory] = {}
    tail_ended = math.inf

    async def stream(t0: float) -> None:
        next_at = t0
        try:
            while not stop.is_set():
                started = trio.current_time()
                dirtied.append(await driver.tick(h, started - t0))
                finished = trio.current_time()
                calls.append(CallSample(started, finished, h.node))
                next_at = max(next_at + cfg.call_interval_s, finished)
                await trio.sleep_until(next_at)
        except MOVE_ERRORS as exc:
            errors.append(f"a call failed: {type(exc).__name__}: {exc}")

    try:
        with trio.fail_after(cfg.move_timeout_s):
            await driver.setup(h)
            row = dataclasses.replace(row, raw_memory_bytes=await _raw_memory_bytes(cluster, h))
        async with trio.open_nursery() as nursery:
            t0 = trio.current_time()
            counters.append(read_cpu_counters())
            nursery.start_soon(stream, t0)
            await trio.sleep(cfg.steady_s)
            resident = before_move(pids or {})
            began = trio.current_time()
            counters.append(read_cpu_counters())
            try:
                with trio.fail_after(cfg.move_timeout_s):
                    report = await h.migrate(TARGET, strategy=strategy, downtime_budget_s=cfg.downtime_budget_s,
                                             max_rounds=cfg.max_rounds)
            except trio.TooSlowError:
                errors.append(f"TooSlowError: the move took longer than {cfg.move_timeout_s:g} s")
            except MOVE_ERRORS as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            ended = trio.current_time()
            counters.append(read_cpu_counters())
            memory = after_move(pids or {}, resident)
            if not errors:
                await trio.sleep(cfg.tail_s)
                tail_ended = trio.current_time()
                reference = reference_for(busy_fraction(*counters[:2]), busy_fraction(*counters[1:]),
                                          ended - began, cpus())
                window = await burn(reference)
            stop.set()
            # A call held by a broken move would keep the stream, and the suite, waiting.
            nursery.cancel_scope.deadline = trio.current_time() + STREAM_GRACE_S
        if nursery.cancel_scope.cancelled_caught:
            errors.append(f"TooSlowError: a call was still waiting {STREAM_GRACE_S:g} s after the move")
        if not errors:
            with trio.fail_after(STREAM_GRACE_S):
                state_ok = await driver.state_ok(h)
    except MOVE_ERRORS as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        await _remove_quietly(h)
    if errors:
        logger.warning("move failed: %s", errors[0])
        return dataclasses.replace(row, error="; ".join(errors), calls=len(calls))

    ref_calls = [] if window is None else calls_during(calls, *window)
    calls = [c for c in calls if c.finished_s < tail_ended]  # the move's figures end with the tail
    steady = [c for c in calls if c.finished_s < began][1:]  # the first call pays for warming up
    dirty_rate = sum(d for c, d in zip(calls, dirtied) if c.finished_s < began) / (began - t0)
    client = client_blackout(calls, began, ended, source=SOURCE, target=TARGET)
    floor = physical_floor(dirty_bytes_per_s=dirty_rate, rtt_s=figures.rtt_s,
                           bandwidth_bytes_per_s=figures.bandwidth_bytes_per_s)
    lat_steady = latency_stats([c.latency_s for c in steady])
    lat_during = latency_stats([c.latency_s for c in calls_during(calls, began, ended)])
    lat_ref = latency_stats([c.latency_s for c in ref_calls])
    p99 = lat_steady and lat_steady.p99_s
    return dataclasses.replace(
        row, total_s=report.total_s, node_blackout_s=report.client_blackout_s, frozen_s=report.frozen_s,
        final_round_bytes=report.final_round_bytes, rounds=report.rounds,
        bytes_sent=report.bytes_sent, pages_sent=report.pages_sent, throttle=report.throttle,
        notes=tuple(report.notes), calls=len(calls), client=client,
        latency_steady=lat_steady, latency_during=lat_during, reference=reference, latency_reference=lat_ref,
        worst_to_steady_p99=ratio(lat_during and lat_during.max_s, p99),
        reference_worst_to_steady_p99=ratio(lat_ref and lat_ref.max_s, p99),
        dirty_bytes_per_s=dirty_rate, memory=memory or None, floor=floor,
        blackout_to_floor=ratio(client.blackout_s, floor.floor_s), state_ok=state_ok)


def _worst(stats: LatencyStats | None) -> float | None:
    return None if stats is None else stats.max_s


def _ms_or_na(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f} ms"


@dataclass
class Progress:
    """Progress lines on stderr: which move, how far, how long so far."""

    total: int
    done: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)
    write: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        self.write(f"[suite {self.done}/{self.total} {elapsed:5.0f} s] {text}")

    def finished(self, row: MoveResult) -> None:
        self.done += 1
        if row.error:
            self.say(f"{row.link} {row.label} {row.strategy}: FAILED {row.error}")
            return
        self.say(f"{row.link} {row.label} {row.strategy}: client blackout {row.client.blackout_s * 1e3:.1f} ms "
                 f"(handover {_ms_or_na(row.client.handover_s)}, node {_ms_or_na(row.node_blackout_s)}, "
                 f"frozen {row.frozen_s * 1e3:.1f} ms, "
                 f"{row.blackout_to_floor:.1f}x floor), "
                 f"total {row.total_s:.2f} s, {row.rounds} rounds; worst call {_ms_or_na(_worst(row.latency_during))}, "
                 f"same CPU without a move {_ms_or_na(_worst(row.latency_reference))}")


async def _measure_link(deployment: Deployment, cfg: SuiteConfig, strategies: list[str] | None,
                        unavailable: dict[str, str], abandoned: dict[str, str], figures: LinkFigures,
                        progress: Progress) -> list[MoveResult]:
    """Probe the strategies (first link only), then make every move over one deployed link.

    ``unavailable`` collects strategies the probe refused; ``abandoned``
    those that hung on this link, whose later moves on it are recorded as
    not run.
    """
    rows = []
    name = deployment.profile.name
    async with migrate.connect(deployment.edge, deployment.cloud, tls=deployment.tls, local=False) as cluster:
        # Like migrate-node, keep start-up objects out of the collector's full passes: this process's
        # own 18-31 ms collections fell into moves' windows and were counted as their blackout.
        gc.collect()
        gc.freeze()
        if strategies is None:  # the first link probes every strategy once
            strategies = []
            for strategy in cfg.strategies:
                why = await probe_strategy(cluster, strategy)
                if why is None:
                    strategies.append(strategy)
                else:
                    unavailable[strategy] = why
                    progress.say(f"{strategy}: not available ({why})")
            progress.total = progress.total * len(strategies) // len(cfg.strategies)
        for spec in cfg.workloads():
            for strategy in strategies:
                if strategy in abandoned:
                    row = MoveResult(link=name, workload=spec.kind, label=spec.label, params=spec_params(spec),
                                     strategy=strategy, error=f"not run: {abandoned[strategy]}")
                else:
                    progress.say(f"{name} {spec.label} {strategy} ...")
                    row = await measure_move(cluster, name, figures, spec, strategy, cfg, deployment.pids)
                    if row.error and row.error.startswith("TooSlowError"):
                        # One hung move costs minutes; the next ones on this link would most likely hang too.
                        abandoned[strategy] = f"it hung on {spec.label}"
                progress.finished(row)
                rows.append(row)
    return rows


def run_suite(cfg: SuiteConfig, root: Path, *, progress: Progress | None = None) -> dict:
    """Run every link, workload and strategy of ``cfg``; return the results as JSON-ready data.

    Links that cannot be emulated here are skipped and said to be; at least
    loopback always runs.  Nodes and namespaces are gone when this returns
    or raises.
    """
    progress = progress or Progress(total=0)
    checkout = _checkout()  # before the nodes start from this checkout
    removed = netem.remove_stale_namespaces()
    if removed:
        progress.say(f"deleted namespaces of dead runs: {', '.join(removed)}")
    why_not = netem.unavailable_reason()
    links, skipped = [], {}
    for profile in cfg.links:
        if profile.emulated and why_not:
            skipped[profile.name] = why_not
        else:
            links.append(profile)
    for name, why in skipped.items():
        progress.say(f"link {name} skipped: {why}")
    if not links:
        progress.say("falling back to loopback")
        links = [netem.LOOPBACK]
    progress.total = len(links) * len(cfg.workloads()) * len(cfg.strategies)
    rows: list[MoveResult] = []
    strategies: list[str] | None = None
    unavailable: dict[str, str] = {}
    abandoned: dict[str, dict[str, str]] = {}
    link_info = []
    for profile in links:
        figures = link_figures(profile)
        try:
            with deploy(profile, root, cfg.node_memory_limit_bytes()) as deployment, client_side(deployment):
                progress.say(f"link {profile.name}: edge-1 {deployment.edge}, cloud-1 {deployment.cloud}")
                got = trio.run(_measure_link, deployment, cfg, strategies, unavailable,
                               abandoned.setdefault(profile.name, {}), figures, progress)
        except netem.NetemError as exc:
            skipped[profile.name] = str(exc)
            progress.say(f"link {profile.name} skipped: {exc}")
            continue
        rows += got
        if strategies is None:
            strategies = [s for s in cfg.strategies if s not in unavailable]
        link_info.append({"profile": dataclasses.asdict(profile), "figures": dataclasses.asdict(figures),
                          "namespaces": profile.emulated})
    return {
        "suite": "handover", "config": cfg.to_json(),
        "environment": {"python": platform.python_version(), "machine": platform.machine(),
                        "kernel": platform.release(), "cpus": cpus(), **checkout,
                        "emulation": "namespaces" if not why_not else f"unavailable: {why_not}"},
        "links": link_info, "skipped_links": skipped,
        "strategies": strategies or [], "unavailable_strategies": unavailable, "abandoned_strategies": {k: v for k, v in abandoned.items() if v},
        "results": [dataclasses.asdict(r) for r in rows],
    }


def _checkout() -> dict:
    """The commit measured, and the files outside benchmarks/ that differed from it (others may be editing)."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "uncommitted": []}
    changed = [line[3:] for line in status.splitlines() if not line[3:].startswith(("benchmarks/", "tests/"))]
    return {"commit": head, "uncommitted": changed}
