"""The messages nodes and clients exchange, and the registry that names them.

Every message is a frozen, keyword-only dataclass registered under a short
``kind`` string, which is what travels on the wire.  Three families:

* ``Hello`` and ``Goodbye`` open and close a connection;
* ``Request`` subclasses carry an ``id`` chosen by the sender, unique among
  its requests still awaiting a reply on that connection;
* ``Reply`` subclasses answer one request by ``id``.  Each request class
  names the reply class that answers it; ``ErrorReply`` may answer any.

A message class is declared with ``message`` (which makes it such a
dataclass and registers it).  Other packages (the migration coordinator)
add their own messages the same way, and their own error codes (any well-formed
code string, ``nodes._wire.Code``); the protocol needs no change to carry
them.

Longer than 400 lines: it is the catalogue of the node protocol's
messages, one small dataclass each, with the registry that names them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, dataclass_transform

from ._errors import LocalProtocolError
from ._tls import CERT_ROLES
from ._wire import Code, schema_for

#: Versions of this protocol that this code speaks, oldest first.  Each side
#: offers its list in Hello and both use the highest version in common.
PROTOCOL_VERSIONS: tuple[int, ...] = (1,)

#: Roles a Hello may name: the node roles of the issue, and "app" for an
#: application or the CLI, which connects but does not host workloads.
ROLES = ("client", "edge", "cloud", "app")

#: Who may send a request, by the role of the sender's certificate
#: ("node" or "client"): every request class declares one of these, or
#: another non-empty set of certificate roles (``nodes._authorization``).
ANY_ROLE: frozenset[str] = frozenset(CERT_ROLES)
NODE_ONLY: frozenset[str] = frozenset({"node"})


class ErrorCode(enum.StrEnum):
    """Why a request failed, as carried by ErrorReply and Goodbye: the nodes package's own codes.

    An ErrorReply may carry other packages' codes too, as plain strings (``Code``).
    """

    # the connection or the node
    PROTOCOL_ERROR = "protocol_error"
    FORBIDDEN = "forbidden"            # the sender's certificate may not send this request
    UNSUPPORTED = "unsupported"        # a known request this node does not serve
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"              # a bug on the node; it is logged there
    # the hosting layer's HostError family (nodes._host_errors), one code per class
    HOST_ERROR = "host_error"
    HOST_CLOSED = "host_closed"
    BAD_REQUEST = "bad_request"
    UNKNOWN_MODULE = "unknown_module"
    UNKNOWN_WORKLOAD = "unknown_workload"
    UNKNOWN_EXPORT = "unknown_export"
    BAD_ARGUMENTS = "bad_arguments"
    WORKLOAD_EXISTS = "workload_exists"
    INVALID_MODULE = "invalid_module"
    UNSUPPORTED_IMPORTS = "unsupported_imports"
    RESOURCE_LIMIT = "resource_limit"
    WORKLOAD_ERROR = "workload_error"
    WORKLOAD_TRAP = "workload_trap"
    WORKLOAD_TIMEOUT = "workload_timeout"
    DEADLINE_EXCEEDED = "deadline_exceeded"  # a call ran past its deadline and was stopped
    WORKLOAD_EXITED = "workload_exited"
    CALL_CANCELLED = "call_cancelled"  # its caller cancelled it: stopped while it ran, or never started
    SNAPSHOT_FAILED = "snapshot_failed"
    REPLAY_DIVERGED = "replay_diverged"
    REPLAY_UNSUPPORTED = "replay_unsupported"


@dataclass(frozen=True, kw_only=True, slots=True)
class Message:
    """Base of everything that travels in a frame."""

    kind: ClassVar[str] = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Reply(Message):
    """Base of the answers to requests; ``id`` is the answered request's."""

    id: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Request(Message):
    """Base of requests; ``id`` matches the reply to the request."""

    reply: ClassVar[type[Reply]] = Reply
    #: the certificate roles that may send it, declared with ``register``
    roles: ClassVar[frozenset[str]] = frozenset()
    id: int


_REGISTRY: dict[str, type[Message]] = {}

M = TypeVar("M", bound=Message)


def register(kind: str, *, reply: type[Reply] | None = None,
             roles: frozenset[str] | None = None) -> Callable[[type[M]], type[M]]:
    """Register a message class under ``kind`` (and, for requests, its reply class and ``roles``).

    A request names the certificate roles that may send it (``ANY_ROLE``,
    ``NODE_ONLY``): nothing is open by default.  Raises LocalProtocolError
    if ``kind`` is taken, the class is not a Message, or a request lacks
    its reply class or its roles (or another message has them).
    """
    def decorate(cls: type[M]) -> type[M]:
        if kind in _REGISTRY:
            raise LocalProtocolError(f"message kind {kind!r} is already registered")
        if not issubclass(cls, Message):
            raise LocalProtocolError(f"{cls.__name__} is not a Message")
        if issubclass(cls, Request) != (reply is not None):
            raise LocalProtocolError("requests, and only requests, name a reply class")
        if issubclass(cls, Request) != (roles is not None):
            raise LocalProtocolError(f"requests, and only requests, name the roles that may send them "
                                     f"({kind!r}: roles={roles!r})")
        if roles is not None and not (roles and set(roles) <= set(CERT_ROLES)):
            raise LocalProtocolError(f"{kind!r}: roles must be a non-empty set of {', '.join(CERT_ROLES)}, "
                                     f"got {sorted(roles)!r}")
        schema_for(cls)  # fail now, not on first use, if a field has no wire form
        cls.kind = kind
        if issubclass(cls, Request) and reply is not None and roles is not None:  # all or none: checked above
            cls.reply = reply
            cls.roles = frozenset(roles)
        _REGISTRY[kind] = cls
        return cls
    return decorate


@dataclass_transform(frozen_default=True, kw_only_default=True)
def message(kind: str, *, reply: type[Reply] | None = None,
            roles: frozenset[str] | None = None) -> Callable[[type[M]], type[M]]:
    """Declare a wire message: make the class a frozen, keyword-only, slotted dataclass and ``register`` it.

    Raises what ``register`` raises.
    """
    def declare(cls: type[M]) -> type[M]:
        return register(kind, reply=reply, roles=roles)(dataclass(frozen=True, kw_only=True, slots=True)(cls))
    return declare


def message_class(kind: str) -> type[Message] | None:
    """Return the class registered under ``kind``, or None."""
    return _REGISTRY.get(kind)


def registered_kinds() -> tuple[str, ...]:
    """Return every registered kind (for tests and diagnostics)."""
    return tuple(_REGISTRY)


# --- connection lifecycle ------------------------------------------------

@message("hello")
class Hello(Message):
    """First message each way: who we are and what we speak."""

    versions: tuple[int, ...]
    name: str
    role: str
    max_frame_bytes: int
    capabilities: tuple[str, ...] = ()
    address: str | None = None  # where a node listens, so peers can call back


@message("goodbye")
class Goodbye(Message):
    """Last message: the sender closes the connection, optionally saying why."""

    code: ErrorCode | None = None
    reason: str = ""


# --- records nested in replies ------------------------------------------

@dataclass(frozen=True, kw_only=True, slots=True)
class NodeSummary:
    """A node's identity and capacity, as of the moment it answered."""

    name: str
    role: str
    address: str | None
    cores: int
    memory_total_bytes: int
    memory_free_bytes: int
    load_1m: float
    workloads: int
    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkloadSummary:
    """One hosted workload (the wire form of the host's WorkloadInfo)."""

    workload_id: str
    module_sha256: str
    app: str
    state: str
    memory_bytes: int
    memory_limit_bytes: int
    calls: int
    traps: int
    timeouts: int
    lifecycle: str = ""  # what plugins say of it (``Plugin.describe``): "expiring at ...", "detached"...


@dataclass(frozen=True, kw_only=True, slots=True)
class ExportSignature:
    """One callable export: its name and its parameter and result types ("i32", "f64", "v128"...)."""

    name: str
    params: tuple[str, ...]
    results: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerSummary:
    """What a node knows about one peer; None where it has not heard yet."""

    address: str
    connected: bool
    name: str | None = None
    role: str | None = None
    cores: int | None = None
    memory_free_bytes: int | None = None
    load_1m: float | None = None
    workloads: int | None = None
    rtt_s: float | None = None
    last_seen_s_ago: float | None = None


# --- replies --------------------------------------------------------------

@message("error")
class ErrorReply(Reply):
    """The request failed; ``code`` says how.

    ``code`` is one of the nodes package's ErrorCodes, or another package's
    code (its own StrEnum member; a plain ``str`` once it has crossed the
    wire, equal to that member).  ``details`` carries the error's
    attributes (``workload_id``, ``trap_code``, ``limit``...) so the client
    can raise the same class.
    """

    code: ErrorCode | Code
    message: str = ""
    details: dict[str, Any] | None = None


@message("done")
class Done(Reply):
    """The request succeeded and has nothing to return."""


@message("module_status")
class ModuleStatus(Reply):
    present: bool


@message("module_stored")
class ModuleStored(Reply):
    sha256: str


@message("deployed")
class Deployed(Reply):
    workload: WorkloadSummary


@message("call_result")
class CallResult(Reply):
    values: tuple[int | float, ...]


@message("memory_data")
class MemoryData(Reply):
    data: bytes


@message("output_data")
class OutputData(Reply):
    stdout: bytes
    stderr: bytes


@message("export_list")
class ExportList(Reply):
    exports: tuple[ExportSignature, ...]


@message("workload_list")
class WorkloadList(Reply):
    workloads: tuple[WorkloadSummary, ...]


@message("peer_list")
class PeerList(Reply):
    peers: tuple[PeerSummary, ...]


@message("pong")
class Pong(Reply):
    node: NodeSummary


@message("status_report")
class StatusReport(Reply):
    """Everything ``migrate-node status`` shows."""

    node: NodeSummary
    workloads: tuple[WorkloadSummary, ...]
    peers: tuple[PeerSummary, ...]
    host: dict[str, Any]
    counters: dict[str, int]
    migrations: tuple[Any, ...] = ()  # filled in by the migration coordinator
    members: tuple[Any, ...] = ()  # the membership view (nodes._gossip), as MemberRecord maps


# --- requests -------------------------------------------------------------

@message("has_module", reply=ModuleStatus, roles=ANY_ROLE)
class HasModule(Request):
    """Does the node hold the module with this sha256 (hex)?"""

    sha256: str


@message("put_module", reply=ModuleStored, roles=ANY_ROLE)
class PutModule(Request):
    """Store (and compile) a module; the reply names its sha256."""

    wasm: bytes


@message("deploy", reply=Deployed, roles=ANY_ROLE)
class Deploy(Request):
    """Instantiate a stored module as a new workload, for ``app`` ("": the sender's own; ``nodes._authorization``)."""

    sha256: str
    workload_id: str | None = None
    app: str = ""
    args: tuple[str, ...] = ()
    env: dict[str, str] | None = None


@message("call", reply=CallResult, roles=ANY_ROLE)
class Call(Request):
    """Call an export of a workload with numeric arguments."""

    workload: str
    export: str
    args: tuple[int | float, ...] = ()


@message("read_memory", reply=MemoryData, roles=ANY_ROLE)
class ReadMemory(Request):
    workload: str
    offset: int
    length: int


@message("write_memory", reply=Done, roles=ANY_ROLE)
class WriteMemory(Request):
    workload: str
    offset: int
    data: bytes


@message("output", reply=OutputData, roles=ANY_ROLE)
class Output(Request):
    """The workload's captured stdout and stderr so far."""

    workload: str


@message("exports", reply=ExportList, roles=ANY_ROLE)
class Exports(Request):
    """The workload's callable exports, with their signatures (reserved ``__wm_`` ones left out)."""

    workload: str


@message("remove", reply=Done, roles=ANY_ROLE)
class Remove(Request):
    workload: str


@message("hibernate", reply=Done, roles=ANY_ROLE)
class Hibernate(Request):
    """Hibernate the workload now (``nodes._hibernate``): its next use wakes it."""

    workload: str


@message("list_workloads", reply=WorkloadList, roles=ANY_ROLE)
class ListWorkloads(Request):
    pass


@message("peers", reply=PeerList, roles=ANY_ROLE)
class Peers(Request):
    pass


@message("status", reply=StatusReport, roles=ANY_ROLE)
class Status(Request):
    pass


@message("ping", reply=Pong, roles=ANY_ROLE)
class Ping(Request):
    """Liveness and round-trip probe; the reply carries the node's current summary."""
