"""The nodes package's public names: re-exported from private modules, and nothing missing."""

import nodes


def test_all_names_exist_and_nothing_public_is_left_out():
    for name in nodes.__all__:
        assert hasattr(nodes, name), name
    public = {n for n in vars(nodes) if not n.startswith("_")} - {"annotations"}
    modules = {n for n in public if type(getattr(nodes, n)).__name__ == "module"}
    assert public - modules == set(nodes.__all__)


def test_export_list_is_stable():
    assert sorted(nodes.__all__) == sorted([
        "ANY_ROLE", "Address", "BadArguments", "BadMemberEntry", "Buckets", "MemberEntry", "MemberRecord", "Members",
        "Membership", "NOT_NOW", "NotNow", "BULK_NICE", "run_bulk", "CallCancelled", "CallInputs", "CancelToken", "CheckpointFailed", "ConfigError", "Connection",
        "ConnectionClosed", "ConnectionFailed", "DamagedState", "DeadlineExceeded", "Done", "EPOCH_TICK_S", "ErrorCode",
        "ErrorReply", "ExportSignature", "FedWorkload", "Forbidden", "HasModule", "Handler", "Held", "Hello", "Host", "HostClosed",
        "HostError", "HostStats", "InvalidModule", "Limits", "LocalProtocolError", "Message", "MessageFieldError",
        "NODE_ONLY", "Node", "NodeClient", "NodeConfig",
        "NodeError", "NodeShuttingDown", "NodeSummary", "PROTOCOL_VERSIONS", "PeerSummary", "Plugin", "InstancePool", "MAX_POOL_INSTANCES", "PoolStats", "PutModule",
        "RECEIVE_BYTES", "ReadMemory", "RemoteNodeError", "RemoteProtocolError", "ReplayDivergence",
        "ReplayUnsupported", "Reply", "Request", "RequestError", "ResourceLimitExceeded", "Session",
        "SnapshotFailed", "State", "StatusReport", "UndecryptableState", "UnknownExport", "UnknownModule", "UnknownWorkload",
        "UnsupportedImports", "WorkloadError", "WorkloadExists", "WorkloadExited", "WorkloadInfo",
        "WorkloadSummary", "WorkloadTimeout", "WorkloadTrap", "browse_mdns", "check_call_args", "client_context",
        "code_for", "METRICS_PREFIX", "configure_logging", "embedded_logging", "crash_point", "crash_point_async",
        "error_reply", "init_ca", "issue_cert", "message", "move_work", "open_engine", "own_identity", "parse_address", "register",
        "resolve_config", "role_table", "serve", "server_context", "unwrap_group",
    ])
