"""Names the migrate package puts on the wire and in the environment: error codes and crash phases.

``MigrationCode`` is the code of an ErrorReply a node's migration
coordinator sends; the nodes package carries it as a plain string
(``nodes.error_code``), so ``RemoteNodeError.code`` compares equal to the
member.  The nodes package's own codes stay ``nodes.ErrorCode``.

Crash phases of a live migration, in the order a move reaches them
(``MIGRATION_PHASES``; ``MIGRATE_NODE_CRASH_AT`` and
``MIGRATE_NODE_PAUSE_AT`` name them, see ``nodes._crash``):

``source:before-incoming``  the target is reachable; it has not heard of the move
``source:after-round``      the first pre-copy round is sent; the workload runs on
``source:frozen``           the final round is sent, calls are held; no commit yet
``source:after-commit``     the target committed and the source knows; calls not yet redirected
``target:incoming``         the target accepted the move; nothing received yet
``target:chunk``            the first chunk of a round arrived; not yet applied
``target:after-round``      a round was applied: the incoming copy exists
``target:before-commit``    the commit request arrived; the target does not own the workload yet
``target:after-commit``     the target owns the workload; the source does not know yet

And two that are only paused or crashed at, not part of the crash matrix (its moves are pre-copy):

``source:before-freeze``    the pre-copy rounds are sent and the workload runs; the source
                            has not yet checked what it wrote since (a test writes a burst here)
``target:align``            a dual move's cut round arrived and its MAlign came; the source
                            records the calls since the cut for the target to replay

And of protection:

``standby:copying``
    The owner told the standby node a fresh standby copy is coming (after
    a move, the new owner does so at once); the copy is not aligned yet.
"""

from __future__ import annotations

import enum


class MigrationCode(enum.StrEnum):
    """Why a migration request failed, as carried by ErrorReply."""

    MIGRATION_FAILED = "migration_failed"   # aborted; the workload stayed at the source
    MIGRATION_BUSY = "migration_busy"       # the workload is already moving
    NOT_OWNER = "not_owner"                 # this node does not own the workload
    DIVERGED = "diverged"                   # a copy's replay differs from its source; the copy was dropped
    CORDONED = "cordoned"                   # the node is cordoned: it takes no new workload


MIGRATION_PHASES = ("source:before-incoming", "source:after-round", "source:frozen", "source:after-commit",
                    "target:incoming", "target:chunk", "target:after-round", "target:before-commit",
                    "target:after-commit")
#: Every crash phase of the migration plugin (``Plugin.crash_phases``).
CRASH_PHASES = (*MIGRATION_PHASES, "source:before-freeze", "target:align", "standby:copying")
