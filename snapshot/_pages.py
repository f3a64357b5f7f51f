"""Pages of linear memory: the 4 KiB unit, runs of pages, and finding the non-zero ones.

Everything above this module counts memory in 4 KiB pages (the OS page,
the unit of dirty tracking) and carries it as ``PageRun``s: consecutive
pages from a first page on.  Zero pages are what snapshots leave out, so
finding them fast matters: the scans here test 64 KiB at a time with one
memcmp and look at single pages only inside blocks that are not all zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12 on

PAGE_BYTES = 4096  # the OS page size on x86-64, the unit of dirty tracking
PAGE_SHIFT = 12  # log2(PAGE_BYTES)
WASM_PAGE_BYTES = 65536
ZERO_PAGE = bytes(PAGE_BYTES)
_ZERO_BLOCK = bytes(WASM_PAGE_BYTES)
_PAGES_PER_BLOCK = WASM_PAGE_BYTES // PAGE_BYTES
#: The bytes of whole pages, as runs carry them (a view into memory or a copy).
PageData = bytes | bytearray | memoryview


class PageRun(NamedTuple):
    """Consecutive 4 KiB pages starting at page ``first_page``.

    A named tuple rather than a dataclass: a 256 MiB capture makes tens of
    thousands of these, and a frozen dataclass costs a microsecond each.
    """

    first_page: int
    data: PageData

    @property
    def page_count(self) -> int:
        return len(self.data) // PAGE_BYTES

    @property
    def end_page(self) -> int:
        return self.first_page + len(self.data) // PAGE_BYTES


def nonzero_runs(buf: Buffer, first_page: int = 0) -> list[tuple[int, int]]:
    """Return [start, end) page ranges of the non-zero 4 KiB pages of ``buf``.

    ``buf`` is any buffer: bytes, bytearray, memoryview, or a ctypes array
    over wasm memory.  Zero tests use ``bytes.startswith``, which runs memcmp
    without copying (about 13 GB/s here).  A bytes or bytearray is scanned
    by offset; other buffers through memoryview slices, which cost a little
    more per page (36 ms against 28 ms for 256 MiB with a quarter of its
    pages, spread over every 64 KiB block, not zero).
    """
    zero: Callable[[bytes, int], bool]
    if isinstance(buf, (bytes, bytearray)):
        zero = buf.startswith  # zero(prefix, offset): memcmp in place, no copy
        n = len(buf)
    else:
        view = memoryview(buf).cast("B")
        n = len(view)

        def view_zero(prefix: bytes, off: int) -> bool:
            return prefix.startswith(view[off:off + len(prefix)])
        zero = view_zero
    out: list[tuple[int, int]] = []
    run_start = -1
    off = 0
    while off < n:
        if off + WASM_PAGE_BYTES <= n and zero(_ZERO_BLOCK, off):
            if run_start >= 0:
                out.append((first_page + run_start, first_page + off // PAGE_BYTES))
                run_start = -1
            off += WASM_PAGE_BYTES
            continue
        end = min(off + WASM_PAGE_BYTES, n)
        while off < end:
            if zero(ZERO_PAGE, off):
                if run_start >= 0:
                    out.append((first_page + run_start, first_page + off // PAGE_BYTES))
                    run_start = -1
            elif run_start < 0:
                run_start = off // PAGE_BYTES
            off += PAGE_BYTES
    if run_start >= 0:
        out.append((first_page + run_start, first_page + (n + PAGE_BYTES - 1) // PAGE_BYTES))
    return out


def nonzero_blocks(buf: Buffer) -> list[tuple[int, int]]:
    """Like ``nonzero_runs`` but at 64 KiB granularity: ranges of 4 KiB pages
    covering every wasm page that is not entirely zero.

    One memcmp per 64 KiB keeps a capture at memcpy speed; the encoder then
    leaves out the zero 4 KiB pages inside these ranges.
    """
    out: list[tuple[int, int]] = []
    if isinstance(buf, (bytes, bytearray)):
        starts = buf.startswith
        n = len(buf)

        def zero(off: int) -> bool:
            return starts(_ZERO_BLOCK, off) if off + WASM_PAGE_BYTES <= n else not any(buf[off:n])
    else:
        view = memoryview(buf).cast("B")
        n = len(view)
        block_zero = _ZERO_BLOCK.startswith

        def zero(off: int) -> bool:
            return block_zero(view[off:off + WASM_PAGE_BYTES])
    run_start = -1
    for block, off in enumerate(range(0, n, WASM_PAGE_BYTES)):
        if zero(off):
            if run_start >= 0:
                out.append((run_start, block * _PAGES_PER_BLOCK))
                run_start = -1
        elif run_start < 0:
            run_start = block * _PAGES_PER_BLOCK
    if run_start >= 0:
        out.append((run_start, (n + PAGE_BYTES - 1) // PAGE_BYTES))
    return out


class RunJoiner:
    """Collects pieces of memory, added in rising page order, into maximal runs.

    A piece that starts where the previous one ends extends its run, so the
    bytes are joined once, at the end, rather than at every step.  The
    pieces sit in three flat lists, not a list per run: a target receiving
    a 1 GiB first round kept about 126,000 small lists here, and every full
    pass of the cyclic garbage collector walked them (12-26 ms each, on the
    node's event loop).
    """

    __slots__ = ("_firsts", "_starts", "_chunks", "_end")

    def __init__(self) -> None:
        self._firsts: list[int] = []  # each run's first page
        self._starts: list[int] = []  # where each run's pieces begin in ``_chunks``
        self._chunks: list[PageData] = []  # every piece's bytes, in order
        self._end = -1                # the page after the last run

    def add(self, first_page: int, data: PageData) -> None:
        """Add whole pages ``data`` at ``first_page``, at or after the end of the last piece."""
        if first_page != self._end or not self._firsts:
            self._firsts.append(first_page)
            self._starts.append(len(self._chunks))
        self._chunks.append(data)
        self._end = first_page + len(data) // PAGE_BYTES

    def runs(self) -> tuple[PageRun, ...]:
        """The runs so far; a run of one piece keeps that piece's buffer."""
        bounds = [*self._starts, len(self._chunks)]
        out = []
        for i, first in enumerate(self._firsts):
            pieces = self._chunks[bounds[i]:bounds[i + 1]]
            out.append(PageRun(first, pieces[0] if len(pieces) == 1 else b"".join(pieces)))
        return tuple(out)


def merge_runs(pages: list[tuple[int, bytes | memoryview]]) -> tuple[PageRun, ...]:
    """Join (page, 4 KiB data) pairs, sorted by page, into maximal runs."""
    joiner = RunJoiner()
    for page, data in pages:
        joiner.add(page, data)
    return joiner.runs()


def page_ranges(pages: Iterable[int]) -> list[tuple[int, int]]:
    """Turn sorted page indices into [start, end) ranges of consecutive pages."""
    out: list[tuple[int, int]] = []
    start: int | None = None
    prev: int | None = None
    for page in pages:
        if prev is not None and page == prev + 1:
            prev = page
            continue
        if start is not None and prev is not None:
            out.append((start, prev + 1))
        start = prev = page
    if start is not None and prev is not None:
        out.append((start, prev + 1))
    return out
