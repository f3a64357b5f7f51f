"""Nodes: the migrate-node daemon, its wire protocol, transport, client and workload hosting.

Public names are re-exported here from the private modules that define them;
``tests/nodes/test_exports.py`` guards this list.
"""

from ._client import NodeClient
from ._config import Address, NodeConfig, parse_address, resolve_config
from ._daemon import Node, register_checkpoint_extension, register_handler, register_status, serve
from ._errors import (
    CheckpointFailed,
    ConfigError,
    ConnectionFailed,
    DamagedState,
    LocalProtocolError,
    NodeError,
    NodeShuttingDown,
    RemoteNodeError,
    RemoteProtocolError,
)
from ._host_errors import (
    BadArguments,
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
from ._hosting import Host, HostStats, WorkloadInfo
from ._limits import Limits
from ._messages import (
    PROTOCOL_VERSIONS,
    ErrorCode,
    Hello,
    Message,
    NodeSummary,
    PeerSummary,
    Reply,
    Request,
    StatusReport,
    WorkloadSummary,
    register,
)
from ._protocol import Connection, ConnectionClosed, State
from ._replay import CallInputs, ReplayDivergence, ReplayUnsupported
from ._tls import client_context, init_ca, issue_cert, server_context

__all__ = [
    "CallInputs",
    "ReplayDivergence",
    "ReplayUnsupported",
    "PROTOCOL_VERSIONS",
    "Address",
    "BadArguments",
    "CheckpointFailed",
    "ConfigError",
    "Connection",
    "ConnectionClosed",
    "ConnectionFailed",
    "DamagedState",
    "ErrorCode",
    "Hello",
    "Host",
    "HostClosed",
    "HostError",
    "HostStats",
    "InvalidModule",
    "Limits",
    "LocalProtocolError",
    "Message",
    "Node",
    "NodeClient",
    "NodeConfig",
    "NodeError",
    "NodeShuttingDown",
    "NodeSummary",
    "PeerSummary",
    "RemoteNodeError",
    "RemoteProtocolError",
    "Reply",
    "Request",
    "RequestError",
    "ResourceLimitExceeded",
    "SnapshotFailed",
    "State",
    "StatusReport",
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
    "WorkloadTrap",
    "client_context",
    "init_ca",
    "issue_cert",
    "parse_address",
    "register",
    "register_checkpoint_extension",
    "register_handler",
    "register_status",
    "resolve_config",
    "serve",
    "server_context",
]
