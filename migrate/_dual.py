"""The dual-execution handover of a move (strategy "dual"): the target follows the source's log, then switches."""

from __future__ import annotations

import logging
import math
import time

import trio

from nodes import RemoteNodeError

from . import _chunks
from ._messages import MAlign, MReplay
from ._oplog import batches
from ._state import SWITCH_BACKLOG, _drain, _thaw

logger = logging.getLogger(__name__)


class DualExecution:
    """The dual-execution flow of a ``Migration`` (mixed into it; uses its rounds, sends and commit)."""

    async def _dual(self, client, target_name: str, info) -> bool:
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
        A divergence aborts the dual handover and falls back to pre-copy.
        """
        node, host, owned = self.node, self.node.host, self.owned
        await self._rounds(client)
        was_record = owned.record
        send, receive = trio.open_memory_channel(math.inf)
        async with owned.lock:
            t0 = time.perf_counter()
            await node.run_host(host.set_replay_mode, self.workload, "record")
            cut = await node.run_host(host.capture_delta, self.workload)
            calls_at_cut = (await node.run_host(host.info, self.workload)).calls
            index_at_cut = owned.index
            owned.record, owned.follow = True, send
            self.cut_s = time.perf_counter() - t0
        try:
            await self._send(client, cut)
            await client.request(MAlign, workload=self.workload, epoch=self.epoch, calls=calls_at_cut,
                                 index=index_at_cut)
            forwarded = 0
            while True:  # dual execution: the target follows the log
                batch = _drain(receive)
                if len(batch) > SWITCH_BACKLOG:
                    await self._replay(client, batch)
                    forwarded += len(batch)
                    continue
                # Caught up to a small backlog.  Waiting for an empty log would
                # never end on a slow link: a call arrives during every round
                # trip.  The switch replays the rest while calls are held.
                async with owned.lock:  # the switch
                    frozen = time.perf_counter()
                    await node.run_host(host.freeze, self.workload)
                    committed = False
                    try:
                        batch += _drain(receive)
                        if batch:
                            await self._replay(client, batch)
                            forwarded += len(batch)
                        since_cut = await node.run_host(host.capture_delta, self.workload)
                        pages = {m.index: [p for r in m.runs for p in range(r.first_page, r.end_page)]
                                 for m in since_cut.memories}
                        digest = await node.run_host(host.pages_digest, self.workload, pages)
                        owned.record, owned.follow = was_record, None
                        if not was_record:
                            await node.run_host(host.set_replay_mode, self.workload, "off")
                        committed = await self._commit(client, target_name, digest=(pages, digest))
                        self.notes.append(f"target replayed {forwarded} calls after the cut")
                        return committed
                    finally:
                        # Calls were held twice: at the cut and at the switch.
                        self.blackout_s = max(self.cut_s, time.perf_counter() - frozen)
                        if not committed:
                            await node.run_host(_thaw, host, self.workload)
        except RemoteNodeError as exc:
            owned.record, owned.follow = was_record, None
            if "diverged" not in str(exc):
                raise
            # Fall back: the target dropped its copy; send it again, pre-copy.
            if not was_record:
                await node.run_host(host.set_replay_mode, self.workload, "off")
            self.notes.append(f"diverged ({exc}); fell back to precopy")
            logger.warning("dual handover diverged, falling back to pre-copy: %s", exc,
                           extra={"workload": self.workload})
            await self._incoming(client, info)
            return await self._precopy(client, target_name)
        finally:
            owned.follow = None

    async def _replay(self, client, entries: list[dict]) -> None:
        """Have the target replay logged operations, in batches that fit its frames."""
        for batch in batches(entries, client.peer_max_frame_bytes - _chunks.FRAME_OVERHEAD_BYTES):
            await client.request(MReplay, workload=self.workload, epoch=self.epoch, entries=batch)
