"""The sans-IO node protocol, driven in memory: no sockets, no trio."""

from __future__ import annotations

import dataclasses
import enum
import random
import struct
import types
import typing
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes import ANY_ROLE, LocalProtocolError, RemoteProtocolError
from nodes._messages import (
    Call,
    CallResult,
    Deploy,
    Done,
    ErrorCode,
    ErrorReply,
    Goodbye,
    HasModule,
    Hello,
    Message,
    ModuleStatus,
    NodeSummary,
    Pong,
    Ping,
    PutModule,
    Reply,
    Request,
    Status,
    message_class,
    message,
    register,
    registered_kinds,
)
from nodes._protocol import (
    HANDSHAKE_MAX_FRAME_BYTES,
    NEED_DATA,
    Connection,
    ConnectionClosed,
    State,
    decode_message,
    encode_message,
    frame,
)
from nodes._wire import Code

# --- helpers ----------------------------------------------------------------


def pair(**kwargs: Any) -> tuple[Connection, Connection]:
    """Return a client and a server Connection that have exchanged Hellos."""
    client, server = Connection(**kwargs), Connection(**kwargs)
    server.receive_data(client.send(client.hello(name="app-1", role="app")))
    client.receive_data(server.send(server.hello(name="edge-1", role="edge", address="127.0.0.1:1")))
    assert isinstance(server.next_event(), Hello)
    assert isinstance(client.next_event(), Hello)
    assert client.state is server.state is State.READY
    return client, server


def events(conn: Connection) -> list[Any]:
    out = []
    while (event := conn.next_event()) is not NEED_DATA:
        out.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return out


# --- handshake ------------------------------------------------------------------


def test_handshake_reaches_ready_and_negotiates_highest_common_version():
    client = Connection(versions=(1, 2))
    server = Connection(versions=(2, 3))
    server.receive_data(client.send(client.hello(name="c", role="app")))
    hello = server.next_event()
    assert server.state is State.HELLO_RECEIVED
    assert hello.name == "c" and hello.role == "app"
    client.receive_data(server.send(server.hello(name="s", role="cloud", capabilities=("wasi",))))
    assert client.state is State.HELLO_SENT
    assert client.next_event().capabilities == ("wasi",)
    assert client.version == server.version == 2
    assert client.state is server.state is State.READY


def test_wrong_version_is_a_remote_error_and_goodbye_may_still_be_sent():
    client, server = Connection(versions=(99,)), Connection()
    server.send(server.hello(name="s", role="edge"))
    server.receive_data(client.send(client.hello(name="c", role="app")))
    with pytest.raises(RemoteProtocolError, match="no common protocol version"):
        server.next_event()
    assert server.state is State.ERROR
    with pytest.raises(LocalProtocolError):
        server.send(Done(id=1))
    bye = server.send(Goodbye(code=ErrorCode.PROTOCOL_ERROR, reason="version"))
    client.receive_data(bye)
    assert client.next_event() == ConnectionClosed(ErrorCode.PROTOCOL_ERROR, "version")
    assert client.state is State.CLOSED


def test_request_before_hello_is_refused():
    client, server = Connection(), Connection()
    server.receive_data(frame(encode_message(Status(id=1))))
    with pytest.raises(RemoteProtocolError, match="unexpected Status in state HELLO_WAIT"):
        server.next_event()
    with pytest.raises(LocalProtocolError, match="cannot send Status"):
        client.send(Status(id=1))


def test_second_hello_is_refused():
    client, server = pair()
    server.receive_data(frame(encode_message(client.hello(name="again", role="app"))))
    with pytest.raises(RemoteProtocolError):
        server.next_event()


def test_unknown_role_is_refused():
    server = Connection()
    hello = Hello(versions=(1,), name="x", role="mainframe", max_frame_bytes=1 << 20)
    server.receive_data(frame(encode_message(hello)))
    with pytest.raises(RemoteProtocolError, match="unknown role"):
        server.next_event()


# --- framing ----------------------------------------------------------------------


def test_oversized_frame_is_refused_from_its_header_before_hello():
    server = Connection()
    server.receive_data(struct.pack(">II", HANDSHAKE_MAX_FRAME_BYTES + 1, 0))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 65536"):
        server.next_event()
    assert server.state is State.ERROR
    with pytest.raises(RemoteProtocolError):  # stays failed
        server.next_event()


def test_frame_limit_grows_after_hello_but_still_binds():
    client, server = pair(max_frame_bytes=1 << 20)
    big = client.send(PutModule(id=1, wasm=b"\0" * (HANDSHAKE_MAX_FRAME_BYTES * 2)))
    server.receive_data(big)
    assert isinstance(server.next_event(), PutModule)
    server.receive_data(struct.pack(">II", (1 << 20) + 1, 0))
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        server.next_event()


def test_sending_more_than_the_peer_accepts_is_a_local_error():
    client, server = pair(max_frame_bytes=128 << 10)
    with pytest.raises(LocalProtocolError, match="accepts at most"):
        client.send(PutModule(id=1, wasm=b"x" * (200 << 10)))
    assert client.state is State.READY  # nothing was sent, nothing broke


def test_garbage_is_refused():
    server = Connection()
    server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(RemoteProtocolError):
        server.next_event()


@pytest.mark.parametrize("payload", [
    b"\xc1",                              # a byte msgpack never uses
    msgpack.packb({"kind": "hello"}),     # not [kind, fields]
    msgpack.packb(["hello", {}, 1]),
    msgpack.packb(["hello", {"versions": [1]}]),  # fields missing
    msgpack.packb([1, {}]),
    msgpack.packb(["hello", {"versions": [1], "name": "n", "role": "app",
                             "max_frame_bytes": True}]),  # bool is not an int
    msgpack.packb(["hello", {"versions": [1], "name": "n", "role": "app",
                             "max_frame_bytes": 1 << 20, "colour": "red"}]),
    msgpack.packb(["hello", msgpack.ExtType(5, b"x")]),
    msgpack.packb(["hello", {msgpack.ExtType(5, b"x"): 1}]),
    msgpack.packb(["hello", {1: 2}]),
    b"\x92\xa5hello\x81\xa4name",        # truncated inside
])
def test_malformed_payloads_with_a_valid_checksum_are_refused(payload):
    server = Connection()
    server.receive_data(frame(payload))
    with pytest.raises(RemoteProtocolError):
        server.next_event()
    assert server.state is State.ERROR


def test_unknown_message_kind_is_refused():
    client, server = pair()
    server.receive_data(frame(msgpack.packb(["teleport", {"id": 1}])))
    with pytest.raises(RemoteProtocolError, match="unknown message kind 'teleport'"):
        server.next_event()


def test_checksum_mismatch_is_refused():
    client, server = pair()
    data = bytearray(client.send(Status(id=1)))
    data[4] ^= 0xFF
    server.receive_data(bytes(data))
    with pytest.raises(RemoteProtocolError, match="checksum"):
        server.next_event()


def test_one_byte_pieces_reassemble():
    client, server = pair()
    sent = [Call(id=i, workload="w", export="inc", args=(i, -i, 0.5)) for i in range(5)]
    data = b"".join(client.send(m) for m in sent)
    received = []
    for i in range(len(data)):
        server.receive_data(data[i:i + 1])
        received += events(server)
    assert received == sent


def test_end_of_stream_between_frames_closes_and_inside_a_frame_fails():
    client, server = pair()
    server.receive_data(b"")
    assert server.next_event() == ConnectionClosed()
    assert server.next_event() == ConnectionClosed()  # stays closed
    assert server.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        server.send(Status(id=1))

    client, server = pair()
    server.receive_data(client.send(Status(id=1))[:-1])
    server.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        server.next_event()


def test_goodbye_closes_with_its_reason():
    client, server = pair()
    server.receive_data(client.send(Goodbye(reason="bye")))
    assert client.state is State.CLOSED
    assert server.next_event() == ConnectionClosed(None, "bye")
    assert server.state is State.PARTING
    server.send(Goodbye())
    assert server.state is State.CLOSED


def test_requests_before_a_goodbye_are_still_answered_and_nothing_else_is_sent():
    """A pipelined batch may end with a Goodbye: its requests get their replies, then the receiver's Goodbye."""
    client, server = pair()
    server.receive_data(client.send(Ping(id=1)) + client.send(Status(id=2)) + client.send(Goodbye()))
    assert events(server) == [Ping(id=1), Status(id=2), ConnectionClosed()]
    server.receive_data(frame(msgpack.packb(["ping", {"id": 3}])))  # after its Goodbye: never read
    assert server.next_event() == ConnectionClosed()
    assert server.their_requests_pending == 2
    server.send(ErrorReply(id=2, code=ErrorCode.BAD_REQUEST, message="answered after the Goodbye"))
    with pytest.raises(LocalProtocolError):
        server.send(Done(id=3))  # no such request
    with pytest.raises(LocalProtocolError):
        server.send(Ping(id=4))  # nobody would answer it
    assert server.state is State.PARTING
    server.send(Goodbye())
    assert server.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        server.send(ErrorReply(id=1, code=ErrorCode.INTERNAL, message="too late"))


def test_after_a_remote_error_pending_requests_may_be_answered_until_our_goodbye():
    """Replies queued behind a slow reader when the peer's next frame broke the protocol were dropped."""
    client, server = pair()
    server.receive_data(client.send(Ping(id=1)) + client.send(Status(id=2)) + frame(b"\xc1"))
    assert server.next_event() == Ping(id=1)
    assert server.next_event() == Status(id=2)
    with pytest.raises(RemoteProtocolError):
        server.next_event()
    assert server.state is State.ERROR
    server.send(ErrorReply(id=1, code=ErrorCode.BAD_REQUEST, message="received before the bad frame"))
    with pytest.raises(LocalProtocolError):
        server.send(Done(id=3))  # no such request
    with pytest.raises(LocalProtocolError):
        server.send(Ping(id=4))  # no new requests
    server.send(Goodbye(code=ErrorCode.PROTOCOL_ERROR))
    with pytest.raises(LocalProtocolError):
        server.send(ErrorReply(id=2, code=ErrorCode.BAD_REQUEST, message="after our Goodbye"))


# --- request ids --------------------------------------------------------------------


def test_replies_must_match_pending_requests():
    client, server = pair()
    server.receive_data(client.send(HasModule(id=7, sha256="ab")))
    assert server.next_event() == HasModule(id=7, sha256="ab")
    assert server.their_requests_pending == 1
    with pytest.raises(LocalProtocolError, match="no request 8"):
        server.send(ModuleStatus(id=8, present=True))
    with pytest.raises(LocalProtocolError, match="answered by ModuleStatus"):
        server.send(Done(id=7))
    client.receive_data(server.send(ModuleStatus(id=7, present=False)))
    assert client.next_event() == ModuleStatus(id=7, present=False)
    assert server.their_requests_pending == client.our_requests_pending == 0


def test_error_reply_answers_any_request():
    client, server = pair()
    server.receive_data(client.send(Call(id=1, workload="w", export="f")))
    server.next_event()
    client.receive_data(server.send(ErrorReply(id=1, code=ErrorCode.WORKLOAD_TRAP, message="x")))
    assert client.next_event().code is ErrorCode.WORKLOAD_TRAP


def test_reply_to_unknown_request_is_a_remote_error():
    client, server = pair()
    client.receive_data(frame(encode_message(Done(id=3))))
    with pytest.raises(RemoteProtocolError, match="unknown request id 3"):
        client.next_event()


def test_wrong_reply_type_is_a_remote_error():
    client, server = pair()
    client.send(Status(id=1))
    client.receive_data(frame(encode_message(Done(id=1))))
    with pytest.raises(RemoteProtocolError, match="Status answered by Done"):
        client.next_event()


def test_duplicate_request_ids_are_refused_both_ways():
    client, server = pair()
    client.send(Status(id=1))
    with pytest.raises(LocalProtocolError, match="already awaiting"):
        client.send(Status(id=1))
    server.receive_data(frame(encode_message(Status(id=1))) * 2)
    server.next_event()
    with pytest.raises(RemoteProtocolError, match="already in flight"):
        server.next_event()


def test_unregistered_messages_cannot_be_sent():
    @dataclass(frozen=True, kw_only=True)
    class Sneaky(Request):
        pass

    client, _ = pair()
    with pytest.raises(LocalProtocolError, match="not a registered message"):
        client.send(Sneaky(id=1))


def test_out_of_range_values_are_local_errors():
    client, _ = pair()
    with pytest.raises(LocalProtocolError):
        client.send(Call(id=1, workload="w", export="f", args=(1 << 70,)))
    with pytest.raises(LocalProtocolError):
        client.send(Call(id=2, workload="w", export="f", args=("text",)))


# --- the registry: later packages add messages -------------------------------------


def test_registry_takes_new_messages_and_refuses_duplicates():
    @message("test_echo_reply")
    class EchoReply(Reply):
        data: bytes

    @message("test_echo", reply=EchoReply, roles=ANY_ROLE)
    class Echo(Request):
        data: bytes

    assert message_class("test_echo") is Echo
    client, server = pair()
    server.receive_data(client.send(Echo(id=1, data=b"hi")))
    assert server.next_event() == Echo(id=1, data=b"hi")
    client.receive_data(server.send(EchoReply(id=1, data=b"hi")))
    assert client.next_event() == EchoReply(id=1, data=b"hi")

    with pytest.raises(LocalProtocolError, match="already registered"):
        register("test_echo", reply=EchoReply, roles=ANY_ROLE)(Echo)
    with pytest.raises(LocalProtocolError, match="name a reply class"):
        register("test_echo_2", roles=ANY_ROLE)(Echo)


# --- property tests over every registered message ----------------------------------

_INT64 = st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
_FLOAT = st.floats(allow_nan=False)
_TEXT = st.text(max_size=12)
_PLAIN = st.recursive(
    st.none() | st.booleans() | _INT64 | _FLOAT | _TEXT | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)


def strategy_for(tp: Any) -> st.SearchStrategy:
    """A hypothesis strategy for values of a wire field type."""
    if tp is Any:
        return _PLAIN
    if tp is type(None):
        return st.none()
    if tp is Code:
        return st.from_regex(r"[a-z][a-z0-9_]{0,63}", fullmatch=True)
    simple = {int: _INT64, float: _FLOAT, bool: st.booleans(), str: _TEXT, bytes: st.binary(max_size=64)}
    if tp in simple:
        return simple[tp]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return st.builds(tp, **{f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(tp)})
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([strategy_for(a) for a in args])
    if origin is tuple:
        return st.lists(strategy_for(args[0]), max_size=4).map(tuple)
    if origin is dict:
        return st.dictionaries(_TEXT, strategy_for(args[1]), max_size=3)
    raise TypeError(tp)


_BUILTIN_KINDS = [k for k in registered_kinds() if not k.startswith("test_")]
any_message = st.sampled_from(_BUILTIN_KINDS).flatmap(lambda k: strategy_for(message_class(k)))


@given(any_message)
def test_every_message_round_trips(message):
    assert decode_message(encode_message(message)) == message


@given(st.lists(st.sampled_from([m for m in _BUILTIN_KINDS
                                 if issubclass(message_class(m), Request)]), max_size=8),
       st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_requests_survive_any_chunking(kinds, data):
    client, server = pair()
    sent = [data.draw(strategy_for(message_class(k))) for k in kinds]
    sent = [dataclasses.replace(m, id=i) for i, m in enumerate(sent)]
    stream = b"".join(client.send(m) for m in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    received = []
    for start, end in zip([0] + cuts, cuts + [len(stream)]):
        if end > start:  # b"" would mean end of stream
            server.receive_data(stream[start:end])
            received += events(server)
    assert received == sent


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_remote_errors(data):
    client, server = pair()
    server.receive_data(data)
    server.receive_data(b"")
    try:
        events(server)
    except RemoteProtocolError:
        assert server.state is State.ERROR


# --- mutation fuzzing --------------------------------------------------------------

SAMPLES = [
    Call(id=1, workload="w-1", export="incr", args=(1, -2, 3.5)),
    CallResult(id=2, values=(1 << 40,)),
    Deploy(id=3, sha256="ab" * 32, workload_id=None, app="app", args=("x",), env={"A": "b"}),
    PutModule(id=4, wasm=bytes(range(256))),
    Pong(id=5, node=NodeSummary(name="n", role="edge", address="127.0.0.1:1", cores=2,
                                memory_total_bytes=1 << 30, memory_free_bytes=1 << 29,
                                load_1m=0.5, workloads=3, capabilities=("wasi",))),
    ErrorReply(id=6, code=ErrorCode.UNKNOWN_EXPORT, message="no export"),
]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf)) if buf else 0
        if op == 0 and buf:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[pos] = rng.randrange(256)
        elif op == 2:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and buf:
            del buf[pos:pos + rng.randint(1, 8)]
        elif op == 4:
            del buf[rng.randrange(len(buf) + 1):]
        elif op == 5 and len(buf) >= 4:  # the length field specifically
            buf[rng.randrange(4)] = rng.randrange(256)
    return bytes(buf)


def _feed_frame(data: bytes, expected: Message, *, request_for_reply) -> str:
    """Feed one (mutated) frame then end-of-stream; return the outcome or fail the test."""
    client, server = pair()
    if request_for_reply is not None:  # a reply is only legal while its request is pending
        server.send(request_for_reply(expected.id))
    server.receive_data(data)
    server.receive_data(b"")
    try:
        got = events(server)
    except RemoteProtocolError:
        assert server.state is State.ERROR
        return "rejected"
    sent = [expected] if data else []  # truncated to nothing: a clean close
    assert got == sent + [ConnectionClosed()], f"mutation decoded to {got!r}"
    return "intact"


# The request each sample reply answers.
_REQUEST_FOR = {
    CallResult: lambda id: Call(id=id, workload="w", export="f"),
    Pong: lambda id: Ping(id=id),
    ErrorReply: lambda id: Status(id=id),
}


@pytest.mark.parametrize("seed", range(4))
def test_mutated_frames_are_rejected_or_decode_to_what_was_sent(seed):
    rng = random.Random(seed)
    outcomes = {"rejected": 0, "intact": 0}
    for i in range(1500):
        message = SAMPLES[i % len(SAMPLES)]
        mutated = _mutate(rng, frame(encode_message(message)))
        outcomes[_feed_frame(mutated, message, request_for_reply=_REQUEST_FOR.get(type(message)))] += 1
    assert outcomes["rejected"] > 1000  # the mutations do bite


@pytest.mark.parametrize("seed", range(2))
def test_mutated_payloads_past_the_checksum_never_raise_other_errors(seed):
    """Fuzz the decoder itself: recompute the CRC so mutations reach msgpack and the schema."""
    rng = random.Random(seed)
    decoded = 0
    for i in range(2000):
        message = SAMPLES[i % len(SAMPLES)]
        mutated = _mutate(rng, encode_message(message))
        try:
            result = decode_message(mutated)
        except RemoteProtocolError:
            continue
        decoded += 1
        assert isinstance(result, Message)
        assert decode_message(encode_message(result)) == result  # well-typed, re-encodable
    assert decoded < 2000
