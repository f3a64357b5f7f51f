"""The application's view of its nodes, and what it decides from it: ``nodes``, ``on="auto"``, ``advise``.

``nodes(cluster)`` asks every node the application knows for its
membership view (``NodeClient.members``), keeps for each node the entry
that node gave of itself, else the newest one (by incarnation and
version), learns the addresses, and adds what the application measured
itself:

* ``rtt_ms``: the lowest of ``RTT_PINGS`` pings from the application to
  the node, fresh each call (None if the node does not answer within
  ``PING_TIMEOUT_S``);
* ``throughput_bytes_per_s``: from the application's own transfers to
  the node, ``throughput_source`` saying which: "modules" (module uploads
  of at least ``MIN_SAMPLE_BYTES``), "migrations" (moves out of the
  application's own node: the report's bytes over its send time), or
  "probe" (a ``PROBE_BYTES`` MProbe, sent once to a node with no other
  measurement).  Each is ``bytes / (seconds - rtt)`` (at least half the
  seconds), smoothed over samples (``SMOOTHING``).

``spawn_auto`` and ``migrate_auto`` rank the nodes with a placement
policy (``_placement``) and try them best first: a node's own admission
(tenant quota, memory, cordon) may still refuse, and its refusal becomes
its reason.  None left: ``NoSuitableNode`` giving every node's reasons.

``advise`` feeds the offload model (``_advice``) with these measurements
and per-node compute speeds, calibrated once per node and cached: the
application spawns the imgfilter workload there and times
``img_blur(256x256, radius 4)`` (one benchmark unit), the best of
``CALIBRATION_RUNS``, less the RTT.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import trio

import workloads
from nodes import (HasModule, MemberRecord, NodeClient, NodeError, NodeSummary, PutModule, RemoteNodeError,
                   ResourceLimitExceeded)

from . import _advice
from ._codes import MigrationCode
from ._cordon import MProbe
from ._errors import MigrateError, MigrationFailed, NoSuitableNode
from ._placement import DefaultPolicy, Needs, NodeRecord, Placement, PlacementPolicy

if TYPE_CHECKING:
    from ._cluster import Cluster
    from ._handle import Handle
    from ._messages import MigrationReport

PING_TIMEOUT_S = 2.0
RTT_PINGS = 3
MIN_SAMPLE_BYTES = 64 * 2**10
PROBE_BYTES = 256 * 2**10
SMOOTHING = 0.5  # the weight of a new throughput sample
CALIBRATION_RUNS = 3
CALIBRATION_IMAGE = 256
CALIBRATION_RADIUS = 4
LOCAL = "local"

T = TypeVar("T")


class _ModuleStatus(Protocol):
    """The reply to ``HasModule`` (its class is private to nodes)."""

    present: bool


class _ModuleStored(Protocol):
    """The reply to ``PutModule`` (its class is private to nodes)."""

    sha256: str


@dataclass
class Measurements:
    """What one application measured: throughput and compute speed per node name."""

    throughput: dict[str, tuple[float, str]] = field(default_factory=dict)  # bytes/s, source
    speed: dict[str, float] = field(default_factory=dict)  # benchmark units per second

    def transferred(self, node: str, nbytes: int, seconds: float, rtt_s: float, source: str) -> None:
        """Note a transfer of ``nbytes`` to ``node`` that took ``seconds`` (one round trip included)."""
        if nbytes < MIN_SAMPLE_BYTES or seconds <= 0:
            return
        rate = nbytes / max(seconds - rtt_s, seconds / 2)
        old = self.throughput.get(node)
        if old is not None:
            rate = SMOOTHING * rate + (1 - SMOOTHING) * old[0]
        self.throughput[node] = (rate, source)


async def upload(cluster: Cluster, client: NodeClient, module: bytes) -> str:
    """``client.ensure_module``, timing an upload as a throughput sample; return the sha256."""
    sha256 = hashlib.sha256(module).hexdigest()
    t0 = time.perf_counter()
    if cast(_ModuleStatus, await client.request(HasModule, sha256=sha256)).present:
        return sha256
    rtt = time.perf_counter() - t0
    t1 = time.perf_counter()
    stored = cast(_ModuleStored, await client.request(PutModule, wasm=bytes(module)))
    if stored.sha256 != sha256:
        raise NodeError(f"{client.node} stored the module as {stored.sha256}, not {sha256}")
    cluster.measurements.transferred(client.node, len(module), time.perf_counter() - t1, rtt, "modules")
    return sha256


def _newness(m: MemberRecord) -> tuple[int, int]:
    return m.incarnation, m.version


async def _view(cluster: Cluster) -> dict[str, MemberRecord]:
    """Every node's membership record, as the nodes the application knows see it."""
    best: dict[str, MemberRecord] = {}
    own: set[str] = set()
    for address in list(cluster._seen):
        try:
            client = await cluster.client(address)
            with trio.fail_after(PING_TIMEOUT_S * 2):
                members = await client.members()
        except (NodeError, trio.TooSlowError) as exc:
            cluster.lost(address, exc)
            continue
        for m in members:
            if m.name in own:
                continue
            mine = m.name == client.node  # the node's own entry wins over what others say of it
            if mine or m.name not in best or _newness(m) > _newness(best[m.name]):
                best[m.name] = m
            if mine:
                own.add(m.name)
    return best


async def _ping(client: NodeClient) -> tuple[float, NodeSummary]:
    """The lowest of ``RTT_PINGS`` pings (one slow answer is the machine's noise, not the link) and the summary."""
    with trio.fail_after(PING_TIMEOUT_S):
        answers = [await client.ping() for _ in range(RTT_PINGS)]
    return min(rtt for rtt, _ in answers), answers[-1][1]


async def _rtt(cluster: Cluster, address: str) -> float | None:
    try:
        rtt, _ = await _ping(await cluster.client(address))
    except (NodeError, trio.TooSlowError) as exc:
        cluster.lost(address, exc)
        return None
    return rtt


async def _probe(cluster: Cluster, name: str, address: str, rtt_s: float) -> None:
    try:
        client = await cluster.client(address)
        with trio.fail_after(PING_TIMEOUT_S * 10):
            t0 = time.perf_counter()
            await client.request(MProbe, data=bytes(PROBE_BYTES))
            cluster.measurements.transferred(name, PROBE_BYTES, time.perf_counter() - t0, rtt_s, "probe")
    except (NodeError, trio.TooSlowError) as exc:
        cluster.lost(address, exc)


async def _local(cluster: Cluster) -> NodeRecord | None:
    """The application's own node, which follows the membership without an entry: from its ping."""
    try:
        address = cluster.address_of(LOCAL)
        rtt, summary = await _ping(await cluster.client(address))
    except (MigrateError, NodeError, trio.TooSlowError):
        return None
    return NodeRecord(name=LOCAL, address=address, role=summary.role, location="", state="alive", version=0,
                      last_heard_s=0.0, cores=summary.cores, memory_free_bytes=summary.memory_free_bytes,
                      memory_limit_bytes=None, load=summary.load_1m, workloads=summary.workloads,
                      wasm_features=(), capabilities={}, cordoned=False, rtt_ms=rtt * 1e3)


async def nodes(cluster: Cluster) -> list[NodeRecord]:
    """Every node in the application's view, with its metadata and the application's measurements.

    The application's own node ("local") comes first when it runs one.
    """
    view = await _view(cluster)
    view.pop(LOCAL, None)
    local = await _local(cluster)
    out = [local] if local is not None else []
    for name, m in sorted(view.items()):
        if m.address:
            cluster.learn(name, m.address)
        rtt = await _rtt(cluster, m.address) if m.state != "dead" and m.address else None
        measured = cluster.measurements
        if rtt is not None and name not in measured.throughput and m.role != "client":
            await _probe(cluster, name, m.address, rtt)
        throughput, source = measured.throughput.get(name, (None, ""))
        out.append(NodeRecord.of(m, rtt_ms=None if rtt is None else rtt * 1e3,
                                 throughput_bytes_per_s=throughput, throughput_source=source))
    return out


def _refusal(exc: BaseException) -> str | None:
    """A node's refusal to take a workload, as a rejection reason; None if ``exc`` is not one."""
    if isinstance(exc, ResourceLimitExceeded | MigrationFailed):
        return f"it refused: {exc}"
    if isinstance(exc, RemoteNodeError) and exc.code == MigrationCode.CORDONED:
        return "it is cordoned"
    if isinstance(exc, NodeError):
        return f"unreachable: {exc}"
    return None


async def _try_ranked(placement: Placement, what: str, attempt: Callable[[str], Awaitable[T]]) -> T:
    rejected = dict(placement.rejected)
    for name in placement.ranked:
        try:
            return await attempt(name)
        except (NodeError, MigrateError, ResourceLimitExceeded) as exc:
            reason = _refusal(exc)
            if reason is None:
                raise
            rejected[name] = (reason,)
    lines = "; ".join(f"{n}: {', '.join(why)}" for n, why in sorted(rejected.items())) or "no nodes known"
    raise NoSuitableNode(f"no node can take {what}: {lines}", rejected=rejected)


async def spawn_auto(cluster: Cluster, module: bytes, *, needs: Needs | None, policy: PlacementPolicy | None,
                     app: str, workload: str | None, idle_s: float | None = None,
                     lifecycle: dict[str, Any] | None = None) -> Handle:
    """Spawn on the best node the policy finds, with ``lifecycle`` (``_keeper.lifecycle_spec``); raises NoSuitableNode."""
    placement = (policy or DefaultPolicy()).place(await nodes(cluster), needs or Needs())
    return await _try_ranked(placement, "the workload",
                             lambda name: cluster.spawn_on(name, module, app=app, workload=workload,
                                                           idle_s=idle_s, lifecycle=lifecycle))


async def migrate_auto(cluster: Cluster, handle: Handle, *, needs: Needs | None, policy: PlacementPolicy | None,
                       **options: Any) -> MigrationReport:
    """Move ``handle``'s workload to the best other node the policy finds; raises NoSuitableNode."""
    placement = (policy or DefaultPolicy()).place(await nodes(cluster), needs or Needs(), exclude=handle.node)
    return await _try_ranked(placement, f"workload {handle.workload}",
                             lambda name: handle.migrate(name, **options))


async def calibrate(cluster: Cluster, name: str) -> float:
    """The benchmark units per second node ``name`` runs (cached; module docstring)."""
    speed = cluster.measurements.speed.get(name)
    if speed is not None:
        return speed
    h = await cluster.spawn(workloads.load("imgfilter"), on=name)
    try:
        img = await h.call("img_new", CALIBRATION_IMAGE, CALIBRATION_IMAGE)
        if not isinstance(img, int):
            raise MigrateError(f"calibrating {name}: img_new returned {img!r}, not an image pointer")
        client = await cluster.client(cluster.address_of(name))
        best = math.inf
        for _ in range(CALIBRATION_RUNS):
            rtt, _ = await client.ping()
            t0 = time.perf_counter()
            await h.call("img_blur", img, CALIBRATION_RADIUS)
            best = min(best, max(time.perf_counter() - t0 - rtt, 1e-6))
    finally:
        await h.remove()
    cluster.measurements.speed[name] = speed = 1.0 / best
    return speed


async def _state_bytes(cluster: Cluster, target: Handle | bytes | bytearray) -> tuple[int, str | None]:
    """What must cross to run ``target`` elsewhere (its memory, or the module), and where it is now."""
    if isinstance(target, bytes | bytearray):
        return len(target), None
    client = await cluster.client(target._address)
    for w in await client.workloads():
        if w.workload_id == target.workload:
            return w.memory_bytes, target.node
    return 0, target.node


async def advise(cluster: Cluster, target: Handle | bytes, work: _advice.Work | float,
                 candidates: Sequence[NodeRecord] | None = None) -> _advice.Advice:
    """Run ``target`` (a Handle, or module bytes) here or on which node (``_advice``)."""
    if not isinstance(work, _advice.Work):
        work = _advice.Work(units=float(work))
    state_bytes, at = await _state_bytes(cluster, target)
    records = list(candidates) if candidates is not None else await nodes(cluster)
    local = next((r for r in records if r.name == LOCAL), None)
    usable = [r for r in records if r.name != LOCAL and not DefaultPolicy().place([r], Needs()).rejected]

    # Back to the application's own node, a workload crosses the link from where it is.
    links = {r.name: r.throughput_bytes_per_s for r in records}

    async def candidate(r: NodeRecord, here: bool) -> _advice.Candidate:
        link = links.get(at) if r.name == LOCAL and at not in (None, LOCAL) else r.throughput_bytes_per_s
        return _advice.Candidate(name=r.name, rtt_s=(r.rtt_ms or 0.0) / 1e3, throughput_bytes_per_s=link,
                                 speed_units_per_s=await calibrate(cluster, r.name), load=r.load,
                                 cores=r.cores, here=here)

    if local is None:
        raise MigrateError("advice needs the application's own node: connect with local=True")
    here = await candidate(local, at in (None, LOCAL))
    others = [await candidate(r, r.name == at) for r in usable]
    return _advice.advise(here, others, work, state_bytes)


def note_move(cluster: Cluster, report: MigrationReport) -> None:
    """A move out of the application's own node is a throughput sample of the link to its target."""
    measurements = getattr(cluster, "measurements", None)
    if measurements is not None and report.source == LOCAL and report.send_s > 0:
        measurements.transferred(report.target, report.bytes_sent, report.send_s, 0.0, "migrations")
