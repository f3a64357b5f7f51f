"""Protection combined with moves: real nodes killed (SIGKILL, or dying at a phase of a move).

Every scenario drives two protected workloads through handles:

* a key-value store written with ``call_with_bytes`` (kv_put), plus raw
  ``write_memory`` into a scratch buffer;
* a counter incremented with plain calls.

The test keeps a model of both and checks the final state byte for byte
(every value read back, the scratch buffer, the pair count) and that every
call ran exactly once (the counter's total equals the increments that
succeeded, and they returned 1, 2, ... n in order).
"""

from __future__ import annotations

import contextlib
import os
import random

import pytest
import trio

import migrate
import workloads
from migrate._messages import MLocate

SCRATCH_BYTES = 64 * 1024


class Bench:
    """Two protected workloads and a model of what they must hold."""

    def __init__(self, cluster, kv, counter, scratch: int) -> None:
        self.cluster, self.kv, self.counter, self.scratch = cluster, kv, counter, scratch
        self.pairs: dict[bytes, bytes] = {}
        self.memory = bytearray(SCRATCH_BYTES)
        self.increments: list[int] = []
        self.rng = random.Random(11)

    @classmethod
    async def start(cls, cluster, *, on: str, mode: str, to: str, interval_s: float = 0.2) -> Bench:
        kv = await cluster.spawn(workloads.load("kvstore"), on=on)
        counter = await cluster.spawn(workloads.load("counter"), on=on)
        scratch = await kv.call("wm_alloc", SCRATCH_BYTES)
        await kv.write_memory(scratch, bytes(SCRATCH_BYTES))
        for h in (kv, counter):
            await h.protect(mode, interval_s=interval_s, to=to)
        return cls(cluster, kv, counter, scratch)

    async def steps(self, n: int) -> None:
        """Run ``n`` rounds of put, raw write and increment, updating the model."""
        for _ in range(n):
            key = f"key-{len(self.pairs)}".encode()
            value = self.rng.randbytes(self.rng.randrange(1, 3000))
            assert await self.kv.call_with_bytes("kv_put", key, value) == 1, "kv_put of a new key ran twice"
            self.pairs[key] = value
            offset = self.rng.randrange(0, SCRATCH_BYTES - 512)
            data = self.rng.randbytes(self.rng.randrange(1, 512))
            await self.kv.write_memory(self.scratch + offset, data)
            self.memory[offset:offset + len(data)] = data
            await self.increment()

    async def increment(self) -> None:
        self.increments.append(await self.counter.call("incr", 1))

    async def migrate(self, to: str, **kwargs) -> None:
        for h in (self.kv, self.counter):
            await h.migrate(to, **kwargs)

    async def kill_owner(self, owner, to: str, *, before: int, after: int) -> None:
        """``before`` steps, SIGKILL ``owner`` between calls, ``after`` steps: both workloads are then on ``to``."""
        await self.steps(before)
        owner.kill()
        await self.steps(after)
        assert self.kv.node == to and self.counter.node == to

    async def kill_and_take_over(self, owner, events, to: str, *, before: int, after: int) -> None:
        """``kill_owner``; then every write is there, and ``events`` show both workloads failed over."""
        await self.kill_owner(owner, to, before=before, after=after)
        await self.verify()
        assert {e.workload for e in _failed_over(events)} == {self.kv.workload, self.counter.workload}

    async def verify(self) -> None:
        n = len(self.increments)
        assert self.increments == list(range(1, n + 1)), "an increment was lost or ran twice"
        assert await self.counter.call("get") == n
        assert await self.kv.call("kv_count") == len(self.pairs)
        for key, value in self.pairs.items():
            ptr = await self.kv.call_with_bytes("kv_get", key)
            assert await self.kv.read_prefixed(ptr) == value, f"value of {key!r} differs"
        assert await self.kv.read_memory(self.scratch, SCRATCH_BYTES) == bytes(self.memory)


def _failed_over(events) -> list[migrate.Event]:
    out = []
    while True:
        try:
            event = events.receive_nowait()
        except trio.WouldBlock:
            return [e for e in out if e.kind == "failed_over"]
        out.append(event)


def _nodes(node_procs, mode: str, **env):
    """edge-1 (where the workloads start), edge-2, and for a standby cloud-1; the failover target."""
    edge1 = node_procs.start("edge-1", "edge", env=env.get("edge1"))
    edge2 = node_procs.start("edge-2", "edge")
    nodes = [edge1, edge2]
    if mode == "standby":
        nodes.append(node_procs.start("cloud-1", "cloud"))
    return nodes, ("cloud-1" if mode == "standby" else "local")


def _connect(node_procs, cluster_tls):
    """An application connected to every node the test started."""
    return migrate.connect(*(str(n.address) for n in node_procs.nodes), tls=cluster_tls.issue("app-1", "node"))


@contextlib.asynccontextmanager
async def _protected_bench(node_procs, cluster_tls, mode: str, *, interval_s: float = 0.2, **env):
    """``_nodes``, an application connected to them, its events, and a Bench on edge-1 protected by ``mode``.

    ``env`` goes to ``_nodes``.  Yields (application, events, bench, edge-1, edge-2, the failover target).
    """
    (edge1, edge2, *_), to = _nodes(node_procs, mode, **env)
    async with _connect(node_procs, cluster_tls) as c:
        events = c.events()
        bench = await Bench.start(c, on="edge-1", mode=mode, to=to, interval_s=interval_s)
        yield c, events, bench, edge1, edge2, to


MODES = ["checkpoint", "standby"]


@pytest.mark.parametrize("mode", MODES)
async def test_owner_killed_before_any_move(node_procs, cluster_tls, mode):
    async with _protected_bench(node_procs, cluster_tls, mode) as (c, events, bench, edge1, edge2, to):
        await bench.kill_and_take_over(edge1, events, to, before=25, after=25)


@pytest.mark.parametrize("mode", MODES)
async def test_new_owner_killed_right_after_a_move(node_procs, cluster_tls, mode):
    # Few checkpoints: the failover replays operations from before the
    # move (run on edge-1) and after it (on edge-2) from one log.
    async with _protected_bench(node_procs, cluster_tls, mode,
                                interval_s=30.0) as (c, events, bench, edge1, edge2, to):
        await bench.steps(20)
        await bench.migrate("edge-2")
        await bench.steps(3)
        edge2.kill()
        await bench.steps(20)
        assert bench.kv.node == to
        await bench.verify()


@pytest.mark.parametrize("phase", ["source:frozen", "source:after-commit"])
@pytest.mark.parametrize("mode", MODES)
async def test_owner_dies_during_a_move_with_calls_in_flight(node_procs, cluster_tls, mode, phase):
    crash = {"MIGRATE_NODE_CRASH_AT": phase}
    async with _protected_bench(node_procs, cluster_tls, mode, edge1=crash) as (c, events, bench, edge1, edge2, to):
        await bench.steps(20)
        moved = trio.Event()

        async def hammer():
            while not moved.is_set():
                await bench.increment()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hammer)
            await trio.sleep(0.02)
            try:
                # The source dies at ``phase`` (exit 137, as SIGKILL); the
                # handle then finds the target, or fails over and may move on.
                await bench.kv.migrate("edge-2", strategy="stop-copy")
            except (migrate.MigrationFailed, migrate.WorkloadUnavailable):
                pass
            moved.set()
        assert edge1.proc.wait(timeout=10) == 137
        await bench.steps(20)
        expected = "edge-2" if phase == "source:after-commit" else None
        if expected:
            assert bench.kv.node == expected
        assert bench.counter.node == to  # its node died under it
        await bench.verify()


@pytest.mark.parametrize("mode", MODES)
async def test_killed_again_after_a_failover_and_another_move(node_procs, cluster_tls, mode):
    async with _protected_bench(node_procs, cluster_tls, mode) as (c, events, bench, edge1, edge2, to):
        await bench.kill_owner(edge1, to, before=15, after=15)
        await bench.migrate("edge-2")  # from the failover node (for a standby: off the standby node)
        await bench.kill_owner(edge2, to, before=15, after=15)
        await bench.verify()
        assert len(_failed_over(events)) == 4  # two workloads, twice each
        assert c.protection(bench.kv.workload).failovers == 2


async def test_a_standby_survives_moves_off_its_node_and_back(node_procs, cluster_tls):
    edge1 = node_procs.start("edge-1", "edge")
    cloud = node_procs.start("cloud-1", "cloud")
    async with _connect(node_procs, cluster_tls) as c:
        bench = await Bench.start(c, on="edge-1", mode="standby", to="cloud-1")
        for _ in range(4):  # once failed about 2 times in 3: the move and the standby claimed one epoch
            await bench.steps(5)
            report = await bench.kv.migrate("cloud-1")  # onto the standby node: its copy is committed
            assert any("hot standby" in note for note in report.notes), report.notes
            assert report.bytes_sent == 0
            await bench.steps(5)
            await bench.kv.migrate("edge-1")  # off the standby node: edge-1 feeds a standby there again
        await bench.steps(5)
        edge1.kill()
        await bench.steps(10)
        assert bench.kv.node == "cloud-1"
        await bench.verify()


async def test_owner_dying_while_handing_over_to_its_standby_keeps_the_standby(node_procs, cluster_tls):
    edge1 = node_procs.start("edge-1", "edge", env={"MIGRATE_NODE_CRASH_AT": "source:frozen"})
    cloud = node_procs.start("cloud-1", "cloud")
    async with _connect(node_procs, cluster_tls) as c:
        bench = await Bench.start(c, on="edge-1", mode="standby", to="cloud-1")
        await bench.steps(20)
        try:
            await bench.kv.migrate("cloud-1")
        except (migrate.MigrationFailed, migrate.WorkloadUnavailable):
            pass
        assert edge1.proc.wait(timeout=10) == 137
        await bench.steps(10)
        assert bench.kv.node == "cloud-1" and bench.counter.node == "cloud-1"
        await bench.verify()


async def test_moves_by_another_handle_do_not_break_checkpoints(node_procs, cluster_tls):
    """The protector follows moves it did not see and never takes connect() down."""
    edge1 = node_procs.start("edge-1", "edge")
    edge2 = node_procs.start("edge-2", "edge")
    async with _connect(node_procs, cluster_tls) as c:
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        await h.protect("checkpoint", interval_s=0.01, to="local")
        mover = await c.attach(h.workload)
        total = 0
        for i in range(12):
            for _ in range(5):
                total += 1
                assert await h.call("incr", 1) == total
            await mover.migrate("edge-2" if i % 2 == 0 else "edge-1")
        await trio.sleep(0.1)
        status = c.protection(h.workload)
        assert status.checkpoint_index is not None and status.checkpoint_index > 0
        (edge1 if mover.node == "edge-1" else edge2).kill()
        total += 1
        assert await h.call("incr", 1) == total
        assert await h.call("get") == total
        assert h.node == "local"


async def test_a_checkpoint_larger_than_a_frame_is_streamed_in_parts(node_procs, cluster_tls):
    # Frames of 256 KiB force a 6 MiB workload's checkpoint into about 25
    # parts (the default 64 MiB frame would need a workload over 64 MiB).
    frame = ["--max-frame-bytes", str(256 * 1024)]
    edge1 = node_procs.start("edge-1", "edge", args=frame)
    edge2 = node_procs.start("edge-2", "edge", args=frame)
    blob = os.urandom(6 * 2**20)  # incompressible
    piece = 128 * 1024
    async with _connect(node_procs, cluster_tls) as c:
        h = await c.spawn(workloads.load("kvstore"), on="edge-1")
        ptr = await h.call("wm_alloc", len(blob))
        await h.protect("checkpoint", interval_s=0.05, to="local")
        for off in range(0, len(blob), piece):  # logged writes, replayed in frame-sized batches
            await h.write_memory(ptr + off, blob[off:off + piece])
        with trio.fail_after(30):
            while (status := c.protection(h.workload)).checkpoint_bytes < len(blob):
                await trio.sleep(0.05)
        assert status.checkpoint_parts >= len(blob) // (256 * 1024)

        async def read_all() -> bytes:
            return b"".join([await h.read_memory(ptr + off, piece) for off in range(0, len(blob), piece)])

        edge1.kill()
        assert await read_all() == blob
        assert h.node == "local"
        await h.migrate("edge-2")  # local -> edge-2 in chunks that fit edge-2's frames
        await h.write_memory(ptr, b"after")
        edge2.kill()
        assert await read_all() == b"after" + blob[5:]
        assert h.node == "local"


@pytest.mark.parametrize("mode", MODES)
async def test_sigkill_of_the_source_while_a_move_streams_pages(node_procs, cluster_tls, mode):
    async with _protected_bench(node_procs, cluster_tls, mode, interval_s=30.0) as (c, events, bench, edge1, edge2, to):
        # 24 MiB of random bytes: the move takes long enough to be caught mid-stream.
        big = os.urandom(24 * 2**20)
        ptr = await bench.kv.call("wm_alloc", len(big))
        for off in range(0, len(big), 4 * 2**20):
            await bench.kv.write_memory(ptr + off, big[off:off + 4 * 2**20])
        await bench.steps(10)
        target = await c.client(str(edge2.address))

        async def move():
            try:
                await bench.kv.migrate("edge-2", strategy="precopy")
            except (migrate.MigrationFailed, migrate.WorkloadUnavailable):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(move)
            with trio.fail_after(30):
                while (await target.request(MLocate, workload=bench.kv.workload)).status != "incoming":
                    await trio.sleep(0.002)
            edge1.kill()  # SIGKILL while edge-2 receives pages
        await bench.steps(10)
        await bench.verify()
        assert b"".join([await bench.kv.read_memory(ptr + off, 4 * 2**20)
                         for off in range(0, len(big), 4 * 2**20)]) == big


async def _inline_calls(c, h, calls: int) -> int:
    """How many of ``calls`` counter calls ran on the owner's event loop (a workload that records nothing)."""
    client = await c.client(h._address)
    before = (await client.status()).counters.get("calls_inline", 0)
    for _ in range(calls):
        await h.call("incr", 1)
    return (await client.status()).counters.get("calls_inline", 0) - before


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("moved_first", [False, True], ids=["in-place", "after-a-dual-move"])
async def test_protection_turned_off_stops_recording_inputs(node_procs, cluster_tls, mode, moved_first):
    """Protected, a workload's calls record their inputs and none runs on the event loop; ``protect("off")``
    (on its first owner, or on the one a dual move made) stops that, and a call runs there again."""
    nodes, to = _nodes(node_procs, mode)
    async with _connect(node_procs, cluster_tls) as c:
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        assert await _inline_calls(c, h, 3) == 3
        await h.protect(mode, interval_s=3600, to=to)
        assert await _inline_calls(c, h, 3) == 0
        if moved_first:
            await h.migrate("edge-2", strategy="dual")
            assert h.node == "edge-2" and await _inline_calls(c, h, 3) == 0  # still protected
        await h.protect("off")
        assert await _inline_calls(c, h, 3) == 3
        assert await h.call("get") == (12 if moved_first else 9)
