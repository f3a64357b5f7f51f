"""The soak's figures and report: lost, duplicated, move latency and client-observed blackout, as JSON and Markdown."""

from __future__ import annotations

import bisect
import dataclasses
from collections import Counter

from benchmarks._soak_actors import Tally
from benchmarks.loads import CounterLoad
from benchmarks.suite import client_blackout, percentile


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


def summarise(config, tally, loads, memories, checks, memory_checks, wall_s, handles) -> dict:
    """The run's result: its config, figures, each workload's checks and the verdict ``ok``."""
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
