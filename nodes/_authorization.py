"""Authorization by certificate: which role may send which request, and the two checks a node runs.

Every party of a cluster holds a certificate from the cluster CA whose
organizationalUnitName is its role: "node" for a node (and for an
application that runs a node of its own, as ``migrate.connect`` does), or
"client" for the operator CLI and applications that only use
``NodeClient``.  Every request class declares, where it is declared, the
roles that may send it (``register(..., roles=...)``): ``ANY_ROLE`` or
``NODE_ONLY``.  A request declared without roles is a registration error,
so nothing is open by default.  ``role_table`` returns the whole table.

The rule behind the table:

* A client may do what the operator CLI and a ``NodeClient`` application
  do: store modules, deploy, call, read and write memory, read output,
  remove, list, status, peers, members and ping (every request of the
  nodes package but gossip), and start, call, locate and move migratable workloads.
* Only a node may send what moves or copies state between nodes, takes or
  gives up ownership, or reads a workload's call ledger: a move's incoming
  copy, its chunks, commit, abort, alignment and replay, checkpoints,
  recording for them, standby copies and promotion; and gossip, which
  adds to what a node knows of the cluster and whom it dials.  An application that
  protects its workloads does so through the node it runs itself, with a
  node certificate.

A node runs two checks, both once, in one place, before any handler:

* ``hello_refusal``: the peer's certificate must not be revoked
  (``nodes._revocation``), and the name in its Hello must be one its
  certificate covers (the commonName or a DNS subject alternative name);
  otherwise the connection is refused before the peer gets our Hello.
* ``refusal``: a request whose roles do not include the sender's
  certificate role is answered with ``forbidden``, naming the request's
  kind and the role, before its handler runs; it changes nothing and
  discloses nothing else.

Tenants.  A workload belongs to the application that created it: the
``app`` of its Deploy or MSpawn.  A client certificate acts for one tenant,
its commonName (CN): it may name the app ``CN`` or ``CN/NAME`` (the apps of
one tenant share its quotas, ``nodes._limits.tenant_of``), or leave ``app``
empty for ``CN``; any other app is ``forbidden``.  A node certificate acts
for every tenant: it is a node moving, copying or checkpointing a workload,
or an application that runs a node of its own (``migrate.connect``), whose
workloads are its own business; it may name any app, and an empty one is
"default".  A node without certificates (``--insecure``) does the same.

``authorize`` runs the role check and then the tenant check, for every
request, in one place (the daemon, before any handler): a request that
names a workload (a ``workload`` or ``workload_id`` field: every request
about one workload is declared so, in the nodes package and in plugins) is
refused to a client certificate if the workload, or an id claimed for one,
belongs to another tenant.  The refusal is ``forbidden``, not an answer
as if the workload did not exist, because:

* workload ids are one namespace per node, so pretending would not hide
  anything: a deploy under that id would answer ``workload_exists``;
* an application's handle takes "unknown" or "not the owner" as a reason
  to look for the workload on other nodes, while ``forbidden`` is final;
* a refusal is counted and logged as such (``counters["forbidden"]``).

It names the request's kind, the sender's role and the workload id the
sender gave, and nothing of the workload: not its owner, state or memory.
Like the role check, it changes no state.  The node's own handlers hold
the check when a worker thread looks the workload up (``Registry.serving``),
so a workload another tenant creates under that id while the request waits
for a thread is not reached either; the migration plugin's handlers read
their ownership tables in the same step as the check, and a call that
waited for its workload's lock runs only if that workload is still the one
owned under the id.  ``visible`` is the same rule for
what ``list`` and ``status`` show: a client sees its own tenant's
workloads and migrations only.  Workloads that left the node (a tombstone's
redirect) are not checked here; the node they went to checks them.

A node started with ``--insecure`` has no certificates, listens on
loopback only, and skips every check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ._limits import tenant_of
from ._messages import ErrorCode, ErrorReply, Hello, Request, message_class, registered_kinds
from ._revocation import Revocations
from ._tls import Identity

#: The app of a workload created without one by a node certificate, or on an ``--insecure`` node.
DEFAULT_APP = "default"
#: The fields by which a request names the workload it is about.
WORKLOAD_FIELDS = ("workload", "workload_id")


def role_table() -> dict[str, frozenset[str]]:
    """Every registered request kind and the certificate roles that may send it."""
    table = {}
    for kind in registered_kinds():
        cls = message_class(kind)
        if cls is not None and issubclass(cls, Request):
            table[kind] = cls.roles
    return table


def hello_refusal(hello: Hello, identity: Identity | None, revoked: Revocations = Revocations()) -> str | None:
    """Why a peer whose certificate is ``identity`` may not connect with its ``hello``; None if it may.

    Refused: a certificate ``revoked`` names, or a name in the Hello the
    certificate does not cover.  ``identity`` is None without TLS: nothing
    to check.
    """
    if identity is None:
        return None
    revocation = revoked.refusal(identity)
    if revocation is not None:
        return revocation
    if hello.name in identity.names:
        return None
    return (f"the Hello names {hello.name!r} but the certificate is issued to "
            f"{', '.join(repr(n) for n in identity.names) or 'no name'}; a peer must use its certificate's name")


def refusal(request: Request, identity: Identity | None) -> ErrorReply | None:
    """The ``forbidden`` reply to a request its sender's role may not send; None if it may.

    ``identity`` is None without TLS: everything is allowed.
    """
    if identity is None or identity.role in type(request).roles:
        return None
    role = identity.role or "unknown"
    return ErrorReply(id=request.id, code=ErrorCode.FORBIDDEN,
                      message=f"a {role} certificate may not send {request.kind!r} "
                              f"(allowed: {', '.join(sorted(type(request).roles))})",
                      details={"kind": request.kind, "role": role})


def visible(identity: Identity | None, app: str) -> bool:
    """Whether the holder of ``identity`` may see and use the workloads of ``app``.

    A client certificate may for its own tenant's apps (its CN, and CN/NAME);
    a node certificate, or no certificate (``--insecure``), for every app.
    """
    return identity is None or identity.role != "client" or tenant_of(app) == identity.name


def authorize(request: Request, identity: Identity | None,
              owner_of: Callable[[str], str | None]) -> Request | ErrorReply:
    """``request`` as its handler is to get it (an empty ``app`` filled in), or the ``forbidden`` reply.

    ``owner_of(workload_id)`` is the app of a workload on this node, None if
    there is none.  Runs ``refusal``, then the tenant check (module docstring).
    """
    refused = refusal(request, identity)
    if refused is not None:
        return refused
    for field in WORKLOAD_FIELDS:
        workload = getattr(request, field, None)
        if isinstance(workload, str):
            owner = owner_of(workload)
            if owner is not None and identity is not None and not visible(identity, owner):
                return _forbidden(request, identity, f"the client certificate {identity.name!r} may not send "
                                                     f"{request.kind!r} for workload {workload!r}: it belongs "
                                                     "to another application")
    app = getattr(request, "app", None)
    if app == "":
        filled: dict[str, Any] = {"app": identity.name if identity is not None and identity.role == "client"
                                  else DEFAULT_APP}  # a field of some request classes, not of Request
        return dataclasses.replace(request, **filled)
    if isinstance(app, str) and identity is not None and not visible(identity, app):
        return _forbidden(request, identity, f"the client certificate {identity.name!r} may not send "
                                             f"{request.kind!r} for the application {app!r}: it acts for "
                                             f"{identity.name!r} and {identity.name + '/NAME'!r} only")
    return request


def _forbidden(request: Request, identity: Identity, message: str) -> ErrorReply:
    return ErrorReply(id=request.id, code=ErrorCode.FORBIDDEN, message=message,
                      details={"kind": request.kind, "role": identity.role})
