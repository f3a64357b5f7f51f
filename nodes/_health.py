"""What a running node tells its supervisors: /metrics, /healthz and /readyz over HTTP, and systemd.

``lifecycle(config, notifier)`` runs, for the whole of ``serve``:

* with ``--metrics-listen HOST:PORT``, a small HTTP/1.0 server on the
  node's own trio loop: ``GET /metrics`` (Prometheus text, from the node's
  registry, ``nodes._metrics``), ``/healthz`` (200 while the process's
  loop answers), ``/readyz`` (200 once the checkpoint is restored and the
  node accepts connections; 503 before, and from the moment it starts to
  stop).  It runs on the loop, not in prometheus-client's server thread,
  because the collector reads the node's dicts (workloads, peers,
  counters, moves) that the loop changes: read from another thread they
  could change size mid-iteration, and guarding them would put locks on
  the call path.  A scrape holds the loop while it formats (``generate_latest``).
* with ``NOTIFY_SOCKET`` set (systemd ``Type=notify``; only ``migrate-node
  serve`` passes a ``Notifier``), ``READY=1`` once the node is ready,
  ``STOPPING=1`` when it starts to stop, and ``WATCHDOG=1`` every half
  ``WATCHDOG_USEC`` from the loop, so a stuck loop misses them.  The
  protocol is one datagram on an AF_UNIX socket (``sd_notify(3)``; a path
  starting with '@' is in the abstract namespace): the few lines here
  instead of a dependency.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ._config import NodeConfig
from ._errors import ConfigError
from ._groups import unwrap_group
from ._metrics import node_registry

if TYPE_CHECKING:
    from ._node import Node

logger = logging.getLogger(__name__)

#: What a request may take to arrive, and its head's size at most.
REQUEST_TIMEOUT_S = 5.0
MAX_HEAD_BYTES = 8192
PATHS = ("/metrics", "/healthz", "/readyz")


class Notifier:
    """Sends sd_notify(3) states to the socket systemd named in NOTIFY_SOCKET."""

    def __init__(self, address: str, watchdog_s: float | None = None) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_s = watchdog_s  # seconds between WATCHDOG=1 pings; None: no watchdog

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Notifier | None:
        """The notifier ``env`` asks for, or None outside systemd (or under a watchdog for another process)."""
        address = env.get("NOTIFY_SOCKET")
        if not address:
            return None
        watchdog_s = None
        usec = env.get("WATCHDOG_USEC", "")
        if usec.isdigit() and int(usec) > 0 and env.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid()):
            watchdog_s = int(usec) / 2e6
        return cls(address, watchdog_s)

    def notify(self, state: str) -> None:
        """Send ``state`` ("READY=1"...); a failure is logged, never raised (the node runs on)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(state.encode(), self.address)
        except OSError as exc:
            logger.warning("cannot notify systemd: %s", exc, extra={"state": state})


class Health:
    """Whether the node is ready, and its metrics once it is; the HTTP answers and systemd states follow."""

    def __init__(self, notifier: Notifier | None) -> None:
        self.notifier = notifier
        self.is_ready = False
        self.stopping = False
        self.registry: CollectorRegistry | None = None

    def ready(self, node: Node) -> None:
        """The node restored its workloads and accepts connections."""
        self.registry = node_registry(node)
        self.is_ready = True
        if self.notifier is not None:
            self.notifier.notify("READY=1")

    def stop(self) -> None:
        """The node starts to stop: not ready from now on."""
        self.is_ready, self.stopping = False, True
        if self.notifier is not None:
            self.notifier.notify("STOPPING=1")

    def answer(self, method: str, target: str) -> tuple[int, str, bytes]:
        """Status, content type and body for one request."""
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET and HEAD\n"
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            if self.is_ready:
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", b"stopping\n" if self.stopping else b"starting\n"
        if path == "/metrics":
            if self.registry is None:
                return 503, "text/plain", b"starting\n"
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        return 404, "text/plain", f"not found; try {', '.join(PATHS)}\n".encode()


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


async def _read_head(stream: trio.abc.Stream) -> bytes | None:
    """The request's head (through the blank line), or None if it is too long or the peer left."""
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        if len(data) > MAX_HEAD_BYTES:
            return None
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        data += chunk
    return data


async def _serve_http(health: Health, stream: trio.SocketStream) -> None:
    try:
        with trio.move_on_after(REQUEST_TIMEOUT_S):
            head = await _read_head(stream)
            if head is None:
                return
            parts = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                status, kind, body, method = 400, "text/plain", b"bad request\n", "GET"
            else:
                method = parts[0]
                status, kind, body = health.answer(method, parts[1])
            head_out = (f"HTTP/1.0 {status} {_REASONS[status]}\r\nContent-Type: {kind}\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            await stream.send_all(head_out + (b"" if method == "HEAD" else body))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _watchdog(notifier: Notifier, interval_s: float) -> None:
    while True:
        notifier.notify("WATCHDOG=1")
        await trio.sleep(interval_s)


@contextlib.asynccontextmanager
async def lifecycle(config: NodeConfig, notifier: Notifier | None = None) -> AsyncIterator[Health]:
    """Serve the metrics endpoint and the systemd watchdog for as long as the node runs.

    What the body raises leaves as itself, not in an exception group.
    Raises ConfigError if the metrics address cannot be listened on.
    """
    health = Health(notifier)
    watchdog_s = notifier.watchdog_s if notifier is not None else None
    if config.metrics_listen is None and not watchdog_s:
        yield health
        return
    listeners = []
    if config.metrics_listen is not None:
        address = config.metrics_listen
        try:
            listeners = await trio.open_tcp_listeners(address.port, host=address.host)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {address} for metrics: {exc.strerror or exc}") from None
        host, port = listeners[0].socket.getsockname()[:2]
        logger.info("serving metrics", extra={"address": f"{host}:{port}", "paths": list(PATHS)})
    with unwrap_group():
        async with trio.open_nursery() as nursery:
            if listeners:
                nursery.start_soon(functools.partial(
                    trio.serve_listeners, functools.partial(_serve_http, health), listeners))
            if notifier is not None and watchdog_s:
                nursery.start_soon(_watchdog, notifier, watchdog_s)
            try:
                yield health
            finally:
                nursery.cancel_scope.cancel()
