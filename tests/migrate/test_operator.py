"""``migrate-node migrate`` and ``migrate-node drain`` against real nodes."""

import json
import subprocess

import pytest

from nodeproc import clean_env, migrate_node_command

import workloads


def cli(*args, tls):
    return subprocess.run([*migrate_node_command(), *args, "--tls-dir", str(tls)], capture_output=True, text=True,
                          env=clean_env(), timeout=120)


@pytest.fixture
def pair(node_procs, tmp_path):
    edge = node_procs.start("edge-1", "edge")
    cloud = node_procs.start("cloud-1", "cloud", join=[edge])
    module = tmp_path / "counter.wasm"
    module.write_bytes(workloads.load("counter"))
    return edge, cloud, module


def _wait_for_peer(edge, tls, name):
    import time

    for _ in range(200):
        out = cli("status", "--node", str(edge.address), "--json", tls=tls)
        if any(p.get("name") == name for p in json.loads(out.stdout)["peers"]):
            return
        time.sleep(0.05)
    raise AssertionError(f"{edge.name} never learned of {name}")


def test_migrate_one_workload_by_peer_name_keeps_its_state(pair, cluster_tls):
    edge, cloud, module = pair
    tls = cluster_tls.issue("ops", "client")
    assert cli("deploy", str(module), "--id", "c1", "--node", str(edge.address), tls=tls).returncode == 0
    assert cli("call", "c1", "incr", "41", "--node", str(edge.address), tls=tls).stdout.strip() == "41"
    _wait_for_peer(edge, tls, "cloud-1")
    done = cli("migrate", "c1", "--to", "cloud-1", "--node", str(edge.address), tls=tls)
    assert done.returncode == 0, done.stderr
    assert "c1 edge-1 -> cloud-1 (precopy)" in done.stdout and "blackout" in done.stdout
    assert cli("call", "c1", "incr", "1", "--node", str(cloud.address), tls=tls).stdout.strip() == "42"
    followed = cli("call", "c1", "get", "--node", str(edge.address), tls=tls)  # asks the node it left
    assert followed.returncode == 0 and followed.stdout.strip() == "42", followed.stderr
    assert "c1 moved from edge-1 to cloud-1" in followed.stderr
    same = cli("migrate", "c1", "--to", "cloud-1", "--node", str(cloud.address), tls=tls)
    assert same.returncode == 0 and "c1 is on cloud-1 already: nothing to move" in same.stdout


def test_drain_moves_everything_and_shows_progress(pair, cluster_tls):
    edge, cloud, module = pair
    tls = cluster_tls.issue("ops-node", "node")  # drain cordons the node first: a node certificate's right
    for i in range(3):
        assert cli("deploy", str(module), "--id", f"w{i}", "--node", str(edge.address), tls=tls).returncode == 0
        cli("call", f"w{i}", "incr", str(i + 10), "--node", str(edge.address), tls=tls)
    done = cli("drain", "--to", str(cloud.address), "--strategy", "stop-copy", "--node", str(edge.address), tls=tls)
    assert done.returncode == 0, done.stderr
    assert [line.split("]")[0] for line in done.stderr.splitlines() if line.startswith("[")] == ["[1/3", "[2/3", "[3/3"]
    assert "drained edge-1: 3 workloads moved (3 to cloud-1), 0 failed; edge-1 stays cordoned" in done.stdout
    for i in range(3):
        assert cli("call", f"w{i}", "get", "--node", str(cloud.address), tls=tls).stdout.strip() == str(i + 10)
    listing = cli("list", "--node", str(edge.address), "--json", tls=tls)
    assert json.loads(listing.stdout) == []


def test_a_tenant_cannot_drain_a_node(pair, cluster_tls):
    edge, cloud, module = pair
    tls = cluster_tls.issue("ops", "client")
    assert cli("deploy", str(module), "--id", "c1", "--node", str(edge.address), tls=tls).returncode == 0
    done = cli("drain", "--to", str(cloud.address), "--node", str(edge.address), tls=tls)
    assert done.returncode == 1 and "edge-1 refused to cordon" in done.stderr
    assert cli("call", "c1", "incr", "1", "--node", str(edge.address), tls=tls).stdout.strip() == "1"


def test_unknown_target_is_a_clear_error(pair, cluster_tls):
    edge, _, module = pair
    tls = cluster_tls.issue("ops", "client")
    cli("deploy", str(module), "--id", "c1", "--node", str(edge.address), tls=tls)
    done = cli("migrate", "c1", "--to", "mars-1", "--node", str(edge.address), tls=tls)
    assert done.returncode == 1 and "no node named 'mars-1'" in done.stderr


def test_status_lists_finished_migrations(pair, cluster_tls):
    edge, cloud, module = pair
    tls = cluster_tls.issue("ops", "client")
    cli("deploy", str(module), "--id", "c1", "--node", str(edge.address), tls=tls)
    assert cli("migrate", "c1", "--to", str(cloud.address), "--node", str(edge.address), tls=tls).returncode == 0
    status = json.loads(cli("status", "--node", str(edge.address), "--json", tls=tls).stdout)
    [done] = status["migrations"]
    assert done["workload"] == "c1" and done["state"] == "done" and done["strategy"] == "precopy"
    text = cli("status", "--node", str(edge.address), tls=tls).stdout
    assert "migration c1 done -> cloud-1" in text
