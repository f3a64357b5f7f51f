"""The instances of one spec script in one store, and how a migration moves them all.

A script's instances import each other (``register``) and the "spectest"
host module, so they are moved together: before every action the migrated
world captures each instance it holds (``snapshot.capture``), encodes and
decodes the snapshot, then builds a fresh store with fresh spectest objects
and instantiates every module again in creation order, linked to the new
instances exactly as before, and restores each snapshot into its new
instance.

What migrates where, consistent with ``snapshot.capture`` (which captures a
module's own memories, tables and globals, never imported ones): an
imported memory, table or global travels once, in the snapshot of the
instance that defines it.  Re-instantiating an importer re-runs its active
data and element segments into its exporter's objects, so after all
instances are rebuilt every snapshot is restored a second time, which
overwrites those writes with the captured state.  The spectest memory and
table belong to the host, not to a module: the harness carries the memory's
bytes over itself; the table's entries come back by re-running importers'
element segments, and if its null/non-null pattern then differs from the
old one (a table.set at run time), the instances importing it are refused.
An instance whose state cannot be captured is refused (counted by feature),
and so is every instance that imports from it; their actions then run only
in the plain world.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass, field

import wasmtime

import snapshot

from ._wast_engine import new_store, spectest


class LinkError(Exception):
    """An import names a module or field that is not there."""


_ITEM = re.compile(r"\b(table|global|memory|function|segment|element|data|tag|type|import|export) \d+\b")


def feature_of(message: str) -> str:
    """The feature a refusal names, with item numbers folded (``table 2 holds`` -> ``table N holds``)."""
    return _ITEM.sub(r"\1 N", message.split(";")[0]).strip()


@dataclass(eq=False)
class Entry:
    """One instance: its module, where each import comes from ((entry or None for spectest, field)), its name."""
    module: wasmtime.Module
    links: list
    instance: wasmtime.Instance | None = None
    name: str | None = None
    registered: bool = False
    refused: str | None = None
    imports_host_table: bool = False


@dataclass
class World:
    """Every live instance of a script in one store: ``migrated`` worlds move before each action."""
    engine: wasmtime.Engine
    migrated: bool
    store: wasmtime.Store = None
    _host: dict | None = None
    entries: list = field(default_factory=list)
    registry: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.store = new_store(self.engine)

    @property
    def host(self) -> dict:
        """The spectest exports in this world's store, made when first imported."""
        if self._host is None:
            self._host = spectest(self.store)
        return self._host

    # --- linking ---------------------------------------------------------

    def links(self, module: wasmtime.Module) -> list:
        out = []
        for imp in module.imports:
            if imp.module == "spectest":
                if imp.name not in self.host:
                    raise LinkError(f"unknown import spectest.{imp.name}")
                out.append((None, imp.name))
                continue
            source = self.registry.get(imp.module)
            if source is None:
                raise LinkError(f"unknown import module {imp.module!r}")
            if source.instance is None:
                raise snapshot.UnrepresentableStateError(
                    f"imports from a refused instance ({feature_of(source.refused)})")
            if imp.name not in source.instance.exports(self.store):
                raise LinkError(f"unknown import {imp.module}.{imp.name}")
            out.append((source, imp.name))
        return out

    def _externs(self, links: list) -> list:
        return [self.host[name] if src is None else src.instance.exports(self.store)[name] for src, name in links]

    def instantiate(self, module: wasmtime.Module) -> Entry:
        """A new instance linked into this world (first boot included); raises LinkError,
        wasmtime.WasmtimeError (link) or wasmtime.Trap (start, segments)."""
        links = self.links(module)
        entry = Entry(module, links, imports_host_table=any(s is None and n.startswith("table") for s, n in links))
        entry.instance = wasmtime.Instance(self.store, module, self._externs(links))
        if self.migrated:
            snapshot.first_boot(self.store, entry.instance)
        self.entries.append(entry)
        return entry

    def prune(self, keep: set) -> None:
        """Forget instances no later command can reach (not kept, named, registered or imported)."""
        needed, live = set(), []
        for e in reversed(self.entries):
            if e in keep or e.name or e.registered or e in needed:
                live.append(e)
                needed.update(src for src, _ in e.links if src is not None)
        self.entries = live[::-1]

    # --- migration -------------------------------------------------------

    def _refuse(self, entry: Entry, reason: str, refusals) -> None:
        entry.refused, entry.instance = reason, None
        refusals[feature_of(reason)] += 1

    def migrate(self, refusals) -> list[str]:
        """Move every live instance into a fresh store through capture, encode, decode and restore.

        Returns what went wrong rebuilding instances (nothing, unless the snapshot package or this harness is wrong).
        """
        errors = []
        moved = []
        for e in self.entries:
            if e.instance is None:
                continue
            refused_source = next((src for src, _ in e.links if src is not None and src.instance is None), None)
            if refused_source is not None:
                self._refuse(e, f"imports from a refused instance ({feature_of(refused_source.refused)})", refusals)
                continue
            try:
                snap = snapshot.capture(self.store, e.instance)
            except snapshot.UnrepresentableStateError as exc:
                self._refuse(e, str(exc), refusals)
                continue
            moved.append((e, snapshot.Snapshot.from_bytes(snap.to_bytes())))
        old_store, old_host = self.store, self._host
        self.store, self._host = new_store(self.engine), None
        if old_host is not None:
            _copy_memory(old_store, old_host["memory"], self.store, self.host["memory"])
        for e, snap in moved:
            if any(src is not None and src.instance is None for src, _ in e.links):
                errors.append("an instance it imports from could not be rebuilt")
                e.instance, e.refused = None, "rebuild failed"
                continue
            try:
                e.instance = wasmtime.Instance(self.store, e.module, self._externs(e.links))
                snapshot.restore(snap, self.store, e.instance)
            except (wasmtime.WasmtimeError, wasmtime.Trap, snapshot.SnapshotError) as exc:
                errors.append(f"rebuilding an instance failed: {type(exc).__name__}: {exc}")
                e.instance, e.refused = None, "rebuild failed"
        if len(moved) > 1:
            if old_host is not None:
                _copy_memory(old_store, old_host["memory"], self.store, self.host["memory"])
            for e, snap in moved:
                if e.instance is not None:
                    snapshot.restore(snap, self.store, e.instance)
        if old_host is not None and any(_null_pattern(old_store, old_host[t]) != _null_pattern(self.store, self.host[t])
                                        for t in ("table", "table64")):
            for e, _ in moved:
                if e.imports_host_table and e.instance is not None:
                    self._refuse(e, "the spectest table was changed at run time (host-owned table)", refusals)
        return errors


def _copy_memory(src_store, src: wasmtime.Memory, dst_store, dst: wasmtime.Memory) -> None:
    n = src.data_len(src_store)
    grow = (n - dst.data_len(dst_store)) // 65536
    if grow > 0:
        dst.grow(dst_store, grow)
    ctypes.memmove(dst.data_ptr(dst_store), src.data_ptr(src_store), n)


def _null_pattern(store, table: wasmtime.Table) -> tuple:
    return tuple(table.get(store, i) is None for i in range(table.size(store)))
