"""The snapshot: the whole mutable state of an instance, or a delta against a base.

A *full* snapshot lists the non-zero 4 KiB pages of each memory as maximal
runs; every page outside a run is zero.  A *delta* snapshot lists the pages
written since its base (zero pages included, since they overwrite) and names
its base by ``base_id``.  Globals, tables and the list of dropped passive
segments are always carried whole.
This module also turns a snapshot into bytes and back (``_format``,
``_decoder``) and applies a delta to its base.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._decoder import DecodeLimits, End, Event, Meta, PageBatch, SnapshotDecoder
from ._errors import BaseMismatchError, CorruptSnapshotError, IncompatibleSnapshotError, TruncatedSnapshotError
from ._format import encode
from ._pages import PAGE_BYTES, PageRun, RunJoiner, nonzero_runs
from ._state import DroppedSegments, GlobalState, MemoryState, TableState


@dataclass(frozen=True, eq=False)
class Snapshot:
    """The complete mutable state of an instance, or a delta against a base.

    Two snapshots are equal when they have the same ids and the same state.
    For full snapshots "same state" compares memory contents, so where the
    zero pages are left out does not matter; a delta's pages are compared
    as listed, since a zero page in a delta overwrites.
    """

    module_sha256: str
    state_id: bytes
    base_id: bytes | None = None
    memories: tuple[MemoryState, ...] = ()
    globals: tuple[GlobalState, ...] = ()
    tables: tuple[TableState, ...] = ()
    dropped: DroppedSegments = DroppedSegments()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_delta(self) -> bool:
        return self.base_id is not None

    def same_state(self, other: "Snapshot") -> bool:
        """True if both describe the same module state, whatever their ids."""
        if self.module_sha256 != other.module_sha256 or self.is_delta != other.is_delta:
            return False
        if (self.globals, self.tables, self.dropped) != (other.globals, other.tables, other.dropped):
            return False
        if self.is_delta:
            return self.memories == other.memories
        return [_content(m) for m in self.memories] == [_content(m) for m in other.memories]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Snapshot):
            return NotImplemented
        return (self.state_id, self.base_id) == (other.state_id, other.base_id) and self.same_state(other)

    __hash__ = None  # type: ignore[assignment]

    @property
    def memory_bytes_total(self) -> int:
        return sum(m.size_bytes for m in self.memories)

    @property
    def page_count(self) -> int:
        return sum(m.page_count for m in self.memories)

    def memory_bytes(self, index: int) -> bytes:
        """Return the full contents of memory ``index`` of a full snapshot.

        Raises IncompatibleSnapshotError for a delta or an unknown index.
        """
        if self.is_delta:
            raise IncompatibleSnapshotError("a delta snapshot does not hold whole memories")
        for m in self.memories:
            if m.index == index:
                out = bytearray(m.size_bytes)
                for r in m.runs:
                    out[r.first_page * PAGE_BYTES:r.end_page * PAGE_BYTES] = r.data
                return bytes(out)
        raise IncompatibleSnapshotError(f"snapshot has no memory {index}")

    def to_bytes(self, *, key: bytes | None = None, level: int = 1) -> bytes:
        """Encode this snapshot; see ``snapshot._format``."""
        return encode(self, key=key, level=level)

    @classmethod
    def from_bytes(cls, data: bytes, *, key: bytes | None = None,
                   limits: DecodeLimits | None = None) -> "Snapshot":
        """Decode a snapshot; raises a RemoteSnapshotError subclass on bad input."""
        return decode(data, key=key, limits=limits)


def _content(m: MemoryState) -> tuple[int, int, tuple[PageRun, ...]]:
    """A memory's index, size and non-zero pages as maximal runs of bytes."""
    joiner = RunJoiner()
    for r in m.runs:
        data = r.data if isinstance(r.data, bytes) else bytes(r.data)
        for a, b in nonzero_runs(data):
            joiner.add(r.first_page + a, data[a * PAGE_BYTES:b * PAGE_BYTES])
    return m.index, m.size_bytes, joiner.runs()


class SnapshotAssembler:
    """Collect decoder events into a Snapshot (what ``decode`` does, streamed).

    ``add(event)`` takes the events of one encoded snapshot in order;
    ``snapshot()`` returns it once the END event was added.
    """

    def __init__(self) -> None:
        self._meta: Meta | None = None
        self._runs: dict[int, RunJoiner] = {}
        self._ended = False

    def add(self, event: Event) -> None:
        if isinstance(event, Meta):
            self._meta = event
            self._runs = {i: RunJoiner() for i, _, _ in event.memories}
        elif isinstance(event, PageBatch):
            joiner = self._runs[event.memory_index]
            for r in event.runs:
                joiner.add(r.first_page, r.data)
        elif isinstance(event, End):
            self._ended = True

    @property
    def complete(self) -> bool:
        return self._ended

    def snapshot(self) -> Snapshot:
        """The assembled snapshot; raises TruncatedSnapshotError before END."""
        if not self._ended or self._meta is None:
            raise TruncatedSnapshotError("snapshot ends before its END frame (truncated)")
        meta = self._meta
        full = meta.base_id is None  # the encoder left every zero page out
        memories = tuple(MemoryState(i, size, self._runs[i].runs(), zero_free=full) for i, size, _ in meta.memories)
        return Snapshot(module_sha256=meta.module_sha256, state_id=meta.state_id, base_id=meta.base_id,
                        memories=memories, globals=meta.globals, tables=meta.tables, dropped=meta.dropped)


def decode(data: bytes, *, key: bytes | None = None, limits: DecodeLimits | None = None) -> Snapshot:
    """Decode one encoded snapshot completely.

    Raises CorruptSnapshotError, TruncatedSnapshotError,
    UnsupportedVersionError, AuthenticationError or OversizedSnapshotError.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CorruptSnapshotError(f"expected bytes, got {type(data).__name__}")
    dec = SnapshotDecoder(key=key, limits=limits)
    dec.feed(bytes(data))
    assembler = SnapshotAssembler()
    while (event := dec.next_event()) is not None:
        assembler.add(event)
    dec.close()
    return assembler.snapshot()


def apply_delta(base: Snapshot, delta: Snapshot) -> Snapshot:
    """Return the full snapshot that results from applying ``delta`` to ``base``.

    Raises BaseMismatchError if ``delta`` was not taken against ``base``, and
    IncompatibleSnapshotError if its shape does not fit.
    """
    if base.is_delta:
        raise IncompatibleSnapshotError("the base must be a full snapshot")
    if delta.base_id is None:  # not a delta
        raise IncompatibleSnapshotError("the second argument must be a delta snapshot")
    if delta.base_id != base.state_id:
        raise BaseMismatchError(
            f"delta was taken against state {delta.base_id.hex()}, not {base.state_id.hex()}")
    if delta.module_sha256 != base.module_sha256:
        raise BaseMismatchError("delta and base come from different modules")
    if [m.index for m in delta.memories] != [m.index for m in base.memories]:
        raise IncompatibleSnapshotError("delta and base have different memories")
    if not (set(base.dropped.data) <= set(delta.dropped.data) and set(base.dropped.elems) <= set(delta.dropped.elems)):
        raise IncompatibleSnapshotError("delta has segments live that its base had dropped; "
                                        "a dropped segment cannot come back")
    memories = []
    for bm, dm in zip(base.memories, delta.memories):
        if dm.size_bytes < bm.size_bytes:
            raise IncompatibleSnapshotError(f"memory {dm.index} cannot shrink")
        buf = bytearray(dm.size_bytes)
        for r in bm.runs:
            buf[r.first_page * PAGE_BYTES:r.end_page * PAGE_BYTES] = r.data
        for r in dm.runs:
            if r.end_page * PAGE_BYTES > dm.size_bytes:
                raise IncompatibleSnapshotError(f"delta page {r.end_page - 1} lies outside memory {dm.index}")
            buf[r.first_page * PAGE_BYTES:r.end_page * PAGE_BYTES] = r.data
        runs = tuple(PageRun(a, bytes(buf[a * PAGE_BYTES:b * PAGE_BYTES])) for a, b in nonzero_runs(buf))
        memories.append(MemoryState(dm.index, dm.size_bytes, runs))
    return Snapshot(module_sha256=base.module_sha256, state_id=delta.state_id, base_id=None,
                    memories=tuple(memories), globals=delta.globals, tables=delta.tables, dropped=delta.dropped)
