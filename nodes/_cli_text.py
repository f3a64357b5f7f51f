"""How the client commands of ``migrate-node`` print their results: tables for people, JSON for scripts.

``text`` turns a command's result (a StatusReport, a tuple of workloads or
of members, a dataclass, a string) into what the command prints;
``jsonable`` is ``json.dumps``'s ``default`` for ``--json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from ._members_cli import members_text
from ._member_messages import MemberRecord
from ._messages import StatusReport


def jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)


def text(result: Any) -> str:
    if isinstance(result, StatusReport):
        return _status_text(result) + "\n\n" + members_text(result.members)
    if isinstance(result, tuple) and result and isinstance(result[0], MemberRecord):
        return members_text(result)
    if isinstance(result, tuple) and all(hasattr(w, "workload_id") for w in result):
        return _workloads_text(result) if result else "no workloads"
    if hasattr(result, "__dataclass_fields__"):
        return json.dumps(asdict(result), default=jsonable, indent=2)
    return str(result)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def _workloads_text(workloads: Sequence[Any]) -> str:
    rows = [f"{'WORKLOAD':<20} {'APP':<12} {'STATE':<10} {'MEMORY':>10} {'CALLS':>8} {'TRAPS':>6}  {'MODULE':<12}"
            "  LIFECYCLE"]
    for w in workloads:
        rows.append(f"{w.workload_id:<20} {w.app:<12} {w.state:<10} {_mib(w.memory_bytes):>10} "
                    f"{w.calls:>8} {w.traps + w.timeouts:>6}  {w.module_sha256[:12]:<12}  {w.lifecycle or '-'}")
    return "\n".join(rows)


def _status_text(s: StatusReport) -> str:
    n = s.node
    lines = [
        f"node {n.name} ({n.role}) at {n.address}",
        f"  capacity: {n.cores} cores, {_mib(n.memory_free_bytes)} free of {_mib(n.memory_total_bytes)}, "
        f"load {n.load_1m}",
        f"  modules: {s.host.get('modules')} loaded, {s.host.get('compiles')} compiled, "
        f"{s.host.get('cache_hits')} cache hits",
        "",
        _workloads_text(s.workloads) if s.workloads else "no workloads",
        "",
    ]
    if s.peers:
        lines.append(f"{'PEER':<16} {'ROLE':<7} {'ADDRESS':<22} {'UP':<4} {'RTT':>9} {'LOAD':>6} {'FREE':>12}")
        for p in s.peers:
            rtt = "-" if p.rtt_s is None else f"{p.rtt_s * 1e3:.2f} ms"
            lines.append(f"{p.name or '?':<16} {p.role or '?':<7} {p.address:<22} "
                         f"{'yes' if p.connected else 'no':<4} {rtt:>9} {p.load_1m if p.load_1m is not None else '-':>6} "
                         f"{_mib(p.memory_free_bytes):>12}")
    else:
        lines.append("no peers")
    lines.append("")
    if not s.migrations:
        lines.append("no migrations")
    for m in s.migrations:
        if not isinstance(m, dict):
            lines.append(f"migration {m}")
            continue
        if "lifecycle" in m:  # a named or detached workload's lifecycle (migrate._life_node)
            lines.append(_lifecycle_text(m))
            continue
        where = m.get("target") or m.get("source") or "?"
        detail = ", ".join(f"{k} {_figure(k, m[k])}" for k in _MOVE_FIELDS if m.get(k) is not None)
        lines.append(f"migration {m.get('workload')} {m.get('state')} {'->' if 'target' in m else '<-'} {where}: {detail}")
    return "\n".join(lines)


def _lifecycle_text(m: dict[str, Any]) -> str:
    state = f"expiring at {m.get('expires_at')}" if m.get("lifecycle") == "expiring" else m.get("lifecycle")
    every = ", ".join(f"{name} every {s.get('every_s')} s (fired {s.get('fired')})"
                      for name, s in dict(m.get("schedules") or {}).items())
    return (f"workload {m.get('workload')} {state}{' detached' if m.get('detached') else ''}"
            f"{': ' + every if every else ''}")


_MOVE_FIELDS = ("strategy", "phase", "rounds", "bytes_sent", "bytes_received", "remaining_bytes", "rate_bps",
                "eta_s", "frozen_ms", "client_blackout_ms", "total_ms", "reason")  # status: a move's figures


def _figure(key: str, value: Any) -> str:
    text = _mib(value) if "bytes" in key else f"{_mib(value)}/s" if key == "rate_bps" else str(value)
    return f"{value:.2f} s" if key == "eta_s" else text
