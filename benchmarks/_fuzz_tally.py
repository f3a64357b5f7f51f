"""What the fuzz campaign (``benchmarks.fuzz_node``) counts, and how it reads what a node sends back.

``Tally`` holds the counts: ``n`` the scalar ones (frames, connections,
closed_by_node, closed_by_us, checks, mismatches, crashes, parked) and
``by`` the counters by key (replies by kind, errors by code, goodbyes,
verdicts, anomalies, slow replies by kind), plus up to 20 anomaly samples.
``Reader`` takes frames off a stream without the protocol's state machine
(the campaign's requests break it on purpose); ``rss`` reads a process's
resident set size and its peak from ``/proc``.
"""

from __future__ import annotations

import struct
from collections import Counter, defaultdict

import msgpack
import trio

_HEADER = struct.Struct(">II")
#: Anomalies kept with the frame that caused them, for the report.
MAX_SAMPLES = 20


class Tally:
    """What the campaign saw (see the module docstring)."""

    def __init__(self) -> None:
        self.n: Counter[str] = Counter()
        self.by: defaultdict[str, Counter] = defaultdict(Counter)
        self.samples: list[dict[str, str]] = []
        self.rss_peak_sampled = 0
        self.rss_series: list[int] = []  # VmRSS at each guard check
        self.slowest = 0.0

    def anomaly(self, what: str, frame: bytes, detail: str = "", batch: list[str] | None = None) -> None:
        """Count anomaly ``what``, keeping ``frame`` (and the ``batch`` it came in) as a sample."""
        self.by["anomalies"][what] += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append({"what": what, "detail": detail[:300], "frame": describe(frame), "batch": batch or []})


class Reader:
    """Frames off a stream, decoded to ``(kind, fields)``; None at end of stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream, self.buf = stream, bytearray()

    async def next(self) -> tuple | None:
        while True:
            if len(self.buf) >= _HEADER.size:
                length, _ = _HEADER.unpack_from(self.buf)
                if len(self.buf) >= _HEADER.size + length:
                    payload = bytes(self.buf[_HEADER.size:_HEADER.size + length])
                    del self.buf[:_HEADER.size + length]
                    kind, fields = msgpack.unpackb(payload, raw=False, strict_map_key=False)
                    return kind, fields
            try:
                data = await self.stream.receive_some(1 << 16)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            if not data:
                return None
            self.buf += data


def describe(data: bytes) -> str:
    """A frame's message as text, for the report; its bytes in hex when it does not decode."""
    try:
        return repr(msgpack.unpackb(data[_HEADER.size:], raw=False, strict_map_key=False))[:600]
    except Exception:
        return data[:300].hex()


def kind_of(data: bytes) -> str:
    """The kind a frame's message names, "?" when it does not decode."""
    try:
        return str(msgpack.unpackb(data[_HEADER.size:], raw=False, strict_map_key=False)[0])
    except Exception:
        return "?"


def rss(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of process ``pid``, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out
