"""Host operations of migration, grouped so one step of a flow is one worker-thread trip.

Each function here is blocking: a flow runs it with ``node.run_host(op,
host, ...)``, which hops to a worker thread once.  One function is one
step of a move, a standby feed or a checkpoint (the dual cut, the seal at
the switch, the facts a commit carries...), so the step costs one hop
instead of one per ``Host`` method.
"""

from __future__ import annotations

from typing import Any

from nodes import UnknownWorkload


def thaw(host, workload: str) -> None:
    host.thaw(workload)


def freeze(host, workload: str) -> None:
    """Hold every call (handle and raw) until ``thaw``."""
    host.freeze(workload)


def start_tracking(host, workload: str):
    """Start tracking written pages; the full snapshot the first round sends."""
    return host.start_tracking(workload)


def capture_delta(host, workload: str):
    """The pages written since the last capture."""
    return host.capture_delta(workload)


def capture_all(host, workload: str):
    """A full snapshot (stop-and-copy)."""
    return host.checkpoint(workload)


def stop_tracking(host, workload: str) -> None:
    host.stop_tracking(workload)


def apply(host, workload: str, snap) -> None:
    """Apply a received round to a copy being built."""
    host.apply_snapshot(workload, snap)


def set_recording(host, workload: str, record: bool) -> None:
    """Record the nondeterministic inputs calls consume (protected or followed), or stop."""
    host.set_replay_mode(workload, "record" if record else "off")


def last_inputs(host, workload: str):
    """The inputs the last recorded call consumed."""
    return host.last_inputs(workload)


def pages_digest(host, workload: str, pages) -> str:
    return host.pages_digest(workload, pages)


def remove_quietly(host, workload: str) -> None:
    try:
        host.remove(workload)
    except UnknownWorkload:
        pass


def replace_workload(host, staged_id: str, workload: str, drop: bool) -> None:
    """Rename ``staged_id`` to ``workload``, removing the one it replaces first if ``drop``."""
    if drop:
        remove_quietly(host, workload)
    host.rename(staged_id, workload)


def describe(host, workload: str) -> tuple[Any, bytes, dict[str, Any]]:
    """What a target needs to get ready for a copy: (info, module bytes, launch settings)."""
    info = host.info(workload)
    return info, host.module_bytes(info.module_sha256), host.launch_settings(workload)


def freeze_then(capture, host, workload: str):
    """Freeze the workload (holding raw calls too), then return ``capture(host, workload)``."""
    host.freeze(workload)
    return capture(host, workload)


def commit_facts(host, workload: str) -> tuple[int, int]:
    """The call count and the guest's monotonic clock (ns) a new owner continues from."""
    return host.info(workload).calls, host.clock_state(workload)


def consistent_copy(host, workload: str, *, start_recording: bool = False):
    """A checkpoint with the info, clock (ns) and launch settings of the same moment.

    With ``start_recording`` the workload records its calls' inputs from
    the copy on (a standby replays them).  Called between calls.
    """
    if start_recording:
        host.set_replay_mode(workload, "record")
    snap = host.checkpoint(workload)
    return snap, host.info(workload), host.clock_state(workload), host.launch_settings(workload)


def cut(host, workload: str):
    """The dual cut: start recording and capture what changed since the last round; (delta, call count)."""
    host.set_replay_mode(workload, "record")
    delta = host.capture_delta(workload)
    return delta, host.info(workload).calls


def seal(host, workload: str, keep_recording: bool) -> tuple[dict[int, list[int]], str]:
    """The pages written since the cut and their digest; stops recording unless ``keep_recording``."""
    since_cut = host.capture_delta(workload)
    pages = {m.index: [p for r in m.runs for p in range(r.first_page, r.end_page)] for m in since_cut.memories}
    digest = host.pages_digest(workload, pages)
    if not keep_recording:
        host.set_replay_mode(workload, "off")
    return pages, digest


def align(host, workload: str, calls: int, monotonic_ns: int | None) -> None:
    """Set a received copy to replay from the owner's call count and clock."""
    host.set_call_count(workload, calls)
    host.set_replay_mode(workload, "replay")
    if monotonic_ns is not None:
        host.continue_clock(workload, monotonic_ns)


def take_over(host, workload: str, record: bool, calls: int, monotonic_ns: int | None) -> None:
    """Make a committed copy run as the owner's did: recording or not, its call count and clock."""
    host.set_replay_mode(workload, "record" if record else "off")
    host.set_call_count(workload, calls)
    if monotonic_ns is not None:
        host.continue_clock(workload, monotonic_ns)
