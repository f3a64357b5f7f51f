"""An in-memory world of nodes that run ``migrate._ownership`` for one workload.

Each node holds its ownership records, the record it persisted (from the
machine's ``Persist`` actions only), its copy of the workload (the
sequence numbers of the calls applied to it: its state and its ledger
at once) and where its outgoing move is.  Messages in flight form a
multiset; a step delivers any of them (reordering between connections),
drops one (within a budget), takes a local step (a round, the freeze, a
timer), crashes a node at one of the crash phases of
``migrate._codes.CRASH_PHASES`` (losing everything but what it
persisted, and its copy unless it owned the workload) or restarts it.  A
node gives up on a request only once nothing of that exchange is left
in flight (``quiet``): a request and its answer share one connection.
A client makes ``CALLS`` calls, following redirects, locating the owner
at the highest epoch when told "not the owner", waiting for a node that
is down, and may lose a reply and retry.  ``ownership_explore.explore``
visits every reachable world.

Longer than 400 lines: the nodes' steps, the handlers of their messages
and the client are one model, each reading the others' state.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from migrate._ownership import FORWARDING, HOLDING, OWNING, COMMIT_TIMEOUT_S, Ownership, State, durable, load_event
from migrate._ownership_events import (
    Abort, Commit, Committed, Drop, Event, EventKind as E, Kept, OwnershipError, Peer, Persist, Send,
)

W = "w"
CALLS = 2


@dataclass(frozen=True)
class Node:
    name: str
    records: tuple = ()
    kept: object = None               # the Durable it persisted
    copy: tuple | None = None         # calls applied to its copy of W
    staged: tuple | None = None       # a staged standby copy's calls
    pc: str = "idle"                  # its outgoing move: idle begun wait_ack wait_round ready frozen wait_commit
    handover: bool = False            # the move commits the target's standby copy
    feed: str = ""                    # "wait:<node>" or "live:<node>": its standby feed
    pending: tuple | None = None      # a message received, not yet processed
    reply: tuple | None = None        # a reply decided, not yet sent
    up: bool = True
    resume: str = ""                  # after a restart: ask this standby node whether it took over

    def record(self):
        return dict(self.records).get(W) or Ownership().record(W)


@dataclass(frozen=True)
class World:
    nodes: tuple
    net: tuple = ()
    client: str = "S"
    seq: int = 1
    acked: tuple = ()
    crashes: int = 1
    drops: int = 1
    moves: int = 1
    standbys: int = 0
    promotes: int = 0

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def put(self, node: Node) -> "World":
        return replace(self, nodes=tuple(node if n.name == node.name else n for n in self.nodes))

    def send(self, *msgs) -> "World":
        return replace(self, net=tuple(sorted(self.net + msgs, key=repr)))

    def without(self, msg) -> "World":
        net = list(self.net)
        net.remove(msg)
        return replace(self, net=tuple(net))


@dataclass
class Explorer:
    visited_pairs: set = field(default_factory=set)
    refused_pairs: set = field(default_factory=set)
    crashed_at: set = field(default_factory=set)
    worlds: int = 0
    settled: int = 0
    moved: int = 0  # settled worlds where the workload ended on another node than it started


def fire(x: Explorer, world: World, name: str, event: Event) -> tuple[World, tuple]:
    """Feed ``event`` to ``name``'s machine; persist what it says.  Raises OwnershipError."""
    node = world.node(name)
    machine = Ownership()
    machine.records = dict(node.records)
    before = machine.state(W)
    try:
        actions = machine.handle(W, event)
    except OwnershipError:
        x.refused_pairs.add((before, event.kind))
        raise
    x.visited_pairs.add((before, event.kind))
    node = replace(node, records=tuple(machine.records.items()))
    for action in actions:
        if isinstance(action, Persist):
            node = replace(node, kept=action.record)
        elif isinstance(action, Drop) and machine.state(W) not in (State.COMMITTED_ELSEWHERE, State.FAILED_OVER):
            node = replace(node, copy=None)
    if machine.state(W) is not State.STANDBY or machine.record(W).staging is None:
        node = replace(node, staged=None)
    if machine.state(W) not in OWNING:
        node = replace(node, feed="")  # a feed ends with the ownership
    world = world.put(node)
    for action in actions:
        if isinstance(action, Send):
            world = world.put(replace(world.node(name), pc="begun"))
        elif isinstance(action, Commit):
            world = world.put(replace(world.node(name), pc="frozen"))
        elif isinstance(action, Abort):
            world = world.send(("abort", name, action.to.name, action.to.epoch, None))
    return world, actions


def try_fire(x, world, name, event):
    try:
        return fire(x, world, name, event)[0]
    except OwnershipError:
        return None


def peer(name: str, epoch: int = 0) -> Peer:
    return Peer(name, name, epoch)


# --- steps ----------------------------------------------------------------


def steps(x: Explorer, w: World):
    """Every (label, next world) from ``w``."""
    out = []
    for msg in w.net:
        kind, src, dst = msg[:3]
        out.append((f"deliver {msg}", deliver(x, w.without(msg), msg)))
        if w.drops:
            out.append((f"drop {msg}", replace(w.without(msg), drops=w.drops - 1)))
    for n in w.nodes:
        if not n.up:
            out.append((f"restart {n.name}", restart(x, w, n)))
            continue
        out += local_steps(x, w, n)
        for phase in crash_phases(w, n):
            if w.crashes:
                out.append((f"crash {n.name} at {phase}", crash(x, w, n, phase)))
    out += client_steps(x, w)
    return [(label, nxt) for label, nxt in out if nxt is not None]


def local_steps(x, w: World, n: Node):
    rec, out = n.record(), []
    if n.pending is not None:
        out.append((f"{n.name} processes {n.pending[0]}", process(x, w, n)))
    if n.reply is not None:
        out.append((f"{n.name} replies", w.put(replace(n, reply=None)).send(n.reply)))
    if rec.state is State.OWNED and n.pc == "idle" and w.moves and not n.resume:
        for other in w.nodes:
            if other.name != n.name:
                out.append((f"{n.name} moves to {other.name}", begin(x, w, n, other.name)))
    if n.pc == "begun":
        out.append((f"{n.name} sends incoming", w.put(replace(n, pc="wait_ack")).send(
            ("incoming", n.name, rec.move.name, rec.move.epoch, False))))
    if n.pc in ("wait_ack", "wait_round") and rec.state is State.SENDING and quiet(w, n.name, rec.move.name):
        out.append((f"{n.name} gives up", give_up(x, w, n)))
    if n.pc == "ready" and rec.state is State.SENDING:
        out.append((f"{n.name} freezes", try_fire(x, w, n.name, Event(E.FREEZE, now=0.0))))
    if n.pc == "frozen":
        out.append((f"{n.name} sends commit", w.put(replace(n, pc="wait_commit")).send(
            ("commit", n.name, rec.move.name, rec.move.epoch, (n.copy, n.handover)))))
    if rec.state is State.FROZEN and n.pc != "frozen" and quiet(w, n.name, rec.move.name):
        out.append((f"{n.name} times out", timeout(x, w, n)))
    if rec.state in (State.COMMITTED_ELSEWHERE, State.FAILED_OVER) and n.pending is None:
        nw = try_fire(x, w, n.name, Event(E.COPY_REMOVED))
        out.append((f"{n.name} removes its copy", nw and nw.put(replace(nw.node(n.name), copy=None, pc="idle"))))
    if rec.state is State.OWNED and n.resume:
        out.append((f"{n.name} asks its standby", resume(x, w, n)))
    if rec.state is State.OWNED and not n.feed and w.standbys and n.pc == "idle" and not n.resume:
        for other in w.nodes:
            if other.name != n.name:
                out.append((f"{n.name} starts a standby on {other.name}", replace(
                    w.put(replace(n, feed=f"wait:{other.name}")), standbys=w.standbys - 1).send(
                    ("incoming", n.name, other.name, rec.epoch + 1, True))))
    if w.promotes and not any(m.up and m.record().state in OWNING for m in w.nodes):
        if rec.state is State.STANDBY and n.copy is not None:
            top = max((m.kept.epoch for m in w.nodes if m.kept and m.kept.kept is not Kept.TOMBSTONE), default=0)
            nw = try_fire(x, w, n.name, Event(E.PROMOTE, max(rec.epoch, top + 1)))
            out.append((f"promote {n.name}", nw and replace(nw, promotes=w.promotes - 1)))
    return out


def crash_phases(w: World, n: Node):
    rec = n.record()
    if n.pc == "begun":
        yield "source:before-incoming"
    if n.pc in ("wait_round", "ready") and rec.state is State.SENDING:
        yield "source:after-round"
    if n.pc == "ready" and rec.state is State.SENDING:  # the rounds are sent, the freeze not begun
        yield "source:before-freeze"
    if n.pc == "frozen":
        yield "source:frozen"
    if n.pending and n.pending[0] == "committed":
        yield "source:after-commit"
    if rec.state is State.RECEIVING and n.copy is None and n.pending is None:
        yield "target:incoming"
    if n.pending and n.pending[0] == "chunk" and not n.pending[4][1]:
        yield "target:chunk"
    if rec.state is State.RECEIVING and n.copy is not None and n.pending is None:
        yield "target:after-round"
        yield "target:align"  # a dual move's MAlign arrives in the same ownership state
    if n.pending and n.pending[0] == "commit":
        yield "target:before-commit"
    if n.reply and n.reply[0] == "committed":
        yield "target:after-commit"
    if rec.state is State.STANDBY and n.copy is None:
        yield "standby:copying"


def quiet(w: World, a: str, b: str) -> bool:
    """True once a request from ``a`` to ``b`` can get no answer: nothing between them in flight or in hand.

    Requests and replies travel on one connection, in order: a node gives
    up on a request only when the connection broke (a message dropped, the
    peer crashed), never while the request or its answer may still arrive.
    """
    ends = (w.node(a), w.node(b))
    in_hand = [m for n in ends for m in (n.pending, n.reply) if m is not None and {m[1], m[2]} == {a, b}]
    return not in_hand and not any({m[1], m[2]} == {a, b} for m in w.net)


def begin(x, w: World, n: Node, to: str):
    handover = n.feed == f"live:{to}"
    feed = n.feed if handover or not n.feed.endswith(to) else ""  # a feed not live yet is stopped
    w = w.put(replace(n, handover=handover, feed=feed))
    w, _ = fire(x, w, n.name, Event(E.BEGIN_MOVE, peer=peer(to)))
    w = replace(w, moves=w.moves - 1)
    if handover:  # the standby's copy is committed: no page crosses
        w = w.put(replace(w.node(n.name), pc="ready"))
    return w


def give_up(x, w: World, n: Node):
    w, _ = fire(x, w, n.name, Event(E.MOVE_ABORTED))
    return w.put(replace(w.node(n.name), pc="idle", handover=False))


def timeout(x, w: World, n: Node):
    """No answer to the commit: ask the target (MLocate, as ``Migration._target_owns``), else time out."""
    move = n.record().move
    target = w.node(move.name)
    if target.up and target.record().state in OWNING and target.record().epoch == move.epoch:
        w, _ = fire(x, w, n.name, Event(E.COMMITTED, move.epoch))
        return w
    w, _ = fire(x, w, n.name, Event(E.TIMEOUT, now=COMMIT_TIMEOUT_S))
    return w.put(replace(w.node(n.name), pc="idle", handover=False))


def resume(x, w: World, n: Node):
    standby = w.node(n.resume)
    rec = standby.record() if standby.up else None
    w = w.put(replace(n, resume=""))
    if rec is not None and rec.state in OWNING and rec.epoch > n.record().epoch:
        w, _ = fire(x, w, n.name, Event(E.SUPERSEDED, rec.epoch, peer(standby.name, rec.epoch)))
    return w


def deliver(x, w: World, msg):
    kind, src, dst, epoch, payload = msg
    n = w.node(dst)
    if not n.up:
        return w  # lost with the node
    rec = n.record()
    if kind in ("chunk", "commit", "committed"):
        return w.put(replace(n, pending=msg)) if n.pending is None else None  # one at a time
    if kind == "incoming":
        staged = payload and rec.state is State.STANDBY and n.copy is not None
        ev = Event(E.INCOMING_STANDBY if payload else E.INCOMING_MOVE, epoch, peer(src, epoch), staged=staged)
        try:
            nw, _ = fire(x, w, dst, ev)
        except OwnershipError:
            return w.send(("refused", dst, src, epoch, None))
        if not staged:
            nw = nw.put(replace(nw.node(dst), copy=None))
        return nw.send(("ack", dst, src, epoch, payload))
    if kind == "ack":
        if payload:  # a standby copy: send the copy (with the log after it)
            if n.feed != f"wait:{src}" or n.record().state not in OWNING:
                return w
            return w.put(replace(n, feed=f"live:{src}")).send(("chunk", dst, src, epoch, (None, True)))
        if n.pc != "wait_ack" or rec.move is None or rec.move.epoch != epoch:
            return w
        return w.put(replace(n, pc="wait_round")).send(("chunk", dst, src, epoch, (n.copy, False)))
    if kind == "round":
        return w.put(replace(n, pc="ready")) if n.pc == "wait_round" and rec.move and rec.move.epoch == epoch else w
    if kind == "refused":
        if rec.move is None or rec.move.epoch != epoch or n.pc not in ("wait_ack", "wait_round", "wait_commit"):
            return w
        if rec.state is State.FROZEN:
            w, _ = fire(x, w, dst, Event(E.THAW))
        return give_up(x, w, w.node(dst))
    if kind == "abort":
        if rec.staging == epoch:
            return try_fire(x, w, dst, Event(E.DROP_STAGING))
        return try_fire(x, w, dst, Event(E.ABORT, epoch)) or w
    raise AssertionError(kind)


def process(x, w: World, n: Node):
    """Handle the message a node received and has not handled yet."""
    kind, src, dst, epoch, payload = n.pending
    w = w.put(replace(n, pending=None))
    n, rec = w.node(dst), n.record()
    if kind == "chunk":
        copy, standby = payload
        if standby:
            copy = w.node(src).copy if w.node(src).up else None
            if copy is None:
                return w
        if rec.state in HOLDING and rec.epoch == epoch and rec.staging is None:
            w = w.put(replace(n, copy=copy))
        elif rec.state is State.STANDBY and rec.staging == epoch:
            w = w.put(replace(n, staged=copy))
            w, _ = fire(x, w, dst, Event(E.SWAP_IN))
            return w.put(replace(w.node(dst), copy=copy, staged=None))
        else:
            return w.send(("refused", dst, src, epoch, None))
        return w if standby else w.send(("round", dst, src, epoch, None))
    if kind == "commit":
        copy, handover = payload
        if handover and n.copy != copy:  # the standby has not replayed what the owner ran
            return w.send(("refused", dst, src, epoch, None))
        if rec.state is State.RECEIVING and n.copy is None:  # no round arrived: nothing to commit
            return w.send(("refused", dst, src, epoch, None))
        try:
            w, actions = fire(x, w, dst, Event(E.COMMIT_STANDBY if handover else E.COMMIT, epoch, peer(src)))
        except OwnershipError:
            return w.send(("refused", dst, src, epoch, None))
        done = next(a for a in actions if isinstance(a, Committed))
        return w.put(replace(w.node(dst), copy=copy if rec.state is not State.OWNED else n.copy,
                             reply=("committed", dst, src, done.epoch, None)))
    if kind == "committed":
        if n.pc != "wait_commit":
            return w
        nw = try_fire(x, w, dst, Event(E.COMMITTED, epoch))
        return nw if nw is not None else w
    raise AssertionError(kind)


def crash(x, w: World, n: Node, phase: str):
    x.crashed_at.add(phase)
    gone = replace(Node(n.name), kept=n.kept, copy=n.copy if n.kept and n.kept.kept is not Kept.TOMBSTONE else None,
                   up=False, resume=n.feed[5:] if n.feed.startswith("live:") else "")
    return replace(w.put(gone), crashes=w.crashes - 1)


def restart(x, w: World, n: Node):
    w = w.put(replace(n, up=True))
    if n.kept is None:
        return w.put(replace(w.node(n.name), copy=None))
    w, _ = fire(x, w, n.name, load_event(n.kept))
    if w.node(n.name).record().state is State.FROZEN:  # in doubt: ask the target, or time out
        w = w.put(replace(w.node(n.name), pc="wait_commit"))
    return w


# --- the client ---------------------------------------------------------------


def client_steps(x, w: World):
    if w.seq > CALLS:
        return []
    n = w.node(w.client)
    if not n.up:
        return []  # the handle waits for the node it calls to come back
    rec = n.record()
    if rec.forward is None and rec.state not in OWNING:
        # Not the owner: find the owner at the highest epoch, as Cluster.recover does.
        owners = [m for m in w.nodes if m.up and m.record().state in OWNING]
        if not owners:
            return []
        best = max(owners, key=lambda m: m.record().epoch)
        return [] if best.name == w.client else [(f"client locates {best.name}", replace(w, client=best.name))]
    if rec.state in FORWARDING or rec.state in HOLDING:
        return [(f"client redirected to {rec.forward.name}", replace(w, client=rec.forward.name))]
    if rec.state is State.FROZEN or n.resume or n.pending is not None:
        return []  # calls are held
    out = []
    ran = n.copy if w.seq in n.copy else n.copy + (w.seq,)
    nw = w.put(replace(n, copy=ran))
    if n.feed.startswith("live:"):
        sb = nw.node(n.feed[5:])
        if (sb.up and sb.record().state is State.STANDBY and sb.copy is not None
                and sb.record().epoch == rec.epoch + 1):
            nw = nw.put(replace(sb, copy=ran))
    out.append((f"call {w.seq} runs on {n.name}", replace(nw, seq=w.seq + 1, acked=w.acked + (w.seq,))))
    if w.drops:
        out.append((f"call {w.seq} runs on {n.name}, reply lost", replace(nw, drops=w.drops - 1)))
    return out


def owned(name: str, epoch: int = 1, copy: tuple = ()) -> Node:
    machine = Ownership()
    machine.handle(W, Event(E.LOAD_OWNED, epoch))
    return Node(name, records=tuple(machine.records.items()), kept=durable(machine.record(W)), copy=copy)


def standby(name: str, epoch: int, copy: tuple = ()) -> Node:
    machine = Ownership()
    machine.handle(W, Event(E.INCOMING_STANDBY, epoch))
    return Node(name, records=tuple(machine.records.items()), copy=copy)
