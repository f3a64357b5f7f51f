"""Tests of nodes._instance_pool: pristine instances of one module on a real Host, reset after every call."""

from __future__ import annotations

import threading
import time

import pytest
import wasmtime

from nodes import (BadArguments, Host, InstancePool, InvalidModule, Limits, ResourceLimitExceeded, UnknownExport,
                   WorkloadTrap)
from pool_wat import PRISTINE, pool_module

FAST = Limits(call_timeout_s=5.0)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    with Host(tmp_path_factory.mktemp("pool-host"), limits=FAST) as h:
        yield h


@pytest.fixture(scope="module")
def sha(host):
    return host.add_module(pool_module())


def _pool(host, sha, **kw):
    return InstancePool(host, sha, name="p", app=kw.pop("app", "app-1"), init=kw.pop("init", "init"),
                        max_instances=kw.pop("max_instances", 2), idle_s=kw.pop("idle_s", 30.0))


def test_every_call_sees_the_state_init_left_and_nothing_a_call_left(host, sha):
    pool = _pool(host, sha)
    bump = pool.check_call("bump", (5,))
    assert [pool.call(0, "bump", bump) for _ in range(4)] == [PRISTINE] * 4
    stats = pool.stats()
    assert stats.calls == 4 and stats.started == 1 and stats.left_state == 4 and stats.discarded == 0
    assert 0 not in pool.pristine.fixed_tables  # "bump" writes the table: it is compared at every reset
    pool.close()


def test_a_table_the_code_never_writes_is_not_compared_and_calls_still_see_it(host):
    sha = host.add_module(wasmtime.wat2wasm("""
      (module
        (memory (export "memory") 1)
        (table $t 2 funcref)
        (elem (table $t) (i32.const 0) func $one $two)
        (func $one (result i32) (i32.const 1))
        (func $two (result i32) (i32.const 2))
        (func (export "init") (i32.store (i32.const 0) (i32.const 40)))
        (func (export "call") (param i32) (result i32)
          (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (call_indirect (result i32) (local.get 0))))
          (i32.load (i32.const 0))))"""))
    pool = _pool(host, sha)
    assert 0 in pool.pristine.fixed_tables
    assert [pool.call(0, "call", [k % 2]) for k in range(4)] == [41, 42, 41, 42]
    pool.close()


def test_concurrent_calls_on_all_slots_stay_pristine(host, sha):
    pool = _pool(host, sha, max_instances=4)
    bump = pool.check_call("bump", (3,))
    seen: list[int] = []

    def worker(slot: int) -> None:
        for _ in range(25):
            seen.append(pool.call(slot, "bump", bump))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [PRISTINE] * 100
    assert pool.stats().instances == 4 and pool.stats().started == 4
    pool.close()


def test_a_trap_and_a_grown_memory_leave_nothing_behind(host, sha):
    pool = _pool(host, sha, max_instances=1)
    with pytest.raises(WorkloadTrap):
        pool.call(0, "boom", [])
    assert pool.call(0, "bump", pool.check_call("bump", (1,))) == PRISTINE
    assert pool.call(0, "grow", []) == 2  # the instance cannot shrink back: it is dropped
    assert pool.stats().discarded == 1 and pool.stats().instances == 0
    assert pool.call(0, "bump", pool.check_call("bump", (1,))) == PRISTINE
    assert pool.stats().started == 2
    pool.close()


def test_idle_instances_are_dropped(host, sha):
    pool = _pool(host, sha, idle_s=0.05)
    pool.call(0, "spin", [10])
    pool.call(1, "spin", [10])
    assert pool.stats().instances == 2
    time.sleep(0.1)
    pool.trim(pool.idle_slots(time.monotonic()))
    assert pool.stats().instances == 0
    assert pool.call(1, "spin", [3]) == 3  # started again on demand
    pool.close()


def test_typed_errors(host, sha):
    with pytest.raises(UnknownExport, match="no_such_init"):
        _pool(host, sha, init="no_such_init")
    with pytest.raises(WorkloadTrap):
        _pool(host, sha, init="bad_init")
    pool = _pool(host, sha)
    with pytest.raises(UnknownExport, match="nope"):
        pool.check_call("nope", ())
    with pytest.raises(BadArguments):
        pool.check_call("bump", ())
    pool.close()


def test_tables_of_other_references_cannot_be_pooled(host):
    import wasmtime
    wasm = wasmtime.wat2wasm('(module (table 1 externref) (func (export "f")))')
    with pytest.raises(InvalidModule, match="cannot be pooled"):
        _pool(host, host.add_module(wasm), init=None)


def test_instances_count_against_the_tenant_and_node_limits(tmp_path):
    """Each instance is a workload of the pool's app for the quotas: a call past one is refused before it runs."""
    limits = Limits(call_timeout_s=5.0, max_workloads_per_app=3, memory_bytes=16 << 20,
                    workloads_memory_bytes=80 << 20)
    with Host(tmp_path, limits=limits) as h:
        sha = h.add_module(pool_module())
        h.deploy(sha, workload_id="plain", app="app-1")
        h.deploy(sha, workload_id="plain-2", app="app-1")
        with pytest.raises(ResourceLimitExceeded, match="max_workloads_per_app"):
            _pool(h, sha, max_instances=4)  # initialising takes two instances at once: 2 + 2 > 3
        h.deploy(sha, workload_id="plain-3", app="app-1")  # the refused pool kept no claim
    with Host(tmp_path / "2", limits=limits) as h:
        sha = h.add_module(pool_module())
        pool = _pool(h, sha, max_instances=4)  # init's two instances are given back
        h.deploy(sha, workload_id="plain", app="app-1")
        bump = pool.check_call("bump", (1,))
        assert pool.call(0, "bump", bump) == PRISTINE and pool.call(1, "bump", bump) == PRISTINE
        with pytest.raises(ResourceLimitExceeded, match="max_workloads_per_app"):
            pool.call(2, "bump", bump)  # plain + two instances: the tenant's three
        assert pool.stats().calls == 2 and not pool.has_instance(2)
        other = _pool(h, sha, app="app-2", max_instances=1)  # another tenant has its own count
        assert other.call(0, "bump", bump) == PRISTINE  # 4 x 16 MiB claimed now
        h.deploy(sha, workload_id="big", app="app-3")
        with pytest.raises(ResourceLimitExceeded, match="workloads_memory_bytes"):
            h.deploy(sha, workload_id="big-2", app="app-3")  # 6 x 16 MiB > 80 MiB
        pool.trim([0, 1])  # idle instances give their room back
        assert pool.call(2, "bump", bump) == PRISTINE
        h.deploy(sha, workload_id="big-2", app="app-3")
        other.close()
        pool.close()
