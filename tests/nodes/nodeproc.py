"""Real ``migrate-node`` processes for tests: a cluster CA, certificates, and nodes on loopback.

The fixtures here are imported by ``tests/nodes/conftest.py``.  Other test
folders (the migration tests start several nodes) reuse them the same way:

    sys.path.insert(0, str(Path(__file__).parents[1] / "nodes"))
    from nodeproc import cluster_tls, node_procs  # noqa: F401  (pytest fixtures)

Every node listens on 127.0.0.1 port 0 and the fixture reads the port from
its JSON "listening" log line; logs go to a file in the node's directory,
shown when a test fails to start a node.  Nodes are SIGKILLed at teardown if
a test left them running.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from nodes import NodeClient
from nodes._config import Address, parse_address

#: Generous: a node starts in well under a second, but CI machines stall.
START_TIMEOUT_S = 60.0


def migrate_node_command() -> list[str]:
    """The installed console script, or the module when it is not on PATH."""
    script = shutil.which("migrate-node")
    return [script] if script else [sys.executable, "-m", "nodes.cli"]


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``migrate-node ARGS...`` and return the finished process."""
    return subprocess.run([*migrate_node_command(), *args], capture_output=True, text=True,
                          check=check, env=clean_env(), timeout=120)


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without MIGRATE_NODE_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATE_NODE_")}
    env.update(extra or {})
    return env


@dataclass
class ClusterTLS:
    """A cluster CA made with ``migrate-node ca init`` and the TLS dirs issued from it."""

    root: Path
    _issued: dict[str, Path] = field(default_factory=dict)

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @classmethod
    def create(cls, root: Path) -> ClusterTLS:
        run_cli("ca", "init", "--dir", str(root / "ca"))
        return cls(root)

    def issue(self, name: str, role: str = "node") -> Path:
        """Return the TLS dir for ``name``, issuing it with ``migrate-node cert issue`` the first time."""
        if name not in self._issued:
            out = self.root / "tls" / name
            run_cli("cert", "issue", "--ca", str(self.ca_dir), "--name", name, "--role", role,
                    "--out", str(out))
            self._issued[name] = out
        return self._issued[name]

    @property
    def app(self) -> Path:
        """A client (application) certificate's TLS dir."""
        return self.issue("app", "client")


@dataclass
class NodeProcess:
    """One ``migrate-node serve`` subprocess."""

    name: str
    role: str
    data_dir: Path
    tls_dir: Path | None
    extra_args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    address: Address | None = None
    _log_offset: int = 0

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def start(self, *, port: int = 0) -> NodeProcess:
        """Start the node and wait until it listens.  Fails the test if it does not."""
        args = [*migrate_node_command(), "serve", "--name", self.name, "--role", self.role,
                "--listen", f"127.0.0.1:{port}", "--data-dir", str(self.data_dir), *self.extra_args]
        args += ["--tls-dir", str(self.tls_dir)] if self.tls_dir else ["--insecure"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         env=clean_env(self.env), stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if line.get("msg") == "listening":
                    self.address = parse_address(line["address"])
                    return self
            if self.proc.poll() is not None:
                pytest.fail(f"node {self.name} exited with {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.02)
        self.kill()
        pytest.fail(f"node {self.name} did not start listening:\n{self.log_text()}")

    def restart(self) -> NodeProcess:
        """Start again on the same port and data dir (after ``terminate`` or ``kill``)."""
        return self.start(port=self.address.port)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[self._log_offset:] if self.log_path.exists() else ""

    def log_lines(self) -> list[dict]:
        """The JSON log records of the current run (non-JSON lines are kept under "raw")."""
        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"raw": line})
        return out

    async def wait_for_log(self, msg: str, timeout_s: float = START_TIMEOUT_S) -> dict:
        """Wait, without blocking the event loop, for a log record of the current run saying ``msg``.

        Fails the test if the node exits first or the time runs out.
        """
        with trio.move_on_after(timeout_s):
            while True:
                for line in self.log_lines():
                    if line.get("msg") == msg:
                        return line
                if self.proc.poll() is not None:
                    pytest.fail(f"node {self.name} exited with {self.proc.returncode} before logging "
                                f"{msg!r}:\n{self.log_text()}")
                await trio.sleep(0.01)
        pytest.fail(f"node {self.name} did not log {msg!r} within {timeout_s} s:\n{self.log_text()}")

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM the node, wait for it to exit, and return its exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def client(self, tls: Path | None, **kwargs) -> NodeClient:
        """Connect a NodeClient to this node (plain TCP when ``tls`` is None)."""
        return await NodeClient.connect(self.address, tls=tls, **kwargs)


class NodeLauncher:
    """Starts nodes for one test and kills any still running at teardown."""

    def __init__(self, root: Path, tls: ClusterTLS) -> None:
        self.root = root
        self.tls = tls
        self.nodes: list[NodeProcess] = []

    def start(self, name: str, role: str = "edge", *, join: Sequence[NodeProcess] = (),
              args: Sequence[str] = (), env: dict[str, str] | None = None,
              insecure: bool = False) -> NodeProcess:
        """Start a node named ``name`` with a certificate from the cluster CA."""
        extra = [*args]
        for peer in join:
            extra += ["--join", str(peer.address)]
        node = NodeProcess(name=name, role=role, data_dir=self.root / name / "data",
                           tls_dir=None if insecure else self.tls.issue(name, "node"),
                           extra_args=extra, env=env or {})
        self.nodes.append(node)
        return node.start()

    def close(self) -> None:
        for node in self.nodes:
            node.kill()


@pytest.fixture(scope="session")
def cluster_tls(tmp_path_factory: pytest.TempPathFactory) -> ClusterTLS:
    """One cluster CA for the whole test session, made by the CLI."""
    return ClusterTLS.create(tmp_path_factory.mktemp("cluster"))


@pytest.fixture
def node_procs(tmp_path: Path, cluster_tls: ClusterTLS) -> Iterator[NodeLauncher]:
    """Start real ``migrate-node serve`` processes: ``node_procs.start("edge-1", "edge")``."""
    launcher = NodeLauncher(tmp_path, cluster_tls)
    try:
        yield launcher
    finally:
        launcher.close()
