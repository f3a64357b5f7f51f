"""Demo: live migration of a stateful workload across client, edge and cloud nodes.

Starts two real ``migrate-node`` processes on this machine, ``edge-1`` and
``cloud-1``, with a fresh cluster CA and mutual TLS.  The application (this
process) is the client node.  It starts a key-value store locally, fills
it, and keeps calling it from several tasks while the store moves
local -> edge-1 -> cloud-1 -> local.  At the end it checks that every call
ran exactly once and that the state is exact.  Then a background workload:
a detached, named workload with a schedule keeps running on edge-1 while
no application is connected, an operator moves it to cloud-1, and a new
application attaches it by name there.  Run ``python -m migrate.demo``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import trio
import wasmtime

import migrate
import workloads
from nodes import NodeClient, unwrap_group
from migrate._messages import MMigrate, MReport
from migrate.launcher import LocalCluster, NodeProcess


def _mib(n: int) -> str:
    return f"{n / 2**10:.0f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def _one_int(result: object) -> int:
    """The result of an export that returns one i32 (``Handle.call`` returns None, a number or a tuple)."""
    if not isinstance(result, int):
        raise TypeError(f"expected one integer result, got {result!r}")
    return result


async def run(root: Path, entries: int, callers: int) -> int:
    with LocalCluster(root) as lc:
        edge = lc.start("edge-1", "edge")
        cloud = lc.start("cloud-1", "cloud", join=[edge])
        app_tls = lc.tls_for("demo-app", "node")
        async with migrate.connect(str(edge.address), str(cloud.address), tls=app_tls) as cluster:
            for n in await cluster.nodes():
                print(f"[node] {n.name:8} {n.role:6} {n.address:21} cores={n.cores} rtt={'-' if n.rtt_ms is None else f'{n.rtt_ms:.2f}'} ms")
            kv = await cluster.spawn(workloads.load("kvstore"), on="local")
            counter = await cluster.spawn(workloads.load("counter"), on="local")
            print(f"[app] spawned kvstore {kv.workload} and counter {counter.workload} on {kv.node}")
            for i in range(entries):
                await kv.call_with_bytes("kv_put", b"user:%d" % i, b"session %d " % i * 6)
            print(f"[app] wrote {entries} sessions; kv_count={await kv.call('kv_count')}")

            results: list[int] = []
            stop = trio.Event()

            async def caller() -> None:
                while not stop.is_set():
                    results.append(_one_int(await counter.call("incr", 1)))

            async with trio.open_nursery() as nursery:
                for _ in range(callers):
                    nursery.start_soon(caller)
                for target, strategy in (("edge-1", "precopy"), ("cloud-1", "precopy"), ("local", "precopy"),
                                         ("edge-1", "stop-copy"), ("local", "stop-copy")):
                    before = len(results)
                    for h in (kv, counter):
                        r = await h.migrate(target, strategy=strategy)
                        print(f"[move] {r.workload} {r.source:>8} -> {r.target:<8} {r.strategy:9} "
                              f"rounds={r.rounds} sent={_mib(r.bytes_sent)} frozen={r.frozen_s * 1e3:6.2f} ms "
                              f"total={r.total_s * 1e3:7.1f} ms")
                    print(f"       {len(results) - before} counter calls answered while both moved")
                    await trio.sleep(0.05)
                stop.set()

            ok = len(results) == len(set(results)) == await counter.call("get")
            ok &= sorted(results) == list(range(1, len(results) + 1))
            probe = await kv.read_prefixed(_one_int(await kv.call_with_bytes("kv_get", b"user:%d" % (entries // 2))))
            ok &= probe == b"session %d " % (entries // 2) * 6 and await kv.call("kv_count") == entries
            print(f"[app] {len(results)} calls from {callers} tasks, each ran exactly once: {ok}")
            print(f"[app] kvstore intact on {kv.node}: kv_count={await kv.call('kv_count')}, "
                  f"user:{entries // 2} -> {probe[:24] if probe is not None else 'missing'!r}...")
        ok &= await background(edge, cloud, app_tls)
        return 0 if ok else 1


#: The background workload: ``tick`` (its schedule) and ``on_frame(ptr, len)`` (its events) count, in memory.
WATCH = """
(module
  (memory (export "memory") 1)
  (func $bump (param $at i32) (result i64)
    (i64.store (local.get $at) (i64.add (i64.load (local.get $at)) (i64.const 1))) (i64.load (local.get $at)))
  (func (export "tick") (result i64) (call $bump (i32.const 0)))
  (func (export "on_frame") (param $ptr i32) (param $len i32) (result i64) (call $bump (i32.const 8)))
  (func (export "ticks") (result i64) (i64.load (i32.const 0)))
  (func (export "frames") (result i64) (i64.load (i32.const 8)))
  (func (export "wm_alloc") (param $n i32) (result i32) (i32.const 4096))
  (func (export "wm_free") (param $p i32)))
"""


async def background(edge: NodeProcess, cloud: NodeProcess, app_tls: Path | None) -> bool:
    """A detached workload ticks with no application connected, moves, and is attached again by name."""
    addresses = (str(edge.address), str(cloud.address))
    async with migrate.connect(*addresses, tls=app_tls) as app:
        await app.spawn(bytes(wasmtime.wat2wasm(WATCH)), on="edge-1", name="camera-watch", detached=True, ttl=600.0,
                        every={"tick": 0.05})
        await app.post("camera-watch", "on_frame", b"frame 1")
        print("[bg] camera-watch: detached on edge-1, tick() every 50 ms, one frame posted; the app disconnects")
    await trio.sleep(0.5)
    async with await NodeClient.connect(addresses[0], tls=app_tls) as operator:
        reply = await operator.request(MMigrate, workload="camera-watch", target=addresses[1])
        report = reply.report if isinstance(reply, MReport) else None
    print(f"[bg] an operator moved it {report and report.source} -> {report and report.target} with no app connected")
    async with migrate.connect(*addresses, tls=app_tls) as app:
        h = await app.attach("camera-watch")
        await app.post("camera-watch", "on_frame", b"frame 2")
        ticks, frames = await h.call("ticks"), await h.call("frames")
        print(f"[bg] a new app attached camera-watch by name on {h.node}: {ticks} ticks ran meanwhile, "
              f"{frames} frames, each once")
        await h.remove()
    return h.node == "cloud-1" and isinstance(ticks, int) and ticks > 0 and frames == 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=2000, help="sessions written into the store")
    parser.add_argument("--callers", type=int, default=4, help="tasks calling the counter during the moves")
    parser.add_argument("--dir", type=Path, help="where nodes keep data and logs (default: a temp dir)")
    args = parser.parse_args(argv)
    with unwrap_group():  # a failed call or move shows as itself, not inside a group
        if args.dir:
            return trio.run(run, args.dir, args.entries, args.callers)
        with tempfile.TemporaryDirectory(prefix="wm-demo-") as tmp:
            return trio.run(run, Path(tmp), args.entries, args.callers)


if __name__ == "__main__":
    sys.exit(main())
