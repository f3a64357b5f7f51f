"""Recording real sessions for the fuzz campaign: the frames an application, the CLI and a node really send.

``record_sessions`` starts two ``--insecure`` nodes on loopback, each
behind a recording TCP proxy, and drives them as users do: ``NodeClient``
(ping, put_module, has_module, deploy, call, read and write memory, output,
list, peers, status, remove), migration requests (spawn, call, locate,
checkpoint and its parts, protect), and node to node traffic: a move
(``m_migrate`` whose target is the second node's proxy, so the source's
``m_incoming``/``m_chunk``/``m_commit`` pass through it) and a hot standby
(``m_follow``: ``m_incoming``/``m_chunk``/``m_align``/``m_replay`` with
``standby``).  Every frame a client or node sent to a node is kept, in
order, as its decoded msgpack payload ``[kind, fields]``: the seeds the
mutator (``benchmarks._fuzz_mutate``) works from.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import msgpack
import trio

import workloads
from migrate.launcher import LocalCluster
from migrate.wire import MCall, MCheckpoint, MCheckpointPart, MFollow, MLocate, MMigrate, MProtect, MSpawn
from nodes import NodeClient

_HEADER = struct.Struct(">II")


def split_frames(stream: bytes) -> list[bytes]:
    """The payloads of the whole frames at the start of ``stream`` (a trailing partial frame is dropped)."""
    out, pos = [], 0
    while pos + _HEADER.size <= len(stream):
        length, _ = _HEADER.unpack_from(stream, pos)
        end = pos + _HEADER.size + length
        if end > len(stream):
            break
        out.append(stream[pos + _HEADER.size:end])
        pos = end
    return out


class _Proxy:
    """Forwards TCP connections to ``target``, keeping what each client sent."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sent: list[bytearray] = []
        self.port = 0

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        record = bytearray()
        self.sent.append(record)
        try:
            upstream = await trio.open_tcp_stream(*self.target)
        except OSError:
            await downstream.aclose()
            return
        async with trio.open_nursery() as nursery:
            async def pump(src: trio.SocketStream, dst: trio.SocketStream, keep: bytearray | None) -> None:
                try:
                    while data := await src.receive_some(1 << 16):
                        if keep is not None:
                            keep += data
                        await dst.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
                nursery.cancel_scope.cancel()
            nursery.start_soon(pump, downstream, upstream, record)
            nursery.start_soon(pump, upstream, downstream, None)
        await trio.aclose_forcefully(upstream)
        await trio.aclose_forcefully(downstream)


async def _drive(a: str, b: str) -> None:
    counter, kv = workloads.load("counter"), workloads.load("kvstore")
    async with await NodeClient.connect(a, tls=None) as node:
        await node.ping()
        sha = await node.ensure_module(counter)
        await node.ensure_module(kv)
        info = await node.deploy(counter, workload_id="rec-plain")
        for by in (1, 2, -3, 1 << 40):
            await node.call(info.workload_id, "incr", by)
        await node.call(info.workload_id, "get")
        await node.write_memory(info.workload_id, 4096, bytes(range(256)) * 4)
        await node.read_memory(info.workload_id, 4096, 1024)
        await node.output(info.workload_id)
        await node.workloads()
        await node.peers()
        await node.status()
        await node.remove(info.workload_id)
        seq = iter(range(1, 1000))
        for workload in ("rec-move", "rec-standby"):
            await node.request(MSpawn, module_sha256=sha, workload=workload, app="fuzz")
            await node.request(MCall, workload=workload, op="call", caller="rec", seq=next(seq), export="incr",
                               args=(5,))
            await node.request(MCall, workload=workload, op="write", caller="rec", seq=next(seq), offset=8192,
                               data=b"fuzz" * 64, ack=1)
            await node.request(MCall, workload=workload, op="read", caller="rec", seq=next(seq), offset=8192,
                               length=256)
        await node.request(MLocate, workload="rec-move")
        data = await node.request(MCheckpoint, workload="rec-move")
        for part in range(3):
            reply = await node.request(MCheckpointPart, workload="rec-move", token=data.token, part=part)
            if reply.last:
                break
        await node.request(MProtect, workload="rec-standby", record=True)
        await node.request(MFollow, workload="rec-standby", standby=b)
        for _ in range(3):
            await node.request(MCall, workload="rec-standby", op="call", caller="rec", seq=next(seq),
                               export="incr", args=(7,))
        await node.request(MMigrate, workload="rec-move", target=b, strategy="precopy")
        await node.request(MFollow, workload="rec-standby", standby="")


def record_sessions(root: Path | None = None) -> list[tuple]:
    """Run the sessions above against two real nodes and return every frame sent to a node, decoded.

    Raises what the nodes or clients raise if a session fails.
    """
    with tempfile.TemporaryDirectory(prefix="wm-fuzz-rec-") as tmp:
        with LocalCluster(Path(root or tmp), tls=False) as cluster:
            node_a = cluster.start("rec-a", "edge", insecure=True)
            node_b = cluster.start("rec-b", "cloud", insecure=True)
            proxies = [_Proxy((n.address.host, n.address.port)) for n in (node_a, node_b)]

            async def main() -> None:
                async with trio.open_nursery() as nursery:
                    for proxy in proxies:
                        await nursery.start(proxy.serve)
                    with trio.fail_after(60):
                        await _drive(f"127.0.0.1:{proxies[0].port}", f"127.0.0.1:{proxies[1].port}")
                    nursery.cancel_scope.cancel()
            trio.run(main)
    frames = []
    for proxy in proxies:
        for stream in proxy.sent:
            for payload in split_frames(bytes(stream)):
                frames.append(msgpack.unpackb(payload, raw=False))
    return frames
