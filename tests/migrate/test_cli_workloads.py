"""``migrate-node call``, ``remove``, ``exports`` and ``--version`` against real nodes, following moves."""

import json
import subprocess

from nodeproc import clean_env, migrate_node_command

import workloads


def cli(*args, tls=None, env=None):
    return subprocess.run([*migrate_node_command(), *args, *(("--tls-dir", str(tls)) if tls else ())],
                          capture_output=True, text=True, env={**clean_env(), **(env or {})}, timeout=120)


def test_remove_and_exports_follow_a_moved_workload(node_procs, cluster_tls, tmp_path):
    edge = node_procs.start("edge-1", "edge")
    cloud = node_procs.start("cloud-1", "cloud", join=[edge])
    module = tmp_path / "kvstore.wasm"
    module.write_bytes(workloads.load("kvstore"))
    tls = cluster_tls.issue("ops", "client")
    assert cli("deploy", str(module), "--id", "kv", "--node", str(edge.address), tls=tls).returncode == 0
    listed = cli("exports", "kv", "--node", str(edge.address), tls=tls)
    assert listed.returncode == 0 and "kv_put(i32, i32, i32, i32) -> (i32)" in listed.stdout
    assert "__wm_" not in listed.stdout
    as_json = json.loads(cli("exports", "kv", "--node", str(edge.address), "--json", tls=tls).stdout)
    assert {"name": "kv_count", "params": [], "results": ["i32"]} in as_json
    moved = cli("migrate", "kv", "--to", str(cloud.address), "--node", str(edge.address), tls=tls)
    assert moved.returncode == 0, moved.stderr
    gone = cli("remove", "kv", "--node", str(edge.address), tls=tls)
    assert gone.returncode == 0, gone.stderr
    assert "kv moved from edge-1 to cloud-1" in gone.stderr and "removed kv" in gone.stdout
    assert json.loads(cli("list", "--node", str(cloud.address), "--json", tls=tls).stdout) == []
    again = cli("remove", "kv", "--node", str(cloud.address), tls=tls)
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1 and "kv" in again.stderr


def test_version_and_the_clients_own_environment(node_procs, cluster_tls):
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("migrate-node ")
    edge = node_procs.start("edge-1", "edge")
    tls = cluster_tls.issue("ops", "client")
    # the server's variable does not configure the client, and the error says so
    confused = cli("list", "--node", str(edge.address), env={"MIGRATE_NODE_TLS_DIR": str(tls)})
    assert confused.returncode == 2 and "MIGRATE_CLI_TLS_DIR" in confused.stderr
    assert "server's own" in confused.stderr
    ok = cli("list", env={"MIGRATE_CLI_TLS_DIR": str(tls), "MIGRATE_CLI_NODE": str(edge.address)})
    assert ok.returncode == 0 and ok.stdout.strip() == "no workloads", ok.stderr
