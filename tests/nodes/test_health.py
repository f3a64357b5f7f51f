"""A real ``migrate-node serve`` with --metrics-listen and NOTIFY_SOCKET: /metrics, /healthz, /readyz, systemd."""

from __future__ import annotations

import os
import re
import socket
import threading
import urllib.error
import urllib.request

import pytest
import trio

import workloads
from nodes._health import Health, Notifier
from nodeproc import run_cli


def http_get(address: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def get(address: str, path: str) -> tuple[int, str]:
    return await trio.to_thread.run_sync(http_get, address, path)


def sample(text: str, metric: str, **labels: str) -> float:
    """The sum of the samples of ``metric`` with ``labels`` (and any others) in Prometheus text; 0 if none."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match is None or match[1] != metric:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[2] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match[3])
    return total


def metrics_address(node) -> str:
    return next(r["address"] for r in node.log_lines() if r.get("msg") == "serving metrics")


class NotifySocket:
    """A datagram socket in the abstract namespace, read all the time like systemd's NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self.name = f"@wm-notify-{os.getpid()}-{id(self)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.seen: list[str] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            state = self.sock.recv(4096).decode()
            with self.changed:
                self.seen.append(state)
                self.changed.notify_all()

    def wait_for(self, state: str, timeout_s: float = 30.0) -> list[str]:
        """The datagrams received up to the first ``state``.  Raises AssertionError if none comes in time."""
        with self.changed:
            assert self.changed.wait_for(lambda: state in self.seen, timeout_s), self.seen
            return self.seen[:self.seen.index(state) + 1]


def test_notifier_reads_systemd_environment():
    assert Notifier.from_env({}) is None
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "3000000"})
    assert notifier.address == "\0x" and notifier.watchdog_s == 1.5
    # The watchdog is another process's: no pings from this one.
    assert Notifier.from_env({"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "3000000",
                              "WATCHDOG_PID": "1"}).watchdog_s is None


def test_answers_before_the_node_is_ready():
    health = Health(None)
    assert health.answer("GET", "/healthz")[0] == 200
    assert health.answer("GET", "/readyz")[:3:2] == (503, b"starting\n")
    assert health.answer("GET", "/metrics")[0] == 503
    assert health.answer("POST", "/healthz")[0] == 405
    assert health.answer("GET", "/other")[0] == 404
    health.stop()
    assert health.answer("GET", "/readyz?verbose")[:3:2] == (503, b"stopping\n")


def test_a_non_loopback_metrics_address_needs_metrics_public():
    done = run_cli("serve", "--name", "n", "--insecure", "--metrics-listen", "0.0.0.0:0", check=False)
    assert done.returncode == 2 and "--metrics-public" in done.stderr.splitlines()[-1]


async def test_metrics_health_readiness_and_systemd_states_of_a_real_node(node_procs, cluster_tls):
    notify = NotifySocket()
    node = node_procs.start("edge-1", "edge", args=["--metrics-listen", "127.0.0.1:0", "--call-timeout-s", "120",
                                                  "--shutdown-grace-s", "120"],
                            env={"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "100000"})
    states = await trio.to_thread.run_sync(notify.wait_for, "READY=1")
    assert "STOPPING=1" not in states
    assert "WATCHDOG=1" in await trio.to_thread.run_sync(notify.wait_for, "WATCHDOG=1")
    address = metrics_address(node)
    assert await get(address, "/healthz") == (200, "ok\n")
    assert await get(address, "/readyz") == (200, "ready\n")
    assert (await get(address, "/nothing"))[0] == 404

    status, before = await get(address, "/metrics")
    assert status == 200
    assert sample(before, "migrate_node_info", name="edge-1", role="edge") == 1
    assert sample(before, "migrate_node_workloads", state="ready", tenant="app") == 0
    tls = cluster_tls.issue("app", "client")
    async with await node.client(tls) as client:
        await client.deploy(workloads.load("counter"), workload_id="c1")
        await client.deploy(workloads.load("trap"), workload_id="t1")
        for i in range(5):
            await client.call("c1", "incr", 1)
        with pytest.raises(Exception):
            await client.call("t1", "boom")
        _, after = await get(address, "/metrics")
        assert sample(after, "migrate_node_workloads", state="ready", tenant="app") == 2
        assert sample(after, "migrate_node_request_seconds_count", request="call", outcome="ok") == \
            sample(before, "migrate_node_request_seconds_count", request="call", outcome="ok") + 5
        assert sample(after, "migrate_node_request_seconds_count", request="call", outcome="workload_trap") == 1
        assert sample(after, "migrate_node_request_seconds_bucket", request="call", outcome="ok", le="+Inf") == 5
        assert sample(after, "migrate_node_memory_bytes", tenant="app") > 0
        assert sample(after, "migrate_node_memory_limit_bytes", tenant="app") >= \
            sample(after, "migrate_node_memory_bytes", tenant="app")
        assert sample(after, "migrate_node_events_total", event="requests") > \
            sample(before, "migrate_node_events_total", event="requests")

        # A call that runs until its deadline (120 s) keeps the stopping node from finishing: it is not
        # ready meanwhile.
        async with trio.open_nursery() as nursery:
            async def spin() -> None:
                with pytest.raises(Exception):
                    await client.call("t1", "spin", -1)
            nursery.start_soon(spin)
            while not any(w.workload_id == "t1" and w.state == "busy" for w in await client.workloads()):
                await trio.sleep(0.01)
            node.proc.terminate()
            await trio.to_thread.run_sync(notify.wait_for, "STOPPING=1")
            assert await get(address, "/readyz") == (503, "stopping\n")
            assert (await get(address, "/healthz"))[0] == 200
            node.kill()
