"""The migrate package's public names: a change here is an API change."""

import migrate


def test_export_list_is_stable():
    assert sorted(migrate.__all__) == sorted([
        "AUTO", "Advice", "Autoplace", "DefaultPolicy", "Estimate", "Needs", "NoSuitableNode", "NodeRecord", "Placement",
        "PlacementPolicy", "Work", "LOCAL", "Action", "CallLedger", "Cluster", "Decision", "Event", "FailoverFailed", "Handle",
        "MigrateError", "MigrationFailed", "Pool", "Protection", "ProtectionStatus",
        "MigrationReport", "Outcome", "PrecopyConfig", "PrecopyPlanner", "UnknownNode",
        "WorkloadUnavailable", "connect",
    ])
    for name in migrate.__all__:
        assert getattr(migrate, name) is not None
