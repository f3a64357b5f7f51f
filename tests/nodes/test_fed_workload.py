"""Host.restore_fed: a workload restored as its encoded snapshot arrives in pieces, seen only once complete."""

from __future__ import annotations

import pytest

import snapshot
import workloads
from nodes import Host, ResourceLimitExceeded, UnknownWorkload, WorkloadExists

MiB = 2**20
KVSTORE = workloads.load("kvstore")


@pytest.fixture
def hosts(tmp_path):
    with Host(tmp_path / "a") as source, Host(tmp_path / "b") as target:
        yield source, target


def _kept(source: Host) -> tuple[str, bytes]:
    """A kvstore on ``source`` holding 40 pairs, its memory grown from 128 KiB to 3 MiB; its module digest and
    its state, encoded."""
    sha = source.add_module(KVSTORE)
    source.deploy(sha, workload_id="kv")
    for i in range(40):
        key, value = b"key-%d" % i, b"value-%d" % i * 5000
        buffer = source.call("kv", "wm_alloc", [len(key) + len(value)])
        source.write_memory("kv", buffer, key + value)
        assert source.call("kv", "kv_put", [buffer, len(key), buffer + len(key), len(value)]) == 1
    return sha, b"".join(snapshot.SnapshotEncoder(batch_pages=4).encode(source.checkpoint("kv")))


def test_the_workload_is_seen_only_once_its_last_piece_is_in_and_then_holds_the_state(hosts):
    source, target = hosts
    sha, data = _kept(source)
    target.add_module(KVSTORE)
    fed = target.restore_fed(sha, workload_id="kv", app="shop")
    pieces = [data[i:i + 1024] for i in range(0, len(data), 1024)]
    assert len(pieces) > 3
    for piece in pieces[:-1]:
        assert not fed.feed(piece)
        assert target.workloads() == []
        with pytest.raises(UnknownWorkload):
            target.call("kv", "kv_count")
    with pytest.raises(WorkloadExists):  # its id is claimed meanwhile
        target.restore_fed(sha, workload_id="kv")
    assert fed.feed(pieces[-1]) and fed.ended
    assert target.call("kv", "kv_count") == source.call("kv", "kv_count") == 40
    assert target.checkpoint("kv").same_state(source.checkpoint("kv"))
    assert target.info("kv").app == "shop"
    with pytest.raises(RuntimeError, match="has ended"):
        fed.feed(b"")


def test_a_bad_piece_gives_the_claim_up_and_leaves_nothing(hosts):
    source, target = hosts
    sha, data = _kept(source)
    target.add_module(KVSTORE)
    fed = target.restore_fed(sha, workload_id="kv")
    assert not fed.feed(data[:len(data) // 2])
    bad = bytearray(data[len(data) // 2:])
    bad[10] ^= 0xFF
    with pytest.raises(snapshot.CorruptSnapshotError):
        fed.feed(bytes(bad))
    assert fed.ended and target.workloads() == []
    fed.abort()  # again: nothing
    again = target.restore_fed(sha, workload_id="kv")  # the id is free again
    assert again.feed(data)
    assert target.call("kv", "kv_count") == 40


def test_a_snapshot_over_the_memory_cap_is_refused_at_its_meta(hosts):
    source, target = hosts
    sha, data = _kept(source)
    target.add_module(KVSTORE)
    fed = target.restore_fed(sha, workload_id="kv", memory_limit_bytes=1 * MiB)  # the module needs 128 KiB
    with pytest.raises(ResourceLimitExceeded, match="the snapshot's memory"):
        fed.feed(data)
    assert fed.ended and target.workloads() == []
    assert target.restore_fed(sha, workload_id="kv").feed(data)


def test_an_abort_midway_frees_the_id_and_a_closed_host_publishes_nothing(hosts):
    source, target = hosts
    sha, data = _kept(source)
    target.add_module(KVSTORE)
    fed = target.restore_fed(sha, workload_id="kv")
    assert not fed.feed(data[:100])
    fed.abort()
    with pytest.raises(RuntimeError, match="has ended"):
        fed.feed(data[100:])
    late = target.restore_fed(sha, workload_id="kv")
    assert not late.feed(data[:100])
    target.close()
    with pytest.raises(Exception, match="closed"):
        late.feed(data[100:])
    assert late.ended


def test_the_published_workload_is_logged_as_a_restore_is(hosts, caplog):
    source, target = hosts
    sha, data = _kept(source)
    target.add_module(KVSTORE)
    fed = target.restore_fed(sha, workload_id="kv")
    with caplog.at_level("INFO", logger="nodes"):
        assert not fed.feed(data[:64])
        assert not [r for r in caplog.records if r.getMessage() == "restored workload"]
        assert fed.feed(data[64:])
    [logged] = [r for r in caplog.records if r.getMessage() == "restored workload"]
    assert logged.workload == "kv"
