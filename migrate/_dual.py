"""The dual-execution handover of a move (strategy "dual"): the target follows the source's log, then switches.

The flow does the I/O; ``_dual_plan.DualPlanner`` decides when to replay
and when to switch, and accounts for the time calls were held.  The cut is
one worker-thread trip, and so is the switch (freeze, seal, commit facts).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import msgpack
import trio

import snapshot
from nodes import NodeClient, RemoteNodeError, WorkloadInfo

from . import _chunks
from . import _hostops as ops
from ._codes import MigrationCode
from ._dual_plan import DualConfig, DualPlanner, DualStep
from ._messages import MAlign, MReplay
from ._oplog import _drain, batches, entry_bytes
from ._state import Owned
from ._transfer import Transfer

logger = logging.getLogger(__name__)


class DualExecution(Transfer):
    """The dual-execution flow of a ``Migration`` (mixed into it; uses its rounds, sends, commit and clock)."""

    # The move's, set by ``Migration``:
    owned: Owned
    _first: snapshot.Snapshot | None  # the first round's full copy, until it is sent

    if TYPE_CHECKING:  # the steps ``Migration`` defines
        async def _rounds(self, client: NodeClient) -> None: ...

        async def _precopy(self, client: NodeClient, target_name: str) -> bool: ...

        async def _commit(self, client: NodeClient, target_name: str, *,
                          digest: tuple[dict[int, list[int]], str] | None = None, from_standby: bool = False,
                          final: bytes = b"", entries: tuple[dict[str, Any], ...] = (),
                          facts: tuple[int, int] | None = None) -> bool: ...

    async def _dual(self, client: NodeClient, target_name: str, info: WorkloadInfo) -> bool:
        """Hand over without freezing for a page transfer (issue 5's "dual").

        1. Pre-copy rounds while the workload runs.
        2. The cut: hold calls only for a local copy of the pages dirtied
           since the last round, and start recording every call's
           nondeterministic inputs.
        3. The source keeps serving; each call after the cut is logged and
           forwarded, and the target replays it with the recorded inputs and
           compares its outcome (dual execution), while the cut travels.
        4. The switch: once the target has caught up, hold calls, hand over
           the last log entries, compare digests of the pages written since
           the cut, and commit.  The blackout is a routing switch.
        A divergence (the target's ``DIVERGED`` refusal) aborts the dual
        handover and falls back to pre-copy.
        """
        node, host, owned = self.node, self.node.host, self.owned
        plan = DualPlanner(DualConfig())
        await self._rounds(client)
        send, receive = trio.open_memory_channel[dict[str, Any]](math.inf)
        async with owned.lock:
            t0 = self.clock()
            cut, calls_at_cut = await self._capture(ops.cut, host, self.workload)
            index_at_cut = owned.index
            owned.record, owned.follow = True, send
            plan.cut_taken(held_from_s=t0, held_until_s=self.clock())
        try:
            with self._stoppable():  # a shutdown stops the move up to its switch (``Transfer.stop``)
                await self._send(client, cut)
                await client.request(MAlign, workload=self.workload, epoch=self.epoch, calls=calls_at_cut,
                                     index=index_at_cut)
            while True:  # dual execution: the target follows the log
                batch = _drain(receive)
                if plan.backlog(len(batch)).step is DualStep.REPLAY:
                    with self._stoppable():
                        await self._replay(client, batch)
                    plan.replayed(len(batch))
                    continue
                async with owned.lock:  # the switch
                    frozen = self.clock()
                    committed = False
                    try:  # one worker-thread trip freezes, seals and reads the commit's facts
                        keep = bool(owned.protected) or owned.standby is not None  # recording, past the follow
                        pages, digest, facts = await node.run_host(ops.switch, host, self.workload, keep)
                        batch += _drain(receive)  # the calls logged before the freeze
                        owned.record, owned.follow = keep, None
                        last = await self._replay_but_last(client, batch, pages)
                        committed = await self._commit(client, target_name, digest=(pages, digest), entries=last,
                                                       facts=facts)
                        plan.replayed(len(batch))
                        self.notes.append(f"target replayed {plan.forwarded} calls after the cut")
                        return committed
                    finally:
                        plan.switch_ended(held_from_s=frozen, held_until_s=self.clock(), committed=committed)
                        self.frozen_s = plan.blackout_s
                        if not committed:
                            await node.run_host(ops.thaw, host, self.workload)
        except RemoteNodeError as exc:
            if exc.code != MigrationCode.DIVERGED:
                raise
            plan.diverged()
            # Fall back: the target dropped its copy; send it again, pre-copy.
            owned.follow = None
            await self._stop_recording_unless_wanted()
            self.notes.append(f"diverged ({exc}); fell back to precopy")
            logger.warning("dual handover diverged, falling back to pre-copy: %s", exc,
                           extra={"workload": self.workload})
            self._first = await self._first_capture_while(self._incoming, client, info)
            return await self._precopy(client, target_name)
        finally:
            owned.follow = None
            if owned.moved is None:  # failed after the cut (the target lost, say), or protection went off
                with trio.CancelScope(shield=True):
                    await self._stop_recording_unless_wanted()

    async def _stop_recording_unless_wanted(self) -> None:
        """Stop recording call inputs if nothing wants them any more (``Owned.wants_record``).

        The cut turns recording on.  Left on after a failed move, every
        later call recorded its inputs and none ran on the event loop.
        """
        owned = self.owned
        if owned.record and not owned.wants_record():
            owned.record = False
            await self.node.run_host(ops.stop_recording, self.node.host, self.workload)

    async def _replay_but_last(self, client: NodeClient, entries: list[dict[str, Any]],
                               pages: dict[int, list[int]]) -> tuple[dict[str, Any], ...]:
        """Replay ``entries`` on the target but for a last batch that fits the commit's frame; return that batch.

        The commit carries it (with the ledger and the page list), so the
        switch waits one round trip for the replay and the commit together.
        """
        room = (client.peer_max_frame_bytes - _chunks.FRAME_OVERHEAD_BYTES
                - len(msgpack.packb(self.owned.ledger.to_wire())) - len(msgpack.packb({str(k): v for k, v in pages.items()})))
        parts = list(batches(entries, max(1, room))) if room > 0 else []
        if not parts or sum(entry_bytes(e) for e in parts[-1]) > room:
            await self._replay(client, entries)
            return ()
        for part in parts[:-1]:
            await self._replay_batch(client, part)
        return parts[-1]

    async def _replay(self, client: NodeClient, entries: list[dict[str, Any]]) -> None:
        """Have the target replay logged operations, in batches that fit its frames."""
        for batch in batches(entries, client.peer_max_frame_bytes - _chunks.FRAME_OVERHEAD_BYTES):
            await self._replay_batch(client, batch)

    async def _replay_batch(self, client: NodeClient, batch: tuple[dict[str, Any], ...]) -> None:
        await client.request(MReplay, workload=self.workload, epoch=self.epoch, entries=batch)
