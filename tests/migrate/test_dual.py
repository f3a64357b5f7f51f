"""Dual-execution handover between real nodes: replay, comparison, fallback."""

import pytest
import trio

import migrate
import nodes
import workloads


async def _stream(h, export, results, stop, *args):
    while not stop.is_set():
        results.append(await h.call(export, *args))
        await trio.sleep(0)


async def test_dual_hands_over_a_busy_counter_exactly(edge_and_cloud):
    async with edge_and_cloud() as (edge, cloud, c):
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        results, stop = [], trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(_stream, h, "incr", results, stop, 1)
            await trio.sleep(0.05)
            report = await h.migrate("cloud-1", strategy="dual")
            await trio.sleep(0.05)
            stop.set()
        assert report.strategy == "dual" and h.node == "cloud-1"
        assert not any("diverged" in n for n in report.notes), report.notes
        assert any("replayed" in n for n in report.notes), report.notes
        print(report)
        assert len(results) == len(set(results)) and sorted(results) == list(range(1, len(results) + 1))
        assert await h.call("get") == len(results)


async def test_a_workload_reading_clocks_and_random_hands_over_with_identical_state(edge_and_cloud):
    async with edge_and_cloud() as (edge, cloud, c):
        events = c.events()
        h = await c.spawn(workloads.load("clockrand"), on="edge-1")
        samples, stop = [], trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stream, h, "sample", samples, stop)
            await trio.sleep(0.05)
            report = await h.migrate("cloud-1", strategy="dual")
            await trio.sleep(0.05)
            stop.set()
        assert h.node == "cloud-1" and not any("diverged" in n for n in report.notes), report.notes
        # The target replayed the source's clock and random inputs: its state is
        # exactly the state the last sample produced, wherever that sample ran,
        # and the sample count matches every call made.
        assert await h.call("state") == samples[-1]
        assert await h.call("samples") == len(samples)
        assert len(set(samples)) == len(samples)
        kinds = []
        while True:
            try:
                kinds.append(events.receive_nowait().kind)
            except trio.WouldBlock:
                break
        assert "moved" in kinds


async def test_a_nondeterministic_workload_is_detected_and_falls_back_to_precopy(edge_and_cloud):
    """grind() counts until the call is interrupted: how far it gets differs
    between source and target, the digest of the written pages disagrees at
    the switch, and the handover falls back to pre-copy."""
    fast = ["--call-timeout-s", "0.05"]
    async with edge_and_cloud(args=fast) as (edge, cloud, c):
        h = await c.spawn(workloads.load("trap"), on="edge-1")
        stop = trio.Event()
        timeouts = 0

        async def grinder():
            nonlocal timeouts
            while not stop.is_set():
                with pytest.raises(nodes.WorkloadTimeout):
                    await h.call("grind")
                timeouts += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(grinder)
            await trio.sleep(0.12)
            report = await h.migrate("cloud-1", strategy="dual")
            stop.set()
        assert h.node == "cloud-1"
        assert any("diverged" in n and "fell back to precopy" in n for n in report.notes), report.notes
        before = await h.call("ground")
        assert before > 0 and timeouts >= 1


async def test_a_dual_move_that_fails_after_its_cut_stops_recording_calls(edge_and_cloud):
    """The target dies when the source aligns it (right after the cut, which turned recording on).

    The move fails and the workload stays.  Its calls must stop recording their inputs: left on, none of
    them ran on the event loop any more, for as long as the workload lived."""
    async with edge_and_cloud(cloud_env={"MIGRATE_NODE_CRASH_AT": "target:align"}) as (edge, cloud, c):
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        client = await c.client(str(edge.address))

        async def inline_after(calls: int) -> int:
            before = (await client.status()).counters.get("calls_inline", 0)
            for _ in range(calls):
                await h.call("incr", 1)
            return (await client.status()).counters.get("calls_inline", 0) - before

        assert await inline_after(5) == 5  # a workload that records nothing: its short calls run inline
        with trio.fail_after(60), pytest.raises(migrate.MigrationFailed):
            await h.migrate("cloud-1", strategy="dual")
        await trio.to_thread.run_sync(cloud.proc.wait, 30)
        assert h.node == "edge-1"
        assert await inline_after(5) == 5
        assert await h.call("get") == 10
