"""Authorization by certificate: the role table, the Hello name check, tenants, and the matrix of every request x sender.

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
from nodes._authorization import hello_refusal, refusal
from nodes._error_codes import exception_for
from nodes._messages import Hello, message_class
from nodes._tls import Identity

COUNTER = workloads.load("counter")
WORKLOAD = "w"  # the workload every placeholder request names

#: The table as designed: nodes' own requests and the handle's and operator's
#: migrate requests are open to both roles; everything else is node-only.
EXPECTED_TABLE = {
    **{kind: ANY_ROLE for kind in (
        "has_module", "put_module", "deploy", "call", "read_memory", "write_memory", "output", "remove",
        "list_workloads", "peers", "status", "ping", "m_spawn", "m_call", "m_locate", "m_migrate")},
    **{kind: NODE_ONLY for kind in (
        "m_incoming", "m_chunk", "m_commit", "m_abort", "m_protect", "m_checkpoint", "m_checkpoint_part",
        "m_replay", "m_align", "m_follow", "m_promote")},
}


#: The requests open to clients that name a workload (``workload`` or
#: ``workload_id``): refused to a client of another tenant.
EXPECTED_PER_WORKLOAD = {"deploy", "call", "read_memory", "write_memory", "output", "remove", "m_spawn", "m_call",
                         "m_locate", "m_migrate"}


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
    """Well-formed values for every field of ``cls`` but ``id``: an epoch of 1000, the workload ``w``, the sender's app."""
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
