"""Cordon on real nodes: ``migrate-node cordon/uncordon NAME``, kept across a restart, refused to tenants,
seen by placement; ``drain`` cordons first and places each workload when ``--to`` is not given."""

import functools
import json
import subprocess

import pytest
import trio

import migrate
import workloads
from migrate import Needs, NoSuitableNode
from migrate._cordon import MCordon
from migrate._service import PLUGINS
from migrate.wire import MigrationCode
from nodes import Address, NodeConfig, RemoteNodeError, serve

from nodeproc import clean_env, migrate_node_command

pytestmark = pytest.mark.trio

COUNTER = workloads.load("counter")
FAST = ["--peer-refresh-s", "0.2"]


def cli(*args, tls):
    return subprocess.run([*migrate_node_command(), *args, "--tls-dir", str(tls)], capture_output=True, text=True,
                          env=clean_env(), timeout=120)


async def record_of(cluster, name):
    return {r.name: r for r in await cluster.nodes()}.get(name)


async def wait_for(cluster, name, **fields):
    with trio.fail_after(30):
        while True:
            r = await record_of(cluster, name)
            if r is not None and r.rtt_ms is not None and all(getattr(r, k) == v for k, v in fields.items()):
                return r
            await trio.sleep(0.2)


async def test_cordon_stops_new_placements_and_survives_a_restart(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge", args=FAST)
    gpu = node_procs.start("cloud-1", "cloud", join=[edge], args=[*FAST, "--capability", "gpu=nvidia-h100"])
    ops, tenant = cluster_tls.issue("ops-node", "node"), cluster_tls.issue("shop", "client")
    async with migrate.connect(str(edge.address), tls=cluster_tls.issue("app-1", "node")) as cluster:
        await wait_for(cluster, "cloud-1", cordoned=False)
        running = await cluster.spawn(COUNTER, on="cloud-1")
        await running.call("incr", 2)

        refused = cli("cordon", "cloud-1", "--node", str(edge.address), tls=tenant)  # a tenant may not
        assert refused.returncode == 1 and "use a node certificate" in refused.stderr, refused.stderr
        # asked through edge-1, which knows cloud-1 as a peer
        done = cli("cordon", "cloud-1", "--node", str(edge.address), tls=ops)
        assert done.returncode == 0 and done.stdout.strip() == "cloud-1 cordoned", done.stderr
        again = cli("cordon", "cloud-1", "--node", str(gpu.address), tls=ops)
        assert again.stdout.strip() == "cloud-1 was cordoned already"

        await wait_for(cluster, "cloud-1", cordoned=True)
        with pytest.raises(NoSuitableNode, match="cloud-1: it is cordoned"):
            await cluster.spawn(COUNTER, on="auto", needs=Needs(capabilities=["gpu"]))
        with pytest.raises(RemoteNodeError) as direct:
            await cluster.spawn(COUNTER, on="cloud-1")
        assert direct.value.code == MigrationCode.CORDONED
        on_edge = await cluster.spawn(COUNTER, on="edge-1")
        with pytest.raises(migrate.MigrationFailed, match="cloud-1 is cordoned: it takes no incoming moves"):
            await on_edge.migrate("cloud-1")
        assert on_edge.node == "edge-1" and await on_edge.call("incr", 1) == 1
        # what runs there keeps running
        assert await running.call("incr", 1) == 3
        status = json.loads(cli("status", "--node", str(gpu.address), "--json", tls=ops).stdout)
        assert {"node": "cloud-1", "state": "cordoned"} in status["migrations"]

        gpu.stop()
        node_procs.restart(gpu)
        await wait_for(cluster, "cloud-1", cordoned=True)  # the flag is in its data dir
        with pytest.raises(NoSuitableNode, match="cloud-1: it is cordoned"):
            await cluster.spawn(COUNTER, on="auto", needs=Needs(capabilities=["gpu"]))

        done = cli("uncordon", "cloud-1", "--node", str(gpu.address), tls=ops)
        assert done.returncode == 0 and done.stdout.strip() == "cloud-1 uncordoned", done.stderr
        await wait_for(cluster, "cloud-1", cordoned=False)
        h = await cluster.spawn(COUNTER, on="auto", needs=Needs(capabilities=["gpu"]))
        assert h.node == "cloud-1"


async def test_drain_without_a_target_cordons_then_places_each_workload(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge", args=FAST)
    node_procs.start("edge-2", "edge", join=[edge], args=FAST)
    node_procs.start("cloud-1", "cloud", join=[edge], args=FAST)
    ops = cluster_tls.issue("ops-node", "node")
    async with migrate.connect(str(edge.address), tls=cluster_tls.issue("app-1", "node")) as cluster:
        await wait_for(cluster, "edge-2")
        await wait_for(cluster, "cloud-1")
        handles = [await cluster.spawn(COUNTER, on="edge-1") for _ in range(3)]
        for i, h in enumerate(handles):
            await h.call("incr", i + 10)
        with trio.fail_after(30):  # edge-1's membership view holds both others
            while {m.name for m in await (await cluster.client(str(edge.address))).members()
                   if m.state == "alive"} != {"edge-1", "edge-2", "cloud-1"}:
                await trio.sleep(0.2)

        done = await trio.to_thread.run_sync(
            lambda: cli("drain", "--strategy", "stop-copy", "--node", str(edge.address), tls=ops))
        assert done.returncode == 0, done.stderr
        lines = done.stderr.splitlines()
        assert lines[0] == "edge-1 cordoned"
        assert [line.split("]")[0] for line in lines if line.startswith("[")] == ["[1/3", "[2/3", "[3/3"]
        assert done.stdout.startswith("drained edge-1: 3 workloads moved (")
        assert done.stdout.strip().endswith("0 failed; edge-1 stays cordoned")
        for i, h in enumerate(handles):
            assert await h.call("incr", 1) == i + 11  # exactly once, wherever it went
            assert h.node in ("edge-2", "cloud-1")
        assert (await wait_for(cluster, "edge-1")).cordoned


async def test_a_node_without_data_dir_checks_its_cordon_in_the_default_directory(tmp_path, monkeypatch, nursery):
    """``--data-dir`` unset: the node's data (and the cordon flag) is under $XDG_DATA_HOME/migrate-node/NAME."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    config = NodeConfig(name="edge-9", listen=Address("127.0.0.1", 0), insecure=True)
    bound = await nursery.start(functools.partial(serve, config, plugins=PLUGINS))
    async with migrate.connect(str(bound), local=False) as cluster:
        h = await cluster.spawn(COUNTER, on="edge-9")
        assert await h.call("incr", 1) == 1
        client = await cluster.client(str(bound))
        assert (await client.request(MCordon)).cordoned
        assert (tmp_path / "migrate-node" / "edge-9" / "cordoned").exists()
        with pytest.raises(RemoteNodeError, match="cordoned"):
            await cluster.spawn(COUNTER, on="edge-9")
