"""Wire messages of live migration, registered with the node protocol.

Three conversations use them:

* handle -> owner node: ``MSpawn``, ``MCall`` (calls and memory access,
  each with the caller's id and sequence number), ``MCancel`` (stop one),
  ``MLocate``;
* handle or operator -> source node: ``MMigrate``;
* source node -> target node: ``MIncoming``, ``MChunk`` (snapshot stream
  bytes; page data goes node to node, never through the client),
  ``MCommit``, ``MAbort``, then ``MFirstCall`` (for the report);
* protection: ``MProtect``, ``MCheckpoint`` and ``MCheckpointPart`` (a
  checkpoint streamed to the application in parts), ``MFollow`` (owner
  to standby: ``MIncoming``/``MChunk``/``MAlign``/``MReplay`` with
  ``standby=True``), ``MPromote``.

An incoming move and a standby copy of the same workload are told apart by
``standby``: a message for one never touches the other.

Who may send each (the role of the sender's certificate, checked by the
node before any handler runs):

* any role: ``MSpawn``, ``MCall``, ``MCancel``, ``MLocate`` and ``MMigrate``, what a
  handle and the operator CLI (``migrate``, ``drain``) send.  A move's
  target must be a node: the source dials it and checks its certificate,
  which only a node certificate passes;
* node certificates only: everything else.  ``MIncoming``, ``MChunk``,
  ``MCommit``, ``MAbort``, ``MAlign``, ``MReplay`` and ``MPromote`` move
  state and ownership between nodes (``MFirstCall`` asks about one); ``MCheckpoint`` and
  ``MCheckpointPart`` hand out a workload's memory and call ledger;
  ``MProtect`` and ``MFollow`` set up protection, whose failover restores
  through those same node messages.  An application protects its
  workloads from the node it runs itself (``connect``), with a node
  certificate.

Longer than 400 lines: it is the catalogue of the migration protocol's
messages, one small dataclass each, kept together so the wire format and
who may send what read in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nodes import ANY_ROLE, NODE_ONLY, Done, Reply, Request, message


@dataclass(frozen=True, kw_only=True, slots=True)
class _ForWorkload(Request):
    """A request about one workload."""

    workload: str


@dataclass(frozen=True, kw_only=True, slots=True)
class _AtEpoch(_ForWorkload):
    """A request about a workload at ownership ``epoch`` (the move's, or the new owner's)."""

    epoch: int


@dataclass(frozen=True, kw_only=True, slots=True)
class _ToCopy(_AtEpoch):
    """A request about the copy of a workload a node receives at ``epoch``.

    ``standby`` says which copy: a hot standby (never committed, promoted
    if the owner dies), or else an incoming move; a message for one never
    touches the other.
    """

    standby: bool = False


@message("m_spawned")
class MSpawned(Reply):
    workload: str
    epoch: int


@message("m_spawn", reply=MSpawned, roles=ANY_ROLE)
class MSpawn(Request):
    """Start a migratable workload from a module the node already holds, for ``app`` ("": the sender's own)."""

    module_sha256: str
    workload: str | None = None
    app: str = ""
    idle_s: float | None = None  # hibernate it once unused this long (None: the node's --idle-s; 0: never)
    lifecycle: Any = None  # lease and schedules (``_lifecycle.spec``); None: never removed by the node


@message("m_result")
class MResult(Reply):
    """A call's outcome: its values (or read bytes); ``replayed`` if it ran before.

    If ``moved_to`` is set the call did not run here: the workload lives on
    that node now (at ``moved_address``, ``epoch``); retry there with the
    same seq.
    """

    values: tuple[int | float, ...] = ()
    data: bytes = b""
    epoch: int = 0
    replayed: bool = False
    moved_to: str | None = None
    moved_address: str | None = None
    #: position of this call in the workload's order of state-changing
    #: operations (0 for reads), and the nondeterministic inputs it consumed
    #: when the workload is recorded (protected, or followed by a replica)
    index: int = 0
    inputs: Any = None


@message("m_call", reply=MResult, roles=ANY_ROLE)
class MCall(_ForWorkload):
    """One operation on a workload, exactly once per (caller, seq).

    ``op`` is "call" (``export`` with ``args``), "read" (``offset``,
    ``length``) or "write" (``offset``, ``data``).  ``ack`` tells the owner
    that every seq up to it has been answered, so it may forget them.
    """

    op: str
    caller: str
    seq: int
    ack: int = -1
    export: str = ""
    args: tuple[int | float, ...] = ()
    offset: int = 0
    length: int = 0
    data: bytes = b""


@message("m_where")
class MWhere(Reply):
    """What a node knows of a workload: "owner", "moved", "incoming" or "unknown"."""

    status: str
    epoch: int = 0
    to_name: str | None = None
    to_address: str | None = None
    index: int = 0  # the last operation the owner ran, or an incoming copy replayed
    standby: bool = False  # "incoming" is a hot standby, not a move under way


@message("m_locate", reply=MWhere, roles=ANY_ROLE)
class MLocate(_ForWorkload):
    """Where the workload is, as this node knows it."""


@message("m_cancelled")
class MCancelled(Reply):
    """What a cancel found: "stopping" (the call runs: it is being stopped),
    "finishing" (it runs on a workload whose operations are replayed
    elsewhere: it finishes), "finished" (its outcome is recorded) or
    "withheld" (it had not started here: it never will, its outcome is
    recorded as cancelled)."""

    state: str


@message("m_cancel", reply=MCancelled, roles=ANY_ROLE)
class MCancel(_ForWorkload):
    """The caller gave up on call (``caller``, ``seq``): stop it, or never start it."""

    caller: str
    seq: int


@dataclass(frozen=True)
class MigrationReport:
    """What a move cost, modelled on QEMU's query-migrate; ``MReport`` carries it as is.

    ``frozen_s`` is how long the source held calls (the longest any call
    waited at the source).  ``client_blackout_s`` is the blackout as a
    client calling the workload saw it: from the last call the source
    served before the freeze to the first call the target served after
    the commit, the redirect of the queued calls included.  It is
    estimated as (the commit's reply received - the last call served, by
    the source's clock) + (the target's first call - its reply to the
    commit, by the target's clock), so it counts one one-way latency too
    many (the commit reply's trip).  It is None, with a note saying why, when no
    call was waiting at the source when it committed (a client between
    calls saw no gap beyond its own) or none reached the target within
    ``_state.FIRST_CALL_WAIT_S`` (1 s).

    ``rounds`` counts snapshot rounds sent, the final stop-and-copy round
    included, and ``bytes_per_round`` their wire bytes in order (so
    ``rounds == len(bytes_per_round)`` and ``bytes_sent`` is their sum);
    ``final_round_bytes`` is what was sent while calls were held (0 for a
    dual or standby handover, whose switch sends no pages).  ``capture_s``,
    ``encode_s``, ``send_s`` and ``commit_s`` sum the time spent taking
    snapshots, compressing them, streaming them and committing.
    """

    workload: str
    strategy: str
    source: str
    target: str
    total_s: float
    frozen_s: float
    rounds: int
    bytes_sent: int
    pages_sent: int
    dirty_pages_per_s: float
    throttle: float
    epoch: int
    notes: tuple[str, ...] = ()
    client_blackout_s: float | None = None
    final_round_bytes: int = 0
    bytes_per_round: tuple[int, ...] = ()
    capture_s: float = 0.0
    encode_s: float = 0.0
    send_s: float = 0.0
    commit_s: float = 0.0


@message("m_report")
class MReport(Reply):
    report: MigrationReport


@message("m_migrate", reply=MReport, roles=ANY_ROLE)
class MMigrate(_ForWorkload):
    """Move a workload from the receiving node to ``target`` (an address)."""

    target: str
    strategy: str = "precopy"
    downtime_budget_s: float = 0.03
    max_rounds: int = 20
    #: the receiving node is the workload's hot-standby node (its application
    #: says so): its copy at the commit stays as the new owner's standby, so
    #: a standby exists from the commit on, not only once a new copy is sent
    keep_standby: bool = False


@message("m_incoming", reply=Done, roles=NODE_ONLY)
class MIncoming(_ToCopy):
    """Source to target: get ready to receive ``workload`` at ``epoch``."""

    module_sha256: str
    app: str
    source: str
    args: tuple[str, ...] = ()
    env: dict[str, str] | None = None
    memory_limit_bytes: int | None = None
    #: The workload runs on at the source while the first round comes (pre-copy, dual, a standby's feed):
    #: no call waits for it, so the target decodes it at the bulk work's lower CPU priority.
    live: bool = False


@message("m_chunk", reply=Done, roles=NODE_ONLY)
class MChunk(_ToCopy):
    """Source to target: bytes of the current round's encoded snapshot.

    A round ends with its snapshot's END frame; the target then applies it.
    ``seq`` numbers the chunks an incoming copy receives, from 0 across
    rounds: senders keep several in flight, and the target applies them in
    that order whatever order it gets to serve them in.
    """

    data: bytes
    seq: int


@message("m_committed")
class MCommitted(Reply):
    epoch: int


@message("m_commit", reply=MCommitted, roles=NODE_ONLY)
class MCommit(_AtEpoch):
    """Source to target: the state is complete; own the workload from now on.

    Carries the call ledger (see ``_ledger``) and the call count.
    """

    ledger: Any
    calls: int
    index: int = 0
    record: bool = False
    #: dual handover: the pages written since the cut, and the source's digest
    #: of them (``snapshot.pages_digest``); the target refuses a mismatch (DIVERGED)
    pages: Any = None
    digest: str | None = None
    #: the guest's monotonic clock at the source, so time never runs backwards
    monotonic_ns: int | None = None
    #: commit the target's hot standby copy (which replayed every operation
    #: up to ``index``) instead of an incoming move
    from_standby: bool = False
    #: the address of the workload's hot standby, which the new owner feeds from now on
    standby: str = ""
    #: the standby is the source's own copy at this commit (at ``epoch + 1``,
    #: aligned at ``index``): the new owner feeds it from its first operation
    #: on, sending no copy
    standby_kept: bool = False
    #: the final round's last piece of snapshot stream, chunk number ``seq``
    #: (none if empty), and a dual handover's last logged operations (as
    #: ``MReplay.entries``): the target applies them before it commits, so
    #: the frozen source waits one round trip for both
    data: bytes = b""
    seq: int = 0
    entries: tuple[Any, ...] = ()
    #: the workload's lease and schedules (``_lifecycle.Lifecycle.to_wire``), None if unmanaged
    lifecycle: Any = None


@message("m_first_served")
class MFirstServed(Reply):
    """Seconds from the commit to the first call the new owner served; None if none came in time."""

    after_s: float | None = None


@message("m_first_call", reply=MFirstServed, roles=NODE_ONLY)
class MFirstCall(_AtEpoch):
    """Source to the new owner, after the commit: when did you serve your first call?

    The owner waits up to ``wait_s`` for one.  Asked after the redirect,
    outside the blackout, for ``MigrationReport.client_blackout_s``.
    """

    wait_s: float = 1.0


@message("m_abort", reply=Done, roles=NODE_ONLY)
class MAbort(_ToCopy):
    """Source to target: forget the incoming workload (or standby copy); it stays at the source."""


@message("m_protect", reply=Done, roles=NODE_ONLY)
class MProtect(_ForWorkload):
    """Turn recording of nondeterministic inputs on or off for a workload."""

    record: bool


@message("m_checkpoint_data")
class MCheckpointData(Reply):
    """A consistent snapshot taken after operation ``index``, but for its bytes.

    The encoded snapshot follows in parts: ``MCheckpointPart`` with
    ``token`` and part numbers 0, 1, ... until a part says it is the last.
    """

    token: str
    index: int
    epoch: int
    ledger: Any
    calls: int
    module_sha256: str
    app: str
    monotonic_ns: int
    settings: Any = None
    #: the workload's lease and schedules (``_lifecycle.Lifecycle.to_wire``), None if unmanaged: a failover
    #: from this checkpoint commits them with the restored copy
    lifecycle: Any = None


@message("m_checkpoint", reply=MCheckpointData, roles=NODE_ONLY)
class MCheckpoint(_ForWorkload):
    """Owner: take a consistent checkpoint of the workload, with its ledger."""


@message("m_checkpoint_bytes")
class MCheckpointBytes(Reply):
    """One part of an encoded checkpoint; ``last`` on the final one."""

    data: bytes
    last: bool


@message("m_checkpoint_part", reply=MCheckpointBytes, roles=NODE_ONLY)
class MCheckpointPart(_ForWorkload):
    """Owner: part ``part`` of checkpoint ``token``; each part is asked for once.

    The application keeps several parts asked for at once, in order; a part
    after the last one is answered with no data and ``last``.
    """

    token: str
    part: int


@message("m_replay", reply=Done, roles=NODE_ONLY)
class MReplay(_ToCopy):
    """Re-run logged operations on an incoming workload, in order.

    Each entry is a map in the format of ``_oplog.log_entry``.  A different
    outcome is a divergence: the request fails with ``MigrationCode.DIVERGED``
    and the incoming copy is dropped.
    """

    entries: tuple[Any, ...]


@message("m_align", reply=Done, roles=NODE_ONLY)
class MAlign(_ToCopy):
    """Dual handover: the incoming copy now holds the state at the cut.

    ``calls`` is the workload's call counter there (recorded inputs name
    it) and ``index`` its operation index; replay follows from there.
    """

    calls: int
    index: int
    ledger: Any = None  # a standby's starting ledger
    monotonic_ns: int | None = None
    lifecycle: Any = None  # a standby's: the owner's lifecycle at the copy (``_lifecycle``), taken on at promotion


@message("m_follow", reply=Done, roles=NODE_ONLY)
class MFollow(_ForWorkload):
    """Owner: keep a hot standby copy on ``standby`` (an address); "" stops it.

    The owner sends the standby a consistent copy, then every state-changing
    call with its recorded inputs, which the standby replays as it comes.
    """

    standby: str


@message("m_promote", reply=MCommitted, roles=NODE_ONLY)
class MPromote(_AtEpoch):
    """Standby: the owner is gone; take the workload over at ``epoch``."""
