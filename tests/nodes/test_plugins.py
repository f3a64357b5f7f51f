"""Plugins: a node in this process serves a plugin's requests, keeps its state, shows its status, saves its records."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import pytest
import trio

import workloads
from nodes import (
    ANY_ROLE,
    Address,
    ConfigError,
    ErrorCode,
    ErrorReply,
    LocalProtocolError,
    NodeClient,
    NodeConfig,
    Plugin,
    Reply,
    Request,
    RemoteNodeError,
    RemoteProtocolError,
    message,
    serve,
)
from nodes._handlers import HANDLERS
from nodes._messages import Ping
from nodes._plugin import handler_table
from nodes._protocol import decode_message, encode_message


class TallyCode(enum.StrEnum):
    NEGATIVE = "tally_negative"


@message("test_tally_total")
class Total(Reply):
    total: int


@message("test_tally_add", reply=Total, roles=ANY_ROLE)
class Add(Request):
    workload: str
    amount: int


@dataclass
class Tally:
    """The plugin's per-node state: a running total per workload, and what happened to it."""

    node: object
    totals: dict[str, int] = field(default_factory=dict)
    loaded: list[str] = field(default_factory=list)
    resumed: int = 0
    ticks: int = 0


async def _add(node, session, req: Add) -> Reply:
    if req.amount < 0:
        return ErrorReply(id=req.id, code=TallyCode.NEGATIVE, message=f"cannot add {req.amount}",
                          details={"workload_id": req.workload})
    tally = node.plugin_state("tally")
    tally.totals[req.workload] = tally.totals.get(req.workload, 0) + req.amount
    return Total(id=req.id, total=tally.totals[req.workload])


def _load(node, workload: str, record: dict) -> None:
    if not isinstance(record.get("total"), int):
        raise ValueError(f"total {record.get('total')!r} is not a number")
    tally = node.plugin_state("tally")
    tally.totals[workload] = record["total"]
    tally.loaded.append(workload)


def _load_node(node, record: dict) -> None:
    node.plugin_state("tally").ticks = record["ticks"]


async def _tick(node, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    task_status.started("ticking")
    node.plugin_state("tally").ticks += 1
    await trio.sleep_forever()


async def _resume(node) -> None:
    tally = node.plugin_state("tally")
    tally.resumed += 1
    assert await node.start(_tick, node) == "ticking"


TALLY = Plugin(
    name="tally",
    handlers={Add: _add},
    state=Tally,
    status=lambda node: tuple({"workload": w, "total": t} for w, t in sorted(node.plugin_state("tally").totals.items())),
    save=lambda node, workload: {"total": node.plugin_state("tally").totals[workload]}
    if workload in node.plugin_state("tally").totals else {},
    load=_load,
    save_node=lambda node: {"ticks": node.plugin_state("tally").ticks},
    load_node=_load_node,
    resume=_resume,
)


def _config(data_dir: Path) -> NodeConfig:
    return NodeConfig(name="plugged", listen=Address("127.0.0.1", 0), data_dir=data_dir, insecure=True)


async def _run(data_dir: Path, plugins, body) -> None:
    """Serve a node with ``plugins``, run ``body(client)``, then stop it (with its shutdown checkpoint)."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        address = await nursery.start(lambda task_status: serve(_config(data_dir), plugins=plugins, stop=stop,
                                                                task_status=task_status))
        async with await NodeClient.connect(address, tls=None) as client:
            await body(client)
        stop.set()


async def test_a_plugin_serves_its_requests_keeps_state_and_adds_to_status(tmp_path):
    async def body(client: NodeClient) -> None:
        assert (await client.request(Add, workload="w1", amount=5)).total == 5
        assert (await client.request(Add, workload="w1", amount=2)).total == 7
        status = await client.status()
        assert status.migrations == ({"workload": "w1", "total": 7},)
        assert (await client.ping())[1].name == "plugged"  # the node's own handlers still serve

    await _run(tmp_path / "data", (TALLY,), body)


async def test_without_the_plugin_its_requests_are_unsupported(tmp_path):
    async def body(client: NodeClient) -> None:
        with pytest.raises(RemoteNodeError, match="plugged does not serve 'test_tally_add'") as info:
            await client.request(Add, workload="w1", amount=1)
        assert info.value.code == "unsupported"
        assert (await client.status()).migrations == ()

    await _run(tmp_path / "data", (), body)


async def test_a_plugin_error_code_reaches_the_client_as_its_string(tmp_path):
    async def body(client: NodeClient) -> None:
        with pytest.raises(RemoteNodeError, match="cannot add -1") as info:
            await client.request(Add, workload="w1", amount=-1)
        assert info.value.code == TallyCode.NEGATIVE and type(info.value.code) is str

    await _run(tmp_path / "data", (TALLY,), body)


async def test_the_plugin_records_come_back_after_a_restart_and_resume_runs_first(tmp_path):
    counter = workloads.load("counter")

    async def first(client: NodeClient) -> None:
        await client.deploy(counter, workload_id="w1")
        await client.deploy(counter, workload_id="w2")
        await client.request(Add, workload="w1", amount=41)

    async def second(client: NodeClient) -> None:
        assert (await client.request(Add, workload="w1", amount=1)).total == 42
        assert (await client.request(Add, workload="w2", amount=1)).total == 1  # saved as "no record"

    states: list[Tally] = []
    remembering = Plugin(name=TALLY.name, handlers=TALLY.handlers, status=TALLY.status, save=TALLY.save,
                         load=TALLY.load, save_node=TALLY.save_node, load_node=TALLY.load_node,
                         resume=TALLY.resume, state=lambda node: states.append(Tally(node)) or states[-1])
    await _run(tmp_path / "data", (remembering,), first)
    await _run(tmp_path / "data", (remembering,), second)
    before, after = states
    assert before.resumed == 1 and before.ticks == 1
    assert after.loaded == ["w1"] and after.resumed == 1
    assert after.ticks == 2  # the saved tick count, then one more from the resumed task


def test_plugins_may_not_serve_a_request_twice():
    other = Plugin(name="other", handlers={Add: _add})
    with pytest.raises(ConfigError, match="Add already has a handler"):
        handler_table(HANDLERS, (TALLY, other))
    with pytest.raises(ConfigError, match="Ping already has a handler"):
        handler_table(HANDLERS, (Plugin(name="pinger", handlers={Ping: _add}),))
    with pytest.raises(ConfigError, match="two plugins are named 'tally'"):
        handler_table(HANDLERS, (TALLY, Plugin(name="tally")))


async def test_serve_refuses_clashing_plugins_before_it_listens(tmp_path):
    with pytest.raises(ConfigError, match="Add already has a handler"):
        await serve(_config(tmp_path / "data"), plugins=(TALLY, Plugin(name="other", handlers={Add: _add})))


def test_a_plugin_is_frozen_and_copies_its_handler_table():
    table = {Add: _add}
    plugin = Plugin(name="copy", handlers=table)
    table.clear()
    assert dict(plugin.handlers) == {Add: _add}
    with pytest.raises(TypeError):
        plugin.handlers[Ping] = _add
    with pytest.raises(AttributeError):
        plugin.name = "renamed"


def test_error_codes_other_than_the_nodes_own_travel_as_plain_well_formed_strings():
    ours = decode_message(encode_message(ErrorReply(id=1, code=ErrorCode.UNKNOWN_WORKLOAD)))
    assert ours.code is ErrorCode.UNKNOWN_WORKLOAD
    theirs = decode_message(encode_message(ErrorReply(id=1, code=TallyCode.NEGATIVE, message="m")))
    assert theirs == ErrorReply(id=1, code="tally_negative", message="m") and type(theirs.code) is str
    for bad in ("", "Not_Lower", "has space", "x" * 65, "1starts_with_digit"):
        with pytest.raises(LocalProtocolError, match="ErrorReply.code: str does not fit"):
            encode_message(ErrorReply(id=1, code=bad))
        with pytest.raises(RemoteProtocolError, match="ErrorReply.code: str does not fit"):
            decode_message(msgpack.packb(["error", {"id": 1, "code": bad}]))
