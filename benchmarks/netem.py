"""Emulated client, edge and cloud links: network namespaces, veth pairs, tbf and a delaying proxy.

    with EmulatedSites(profile, Path("/tmp/wm")) as sites:
        edge = sites.start_node("edge-1", "edge")
        cloud = sites.start_node("cloud-1", "cloud")
        with entered(sites.namespace("client")):
            ...  # sockets made here live in the client namespace

Three namespaces (``wmb-PID-client``, ``-edge``, ``-cloud``) are joined by
three veth pairs: client-edge, edge-cloud and client-cloud.  Every veth end
has a ``tbf`` qdisc at the profile's rate, so each direction of each link
is capped.  The kernel here has neither ``netem`` nor ``fq``, so latency is
added in user space: each node namespace runs a delaying TCP proxy in
front of its node, and the proxy holds every chunk for half the round trip
of the link it arrived on (told apart by the peer's address).  Nodes run
inside their namespaces (``ip netns exec``) with certificates naming their
namespace address.  The application side joins the client namespace with
``entered``; nothing is added to the root namespace.

Addresses come from 198.18.0.0/15, the range RFC 2544 reserves for
benchmarking, and exist only inside this run's namespaces, so runs never
collide and test traffic never reaches another address.

Leaving the context kills every process started here and deletes the
namespaces, also on errors and Ctrl-C.  ``python -m benchmarks.netem
cleanup`` removes namespaces left by runs that were SIGKILLed.  The proxy
runs as ``python -m benchmarks.netem proxy``.

Raises ``NetemError`` when the namespaces cannot be made;
``unavailable_reason()`` says beforehand why they could not be.

This module owns the processes in the namespaces (``EmulatedSites``,
``spawn_listening``) and the command line; it re-exports the rest from
``benchmarks._netem_plan`` (profiles and addresses),
``benchmarks._netem_namespaces`` (the namespaces) and
``benchmarks._netem_proxy`` (the delaying proxy).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from benchmarks._netem_namespaces import (NAMESPACE_PREFIX, NETNS_DIR, NetemError, Topology, entered,
                                         remove_stale_namespaces, stale_namespaces, unavailable_reason)
from benchmarks._netem_plan import (LINKS, LOOPBACK, PROFILES, SERVICE_IP, Link, LinkProfile, proxy_delays,
                                    tbf_burst_bytes)
from benchmarks._netem_proxy import PROXY_CHUNK_BYTES, PROXY_MAX_CHUNKS, relay, serve_delay_proxy

__all__ = [
    "LINKS", "LOOPBACK", "NAMESPACE_PREFIX", "NETNS_DIR", "PROFILES", "PROXY_CHUNK_BYTES", "PROXY_MAX_CHUNKS",
    "SERVICE_IP", "EmulatedSites", "Link", "LinkProfile", "NetemError", "Process", "Topology", "entered", "main",
    "proxy_delays", "relay", "remove_stale_namespaces", "serve_delay_proxy", "spawn_listening", "stale_namespaces",
    "tbf_burst_bytes", "unavailable_reason",
]

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0


# --- processes inside the namespaces ------------------------------------------

@dataclass
class Process:
    """A process started inside a namespace, and the address it listens on."""

    name: str
    proc: subprocess.Popen
    address: str
    log_path: Path

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``.  Never raises."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child before exec: if the suite is SIGKILLed, its nodes and
    # proxies get SIGKILL too instead of keeping the namespaces alive.
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn_listening(name: str, cmd: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> Process:
    """Start ``cmd`` and wait for its "listening" log line.  Raises NetemError if it never comes.

    The process is killed if this process dies.
    """
    from migrate.launcher import listening_address  # not at import: the proxy process needs none of it

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env) if env is not None else None, cwd=REPO,
                                preexec_fn=_die_with_parent)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        address = listening_address(log_path.read_text(errors="replace"))
        if address:
            return Process(name, proc, address, log_path)
        if proc.poll() is not None:
            raise NetemError(f"{name} exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise NetemError(f"{name} did not start listening within {START_TIMEOUT_S} s")


@dataclass
class EmulatedSites:
    """A ``Topology`` plus a CA, node processes and their delaying proxies; a context manager.

    ``start_node`` returns the node's *proxied* address: the one clients
    and peers dial, so that every connection pays its link's latency.
    """

    profile: LinkProfile
    root: Path
    topology: Topology = field(init=False)
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.topology = Topology(self.profile)

    def namespace(self, role: str) -> str:
        return self.topology.namespace(role)

    def tls_for(self, name: str, san: str | None = None) -> Path:
        """The TLS dir of ``name`` (a node certificate, naming ``san`` too), issued on first use."""
        from migrate.launcher import ClusterTLS

        return ClusterTLS(self.root).issue(name, "node", san=[san] if san else [])

    def pid_of(self, name: str) -> int:
        """The process id of node ``name`` (``ip netns exec`` runs the node in its own process)."""
        return next(p.proc.pid for p in self.processes if p.name == name)

    def start_node(self, name: str, role: str, *, args: Sequence[str] = ()) -> str:
        """Start ``migrate-node serve`` in ``role``'s namespace behind its proxy; return the proxied address.

        Raises NetemError.
        """
        from migrate.launcher import node_env, serve_command

        ip, ns = SERVICE_IP[role], self.namespace(role)
        env = node_env()
        node = spawn_listening(name, [
            "ip", "netns", "exec", ns, *serve_command(name, role, listen=f"{ip}:0", data_dir=self.root / name,
                                                      tls_dir=self.tls_for(name, ip), args=args)],
            self.root / f"{name}.log", env)
        self.processes.append(node)
        delays = [f"{peer}={delay}" for peer, delay in proxy_delays(role, self.profile).items()]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH"))))
        proxy = spawn_listening(f"{name}-proxy", [
            "ip", "netns", "exec", ns, sys.executable, "-m", "benchmarks.netem", "proxy",
            "--listen", f"{ip}:0", "--upstream", node.address, *(a for d in delays for a in ("--delay", d))],
            self.root / f"{name}-proxy.log", env)
        self.processes.append(proxy)
        return proxy.address

    def close(self) -> None:
        """Stop every process, then delete the namespaces.  Never raises."""
        while self.processes:
            self.processes.pop().stop()
        self.topology.close()

    def __enter__(self) -> EmulatedSites:
        self.topology.__enter__()  # deletes what it made if it fails
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    """``proxy``: run a delaying proxy; ``cleanup``: delete namespaces of dead runs."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.netem", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("proxy", help="relay TCP with added latency")
    p.add_argument("--listen", type=_host_port, required=True, metavar="HOST:PORT")
    p.add_argument("--upstream", type=_host_port, required=True, metavar="HOST:PORT")
    p.add_argument("--delay", action="append", default=[], metavar="PEER_IP=SECONDS",
                   help="one-way delay for connections from PEER_IP (repeatable)")
    sub.add_parser("cleanup", help="delete namespaces left by runs that died")
    args = parser.parse_args(argv)
    if args.command == "cleanup":
        for ns in remove_stale_namespaces():
            print(f"deleted {ns}")
        return 0
    delays = {peer: float(s) for peer, _, s in (d.partition("=") for d in args.delay)}

    async def run() -> None:
        # Ctrl-C arrives as a signal too: a KeyboardInterrupt raised inside
        # the nursery would leave it in an exception group.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                host, port = await nursery.start(serve_delay_proxy, args.listen, args.upstream, delays)
                print(json.dumps({"msg": "listening", "address": f"{host}:{port}", "delays": delays}), flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()

    with contextlib.suppress(KeyboardInterrupt):  # one before the receiver is in place
        trio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
