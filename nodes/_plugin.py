"""Plugins: what another package adds to a node, handed to ``serve``.

A node serves its own requests (``nodes._handlers``); a ``Plugin`` adds
more without the nodes package knowing the package it comes from (the
migration coordinator is one).  A plugin is a frozen value:

* ``handlers``: request class -> ``handler(node, session, request) -> Reply``;
* ``state``: ``state(node)`` makes the plugin's per-node state once, when
  the node is made (before its checkpoint is loaded); handlers reach it
  with ``node.plugin_state(name)``;
* ``status``: ``status(node)`` returns plain records (dicts) that
  ``status`` shows under "migrations", each to the certificates that may
  see its ``"app"`` (``nodes._authorization.visible``; a record without
  one is shown to node certificates only);
* checkpoint hooks, under the plugin's ``name`` in the shutdown
  checkpoint's manifest (``nodes._checkpoints``): at shutdown, once
  requests have stopped, ``save(node, workload_id)`` returns the
  workload's record (a dict of msgpack-able values), ``{}`` for none, or
  None to leave the workload out of the checkpoint (it must not come back:
  a copy this node does not own).  At the next start, after the workloads
  are restored and before anything is served, ``load(node, workload_id,
  record)`` gets each saved record back, in a worker thread; it raises
  ValueError for a malformed record, which refuses the start.
  ``save_node`` and ``load_node`` do the same for a record of the node as
  a whole.  ``await resume(node)`` runs once the node can start background
  tasks (``node.start``) and before it accepts requests, to start again
  background work the records describe;
* ``describe``: ``describe(node, workload_id)`` returns a few words on
  the workload that ``list`` shows in its LIFECYCLE column (None or ""
  for nothing to say);
* ``metrics``: ``metrics(node)`` yields prometheus-client metric families,
  read when the node's ``/metrics`` is scraped (``nodes._metrics``);
* ``crash_phases``: the crash points (``nodes._crash``) its code names, so
  that crash tests may name them too.

This module also holds what the daemon does with a tuple of plugins: one
handler table, and the checkpoint records gathered and handed back.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from . import _host_errors as he
from ._errors import ConfigError, DamagedState
from ._messages import Hello, Reply, Request
from ._transport import Channel

if TYPE_CHECKING:
    from ._checkpoints import Restored
    from ._node import Node

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Session:
    """One accepted connection, as handlers see it."""

    channel: Channel

    @property
    def peer(self) -> Hello:
        return self.channel.peer


Handler = Callable[["Node", Session, Any], Awaitable[Reply]]
#: A plugin's checkpoint record of one workload, or of the node: plain msgpack data.
Record: TypeAlias = dict[str, Any]


@dataclass(frozen=True, kw_only=True, eq=False)
class Plugin:
    """Requests, per-node state, status and checkpoint records another package adds to a node."""

    name: str
    handlers: Mapping[type[Request], Handler] = field(default_factory=dict)
    state: Callable[[Node], Any] | None = None
    status: Callable[[Node], tuple[dict[str, Any], ...]] | None = None
    save: Callable[[Node, str], Record | None] | None = None
    load: Callable[[Node, str, Record], None] | None = None
    save_node: Callable[[Node], Record] | None = None
    load_node: Callable[[Node, Record], None] | None = None
    resume: Callable[[Node], Awaitable[None]] | None = None
    #: The node is stopping and half its grace went by with requests still running: end those that can end
    #: without losing anything (the migration plugin aborts moves not yet in their final round).
    stopping: Callable[[Node], None] | None = None
    metrics: Callable[[Node], Iterable[Any]] | None = None
    describe: Callable[[Node, str], str | None] | None = None
    crash_phases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "handlers", types.MappingProxyType(dict(self.handlers)))


def handler_table(own: Mapping[type[Request], Handler],
                  plugins: Iterable[Plugin]) -> dict[type[Request], Handler]:
    """One table of the node's own handlers and every plugin's.

    Raises ConfigError if two plugins share a name or two handlers a request class.
    """
    table = dict(own)
    names: set[str] = set()
    for plugin in plugins:
        if plugin.name in names:
            raise ConfigError(f"two plugins are named {plugin.name!r}")
        names.add(plugin.name)
        for kind, handler in plugin.handlers.items():
            if kind in table:
                raise ConfigError(f"{kind.__name__} already has a handler (plugin {plugin.name!r})")
            table[kind] = handler
    return table


def checkpoint_records(node: Node, plugins: Iterable[Plugin],
                       workloads: Iterable[str]) -> tuple[dict[str, dict[str, Record]], set[str], dict[str, Record]]:
    """Ask every plugin for its records: (per workload, workloads left out, the node's)."""
    savers = [(p.name, p.save) for p in plugins if p.save is not None]
    records: dict[str, dict[str, Record]] = {}
    leave_out: set[str] = set()
    for workload in workloads:
        for name, save in savers:
            record = save(node, workload)
            if record is None:
                leave_out.add(workload)
                logger.info("not checkpointed: this node does not own it",
                            extra={"workload": workload, "extension": name})
                break
            if record:
                records.setdefault(workload, {})[name] = record
    node_records = {p.name: p.save_node(node) for p in plugins if p.save_node is not None}
    return records, leave_out, node_records


def load_records(node: Node, plugins: Iterable[Plugin], restored: Restored) -> None:
    """Give every plugin its saved records back.  Raises DamagedState for a malformed one."""
    by_name = {p.name: p for p in plugins}

    def damaged(what: str, exc: Exception) -> DamagedState:
        return DamagedState(restored.manifest_path, f"checkpoint manifest {restored.manifest_path}: {what} is "
                                                    f"malformed: {exc}")

    for name, record in restored.node_records.items():
        plugin = by_name.get(name)
        if plugin is None or plugin.load_node is None:
            logger.warning("dropping the node's %s record: nothing loads it", name)
            continue
        try:
            plugin.load_node(node, record)
        except (ValueError, TypeError, he.HostError) as exc:
            raise damaged(f"the node's {name} record", exc) from exc
    for workload, records in restored.records.items():
        for name, record in records.items():
            plugin = by_name.get(name)
            if plugin is None or plugin.load is None:
                logger.warning("dropping the workload's %s record: nothing loads it", name,
                               extra={"workload": workload})
                continue
            try:
                plugin.load(node, workload, record)
            except (ValueError, TypeError, he.HostError) as exc:
                raise damaged(f"the {name} record of workload {workload}", exc) from exc
