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
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
NETNS_DIR = Path("/var/run/netns")
NAMESPACE_PREFIX = "wmb"
START_TIMEOUT_S = 60.0
#: Bytes the proxy reads at a time, and chunks it holds per direction: 256 x
#: 64 KiB = 16 MiB, above the 1.9 MB bandwidth-delay product of 1 Gbit/s x 15 ms.
PROXY_CHUNK_BYTES = 64 * 1024
PROXY_MAX_CHUNKS = 256
_ROLES = ("client", "edge", "cloud")


class NetemError(Exception):
    """Namespaces, links or processes of the emulation could not be set up."""


@dataclass(frozen=True, kw_only=True)
class LinkProfile:
    """The links of one benchmark setting.

    ``rate_bits_per_s`` None means plain loopback: no namespaces, no caps
    and no added latency.  Round trips are the latency *added* to each
    path; the client reaches the cloud on its own link.
    """

    name: str
    rate_bits_per_s: float | None = None
    client_edge_rtt_s: float = 0.005
    edge_cloud_rtt_s: float = 0.030
    client_cloud_rtt_s: float = 0.035

    @property
    def emulated(self) -> bool:
        return self.rate_bits_per_s is not None


LOOPBACK = LinkProfile(name="loopback", client_edge_rtt_s=0.0, edge_cloud_rtt_s=0.0, client_cloud_rtt_s=0.0)
PROFILES: dict[str, LinkProfile] = {
    p.name: p for p in (
        LOOPBACK,
        LinkProfile(name="1gbit", rate_bits_per_s=1e9),
        LinkProfile(name="100mbit", rate_bits_per_s=100e6),
    )
}


# --- the address plan (198.18.0.0/15, RFC 2544) -------------------------------

#: Each node's service address, on its namespace's loopback device.
SERVICE_IP = {"edge": "198.18.0.2", "cloud": "198.18.0.3"}


@dataclass(frozen=True)
class Link:
    """One veth pair: ``a`` and ``b`` are roles, the addresses their ends."""

    name: str
    short: str  # in device names, which have at most 15 characters
    a: str
    b: str
    a_ip: str
    b_ip: str

    def rtt_s(self, profile: LinkProfile) -> float:
        return {"client-edge": profile.client_edge_rtt_s, "edge-cloud": profile.edge_cloud_rtt_s,
                "client-cloud": profile.client_cloud_rtt_s}[self.name]


LINKS = (
    Link("client-edge", "ce", "client", "edge", "198.18.1.1", "198.18.1.2"),
    Link("edge-cloud", "ec", "edge", "cloud", "198.18.2.1", "198.18.2.2"),
    Link("client-cloud", "cc", "client", "cloud", "198.18.3.1", "198.18.3.2"),
)


def proxy_delays(role: str, profile: LinkProfile) -> dict[str, float]:
    """One-way delay the proxy in front of ``role``'s node adds, by the peer's address.

    A peer's packets to ``role`` leave from its end of the link they share,
    so the source address names the link; half its round trip is added in
    each direction.
    """
    out = {}
    for link in LINKS:
        if role == link.b:
            out[link.a_ip] = link.rtt_s(profile) / 2
        elif role == link.a:
            out[link.b_ip] = link.rtt_s(profile) / 2
    return out


def tbf_burst_bytes(rate_bits_per_s: float) -> int:
    """tbf bucket size: 2 ms at the rate, at least 64 KiB.

    64 KiB fits a whole GSO segment from veth; a bucket below rate/HZ
    would cap the rate below the configured one.
    """
    return max(64 * 1024, int(rate_bits_per_s / 8 * 0.002))


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None if they probably can."""
    if sys.platform != "linux":
        return f"network namespaces need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian package iproute2)"
    return None


def _run(*cmd: str) -> str:
    """Run a command to completion; return stdout.  Raises NetemError with its stderr."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetemError(f"{' '.join(cmd)}: {exc}") from None
    if done.returncode:
        raise NetemError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    return done.stdout


# --- namespaces and links -----------------------------------------------------

@dataclass
class Topology:
    """The client, edge and cloud namespaces of one run, joined as in ``LINKS``; a context manager."""

    profile: LinkProfile
    tag: str = field(default_factory=lambda: str(os.getpid()))
    created: list[str] = field(default_factory=list)

    def namespace(self, role: str) -> str:
        return f"{NAMESPACE_PREFIX}-{self.tag}-{role}"

    def create(self) -> None:
        """Make the namespaces, veth pairs, addresses, routes and qdiscs.

        Raises NetemError; whatever was made is deleted by ``close``.
        """
        if not self.profile.emulated:
            raise NetemError(f"profile {self.profile.name} is not emulated")
        for role in _ROLES:
            ns = self.namespace(role)
            _run("ip", "netns", "add", ns)
            self.created.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            if role in SERVICE_IP:
                _run("ip", "-n", ns, "addr", "add", f"{SERVICE_IP[role]}/32", "dev", "lo")
        rate = f"{int(self.profile.rate_bits_per_s)}bit"
        burst = str(tbf_burst_bytes(self.profile.rate_bits_per_s))
        for link in LINKS:
            ends = ((link.a, link.a_ip), (link.b, link.b_ip))
            dev = {role: f"{link.short}-{role}" for role, _ in ends}
            _run("ip", "link", "add", dev[link.a], "netns", self.namespace(link.a), "type", "veth",
                 "peer", "name", dev[link.b], "netns", self.namespace(link.b))
            for role, ip in ends:
                ns = self.namespace(role)
                _run("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev[role])
                _run("ip", "-n", ns, "link", "set", dev[role], "up")
                # 50 ms of queue: enough for TCP to fill the link, short enough not to bloat it.
                _run("tc", "-n", ns, "qdisc", "add", "dev", dev[role], "root", "tbf", "rate", rate,
                     "burst", burst, "latency", "50ms")
            for role, peer_ip in ((link.a, link.b_ip), (link.b, link.a_ip)):
                peer = link.b if role == link.a else link.a
                if peer in SERVICE_IP:
                    _run("ip", "-n", self.namespace(role), "route", "add", f"{SERVICE_IP[peer]}/32", "via", peer_ip)
        logger.info("namespaces ready", extra={"namespaces": list(self.created), "rate": rate})

    def close(self) -> None:
        """Delete the namespaces (their veth ends go with them).  Never raises."""
        while self.created:
            ns = self.created.pop()
            try:
                _run("ip", "netns", "del", ns)
            except NetemError as exc:
                logger.warning("could not delete namespace %s: %s", ns, exc)

    def __enter__(self) -> Topology:
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def stale_namespaces(names: Sequence[str], alive: Callable[[int], bool] = _alive) -> list[str]:
    """The names among ``names`` that runs now dead made (``wmb-PID-ROLE``)."""
    out = []
    for name in names:
        m = re.fullmatch(rf"{NAMESPACE_PREFIX}-(\d+)-(?:{'|'.join(_ROLES)})", name)
        if m and not alive(int(m.group(1))):
            out.append(name)
    return out


def remove_stale_namespaces() -> list[str]:
    """Delete namespaces left by runs that died without cleaning up; return their names."""
    if not NETNS_DIR.is_dir() or unavailable_reason():
        return []
    removed = []
    for ns in stale_namespaces(sorted(p.name for p in NETNS_DIR.iterdir())):
        with contextlib.suppress(NetemError):
            # A process inside keeps the namespace alive after `ip netns del`:
            # the dead run's nodes and proxies go first.
            for pid in _run("ip", "netns", "pids", ns).split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _run("ip", "netns", "del", ns)
            removed.append(ns)
    return removed


_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(namespace: str) -> Iterator[None]:
    """Move the calling thread into network namespace ``namespace`` for the block.

    Sockets made in the block belong to that namespace, and keep working
    there after it.  Only this thread moves: make sockets from it.  Raises
    OSError.
    """
    with open("/proc/thread-self/ns/net", "rb") as here, open(NETNS_DIR / namespace, "rb") as there:
        _setns(there.fileno())
        try:
            yield
        finally:
            _setns(here.fileno())


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


# --- the delaying proxy ---------------------------------------------------------

async def relay(source: trio.abc.ReceiveStream, sink: trio.abc.HalfCloseableStream, delay_s: float) -> None:
    """Copy ``source`` to ``sink``, each chunk held until ``delay_s`` after it arrived; then half-close.

    Reading goes on while earlier chunks wait, so the delay adds latency
    without limiting throughput (up to ``PROXY_MAX_CHUNKS`` in flight).
    Raises an ExceptionGroup of trio.BrokenResourceError, ClosedResourceError
    or OSError if a side breaks: reading and sending may both break at once.
    """
    send, receive = trio.open_memory_channel(PROXY_MAX_CHUNKS)

    async def read() -> None:
        async with send:
            while data := await source.receive_some(PROXY_CHUNK_BYTES):
                await send.send((trio.current_time() + delay_s, data))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        async with receive:
            async for due, data in receive:
                await trio.sleep_until(due)
                await sink.send_all(data)
        await sink.send_eof()


_BROKEN = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


async def _proxy_connection(client: trio.SocketStream, upstream: tuple[str, int], delays: Mapping[str, float]) -> None:
    """Relay one accepted connection; a side that breaks ends both directions, never the proxy."""
    peer = client.socket.getpeername()[0]
    delay_s = delays.get(peer, 0.0)
    async with client:
        try:
            server = await trio.open_tcp_stream(*upstream)
        except OSError as exc:
            logger.warning("cannot reach %s:%d: %s", *upstream, exc)
            return
        async with server, trio.open_nursery() as nursery:

            async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                # Both directions may break at once: except* takes the group apart.
                try:
                    await relay(source, sink, delay_s)
                except* _BROKEN:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(pump, client, server)
            nursery.start_soon(pump, server, client)


async def serve_delay_proxy(listen: tuple[str, int], upstream: tuple[str, int], delays: Mapping[str, float], *,
                            task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Accept on ``listen`` and relay each connection to ``upstream``, delayed by the peer's entry in ``delays``.

    ``task_status.started`` gets the (host, port) bound.  Runs until cancelled.
    """
    listeners = await trio.open_tcp_listeners(listen[1], host=listen[0])
    bound = listeners[0].socket.getsockname()[:2]
    task_status.started(bound)

    async def handle(stream: trio.SocketStream) -> None:
        await _proxy_connection(stream, upstream, delays)

    await trio.serve_listeners(handle, listeners)


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
