"""Failure semantics: real nodes killed at each phase of a move, and cut links.

Nodes crash through MIGRATE_NODE_CRASH_AT, which makes the process die at
once (exit 137, as SIGKILL would) at a precise phase of a migration.
"""

import pytest
import trio

import migrate
import workloads

pytestmark = pytest.mark.trio


async def _hammer(h, results, stop: trio.Event):
    while not stop.is_set():
        results.append(await h.call("incr", 1))
        await trio.sleep(0)


def _assert_exactly_once(results):
    assert len(results) == len(set(results)), "a call ran twice"
    assert sorted(results) == list(range(1, len(results) + 1)), "a call was lost"


@pytest.mark.parametrize("phase", ["target:chunk", "target:before-commit", "target:after-commit"])
async def test_target_dying_before_the_source_learns_of_the_commit_aborts_and_loses_nothing(edge_and_cloud, phase):
    async with edge_and_cloud(cloud_env={"MIGRATE_NODE_CRASH_AT": phase}) as (edge, cloud, c):
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        results: list[int] = []
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_hammer, h, results, stop)
            await trio.sleep(0.05)
            with pytest.raises(migrate.MigrationFailed, match="aborted"):
                await h.migrate("cloud-1", strategy="precopy")
            await trio.sleep(0.05)
            stop.set()
        assert cloud.proc.wait(timeout=10) == 137
        assert h.node == "edge-1"
        _assert_exactly_once(results)
        assert await h.call("get") == len(results)
        # The source fenced itself above the epoch the dead target may have taken.
        assert h.epoch >= 1


async def test_source_dying_after_the_commit_leaves_the_target_in_charge(edge_and_cloud):
    async with edge_and_cloud(edge_env={"MIGRATE_NODE_CRASH_AT": "source:after-commit"}) as (edge, cloud, c):
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        results: list[int] = []
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(_hammer, h, results, stop)
            await trio.sleep(0.05)
            report = await h.migrate("cloud-1", strategy="stop-copy")
            await trio.sleep(0.05)
            stop.set()
        assert edge.proc.wait(timeout=10) == 137
        assert h.node == "cloud-1" and report.target == "cloud-1"
        _assert_exactly_once(results)
        assert await h.call("get") == len(results)


async def test_source_dying_while_frozen_gives_a_typed_error_saying_the_call_may_have_run(edge_and_cloud):
    async with edge_and_cloud(edge_env={"MIGRATE_NODE_CRASH_AT": "source:frozen"}) as (edge, cloud, c):
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        h.retry_s = h.reconnect_timeout_s = 1.0
        assert await h.call("incr", 1) == 1
        with pytest.raises((migrate.MigrationFailed, migrate.WorkloadUnavailable)):
            await h.migrate("cloud-1", strategy="stop-copy")
        with pytest.raises(migrate.WorkloadUnavailable) as info:
            await h.call("incr", 1)
        assert info.value.ran in (None, False)
        assert "no node can serve" in str(info.value)


class CuttableProxy:
    """A TCP relay on loopback that forwards until told to cut, then drops everything."""

    def __init__(self, target):
        self.target = target
        self.cut = trio.Event()
        self.forwarded = 0
        self.cut_after_bytes: int | None = None

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, downstream):
        upstream = await trio.open_tcp_stream(self.target.host, self.target.port)
        async with trio.open_nursery() as nursery:
            async def pump(src, dst):
                try:
                    while (data := await src.receive_some(65536)):
                        self.forwarded += len(data)
                        if self.cut_after_bytes is not None and self.forwarded > self.cut_after_bytes:
                            self.cut.set()
                        if self.cut.is_set():
                            break
                        await dst.send_all(data)
                except trio.BrokenResourceError:
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump, downstream, upstream)
            nursery.start_soon(pump, upstream, downstream)
        await trio.aclose_forcefully(upstream)
        await trio.aclose_forcefully(downstream)


async def test_cutting_the_link_mid_transfer_aborts_and_the_workload_carries_on(edge_and_cloud):
    async with edge_and_cloud() as (edge, cloud, c):
        h = await c.spawn(workloads.load("dirtier"), on="edge-1")
        await h.call("dt_init", 32)
        before = await h.call("dt_checksum")
        proxy = CuttableProxy(cloud.address)
        proxy.cut_after_bytes = 2 * 2**20  # well inside the first round
        async with trio.open_nursery() as nursery:
            port = await nursery.start(proxy.serve)
            c.learn("cloud-1-via-proxy", f"127.0.0.1:{port}")
            with pytest.raises(migrate.MigrationFailed, match="aborted"):
                await h.migrate("cloud-1-via-proxy", strategy="precopy")
            nursery.cancel_scope.cancel()
        assert proxy.cut.is_set()
        assert h.node == "edge-1"
        assert await h.call("dt_checksum") == before
        await h.call("dt_dirty", 10, 7)
        # The link is back: the same move now succeeds, and the target's
        # leftover from the cut attempt does not get in the way.
        report = await h.migrate("cloud-1", strategy="precopy")
        assert h.node == "cloud-1" and report.rounds >= 1
        assert await h.call("dt_pages") > 0
