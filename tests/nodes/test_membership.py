"""The membership state machine in memory: a simulated cluster with a fake clock, lost messages and partitions.

Each round every node beats (``tick``) and swaps entries with one peer it
knows, chosen by a seeded RNG (push-pull: both sides ``merge``).  Time is
the round number times the refresh interval; nothing sleeps.
"""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes import BadMemberEntry, MemberEntry, Membership
from nodes._member_messages import MAX_ENTRIES
from nodes._membership import _order

REFRESH_S = 1.0
SUSPECT_S = 4.0
DEAD_S = 10.0


def entry(name: str, *, incarnation: int = 1, version: int = 0, **fields) -> MemberEntry:
    port = 7400 + sum(map(ord, name)) % 1000
    return MemberEntry(name=name, address=f"127.0.0.1:{port}", incarnation=incarnation, version=version, **fields)


class Sim:
    """N in-memory nodes; ``seeds[name]`` are the names each starts knowing (its --join)."""

    def __init__(self, names, seeds, *, drop=0.0, seed=1):
        self.rng = random.Random(seed)
        self.drop = drop
        self.now = 0.0
        self.nodes = {n: Membership(entry(n), now=0.0, suspect_after_s=SUSPECT_S, dead_after_s=DEAD_S)
                      for n in names}
        self.seeds = {n: list(seeds.get(n, ())) for n in names}
        self.down: set[str] = set()
        self.cut: set[frozenset[str]] = set()  # pairs that cannot reach each other

    def reachable(self, a, b):
        return a not in self.down and b not in self.down and frozenset((a, b)) not in self.cut

    def lost(self):
        return self.rng.random() < self.drop

    def exchange(self, a, b):
        if not self.reachable(a, b) or self.lost():
            return
        pushed = self.nodes[a].outgoing()
        self.nodes[b].merge(pushed, self.now)
        if self.lost():  # the reply is lost: a learns nothing
            return
        self.nodes[a].merge(self.nodes[b].outgoing(), self.now)

    def round(self):
        self.now += REFRESH_S
        for name in sorted(self.nodes):
            if name in self.down:
                continue
            m = self.nodes[name]
            m.tick(self.now)
            known = sorted(set(self.seeds[name]) | {n for n, e in m.entries().items()
                                                    if n != name and e.state != "dead"})
            if known:
                self.exchange(name, self.rng.choice(known))

    def view(self, observer):
        return {n: e.state for n, e in self.nodes[observer].entries().items()}

    def run_until(self, predicate, most):
        for rounds in range(1, most + 1):
            self.round()
            if predicate():
                return rounds
        raise AssertionError(f"not reached in {most} rounds: {[self.view(n) for n in sorted(self.nodes)]}")

    def everyone_sees(self, names, state="alive", among=None):
        return all(all(self.view(o).get(n) == state for n in names) for o in (among or self.nodes)
                   if o not in self.down)


def chain(n, **kwargs):
    names = [f"n{i:02d}" for i in range(n)]
    return Sim(names, {names[i]: [names[i - 1]] for i in range(1, n)}, **kwargs), names


@pytest.mark.parametrize("n", [3, 8, 20, 50])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_chain_converges_from_one_seed_in_a_logarithmic_number_of_rounds(n, seed):
    sim, names = chain(n, seed=seed)
    # Push-pull with a random known peer spreads like an epidemic, in
    # O(log n) rounds although each node starts knowing only its
    # predecessor: over seeds 0-9, 2 rounds for 3 nodes, 3-5 for 8, 4-6
    # for 20, 5-8 for 50.
    sim.run_until(lambda: sim.everyone_sees(names), most=3 * math.ceil(math.log2(n)) + 2)


def test_convergence_survives_a_third_of_messages_lost():
    sim, names = chain(10, drop=0.33, seed=7)
    sim.run_until(lambda: sim.everyone_sees(names), most=120)
    assert all(m.refuted == 0 for m in sim.nodes.values())


def test_a_departed_node_goes_suspect_then_dead_everywhere():
    sim, names = chain(5)
    sim.run_until(lambda: sim.everyone_sees(names), most=20)
    gone = names[2]
    sim.down.add(gone)
    others = [n for n in names if n != gone]
    sim.run_until(lambda: sim.everyone_sees([gone], "suspect", others) or sim.everyone_sees([gone], "dead", others),
                  most=int(DEAD_S) + 10)
    seen_suspect = any(sim.view(o)[gone] == "suspect" for o in others)
    sim.run_until(lambda: sim.everyone_sees([gone], "dead", others), most=30)
    assert seen_suspect
    assert sim.everyone_sees(others, "alive", others)


def test_a_partition_makes_each_side_suspect_the_other_and_healing_restores_everyone():
    sim, names = chain(6)
    sim.run_until(lambda: sim.everyone_sees(names), most=30)
    left, right = names[:3], names[3:]
    sim.cut = {frozenset((a, b)) for a in left for b in right}
    sim.run_until(lambda: sim.everyone_sees(right, "dead", left) and sim.everyone_sees(left, "dead", right),
                  most=40)
    assert sim.everyone_sees(left, "alive", left) and sim.everyone_sees(right, "alive", right)
    sim.cut = set()
    # Dead members are not chosen as peers, so healing needs a seed across the
    # cut: the chain's own (n03 joined n02) is one.
    sim.run_until(lambda: sim.everyone_sees(names), most=40)


def restart_the_last(n, later_by):
    """Converge a chain of ``n``, kill its last node until everyone holds it dead, restart it empty.

    It restarts knowing only its seed, at an incarnation ``later_by`` above
    its old one (0: a clock set back to the same start time).  Returns the
    simulation after convergence, the names and the old entry.
    """
    sim, names = chain(n)
    sim.run_until(lambda: sim.everyone_sees(names), most=20)
    gone = names[-1]
    sim.down.add(gone)
    sim.run_until(lambda: sim.everyone_sees([gone], "dead", names[:-1]), most=40)
    old = sim.nodes[names[0]].get(gone)
    sim.down.discard(gone)
    sim.nodes[gone] = Membership(entry(gone, incarnation=old.incarnation + later_by), now=sim.now,
                                 suspect_after_s=SUSPECT_S, dead_after_s=DEAD_S)
    sim.run_until(lambda: sim.everyone_sees(names), most=20)
    return sim, names, old


def test_a_restarted_node_comes_back_alive_with_a_higher_incarnation():
    sim, names, old = restart_the_last(4, later_by=5)
    assert sim.nodes[names[0]].get(names[-1]).incarnation > old.incarnation
    assert sim.nodes[names[-1]].refuted == 0  # its later start time alone outranks its old entry


def test_a_restart_with_a_clock_set_back_refutes_its_old_entry():
    sim, names, old = restart_the_last(3, later_by=0)
    assert sim.nodes[names[-1]].refuted >= 1
    assert sim.nodes[names[0]].get(names[-1]).incarnation > old.incarnation


def test_a_node_refutes_suspicion_of_itself_by_raising_its_incarnation():
    me = Membership(entry("a", version=3), now=0.0, suspect_after_s=SUSPECT_S, dead_after_s=DEAD_S)
    said = dataclasses.replace(me.me, state="suspect")
    won = me.merge([said], now=1.0)
    assert me.me.state == "alive" and me.me.incarnation == said.incarnation + 1
    assert won == [me.me] and _order(me.me) > _order(said)


def test_metadata_changes_raise_the_version_and_spread():
    sim, names = chain(3)
    sim.run_until(lambda: sim.everyone_sees(names), most=20)
    before = sim.nodes[names[0]].me.version
    sim.nodes[names[0]].update_self(cordoned=True, capabilities={"gpu": "h100"})
    assert sim.nodes[names[0]].me.version == before + 1
    sim.run_until(lambda: all(sim.nodes[o].get(names[0]).cordoned for o in names), most=20)
    with pytest.raises(ValueError):
        sim.nodes[names[0]].update_self(version=0)


def test_a_follower_without_an_entry_learns_everyone_and_announces_nothing():
    sim, names = chain(3)
    sim.run_until(lambda: sim.everyone_sees(names), most=20)
    follower = Membership(None, now=sim.now, suspect_after_s=SUSPECT_S, dead_after_s=DEAD_S)
    assert follower.outgoing() == ()
    follower.merge(sim.nodes[names[0]].outgoing(), sim.now)
    assert sorted(follower.entries()) == names
    with pytest.raises(ValueError):
        follower.update_self(cordoned=True)


def test_a_bad_message_is_refused_whole():
    m = Membership(entry("a"), now=0.0, suspect_after_s=SUSPECT_S, dead_after_s=DEAD_S)
    good, bad = entry("b"), entry("c", capabilities={"GPU": "x"})
    with pytest.raises(BadMemberEntry, match="capability name 'GPU'"):
        m.merge([good, bad], 1.0)
    assert sorted(m.entries()) == ["a"]
    for wrong, match in [(dataclasses.replace(good, address="nowhere"), "HOST:PORT"),
                         (dataclasses.replace(good, state="zombie"), "state"),
                         (dataclasses.replace(good, name="x" * 65), "member name"),
                         (dataclasses.replace(good, location="x" * 129), "location"),
                         (dataclasses.replace(good, cores=-1), "out of range"),
                         (dataclasses.replace(good, load=float("nan")), "out of range"),
                         (dataclasses.replace(good, wasm_features=("simd",) * 65), "wasm features")]:
        with pytest.raises(BadMemberEntry, match=match):
            m.merge([wrong], 1.0)
    with pytest.raises(BadMemberEntry, match="at most 256"):
        m.merge([entry(f"n{i}") for i in range(MAX_ENTRIES + 1)], 1.0)
    with pytest.raises(BadMemberEntry, match="twice"):
        m.merge([good, good], 1.0)
    assert sorted(m.entries()) == ["a"]


def test_outgoing_is_capped_and_rotates_over_every_member():
    m = Membership(entry("a"), now=0.0, suspect_after_s=SUSPECT_S, dead_after_s=DEAD_S, max_members=600)
    for start in range(0, 500, 200):
        m.merge([entry(f"n{i:03d}") for i in range(start, min(start + 200, 500))], 1.0)
    sent = set()
    for _ in range(3):
        out = m.outgoing()
        assert len(out) == MAX_ENTRIES and out[0].name == "a"
        sent |= {e.name for e in out}
    assert sent == set(m.entries())


def test_members_beyond_the_cap_are_dropped_and_counted():
    m = Membership(entry("a"), now=0.0, suspect_after_s=SUSPECT_S, dead_after_s=DEAD_S, max_members=3)
    m.merge([entry("b"), entry("c"), entry("d")], 1.0)
    assert len(m.entries()) == 3 and m.dropped == 1


# --- properties over random operation sequences ---------------------------

NAMES = ("a", "b", "c", "d")
entries = st.builds(
    lambda name, inc, ver, state, cordoned: entry(name, incarnation=inc, version=ver, state=state,
                                                  cordoned=cordoned),
    st.sampled_from(NAMES), st.integers(0, 3), st.integers(0, 5), st.sampled_from(("alive", "suspect", "dead")),
    st.booleans())
operations = st.lists(st.one_of(
    st.tuples(st.just("merge"), st.lists(entries, max_size=4, unique_by=lambda e: e.name)),
    st.tuples(st.just("tick"), st.floats(0, 20)),
    st.tuples(st.just("update"), st.booleans())), max_size=25)


@given(operations)
@settings(max_examples=200, deadline=None)
def test_keys_never_go_backwards_and_our_own_entry_stays_alive(ops):
    m = Membership(entry("a"), now=0.0, suspect_after_s=SUSPECT_S, dead_after_s=DEAD_S)
    now = 0.0
    seen = {n: _order(e) for n, e in m.entries().items()}
    for op, arg in ops:
        if op == "merge":
            m.merge(arg, now)
        elif op == "tick":
            now += arg
            m.tick(now)
        else:
            m.update_self(cordoned=arg)
        assert m.me.state == "alive"
        for name, e in m.entries().items():
            assert _order(e) >= seen.get(name, _order(e)), name
            seen[name] = _order(e)


@given(st.lists(entries, max_size=6, unique_by=lambda e: e.name),
       st.lists(entries, max_size=6, unique_by=lambda e: e.name))
@settings(max_examples=300, deadline=None)
def test_merge_is_commutative_and_idempotent(xs, ys):
    def merged(*batches):
        m = Membership(None, now=0.0, suspect_after_s=SUSPECT_S, dead_after_s=DEAD_S)
        for batch in batches:
            m.merge(batch, 1.0)
        return m.entries()
    assert merged(xs, ys) == merged(ys, xs)
    assert merged(xs, ys, ys, xs) == merged(xs, ys)
    assert merged(xs, xs) == merged(xs)
