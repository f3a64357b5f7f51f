"""The suite's public names: what other benchmarks and tests may import."""

from benchmarks import suite


def test_export_list_is_stable():
    assert sorted(suite.__all__) == sorted([
        "FULL", "PRESETS", "QUICK", "STRATEGIES", "CallSample", "ClientBlackout", "DirtierSpec", "Floor",
        "GrowerSpec", "KvstoreSpec", "LatencyStats", "MoveResult", "SuiteConfig", "check_results",
        "client_blackout", "latency_stats", "markdown", "percentile", "physical_floor", "run_suite", "write",
    ])
    for name in suite.__all__:
        assert getattr(suite, name) is not None


def test_the_presets_cover_what_the_issue_asks_for():
    full = suite.FULL
    assert min(full.memory_sweep_mib) == 1 and max(full.memory_sweep_mib) == 1024  # 1 MiB to 1 GiB
    assert {p.name for p in full.links} == {"loopback", "1gbit", "100mbit"}
    assert set(suite.STRATEGIES) == {"stop-copy", "precopy", "dual"}
    kinds = {s.kind for s in full.workloads()}
    assert kinds == {"dirtier", "kvstore", "grower"} == {s.kind for s in suite.QUICK.workloads()}
    assert len(set(full.workloads())) == len(full.workloads())
