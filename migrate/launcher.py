"""Start real ``migrate-node`` processes on this machine: for tests, benchmarks and the demo.

    with LocalCluster(Path("/tmp/wm")) as lc:
        edge = lc.start("edge-1", "edge")
        cloud = lc.start("cloud-1", "cloud", join=[edge])
        app_tls = lc.tls_for("app", "client")

``ClusterTLS`` makes a cluster CA with ``migrate-node ca init`` and issues
certificates with ``migrate-node cert issue``.  ``LocalCluster`` starts each
node on 127.0.0.1 with an ephemeral port, read back from its JSON
"listening" log line, with its data dir at ``ROOT/NAME`` and its log at
``ROOT/NAME.log``; on exit it stops them all (SIGTERM, then SIGKILL after
30 s).  ``NodeProcess.restart`` starts a node that exited again on the same
address and data dir.  The command is the installed ``migrate-node``
script, or ``python -m migrate.cli`` when it is not on PATH: the node with
the migration plugin, which is why this module is in the migrate package.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from nodes import Address, NodeClient, NodeError, parse_address

#: Generous: a node starts in well under a second, but CI machines stall.
START_TIMEOUT_S = 60.0
#: What ``stop`` waits after SIGTERM before it sends SIGKILL.
STOP_TIMEOUT_S = 30.0


def migrate_node_command() -> list[str]:
    """The installed console script, or the module when it is not on PATH."""
    script = shutil.which("migrate-node")
    return [script] if script else [sys.executable, "-m", "migrate.cli"]


def node_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without MIGRATE_NODE_* (server) and MIGRATE_CLI_* (client) settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIGRATE_NODE_", "MIGRATE_CLI_"))}
    env.update(extra or {})
    return env


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``migrate-node ARGS`` to completion and return it.  Raises NodeError if ``check`` and it failed."""
    done = subprocess.run([*migrate_node_command(), *args], capture_output=True, text=True, env=node_env(),
                          stdin=subprocess.DEVNULL, timeout=120)
    if check and done.returncode:
        raise NodeError(f"migrate-node {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def serve_command(name: str, role: str, *, listen: str, data_dir: Path, tls_dir: Path | None,
                  join: Sequence[str] = (), args: Sequence[str] = ()) -> list[str]:
    """The ``migrate-node serve`` command line of a node (plain TCP when ``tls_dir`` is None)."""
    cmd = [*migrate_node_command(), "serve", "--name", name, "--role", role, "--listen", listen,
           "--data-dir", str(data_dir), *args]
    for address in join:
        cmd += ["--join", address]
    cmd += ["--tls-dir", str(tls_dir)] if tls_dir else ["--insecure"]
    return cmd


def listening_address(log_text: str) -> str | None:
    """The address of the first JSON log line ``{"msg": "listening", "address": ...}``, if any."""
    for record in log_records(log_text):
        if record.get("msg") == "listening":
            return record.get("address")
    return None


def log_records(log_text: str) -> list[dict[str, Any]]:
    """The JSON log records in ``log_text``; other lines are kept as ``{"raw": line}``."""
    out: list[dict[str, Any]] = []
    for line in log_text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        out.append(record if isinstance(record, dict) else {"raw": line})
    return out


@dataclass
class ClusterTLS:
    """A cluster CA under ``root/ca`` (made on first use) and the TLS dirs issued from it, under ``root/tls``."""

    root: Path
    _issued: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not (self.ca_dir / "ca.pem").exists():
            run_cli("ca", "init", "--dir", str(self.ca_dir))

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    def issue(self, name: str, role: str = "node", *, san: Sequence[str] = ()) -> Path:
        """The TLS dir of ``name``, issued with ``migrate-node cert issue`` the first time.

        ``san`` names other addresses a node is reached by.
        """
        if name not in self._issued:
            out = self.root / "tls" / name
            if not (out / "cert.pem").exists():
                run_cli("cert", "issue", "--ca", str(self.ca_dir), "--name", name, "--role", role,
                        "--out", str(out), *(a for s in san for a in ("--san", s)))
            self._issued[name] = out
        return self._issued[name]

    @property
    def app(self) -> Path:
        """A client (application) certificate's TLS dir."""
        return self.issue("app", "client")


@dataclass
class NodeProcess:
    """One ``migrate-node serve`` process; its log is ``NAME.log`` beside its data dir."""

    name: str
    role: str
    data_dir: Path
    tls_dir: Path | None
    args: Sequence[str] = ()
    join: Sequence[str] = ()       # addresses of peers to join
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    address: Address | None = None
    _log_offset: int = 0

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def start(self, *, port: int = 0) -> NodeProcess:
        """Start the node on 127.0.0.1:``port`` and wait until it listens.  Raises NodeError if it does not."""
        if self.proc is not None and self.proc.poll() is None:
            raise NodeError(f"node {self.name} is still running")
        cmd = serve_command(self.name, self.role, listen=f"127.0.0.1:{port}", data_dir=self.data_dir,
                            tls_dir=self.tls_dir, join=self.join, args=self.args)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0  # a restart appends
        with open(self.log_path, "ab") as log:
            self.proc = proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                env=node_env(self.env))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            address = listening_address(self.log_text())
            if address is not None:
                self.address = parse_address(address)
                return self
            if proc.poll() is not None:
                raise NodeError(f"node {self.name} exited with {proc.returncode}:\n{self.log_text()}")
            time.sleep(0.02)
        self.kill()
        raise NodeError(f"node {self.name} did not start listening within {START_TIMEOUT_S} s:\n{self.log_text()}")

    def restart(self) -> NodeProcess:
        """Start the node again on its port and data dir (after it exited).  Raises NodeError."""
        return self.start(port=self.listening.port)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The process of the current (or last) run; raises NodeError if the node was never started."""
        if self.proc is None:
            raise NodeError(f"node {self.name} was never started")
        return self.proc

    @property
    def listening(self) -> Address:
        """The address the node listens on; raises NodeError if it never did."""
        if self.address is None:
            raise NodeError(f"node {self.name} never listened")
        return self.address

    def log_text(self) -> str:
        """The log of the current run."""
        return self.log_path.read_text(errors="replace")[self._log_offset:] if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log records of the current run (non-JSON lines are kept under "raw")."""
        return log_records(self.log_text())

    async def wait_for_log(self, msg: str, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
        """Wait, without blocking the event loop, for a log record of the current run saying ``msg``.

        Raises NodeError if the node exits first or the time runs out.
        """
        with trio.move_on_after(timeout_s):
            while True:
                for line in self.log_lines():
                    if line.get("msg") == msg:
                        return line
                if self.process.poll() is not None:
                    raise NodeError(f"node {self.name} exited with {self.process.returncode} before logging "
                                    f"{msg!r}:\n{self.log_text()}")
                await trio.sleep(0.01)
        raise NodeError(f"node {self.name} did not log {msg!r} within {timeout_s} s:\n{self.log_text()}")

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM the node, wait for it to exit, and return its exit status.  Raises TimeoutExpired."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM the node if it runs, SIGKILL it after ``timeout_s``; return its exit status."""
        proc = self.process
        if proc.poll() is None:
            try:
                return self.terminate(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def pid(self) -> int:
        return self.process.pid

    async def client(self, tls: Path | None, **kwargs: Any) -> NodeClient:
        """Connect a NodeClient to this node (plain TCP when ``tls`` is None); ``kwargs`` go to ``NodeClient.connect``."""
        return await NodeClient.connect(self.listening, tls=tls, **kwargs)


@dataclass
class LocalCluster:
    """Node processes under ``root``; a context manager.

    With ``tls`` (the default) certificates come from ``ca``: a CA the
    cluster makes under ``root`` unless one is given (to share it between
    clusters).  Without, nodes listen on plain TCP.
    """

    root: Path
    tls: bool = True
    ca: ClusterTLS | None = None
    nodes: list[NodeProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        if self.tls and self.ca is None:
            self.ca = ClusterTLS(self.root)

    def tls_for(self, name: str, role: str = "node") -> Path | None:
        """The TLS dir of ``name`` (issued on first use); None without TLS."""
        if not self.tls:
            return None
        if self.ca is None:  # made by __post_init__; made again here if set to None since
            self.ca = ClusterTLS(self.root)
        return self.ca.issue(name, role)

    def start(self, name: str, role: str = "edge", *, join: Sequence[NodeProcess] = (), args: Sequence[str] = (),
              env: Mapping[str, str] | None = None, insecure: bool = False) -> NodeProcess:
        """Start a node and wait until it listens (plain TCP if ``insecure``).  Raises NodeError if it does not."""
        node = NodeProcess(name, role, data_dir=self.root / name,
                           tls_dir=None if insecure else self.tls_for(name, "node"), args=tuple(args),
                           join=tuple(str(peer.address) for peer in join), env=dict(env or {}))
        self.nodes.append(node)  # stopped on exit even if it fails to start
        return node.start()

    def restart(self, node: NodeProcess, *, env: Mapping[str, str] | None = None) -> NodeProcess:
        """Start a node that exited again, on its address and data dir; ``env`` replaces its environment.

        Raises NodeError if it is still running or does not listen again.
        """
        if env is not None:
            node.env = dict(env)
        return node.restart()

    def close(self) -> None:
        """Stop every node: SIGTERM, then SIGKILL after 30 s."""
        for node in self.nodes:
            if node.proc is not None:
                node.stop()

    def kill(self) -> None:
        """SIGKILL every node still running."""
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
