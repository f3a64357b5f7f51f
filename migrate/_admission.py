"""Why a target refuses an incoming copy that the ownership table does not allow."""

from __future__ import annotations

from nodes import ErrorReply, Node

from ._codes import MigrationCode
from ._messages import MIncoming
from ._ownership import OWNING
from ._ownership_events import OwnershipError
from ._replies import error
from ._state import MigrationService


def _incoming_refused(node: Node, svc: MigrationService, req: MIncoming, exc: OwnershipError) -> ErrorReply:
    """The reply to an MIncoming the ownership table refuses.

    MIGRATION_FAILED if this node owns the workload at the request's epoch
    or a newer one; else MIGRATION_BUSY:
    a copy at a newer epoch, or a move of the workload, is under way here.
    """
    record = svc.ownership.record(req.workload)
    if record.state in OWNING and record.epoch >= req.epoch:
        return error(req.id, MigrationCode.MIGRATION_FAILED,
                     f"{node.config.name} already owns {req.workload} at epoch {record.epoch}")
    return error(req.id, MigrationCode.MIGRATION_BUSY,
                 f"{node.config.name} is receiving or moving {req.workload} "
                 f"({record.state.value}, epoch {record.epoch}): {exc}")
