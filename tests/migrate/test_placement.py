"""Placement (pure): the default policy's filters, its ranking, and its reasons, on fixed records."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrate import DefaultPolicy, Needs, NodeRecord
from migrate._placement import HEADROOM, cost, has_capability, rejections

MiB = 2**20


BASE = dict(address="127.0.0.1:7000", role="edge", location="", state="alive", version=1, last_heard_s=0.0,
            cores=4, memory_free_bytes=4096 * MiB, memory_limit_bytes=None, load=0.0, workloads=0,
            wasm_features=(), capabilities={}, cordoned=False, rtt_ms=1.0)


def node(name, **fields):
    return NodeRecord(name=name, **{**BASE, **fields})


def test_a_capability_key_matches_any_value_and_key_value_only_that_value():
    caps = {"gpu": "nvidia-h100", "wasi-nn": "onnx"}
    assert has_capability(caps, "gpu")
    assert has_capability(caps, "gpu=nvidia-h100")
    assert not has_capability(caps, "gpu=amd-mi300")
    assert not has_capability(caps, "tpu")
    assert not has_capability({}, "gpu")


def test_only_the_gpu_node_is_chosen_and_the_others_say_why():
    nodes = [node("edge-1"), node("cloud-1", role="cloud", capabilities={"gpu": "nvidia-h100"}, rtt_ms=30.0),
             node("edge-2", capabilities={"wasi-nn": "onnx"})]
    placement = DefaultPolicy().place(nodes, Needs(capabilities=["gpu"]))
    assert placement.chosen == "cloud-1" and placement.ranked == ("cloud-1",)
    assert placement.rejected == {"edge-1": ("no capability gpu (has none)",),
                                  "edge-2": ("no capability gpu (has wasi-nn=onnx)",)}
    exact = DefaultPolicy().place(nodes, Needs(capabilities=["gpu=amd-mi300"]))
    assert exact.chosen is None and set(exact.rejected) == {"edge-1", "cloud-1", "edge-2"}
    assert "no capability gpu=amd-mi300 (has gpu=nvidia-h100)" in exact.explain()


def test_every_filter_gives_its_reason():
    needs = Needs(memory=512 * MiB, max_rtt_ms=10, wasm_features=["simd"])
    nodes = [node("dead", state="dead", wasm_features=("simd",)),
             node("cordoned", cordoned=True, wasm_features=("simd",)),
             node("app", role="client", wasm_features=("simd",)),
             node("far", rtt_ms=25.0, wasm_features=("simd",)),
             node("gone", rtt_ms=None, wasm_features=("simd",)),
             node("plain"),
             node("capped", memory_limit_bytes=256 * MiB, wasm_features=("simd",)),
             node("full", memory_free_bytes=600 * MiB, wasm_features=("simd",)),
             node("good", wasm_features=("simd", "threads"))]
    placement = DefaultPolicy().place(nodes, needs)
    assert placement.ranked == ("good",)
    assert placement.rejected == {
        "dead": ("it is dead",), "cordoned": ("it is cordoned",),
        "app": ("it is an application's own node (role client)",),
        "far": ("RTT 25.0 ms over the 10 ms allowed",), "gone": ("this application cannot reach it",),
        "plain": ("no WebAssembly feature simd",),
        "capped": ("needs 512 MiB, over its 256 MiB limit",),
        "full": (f"needs 512 MiB, {600 * (1 - HEADROOM):.0f} MiB free after headroom",),
    }
    # the node a workload moves from is never its target
    assert DefaultPolicy().place(nodes, needs, exclude="good").rejected["good"] == ("it is where the workload is",)


def test_ranking_prefers_low_rtt_low_load_and_free_memory():
    nodes = [node("near", rtt_ms=1.0), node("far", rtt_ms=40.0), node("busy", rtt_ms=1.0, load=8.0),
             node("small", rtt_ms=1.0, memory_free_bytes=200 * MiB)]
    placement = DefaultPolicy().place(nodes, Needs(memory=100 * MiB))
    assert placement.ranked == ("near", "small", "busy", "far")
    # the documented formula: 10 ms of RTT weigh as one unit of load per core
    assert cost(node("a", rtt_ms=10.0), Needs()) == pytest.approx(cost(node("b", rtt_ms=0.0, load=4.0), Needs()))


def test_bad_needs_are_refused():
    with pytest.raises(TypeError):
        Needs(capabilities="gpu")
    with pytest.raises(ValueError):
        Needs(memory=-1)
    with pytest.raises(ValueError):
        Needs(max_rtt_ms=0)
    with pytest.raises(ValueError):
        Needs(capabilities=["=x"])


records = st.builds(
    NodeRecord,
    location=st.just(""), version=st.just(1), last_heard_s=st.just(0.0), workloads=st.just(0),
    name=st.sampled_from(["a", "b", "c", "d", "e", "f"]),
    address=st.just("127.0.0.1:1"),
    role=st.sampled_from(["client", "edge", "cloud"]),
    state=st.sampled_from(["alive", "alive", "suspect", "dead"]),
    cores=st.integers(1, 64),
    memory_free_bytes=st.integers(0, 8192 * MiB),
    memory_limit_bytes=st.none() | st.integers(1, 4096 * MiB),
    load=st.floats(0, 64),
    wasm_features=st.lists(st.sampled_from(["simd", "threads", "multi-memory"]), unique=True).map(tuple),
    capabilities=st.dictionaries(st.sampled_from(["gpu", "wasi-nn", "fpga"]), st.sampled_from(["x", "y"])),
    cordoned=st.booleans(),
    rtt_ms=st.none() | st.floats(0, 200),
)
needs_st = st.builds(
    Needs,
    memory=st.none() | st.integers(1, 4096 * MiB),
    capabilities=st.lists(st.sampled_from(["gpu", "gpu=x", "wasi-nn=y", "fpga"]), max_size=2).map(tuple),
    max_rtt_ms=st.none() | st.floats(1, 200),
    wasm_features=st.lists(st.sampled_from(["simd", "threads"]), max_size=2).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(records, max_size=8, unique_by=lambda r: r.name), needs_st)
def test_the_chosen_node_satisfies_the_needs_and_every_other_node_has_a_reason(nodes, needs):
    placement = DefaultPolicy().place(nodes, needs)
    by_name = {n.name: n for n in nodes}
    assert set(placement.ranked) | set(placement.rejected) == set(by_name)
    assert not set(placement.ranked) & set(placement.rejected)
    for name in placement.ranked:
        n = by_name[name]
        assert n.state == "alive" and not n.cordoned and n.role != "client" and n.rtt_ms is not None
        assert all(has_capability(n.capabilities, c) for c in needs.capabilities)
        assert set(needs.wasm_features) <= set(n.wasm_features)
        assert needs.max_rtt_ms is None or n.rtt_ms <= needs.max_rtt_ms
        memory = needs.memory or 64 * MiB
        assert memory <= n.memory_free_bytes * (1 - HEADROOM)
        assert n.memory_limit_bytes is None or memory <= n.memory_limit_bytes
    for name, why in placement.rejected.items():
        assert why and all(isinstance(w, str) and w for w in why)
        assert rejections(by_name[name], needs) == why
    costs = [cost(by_name[n], needs) for n in placement.ranked]
    assert costs == sorted(costs)
