"""Authorization by certificate: the role table, the Hello name check, tenants, the matrix of request x sender.

The matrix runs against a real ``migrate-node`` process (with the migration
plugin, so migrate's requests are served): every registered request type,
built with placeholder fields from its dataclass fields (all naming the
workload ``w`` of client A), is sent by three certificates: client B (another
tenant), client A (the owner) and a node.  A client's node-only request
must come back ``forbidden`` (the role), B's request naming A's workload
``forbidden`` (the tenant), and each of those must leave the node's
workloads exactly as they were; B's allowed requests too; every other cell
must not be ``forbidden``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import types
import typing
from typing import Any

import pytest
import trio

import migrate._messages as mm  # registers migrate's requests
from migrate._life_node import MTouch
import workloads
from nodes import (
    ANY_ROLE,
    NODE_ONLY,
    ConnectionFailed,
    ErrorCode,
    Forbidden,
    HostError,
    LocalProtocolError,
    NodeClient,
    RemoteNodeError,
    Reply,
    Request,
    message,
    register,
    role_table,
)
from nodes._authorization import authorize, hello_refusal, refusal, visible
from nodes._error_codes import exception_for
from nodes._messages import Call, Deploy, ErrorReply, Hello, ListWorkloads, message_class
from nodes._tls import Identity
from nodeproc import run_cli

COUNTER = workloads.load("counter")
WORKLOAD = "w"  # the workload every placeholder request names

#: The table as designed: nodes' own requests and the handle's and operator's
#: migrate requests are open to both roles; everything else is node-only.
EXPECTED_TABLE = {
    **{kind: ANY_ROLE for kind in (
        "has_module", "put_module", "deploy", "call", "read_memory", "write_memory", "output", "remove",
        "hibernate", "list_workloads", "peers", "status", "ping", "exports", "members", "m_spawn", "m_call", "m_cancel",
        "m_locate", "m_migrate", "m_probe", "m_touch", "p_open", "p_call", "p_stats", "p_close")},
    **{kind: NODE_ONLY for kind in (
        "m_incoming", "m_chunk", "m_commit", "m_abort", "m_protect", "m_checkpoint", "m_checkpoint_part",
        "m_replay", "m_align", "m_follow", "m_promote", "m_first_call", "gossip",
        "m_cordon", "m_uncordon")},
}


#: The requests open to clients that name a workload (``workload`` or
#: ``workload_id``): refused to a client of another tenant.
EXPECTED_PER_WORKLOAD = {"deploy", "call", "exports", "read_memory", "write_memory", "output", "remove", "hibernate",
                         "m_spawn",
                         "m_call", "m_cancel",
                         "m_locate", "m_migrate", "m_touch"}


def _request_kinds() -> list[str]:
    return [kind for kind in role_table() if not kind.startswith("test_")]


# --- the table ----------------------------------------------------------------------


def test_every_registered_request_declares_its_roles():
    table = role_table()
    requests = {k for k in _request_kinds() if issubclass(message_class(k), Request)}
    assert requests == set(_request_kinds())
    for kind in requests:
        assert table[kind] and table[kind] <= {"node", "client"}, kind
        assert message_class(kind).roles == table[kind]
    assert mm.MIncoming.kind in table  # migrate's requests are in the same table


def test_the_table_is_as_designed():
    assert {k: v for k, v in role_table().items() if not k.startswith("test_")} == EXPECTED_TABLE


def test_a_request_without_roles_is_a_registration_error():
    @message("test_authz_reply")
    class Answer(Reply):
        pass

    with pytest.raises(LocalProtocolError, match="roles"):
        @message("test_authz_open", reply=Answer)
        class Open(Request):
            pass
    assert message_class("test_authz_open") is None
    with pytest.raises(LocalProtocolError, match="non-empty"):
        @message("test_authz_nobody", reply=Answer, roles=frozenset())
        class Nobody(Request):
            pass
    with pytest.raises(LocalProtocolError, match="non-empty"):
        @message("test_authz_admin", reply=Answer, roles=frozenset({"admin"}))
        class Admin(Request):
            pass
    with pytest.raises(LocalProtocolError, match="roles"):
        register("test_authz_reply_2", roles=ANY_ROLE)(Answer)


def test_refusal_names_the_kind_and_the_role_and_nothing_else():
    client, node = Identity("client", ("app",)), Identity("node", ("edge-1", "localhost"))
    request = mm.MCommit(id=7, workload="secret-workload", epoch=1000, ledger=None, calls=0)
    reply = refusal(request, client)
    assert reply.id == 7 and reply.code == ErrorCode.FORBIDDEN
    assert reply.message == "a client certificate may not send 'm_commit' (allowed: node)"
    assert reply.details == {"kind": "m_commit", "role": "client"}
    assert refusal(request, node) is None
    assert refusal(request, None) is None  # --insecure: no certificate, no check
    assert refusal(mm.MCall(id=1, workload="w", op="call", caller="c", seq=0), client) is None
    exc = exception_for(reply)
    assert isinstance(exc, Forbidden) and isinstance(exc, RemoteNodeError)
    assert (exc.code, exc.kind, exc.role, str(exc)) == (ErrorCode.FORBIDDEN, "m_commit", "client", reply.message)


def test_the_hello_name_must_be_one_the_certificate_covers():
    hello = Hello(versions=(1,), name="edge-1", role="edge", max_frame_bytes=1 << 20)
    assert hello_refusal(hello, Identity("node", ("edge-1", "localhost"))) is None
    assert hello_refusal(dataclasses.replace(hello, name="localhost"), Identity("node", ("edge-1", "localhost"))) is None
    reason = hello_refusal(hello, Identity("client", ("app",)))
    assert "'edge-1'" in reason and "'app'" in reason
    assert hello_refusal(hello, None) is None


# --- tenants ------------------------------------------------------------------------

CLIENT_A, CLIENT_B = Identity("client", ("app-a",)), Identity("client", ("app-b",))
A_NODE = Identity("node", ("edge-1", "localhost"))
OWNERS = {"a1": "app-a", "a2": "app-a/shop", "n1": "default"}.get


def test_a_client_may_act_for_its_name_and_its_name_slash_anything_only():
    assert visible(CLIENT_A, "app-a") and visible(CLIENT_A, "app-a/shop")
    for app in ("app-b", "app-ab", "app-a.x", "default", "app", ""):
        assert not visible(CLIENT_A, app), app
    assert visible(A_NODE, "app-b") and visible(None, "app-b")


def test_an_empty_app_becomes_the_senders_own():
    deploy = Deploy(id=1, sha256="s")
    assert deploy.app == ""
    assert authorize(deploy, CLIENT_A, OWNERS).app == "app-a"
    assert authorize(deploy, A_NODE, OWNERS).app == "default"
    assert authorize(deploy, None, OWNERS).app == "default"
    for app in ("app-a", "app-a/shop"):
        assert authorize(dataclasses.replace(deploy, app=app), CLIENT_A, OWNERS).app == app
    assert authorize(dataclasses.replace(deploy, app="app-b"), A_NODE, OWNERS).app == "app-b"


def test_a_client_naming_another_tenants_app_is_forbidden():
    reply = authorize(Deploy(id=4, sha256="s", app="app-b"), CLIENT_A, OWNERS)
    assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.FORBIDDEN and reply.id == 4
    assert reply.message == ("the client certificate 'app-a' may not send 'deploy' for the application 'app-b': "
                             "it acts for 'app-a' and 'app-a/NAME' only")
    assert reply.details == {"kind": "deploy", "role": "client"}


def test_a_client_naming_another_tenants_workload_is_forbidden_and_told_nothing_of_it():
    for workload in ("a1", "a2"):
        assert authorize(Call(id=1, workload=workload, export="get"), CLIENT_A, OWNERS).workload == workload
        reply = authorize(Call(id=2, workload=workload, export="get"), CLIENT_B, OWNERS)
        assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.FORBIDDEN
        assert reply.message == (f"the client certificate 'app-b' may not send 'call' for workload {workload!r}: "
                                 "it belongs to another application")
        assert "app-a" not in reply.message and reply.details == {"kind": "call", "role": "client"}
    # a new id, or one claimed for another tenant, by either field
    assert isinstance(authorize(Deploy(id=3, sha256="s", workload_id="a1"), CLIENT_B, OWNERS), ErrorReply)
    assert authorize(Deploy(id=3, sha256="s", workload_id="b9"), CLIENT_B, OWNERS).app == "app-b"
    assert authorize(Call(id=1, workload="nowhere", export="get"), CLIENT_B, OWNERS).workload == "nowhere"
    assert isinstance(authorize(mm.MMigrate(id=1, workload="n1", target="x"), CLIENT_B, OWNERS), ErrorReply)
    # a node certificate, or none, may use any workload; a request naming none is not checked
    assert authorize(Call(id=1, workload="a1", export="get"), A_NODE, OWNERS).workload == "a1"
    assert authorize(Call(id=1, workload="a1", export="get"), None, OWNERS).workload == "a1"
    assert isinstance(authorize(ListWorkloads(id=1), CLIENT_B, OWNERS), ListWorkloads)
    # the role check comes first
    commit = mm.MCommit(id=7, workload="a1", epoch=1, ledger=None, calls=0)
    assert authorize(commit, CLIENT_A, OWNERS) == refusal(commit, CLIENT_A)


# --- placeholders -------------------------------------------------------------------


def _placeholder(tp: Any, name: str) -> Any:
    if name in ("workload", "workload_id"):
        return WORKLOAD
    if name == "app":
        return ""  # the sender's own application
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _placeholder(next(a for a in args if a is not type(None)), name)
    if origin is tuple:
        return ()
    if origin is dict:
        return {}
    return {int: 1000, float: 0.5, bool: False, str: "x", bytes: b"x"}.get(tp)  # None for Any


def placeholder_fields(cls: type[Request]) -> dict[str, Any]:
    """Well-formed values for every field of ``cls`` but ``id``: epoch 1000, the workload ``w``, the sender's app."""
    hints = typing.get_type_hints(cls)
    return {f.name: _placeholder(hints[f.name], f.name) for f in dataclasses.fields(cls) if f.name != "id"}


def test_placeholders_fit_every_request():
    for kind in _request_kinds():
        cls = message_class(kind)
        cls(id=1, **placeholder_fields(cls))  # the dataclass takes them; the wire check is in the matrix


# --- against a real node ------------------------------------------------------------


async def _send(client: NodeClient, kind: str) -> Forbidden | None:
    """Send ``kind`` with placeholder fields; return the Forbidden it raised, or None for any other answer."""
    cls = message_class(kind)
    try:
        with trio.fail_after(30):
            await client.request(cls, **placeholder_fields(cls))
    except Forbidden as exc:
        return exc
    except (HostError, RemoteNodeError):
        return None  # refused for another reason: not forbidden
    return None


async def _fingerprint(client: NodeClient) -> tuple:
    """Everything a request could change: workloads, their memory, where ``w`` is, migrations."""
    status = await client.status()
    memory = {w.workload_id: hashlib.sha256(await client.read_memory(w.workload_id, 0, w.memory_bytes)).hexdigest()
              for w in status.workloads}
    where = await client.request(mm.MLocate, workload=WORKLOAD)
    return (sorted((w.workload_id, w.state, w.calls, w.memory_bytes) for w in status.workloads), memory,
            (where.status, where.epoch, where.index), status.migrations)


def _cell(refused: Forbidden | None) -> str:
    if refused is None:
        return "not forbidden"
    return "forbidden: tenant" if "for workload" in str(refused) else "forbidden: role"


async def test_matrix_of_every_request_and_sender(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge")
    tls = {"client A": cluster_tls.issue("app-a", "client"), "client B": cluster_tls.issue("app-b", "client"),
           "node": cluster_tls.issue("app-1", "node")}
    async with await NodeClient.connect(node.address, tls=tls["node"]) as as_node, \
            await NodeClient.connect(node.address, tls=tls["client A"]) as as_a, \
            await NodeClient.connect(node.address, tls=tls["client B"]) as as_b:
        sha256 = await as_a.ensure_module(COUNTER)
        await as_a.request(mm.MSpawn, module_sha256=sha256, workload=WORKLOAD)
        for seq in range(3):
            await as_a.request(mm.MCall, workload=WORKLOAD, op="call", caller="owner", seq=seq, export="incr",
                               args=(5,))
        await as_node.request(mm.MProtect, workload=WORKLOAD, record=True)  # a ledger worth stealing
        await as_a.deploy(COUNTER, workload_id="plain")
        await as_a.call("plain", "incr", 7)
        before = await _fingerprint(as_node)
        assert {w.app for w in (await as_node.status()).workloads} == {"app-a"}

        table = role_table()
        kinds = _request_kinds()
        # node-only kinds first, so the allowed ones (remove...) cannot change what they find
        order = sorted(kinds, key=lambda k: "client" in table[k])
        seen: dict[tuple[str, str], str] = {}
        for sender, holder in (("client B", as_b), ("client A", as_a), ("node", as_node)):
            role = sender.split()[0]
            for kind in order:
                refused = await _send(holder, kind)
                seen[kind, sender] = _cell(refused)
                if refused:
                    assert (refused.kind, refused.role) == (kind, role)
                    assert f"{role} certificate" in str(refused) and repr(kind) in str(refused)
                    assert "app-a" not in str(refused)  # nothing of the owner
                if refused or sender == "client B":
                    assert await _fingerprint(as_node) == before, f"{kind} from {sender} changed the node"
        status = await as_node.status()

    def expected(kind: str, sender: str) -> str:
        role = sender.split()[0]
        if role not in table[kind]:
            return "forbidden: role"
        return "forbidden: tenant" if sender == "client B" and kind in EXPECTED_PER_WORKLOAD else "not forbidden"

    for kind in kinds:
        print(f"{kind:20} " + " ".join(f"{sender}: {seen[kind, sender]:18}" for sender in tls))
    assert seen == {(kind, sender): expected(kind, sender) for kind in kinds for sender in tls}
    forbidden = sum(outcome != "not forbidden" for outcome in seen.values())
    assert forbidden == 2 * len([k for k in kinds if table[k] == NODE_ONLY]) + len(EXPECTED_PER_WORKLOAD)
    assert status.counters["forbidden"] == forbidden


async def test_a_hello_name_the_certificate_does_not_cover_is_refused(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge")
    with pytest.raises(ConnectionFailed, match="the Hello names 'mallory' but the certificate is issued to 'app'"):
        await NodeClient.connect(node.address, tls=cluster_tls.app, name="mallory")
    with pytest.raises(ConnectionFailed, match="'edge-2'"):
        await NodeClient.connect(node.address, tls=cluster_tls.issue("app-1", "node"), name="edge-2")
    # the certificate's name, or one of its DNS alternative names, is accepted
    async with await NodeClient.connect(node.address, tls=cluster_tls.issue("app-1", "node"), name="localhost") as c:
        status = await c.status()
    assert status.counters["connections_rejected"] == 2
    assert [line for line in node.log_lines() if "connection rejected" in line.get("msg", "")
            and "mallory" in line.get("msg", "")]


async def test_an_insecure_node_checks_no_certificate(node_procs):
    node = node_procs.start("lo-1", "edge", insecure=True)
    async with await NodeClient.connect(node.address, tls=None, name="anyone") as client:
        assert await _send(client, "m_abort") is None
        assert await _send(client, "status") is None


async def _tenant_view(client: NodeClient) -> tuple:
    """Everything of every workload on the node, as a node certificate sees it: ids, apps, calls, memory."""
    status = await client.status()
    memory = {w.workload_id: hashlib.sha256(await client.read_memory(w.workload_id, 0, w.memory_bytes)).hexdigest()
              for w in status.workloads}
    return tuple(sorted((w.workload_id, w.app, w.state, w.calls, w.memory_bytes, memory[w.workload_id])
                        for w in status.workloads))


async def test_another_tenant_can_neither_use_nor_see_a_workload(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge")
    cloud = node_procs.start("cloud-1", "cloud")
    tls_a, tls_b = cluster_tls.issue("app-a", "client"), cluster_tls.issue("app-b", "client")
    async with await NodeClient.connect(edge.address, tls=tls_a) as a, \
            await NodeClient.connect(edge.address, tls=tls_b) as b, \
            await NodeClient.connect(edge.address, tls=cluster_tls.issue("app-1", "node")) as as_node:
        sha256 = await a.ensure_module(COUNTER)
        await a.deploy(sha256, workload_id="a1")
        await a.deploy(sha256, workload_id="a2", app="app-a/shop")
        await a.request(mm.MSpawn, module_sha256=sha256, workload="m1")
        await a.call("a1", "incr", 41)
        await a.request(mm.MCall, workload="m1", op="call", caller="a", seq=0, export="incr", args=(5,))
        await b.deploy(sha256, workload_id="b1")
        before = await _tenant_view(as_node)
        assert {(w[0], w[1]) for w in before} == {("a1", "app-a"), ("a2", "app-a/shop"), ("m1", "app-a"),
                                                  ("b1", "app-b")}

        attempts = {
            "call": b.call("a1", "incr", 1),
            "read": b.read_memory("a1", 0, 16),
            "write": b.write_memory("a2", 0, b"\xff" * 16),
            "output": b.output("a1"),
            "remove": b.remove("a2"),
            "hibernate": b.hibernate("a1"),
            "deploy over": b.deploy(sha256, workload_id="a1"),
            "m_call": b.request(mm.MCall, workload="m1", op="call", caller="b", seq=0, export="incr", args=(1,)),
            "m_call write": b.request(mm.MCall, workload="m1", op="write", caller="b", seq=1, offset=0, data=b"x"),
            "m_call remove": b.request(mm.MCall, workload="m1", op="remove", caller="b", seq=2),
            "m_spawn over": b.request(mm.MSpawn, module_sha256=sha256, workload="m1"),
            "m_locate": b.request(mm.MLocate, workload="m1"),
            "migrate": b.request(mm.MMigrate, workload="m1", target=str(cloud.address)),
            "protect": b.request(mm.MProtect, workload="m1", record=True),
            "touch": b.request(MTouch, workload="m1", goodbye=True),
        }
        for what, attempt in attempts.items():
            with pytest.raises(Forbidden) as refused:
                await attempt
            assert "app-a" not in str(refused.value), what
        assert await _tenant_view(as_node) == before  # nothing changed

        # each client sees its own tenant's workloads, with their owner; a node certificate sees them all
        assert {(w.workload_id, w.app) for w in await a.workloads()} == {("a1", "app-a"), ("a2", "app-a/shop"),
                                                                         ("m1", "app-a")}
        assert {(w.workload_id, w.app) for w in await b.workloads()} == {("b1", "app-b")}
        assert [w.workload_id for w in (await b.status()).workloads] == ["b1"]
        assert len(await as_node.workloads()) == 4
        # the owner, and a node certificate, may use it
        assert await a.call("a1", "incr", 1) == 42
        assert await as_node.call("a1", "incr", 1) == 43

        report = await a.request(mm.MMigrate, workload="m1", target=str(cloud.address))
        assert report.report.target == "cloud-1"
        [moved] = (await a.status()).migrations
        assert (moved["workload"], moved["app"], moved["state"]) == ("m1", "app-a", "done")
        assert (await b.status()).migrations == ()
        assert [m["workload"] for m in (await as_node.status()).migrations] == ["m1"]

    listing_a = run_cli("list", "--node", str(edge.address), "--tls-dir", str(tls_a)).stdout
    listing_b = run_cli("list", "--node", str(edge.address), "--tls-dir", str(tls_b)).stdout
    assert "a1" in listing_a and "app-a/shop" in listing_a and "b1" not in listing_a
    assert "b1" in listing_b and "app-b" in listing_b and "a1" not in listing_b and "app-a" not in listing_b
    forbidden = run_cli("call", "a1", "get", "--node", str(edge.address), "--tls-dir", str(tls_b), check=False)
    assert forbidden.returncode == 1 and "may not send 'call' for workload 'a1'" in forbidden.stderr
