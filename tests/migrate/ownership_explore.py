"""Exploring ``ownership_sim`` worlds: every reachable one once, with the invariants checked in each.

In every world: no two nodes own the workload at one epoch; no copy
holds a call twice; each node's persisted record is what its machine
says is durable; a tombstone points at a node holding the epoch it names
or a newer one.  In every world where nothing is left to do (settled):
some node owns the workload, one owner holds the highest epoch and its
copy holds every answered call exactly once.
"""

from __future__ import annotations

from migrate._ownership import OWNING, State, durable

from ownership_sim import Explorer, World, steps


def check(w: World) -> None:
    """What holds in every world."""
    owners = [(n.name, n.record().epoch) for n in w.nodes if n.up and n.record().state in OWNING]
    epochs = [e for _, e in owners]
    assert len(epochs) == len(set(epochs)), f"two owners at one epoch: {owners}"
    for n in w.nodes:
        if n.copy is not None:
            assert len(n.copy) == len(set(n.copy)), f"a call ran twice on {n.name}: {n.copy}"
        if not n.up:
            continue
        rec = n.record()
        assert n.kept == durable(rec), f"{n.name} persisted {n.kept}, holds {rec}"
        if rec.forward is not None:
            to = w.node(rec.forward.name)
            held = to.record().epoch if to.up else (to.kept.epoch if to.kept else 0)
            assert held >= rec.forward.epoch, f"{n.name} redirects to {to.name} at {rec.forward.epoch}, it holds {held}"


def check_settled(x: Explorer, w: World, start: str) -> None:
    """What holds once nothing is left to do: one owner at the top epoch, every answered call once."""
    owners = [n for n in w.nodes if n.record().state in OWNING]
    assert owners, "the workload was lost"
    top = max(owners, key=lambda n: n.record().epoch)
    assert top.record().state is State.OWNED
    assert all(n.copy is not None for n in owners)
    for seq in w.acked:
        assert top.copy.count(seq) == 1, f"answered call {seq} is on {top.name} {top.copy.count(seq)} times"
    x.settled += 1
    x.moved += top.name != start


def explore(start: World, x: Explorer | None = None, limit: int = 400_000) -> Explorer:
    """Visit every world reachable from ``start``; an invariant broken fails with the steps that led there."""
    x = x or Explorer()
    parent = {start: None}
    stack = [start]
    owner = next(n.name for n in start.nodes if n.record().state in OWNING)
    while stack:
        w = stack.pop()
        x.worlds += 1
        assert x.worlds <= limit, "the model grew past its bound"
        try:
            check(w)
            nexts = steps(x, w)
            if not nexts:
                check_settled(x, w, owner)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nafter:\n  " + "\n  ".join(_trace(parent, w))) from None
        for label, nxt in nexts:
            if nxt not in parent:
                parent[nxt] = (w, label)
                stack.append(nxt)
    return x


def _trace(parent: dict, w: World) -> list[str]:
    labels = []
    while parent[w] is not None:
        w, label = parent[w]
        labels.append(label)
    return labels[::-1]
