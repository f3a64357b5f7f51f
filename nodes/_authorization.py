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
  remove, list, status, peers and ping (every request of the nodes
  package), and start, call, locate and move migratable workloads.
* Only a node may send what moves or copies state between nodes, takes or
  gives up ownership, or reads a workload's call ledger: a move's incoming
  copy, its chunks, commit, abort, alignment and replay, checkpoints,
  recording for them, standby copies and promotion.  An application that
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

A node started with ``--insecure`` has no certificates, listens on
loopback only, and skips both checks.
"""

from __future__ import annotations

from ._messages import ErrorCode, ErrorReply, Hello, Request, message_class, registered_kinds
from ._revocation import Revocations
from ._tls import Identity


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
