"""The node side of live migration, assembled: ``PLUGIN``, the migration plugin of a node.

``PLUGIN`` (a ``nodes.Plugin``) gives a node the migration handlers, the
per-node ``MigrationService`` (``_state``), its status, its checkpoint
records and its crash phases; ``migrate-node serve`` (``migrate.cli``) and
the application's local node (``migrate.connect``) serve with it.  The
handlers live by concept: ``_owner`` (calls), ``_serve_checkpoint``,
``_standby``, ``_target``, ``_source`` and ``_dual`` (moves), ``_persist``
(restarts), on the tables in ``_state``; every change of a workload's
ownership state or epoch goes through the table of ``_ownership``.
"""

from __future__ import annotations

from nodes import Node, Plugin

from . import _cordon
from . import _life_node as life
from . import _messages as m
from ._codes import CRASH_PHASES
from ._metrics import collect
from ._pool_node import POOL_PLUGIN
from ._owner import on_cancel, on_locate, on_protect
from ._persist import _load_record, _load_tombstones, _resume_standbys, _save_record, _save_tombstones
from ._serve_checkpoint import on_checkpoint, on_checkpoint_part
from ._source import on_migrate
from ._standby import on_follow, on_promote
from ._state import PLUGIN_NAME, MigrationService, service
from ._target import on_abort, on_align, on_chunk, on_commit, on_first_call, on_incoming, on_replay


async def _resume(node: Node) -> None:
    _cordon.announce(node)  # a flag kept across a restart is in the node's membership record too
    await _resume_standbys(node)
    node.start_soon(life.run, node)


def _stop_moves(node: Node) -> None:
    """The node is stopping: abort the outgoing moves not yet in their final round (``Transfer.stop``)."""
    for move in list(service(node).active.values()):
        move.stop()


PLUGIN = Plugin(
    name=PLUGIN_NAME,
    handlers={m.MSpawn: life.on_app_spawn, m.MCall: life.on_app_call, life.MTouch: life.on_touch,
              m.MLocate: on_locate, m.MIncoming: on_incoming,
              m.MChunk: on_chunk, m.MCommit: on_commit, m.MAbort: on_abort, m.MMigrate: on_migrate,
              m.MProtect: on_protect, m.MCheckpoint: on_checkpoint, m.MCheckpointPart: on_checkpoint_part,
              m.MReplay: on_replay, m.MAlign: on_align, m.MFollow: on_follow, m.MPromote: on_promote,
              m.MFirstCall: on_first_call, m.MCancel: on_cancel, **_cordon.HANDLERS},
    state=MigrationService,
    status=lambda node: service(node).status() + _cordon.status(node) + life.status(node),
    save=_save_record, load=_load_record, save_node=_save_tombstones, load_node=_load_tombstones,
    resume=_resume,
    stopping=_stop_moves,
    metrics=lambda node: collect(service(node)),
    describe=life.describe,
    crash_phases=CRASH_PHASES,
)

#: What a node of this package serves with: the migration plugin and the stateless pools (``_pool_node``).
PLUGINS = (PLUGIN, POOL_PLUGIN)
