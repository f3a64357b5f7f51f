"""The node side of live migration, assembled: handlers, status and the checkpoint extension.

Importing this module registers the handlers with the node daemon
(``nodes.register_handler``); ``migrate-node serve`` imports it.  The
handlers live by concept: ``_owner`` (calls), ``_serve_checkpoint``,
``_standby``, ``_target``, ``_source`` and ``_dual`` (moves), ``_persist``
(restarts), on the tables in ``_state``.
"""

from __future__ import annotations

from nodes import register_checkpoint_extension, register_handler, register_status

from ._messages import (
    MAbort,
    MAlign,
    MCall,
    MChunk,
    MCommit,
    MCheckpoint,
    MCheckpointPart,
    MFollow,
    MIncoming,
    MLocate,
    MPromote,
    MProtect,
    MReplay,
    MMigrate,
    MSpawn,
)
from ._owner import on_call, on_locate, on_protect, on_spawn
from ._persist import _load_record, _load_tombstones, _resume_standbys, _save_record, _save_tombstones
from ._serve_checkpoint import on_checkpoint, on_checkpoint_part
from ._source import on_migrate
from ._standby import on_follow, on_promote
from ._state import service
from ._target import on_abort, on_align, on_chunk, on_commit, on_incoming, on_replay


register_checkpoint_extension("migrate", save=_save_record, load=_load_record,
                              save_node=_save_tombstones, load_node=_load_tombstones, resume=_resume_standbys)
register_status(lambda node: service(node).status())

for _kind, _handler in ((MSpawn, on_spawn), (MCall, on_call), (MLocate, on_locate), (MIncoming, on_incoming),
                        (MChunk, on_chunk), (MCommit, on_commit), (MAbort, on_abort), (MMigrate, on_migrate),
                        (MProtect, on_protect), (MCheckpoint, on_checkpoint), (MCheckpointPart, on_checkpoint_part),
                        (MReplay, on_replay),
                        (MAlign, on_align), (MFollow, on_follow), (MPromote, on_promote)):
    register_handler(_kind, _handler)
