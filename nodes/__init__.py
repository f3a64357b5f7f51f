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
from ._discovery import browse_mdns
from ._daemon import serve
from ._switching import move_work
from ._error_codes import code_for, error_reply
from ._errors import (
    CheckpointFailed,
    ConfigError,
    ConnectionFailed,
    DamagedState,
    Forbidden,
    LocalProtocolError,
    MessageFieldError,
    NodeError,
    NodeShuttingDown,
    RemoteNodeError,
    RemoteProtocolError,
    UndecryptableState,
)
from ._groups import unwrap_group
from ._host_errors import (
    BadArguments,
    CallCancelled,
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
from ._guest_time import CancelToken
from ._hold import Held
from ._fed_workload import FedWorkload
from ._hosting import Host, HostStats, WorkloadInfo
from ._bulk import BULK_NICE, run_bulk
from ._in_use import NOT_NOW, NotNow
from ._limits import Limits
from ._logging import configure_logging, embedded_logging
from ._metrics import PREFIX as METRICS_PREFIX
from ._metrics import Buckets
from ._messages import (
    ANY_ROLE,
    NODE_ONLY,
    PROTOCOL_VERSIONS,
    Done,
    ErrorCode,
    ErrorReply,
    ExportSignature,
    HasModule,
    Hello,
    Message,
    NodeSummary,
    PeerSummary,
    PutModule,
    ReadMemory,
    Reply,
    Request,
    StatusReport,
    WorkloadSummary,
    message,
    register,
)
from ._member_messages import BadMemberEntry, MemberEntry, MemberRecord, Members
from ._membership import Membership
from ._node import Node
from ._plugin import Handler, Plugin, Session
from ._instance_pool import MAX_INSTANCES as MAX_POOL_INSTANCES
from ._instance_pool import InstancePool, PoolStats
from ._protocol import Connection, ConnectionClosed, State
from ._replay import CallInputs, ReplayDivergence, ReplayUnsupported
from ._tls import client_context, init_ca, issue_cert, own_identity, server_context
from ._transport import RECEIVE_BYTES

__all__ = [
    "NOT_NOW",
    "NotNow",
    "BULK_NICE",
    "run_bulk",
    "CallCancelled",
    "CancelToken",
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
    "ErrorReply", "HasModule",
    "Forbidden",
    "Handler",
    "Held",
    "Hello",
    "FedWorkload",
    "Host",
    "HostClosed",
    "HostError",
    "HostStats",
    "InvalidModule",
    "Limits",
    "BadMemberEntry",
    "MemberEntry",
    "MemberRecord",
    "Members",
    "Membership",
    "LocalProtocolError",
    "MessageFieldError",
    "Message",
    "NODE_ONLY",
    "Node",
    "NodeClient",
    "NodeConfig",
    "NodeError",
    "NodeShuttingDown",
    "NodeSummary",
    "PROTOCOL_VERSIONS",
    "PeerSummary", "PutModule",
    "Plugin",
    "InstancePool",
    "MAX_POOL_INSTANCES",
    "PoolStats",
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
    "ExportSignature",
    "WorkloadTimeout",
    "DeadlineExceeded",
    "WorkloadTrap",
    "client_context",
    "browse_mdns",
    "check_call_args",
    "code_for",
    "Buckets",
    "METRICS_PREFIX",
    "configure_logging",
    "embedded_logging",
    "crash_point",
    "crash_point_async",
    "error_reply",
    "init_ca",
    "issue_cert",
    "message",
    "move_work",
    "open_engine",
    "own_identity",
    "parse_address",
    "register",
    "resolve_config",
    "role_table",
    "serve",
    "server_context",
    "unwrap_group",
]
