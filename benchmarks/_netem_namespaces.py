"""The client, edge and cloud network namespaces of a run: making, linking, entering and removing them.

Raises ``NetemError`` when they cannot be made; ``unavailable_reason()``
says beforehand why they could not be.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._netem_plan import LINKS, SERVICE_IP, LinkProfile, tbf_burst_bytes

logger = logging.getLogger("benchmarks.netem")

NETNS_DIR = Path("/var/run/netns")
NAMESPACE_PREFIX = "wmb"
_ROLES = ("client", "edge", "cloud")


class NetemError(Exception):
    """Namespaces, links or processes of the emulation could not be set up."""


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
