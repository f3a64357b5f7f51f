"""The bandwidth and round trip of the migration link, for the physical floor.

Emulated links have the figures they were configured with (the tbf rate,
the proxy's added round trip).  Loopback has none, so its figures are
measured in the same run: plain TCP over 127.0.0.1 between two threads,
a bulk transfer and a 32-byte echo.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from dataclasses import dataclass

from benchmarks.netem import LinkProfile

BULK_BYTES = 256 * 2**20
ECHO_ROUNDS = 500


@dataclass(frozen=True)
class LinkFigures:
    """The migration link (edge to cloud): bytes per second, round trip, and where they came from."""

    bandwidth_bytes_per_s: float
    rtt_s: float
    source: str  # "configured" or "measured"


def _pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    for s in (client, accepted):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, accepted


def _drain(sock: socket.socket, total: int) -> None:
    view = memoryview(bytearray(2**20))
    while total > 0:
        n = sock.recv_into(view)
        if not n:
            break
        total -= n
    sock.sendall(b"!")


def measure_loopback() -> LinkFigures:
    """Measure TCP over 127.0.0.1: bulk throughput and the median 32-byte round trip."""
    a, b = _pair()
    with a, b:
        sink = threading.Thread(target=_drain, args=(b, BULK_BYTES))
        sink.start()
        chunk = b"\x01" * 2**20
        t0 = time.perf_counter()
        for _ in range(BULK_BYTES // len(chunk)):
            a.sendall(chunk)
        a.recv(1)
        bandwidth = BULK_BYTES / (time.perf_counter() - t0)
        sink.join()
        samples = []
        ping = b"p" * 32
        for _ in range(ECHO_ROUNDS):
            t0 = time.perf_counter()
            a.sendall(ping)
            got = 0
            while got < len(ping):
                got += len(b.recv(64))
            b.sendall(ping)
            got = 0
            while got < len(ping):
                got += len(a.recv(64))
            samples.append(time.perf_counter() - t0)
    return LinkFigures(bandwidth_bytes_per_s=bandwidth, rtt_s=statistics.median(samples), source="measured")


def link_figures(profile: LinkProfile) -> LinkFigures:
    """The edge-to-cloud link of ``profile``: configured when emulated, measured on loopback."""
    if profile.emulated:
        return LinkFigures(bandwidth_bytes_per_s=profile.rate_bits_per_s / 8, rtt_s=profile.edge_cloud_rtt_s,
                           source="configured")
    return measure_loopback()
