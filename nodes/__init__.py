"""Nodes: the migrate-node daemon, its wire protocol, transport, client and workload hosting.

Public names are re-exported here from the private modules that define them;
``tests/nodes/test_exports.py`` guards this list.  Other packages add
requests, per-node state, status and checkpoint records to a node with a
``Plugin`` passed to ``serve``; the nodes package imports none of them.
"""

from ._authorization import role_table
from ._client import NodeClient
from ._config import Address, NodeConfig, parse_address, resolve_config
from ._crash import crash_point, crash_point_async
from ._daemon import serve
from ._error_codes import code_for, error_reply
from ._errors import (
    CheckpointFailed,
    ConfigError,
    ConnectionFailed,
    DamagedState,
    Forbidden,
    LocalProtocolError,
    NodeError,
    NodeShuttingDown,
    RemoteNodeError,
    RemoteProtocolError,
    UndecryptableState,
)
from ._groups import unwrap_group
from ._host_errors import (
    BadArguments,
    DeadlineExceeded,
    HostClosed,
    HostError,
    InvalidModule,
    RequestError,
    ResourceLimitExceeded,
    SnapshotFailed,
    UnknownExport,
    UnknownModule,
    UnknownWorkload,
    UnsupportedImports,
    WorkloadError,
    WorkloadExists,
    WorkloadExited,
    WorkloadTimeout,
    WorkloadTrap,
)
from ._call_args import check_call_args
from ._engine import EPOCH_TICK_S, open_engine
from ._hold import Held
from ._hosting import Host, HostStats, WorkloadInfo
from ._limits import Limits
from ._logging import configure_logging
from ._messages import (
    ANY_ROLE,
    NODE_ONLY,
    PROTOCOL_VERSIONS,
    Done,
    ErrorCode,
    ErrorReply,
    Hello,
    Message,
    NodeSummary,
    PeerSummary,
    ReadMemory,
    Reply,
    Request,
    StatusReport,
    WorkloadSummary,
    message,
    register,
)
from ._node import Node
from ._plugin import Handler, Plugin, Session
from ._protocol import Connection, ConnectionClosed, State
from ._replay import CallInputs, ReplayDivergence, ReplayUnsupported
from ._tls import client_context, init_ca, issue_cert, server_context
from ._transport import RECEIVE_BYTES

__all__ = [
    "ANY_ROLE",
    "Address",
    "BadArguments",
    "CallInputs",
    "CheckpointFailed",
    "ConfigError",
    "Connection",
    "ConnectionClosed",
    "ConnectionFailed",
    "DamagedState",
    "Done",
    "EPOCH_TICK_S",
    "ErrorCode",
    "ErrorReply",
    "Forbidden",
    "Handler",
    "Held",
    "Hello",
    "Host",
    "HostClosed",
    "HostError",
    "HostStats",
    "InvalidModule",
    "Limits",
    "LocalProtocolError",
    "Message",
    "NODE_ONLY",
    "Node",
    "NodeClient",
    "NodeConfig",
    "NodeError",
    "NodeShuttingDown",
    "NodeSummary",
    "PROTOCOL_VERSIONS",
    "PeerSummary",
    "Plugin",
    "RECEIVE_BYTES",
    "ReadMemory",
    "RemoteNodeError",
    "RemoteProtocolError",
    "ReplayDivergence",
    "ReplayUnsupported",
    "Reply",
    "Request",
    "RequestError",
    "ResourceLimitExceeded",
    "Session",
    "SnapshotFailed",
    "State",
    "StatusReport",
    "UndecryptableState",
    "UnknownExport",
    "UnknownModule",
    "UnknownWorkload",
    "UnsupportedImports",
    "WorkloadError",
    "WorkloadExists",
    "WorkloadExited",
    "WorkloadInfo",
    "WorkloadSummary",
    "WorkloadTimeout",
    "DeadlineExceeded",
    "WorkloadTrap",
    "client_context",
    "check_call_args",
    "code_for",
    "configure_logging",
    "crash_point",
    "crash_point_async",
    "error_reply",
    "init_ca",
    "issue_cert",
    "message",
    "open_engine",
    "parse_address",
    "register",
    "resolve_config",
    "role_table",
    "serve",
    "server_context",
    "unwrap_group",
]
