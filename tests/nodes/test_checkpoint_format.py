"""The checkpoint manifest decoder, fuzzed: hostile bytes and hostile entries are refused as damage, never crash a restore."""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workloads
from nodes import DamagedState, Host, Limits
from nodes import _checkpoints as checkpoints
from nodes._checkpoint_format import MANIFEST, read_manifest

FAST = Limits(call_timeout_s=0.5)
_PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats() | st.text(max_size=12)
    | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)
_ENTRY_FIELDS = ("id", "module_sha256", "app", "calls", "args", "env", "preopen", "memory_limit_bytes",
                 "monotonic_ns", "extensions")


@functools.cache
def _saved_data_dir() -> Path:
    """A data directory whose checkpoint holds counter "a" at 7 (made once; examples work on copies)."""
    data = Path(tempfile.mkdtemp(prefix="wm-manifest-fuzz-")) / "data"
    with Host(data, limits=FAST) as host:
        sha = host.add_module(workloads.load("counter"))
        host.deploy(sha, workload_id="a")
        host.call("a", "incr", [7])
        checkpoints.save(host, data, records={"a": {"test": {"epoch": 3}}})
    return data


@given(st.binary(max_size=300))
def test_any_manifest_bytes_read_as_a_manifest_or_damage(raw):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / MANIFEST).write_bytes(raw)
        try:
            manifest = read_manifest(Path(tmp))
        except DamagedState:
            return
        assert isinstance(manifest, dict) and isinstance(manifest["workloads"], list)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_ENTRY_FIELDS), _PLAIN, st.booleans())
def test_a_hostile_manifest_entry_restores_exactly_or_is_refused_as_damage(field, value, drop):
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        shutil.copytree(_saved_data_dir(), data)
        path = data / "checkpoints" / MANIFEST
        manifest = msgpack.unpackb(path.read_bytes())
        if drop:
            del manifest["workloads"][0][field]
        else:
            manifest["workloads"][0][field] = value
        path.write_bytes(msgpack.packb(manifest))
        try:
            saved = checkpoints.find(data)
            with Host(data, limits=FAST) as host:
                restored = checkpoints.restore(host, saved)
                counters = {w.workload_id: host.call(w.workload_id, "get", []) for w in host.workloads()}
        except DamagedState:
            return
        assert restored.workloads == tuple(counters)
        assert set(counters.values()) <= {7}
