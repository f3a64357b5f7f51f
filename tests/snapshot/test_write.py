"""write_encoded: the same bytes as the one-thread encoder, in order, and a failing file is an error, not a hang."""

from __future__ import annotations

import io
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import snapshot
from snapshot import PAGE_BYTES, MemoryState, PageRun, Snapshot, SnapshotEncoder, write_encoded
from test_format import KEY, snapshots


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(snapshots(), st.integers(1, 5), st.sampled_from([1, -1, 3]))
def test_the_file_holds_what_encode_gives(snap, batch_pages, level):
    """Unkeyed, byte for byte; batches of 1-5 pages put several in flight, so a reused buffer would show."""
    file = io.BytesIO()
    written = write_encoded(snap, file, level=level, batch_pages=batch_pages)
    expected = b"".join(SnapshotEncoder(level=level, batch_pages=batch_pages).encode(snap))
    assert file.getvalue() == expected
    assert written.size_bytes == len(expected) and written.header == expected[:16]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(snapshots(), st.integers(1, 5))
def test_a_sealed_file_decodes_to_the_snapshot(snap, batch_pages):
    file = io.BytesIO()
    written = write_encoded(snap, file, key=KEY, batch_pages=batch_pages)
    assert Snapshot.from_bytes(file.getvalue(), key=KEY) == snap
    assert file.getvalue()[:16] == written.header and written.header[7] == 1  # the encrypted flag


def _many_batches() -> Snapshot:
    pages = [PageRun(p, bytes([p % 251 + 1]) * PAGE_BYTES) for p in range(0, 64, 2)]
    return Snapshot(module_sha256="00" * 32, state_id=bytes(16), base_id=None,
                    memories=(MemoryState(0, 64 * PAGE_BYTES, tuple(pages)),), globals=(), tables=())


class _FailsAfter(io.BytesIO):
    def __init__(self, writes: int) -> None:
        super().__init__()
        self.left = writes

    def write(self, data) -> int:
        self.left -= 1
        if self.left < 0:
            raise OSError(28, "No space left on device")
        return super().write(data)


@pytest.mark.parametrize("writes", [0, 1, 2, 3, 7, 20])
def test_a_failing_write_raises_and_leaves_no_thread(writes):
    """Whether the header, META, a page frame (in the helper) or END fails: OSError, and the helper has ended."""
    before = {t.name for t in threading.enumerate()}
    file = _FailsAfter(writes)
    with pytest.raises(OSError, match="No space"):
        write_encoded(_many_batches(), file, batch_pages=1)
    assert not [t for t in threading.enumerate() if t.name.startswith("snapshot-write") and t.name not in before]
    with pytest.raises(snapshot.TruncatedSnapshotError):
        Snapshot.from_bytes(file.getvalue())
