"""What a host does for checkpoints and hibernation: ``Checkpointing``, a base class of ``nodes.Host``.

A shutdown checkpoint (``nodes._checkpoint_format``) takes each awake
workload's snapshot with the settings that bring it back
(``checkpoint_entry``) and names a hibernated one's file
(``hibernated_entry``); a start restores the first kind (``Host.restore``)
and adopts the second, still hibernated (``adopt``).  Hibernation itself is
``nodes._hibernate``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import snapshot

from . import _checkpoint_format as checkpoint_format
from ._checkpoint_format import BulkReport, Checkpointed
from ._hibernate import Hibernator
from ._in_use import InUse
from ._modules import ModuleCache
from ._registry import Registry
from ._workload import Workload, WorkloadInfo, check_name


class Checkpointing:
    """The checkpoint and hibernation methods of ``Host`` (which provides the attributes used here)."""

    _registry: Registry
    _modules: ModuleCache
    _workloads_dir: Path
    hibernator: Hibernator
    _using: Callable[[Workload], InUse]

    def checkpoint_entry(self, workload_id: str) -> tuple[snapshot.Snapshot, dict[str, Any]]:
        """Capture the workload between calls, with what ``restore`` needs to bring it back.

        The dict (a checkpoint manifest entry) holds the module, app, args,
        env, preopened directories, memory cap, call count and guest clock,
        all read under the lock the capture holds.
        Raises ``UnknownWorkload`` or ``SnapshotFailed``.
        """
        w = self._registry.get(workload_id)
        with self._using(w):
            return w.capture(), {**w.settings_entry(), "monotonic_ns": w.budget.inputs.monotonic_ns()}

    # --- hibernation (nodes._hibernate) -------------------------------------

    def hibernate(self, workload_id: str) -> int:
        """Write the workload's state to disk and free its memory; return the file's size.

        Its next use wakes it.  Raises ``UnknownWorkload``, ``SnapshotFailed``
        (it cannot now: the message says why) or ``ResourceLimitExceeded``.
        """
        return self.hibernator.hibernate(self._registry.get(workload_id))

    def hibernated_entry(self, workload_id: str) -> dict[str, Any] | None:
        """A hibernated workload's checkpoint entry, naming its file's header; None if it is awake."""
        w = self._registry.get(workload_id)
        with w.lock:
            sleep = w.sleep
            if sleep is None or w.removed:
                return None
            return {**w.settings_entry(), "monotonic_ns": sleep.monotonic_ns, "hibernated": sleep.header}

    def adopt(self, module_sha256: str, **entry: Any) -> WorkloadInfo:
        """Bring back a workload saved hibernated (``Hibernator.adopt``), still hibernated.

        Raises ``UnknownModule``, ``WorkloadExists``, ``ResourceLimitExceeded``, ``SnapshotFailed``.
        """
        self._registry.check_open()
        check_name("workload_id", entry["workload_id"])
        w = self.hibernator.adopt(self._modules.get(module_sha256), self._workloads_dir / entry["workload_id"],
                                  **entry)
        self._registry.adopt(w.workload_id, w)
        return w.info()

    def checkpoint_all(self: Checkpointed, directory: Path, *, key: bytes | None = None) -> BulkReport:
        """Write every workload's snapshot and then a manifest into ``directory``.

        ``nodes._checkpoint_format.write``: a workload that cannot be captured is
        skipped and reported in ``failed``.  Raises ``OSError`` naming the
        file that could not be written.
        """
        return checkpoint_format.write(self, Path(directory), key=key)

    def restore_all(self: Checkpointed, directory: Path, *, key: bytes | None = None) -> BulkReport:
        """Restore every workload ``checkpoint_all`` wrote into ``directory``.

        A directory without a manifest restores nothing.  A workload that
        cannot be restored (its module is gone, its snapshot is corrupt, the
        limits refuse it) is skipped and reported in ``failed``.
        Raises ``SnapshotFailed`` if the manifest itself is unreadable.
        """
        return checkpoint_format.restore_all(self, Path(directory), key=key)
