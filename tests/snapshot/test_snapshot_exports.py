"""The snapshot package's public names: a change here is an API change."""

import snapshot


def test_every_exported_name_exists_and_errors_share_one_base():
    for name in snapshot.__all__:
        assert hasattr(snapshot, name), name
    errors = [getattr(snapshot, n) for n in snapshot.__all__ if n.endswith("Error")]
    assert len(errors) >= 10
    assert all(issubclass(e, snapshot.SnapshotError) for e in errors)
    assert {"prepare", "capture", "restore", "Snapshot", "StateTracker", "apply_delta"} <= set(snapshot.__all__)
