"""FairQueue, in memory: the invariants after every step, per-key order, and the fairness bound."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes._fair_queue import FairQueue

KEYS = "ABCDEFG"

steps = st.lists(st.one_of(
    st.tuples(st.just("submit"), st.sampled_from(KEYS)),
    st.tuples(st.just("finish"), st.integers(0, 10)),
    st.tuples(st.just("withdraw"), st.integers(0, 50)),
), max_size=200)


class Model:
    """Drives a FairQueue and checks it: every promise in its docstring, after every step."""

    def __init__(self, workers: int) -> None:
        self.q: FairQueue[int] = FairQueue(workers)
        self.workers = workers
        self.completions = 0
        self.next_item = 0
        self.order: dict[str, list[int]] = {k: [] for k in KEYS}   # submitted, in order
        self.started: dict[str, list[int]] = {k: [] for k in KEYS}
        self.waiting: dict[int, str] = {}
        self.running: dict[str, int] = {}
        self.promise: dict[int, int] = {}  # item -> the completion count by which it must have started

    def submit(self, key: str) -> None:
        item = self.next_item
        self.next_item += 1
        idle = not self.q.waiting(key) and key not in self.q.running
        if idle:
            ahead = len(self.q.ready)
            keys_with_work = len(set(self.q.ready) | self.q.running | {key})
            if len(self.q.running) == self.workers:
                assert ahead <= keys_with_work - 1 - self.workers
                self.promise[item] = self.completions + ahead + 1
            else:
                self.promise[item] = self.completions  # a worker is free: it starts now
        self.order[key].append(item)
        self.waiting[item] = key
        self.started_now(self.q.submit(key, item))

    def finish(self, pick: int) -> None:
        if not self.running:
            with pytest.raises(KeyError):
                self.q.finish("A")
            return
        key = sorted(self.running)[pick % len(self.running)]
        del self.running[key]
        self.completions += 1
        self.started_now(self.q.finish(key))

    def withdraw(self, pick: int) -> None:
        if pick >= self.next_item:
            assert not self.q.withdraw("A", pick)
            return
        key = self.waiting.get(pick)
        took = self.q.withdraw(key if key is not None else "A", pick)
        assert took == (key is not None)
        if took:
            del self.waiting[pick]
            self.order[key].remove(pick)
            self.promise.pop(pick, None)

    def started_now(self, started: list[tuple[str, int]]) -> None:
        for key, item in started:
            assert self.waiting.pop(item) == key
            assert key not in self.running, "two calls of one key at once"
            self.running[key] = item
            self.started[key].append(item)
            assert item not in self.promise or self.completions <= self.promise.pop(item)
        self.check()

    def check(self) -> None:
        q = self.q
        assert len(self.running) <= self.workers
        assert q.running == set(self.running)
        for key in KEYS:
            # per-key FIFO: the started items are the first of those submitted, in order
            assert self.started[key] == self.order[key][:len(self.started[key])]
            assert q.waiting(key) == sum(1 for k in self.waiting.values() if k == key)
            assert q.idle(key) == (key not in self.running and key not in self.waiting.values())
        assert set(q.ready) == {k for k in self.waiting.values() if k not in self.running}
        assert len(q.ready) == len(set(q.ready))
        if len(self.running) < self.workers:
            assert not q.ready, "a worker idles while a call could start"
        for item in self.promise:  # a promised start not yet made is still within its bound
            assert self.completions < self.promise[item]


@settings(max_examples=400, deadline=None)
@given(workers=st.integers(1, 4), ops=steps)
def test_fair_queue_keeps_its_promises(workers, ops):
    m = Model(workers)
    for op, arg in ops:
        getattr(m, op)(arg)
        m.check()
    while m.running:  # drain: everything still waiting starts
        m.finish(0)
        m.check()
    assert not m.waiting and not m.q.ready


@given(workers=st.integers(1, 4), many=st.integers(1, 30))
def test_a_busy_key_holds_one_worker_and_a_neighbour_starts_within_one_completion(workers, many):
    q: FairQueue[str] = FairQueue(workers)
    started = q.submit("A", "a0")
    for i in range(1, many):
        started += q.submit("A", f"a{i}")
    assert started == [("A", "a0")]  # A's other calls wait in its queue, not on workers
    got = q.submit("B", "b0")
    if workers > 1:
        assert got == [("B", "b0")]
    else:
        assert got == [] and q.finish("A") == [("B", "b0")]


def test_workers_must_be_positive():
    for bad in (0, -1, 1.5, None):
        with pytest.raises(ValueError):
            FairQueue(bad)
