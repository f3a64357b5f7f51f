"""Write the suite's results: JSON for machines, a Markdown table for people, PNG plots; check them.

``check_results`` is what CI relies on: every row has its fields, every
setting has a row per strategy, and every ratio agrees with the numbers
it was computed from in the same file.  It asserts nothing about timing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

from ._metrics import ClientBlackout, Floor, LatencyStats
from ._reference import CpuReference
from ._run import MoveResult

logger = logging.getLogger(__name__)

TOP_FIELDS = ("suite", "config", "environment", "links", "skipped_links", "strategies", "unavailable_strategies",
              "abandoned_strategies", "results", "plots")
ROW_FIELDS = tuple(f.name for f in dataclasses.fields(MoveResult))
#: Issue 4's goal setting (256 MiB dirtying 1,000 pages/s); smaller runs take their largest size.
HEADLINE_MAX_MIB = 256


def stem(mode: str) -> str:
    return "suite" if mode == "full" else f"suite-{mode}"


def _ms(seconds: float | None, digits: int = 1) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.{digits}f}"


def _x(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _mib(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**20:.1f}"


def headline_label(data: dict) -> str | None:
    """The dirtier setting the headline table shows: the largest swept size up to 256 MiB, at the sweep rate."""
    cfg = data["config"]
    sizes = [m for m in cfg["memory_sweep_mib"] if m <= HEADLINE_MAX_MIB] or cfg["memory_sweep_mib"]
    if not sizes:
        return None
    wanted = {"kind": "dirtier", "memory_mib": max(sizes), "dirty_pages_per_s": cfg["sweep_rate"]}
    for row in data["results"]:
        if all(row["params"].get(k) == v for k, v in wanted.items()):
            return row["label"]
    return None


def _at(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.2f}"


def _row_cells(r: dict) -> list[str]:
    if r["error"]:
        text = " ".join(r["error"].replace("|", "/").split())
        return [text if text.startswith("not run") else f"failed: {text}"] + [""] * 13
    during, steady, client = r["latency_during"], r["latency_steady"], r["client"]
    return [
        _ms(client["blackout_s"]), _at(client.get("largest_gap_started_s")), _ms(client.get("handover_s")),
        _ms(r["floor"]["floor_s"], 2), _x(r["blackout_to_floor"]),
        _ms(r["node_blackout_s"]), _ms(r["frozen_s"]),
        "/".join(_ms(during and during[k]) for k in ("p50_s", "p99_s", "max_s")),
        "/".join(_ms(steady and steady[k]) for k in ("p50_s", "p99_s")),
        f"{r['total_s']:.2f}", str(r["rounds"]), _mib(r["bytes_sent"]), _mib(r["final_round_bytes"]), "yes" if r["state_ok"] else "**NO**",
    ]


_HEADER = ("| client blackout ms | at s | client handover ms | floor ms | × floor | node blackout ms | frozen ms | call p50/p99/max during ms "
           "| steady p50/p99 ms | total s | rounds | MiB sent | final MiB | state exact |")


def markdown(data: dict) -> str:
    """The Markdown report: setting, headline table, every move, snapshot sizes, plots."""
    env, cfg = data["environment"], data["config"]
    out = [f"# Handover benchmark suite ({cfg['mode']})", ""]
    out.append(f"{env['cpus']} CPUs, {env['machine']}, Linux {env['kernel']}, Python {env['python']}. "
               f"Link emulation: {env['emulation']}.")
    if env.get("commit"):
        dirty = env.get("uncommitted") or []
        out.append(f"Measured at commit {env['commit']}"
                   + (f", with uncommitted changes to {', '.join(dirty)}." if dirty else "."))
    for name, why in data["skipped_links"].items():
        out.append(f"- Link **{name}** was not run: {why}.")
    for name, why in data["unavailable_strategies"].items():
        out.append(f"- Strategy **{name}**: not available ({why}).")
    for link, gave_up in data["abandoned_strategies"].items():
        for name, why in gave_up.items():
            out.append(f"- Strategy **{name}** on {link}: later moves on this link not run, because {why}.")
    out += ["", "| link | bandwidth (floor) | RTT client-edge / edge-cloud / client-cloud | floor figures |",
            "|---|---|---|---|"]
    for link in data["links"]:
        p, f = link["profile"], link["figures"]
        rate = "unlimited" if p["rate_bits_per_s"] is None else f"{p['rate_bits_per_s'] / 1e6:g} Mbit/s (tbf)"
        rtts = " / ".join(_ms(p[k]) for k in ("client_edge_rtt_s", "edge_cloud_rtt_s", "client_cloud_rtt_s"))
        out.append(f"| {p['name']} | {rate}; floor uses {f['bandwidth_bytes_per_s'] * 8 / 1e6:.0f} Mbit/s "
                   f"| {rtts} ms added | {f['source']}: RTT {_ms(f['rtt_s'], 3)} ms |")
    label = headline_label(data)
    if label:
        out += ["", f"## Headline: {label}, edge-1 → cloud-1", "",
                "| link | strategy " + _HEADER, "|---|---" + "|---" * 14 + "|"]
        for r in data["results"]:
            if r["label"] == label:
                out.append(f"| {r['link']} | {r['strategy']} | " + " | ".join(_row_cells(r)) + " |")
    out += ["", "## How to read this", "",
            "- Every move goes from edge-1 to cloud-1, both real `migrate-node` processes with mutual TLS. "
            "The client streams calls at one every "
            f"{cfg['call_interval_s'] * 1e3:g} ms (back to back when calls take longer) for {cfg['steady_s']:g} s "
            f"before the move, during it and {cfg['tail_s']:g} s after.",
            "- **Client blackout**: the largest gap between two call completions that overlaps the move, minus "
            "the steady gap (the larger of the median gaps before and after the move, since the path to "
            "cloud-1 may be longer); **at**: when that gap began, in seconds from the start of the move "
            "(a stall early in the move is not the switch). **Client handover**: the switch as the client "
            "saw it, from the last completion of a call edge-1 served to the first of one cloud-1 served "
            "(redirects included), not less the steady gap, as the node measures its own. **Node blackout**: the client blackout as the nodes' report estimates it, "
            "from the last call the source served before freezing to the first call cloud-1 served after the "
            "commit (one one-way latency too long; n/a when no call waited at the commit). **Frozen**: how long "
            "the source held calls. **Final MiB**: the snapshot bytes sent while it held them.",
            "- **Floor**: the least blackout the link allows a move that stops the source: the bytes the "
            "workload dirties in one edge-cloud round trip (its measured dirty rate × RTT), divided by the "
            "bandwidth, plus that RTT. **× floor** is the client blackout over it. The floor counts raw 4 KiB "
            "pages at the unthrottled rate, so compression, throttling (pre-copy's auto-converge) or a "
            "strategy that never stops the source for a transfer (dual) can go below 1.",
            "- **Calls during** are those in flight at any time during the move; **steady** those before it. "
            "A kvstore call is one put: two requests (write the pair into guest memory, call `kv_put`), or "
            "one `kv_count` when no put is due. The dirtier's call is `dt_dirty` with the pages owed at its "
            "rate; the grower's is `grow_mb` with the MiB owed, or `pages`.",
            "- **Total**: the node's migration time. **Rounds** and **MiB sent**: snapshot rounds and bytes on "
            "the wire (compressed). **State exact**: after the move the workload's own counters match every "
            "call the client made, exactly once.",
            "", "## Every move", "", "| link | workload | strategy " + _HEADER, "|---|---|---" + "|---" * 14 + "|"]
    for r in data["results"]:
        out.append(f"| {r['link']} | {r['label']} | {r['strategy']} | " + " | ".join(_row_cells(r)) + " |")
    out += worst_calls(data)
    out += node_memory(data)
    sizes = snapshot_sizes(data)
    if sizes:
        out += ["", "## Snapshot size against raw memory", "",
                "The stop-copy move sends one full snapshot (zstd, zero pages left out); raw is the "
                "workload's linear memory as the node reports it.", "",
                "| workload | raw MiB | snapshot MiB | snapshot / raw |", "|---|---|---|---|"]
        for s in sizes:
            out.append(f"| {s['label']} | {_mib(s['raw_memory_bytes'])} | {_mib(s['snapshot_bytes'])} "
                       f"| {_x(s['ratio'])} |")
    out += ["", "## Plots", ""]
    if isinstance(data["plots"], list):
        out += [f"![{Path(p).stem}]({Path(p).name})" for p in data["plots"]]
    else:
        out.append(f"No plots: {data['plots']}.")
    return "\n".join(out) + "\n"


def worst_calls(data: dict) -> list[str]:
    """The worst call of each move beside its references: the steady p99, and the same CPU use without a move."""
    rows = [r for r in data["results"] if not r["error"] and r["latency_reference"] and r["latency_during"]]
    if not rows:
        return []
    out = ["", "## Worst calls against their references", "",
           "After each move's tail, a window as long as the move (at most 5 s) runs without a move while one "
           "burner process per CPU, none of it this project's code, is busy for the share of the time that the "
           "move added to the machine's busy share (/proc/stat, move against the steady stream before it). "
           "Its worst call is what that much unrelated CPU work costs the call stream on this machine. The window "
           "follows the move, so its calls go to cloud-1: over an emulated link they take the longer client-cloud "
           "path, and only loopback rows compare it with the steady p99 (calls to edge-1).", "",
           "| link | workload | strategy | steady p99 / max ms | worst during move ms | × steady p99 "
           "| machine busy steady / move | burners × duty, s | worst in reference ms | × steady p99 |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        steady, during, ref = r["latency_steady"], r["latency_during"], r["reference"]
        out.append(f"| {r['link']} | {r['label']} | {r['strategy']} | {_ms(steady['p99_s'], 2)} / "
                   f"{_ms(steady['max_s'])} | {_ms(during['max_s'])} | {_x(r['worst_to_steady_p99'])} "
                   f"| {ref['steady_busy']:.2f} / {ref['move_busy']:.2f} | {ref['processes']} × {ref['duty']:.2f}, "
                   f"{ref['seconds']:.2f} | {_ms(r['latency_reference']['max_s'])} "
                   f"| {_x(r['reference_worst_to_steady_p99'])} |")
    return out


def node_memory(data: dict) -> list[str]:
    """Each node's resident set as the move began and its peak during it, against the workload's memory."""
    rows = [r for r in data["results"] if not r["error"] and r["memory"] and r["raw_memory_bytes"]]
    if not rows:
        return []
    out = ["", "## Node memory over the move", "",
           "Each node's resident set (VmRSS) as the move began, and its peak (VmHWM, reset then) until it ended. "
           "**Target growth** is the target's peak less its resident set before, over the workload's linear "
           "memory (the same row's raw memory): zero pages are never sent, so a target that holds the workload "
           "once grows by its non-zero pages, less than 1.", "",
           "| link | workload | strategy | workload memory MiB | edge-1 before / peak MiB "
           "| cloud-1 before / peak MiB | target growth / workload memory |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = r["memory"]
        cells = [f"{_mib(mem[n]['before_bytes'])} / {_mib(mem[n]['peak_bytes'])}" if n in mem else "n/a"
                 for n in ("edge-1", "cloud-1")]
        target = mem.get("cloud-1")
        growth = None if target is None else (target["peak_bytes"] - target["before_bytes"]) / r["raw_memory_bytes"]
        out.append(f"| {r['link']} | {r['label']} | {r['strategy']} | {_mib(r['raw_memory_bytes'])} | "
                   f"{cells[0]} | {cells[1]} | {_x(growth)} |")
    return out


def snapshot_sizes(data: dict) -> list[dict]:
    """Per workload setting, the first stop-copy move's bytes against the raw memory size."""
    seen, out = set(), []
    for r in data["results"]:
        if r["strategy"] != "stop-copy" or r["error"] or r["label"] in seen or not r["raw_memory_bytes"]:
            continue
        seen.add(r["label"])
        out.append({"label": r["label"], "raw_memory_bytes": r["raw_memory_bytes"], "snapshot_bytes": r["bytes_sent"],
                    "ratio": r["bytes_sent"] / r["raw_memory_bytes"]})
    return out


def _sweep(data: dict, link: str, strategy: str | None, fixed: str, value: float, x: str) -> tuple[list, list]:
    """The dirtier rows of one sweep as (x, client blackout ms); ``strategy`` None gives the floor instead."""
    pts = {}
    for r in data["results"]:
        if (r["link"] == link and not r["error"] and r["params"]["kind"] == "dirtier"
                and r["params"][fixed] == value and strategy in (None, r["strategy"])):
            y = r["floor"]["floor_s"] if strategy is None else r["client"]["blackout_s"]
            pts[r["params"][x]] = min(y, pts.get(r["params"][x], math.inf))
    xs = sorted(pts)
    return xs, [pts[k] * 1e3 for k in xs]


def plot(data: dict, out_dir: Path, prefix: str) -> list[str] | str:
    """Draw blackout against memory size and against dirty rate; return the files, or why there are none.

    One panel per link, one line per strategy, and the physical floor dashed.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return "matplotlib is not installed (pip install '.[bench]')"
    cfg = data["config"]
    links = [link["profile"]["name"] for link in data["links"]]
    files = []
    for name, x, fixed, value, xlabel in (
            ("blackout-vs-memory", "memory_mib", "dirty_pages_per_s", cfg["sweep_rate"], "memory (MiB)"),
            ("blackout-vs-rate", "dirty_pages_per_s", "memory_mib", cfg["sweep_memory_mib"], "dirty pages/s")):
        fig, axes = plt.subplots(1, len(links), figsize=(5 * len(links), 4), squeeze=False, sharey=True)
        for ax, link in zip(axes[0], links):
            for strategy in data["strategies"]:
                xs, ys = _sweep(data, link, strategy, fixed, value, x)
                if xs:
                    # A log axis cannot show 0: a blackout below 1 us is drawn at 1 us.
                    ax.plot(xs, [max(y, 1e-3) for y in ys], marker="o", label=strategy)
            xs, ys = _sweep(data, link, None, fixed, value, x)
            ax.plot(xs, ys, linestyle="--", color="grey", label="floor")
            if x == "memory_mib":
                ax.set_xscale("log", base=2)
            else:
                ax.set_xscale("symlog", linthresh=100)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_title(link)
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel("client-observed blackout (ms)")
        axes[0][0].legend()
        what = f"at {value:g} pages/s" if fixed == "dirty_pages_per_s" else f"at {value:g} MiB"
        fig.suptitle(f"dirtier, edge-1 to cloud-1: blackout against {xlabel.split(' (')[0]}, {what}")
        fig.tight_layout()
        path = out_dir / f"{prefix}-{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(str(path))
    return files


def write(data: dict, out_dir: Path) -> dict:
    """Write the plots, JSON and Markdown into ``out_dir``; return the data with its ``plots`` entry."""
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = stem(data["config"]["mode"])
    plots = plot(data, out_dir, prefix)
    data = {**data, "plots": [Path(p).name for p in plots] if isinstance(plots, list) else plots}
    (out_dir / f"{prefix}.json").write_text(json.dumps(data, indent=1) + "\n")
    (out_dir / f"{prefix}.md").write_text(markdown(data))
    return data


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def check_results(data: dict) -> list[str]:
    """Problems with the results' form and internal consistency; empty when there are none."""
    problems = [f"missing top-level field {f!r}" for f in TOP_FIELDS if f not in data]
    if problems:
        return problems
    strategies = data["strategies"]
    if not strategies:
        problems.append("no strategy ran")
    groups: dict[tuple[str, str], set[str]] = {}
    for i, r in enumerate(data["results"]):
        where = f"row {i} ({r.get('link')}, {r.get('label')}, {r.get('strategy')})"
        missing = [f for f in ROW_FIELDS if f not in r]
        if missing:
            problems.append(f"{where}: missing {missing}")
            continue
        groups.setdefault((r["link"], r["label"]), set()).add(r["strategy"])
        if r["strategy"] not in strategies:
            problems.append(f"{where}: strategy not in {strategies}")
        if r["error"]:
            continue
        problems += [f"{where}: {p}" for p in _row_problems(r)]
    for (link, label), got in groups.items():
        if got != set(strategies):
            problems.append(f"{link}, {label}: strategies {sorted(got)}, expected {sorted(strategies)}")
    return problems


def _row_problems(r: dict) -> list[str]:
    problems = []
    for key, cls in (("client", ClientBlackout), ("floor", Floor)):
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(r[key], dict) or set(r[key]) != fields:
            return [f"{key} should have the fields {sorted(fields)}"]
    c, f = r["client"], r["floor"]
    if not _close(c["blackout_s"], max(0.0, c["largest_gap_s"] - c["steady_gap_s"])):
        problems.append("client blackout is not largest gap minus steady gap")
    if not _close(f["floor_s"], f["final_dirty_bytes"] / f["bandwidth_bytes_per_s"] + f["rtt_s"]):
        problems.append("floor is not final dirty bytes / bandwidth + RTT")
    if not _close(f["final_dirty_bytes"], r["dirty_bytes_per_s"] * f["rtt_s"]):
        problems.append("final dirty bytes are not dirty rate x RTT")
    if r["blackout_to_floor"] is None or not _close(r["blackout_to_floor"], c["blackout_s"] / f["floor_s"]):
        problems.append("ratio to the floor is not client blackout / floor")
    problems += _reference_problems(r)
    lat_fields = {f.name for f in dataclasses.fields(LatencyStats)}
    for key in ("latency_steady", "latency_during", "latency_reference"):
        s = r[key]
        if s is None:
            continue
        if set(s) != lat_fields:
            problems.append(f"{key} should have the fields {sorted(lat_fields)}")
        elif not 0 <= s["p50_s"] <= s["p99_s"] <= s["max_s"] or s["count"] < 1:
            problems.append(f"{key}: percentiles out of order")
    if (r["rounds"] < 1 or r["bytes_sent"] < 0 or r["total_s"] < 0 or r["frozen_s"] < 0
            or (r["node_blackout_s"] is not None and r["node_blackout_s"] < 0)
            or not 0 <= r["final_round_bytes"] <= r["bytes_sent"]):
        problems.append("rounds, bytes or times out of range")
    for name, m in (r["memory"] or {}).items():
        if set(m) != {"before_bytes", "peak_bytes"} or not 0 < m["before_bytes"] <= m["peak_bytes"]:
            problems.append(f"memory of {name}: not a resident set and a peak at least as large")
    if r["state_ok"] is not True:
        problems.append("the workload's state after the move is not exact")
    return problems


def _reference_problems(r: dict) -> list[str]:
    """The CPU reference's duty and worst-call ratios against the numbers they come from."""
    problems = []
    ref, steady = r["reference"], r["latency_steady"]
    fields = {f.name for f in dataclasses.fields(CpuReference)}
    if not isinstance(ref, dict) or set(ref) != fields:
        return [f"reference should have the fields {sorted(fields)}"]
    if not _close(ref["duty"], round(max(0.0, ref["move_busy"] - ref["steady_busy"]), 3)):
        problems.append("reference duty is not the move's busy share less the steady one")
    for ratio_key, key in (("worst_to_steady_p99", "latency_during"), ("reference_worst_to_steady_p99", "latency_reference")):
        want = None if not r[key] or not steady or steady["p99_s"] <= 0 else r[key]["max_s"] / steady["p99_s"]
        got = r[ratio_key]
        if (got is None) != (want is None) or (got is not None and not _close(got, want)):
            problems.append(f"{ratio_key} is not the worst of {key} over the steady p99")
    return problems
