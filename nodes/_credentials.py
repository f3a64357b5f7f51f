"""A node's TLS material over time: its certificate and key, reloaded without a restart, and its revocation list.

``Credentials`` holds the SSL contexts a node listens and dials with and
the revocation list (``nodes._revocation``) it honours.  ``watch`` re-reads
them when asked (SIGHUP: ``migrate-node serve`` forwards it) and when the
files change: the inode, size and mtime of ``cert.pem``, ``key.pem``,
``ca.pem`` and the revocation list are compared every ``tls_poll_s``
seconds (5 by default).

A new certificate and key are checked before they are used
(``nodes._tls.check_pair``: readable, the key matches the certificate, the
CA signed it, it is in date).  A pair that fails is refused with an error
log line saying why, and the node goes on with the one it has; the same
files are not tried again until they change (a pair written in two steps
is taken once both are in place).  New connections, in and out, use the
new certificate; connections already open keep the TLS session they made.
A revocation list that does not parse is refused the same way.  When the
list changes, the node closes the open connections whose certificate it
now names (``Connections.close_revoked``): those it serves, cancelled
with the reason, and those it dialled to peers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import weakref
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import trio

from . import _revocation as revocation
from ._errors import ConfigError
from ._client import NodeClient
from ._tls import CA_FILE, CERT_FILE, KEY_FILE, Identity, check_pair, client_context, server_context

logger = logging.getLogger(__name__)

_Stamp = tuple[tuple[int, int, int] | None, ...]


def _stamp(paths: tuple[Path, ...]) -> _Stamp:
    """What tells a file was replaced or changed: (inode, size, mtime in ns) each, None if absent."""
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class Credentials:
    """A node's current SSL contexts, certificate identity and revocation list.

    Raises ConfigError at construction if the TLS dir (``check_pair``) or
    the revocation list is unusable (the node does not start).
    """

    def __init__(self, tls_dir: Path, revoked_path: Path) -> None:
        self.tls_dir = Path(tls_dir)
        self.revoked_path = Path(revoked_path)
        self._pair_files = tuple(self.tls_dir / name for name in (CERT_FILE, KEY_FILE, CA_FILE))
        self._pair_seen = _stamp(self._pair_files)
        self._list_seen = _stamp((self.revoked_path,))
        self.server: ssl.SSLContext = server_context(self.tls_dir)
        self.client: ssl.SSLContext = client_context(self.tls_dir)
        self.identity: Identity = check_pair(self.tls_dir)
        self.revoked = revocation.load(self.revoked_path)

    def reload(self, *, forced: bool = False) -> bool:
        """Take the files that changed since the last look (all of them when ``forced``).

        Returns True when the revocation list changed.  Never raises: a
        refused pair or list is logged, and the current one kept.
        """
        pair = _stamp(self._pair_files)
        if forced or pair != self._pair_seen:
            self._pair_seen = pair
            self._reload_pair()
        listed = _stamp((self.revoked_path,))
        if not forced and listed == self._list_seen:
            return False
        self._list_seen = listed
        try:
            revoked = revocation.load(self.revoked_path)
        except ConfigError as exc:
            logger.error("refused the new revocation list, keeping the previous one: %s", exc)
            return False
        changed = revoked != self.revoked
        self.revoked = revoked
        if changed:
            logger.info("loaded the revocation list", extra={
                "path": str(self.revoked_path), "serials": len(revoked.serials), "names": len(revoked.names)})
        return changed

    def _reload_pair(self) -> None:
        try:
            identity = check_pair(self.tls_dir)
            server, client = server_context(self.tls_dir), client_context(self.tls_dir)
        except ConfigError as exc:
            logger.error("refused the new certificate, keeping serial:%#x: %s", self.identity.serial, exc,
                         extra={"tls_dir": str(self.tls_dir)})
            return
        previous = self.identity.serial
        self.server, self.client, self.identity = server, client, identity
        logger.info("reloaded the certificate", extra={
            "tls_dir": str(self.tls_dir), "serial": f"{identity.serial:#x}", "previous_serial": f"{previous:#x}"})


async def watch(credentials: Credentials, *, on_revoked: Callable[[], None], poll_s: float,
                requests: trio.abc.ReceiveChannel[object] | None = None) -> None:
    """Reload ``credentials`` on each item from ``requests`` (forced) and every ``poll_s`` if the files changed.

    ``on_revoked`` runs after the revocation list changed.  Runs until cancelled.
    """
    while True:
        forced = False
        with trio.move_on_after(poll_s):
            if requests is None:
                await trio.sleep_forever()
            try:
                await requests.receive()
                forced = True
            except (trio.EndOfChannel, trio.ClosedResourceError):
                requests = None
        if forced:
            logger.info("reloading the TLS material and the revocation list on request")
        if credentials.reload(forced=forced):
            on_revoked()


class Connections:
    """A node's open connections by the other side's certificate, so that revoked ones can be closed."""

    def __init__(self) -> None:
        self._served: dict[trio.CancelScope, Identity | None] = {}
        self._dialled: weakref.WeakSet[NodeClient] = weakref.WeakSet()

    @contextlib.contextmanager
    def served(self, identity: Identity | None,
               revoked: revocation.Revocations | None = None) -> Iterator[trio.CancelScope]:
        """Serve a connection inside the scope this yields; ``close_revoked`` cancels it.

        It is cancelled at once if ``revoked`` (the list now) names the
        certificate: the list changed after the Hello was checked.
        """
        with trio.CancelScope() as scope:
            if revoked is not None and revoked.refusal(identity) is not None:
                scope.cancel()
            self._served[scope] = identity
            try:
                yield scope
            finally:
                del self._served[scope]

    def dialled(self, client: NodeClient) -> None:
        """Remember a connection we made to a peer (until it is garbage)."""
        self._dialled.add(client)

    def close_revoked(self, revoked: revocation.Revocations,
                      start_soon: Callable[[Callable[[], Awaitable[object]]], object]) -> int:
        """Close every connection whose certificate ``revoked`` names; return how many.

        Served connections are cancelled; dialled ones are closed in tasks
        started with ``start_soon``.
        """
        closed = 0
        for scope, identity in list(self._served.items()):
            if identity is None:
                continue  # a connection without TLS: no certificate to revoke
            reason = revoked.refusal(identity)
            if reason is not None:
                logger.warning("closing a connection: %s", reason, extra={"certificate": identity.name})
                scope.cancel()
                closed += 1
        for client in list(self._dialled):
            reason = revoked.refusal(client.node_certificate)
            if reason is not None:
                logger.warning("closing a connection to a peer: %s", reason, extra={"peer": client.node})
                self._dialled.discard(client)
                start_soon(client.aclose)
                closed += 1
        return closed
