"""Certificates over time, with real ``migrate-node`` processes: reload on SIGHUP and on change, revocation.

Each test gives its node a TLS dir of its own (the session's are shared),
replaces files in it the way an operator would (a new pair issued into a
staging dir, then moved into place) and looks at the node's certificate
from the client side (``NodeClient.node_certificate``).
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import trio
import trio.testing

import workloads
from migrate.launcher import log_records
from nodes import ConnectionFailed
from nodes._credentials import Connections, Credentials
from nodes._revocation import parse
from nodes._tls import Identity, own_identity
from nodeproc import NodeProcess, run_cli


def issue(ca_dir: Path, name: str, role: str, out: Path) -> int:
    """Issue a pair for ``name`` into ``out`` with the CLI; return its serial."""
    run_cli("cert", "issue", "--ca", str(ca_dir), "--name", name, "--role", role, "--out", str(out))
    return own_identity(out).serial


def move_in(tls_dir: Path, cert: bytes, key: bytes) -> None:
    """Replace the pair in ``tls_dir``, each file by a rename."""
    for name, data in (("key.pem", key), ("cert.pem", cert)):
        staged = tls_dir / f".{name}.new"
        staged.write_bytes(data)
        staged.chmod(0o600)
        os.replace(staged, tls_dir / name)


def start_with_own_tls(node_procs, cluster_tls, name: str, tmp_path: Path, *args: str) -> tuple[NodeProcess, Path]:
    """Start a node whose TLS dir is its own copy; return it and the dir."""
    tls = tmp_path / f"{name}-tls"
    shutil.copytree(cluster_tls.issue(name, "node"), tls)
    node = NodeProcess(name, "edge", data_dir=node_procs.root / name, tls_dir=tls, args=args)
    node_procs.nodes.append(node)  # killed at teardown
    return node.start(), tls


def said(node, start: str) -> list[dict]:
    """The node's log records whose message starts with ``start``."""
    return [r for r in log_records(node.log_text()) if str(r.get("msg", "")).startswith(start)]


async def logged(node, start: str, count: int = 1, timeout_s: float = 30.0) -> list[dict]:
    """Wait until the node has logged a message starting with ``start`` ``count`` times; return those records."""
    with trio.fail_after(timeout_s):
        while True:
            found = said(node, start)
            if len(found) >= count:
                return found
            await trio.sleep(0.05)


async def serial_seen(node, cluster_tls) -> int:
    async with await node.client(cluster_tls.app) as client:
        await client.status()
        return client.node_certificate.serial


def test_a_pair_written_in_two_steps_is_taken_once_both_are_in_place(cluster_tls, tmp_path, caplog):
    tls = tmp_path / "tls"
    old = issue(cluster_tls.ca_dir, "two-step", "node", tls)
    new = issue(cluster_tls.ca_dir, "two-step", "node", tmp_path / "staged")
    credentials = Credentials(tls, tls / "revoked.txt")
    server = credentials.server
    assert credentials.reload() is False and credentials.server is server  # nothing changed
    (tls / "cert.pem").write_bytes((tmp_path / "staged" / "cert.pem").read_bytes())  # the key is still the old one
    credentials.reload()
    assert credentials.identity.serial == old and credentials.server is server
    credentials.reload()  # the same files: not tried again
    assert [r.getMessage()[:27] for r in caplog.records if r.levelname == "ERROR"] == ["refused the new certificate"]
    (tls / "key.pem").write_bytes((tmp_path / "staged" / "key.pem").read_bytes())
    credentials.reload()
    assert credentials.identity.serial == new and credentials.server is not server
    (tls / "revoked.txt").write_text("name:someone\n")
    assert credentials.reload() is True and credentials.revoked.names == {"someone"}
    (tls / "revoked.txt").write_text("serial:bad\n")
    assert credentials.reload() is False and credentials.revoked.names == {"someone"}  # the bad list is refused


async def test_served_connections_are_cancelled_when_revoked_even_between_hello_and_service():
    connections, leaked, other = Connections(), Identity("client", ("leaky",), 5), Identity("client", ("ok",), 6)
    with connections.served(leaked, parse("serial:5")) as scope:  # the list changed after its Hello
        await trio.sleep(0)
    assert scope.cancelled_caught
    scopes = {}

    async def serve(identity: Identity) -> None:
        with connections.served(identity, parse("")) as scopes[identity.name]:
            await trio.sleep_forever()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, leaked)
        nursery.start_soon(serve, other)
        await trio.testing.wait_all_tasks_blocked()
        assert connections.close_revoked(parse("name:leaky"), nursery.start_soon) == 1
        await trio.testing.wait_all_tasks_blocked()
        assert scopes["leaky"].cancelled_caught and not scopes["ok"].cancel_called
        nursery.cancel_scope.cancel()


async def test_sighup_swaps_in_a_new_certificate_for_new_connections(node_procs, cluster_tls, tmp_path):
    node, tls = start_with_own_tls(node_procs, cluster_tls, "rot-1", tmp_path, "--tls-poll-s", "3600")
    old = own_identity(tls).serial
    new = issue(cluster_tls.ca_dir, "rot-1", "node", tmp_path / "staged")
    async with await node.client(cluster_tls.app) as before:
        assert before.node_certificate.serial == old
        move_in(tls, (tmp_path / "staged" / "cert.pem").read_bytes(), (tmp_path / "staged" / "key.pem").read_bytes())
        assert await serial_seen(node, cluster_tls) == old  # no signal, and the next poll is an hour away
        os.kill(node.pid, signal.SIGHUP)
        [record] = await logged(node, "reloaded the certificate")
        assert record["serial"] == f"{new:#x}" and record["previous_serial"] == f"{old:#x}"
        assert await serial_seen(node, cluster_tls) == new
        await before.status()  # a connection made before keeps working


async def test_changed_files_are_taken_without_a_signal(node_procs, cluster_tls, tmp_path):
    node, tls = start_with_own_tls(node_procs, cluster_tls, "rot-2", tmp_path, "--tls-poll-s", "0.2")
    new = issue(cluster_tls.ca_dir, "rot-2", "node", tmp_path / "staged")
    move_in(tls, (tmp_path / "staged" / "cert.pem").read_bytes(), (tmp_path / "staged" / "key.pem").read_bytes())
    await logged(node, "reloaded the certificate")
    assert await serial_seen(node, cluster_tls) == new


async def test_a_broken_replacement_is_refused_and_the_node_keeps_serving(node_procs, cluster_tls, tmp_path):
    node, tls = start_with_own_tls(node_procs, cluster_tls, "rot-3", tmp_path, "--tls-poll-s", "3600")
    old = own_identity(tls).serial
    issue(cluster_tls.ca_dir, "rot-3", "node", tmp_path / "a")
    issue(cluster_tls.ca_dir, "rot-3", "node", tmp_path / "b")
    run_cli("ca", "init", "--dir", str(tmp_path / "rogue-ca"))
    issue(tmp_path / "rogue-ca", "rot-3", "node", tmp_path / "rogue")
    broken = {
        "does not belong to the certificate": ("a/cert.pem", "b/key.pem"),
        "is not signed by the CA": ("rogue/cert.pem", "rogue/key.pem"),
        "cannot read the certificate": (None, "a/key.pem"),
    }
    async with await node.client(cluster_tls.app) as client:
        await client.deploy(workloads.load("counter"), workload_id="c")
        for n, (why, (cert, key)) in enumerate(broken.items(), 1):
            move_in(tls, (tmp_path / cert).read_bytes() if cert else b"not a certificate", (tmp_path / key).read_bytes())
            os.kill(node.pid, signal.SIGHUP)
            records = await logged(node, f"refused the new certificate, keeping serial:{old:#x}: ", n)
            assert why in records[-1]["msg"]
            assert await serial_seen(node, cluster_tls) == old
            assert await client.call("c", "incr", 1) == n
    assert not said(node, "reloaded the certificate")


async def test_a_revoked_client_is_shut_out_at_once_and_others_are_not(node_procs, cluster_tls, tmp_path):
    revoked = tmp_path / "revoked.txt"
    node = node_procs.start("rev-1", "edge", args=["--revoked", str(revoked), "--tls-poll-s", "0.2"])
    leaky_tls = cluster_tls.issue("leaky", "client")
    async with await node.client(leaky_tls) as leaky, await node.client(cluster_tls.app) as other:
        await leaky.deploy(workloads.load("counter"), workload_id="c")
        await other.deploy(workloads.load("counter"), workload_id="d")
        assert await leaky.call("c", "incr", 1) == 1
        run_cli("cert", "revoke", "--list", str(revoked), f"serial:{own_identity(leaky_tls).serial:#x}")
        [closing] = await logged(node, "closing a connection: ")
        assert "is revoked" in closing["msg"] and closing["certificate"] == "leaky"
        with pytest.raises(ConnectionFailed, match="revoked"), trio.fail_after(30):
            while True:  # the node closed it: the next request fails, whatever it was
                await leaky.call("c", "get")
                await trio.sleep(0.05)
        assert await other.call("d", "incr", 1) == 1
    with pytest.raises(ConnectionFailed, match="revoked"):
        await node.client(leaky_tls)
    assert await serial_seen(node, cluster_tls) == own_identity(node.tls_dir).serial  # others still connect


async def test_a_revoked_peer_node_is_cut_off_both_ways(node_procs, cluster_tls, tmp_path):
    revoked = tmp_path / "revoked.txt"
    fast = ["--peer-refresh-s", "0.2"]
    a = node_procs.start("rev-a", "edge", args=["--revoked", str(revoked), "--tls-poll-s", "0.2", *fast,
                                                "--log-level", "debug"])  # a redial that fails is logged at debug
    b = node_procs.start("rev-b", "cloud", join=[a], args=fast)  # b dials a; a learns b and dials it back

    async def a_sees_b(connected: bool) -> None:
        async with await a.client(cluster_tls.app) as client:
            with trio.fail_after(30):
                while not any(p.name == "rev-b" and p.connected is connected for p in await client.peers()):
                    await trio.sleep(0.1)
    await a_sees_b(True)
    run_cli("cert", "revoke", "--list", str(revoked), f"serial:{own_identity(b.tls_dir).serial:#x}")
    [dialled] = await logged(a, "closing a connection to a peer: ")
    [served] = await logged(a, "closing a connection: ")
    assert dialled["peer"] == "rev-b" and served["certificate"] == "rev-b"
    await a_sees_b(False)
    with trio.fail_after(30):  # a dials b again, and refuses its certificate
        while not [r for r in said(a, "peer unreachable: ") if "is revoked" in r["msg"]]:
            await trio.sleep(0.05)


async def test_sighup_does_not_stop_a_node_without_tls(node_procs):
    node = node_procs.start("plain-1", "edge", insecure=True)
    os.kill(node.pid, signal.SIGHUP)  # its default action would end the process
    async with await node.client(None) as client:
        await client.status()
    assert node.proc.poll() is None
    assert node.terminate() == 0
