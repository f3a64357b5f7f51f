"""Encryption at rest: the data key, sealed manifests, and encrypted checkpoints that refuse tampering.

Tampered checkpoints are made from real ones (a real Host's counter and
dirtier workloads) and handed to the daemon's start path, which must
refuse them with a typed error, restore nothing and change nothing on disk.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snapshot
import workloads
from nodes import ConfigError, DamagedState, Host, Limits, NodeConfig, UndecryptableState
from nodes import _at_rest as at_rest
from nodes import _checkpoints as checkpoints
from nodes._checkpoint_format import MANIFEST, SNAPSHOT_HEADER_BYTES
from nodes._daemon import _open_node
from test_saved_state import assert_refused, serve_once

FAST = Limits(call_timeout_s=5.0)
#: Incompressible, and larger than a zstd block (128 KiB): a plaintext checkpoint holds it verbatim.
PATTERN = os.urandom(256 << 10)
PROBE = PATTERN[128 << 10:(128 << 10) + 64]
PATTERN_AT = 1 << 16
FRAME_HEAD = struct.Struct(">BI")


def tree(root: Path) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, f), root): Path(d, f).read_bytes()
            for d, _, files in os.walk(root) for f in files}


def save_checkpoint(data: Path, key: bytes | None) -> dict[str, int]:
    """Save counters a (7) and b (100) and a 5 MiB dirtier d holding PATTERN; return d's checksum too."""
    with Host(data, limits=FAST) as host:
        counter = host.add_module(workloads.load("counter"))
        for workload, n in (("a", 7), ("b", 100)):
            host.deploy(counter, workload_id=workload)
            host.call(workload, "incr", [n])
        host.deploy(host.add_module(workloads.load("dirtier")), workload_id="d")
        host.call("d", "dt_init", [5])
        host.write_memory("d", PATTERN_AT, PATTERN)
        checkpoints.save(host, data, key=key, records={"a": {"test": {"epoch": 3}}})
        return {"a": 7, "b": 100, "d": host.call("d", "dt_checksum", [])}


def state_of(host: Host) -> dict[str, int]:
    out = {}
    for info in host.workloads():
        export = "dt_checksum" if info.workload_id == "d" else "get"
        out[info.workload_id] = host.call(info.workload_id, export, [])
    return out


def config(data: Path, key_file: Path, **settings) -> NodeConfig:
    return NodeConfig(name="n1", insecure=True, data_dir=data, data_key_file=key_file, **settings)


@pytest.fixture(scope="module")
def sealed(tmp_path_factory) -> tuple[Path, Path, dict[str, int]]:
    """(data dir, data key file, expected state) of an encrypted checkpoint."""
    root = tmp_path_factory.mktemp("sealed")
    key_file = root / "data.key"
    expected = save_checkpoint(root / "data", at_rest.load_data_key(key_file))
    return root / "data", key_file, expected


def refused_untouched(data: Path, key_file: Path) -> DamagedState:
    """Start a node on ``data``: it must be refused with nothing changed on disk; return the error."""
    before = tree(data)
    with pytest.raises(DamagedState) as info:
        _open_node(config(data, key_file), ())
    assert tree(data) == before
    return info.value


def test_the_data_key_is_made_once_private_and_kept(tmp_path):
    path = tmp_path / "tls" / "data.key"
    key = at_rest.load_data_key(path)
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert at_rest.load_data_key(path) == key
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 0644: others may read it"):
        at_rest.load_data_key(path)
    path.chmod(0o600)
    path.write_text("not hex\n")
    with pytest.raises(ConfigError, match="64 hex digits"):
        at_rest.load_data_key(path)
    with pytest.raises(ConfigError, match="cannot read"):
        at_rest.load_data_key(tmp_path / "absent", create=False)


def test_the_key_file_defaults_to_the_tls_dir_or_the_data_dir_without_tls(tmp_path):
    assert NodeConfig(name="n", tls_dir=tmp_path / "t").data_key_path == tmp_path / "t" / "data.key"
    assert NodeConfig(name="n", insecure=True, data_dir=tmp_path / "d").data_key_path == tmp_path / "d" / "data.key"


def test_sealing_round_trips_and_refuses_every_flip_truncation_and_other_purpose():
    key = at_rest.load_data_key(Path(tempfile.mkdtemp()) / "k")
    blob = at_rest.seal(key, b"the manifest", b"manifest")
    assert at_rest.unseal(key, blob, b"manifest", Path("m")) == b"the manifest"
    assert b"the manifest" not in blob
    bad = [bytes(blob[:i]) + bytes([blob[i] ^ 1 << bit]) + blob[i + 1:] for i in range(len(blob)) for bit in range(8)]
    bad += [blob[:i] for i in range(len(blob))]
    for candidate in bad:
        with pytest.raises(UndecryptableState):
            at_rest.unseal(key, candidate, b"manifest", Path("m"))
    with pytest.raises(UndecryptableState, match="another data key"):
        at_rest.unseal(key, blob, b"other", Path("m"))


def test_an_encrypted_checkpoint_restores_exactly_and_hides_the_plaintext(sealed, tmp_path):
    data, key_file, expected = sealed
    files = tree(data)
    assert files and not any(PROBE in body for body in files.values())
    saved = tree(data / "checkpoints")
    assert not any(b"epoch" in body for body in saved.values())  # the records are sealed too
    plain = tmp_path / "plain"
    save_checkpoint(plain, None)  # the same workloads unencrypted: the pattern is there to find
    assert any(PROBE in body for body in tree(plain).values())
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    node, saved = _open_node(config(copy, key_file), ())
    try:
        assert state_of(node.host) == expected
        assert node.host.read_memory("d", PATTERN_AT, len(PATTERN)) == PATTERN
    finally:
        node.host.close()


def test_the_wrong_key_or_no_key_is_refused_clearly(sealed, tmp_path):
    data, _, _ = sealed
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    other = tmp_path / "other.key"
    at_rest.load_data_key(other)
    error = refused_untouched(copy, other)
    assert isinstance(error, UndecryptableState)
    assert "another data key" in str(error) and str(other) in str(error)
    missing = tmp_path / "missing.key"
    error = refused_untouched(copy, missing)
    assert isinstance(error, UndecryptableState) and "is missing: put back the key" in str(error)
    assert not missing.exists()  # no new key was made over the place the right one goes back to
    with pytest.raises(UndecryptableState, match="needs the node's data key"):
        checkpoints.find(copy)


def test_an_unencrypted_checkpoint_of_an_earlier_version_is_read_once_then_sealed(tmp_path):
    data, key_file = tmp_path / "data", tmp_path / "data.key"
    expected = save_checkpoint(data, None)  # saved before nodes had a data key
    plain = tmp_path / "plain"
    shutil.copytree(data, plain)
    node, _ = _open_node(config(data, key_file), ())
    try:
        assert key_file.exists()
        assert state_of(node.host) == expected
        checkpoints.save(node.host, data, key=node.data_key)  # what SIGTERM does
    finally:
        node.host.close()
    assert not any(PROBE in body for body in tree(data / "checkpoints").values())
    node, _ = _open_node(config(data, key_file), ())
    try:
        assert state_of(node.host) == expected
    finally:
        node.host.close()
    # Now that the key exists, an unencrypted checkpoint is no longer read.
    assert isinstance(refused_untouched(plain, key_file), UndecryptableState)


def test_a_snapshot_file_swapped_for_another_workloads_is_refused(sealed, tmp_path):
    data, key_file, _ = sealed
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    a, b = sorted((copy / "checkpoints").glob("[ab].*.snap"))
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    assert isinstance(refused_untouched(copy, key_file), UndecryptableState)


def test_discard_state_sets_a_tampered_checkpoint_aside_and_starts_empty(sealed, tmp_path):
    data, key_file, _ = sealed
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    snap = next((copy / "checkpoints").glob("d.*.snap"))
    body = bytearray(snap.read_bytes())
    body[len(body) // 2] ^= 0x40
    snap.write_bytes(body)
    node, _ = _open_node(config(copy, key_file, discard_state=True), ())
    try:
        assert node.host.workloads() == []
    finally:
        node.host.close()
    aside = [p for p in copy.iterdir() if p.name.startswith("checkpoints.discarded-")]
    assert len(aside) == 1 and (aside[0] / snap.name).read_bytes() == body


def test_every_flipped_byte_of_a_snapshot_file_is_refused(sealed):
    data, key_file, _ = sealed
    key = at_rest.load_data_key(key_file, create=False)
    body = next((data / "checkpoints").glob("a.*.snap")).read_bytes()
    assert snapshot.Snapshot.from_bytes(body, key=key)
    for i in range(len(body)):
        with pytest.raises(snapshot.SnapshotError):
            snapshot.Snapshot.from_bytes(body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1:], key=key)


def frames(body: bytes) -> list[tuple[int, int]]:
    """(start, end) of every frame of an encoded snapshot."""
    out, at = [], SNAPSHOT_HEADER_BYTES
    while at < len(body):
        _, length = FRAME_HEAD.unpack_from(body, at)
        out.append((at, at + FRAME_HEAD.size + length + 4))
        at = out[-1][1]
    return out


def tampered_copy(data: Path, name: str, change) -> Path:
    """A copy of ``data`` in a new temporary directory with file ``name`` of its checkpoint changed."""
    copy = Path(tempfile.mkdtemp(dir=data.parent)) / "data"
    shutil.copytree(data, copy)
    path = next((copy / "checkpoints").glob(name))
    path.write_bytes(change(path.read_bytes()))
    return copy


TAMPER = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@TAMPER
@given(file=st.sampled_from(["a.*.snap", "d.*.snap", MANIFEST]), where=st.floats(0, 1, exclude_max=True),
       bit=st.integers(0, 7))
def test_any_flipped_bit_is_refused_and_nothing_is_restored(sealed, file, where, bit):
    data, key_file, _ = sealed

    def flip(body: bytes) -> bytes:
        i = int(where * len(body))
        return body[:i] + bytes([body[i] ^ 1 << bit]) + body[i + 1:]
    refused_untouched(tampered_copy(data, file, flip), key_file)


@TAMPER
@given(file=st.sampled_from(["a.*.snap", "d.*.snap", MANIFEST]), where=st.floats(0, 1, exclude_max=True))
def test_any_truncation_is_refused(sealed, file, where):
    data, key_file, _ = sealed
    refused_untouched(tampered_copy(data, file, lambda body: body[:int(where * len(body))]), key_file)


@TAMPER
@given(pair=st.lists(st.integers(0, 100), min_size=2, max_size=2, unique=True), drop=st.booleans())
def test_reordered_or_dropped_frames_are_refused(sealed, pair, drop):
    data, key_file, _ = sealed

    def reorder(body: bytes) -> bytes:
        spans = frames(body)
        assert len(spans) >= 4  # META, two PAGES at least, END: 5 MiB of pages is two 4 MiB batches
        i, j = sorted(p % len(spans) for p in pair) if pair[0] % len(spans) != pair[1] % len(spans) else (0, 1)
        parts = [body[s:e] for s, e in spans]
        if drop:
            del parts[i]
        else:
            parts[i], parts[j] = parts[j], parts[i]
        return body[:SNAPSHOT_HEADER_BYTES] + b"".join(parts)
    error = refused_untouched(tampered_copy(data, "d.*.snap", reorder), key_file)
    assert isinstance(error, DamagedState)


async def test_a_real_node_restores_its_encrypted_checkpoint_exactly_and_refuses_another_key(
        node_procs, cluster_tls, tmp_path):
    node = node_procs.start("vault-1", "edge")
    async with await node.client(cluster_tls.app) as client:
        await client.deploy(workloads.load("dirtier"), workload_id="d")
        await client.call("d", "dt_init", 5)
        await client.write_memory("d", PATTERN_AT, PATTERN)
        checksum = await client.call("d", "dt_checksum")
    assert node.terminate() == 0
    saved = tree(node.data_dir / "checkpoints")
    assert saved and not any(PROBE in body for body in saved.values())
    assert (node.tls_dir / "data.key").stat().st_mode & 0o777 == 0o600
    node_procs.restart(node)
    async with await node.client(cluster_tls.app) as client:
        assert await client.call("d", "dt_checksum") == checksum
        assert await client.read_memory("d", PATTERN_AT, len(PATTERN)) == PATTERN
    assert node.terminate() == 0
    other = tmp_path / "other.key"
    at_rest.load_data_key(other)
    line = assert_refused(serve_once(node, "--data-key-file", str(other)),
                          node.data_dir / "checkpoints" / MANIFEST)
    assert "another data key" in line and str(other) in line
