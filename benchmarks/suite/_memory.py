"""The nodes' resident memory over one move: before it, and the peak while it ran.

Linux keeps a process's peak resident set (``VmHWM`` in
``/proc/<pid>/status``); writing ``5`` to ``/proc/<pid>/clear_refs`` sets
it back to the current resident set.  So the peak is reset as the move
starts and read as it ends, for the source and the target node.  The
kernel raises the mark when it unmaps pages, not when reclaim takes file
pages back, so a peak read off it can come out below the resident set
read as the move began (seen here for edge-1 on 1 MiB moves): the peak
given is at least that.  The
reference, from the same row, is the workload's own linear memory: a target
that holds the workload once needs about its non-zero pages, one that held
a round twice over (decoded, then restored) needed twice that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["NodeMemory", "after_move", "before_move"]


@dataclass(frozen=True)
class NodeMemory:
    """One node's resident set as the move began, and its peak until it ended, in bytes."""

    before_bytes: int
    peak_bytes: int


def _status_kib(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def before_move(pids: Mapping[str, int]) -> dict[str, int]:
    """Reset each node's peak; return the resident set each has now, in bytes (nodes that cannot tell left out)."""
    now = {}
    for name, pid in pids.items():
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as refs:
                refs.write("5")
        except OSError:  # not Linux, or not allowed: no figure for this node
            continue
        rss = _status_kib(pid, "VmRSS")
        if rss is not None:
            now[name] = rss * 1024
    return now


def after_move(pids: Mapping[str, int], before: Mapping[str, int]) -> dict[str, NodeMemory]:
    """Each node's ``NodeMemory`` over the move, for the nodes ``before_move`` could reset."""
    out = {}
    for name, rss in before.items():
        peak = _status_kib(pids[name], "VmHWM")
        if peak is not None:  # the mark can miss what reclaim took back since: at least the resident set before
            out[name] = NodeMemory(rss, max(rss, peak * 1024))
    return out
