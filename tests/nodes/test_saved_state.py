"""Nothing lost across a restart: real ``migrate-node serve`` processes, damaged data directories, full disks.

A node refuses (status 2, one line naming the file) to start from saved
state it cannot use whole, and changes nothing on disk then;
``--discard-state`` sets that state aside and starts empty.  SIGTERM's
checkpoint replaces the previous one only once complete: a full disk
keeps what was there and says which file could not be written.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

import workloads
from nodeproc import NodeProcess, clean_env, migrate_node_command
from test_checkpoints import tree

COUNTER = workloads.load("counter")
DIRTIER = workloads.load("dirtier")
MiB = 1 << 20


def serve_once(node: NodeProcess, *args: str, env: dict[str, str] | None = None, port: int = 0,
               preexec_fn=None) -> subprocess.CompletedProcess:
    """Run ``migrate-node serve`` for a node expected to stop on its own (refuse, crash)."""
    command = [*migrate_node_command(), "serve", "--name", node.name, "--role", node.role,
               "--listen", f"127.0.0.1:{port}", "--data-dir", str(node.data_dir), "--tls-dir", str(node.tls_dir),
               *args]
    return subprocess.run(command, capture_output=True, text=True, env=clean_env(env), timeout=60,
                          stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)


def message_lines(stderr: str) -> list[str]:
    """The lines of stderr that are not JSON log records: what the operator is told."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")]


def assert_refused(done: subprocess.CompletedProcess, path: Path | str) -> str:
    assert done.returncode == 2, done.stderr
    lines = message_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("migrate-node serve: ") and str(path) in lines[0], lines[0]
    assert "Traceback" not in done.stderr
    return lines[0]


async def checkpointed_node(node_procs, cluster_tls, name: str = "edge-1") -> NodeProcess:
    """A stopped node whose checkpoint holds counters c1 (at 7) and c2 (at 100)."""
    node = node_procs.start(name, "edge")
    async with await node.client(cluster_tls.app) as client:
        await client.deploy(COUNTER, workload_id="c1")
        await client.deploy(COUNTER, workload_id="c2")
        await client.call("c1", "incr", 7)
        await client.call("c2", "incr", 100)
    assert node.terminate() == 0
    return node


async def counters(node: NodeProcess, cluster_tls) -> dict[str, int]:
    async with await node.client(cluster_tls.app) as client:
        return {w.workload_id: await client.call(w.workload_id, "get") for w in await client.workloads()}


def sha256_of(module: bytes) -> str:
    import hashlib

    return hashlib.sha256(module).hexdigest()


def drop_file_permission_overrides() -> None:
    """In the child, before exec: lose root's power to read any file (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _unreadable(data: Path) -> Path:
    data.chmod(0)
    return data


DAMAGE = {
    "manifest deleted": lambda d: _unlinked(d / "checkpoints" / "manifest.msgpack"),
    "manifest garbage": lambda d: _overwritten(d / "checkpoints" / "manifest.msgpack", b"\x93\x01"),
    "modules deleted": lambda d: (shutil.rmtree(d / "modules"), d / "modules" / f"{sha256_of(COUNTER)}.wasm")[1],
    "module deleted": lambda d: _unlinked(d / "modules" / f"{sha256_of(COUNTER)}.wasm"),
    "snapshot corrupt": lambda d: _flipped(d / "checkpoints" / "c2.1.snap"),
    "snapshot truncated": lambda d: _overwritten(d / "checkpoints" / "c2.1.snap",
                                                 (d / "checkpoints" / "c2.1.snap").read_bytes()[:100]),
    "snapshot deleted": lambda d: _unlinked(d / "checkpoints" / "c1.1.snap"),
    "data dir unreadable": _unreadable,
}


def _unlinked(path: Path) -> Path:
    path.unlink()
    return path


def _overwritten(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _flipped(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_a_damaged_data_directory_is_refused_naming_the_file_and_left_as_it_was(
        node_procs, cluster_tls, damage):
    node = await checkpointed_node(node_procs, cluster_tls)
    named = DAMAGE[damage](node.data_dir)
    preexec_fn = None
    if damage == "data dir unreadable":
        node.data_dir.chmod(0o700)
        before = tree(node.data_dir)
        node.data_dir.chmod(0)
        if os.geteuid() == 0:
            preexec_fn = drop_file_permission_overrides
            probe = subprocess.run(["ls", str(node.data_dir)], preexec_fn=preexec_fn, capture_output=True)
            if probe.returncode == 0:
                node.data_dir.chmod(0o700)
                pytest.skip("this process cannot give up root's power to read any directory")
    else:
        before = tree(node.data_dir)
    try:
        done = serve_once(node, preexec_fn=preexec_fn)
    finally:
        node.data_dir.chmod(0o700)
    assert_refused(done, named)
    assert tree(node.data_dir) == before


async def test_discard_state_sets_damage_aside_and_starts_empty(node_procs, cluster_tls):
    node = await checkpointed_node(node_procs, cluster_tls)
    (node.data_dir / "checkpoints" / "manifest.msgpack").unlink()
    kept = tree(node.data_dir / "checkpoints")
    node = node_procs.start("edge-1", "edge", args=["--discard-state"])
    assert await counters(node, cluster_tls) == {}
    (aside,) = node.data_dir.glob("checkpoints.discarded-*")
    assert tree(aside) == kept and not (node.data_dir / "checkpoints").exists()
    discarded = [line for line in node.log_lines() if line.get("msg", "").startswith("discarded saved state")]
    assert discarded and str(aside) in discarded[0]["msg"]


async def test_the_discard_setting_also_comes_from_the_environment(node_procs, cluster_tls):
    node = await checkpointed_node(node_procs, cluster_tls)
    _flipped(node.data_dir / "checkpoints" / "c2.1.snap")
    node = node_procs.start("edge-1", "edge", env={"MIGRATE_NODE_DISCARD_STATE": "true"})
    assert await counters(node, cluster_tls) == {}
    assert len(list(node.data_dir.glob("checkpoints.discarded-*"))) == 1


async def test_discard_state_restores_an_intact_checkpoint_as_usual(node_procs, cluster_tls):
    node = await checkpointed_node(node_procs, cluster_tls)
    node = node_procs.start("edge-1", "edge", args=["--discard-state"])
    assert await counters(node, cluster_tls) == {"c1": 7, "c2": 100}


async def test_a_failed_listen_keeps_the_checkpoint_for_the_next_start(node_procs, cluster_tls):
    node = await checkpointed_node(node_procs, cluster_tls)
    before = tree(node.data_dir / "checkpoints")
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the old port may be in TIME_WAIT
        taken.bind(("127.0.0.1", node.address.port))
        taken.listen()
        done = serve_once(node, port=node.address.port)
    assert done.returncode == 2 and "cannot listen" in message_lines(done.stderr)[0]
    assert tree(node.data_dir / "checkpoints") == before
    node.restart()
    assert await counters(node, cluster_tls) == {"c1": 7, "c2": 100}


async def test_a_restart_retires_the_checkpoint_it_started_from(node_procs, cluster_tls):
    node = await checkpointed_node(node_procs, cluster_tls)
    node.restart()
    assert await counters(node, cluster_tls) == {"c1": 7, "c2": 100}
    assert not (node.data_dir / "checkpoints").exists()
    assert (node.data_dir / "checkpoints.restored" / "manifest.msgpack").exists()
    node.kill()  # a crash: the restored checkpoint must not bring back older state
    node.restart()
    assert await counters(node, cluster_tls) == {}


# --- crashes during the save and the restore (MIGRATE_NODE_CRASH_AT) ---------------

async def test_a_crash_while_saving_refuses_the_next_start_until_discarded(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge", env={"MIGRATE_NODE_CRASH_AT": "checkpoint:write"})
    async with await node.client(cluster_tls.app) as client:
        await client.deploy(COUNTER, workload_id="c1")
        await client.deploy(COUNTER, workload_id="c2")
    assert node.terminate() == 137
    new = node.data_dir / "checkpoints.new"
    assert len(list(new.glob("*.snap"))) == 1 and not (new / "manifest.msgpack").exists()
    before = tree(node.data_dir)
    line = assert_refused(serve_once(node), new)
    assert "incomplete" in line
    assert tree(node.data_dir) == before
    node = node_procs.start("edge-1", "edge", args=["--discard-state"])
    assert await counters(node, cluster_tls) == {}
    assert len(list(node.data_dir.glob("checkpoints.new.discarded-*"))) == 1


async def test_a_crash_after_the_checkpoint_is_complete_loses_nothing(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge", env={"MIGRATE_NODE_CRASH_AT": "checkpoint:written"})
    async with await node.client(cluster_tls.app) as client:
        await client.deploy(COUNTER, workload_id="c1")
        await client.call("c1", "incr", 5)
    assert node.terminate() == 137
    node.env = {}
    node.restart()
    assert await counters(node, cluster_tls) == {"c1": 5}


async def test_a_crash_before_the_checkpoint_is_retired_restores_it_again(node_procs, cluster_tls):
    node = await checkpointed_node(node_procs, cluster_tls)
    done = serve_once(node, env={"MIGRATE_NODE_CRASH_AT": "restore:before-retire"})
    assert done.returncode == 137, done.stderr
    node.restart()
    assert await counters(node, cluster_tls) == {"c1": 7, "c2": 100}


# --- a full disk -----------------------------------------------------------------

@contextlib.contextmanager
def small_filesystem(path: Path, size_bytes: int):
    """Mount a tmpfs of ``size_bytes`` at ``path`` (needs root); skip the test where that is impossible."""
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(directory: Path) -> None:
    """Write into a file until the filesystem is full."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk_bytes in (MiB, 4096):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, bytes(chunk_bytes))
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", ["full filesystem", "file size limit"])
async def test_a_failed_save_keeps_the_previous_checkpoint_and_says_which_file(node_procs, cluster_tls, tmp_path,
                                                                               how):
    """ENOSPC on a full tmpfs; EFBIG past RLIMIT_FSIZE (what an unprivileged run can still do)."""
    data = tmp_path / "disk" / "data"  # the node's log is written beside it, outside the small filesystem
    with contextlib.ExitStack() as stack:
        if how == "full filesystem":
            stack.enter_context(small_filesystem(data, 32 * MiB))
        node = NodeProcess("edge-1", "edge", data_dir=data, tls_dir=cluster_tls.issue("edge-1"))
        node_procs.nodes.append(node)  # killed at teardown if the test fails
        node.start()
        async with await node.client(cluster_tls.app) as client:
            await client.deploy(DIRTIER, workload_id="big")
            await client.call("big", "dt_init", 64)  # a snapshot of about 7 MiB
            checksum = await client.call("big", "dt_checksum")
        assert node.terminate() == 0
        node.restart()
        async with await node.client(cluster_tls.app) as client:
            assert await client.call("big", "dt_checksum") == checksum
            await client.call("big", "dt_dirty", 100, 1)
        restored = tree(data / "checkpoints.restored")
        if how == "full filesystem":
            fill(data)
            errno_name, reason = "ENOSPC", "No space left on device"
        else:
            resource.prlimit(node.pid, resource.RLIMIT_FSIZE, (4 * MiB, 4 * MiB))
            errno_name, reason = "EFBIG", "File too large"
        status = node.terminate()
        stderr = node.log_text()
        assert status == 1, stderr
        lines = message_lines(stderr)
        assert len(lines) == 1, stderr
        assert reason in lines[0] and errno_name in lines[0] and "cannot listen" not in lines[0]
        assert str(data / "checkpoints.new" / "big.1.snap") in lines[0]
        assert str(data / "checkpoints.restored") in lines[0]
        assert any("shutdown checkpoint failed" in r.get("msg", "") for r in node.log_lines())
        assert not (data / "checkpoints.new").exists() and not (data / "checkpoints").exists()
        assert tree(data / "checkpoints.restored") == restored
