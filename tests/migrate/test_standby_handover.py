"""A move onto the node of the workload's hot standby, when the standby's feed ends while the move waits.

The owner here is a node served in this process, with a plugin that hands
the test the node object, so that the test can hold the workload's lock
(standing for a call that runs) while the move and a real call queue behind
it.  The owner's standby backlog limit is lowered to nothing, so the call's
operation, forwarded to the standby, makes the owner drop the feed: the
move, which saw the feed alive, then takes the lock.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio

import migrate
import workloads
from migrate import _state
from migrate._service import PLUGINS
from nodes import Address, Node, NodeConfig, Plugin, serve

pytestmark = pytest.mark.trio


async def _until(condition) -> None:
    with trio.fail_after(30):
        while not condition():
            await trio.sleep(0.01)


async def test_a_move_onto_a_standby_whose_feed_ended_meanwhile_aborts_cleanly(node_procs, cluster_tls,
                                                                              tmp_path, monkeypatch):
    edge = node_procs.start("edge-1", "edge")
    tls = cluster_tls.issue("app-1", "node")
    served: list[Node] = []
    config = NodeConfig(name="owner-1", listen=Address("127.0.0.1", 0), data_dir=tmp_path / "owner",
                        tls_dir=Path(tls), join=(edge.address,), member=False)
    plugins = (*PLUGINS, Plugin(name="test-node", state=served.append))
    async with trio.open_nursery() as nursery:
        address = await nursery.start(functools.partial(serve, config, plugins=plugins))
        async with migrate.connect(str(address), str(edge.address), tls=tls, local=False) as c:
            h = await c.spawn(workloads.load("counter"), on=str(address))
            await h.protect("standby", to="edge-1")
            assert await h.call("incr", 1) == 1
            owned = _state.service(served[0]).owned[h.workload]
            assert owned.standby is not None and owned.standby.send is not None
            monkeypatch.setattr(_state, "STANDBY_BACKLOG_BYTES", 0)
            outcomes: dict[str, object] = {}

            async def call() -> None:
                outcomes["call"] = await h.call("incr", 1)

            async def move() -> None:
                with pytest.raises(migrate.MigrationFailed, match="lost before the handover") as failed:
                    await h.migrate("edge-1")
                outcomes["move"] = failed.value

            async with trio.open_nursery() as calls:
                async with owned.lock:
                    calls.start_soon(call)
                    await _until(lambda: owned.lock.statistics().tasks_waiting == 1)
                    calls.start_soon(move)
                    await _until(lambda: owned.lock.statistics().tasks_waiting == 2)
            assert outcomes["call"] == 2 and "move" in outcomes
            assert await h.call("incr", 1) == 3
            assert h.node == "owner-1"  # the workload stayed where it ran, and serves
        nursery.cancel_scope.cancel()
