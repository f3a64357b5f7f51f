"""Nodes: the migrate-node daemon, its wire protocol, transport and client.

Public names are re-exported here from the private modules that define them;
``tests/nodes/test_exports.py`` guards this list.
"""

from ._errors import (
    ConfigError,
    ConnectionFailed,
    LocalProtocolError,
    NodeError,
    RemoteNodeError,
    RemoteProtocolError,
)

__all__ = [
    "ConfigError",
    "ConnectionFailed",
    "LocalProtocolError",
    "NodeError",
    "RemoteNodeError",
    "RemoteProtocolError",
]
