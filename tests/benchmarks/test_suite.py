"""Smoke tests of the handover suite: it runs, and what it writes is well-formed and consistent.

No timing is asserted: the moves are real but tiny, and only the form of
the output and the arithmetic between its own numbers are checked.
"""

import copy
import dataclasses
import json
import math

import pytest

from benchmarks import netem
from benchmarks.suite import QUICK, GrowerSpec, KvstoreSpec, check_results, run_suite, write
from benchmarks.suite import __main__ as cli
from benchmarks.suite._report import ROW_FIELDS, markdown

#: A slice of the quick mode: one dirtier size at two rates, a small store, a small heap;
#: loopback and, where namespaces can be made, the 1 Gbit/s emulated link.
TINY = dataclasses.replace(
    QUICK, memory_sweep_mib=(1,), rate_sweep=(0, 1000), sweep_memory_mib=1,
    kvstore=KvstoreSpec(keys=64, puts_per_s=200), grower=GrowerSpec(start_mib=1, grow_mib_per_s=2),
    steady_s=0.15, tail_s=0.15, move_timeout_s=10)
#: Strategies whose moves must succeed here; others (dual while it is built) may fail, and say so.
ESTABLISHED = ("stop-copy", "precopy")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    data = write(run_suite(TINY, tmp_path_factory.mktemp("nodes")), out)
    return data, out


def test_the_output_files_are_well_formed(tiny_run):
    data, out = tiny_run
    on_disk = json.loads((out / "suite-quick.json").read_text())
    assert on_disk == json.loads(json.dumps(data))
    md = (out / "suite-quick.md").read_text()
    assert md.startswith("# Handover benchmark suite (quick)")
    assert md == markdown(on_disk)
    every = md.split("## Every move", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in every.splitlines() if line.startswith("| ") and not line.startswith("| link")]
    assert len(rows) == len(data["results"])
    assert all(line.count("|") == rows[0].count("|") for line in rows)
    if isinstance(data["plots"], list):
        assert all((out / name).read_bytes().startswith(b"\x89PNG") for name in data["plots"])
    else:
        assert "matplotlib" in data["plots"] and "No plots: matplotlib" in md


def test_the_results_check_finds_nothing_wrong(tiny_run):
    data, _ = tiny_run
    assert check_results(data) == []


def test_strategies_run_side_by_side_and_unavailable_ones_are_said(tiny_run):
    data, _ = tiny_run
    assert {"stop-copy", "precopy"} <= set(data["strategies"])
    assert set(data["strategies"]) | set(data["unavailable_strategies"]) == set(TINY.strategies)
    settings = {(r["link"], r["label"]) for r in data["results"]}
    assert len(data["results"]) == len(settings) * len(data["strategies"])
    assert {s.label for s in TINY.workloads()} == {label for _, label in settings}
    md = (tiny_run[1] / "suite-quick.md").read_text()
    for name in data["unavailable_strategies"]:
        assert f"Strategy **{name}**: not available" in md


def test_links_ran_or_say_why_not(tiny_run):
    data, _ = tiny_run
    ran = {link["profile"]["name"] for link in data["links"]}
    assert "loopback" in ran
    assert ran | set(data["skipped_links"]) == {p.name for p in TINY.links}
    if netem.unavailable_reason() is None:
        assert "1gbit" in ran, data["skipped_links"]


def test_every_ratio_is_computed_from_the_numbers_beside_it(tiny_run):
    data, _ = tiny_run
    figures = {link["profile"]["name"]: link["figures"] for link in data["links"]}
    for r in data["results"]:
        assert set(ROW_FIELDS) <= set(r)
        if r["strategy"] in ESTABLISHED:
            assert r["error"] is None, r["error"]
        if r["error"]:
            continue
        f, c = r["floor"], r["client"]
        link = figures[r["link"]]
        assert f["bandwidth_bytes_per_s"] == link["bandwidth_bytes_per_s"] and f["rtt_s"] == link["rtt_s"]
        assert math.isclose(f["floor_s"], r["dirty_bytes_per_s"] * f["rtt_s"] / f["bandwidth_bytes_per_s"]
                            + f["rtt_s"], rel_tol=1e-9)
        assert math.isclose(r["blackout_to_floor"], c["blackout_s"] / f["floor_s"], rel_tol=1e-9)
        assert c["blackout_s"] >= 0 and r["rounds"] >= 1 and r["bytes_sent"] > 0
        assert r["frozen_s"] >= 0 and 0 <= r["final_round_bytes"] <= r["bytes_sent"]
        assert r["node_blackout_s"] is None or r["node_blackout_s"] >= 0
        assert r["raw_memory_bytes"] >= r["params"].get("memory_mib", 0) * 2**20
        assert r["state_ok"] is True
        if r["params"].get("dirty_pages_per_s") == 0:
            assert r["dirty_bytes_per_s"] == 0 and f["final_dirty_bytes"] == 0


def test_the_check_catches_a_ratio_that_does_not_add_up(tiny_run):
    data = copy.deepcopy(tiny_run[0])
    ok = [r for r in data["results"] if not r["error"]]
    ok[0]["blackout_to_floor"] *= 2
    ok[-1]["client"]["steady_gap_s"] += 1
    del ok[1]["rounds"]
    problems = check_results(data)
    assert any("ratio to the floor" in p for p in problems)
    assert any("largest gap minus steady gap" in p for p in problems)
    assert any("missing ['rounds']" in p for p in problems)
    data = copy.deepcopy(tiny_run[0])
    data["results"].pop()
    assert any("expected" in p for p in check_results(data))
    data = copy.deepcopy(tiny_run[0])
    ok = [r for r in data["results"] if not r["error"]]
    ok[0]["final_round_bytes"] = ok[0]["bytes_sent"] + 1
    assert any("out of range" in p for p in check_results(data))


def test_every_move_has_its_cpu_reference_and_the_check_holds_it_to_its_numbers(tiny_run):
    data = copy.deepcopy(tiny_run[0])
    ok = [r for r in data["results"] if not r["error"]]
    for r in ok:
        ref = r["reference"]
        assert ref["processes"] >= 1 and 0 <= ref["steady_busy"] <= 1 and 0 <= ref["move_busy"] <= 1
        assert r["latency_reference"]["count"] >= 1  # the stream went on through the window
    md = markdown(data)
    table = md.split("## Worst calls against their references", 1)[1].split("\n## ", 1)[0]
    assert len([line for line in table.splitlines() if line.startswith("| ") and "| link" not in line]) == len(ok)
    ok[0]["reference"]["duty"] += 0.5
    ok[-1]["reference_worst_to_steady_p99"] = (ok[-1]["reference_worst_to_steady_p99"] or 1) * 2
    del ok[1]["reference"]["seconds"]
    problems = check_results(data)
    assert any("reference duty" in p for p in problems)
    assert any("reference_worst_to_steady_p99" in p for p in problems)
    assert any("reference should have the fields" in p for p in problems)


def test_the_command_runs_loopback_only_and_writes_where_told(tmp_path, capsys):
    rc = cli.main(["--quick", "--links", "loopback", "--strategies", "stop-copy,no-such-strategy",
                   "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "suite-quick.json").read_text())
    assert data["strategies"] == ["stop-copy"]
    assert "no-such-strategy" in data["unavailable_strategies"]
    assert [link["profile"]["name"] for link in data["links"]] == ["loopback"]
    assert check_results(data) == []
    assert "# Handover benchmark suite (quick)" in capsys.readouterr().out


def test_failed_moves_are_reported_not_hidden(tiny_run):
    data = copy.deepcopy(tiny_run[0])
    victim = data["results"][0]
    victim["error"] = "TooSlowError: the move took longer than 20 s"
    data["results"][1]["error"] = "not run: it hung | twice"
    data["abandoned_strategies"] = {victim["link"]: {victim["strategy"]: f"it hung on {victim['label']}"}}
    assert check_results(data) == []
    md = markdown(data)
    assert "| failed: TooSlowError: the move took longer than 20 s |" in md
    assert "| not run: it hung / twice |" in md
    assert f"Strategy **{victim['strategy']}** on {victim['link']}: later moves on this link not run" in md


def test_every_move_has_both_nodes_memory_and_the_check_holds_the_peak_to_it(tiny_run):
    data = copy.deepcopy(tiny_run[0])
    ok = [r for r in data["results"] if not r["error"]]
    for r in ok:
        assert set(r["memory"]) == {"edge-1", "cloud-1"}  # both nodes run on this machine
        for m in r["memory"].values():
            assert 0 < m["before_bytes"] <= m["peak_bytes"]
    md = markdown(data)
    table = md.split("## Node memory over the move", 1)[1].split("\n## ", 1)[0]
    assert len([line for line in table.splitlines() if line.startswith("| ") and "| link" not in line]) == len(
        [r for r in ok if r["raw_memory_bytes"]])
    ok[0]["memory"]["cloud-1"]["peak_bytes"] = ok[0]["memory"]["cloud-1"]["before_bytes"] - 1
    del ok[-1]["memory"]["edge-1"]["before_bytes"]
    problems = check_results(data)
    assert any("memory of cloud-1" in p for p in problems) and any("memory of edge-1" in p for p in problems)
