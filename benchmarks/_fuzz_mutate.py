"""The fuzz campaign's mutator: hostile frames made from recorded real sessions, and what a node must do with each.

``Mutator.frame()`` returns one frame (header and payload bytes) made by
one of these, picked at random:

* message-level mutations of a recorded message ``[kind, fields]``, sent
  with a correct length and CRC so they reach msgpack and the schema: a
  field's value replaced by an edge value of its own type (ints at 0, -1,
  2**31, 2**63 - 1, -2**63, 2**64 - 1; empty, long, odd strings; flipped,
  cut or grown bytes; items dropped or repeated) or of another type
  (floats nan/inf, None, bools, lists, maps, containers nested 60 deep),
  fields dropped or added, the kind swapped for another registered kind or
  an unknown one, the id made negative, 0 or huge;
* messages generated from a registered request class's field annotations
  (every request kind, node-only ones included), with edge values;
* byte-level mutations of the payload (bit flips, byte changes, insertions,
  deletions, truncation; CRC recomputed) and raw msgpack whose str, bin,
  array or map header claims far more than follows;
* frame-level mutations: the length prefix changed, the CRC broken, the
  header cut.

``classify`` says what the node must do with a frame, by feeding it to the
protocol's own sans-IO ``Connection`` in the state the node's connection is
in: ``("requests", ids)`` (answer each id, keep the connection), ``CLOSE``
(a protocol error or a Goodbye: the node closes the connection) or
``STALL`` (the frame claims more bytes than follow: the node waits for
them).  String values are drawn from the names seen in the recordings and
from fresh junk, never from the guard workloads' ids, which the mutator is
not told.
"""

from __future__ import annotations

import dataclasses
import enum
import random
import struct
import types
import typing
import zlib
from typing import Any

import msgpack

import migrate.wire  # noqa: F401  (registers the migration messages)
from nodes import Connection, ConnectionClosed, RemoteProtocolError, Request

_HEADER = struct.Struct(">II")
REQUESTS, CLOSE, STALL = "requests", "close", "stall"
EDGE_INTS = (0, 1, -1, 255, 256, 65535, 1 << 31, (1 << 31) - 1, -(1 << 31), 1 << 32, (1 << 63) - 1, -(1 << 63),
             (1 << 64) - 1, 4096, 65536, 1 << 40)
#: Bytes msgpack reads as type markers worth planting: fixint edges, fixmap, the never-used
#: 0xc1, str8, str32, array32, map32, 0xff.
MSGPACK_MARKERS = (0x00, 0x7F, 0x80, 0xC1, 0xD9, 0xDB, 0xDD, 0xDF, 0xFF)
EDGE_FLOATS = (0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1e308, -1e-308, 0.5)
EDGE_TEXT = ("", "x" * 4096, "../../etc/passwd", "\x00", "é\u202e\U0001f600", "a" * 65, "default", "fuzz", "None",
             "127.0.0.1:1", "[::1]:0", "localhost:99999", "precopy", "call", "read", "write", "incr", "get",
             "memory", "0" * 64, "f" * 64)


def frame(payload: bytes) -> bytes:
    """``payload`` with a correct frame header."""
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


#: Packages whose requests a ``migrate-node`` serves.  Other modules of the
#: process (a test suite's plugins) may register request kinds the node does
#: not know: a frame of such a kind is a protocol error to the node, not a
#: request, so the mutator must not make them.
SERVED_PACKAGES = ("nodes.", "migrate.")


def request_classes() -> dict[str, type[Request]]:
    """Every request class a ``migrate-node`` serves, by kind (node-only ones included)."""
    out, todo = {}, [Request]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.kind and issubclass(cls, Request) and cls.__module__.startswith(SERVED_PACKAGES):
            out[cls.kind] = cls
    return out


def _server() -> Connection:
    """A node-side Connection in the state of a served connection: both Hellos exchanged."""
    conn, client = Connection(), Connection()
    conn.receive_data(client.send(client.hello(name="fuzz", role="edge")))
    conn.next_event()
    conn.send(conn.hello(name="node", role="edge"))
    return conn


def classify(data: bytes) -> tuple[str, tuple[int, ...]]:
    """What a node must do with ``data`` sent on a served connection, and the request ids it decodes first.

    The verdict is ``REQUESTS`` (answer those ids and keep the connection),
    ``CLOSE`` or ``STALL``; see the module docstring.
    """
    if not data:
        return STALL, ()  # nothing goes on the wire: the node waits (b"" would mean end of stream here)
    conn, ids = _server(), []
    conn.receive_data(data)
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, ConnectionClosed):
                return CLOSE, tuple(ids)  # a Goodbye: the peer closes
            if not isinstance(event, Request):
                break  # NEED_DATA
            ids.append(event.id)
        conn.receive_data(b"")
        conn.next_event()
    except RemoteProtocolError as exc:
        return (STALL if str(exc).startswith("stream ended inside a frame") else CLOSE), tuple(ids)
    return REQUESTS, tuple(ids)


class Mutator:
    """Makes hostile frames from ``seeds`` (decoded ``[kind, fields]`` payloads) with ``rng``."""

    def __init__(self, seeds: list[Any], rng: random.Random) -> None:
        self.seeds = [s for s in seeds if isinstance(s, (list, tuple)) and len(s) == 2 and isinstance(s[1], dict)]
        self.rng = rng
        self.classes = request_classes()
        self.kinds = sorted(self.classes) + ["hello", "goodbye", "error", "done", "m_result"]
        self.names = sorted({v for s in self.seeds for k, v in s[1].items()
                             if isinstance(v, str) and k in ("workload", "workload_id", "sha256", "module_sha256",
                                                             "token", "caller", "target", "standby", "source")})
        self.next_id = 1 << 20
        self.made: dict[str, int] = {}

    # --- values ---------------------------------------------------------

    def _text(self) -> str:
        rng = self.rng
        pick = rng.random()
        if pick < 0.4 and self.names:
            return rng.choice(self.names)
        if pick < 0.8:
            return rng.choice(EDGE_TEXT)
        return "".join(chr(rng.choice((rng.randrange(32, 127), rng.randrange(0x80, 0x3000))))
                       for _ in range(rng.randrange(40)))

    def _int(self) -> int:
        return self.rng.choice(EDGE_INTS) if self.rng.random() < 0.7 else self.rng.randrange(-1000, 1 << 20)

    def _bytes(self) -> bytes:
        return self.rng.randbytes(self.rng.choice((0, 1, 7, 64, 4096, 70000)))

    def _nested(self, depth: int) -> Any:
        value: Any = self.rng.choice((0, "x", b"", None))
        for _ in range(depth):
            value = [value] if self.rng.random() < 0.5 else {"k": value}
        return value

    def _plain(self, depth: int = 0) -> Any:
        pick = self.rng.randrange(8 if depth < 3 else 5)
        return (None, self._int, self._text, self._bytes, lambda: self.rng.choice(EDGE_FLOATS),
                lambda: [self._plain(depth + 1) for _ in range(self.rng.randrange(4))],
                lambda: {self._text(): self._plain(depth + 1) for _ in range(self.rng.randrange(4))},
                lambda: self.rng.random() < 0.5)[pick]() if pick else None

    def value_for(self, tp: Any, depth: int = 0) -> Any:
        """A random value that fits the field annotation ``tp``, edge values preferred."""
        rng = self.rng
        if tp is Any:
            return self._plain()
        if tp is type(None) or tp is None:
            return None
        simple = {int: self._int, float: lambda: rng.choice(EDGE_FLOATS), bool: lambda: rng.random() < 0.5,
                  str: self._text, bytes: self._bytes}
        if tp in simple:
            return simple[tp]()
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return rng.choice(list(tp)).value
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            return {f.name: self.value_for(hints[f.name], depth + 1) for f in dataclasses.fields(tp)}
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            return self.value_for(rng.choice(args), depth)
        if origin is tuple:
            return [self.value_for(args[0], depth + 1) for _ in range(rng.randrange(4 if depth < 2 else 1))]
        if origin is dict:
            return {self._text(): self.value_for(args[1], depth + 1) for _ in range(rng.randrange(3))}
        if isinstance(tp, typing.NewType):  # an error code
            return rng.choice(("internal", "bad_request", "x" * 65, "Bad"))
        return self._plain()

    def _same_type(self, value: Any) -> Any:
        rng = self.rng
        if isinstance(value, bool):
            return not value
        if isinstance(value, int):
            return rng.choice((self._int(), value + 1, value - 1, -value, value ^ (1 << rng.randrange(64))))
        if isinstance(value, float):
            return rng.choice(EDGE_FLOATS)
        if isinstance(value, str):
            return rng.choice((self._text(), value[:rng.randrange(len(value) + 1)], value + self._text(),
                               value.upper()))
        if isinstance(value, bytes):
            return self._mutate_bytes(value, frame_level=False) if value else self._bytes()
        if isinstance(value, (list, tuple)):
            items = list(value)
            if items and rng.random() < 0.5:
                i = rng.randrange(len(items))
                items[i] = self._same_type(items[i])
            elif items:
                items = items * rng.choice((0, 2, 50))
            else:
                items = [self._plain()]
            return items
        if isinstance(value, dict):
            if value and rng.random() < 0.6:
                key = rng.choice(list(value))
                return {**value, key: self._same_type(value[key])}
            return {**value, self._text(): self._plain()}
        return self._plain()

    # --- messages ---------------------------------------------------------

    def _seed(self) -> tuple[str, dict]:
        kind, fields = self.rng.choice(self.seeds)
        fields = dict(fields)
        if "id" in fields:
            self.next_id += 1
            fields["id"] = self.next_id
        return kind, fields

    def _mutate_message(self) -> tuple[Any, dict]:
        rng = self.rng
        kind, fields = self._seed()
        op = rng.choices(("same_type", "other_type", "nested", "drop", "extra", "kind", "id", "several"),
                         weights=(50, 8, 2, 4, 4, 4, 6, 10))[0]
        self.made[op] = self.made.get(op, 0) + 1
        keys = [k for k in fields if k != "id"] or ["id"]
        if op in ("same_type", "several"):
            for key in rng.sample(keys, k=1 if op == "same_type" else min(len(keys), rng.randint(2, 4))):
                fields[key] = self._same_type(fields.get(key))
        elif op == "other_type":
            fields[rng.choice(keys)] = self._plain()
        elif op == "nested":
            fields[rng.choice(keys)] = self._nested(rng.choice((17, 60, 500)))
        elif op == "drop":
            fields.pop(rng.choice(keys), None)
        elif op == "extra":
            fields[self._text()] = self._plain()
        elif op == "kind":
            kind = rng.choice(self.kinds + ["", "no_such_kind", 7, None])
        else:
            fields["id"] = rng.choice((0, -1, (1 << 63) - 1, (1 << 64) - 1, -(1 << 63), 1.5, "7", None))
        return kind, fields

    def _generate(self) -> tuple[str, dict]:
        kind = self.rng.choice(sorted(self.classes))
        cls = self.classes[kind]
        hints = typing.get_type_hints(cls)
        fields = {f.name: self.value_for(hints[f.name]) for f in dataclasses.fields(cls)
                  if f.name != "id" and (self.rng.random() < 0.8 or f.default is dataclasses.MISSING)}
        self.next_id += 1
        fields["id"] = self.next_id
        self.made["generated"] = self.made.get("generated", 0) + 1
        return kind, fields

    def _mutate_bytes(self, data: bytes, *, frame_level: bool) -> bytes:
        rng, buf = self.rng, bytearray(data)
        for _ in range(rng.randint(1, 3)):
            op, pos = rng.randrange(6), rng.randrange(len(buf) + 1)
            if op == 0 and buf:
                buf[pos % len(buf)] ^= 1 << rng.randrange(8)
            elif op == 1 and buf:
                buf[pos % len(buf)] = rng.choice(MSGPACK_MARKERS + (rng.randrange(256),))
            elif op == 2:
                buf[pos:pos] = rng.randbytes(rng.randint(1, 9))
            elif op == 3:
                del buf[pos:pos + rng.randint(1, 9)]
            elif op == 4:
                del buf[pos:]
            elif frame_level and len(buf) >= 8:
                buf[rng.randrange(8)] = rng.randrange(256)
        return bytes(buf)

    def _huge_claim(self) -> bytes:
        """A message whose last field is a str/bin/array/map header claiming far more than follows."""
        kind, fields = self._seed()
        fields.pop(rng_key := self.rng.choice(list(fields)), None)
        head = msgpack.packb([kind, fields], use_bin_type=True)
        claim = self.rng.choice((b"\xdb\x7f\xff\xff\xff", b"\xc6\xff\xff\xff\xf0", b"\xdd\x10\x00\x00\x00",
                                 b"\xdf\x7f\x00\x00\x00", b"\xdb\x00\x01\x00\x00"))
        # the map gains one entry: bump its length nibble when it is a fixmap
        body = bytearray(head)
        at = body.index(msgpack.packb(kind, use_bin_type=True)) + len(msgpack.packb(kind, use_bin_type=True))
        if 0x80 <= body[at] < 0x8F:
            body[at] += 1
        return bytes(body) + msgpack.packb(rng_key) + claim + b"abc"

    def _frame_level(self, payload: bytes) -> bytes:
        rng = self.rng
        op = rng.randrange(4)
        if op == 0:  # length prefix changed
            length = rng.choice((0, 1, len(payload) - 1, len(payload) + 1, len(payload) + 1000, 64 << 10,
                                 (64 << 20) + 1, (1 << 32) - 1, rng.randrange(1 << 32)))
            return _HEADER.pack(length % (1 << 32), zlib.crc32(payload)) + payload
        if op == 1:  # CRC broken
            return _HEADER.pack(len(payload), zlib.crc32(payload) ^ (1 << rng.randrange(32))) + payload
        if op == 2:  # header cut short, then a whole frame
            return frame(payload)[:rng.randrange(1, 8)] + frame(payload)
        return self._mutate_bytes(frame(payload), frame_level=True)

    def frame(self) -> bytes:
        """One hostile frame (see the module docstring)."""
        rng = self.rng
        pick = rng.random()
        if pick < 0.62:
            message = self._mutate_message()
        elif pick < 0.85:
            message = self._generate()
        else:
            message = None
        if message is not None:
            try:
                return frame(msgpack.packb(list(message), use_bin_type=True))
            except (OverflowError, ValueError, TypeError):  # e.g. a map keyed by None: send it as junk bytes
                return frame(rng.randbytes(16))
        kind, fields = self._seed()
        payload = msgpack.packb([kind, fields], use_bin_type=True)
        pick = rng.random()
        if pick < 0.4:
            self.made["payload_bytes"] = self.made.get("payload_bytes", 0) + 1
            return frame(self._mutate_bytes(payload, frame_level=False))
        if pick < 0.6:
            self.made["huge_claim"] = self.made.get("huge_claim", 0) + 1
            return frame(self._huge_claim())
        self.made["frame_level"] = self.made.get("frame_level", 0) + 1
        return self._frame_level(payload)
