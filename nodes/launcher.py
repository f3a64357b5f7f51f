"""Start real ``migrate-node`` processes on this machine: for demos and benchmarks.

    with LocalCluster(Path("/tmp/wm")) as lc:
        edge = lc.start("edge-1", "edge")
        cloud = lc.start("cloud-1", "cloud", join=[edge])
        app_tls = lc.tls_for("app", "node")

``LocalCluster`` makes a cluster CA with ``migrate-node ca init``, issues
each node a certificate with ``migrate-node cert issue``, starts every node
on 127.0.0.1 with an ephemeral port (read back from its JSON "listening"
log line), and stops them all (SIGTERM, then SIGKILL) on exit.  ``restart``
starts a node that exited again on the same address and data dir.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._errors import NodeError

START_TIMEOUT_S = 60.0


def migrate_node_command() -> list[str]:
    """The installed console script, or the module when it is not on PATH."""
    script = shutil.which("migrate-node")
    return [script] if script else [sys.executable, "-m", "nodes.cli"]


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATE_NODE_")}
    env.update(extra or {})
    return env


def run_cli(*args: str) -> str:
    """Run ``migrate-node ARGS`` to completion; return stdout.  Raises NodeError on failure."""
    done = subprocess.run([*migrate_node_command(), *args], capture_output=True, text=True, env=_env(None),
                          timeout=120)
    if done.returncode:
        raise NodeError(f"migrate-node {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass
class NodeProcess:
    """One running ``migrate-node serve``."""

    name: str
    role: str
    proc: subprocess.Popen
    address: str
    log_path: Path
    args: tuple[str, ...] = ()          # as given to LocalCluster.start, for a restart
    join: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


@dataclass
class LocalCluster:
    """A CA plus node processes under ``root``; a context manager."""

    root: Path
    tls: bool = True
    nodes: list[NodeProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        if self.tls and not (self.root / "ca" / "ca.pem").exists():
            run_cli("ca", "init", "--dir", str(self.root / "ca"))

    def tls_for(self, name: str, role: str = "node") -> Path | None:
        """The TLS dir of ``name`` (issued on first use); None without TLS."""
        if not self.tls:
            return None
        out = self.root / "tls" / name
        if not (out / "cert.pem").exists():
            run_cli("cert", "issue", "--ca", str(self.root / "ca"), "--name", name, "--role", role,
                    "--out", str(out))
        return out

    def start(self, name: str, role: str, *, join: Sequence[NodeProcess] = (), args: Sequence[str] = (),
              env: dict[str, str] | None = None) -> NodeProcess:
        """Start a node and wait until it listens.  Raises NodeError if it does not."""
        node = self._launch(name, role, "127.0.0.1:0", tuple(args), tuple(peer.address for peer in join),
                            dict(env or {}))
        self.nodes.append(node)
        return node

    def restart(self, node: NodeProcess, *, env: dict[str, str] | None = None) -> NodeProcess:
        """Start a node that exited again, on its address and data dir; ``env`` replaces its environment.

        Raises NodeError if it is still running or does not listen again.
        """
        if node.proc.poll() is None:
            raise NodeError(f"node {node.name} is still running")
        fresh = self._launch(node.name, node.role, node.address, node.args, node.join,
                             node.env if env is None else dict(env))
        self.nodes[self.nodes.index(node)] = fresh
        return fresh

    def _launch(self, name: str, role: str, listen: str, args: tuple[str, ...], join: tuple[str, ...],
                env: dict[str, str]) -> NodeProcess:
        cmd = [*migrate_node_command(), "serve", "--name", name, "--role", role, "--listen", listen,
               "--data-dir", str(self.root / name), *args]
        for address in join:
            cmd += ["--join", address]
        tls = self.tls_for(name)
        cmd += ["--tls-dir", str(tls)] if tls else ["--insecure"]
        log_path = self.root / f"{name}.log"
        offset = log_path.stat().st_size if log_path.exists() else 0  # a restart appends
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=_env(env))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with open(log_path, "rb") as log:
                log.seek(offset)
                lines = log.read().decode(errors="replace").splitlines()
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("msg") == "listening":
                    return NodeProcess(name, role, proc, record["address"], log_path, args, join, env)
            if proc.poll() is not None:
                raise NodeError(f"node {name} exited with {proc.returncode}:\n" + "\n".join(lines))
            time.sleep(0.02)
        proc.kill()
        raise NodeError(f"node {name} did not start listening within {START_TIMEOUT_S} s")

    def close(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
