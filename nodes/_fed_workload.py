"""A workload restored as its encoded snapshot arrives in pieces: ``FedWorkload`` (``Host.restore_fed``).

A move's target used to decode a whole first round into fresh buffers and
then copy it into a new instance: every non-zero page was faulted in twice,
the target held the round twice over (938 MiB at its peak for a 1 GiB
move), and the copy ran as one step of 0.4-0.7 s at the round's end.
Here each piece is decoded straight into the instance
(``snapshot.FedRestore``), which is published, callable, only once the
snapshot is complete.  Until then its id is claimed on the host and no
call, checkpoint or listing sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import snapshot

from ._host_errors import ResourceLimitExceeded

if TYPE_CHECKING:
    from ._registry import Registry
    from ._workload import Workload

__all__ = ["FedWorkload", "memory_fits"]

logger = logging.getLogger(__name__)


def memory_fits(limit_bytes: int) -> Callable[[snapshot.Snapshot], None]:
    """A check of a snapshot's META: ResourceLimitExceeded if a memory is larger than ``limit_bytes``."""
    def accept(head: snapshot.Snapshot) -> None:
        largest = max((m.size_bytes for m in head.memories), default=0)
        if largest > limit_bytes:
            raise ResourceLimitExceeded("memory_bytes", largest, limit_bytes, "the snapshot's memory")
    return accept


class FedWorkload:
    """A new workload, claimed but not yet published, into which ``feed`` decodes an encoded snapshot.

    ``feed(piece)`` returns True once the snapshot is complete: the
    workload is then published, as ``Host.restore`` would have left it.
    Any error aborts it (``abort``): the claim is given up and its memory
    freed, so nothing half-restored is ever seen.  A bad stream raises a
    ``snapshot.RemoteSnapshotError``; a snapshot that does not fit raises
    ``SnapshotFailed`` or ``ResourceLimitExceeded``, as ``Host.restore``.
    Not thread-safe: feed it from one thread at a time.
    """

    def __init__(self, w: Workload, registry: Registry, idle_s: float | None) -> None:
        self._w = w
        self._registry = registry
        self._idle_s = idle_s
        self._fed = snapshot.FedRestore(*w.awake(), accept=memory_fits(w.memory_limit_bytes))
        self.ended = False  # published or aborted

    @property
    def workload_id(self) -> str:
        return self._w.workload_id

    def feed(self, data: bytes) -> bool:
        """Decode ``data`` into the workload; True once it is complete and published."""
        if self.ended:
            raise RuntimeError(f"the restore of {self.workload_id} has ended")
        w = self._w
        bad: snapshot.RemoteSnapshotError | None = None
        try:
            with w.touching_state("restore"):
                try:
                    done = self._fed.feed(data)
                except snapshot.RemoteSnapshotError as exc:  # the stream's fault, not the workload's
                    bad = exc
            if bad is not None:
                raise bad
            if done:
                w.refresh_memory_bytes()
                w.idle_s = self._idle_s
                self.ended = True
                self._registry.publish(w.workload_id, w, "restoring")  # frees it if the host closed
                logger.info("restored workload", extra=w.log_extra())  # as Host.restore says it
        except BaseException:
            self.abort()
            raise
        return done

    def abort(self) -> None:
        """Give the workload up: its claim, its memory; again, or once published, does nothing."""
        if self.ended:
            return
        self.ended = True
        with self._w.lock:
            self._w.release()
        self._registry.unclaim(self._w.workload_id)
