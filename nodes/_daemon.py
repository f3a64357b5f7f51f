"""The node daemon: ``serve(config, plugins=...)`` starts a node, runs it and stops it.

``serve`` restores the workloads checkpointed at the last clean shutdown
(``nodes._checkpoints``, encrypted with the node's data key,
``nodes._at_rest``: a damaged checkpoint stops the start) into a new
``Node`` (``nodes._node``), hands each plugin its saved records, listens,
lets the plugins resume their background work, and serves connections
until it is cancelled or told to stop; a stop checkpoints every workload.
"""

from __future__ import annotations

import functools
import gc
import logging
import socket
from collections.abc import Sequence
from pathlib import Path

import trio

from . import _checkpoints as checkpoints
from . import _crash as crash
from ._at_rest import load_data_key
from ._config import Address, NodeConfig
from ._credentials import watch
from ._errors import CheckpointFailed, ConfigError, DamagedState, UndecryptableState
from ._discovery import run_discovery
from ._gossip import run_membership, start_membership
from ._health import Health, Notifier, lifecycle
from ._hibernate import sweep
from ._hosting import Host
from ._node import Node
from ._plugin import Plugin, load_records
from ._tls import server_context

logger = logging.getLogger(__name__)


def _open_node(config: NodeConfig, plugins: Sequence[Plugin]) -> tuple[Node, checkpoints.Saved]:
    """Make the node and restore the last checkpoint into it; blocking.

    With ``discard_state``, damaged saved state is set aside and the node
    starts empty.  Nothing on disk changes here (``checkpoints.retire``
    follows once the node listens).
    Raises DamagedState (the start is refused) or ConfigError.
    """
    data_dir = config.data_path
    # The start that makes the data key reads a checkpoint that a node of an
    # earlier version saved unencrypted (there was no key to seal it with);
    # the next checkpoint is sealed.  Once the key exists, only sealed state
    # is read.  Sealed state with no key file is refused before a key is
    # made, so the operator can put the right key back.
    first_key = not config.data_key_path.exists()
    read_key = None if first_key else load_data_key(config.data_key_path)
    try:
        try:
            saved = checkpoints.find(data_dir, key=read_key)
        except UndecryptableState as exc:
            if not first_key:
                raise
            raise UndecryptableState(exc.path, f"{exc.path} is encrypted, but the data key file "
                                               f"{config.data_key_path} is missing: put back the key it was "
                                               "sealed with") from exc
        if first_key:
            load_data_key(config.data_key_path)  # made now, so the next checkpoint is sealed
            if saved.checkpoint is not None:
                logger.warning("read an unencrypted checkpoint saved before this node had a data key; "
                               "the next one is encrypted", extra={"path": str(saved.checkpoint)})
        node = _new_node(config, plugins)
        try:
            load_records(node, node.plugins, checkpoints.restore(node.host, saved, key=read_key))
        except BaseException:
            node.host.close()
            raise
    except DamagedState as exc:
        if Path(exc.path) == data_dir:
            raise  # nothing in it can be read, so nothing can be set aside
        if not config.discard_state:
            key_used = f" (the data key is {config.data_key_path})" if isinstance(exc, UndecryptableState) else ""
            raise type(exc)(exc.path, f"{exc}{key_used}; repair it, or start with --discard-state to set the "
                                      "saved state aside and start empty") from exc
        logger.error("saved state is damaged: %s", exc, extra={"path": exc.path})
        checkpoints.discard(data_dir, exc)
        return _new_node(config, plugins), checkpoints.Saved(data_dir)
    return node, saved


def _new_node(config: NodeConfig, plugins: Sequence[Plugin]) -> Node:
    """A node with an empty Host on the data directory.  Raises ConfigError (closing the Host)."""
    try:
        config.data_path.mkdir(parents=True, exist_ok=True)
        host = Host(config.data_path, limits=config.limits())
    except OSError as exc:
        raise ConfigError(f"cannot use the data directory {config.data_path}: "
                          f"{exc.filename or config.data_path}: {exc.strerror}") from None
    try:
        node = Node(config, host, plugins)
    except BaseException:
        host.close()
        raise
    host.hibernator.key = node.data_key  # hibernation files are sealed like checkpoints
    return node


async def _listen(config: NodeConfig) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(config.listen.port, host=config.listen.host)
    except OSError as exc:  # the address is in use, or not ours: a setting to fix
        raise ConfigError(f"cannot listen on {config.listen}: {exc.strerror or exc}") from None


def _advertised(bound: Address) -> Address:
    if bound.host in ("0.0.0.0", "::"):
        return Address(socket.gethostname(), bound.port)
    return bound


async def serve(config: NodeConfig, *, plugins: Sequence[Plugin] = (), stop: trio.Event | None = None,
                reload: trio.abc.ReceiveChannel[object] | None = None, notifier: Notifier | None = None,
                task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a node, with ``plugins`` (``nodes.Plugin``), until cancelled or until ``stop`` is set.

    ``task_status.started`` gets the Address the node listens on (useful with
    port 0).  When ``stop`` is set the node stops accepting, lets running
    requests finish, checkpoints its workloads into ``DATA_DIR/checkpoints``
    and returns; cancellation stops it without a checkpoint.  Each item
    received from ``reload`` (SIGHUP, in ``migrate-node serve``) reloads
    the certificate and the revocation list; they are also reloaded when
    their files change (``nodes._credentials``).  With ``metrics_listen``
    the node serves /metrics, /healthz and /readyz, and ``notifier`` gets
    systemd's READY, STOPPING and WATCHDOG states (``nodes._health``).
    Raises ConfigError for unusable settings or TLS material or a busy
    address or plugins that clash, DamagedState (a ConfigError) for saved
    state it will not start from, and CheckpointFailed if the shutdown
    checkpoint failed.
    """
    if not config.insecure:
        server_context(config.tls_path)  # fail before touching the data dir
    crash.allow(phase for plugin in plugins for phase in plugin.crash_phases)
    async with lifecycle(config, notifier) as health:
        await _serve(config, plugins, stop, reload, task_status, health)


async def _serve(config: NodeConfig, plugins: Sequence[Plugin], stop: trio.Event | None,
                 reload: trio.abc.ReceiveChannel[object] | None, task_status: trio.TaskStatus[Address],
                 health: Health) -> None:
    node, saved = await trio.to_thread.run_sync(_open_node, config, tuple(plugins))
    try:
        listeners = await _listen(config)
        try:  # only now, with the address ours, are the restored workloads the truth
            await trio.to_thread.run_sync(checkpoints.retire, saved)
        except BaseException:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            raise
        host_, port = listeners[0].socket.getsockname()[:2]
        bound = Address(host_, port)
        async with trio.open_nursery() as nursery:
            node.serving(_advertised(bound), nursery)
            node.membership = members = start_membership(node)
            accepting = trio.CancelScope()

            async def accept() -> None:
                with accepting:
                    await trio.serve_listeners(node.handle_connection, listeners, handler_nursery=nursery)

            for plugin in node.plugins:  # before any request is served
                if plugin.resume is not None:
                    await plugin.resume(node)
            nursery.start_soon(accept)
            if node.credentials is not None:
                nursery.start_soon(functools.partial(watch, node.credentials, on_revoked=node.close_revoked,
                                                     poll_s=config.tls_poll_s, requests=reload))
            for address in config.join:
                node.learn_peer(address)
            nursery.start_soon(run_membership, node, members)
            nursery.start_soon(functools.partial(sweep, node.host, config.idle_s, run=node.run_host))
            if config.mdns or config.join_dns is not None:
                nursery.start_soon(run_discovery, node)
            logger.info("listening", extra={"address": str(bound), "role": config.role,
                                            "tls": not config.insecure, "data_dir": str(config.data_path),
                                            "call_workers": config.call_workers})
            task_status.started(bound)
            health.ready(node)
            await (stop.wait() if stop is not None else trio.sleep_forever())
            health.stop()
            accepting.cancel()
            try:
                await node.shut_down()
            except CheckpointFailed as exc:
                logger.error("%s", exc)
                raise
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(node.host.close)


def freeze_startup_objects() -> None:
    """Keep what start-up made (modules, the restored node) out of the cyclic collector's full passes.

    A full (generation 2) collection walks every tracked object: on a node
    process serving a 256 MiB move they took 15-21 ms, each a stall of the
    event loop, and calls waited through them.  ``gc.freeze`` moves the
    objects alive now to a permanent generation the collector skips;
    ``migrate-node serve`` calls it once the node listens.  (An application
    that cares about its call latency can do the same after its start-up.)
    """
    gc.collect()
    gc.freeze()
