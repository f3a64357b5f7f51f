"""The workload table's admission: host and tenant quotas, the node-wide memory limit, owners; and on a real node.

The unit tests drive ``Registry`` through claims (``reserve``, ``admit``,
``unclaim``), which is where every limit is decided: a built workload
keeps exactly the claim it was reserved with.  The node tests deploy
through a real ``migrate-node`` with client certificates.
"""

from __future__ import annotations

import threading

import pytest
import trio
from hypothesis import given, settings, strategies as st

import workloads
from nodes import Host, Limits, NodeClient, ResourceLimitExceeded, UnknownWorkload, WorkloadExists
from nodes._config import NodeConfig
from nodes._limits import system_memory, tenant_of
from nodes._registry import Registry

MiB = 2**20
COUNTER = workloads.load("counter")


def test_tenant_of_an_app_is_the_part_before_the_slash():
    assert [tenant_of(app) for app in ("shop", "shop/cart", "shop/a.b", "default")] == ["shop", "shop", "shop",
                                                                                        "default"]


def test_the_apps_of_one_tenant_share_its_quotas():
    registry = Registry(Limits(memory_bytes=10 * MiB, max_workloads_per_app=2, app_memory_bytes=15 * MiB))
    registry.reserve("a", "shop", 10 * MiB)
    with pytest.raises(ResourceLimitExceeded) as info:
        registry.reserve("b", "shop/cart", 10 * MiB)
    assert (info.value.limit, info.value.requested, info.value.allowed) == ("app_memory_bytes", 20 * MiB, 15 * MiB)
    assert "application 'shop'" in str(info.value)
    registry.reserve("b", "shop/cart", 5 * MiB)
    with pytest.raises(ResourceLimitExceeded) as info:
        registry.reserve("c", "shop/other", 1)
    assert (info.value.limit, info.value.allowed) == ("max_workloads_per_app", 2)
    registry.reserve("c", "shopping", 10 * MiB)  # another tenant: its own quotas
    assert [registry.owner(i) for i in "abcd"] == ["shop", "shop/cart", "shopping", None]


def test_the_node_wide_limit_counts_every_tenant():
    registry = Registry(Limits(memory_bytes=10 * MiB, workloads_memory_bytes=25 * MiB))
    registry.reserve("a", "x", 10 * MiB)
    registry.reserve("b", "y", 10 * MiB)
    with pytest.raises(ResourceLimitExceeded) as info:
        registry.reserve("c", "z", 10 * MiB)
    assert (info.value.limit, info.value.requested, info.value.allowed) == ("workloads_memory_bytes", 30 * MiB,
                                                                           25 * MiB)
    assert "all workloads on this node" in str(info.value)
    assert registry.admit("z", 5 * MiB) == 5 * MiB
    registry.unclaim("a")
    registry.reserve("c", "z", 10 * MiB)


def test_admit_claims_nothing_and_leaves_out_the_copies_that_go():
    registry = Registry(Limits(memory_bytes=10 * MiB, workloads_memory_bytes=20 * MiB))
    registry.reserve("old", "x", 10 * MiB)
    registry.reserve("other", "y", 10 * MiB)
    with pytest.raises(ResourceLimitExceeded):
        registry.admit("x", None)
    assert registry.admit("x", None, leaving={"old"}) == 10 * MiB  # replaces ``old``
    assert registry.admit("x", None, leaving={"old"}) == 10 * MiB  # and claimed nothing
    with pytest.raises(ResourceLimitExceeded) as info:
        registry.admit("x", 11 * MiB, leaving={"old"})
    assert info.value.limit == "memory_bytes"  # over the per-workload cap
    with pytest.raises(WorkloadExists):
        registry.reserve("old", "x", 1)


def test_a_node_defaults_to_half_of_physical_memory():
    total = system_memory()[0]
    assert total > 0  # Linux: /proc/meminfo
    assert NodeConfig(name="n").limits().workloads_memory_bytes == total // 2
    limits = NodeConfig(name="n", workloads_memory_bytes=64 * MiB, app_memory_bytes=32 * MiB).limits()
    assert (limits.workloads_memory_bytes, limits.app_memory_bytes) == (64 * MiB, 32 * MiB)
    with pytest.raises(ValueError, match="workloads_memory_bytes"):
        Limits(workloads_memory_bytes=0)


def test_a_thread_serving_a_request_finds_only_the_workloads_its_sender_may_use(tmp_path):
    with Host(tmp_path, limits=Limits(memory_bytes=16 * MiB)) as host:
        sha256 = host.add_module(COUNTER)
        host.deploy(sha256, workload_id="w", app="app-a")
        host.call("w", "incr", (4,))
        elsewhere: list = []
        with host.registry.serving(lambda app: app == "app-b"):
            for attempt in (lambda: host.call("w", "incr", (1,)), lambda: host.read_memory("w", 0, 8),
                            lambda: host.write_memory("w", 0, b"x"), lambda: host.output("w"),
                            lambda: host.remove("w")):
                with pytest.raises(UnknownWorkload, match="no workload 'w'"):
                    attempt()
            other = threading.Thread(target=lambda: elsewhere.append(host.call("w", "get")))  # not serving
            other.start()
            other.join()
        assert elsewhere == [4]
        assert host.registry.owner("w") == "app-a" and host.call("w", "get") == 4  # nothing changed
        with host.registry.serving(lambda app: app == "app-a"):
            assert host.call("w", "incr", (1,)) == 5
            host.remove("w")
        assert host.registry.owner("w") is None


_ops = st.lists(st.tuples(st.sampled_from(["reserve", "admit", "unclaim"]),
                          st.sampled_from(["a", "a/x", "b", "b/y", "c"]),
                          st.integers(min_value=1, max_value=8)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops=_ops, max_workloads=st.integers(1, 8), per_app=st.integers(1, 5),
       app_memory=st.one_of(st.none(), st.integers(1, 20)), node_memory=st.one_of(st.none(), st.integers(1, 30)))
def test_claims_never_pass_a_limit_and_a_refusal_names_one_it_would_pass(ops, max_workloads, per_app, app_memory,
                                                                         node_memory):
    limits = Limits(memory_bytes=8, max_workloads=max_workloads, max_workloads_per_app=per_app,
                    app_memory_bytes=app_memory, workloads_memory_bytes=node_memory)
    registry = Registry(limits)
    held: dict[str, tuple[str, int]] = {}  # id -> (app, cap), as the model has it

    def would_pass(app: str, cap: int) -> set[str]:
        tenant = [c for a, c in held.values() if tenant_of(a) == tenant_of(app)]
        passed = set()
        if len(held) + 1 > max_workloads:
            passed.add("max_workloads")
        if node_memory is not None and sum(c for _, c in held.values()) + cap > node_memory:
            passed.add("workloads_memory_bytes")
        if len(tenant) + 1 > per_app:
            passed.add("max_workloads_per_app")
        if app_memory is not None and sum(tenant) + cap > app_memory:
            passed.add("app_memory_bytes")
        return passed

    for n, (op, app, cap) in enumerate(ops):
        if op == "unclaim":
            if held:
                gone = sorted(held)[cap % len(held)]
                registry.unclaim(gone)
                del held[gone]
            continue
        passed = would_pass(app, cap)
        try:
            if op == "admit":
                assert registry.admit(app, cap) == cap
            else:
                registry.reserve(f"w{n}", app, cap)
                held[f"w{n}"] = (app, cap)
        except ResourceLimitExceeded as exc:
            assert exc.limit in passed  # a refusal names a limit it would really pass
        else:
            assert not passed
        for workload_id, (app_, _) in held.items():  # a refusal changed nothing
            assert registry.owner(workload_id) == app_
        assert registry.owner(f"w{n}") == (app if f"w{n}" in held else None)
        caps = [c for _, c in held.values()]
        assert len(caps) <= max_workloads and (node_memory is None or sum(caps) <= node_memory)


# --- on a real node -----------------------------------------------------------------


async def test_a_deploy_over_a_tenants_quota_is_refused_naming_it(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge", args=["--workload-memory-bytes", str(16 * MiB),
                                                    "--app-memory-bytes", str(40 * MiB)])
    async with await NodeClient.connect(node.address, tls=cluster_tls.issue("app-a", "client")) as a, \
            await NodeClient.connect(node.address, tls=cluster_tls.issue("app-b", "client")) as b:
        sha256 = await a.ensure_module(COUNTER)
        await a.deploy(sha256, workload_id="a1")
        await a.deploy(sha256, workload_id="a2", app="app-a/shop")  # 32 MiB of 40 reserved
        with pytest.raises(ResourceLimitExceeded) as info:
            await a.deploy(sha256, workload_id="a3", app="app-a/other")
        assert (info.value.limit, info.value.requested, info.value.allowed) == ("app_memory_bytes", 48 * MiB,
                                                                               40 * MiB)
        assert "app_memory_bytes exceeded" in str(info.value) and "application 'app-a'" in str(info.value)
        for i in range(2):
            await b.deploy(sha256, workload_id=f"b{i}")  # another tenant's budget is its own
        assert sorted(w.workload_id for w in await a.workloads()) == ["a1", "a2"]  # nothing half-made
        assert await a.call("a1", "incr", 2) == 2
        await a.remove("a2")
        await a.deploy(sha256, workload_id="a3", app="app-a/other")


async def test_a_deploy_over_the_node_wide_limit_is_refused_naming_it(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge", args=["--workload-memory-bytes", str(16 * MiB),
                                                    "--workloads-memory-bytes", str(40 * MiB),
                                                    "--max-workloads-per-app", "1"])
    async with await NodeClient.connect(node.address, tls=cluster_tls.issue("app-a", "client")) as a, \
            await NodeClient.connect(node.address, tls=cluster_tls.issue("app-b", "client")) as b:
        sha256 = await a.ensure_module(COUNTER)
        await a.deploy(sha256, workload_id="a1")
        with pytest.raises(ResourceLimitExceeded) as info:
            await a.deploy(sha256, workload_id="a2")
        assert (info.value.limit, info.value.allowed) == ("max_workloads_per_app", 1)
        await b.deploy(sha256, workload_id="b1")
        with trio.fail_after(30):
            with pytest.raises(ResourceLimitExceeded) as info:
                await b.deploy(sha256, workload_id="b2", app="app-b/more")
        assert (info.value.limit, info.value.requested, info.value.allowed) == ("workloads_memory_bytes",
                                                                               48 * MiB, 40 * MiB)
        assert "the memory caps of all workloads on this node" in str(info.value)
        assert [w.workload_id for w in await b.workloads()] == ["b1"]
        assert await b.call("b1", "incr", 3) == 3
