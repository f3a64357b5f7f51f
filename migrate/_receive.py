"""Applying an incoming copy's chunks: a first round decoded straight into a new workload, later rounds as deltas.

A first round goes into a ``nodes.FedWorkload`` piece by piece
(``Host.restore_fed``): each chunk is decoded into the new instance as it
arrives, which is published only once the round is complete.  Decoding a
first round whole and then restoring it faulted every page in twice (in the
round's buffers, then in the instance), held the round twice (938 MiB at
its peak on the target of a 1 GiB move) and copied it in one 0.4-0.7 s
step at the round's end.  A first round sent while the workload runs at
the source (``Incoming.live``) is decoded on the node's bulk thread, at a
lower CPU priority: the source's calls compete with it for the CPU.  Later
rounds are deltas onto a live copy: small, assembled whole and applied in
the worker-thread trip that decodes their last chunk, at the usual
priority (calls wait for the final one).
"""

from __future__ import annotations

import trio

import snapshot
from nodes import Host, Node, run_bulk

from . import _hostops as ops
from ._state import Incoming


async def apply_chunk(node: Node, inc: Incoming, data: bytes) -> bool:
    """Decode chunk ``data`` into ``inc`` (called holding ``inc.lock``); True once it completed a round.

    Raises a ``snapshot.RemoteSnapshotError`` for a stream that does not
    decode, and what ``Host.restore`` and ``ops.apply`` raise for a round
    that does not fit; a first round's half-restored workload is then given
    up (the copy stays uncreated).
    """
    if inc.created:
        return await node.run_host(_decode_apply, node.host, inc, data)
    if inc.fed is None:
        inc.fed = await node.run_host(node.host.restore_fed, inc.module_sha256, workload_id=inc.host_id,
                                      app=inc.app, **inc.settings)
    fed = inc.fed
    try:
        done = await (run_bulk if inc.live else trio.to_thread.run_sync)(fed.feed, data)
    finally:
        if fed.ended:  # published, or given up on an error
            inc.fed = None
    inc.created = done
    return done


def _decode_apply(host: Host, inc: Incoming, data: bytes) -> bool:
    """Decode chunk ``data`` of a later round and, if it completes the round, apply it: one worker-thread trip.

    A final round's last piece travels in the commit, and the switch waits
    for it: as two trips (decode, then apply) each was a wait of its own
    for a worker thread while both nodes were busy.
    """
    snap = _decode_into(inc, data)
    if snap is None:
        return False
    inc.decoder = snapshot.SnapshotDecoder()
    inc.assembler = snapshot.SnapshotAssembler()
    ops.apply(host, inc.host_id, snap)
    return True


def _decode_into(inc: Incoming, data: bytes) -> snapshot.Snapshot | None:
    """Feed ``data`` to the round's decoder; the round's snapshot once it is complete, else None.

    Assembling joins the round's pages into runs: for a 1 GiB first round
    that held the target's event loop for 66-101 ms when it ran there.
    """
    inc.decoder.feed(data)
    while (event := inc.decoder.next_event()) is not None:
        inc.assembler.add(event)
    return inc.assembler.snapshot() if inc.assembler.complete else None
