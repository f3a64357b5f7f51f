"""The migration protocol as a node's peer speaks it: its messages, error codes and state streams.

Applications use handles (``migrate.connect``); this module is for tools
and benchmarks that drive nodes with the migration plugin directly
(``benchmarks/bench_protect.py`` times checkpoint fetches and restores
with it).  Everything here is defined in the package's private modules
and re-exported unchanged.
"""

from ._chunks import CHUNK_BYTES, WINDOW_PIECES, chunk_bytes, recut
from ._chunks import send as send_chunks
from ._codes import CRASH_PHASES, MIGRATION_PHASES, MigrationCode
from ._messages import (
    MAbort,
    MAlign,
    MCall,
    MCheckpoint,
    MCheckpointBytes,
    MCheckpointData,
    MCheckpointPart,
    MChunk,
    MCommit,
    MCommitted,
    MFollow,
    MIncoming,
    MLocate,
    MMigrate,
    MPromote,
    MProtect,
    MReplay,
    MReport,
    MResult,
    MSpawn,
    MSpawned,
    MWhere,
    MigrationReport,
)
from ._protect import fetch_parts

__all__ = [
    "CHUNK_BYTES", "CRASH_PHASES", "MAbort", "MAlign", "MCall", "MCheckpoint", "MCheckpointBytes",
    "MCheckpointData", "MCheckpointPart", "MChunk", "MCommit", "MCommitted", "MFollow", "MIGRATION_PHASES",
    "MIncoming", "MLocate", "MMigrate", "MPromote", "MProtect", "MReplay", "MReport", "MResult", "MSpawn",
    "MSpawned", "MWhere", "MigrationCode", "MigrationReport", "WINDOW_PIECES", "chunk_bytes", "fetch_parts", "recut",
    "send_chunks",
]
