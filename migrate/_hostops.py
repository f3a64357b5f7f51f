"""Host operations of migration, grouped so one step of a flow is one worker-thread trip.

Each function here is blocking: a flow runs it with ``node.run_host(op,
host, ...)``, which hops to a worker thread once.  One function is one
step of a move, a standby feed or a checkpoint (the dual cut, the seal at
the switch, the facts a commit carries...), so the step costs one hop
instead of one per ``Host`` method.  The operations only a migration needs
are those of ``nodes.Held`` (``host.hold(workload)``); this module is the
only caller of them in migrate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import snapshot
from nodes import CallInputs, Host, HostClosed, UnknownWorkload, WorkloadInfo

T = TypeVar("T")


def thaw(host: Host, workload: str) -> None:
    """Let held calls run again; a workload gone (moved, removed, or its host closed) has none."""
    try:
        held = host.hold(workload)
    except (UnknownWorkload, HostClosed):
        return
    held.resume()


def freeze(host: Host, workload: str) -> None:
    """Hold every call (handle and raw) until ``thaw``."""
    host.hold(workload).pause()


def start_tracking_live(host: Host, workload: str) -> tuple[snapshot.Snapshot, Callable[[], None]]:
    """Start tracking written pages; the first round, left in the live memory, and the ``done`` that lets it go."""
    return host.hold(workload).start_tracking_live()


def capture_delta(host: Host, workload: str) -> snapshot.Snapshot:
    """The pages written since the last capture: a pre-copy round, or the final one (frozen)."""
    return host.hold(workload).capture_delta(consistent=False)


def dirty_now(host: Host, workload: str) -> int | None:
    """How many pages a delta taken now would carry; None if the tracking cannot tell without taking it."""
    return host.hold(workload).dirty_now()


def stop_tracking(host: Host, workload: str) -> None:
    """Stop tracking written pages; a workload gone (moved, removed, or its host closed) tracks none."""
    try:
        held = host.hold(workload)
    except (UnknownWorkload, HostClosed):
        return
    held.stop_tracking()


def apply(host: Host, workload: str, snap: snapshot.Snapshot) -> None:
    """Apply a received round to a copy being built."""
    host.hold(workload).apply(snap)


def set_recording(host: Host, workload: str, record: bool) -> None:
    """Record the nondeterministic inputs calls consume (protected or followed), or stop."""
    host.hold(workload).set_replay_mode("record" if record else "off")


def stop_recording(host: Host, workload: str) -> None:
    """Stop recording call inputs (a dual move failed after its cut); a workload gone records none."""
    try:
        held = host.hold(workload)
    except (UnknownWorkload, HostClosed):
        return
    held.set_replay_mode("off")


def last_inputs(host: Host, workload: str) -> CallInputs:
    """The inputs the last recorded call consumed."""
    return host.hold(workload).last_inputs()


def pages_digest(host: Host, workload: str, pages: Mapping[int, Sequence[int]]) -> str:
    return host.hold(workload).pages_digest(pages)


def remove_quietly(host: Host, workload: str) -> None:
    try:
        host.remove(workload)
    except UnknownWorkload:
        pass


def keep_as_standby(host: Host, workload: str) -> None:
    """Make a move's committed copy (frozen, tracked) a standby that replays the new owner's operations."""
    held = host.hold(workload)
    held.stop_tracking()
    held.set_replay_mode("replay")
    held.resume()


def replace_workload(host: Host, staged_id: str, workload: str, drop: bool) -> None:
    """Rename ``staged_id`` to ``workload``, removing the one it replaces first if ``drop``."""
    if drop:
        remove_quietly(host, workload)
    host.hold(staged_id).rename(workload)


def describe(host: Host, workload: str) -> tuple[WorkloadInfo, bytes, dict[str, Any]]:
    """What a target needs to get ready for a copy: (info, module bytes, launch settings)."""
    info = host.info(workload)
    return info, host.module_bytes(info.module_sha256), host.hold(workload).launch_settings()


def freeze_view(host: Host, workload: str) -> tuple[snapshot.Snapshot, Callable[[], None], tuple[int, int]] | None:
    """Freeze; the state left in the memory, its ``done`` and ``commit_facts`` (None: ``Held.view_paused``)."""
    freeze(host, workload)
    viewed = host.hold(workload).view_paused()
    return None if viewed is None else (*viewed, commit_facts(host, workload))


def read_paused(host: Host, workload: str, read: Callable[[snapshot.Snapshot], T], delta: bool) -> T:
    """``read`` on the frozen workload's final round, its pages left in the memory (``Held.read_paused``)."""
    return host.hold(workload).read_paused(read, delta=delta)


def commit_facts(host: Host, workload: str) -> tuple[int, int]:
    """The call count and the guest's monotonic clock (ns) a new owner continues from."""
    return host.info(workload).calls, host.hold(workload).clock_state()


def consistent_copy(host: Host, workload: str, *,
                    start_recording: bool = False) -> tuple[snapshot.Snapshot, WorkloadInfo, int, dict[str, Any]]:
    """A checkpoint with the info, clock (ns) and launch settings of the same moment.

    With ``start_recording`` the workload records its calls' inputs from
    the copy on (a standby replays them).  Called between calls.
    """
    held = host.hold(workload)
    if start_recording:
        held.set_replay_mode("record")
    snap = host.checkpoint(workload)
    return snap, host.info(workload), held.clock_state(), held.launch_settings()


def cut(host: Host, workload: str) -> tuple[snapshot.Snapshot, int]:
    """The dual cut: start recording and capture what changed since the last round; (delta, call count)."""
    held = host.hold(workload)
    held.set_replay_mode("record")
    delta = held.capture_delta()
    return delta, host.info(workload).calls


def seal(host: Host, workload: str, keep_recording: bool) -> tuple[dict[int, list[int]], str]:
    """The pages written since the cut and their digest; stops recording unless ``keep_recording``."""
    held = host.hold(workload)
    since_cut = held.capture_delta()
    pages = {m.index: [p for r in m.runs for p in range(r.first_page, r.end_page)] for m in since_cut.memories}
    digest = held.pages_digest(pages)
    if not keep_recording:
        held.set_replay_mode("off")
    return pages, digest


def switch(host: Host, workload: str, keep_recording: bool) -> tuple[dict[int, list[int]], str, tuple[int, int]]:
    """The dual switch's host work in one worker-thread trip: ``freeze``, ``seal``, then ``commit_facts``.

    Calls wait through the switch, and each trip to a worker thread and
    back is a wait of its own: 0.1-0.5 ms per trip on an idle 2-CPU node,
    over 2 ms while both nodes stream a round.
    """
    freeze(host, workload)
    pages, digest = seal(host, workload, keep_recording)
    return pages, digest, commit_facts(host, workload)


def align(host: Host, workload: str, calls: int, monotonic_ns: int | None) -> None:
    """Set a received copy to replay from the owner's call count and clock."""
    held = host.hold(workload)
    held.set_call_count(calls)
    held.set_replay_mode("replay")
    if monotonic_ns is not None:
        held.continue_clock(monotonic_ns)


def take_over(host: Host, workload: str, record: bool, calls: int, monotonic_ns: int | None) -> None:
    """Make a committed copy run as the owner's did: recording or not, its call count and clock."""
    held = host.hold(workload)
    held.set_replay_mode("record" if record else "off")
    held.set_call_count(calls)
    if monotonic_ns is not None:
        held.continue_clock(monotonic_ns)
