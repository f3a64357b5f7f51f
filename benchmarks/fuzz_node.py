"""Fuzz campaign against a live node: ``python -m benchmarks.fuzz_node [--frames N] [--quick] [--seed S]``.

One real ``migrate-node serve`` process over mutual TLS gets ``--frames``
hostile frames (100,000 by default; 10,000 with ``--quick``) made by
``benchmarks._fuzz_mutate`` from sessions recorded against real nodes
(``benchmarks._fuzz_record``).  Attackers connect with a client
certificate and with a node certificate (which may send the node-only
migration messages), alternately, several connections at once.  Each
connection carries a pipelined batch of frames the node must answer,
ending with one frame after which it must close the connection (a
protocol error, a Goodbye) or wait for bytes that never come; the
attacker then opens a new connection.  Every reply, error code and
Goodbye is counted, and checked against what the protocol's own state
machine says the node must do with each frame.

Meanwhile a well-behaved application (its own client certificate) keeps
two guard workloads: a counter it increments and a memory region it
rewrites.  Every 1,000 frames (``run_campaign``'s ``check_every``) it
checks that the node process is alive and answers, that the counter holds exactly the sum of its
increments and the region exactly the bytes it wrote.  Other
workloads are fair game: the recorded ones are re-created after each check
and the ones the fuzz deployed are removed.  What the campaign
guarantees about the guards: no fuzz frame names them (their ids carry 64
random bits that the mutator is never told), so any change to them is a
node bug, counted as a state mismatch.  RSS is sampled from
``/proc/PID/status`` (VmRSS every 0.25 s and at each check, VmHWM at the
end).  A reply later than 30 s, or a connection the node should have
closed and did not within 5 s, is reported as an anomaly: timings, which
the short campaign in the tests does not assert.
"""

from __future__ import annotations

import hashlib
import platform
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgpack  # noqa: E402
import trio  # noqa: E402

import workloads  # noqa: E402
from benchmarks._fuzz_mutate import CLOSE, REQUESTS, STALL, Mutator, classify  # noqa: E402
from benchmarks._fuzz_record import record_sessions  # noqa: E402
from benchmarks._fuzz_tally import Reader, Tally, describe, kind_of, rss  # noqa: E402
from benchmarks._measure import argument_parser, table_head, write_results  # noqa: E402
from migrate.launcher import LocalCluster, NodeProcess  # noqa: E402
from migrate.wire import MSpawn  # noqa: E402
from nodes import Connection, NodeClient, client_context  # noqa: E402

#: Recorded workloads, re-created after every check so that mutations of their frames reach real state.
VICTIMS = ("rec-plain", "rec-move", "rec-standby")
#: How long the guard's check may take, and a batch's replies before they count as late: a chunk of
#: an incoming copy that comes out of turn waits up to 120 s for its turn by design, and is not waited for.
BATCH_TIMEOUT_S = 30.0
REPLY_WAIT_S = 5.0
GUARD_OFFSET, GUARD_BYTES = 1 << 16, 4096


class Campaign:
    def __init__(self, node: NodeProcess, tls: dict[str, Path], seeds: list, *, frames: int, seed: int,
                 check_every: int, workers: int) -> None:
        self.node, self.tls, self.target = node, tls, frames
        self.rng = random.Random(seed)
        self.mutator = Mutator(seeds, random.Random(seed + 1))
        self.check_every, self.workers = check_every, workers
        self.tally = Tally()
        self.next_check = check_every
        self.done = False
        self.counter_id = f"guard-counter-{secrets.token_hex(8)}"
        self.memory_id = f"guard-memory-{secrets.token_hex(8)}"
        self.expected_count = 0
        self.expected_memory = b""

    # --- the well-behaved application -----------------------------------

    async def _victims(self, peer: NodeClient) -> None:
        sha = await peer.ensure_module(workloads.load("counter"))
        await peer.ensure_module(workloads.load("kvstore"))
        present = {w.workload_id for w in await peer.workloads()}
        for name in VICTIMS:
            if name in present:
                continue
            try:
                if name == "rec-plain":
                    await peer.deploy(sha, workload_id=name)
                else:
                    await peer.request(MSpawn, module_sha256=sha, workload=name, app="fuzz")
            except Exception:  # a fuzz frame may hold the name (an incoming copy): next time
                pass
        guards = {self.counter_id, self.memory_id}
        for info in await peer.workloads():
            if info.workload_id not in guards and info.workload_id not in VICTIMS:
                try:
                    await peer.remove(info.workload_id)
                except Exception:
                    pass

    async def _check(self, guard: NodeClient, peer: NodeClient) -> None:
        t = self.tally
        if self.node.proc.poll() is not None:
            t.n["crashes"] += 1
            raise RuntimeError(f"the node exited with {self.node.proc.returncode}")
        await guard.ping()
        by = self.rng.randrange(1, 1000)
        self.expected_count += by
        got = await guard.call(self.counter_id, "incr", by)
        value = await guard.call(self.counter_id, "get")
        start = self.rng.randrange(GUARD_BYTES - 64)
        patch = self.rng.randbytes(64)
        await guard.write_memory(self.memory_id, GUARD_OFFSET + start, patch)
        mem = bytearray(self.expected_memory)
        mem[start:start + 64] = patch
        self.expected_memory = bytes(mem)
        data = await guard.read_memory(self.memory_id, GUARD_OFFSET, GUARD_BYTES)
        t.rss_series.append(rss(self.node.pid)["VmRSS"])
        if got != self.expected_count or value != self.expected_count or \
                hashlib.sha256(data).digest() != hashlib.sha256(self.expected_memory).digest():
            t.n["mismatches"] += 1
        else:
            t.n["checks"] += 1
        await self._victims(peer)

    async def _guardian(self) -> None:
        async with await NodeClient.connect(self.node.address, tls=self.tls["guard"]) as guard, \
                await NodeClient.connect(self.node.address, tls=self.tls["peer"]) as peer:
            counter = workloads.load("counter")
            await guard.deploy(counter, workload_id=self.counter_id)
            await guard.deploy(counter, workload_id=self.memory_id)
            self.expected_count = await guard.call(self.counter_id, "get")
            self.expected_memory = self.rng.randbytes(GUARD_BYTES)
            await guard.write_memory(self.memory_id, GUARD_OFFSET, self.expected_memory)
            await self._victims(peer)
            self.ready.set()
            while not self.done:
                self.tally.rss_peak_sampled = max(self.tally.rss_peak_sampled, rss(self.node.pid)["VmRSS"])
                if self.tally.n["frames"] >= self.next_check or self.tally.n["frames"] >= self.target:
                    self.next_check += self.check_every
                    with trio.fail_after(BATCH_TIMEOUT_S):
                        await self._check(guard, peer)
                    if self.tally.n["frames"] >= self.target:
                        self.done = True
                await trio.sleep(0.25 if self.tally.n["frames"] < self.next_check else 0)

    # --- the attackers --------------------------------------------------

    def _batch(self) -> tuple[list[tuple[bytes, tuple[int, ...]]], tuple[bytes, str]]:
        """Frames the node must answer (with their ids), then one it must close on or wait after."""
        size, benign, used = self.rng.randint(4, 40), [], set()
        final = None
        while len(benign) < size or final is None:
            data = self.mutator.frame()
            verdict, ids = classify(data)
            if not ids and verdict == REQUESTS or used.intersection(ids) or len(set(ids)) != len(ids):
                continue  # a duplicate id may or may not be in flight still: not a clear expectation
            if verdict == REQUESTS and len(benign) < size:
                benign.append((data, ids))
                used.update(ids)
            elif verdict != REQUESTS and final is None and not ids:
                final = (data, verdict)
        return benign, final

    async def _connection(self, role: str) -> None:
        t = self.tally
        host, port = self.node.address.host, self.node.address.port
        name = "fuzz-peer" if role == "node" else "fuzz-app"
        tcp = await trio.open_tcp_stream(host, port)
        stream = trio.SSLStream(tcp, client_context(self.tls["peer" if role == "node" else "app"]),
                                server_hostname=host, https_compatible=False)
        t.n["connections"] += 1
        try:
            await stream.do_handshake()
            conn = Connection()
            reader = Reader(stream)
            await stream.send_all(conn.send(conn.hello(name=name, role="edge" if role == "node" else "app")))
            hello = await reader.next()
            if hello is None or hello[0] != "hello":
                t.anomaly("handshake_refused", b"", repr(hello))
                return
            benign, (final, verdict) = self._batch()
            waiting = {i: data for data, ids in benign for i in ids}
            t.n["frames"] += len(benign) + 1
            t.by["verdicts"].update([REQUESTS] * len(benign) + [verdict])
            try:
                await stream.send_all(b"".join(d for d, _ in benign) + final)
            except (trio.BrokenResourceError, OSError):
                pass  # the node closed early: the reader sees it
            parting: dict = {}  # the node's Goodbye, if it sent one
            closed = await self._collect(reader, waiting, verdict, final, benign, parting)
            if closed:
                t.n["closed_by_node"] += 1
                if verdict != CLOSE:
                    t.anomaly("closed_unexpectedly", final, f"verdict {verdict}, {len(waiting)} replies missing, "
                                                            f"the node's Goodbye: {parting or None}")
            else:
                t.n["closed_by_us"] += 1
        finally:
            await trio.aclose_forcefully(stream)

    async def _collect(self, reader: Reader, waiting: dict[int, bytes], verdict: str, final: bytes,
                       benign: list[tuple[bytes, tuple[int, ...]]], parting: dict) -> bool:
        """Take replies until each awaited one came and, for a CLOSE frame, the node closed; True if it closed.

        The node's Goodbye, if it sent one, goes into ``parting``.

        A chunk out of turn is not waited for (it waits for its turn by
        design); other replies are, up to BATCH_TIMEOUT_S, and count as
        slow after REPLY_WAIT_S.
        """
        t, start = self.tally, time.monotonic()
        while waiting or verdict == CLOSE:
            chunks_only = all(kind_of(data) == "m_chunk" for data in waiting.values())
            limit = REPLY_WAIT_S if chunks_only else BATCH_TIMEOUT_S
            with trio.move_on_after(start + limit - time.monotonic()):
                message = await reader.next()
                if message is None:
                    return True
                kind, fields = message
                if kind == "goodbye":  # the node's last word: requests still running are not answered
                    t.by["goodbyes"][fields.get("code")] += 1
                    parting.update(fields)
                    return True
                t.by["replies"][kind] += 1
                if kind == "error":
                    t.by["errors"][fields.get("code")] += 1
                    if fields.get("code") == "internal":
                        t.anomaly("internal_error", waiting.get(fields.get("id"), b""), fields.get("message"))
                data = waiting.pop(fields.get("id"), None)
                if data is None:
                    t.anomaly("unexpected_reply", b"", repr(message)[:300])
                elif time.monotonic() - start > REPLY_WAIT_S:
                    t.by["slow"][kind_of(data)] += 1
                    t.slowest = max(t.slowest, time.monotonic() - start)
                continue
            self._late(waiting, verdict, final, [data for data, _ in benign])
            return False
        return False

    def _late(self, waiting: dict[int, bytes], verdict: str, final: bytes, batch: list[bytes]) -> None:
        """Account for a batch the node did not finish in time (see ``_collect``)."""
        kinds = Counter(kind_of(data) for data in waiting.values())
        described = [describe(data)[:160] for data in batch]
        parting = kind_of(final) == "goodbye"  # the node closes once the requests still running end
        if verdict == CLOSE and not (parting and set(kinds) <= {"m_chunk"}):
            # a protocol error is answered with a Goodbye at once, whatever still runs
            self.tally.anomaly("not_closed", final, f"waiting: {dict(kinds)}", batch=described)
        elif set(kinds) == {"m_chunk"}:
            self.tally.n["parked"] += len(waiting)  # out of turn: waits CHUNK_TURN_WAIT_S by design
        else:
            frame = next(data for data in waiting.values() if kind_of(data) != "m_chunk")
            self.tally.anomaly("no_reply_in_time", frame, f"waiting: {dict(kinds)}", batch=described)

    async def _attacker(self, index: int) -> None:
        await self.ready.wait()
        n = index
        while not self.done:
            n += 1
            try:
                await self._connection("node" if n % 3 else "client")
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.tally.anomaly("connection_failed", b"", repr(exc))
                if self.node.proc.poll() is not None:
                    return
            while self.tally.n["frames"] >= self.next_check and not self.done:
                await trio.sleep(0.01)  # let the check run before more frames go out

    async def run(self) -> None:
        self.ready = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._guardian)
            for i in range(self.workers):
                nursery.start_soon(self._attacker, i)


def run_campaign(root: Path, *, frames: int, seed: int = 1, check_every: int = 1000, workers: int = 3) -> dict:
    """Run the campaign with nodes under ``root`` and return its figures (see the module docstring)."""
    seeds = record_sessions(root / "recording")
    with LocalCluster(root / "nodes") as cluster:
        tls = {"guard": cluster.tls_for("fuzz-guard", "client"), "app": cluster.tls_for("fuzz-app", "client"),
               "peer": cluster.tls_for("fuzz-peer", "node")}
        node = cluster.start("fuzz-target", "edge")
        campaign = Campaign(node, tls, seeds, frames=frames, seed=seed, check_every=check_every, workers=workers)
        start = time.perf_counter()
        trio.run(campaign.run)
        seconds = time.perf_counter() - start
        usage = rss(node.pid)
        alive = node.proc.poll() is None

        async def counters() -> dict:
            async with await NodeClient.connect(node.address, tls=tls["guard"]) as client:
                return dict((await client.status()).counters)
        status_counters = trio.run(counters)
        t = campaign.tally
    return {
        "frames_tried": t.n["frames"], "seconds": round(seconds, 1), "frames_per_s": round(t.n["frames"] / seconds),
        "seed": seed, "seed_messages": len(seeds), "connections": t.n["connections"],
        "connections_closed_by_node": t.n["closed_by_node"], "connections_closed_by_us": t.n["closed_by_us"],
        "expected": dict(t.by["verdicts"]), "replies": dict(t.by["replies"]),
        "refusals": {str(k): v for k, v in t.by["errors"].items()},
        "goodbyes": {str(k): v for k, v in t.by["goodbyes"].items()}, "mutations": dict(campaign.mutator.made),
        "parked_chunks": t.n["parked"], "slow_replies": dict(t.by["slow"]), "slowest_reply_s": round(t.slowest, 1),
        "guard_checks_passed": t.n["checks"], "state_mismatches": t.n["mismatches"],
        "node_crashes": t.n["crashes"] + (not alive),
        "anomalies": dict(t.by["anomalies"]), "anomaly_samples": t.samples,
        "rss_peak_bytes": usage["VmHWM"], "rss_end_bytes": usage["VmRSS"],
        "rss_peak_sampled_bytes": t.rss_peak_sampled,
        "rss_at_checks_mib": [round(b / (1 << 20), 1) for b in t.rss_series],
        "node_counters": status_counters,
    }


def markdown(report: dict) -> str:
    mib = 1 << 20
    lines = table_head("Node fuzz campaign", [
        f"{report['frames_tried']} mutated frames against one `migrate-node` over mutual TLS "
        f"(client and node certificates), {report['connections']} connections, {report['seconds']} s "
        f"({report['frames_per_s']} frames/s), made from {report['seed_messages']} recorded messages "
        f"(seed {report['seed']})."], ["figure", "value"])
    rows = [
        ("frames the node had to answer / close on / wait after",
         " / ".join(str(report["expected"].get(k, 0)) for k in (REQUESTS, CLOSE, STALL))),
        ("replies", sum(report["replies"].values())),
        ("refusals (error replies), by code", ", ".join(f"{k} {v}" for k, v in sorted(
            report["refusals"].items(), key=lambda kv: -kv[1]))),
        ("connections closed by the node", report["connections_closed_by_node"]),
        ("guard checks passed", report["guard_checks_passed"]),
        ("state mismatches", report["state_mismatches"]),
        ("node crashes", report["node_crashes"]),
        ("anomalies", ", ".join(f"{k} {v}" for k, v in report["anomalies"].items()) or "none"),
        ("node RSS peak (VmHWM) / at the end", f"{report['rss_peak_bytes'] / mib:.1f} MiB / "
                                                f"{report['rss_end_bytes'] / mib:.1f} MiB"),
    ]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", f"Python {platform.python_version()}, {len(__import__('os').sched_getaffinity(0))} CPUs.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, "10,000 frames")
    parser.add_argument("--frames", type=int, help="frames to send (default 100,000; 10,000 with --quick)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    frames = args.frames or (10_000 if args.quick else 100_000)
    with tempfile.TemporaryDirectory(prefix="wm-fuzz-") as tmp:
        report = run_campaign(Path(tmp), frames=frames, seed=args.seed)
    write_results(args.out, "fuzz", args.quick, report, markdown(report))
    ok = report["node_crashes"] == 0 and report["state_mismatches"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
