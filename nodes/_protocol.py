"""The node protocol as a sans-IO state machine: bytes in become events, messages out become bytes.

Framing: every message is one frame, ``>II`` (payload length, CRC-32 of the
payload) followed by the msgpack payload ``[kind, {field: value}]``.  The
length is checked against the limit before the payload is buffered, so an
oversized frame is refused from its first eight bytes.  Until the peer's
Hello has arrived the limit is ``handshake_max_frame_bytes`` (64 KiB): an
unauthenticated-by-protocol peer cannot make us buffer a page-batch-sized
frame.  TLS already authenticates the bytes in transit; the CRC is there so
that a desynchronised or corrupted stream (a framing bug, ``--insecure``
mode) is refused instead of being read as a different, valid message.

``Connection`` never touches a socket.  Feed it with ``receive_data`` (``b""``
means the peer closed), pull events with ``next_event`` until it returns
``NEED_DATA``, and write whatever ``send`` returns.  Its lifecycle lives in
the declarative ``_TRANSITIONS`` table: anything not in the table is a
protocol error, raised as ``LocalProtocolError`` for our side and
``RemoteProtocolError`` for theirs; a remote error moves the state to ERROR,
after which only replies to the requests received before it, then a
Goodbye, may be sent.  A Goodbye closes its sender's
side: the receiver (PARTING) still replies to the requests that came
before it, then says its own Goodbye.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Final, Literal, NoReturn

import msgpack

from ._errors import LocalProtocolError, MessageFieldError, RemoteProtocolError
from ._messages import (
    PROTOCOL_VERSIONS,
    ROLES,
    ErrorCode,
    ErrorReply,
    Goodbye,
    Hello,
    Message,
    Reply,
    Request,
    message_class,
)
from ._wire import FieldError, schema_for

_HEADER = struct.Struct(">II")
HEADER_BYTES = _HEADER.size

#: Default limit for one frame once the handshake is done: room for a batch
#: of pages or a large module.
DEFAULT_MAX_FRAME_BYTES = 64 << 20
#: Limit before the peer's Hello: a Hello is a few hundred bytes.
HANDSHAKE_MAX_FRAME_BYTES = 64 << 10


class State(enum.Enum):
    HELLO_WAIT = "hello_wait"          # neither Hello yet
    HELLO_SENT = "hello_sent"          # ours sent, theirs awaited
    HELLO_RECEIVED = "hello_received"  # theirs received, ours not sent
    READY = "ready"
    PARTING = "parting"                # the peer said Goodbye: we answer its requests, then say ours
    CLOSED = "closed"
    ERROR = "error"


class _Side(enum.Enum):
    OURS = "ours"
    THEIRS = "theirs"


class _Kind(enum.Enum):
    HELLO = "hello"
    REQUEST = "request"
    REPLY = "reply"
    GOODBYE = "goodbye"
    EOF = "eof"


OURS, THEIRS = _Side.OURS, _Side.THEIRS
S = State

# (state, who acts, what) -> next state.  Everything else is a protocol error.
_TRANSITIONS: dict[tuple[State, _Side, _Kind], State] = {
    (S.HELLO_WAIT, OURS, _Kind.HELLO): S.HELLO_SENT,
    (S.HELLO_WAIT, THEIRS, _Kind.HELLO): S.HELLO_RECEIVED,
    (S.HELLO_SENT, THEIRS, _Kind.HELLO): S.READY,
    (S.HELLO_RECEIVED, OURS, _Kind.HELLO): S.READY,
    (S.READY, OURS, _Kind.REQUEST): S.READY,
    (S.READY, OURS, _Kind.REPLY): S.READY,
    (S.READY, THEIRS, _Kind.REQUEST): S.READY,
    (S.READY, THEIRS, _Kind.REPLY): S.READY,
    # Either side may close at any point before CLOSED, and we may still say
    # goodbye after the peer broke the protocol (like h11's 400 after an error).
    **{(st, side, kind): S.CLOSED
       for st in (S.HELLO_WAIT, S.HELLO_SENT, S.HELLO_RECEIVED, S.READY)
       for side, kind in ((OURS, _Kind.GOODBYE), (THEIRS, _Kind.GOODBYE), (THEIRS, _Kind.EOF))},
    (S.ERROR, OURS, _Kind.GOODBYE): S.ERROR,
    # Our side of the stream is intact after the peer broke the protocol: replies to the
    # requests that came before the bad frame may still go out ahead of our Goodbye (``send``).
    (S.ERROR, OURS, _Kind.REPLY): S.ERROR,
    # A Goodbye closes its sender's side only: the requests it sent before it
    # are still answered (a pipelined batch may end with one), then ours closes.
    (S.READY, THEIRS, _Kind.GOODBYE): S.PARTING,
    (S.PARTING, OURS, _Kind.REPLY): S.PARTING,
    (S.PARTING, OURS, _Kind.GOODBYE): S.CLOSED,
}


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"  # an enum member, so that ``is NEED_DATA`` narrows a type

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by ``next_event`` when a whole frame has not arrived yet.
NEED_DATA: Final = _NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """Event: the peer said Goodbye (``code``/``reason`` set) or closed the stream."""

    code: ErrorCode | None = None
    reason: str = ""


def _reject_ext(code: int, data: bytes) -> Any:
    raise RemoteProtocolError(f"msgpack extension type {code} is not allowed")


def encode_message(message: Message) -> bytes:
    """Return the payload (no frame header) for ``message``; raise LocalProtocolError if unencodable."""
    cls = type(message)
    if message_class(cls.kind) is not cls:
        raise LocalProtocolError(f"{cls.__name__} is not a registered message")
    try:
        return msgpack.packb([cls.kind, schema_for(cls).to_wire(message)], use_bin_type=True)
    except (FieldError, OverflowError, ValueError, TypeError) as exc:
        raise MessageFieldError(f"cannot encode {cls.__name__}: {exc}") from None


def decode_message(payload: bytes) -> Message:
    """Return the message a payload encodes; raise RemoteProtocolError for anything else."""
    try:
        decoded = msgpack.unpackb(payload, raw=False, use_list=False, strict_map_key=True,
                                  ext_hook=_reject_ext)
    except RemoteProtocolError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types for bad input
        raise RemoteProtocolError(f"undecodable frame: {type(exc).__name__}: {exc}") from None
    if type(decoded) is not tuple or len(decoded) != 2 or type(decoded[1]) is not dict:
        raise RemoteProtocolError("a frame must hold [kind, fields]")
    kind, fields = decoded
    cls = message_class(kind) if type(kind) is str else None
    if cls is None:
        raise RemoteProtocolError(f"unknown message kind {kind!r}")
    try:
        return schema_for(cls).from_wire(fields)
    except FieldError as exc:
        raise RemoteProtocolError(f"malformed {kind!r} message: {exc}") from None


def frame(payload: bytes) -> bytes:
    """Return ``payload`` with its frame header."""
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def negotiate_version(ours: tuple[int, ...], theirs: tuple[int, ...]) -> int | None:
    """Return the highest version both lists contain, or None."""
    common = set(ours) & set(theirs)
    return max(common) if common else None


class Connection:
    """One end of a node-protocol connection, with no I/O.

    ``hello`` is what this side will send; ``send(hello)`` must still be
    called.  ``max_frame_bytes`` bounds frames we accept after the handshake
    (and is announced to the peer in our Hello).  Back-pressure is the
    driver's job: it stops calling ``next_event`` while too many of the
    peer's requests (``their_requests_pending``) await replies, so unread
    frames stay in the kernel's socket buffer and TCP slows the peer down.
    """

    def __init__(self, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 handshake_max_frame_bytes: int = HANDSHAKE_MAX_FRAME_BYTES,
                 versions: tuple[int, ...] = PROTOCOL_VERSIONS) -> None:
        if handshake_max_frame_bytes > max_frame_bytes:
            raise LocalProtocolError("the handshake frame limit exceeds the frame limit")
        self.state = State.HELLO_WAIT
        self.versions = versions
        self.max_frame_bytes = max_frame_bytes
        self.their_hello: Hello | None = None
        self.version: int | None = None
        self.closed_by: ConnectionClosed | None = None
        self._handshake_limit = handshake_max_frame_bytes
        self._their_max_frame_bytes = handshake_max_frame_bytes
        self._buffer = bytearray()
        self._eof = False
        self._said_goodbye = False
        #: Bytes (header included) of the frame the last event came in; 0 for end of stream.
        self.last_frame_bytes = 0
        # request id -> request class, for both directions
        self._ours_pending: dict[int, type[Request]] = {}
        self._theirs_pending: dict[int, type[Request]] = {}

    # --- state -----------------------------------------------------------

    @property
    def their_requests_pending(self) -> int:
        """How many of the peer's requests await our reply."""
        return len(self._theirs_pending)

    @property
    def our_requests_pending(self) -> int:
        return len(self._ours_pending)

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet turned into events."""
        return len(self._buffer)

    def frame_bytes(self) -> int | None:
        """The size (header included) of the frame whose header is buffered; None before a header.

        Call it after ``next_event`` returned NEED_DATA: that checked the size against the limit.
        """
        if len(self._buffer) < HEADER_BYTES:
            return None
        return HEADER_BYTES + _HEADER.unpack_from(self._buffer)[0]

    @property
    def peer_max_frame_bytes(self) -> int:
        """The largest frame the peer accepts (the handshake limit until its Hello arrives)."""
        return self._their_max_frame_bytes

    def _transition(self, side: _Side, kind: _Kind, what: str) -> None:
        new = _TRANSITIONS.get((self.state, side, kind))
        if new is None:
            if side is OURS:
                raise LocalProtocolError(f"cannot send {what} in state {self.state.name}")
            self._fail(f"unexpected {what} in state {self.state.name}")
        self.state = new

    def _fail(self, reason: str) -> NoReturn:
        self.state = State.ERROR
        raise RemoteProtocolError(reason)

    def hello(self, *, name: str, role: str, capabilities: tuple[str, ...] = (),
              address: str | None = None) -> Hello:
        """Return the Hello this side should send, carrying its versions and frame limit."""
        return Hello(versions=self.versions, name=name, role=role,
                     max_frame_bytes=self.max_frame_bytes, capabilities=capabilities,
                     address=address)

    # --- sending --------------------------------------------------------

    def send(self, message: Message) -> bytes:
        """Return the bytes that carry ``message``; raise LocalProtocolError if it may not be sent now."""
        if self.state is State.ERROR and not isinstance(message, Goodbye) and (
                self._said_goodbye or not isinstance(message, Reply)):
            raise LocalProtocolError("the connection failed; only replies to requests received before "
                                     "the failure, then a Goodbye, may be sent")
        payload = encode_message(message)
        if len(payload) > self._their_max_frame_bytes:
            raise LocalProtocolError(
                f"{type(message).__name__} is {len(payload)} bytes; the peer accepts "
                f"at most {self._their_max_frame_bytes}")
        if isinstance(message, Request):
            self._transition(OURS, _Kind.REQUEST, type(message).__name__)
            if message.id in self._ours_pending:
                raise LocalProtocolError(f"request id {message.id} is already awaiting a reply")
            self._ours_pending[message.id] = type(message)
        elif isinstance(message, Reply):
            expected = self._theirs_pending.get(message.id)
            if expected is None:
                raise LocalProtocolError(f"no request {message.id} awaits a reply")
            if not isinstance(message, (expected.reply, ErrorReply)):
                raise LocalProtocolError(
                    f"{expected.__name__} is answered by {expected.reply.__name__}, "
                    f"not {type(message).__name__}")
            self._transition(OURS, _Kind.REPLY, type(message).__name__)
            del self._theirs_pending[message.id]
        elif isinstance(message, Hello):
            if message.max_frame_bytes != self.max_frame_bytes or message.versions != self.versions:
                raise LocalProtocolError("our Hello must announce this Connection's limits and versions")
            self._transition(OURS, _Kind.HELLO, "Hello")
        elif isinstance(message, Goodbye):
            self._transition(OURS, _Kind.GOODBYE, "Goodbye")
            self._said_goodbye = True
        else:  # a registered kind outside the four families
            raise LocalProtocolError(f"{type(message).__name__} is not a Hello, Goodbye, Request or Reply")
        return frame(payload)

    # --- receiving ------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes read from the peer; ``b""`` means the peer closed its side."""
        if self._eof:
            if data:
                raise LocalProtocolError("data received after end of stream")
            return
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> Message | ConnectionClosed | Literal[_NeedData.NEED_DATA]:
        """Return the next Hello, Request, Reply or ConnectionClosed, or NEED_DATA.

        Raises RemoteProtocolError (state becomes ERROR) if the peer broke the protocol.
        """
        self.last_frame_bytes = 0
        if self.state is State.ERROR:
            raise RemoteProtocolError("the connection already failed")
        if self.state in (State.CLOSED, State.PARTING):  # nothing the peer sends after its Goodbye is read
            return self.closed_by or ConnectionClosed()
        buf = self._buffer
        if len(buf) >= HEADER_BYTES:
            length, crc = _HEADER.unpack_from(buf)
            limit = self.max_frame_bytes if self.their_hello is not None else self._handshake_limit
            if length > limit:
                self._fail(f"frame of {length} bytes exceeds the limit of {limit}")
            end = HEADER_BYTES + length
            if len(buf) >= end:
                payload = bytes(buf[HEADER_BYTES:end])
                del buf[:end]
                self.last_frame_bytes = end
                if zlib.crc32(payload) != crc:
                    self._fail("frame checksum mismatch")
                try:
                    message = decode_message(payload)
                except RemoteProtocolError as exc:
                    self._fail(str(exc))
                return self._received(message)
        if self._eof:
            if buf:
                self._fail(f"stream ended inside a frame ({len(buf)} bytes left)")
            self._transition(THEIRS, _Kind.EOF, "end of stream")
            self.closed_by = ConnectionClosed()
            return self.closed_by
        return NEED_DATA

    def _received(self, message: Message) -> Message | ConnectionClosed:
        name = type(message).__name__
        if isinstance(message, Request):
            self._transition(THEIRS, _Kind.REQUEST, name)
            if message.id in self._theirs_pending:
                self._fail(f"request id {message.id} is already in flight")
            self._theirs_pending[message.id] = type(message)
        elif isinstance(message, Reply):
            self._transition(THEIRS, _Kind.REPLY, name)
            expected = self._ours_pending.pop(message.id, None)
            if expected is None:
                self._fail(f"reply to unknown request id {message.id}")
            if not isinstance(message, (expected.reply, ErrorReply)):
                self._fail(f"{expected.__name__} answered by {name}")
        elif isinstance(message, Hello):
            self._transition(THEIRS, _Kind.HELLO, name)
            self._check_hello(message)
        elif isinstance(message, Goodbye):
            self._transition(THEIRS, _Kind.GOODBYE, name)
            self.closed_by = ConnectionClosed(message.code, message.reason)
            return self.closed_by
        else:
            self._fail(f"{name} is not a Hello, Goodbye, Request or Reply")
        return message

    def _check_hello(self, hello: Hello) -> None:
        version = negotiate_version(self.versions, hello.versions)
        if version is None:
            self._fail(f"no common protocol version: we speak {list(self.versions)}, "
                       f"the peer {list(hello.versions)}")
        if hello.role not in ROLES:
            self._fail(f"unknown role {hello.role!r}")
        if hello.max_frame_bytes < self._handshake_limit:
            self._fail(f"peer frame limit {hello.max_frame_bytes} is below the handshake limit")
        self.their_hello = hello
        self.version = version
        self._their_max_frame_bytes = hello.max_frame_bytes
