"""Run a spec script twice in lockstep: plain, and migrated before every action.

The plain world runs the original modules; the migrated world runs each
module as ``snapshot.prepare`` rewrote it and moves every instance into a
fresh store before each action (``_spec_world``).  Each action's outcomes
are compared bit for bit (floats by bits, v128 by bytes, references by
kind, nullness and host value) and trap against no trap; the plain outcome
is also checked against the script's own expectation, so a harness bug
shows.  Invalid and malformed modules must be refused by
``snapshot.prepare`` with a ``SnapshotError``.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path

import wasmtime

import snapshot

from . import _wast as W
from ._spec_world import Entry, LinkError, World, feature_of
from ._wast_engine import Outcome, call, get_global, matches


@dataclass
class Totals:
    files: int = 0
    modules: int = 0
    modules_migrated: int = 0
    actions: int = 0
    actions_compared: int = 0
    mismatches: list = field(default_factory=list)      # (file, line, plain, migrated)
    spec_failures: list = field(default_factory=list)   # (file, line, what): the plain run disagrees with the script
    harness_errors: list = field(default_factory=list)  # (file, line, what)
    refusals: collections.Counter = field(default_factory=collections.Counter)
    skipped: collections.Counter = field(default_factory=collections.Counter)
    refused_ok: collections.Counter = field(default_factory=collections.Counter)  # invalid/malformed -> SnapshotError
    not_refused: list = field(default_factory=list)     # (file, line, kind, what)
    text_rejected: int = 0  # malformed/invalid text wat2wasm already rejects: no binary for prepare


@dataclass
class Pair:
    plain: Entry | None
    migrated: Entry | None
    refused: str | None = None  # why there is no migrated instance


_SKIPPED = ("skipped",)
_SKIPPED_PAIR = Pair(None, None)


def _compile(module: W.Module) -> bytes:
    return module.source if module.form == "binary" else wasmtime.wat2wasm(module.source)


def _instantiate(world: World, module: wasmtime.Module) -> tuple[str, Entry | None, str]:
    try:
        return "ok", world.instantiate(module), ""
    except wasmtime.Trap as exc:
        return "trap", None, str(exc)
    except (wasmtime.WasmtimeError, LinkError) as exc:
        return "unlinkable", None, str(exc)


def _same(a: Outcome, b: Outcome) -> bool:
    return a.status == b.status and (a.status != "ok" or a.values == b.values)


class ScriptRun:
    """One script's plain and migrated worlds and the totals they add to."""

    def __init__(self, engine: wasmtime.Engine, totals: Totals, file: str) -> None:
        self.engine, self.t, self.file = engine, totals, file
        self.plain = World(engine, migrated=False)
        self.mig = World(engine, migrated=True)
        self.current: Pair | None = None
        self.named: dict[str, Pair] = {}
        self.definitions: dict[str, tuple] = {}

    # --- modules ---------------------------------------------------------

    def _prepare(self, wasm: bytes, line: int) -> wasmtime.Module | str:
        """The prepared module, or why the migrated world has none."""
        try:
            return wasmtime.Module(self.engine, snapshot.prepare(wasm))
        except snapshot.UnsupportedFeatureError as exc:  # a refusal, naming its feature
            self.t.refusals[feature_of(str(exc))] += 1
            return str(exc)
        except snapshot.InvalidModuleError as exc:
            self.t.mismatches.append((self.file, line, "valid module", f"prepare refused it: {exc}"))
            return "prepare refused a valid module"

    def _modules(self, cmd: W.Module) -> tuple[wasmtime.Module, wasmtime.Module | str] | None:
        try:
            wasm = _compile(cmd)
        except wasmtime.WasmtimeError as exc:
            # e.g. names.wast: "likely-confusing unicode character found" (a lint of wasmtime's text parser)
            self.t.skipped[f"module text wasmtime's text parser refuses: {str(exc).splitlines()[0]}"] += 1
            return _SKIPPED
        try:
            plain = wasmtime.Module(self.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            self.t.spec_failures.append((self.file, cmd.line, f"module does not compile: {exc}"))
            return None
        return plain, self._prepare(wasm, cmd.line)

    def module(self, cmd: W.Module) -> None:
        modules = self._modules(cmd)
        if cmd.definition:
            if modules is not None and cmd.name:
                self.definitions[cmd.name] = modules
            return
        self._start(cmd.line, cmd.name, modules)

    def instance(self, cmd: W.Instance) -> None:
        self._start(cmd.line, cmd.name, self.definitions.get(cmd.module))

    def _start(self, line: int, name: str | None, modules) -> None:
        self.t.modules += 1
        self.current = None
        if modules is _SKIPPED:
            self.current = _SKIPPED_PAIR
            if name:
                self.named[name] = _SKIPPED_PAIR
            return
        if modules is None:
            return
        status, plain, msg = _instantiate(self.plain, modules[0])
        if status != "ok":
            self.t.spec_failures.append((self.file, line, f"module did not instantiate ({status}): {msg}"))
            return
        mig, refused = None, modules[1] if isinstance(modules[1], str) else None
        if refused is None:
            try:
                mstatus, mig, mmsg = _instantiate(self.mig, modules[1])
            except snapshot.UnrepresentableStateError as exc:
                self.t.refusals[feature_of(str(exc))] += 1
                refused = str(exc)
            else:
                if mstatus != "ok":
                    self.t.mismatches.append((self.file, line, "instantiated", f"{mstatus}: {mmsg}"))
                else:
                    self.t.modules_migrated += 1
        for entry in (plain, mig):
            if entry is not None:
                entry.name = name
        self.current = Pair(plain, mig, refused)
        if name:
            self.named[name] = self.current
        self.plain.prune({plain})
        self.mig.prune({mig} if mig else set())

    def register(self, cmd: W.Register) -> None:
        pair = self.named.get(cmd.module) if cmd.module else self.current
        if pair is None:
            self.t.spec_failures.append((self.file, cmd.line, "register of an unknown module"))
            return
        if pair.plain is not None:
            pair.plain.registered = True
            self.plain.registry[cmd.as_name] = pair.plain
        # A module the migrated world refused is registered as refused, so its importers are refused too.
        mig = pair.migrated or Entry(None, [], refused=pair.refused or "not instantiated")
        mig.registered = True
        self.mig.registry[cmd.as_name] = mig

    # --- actions ---------------------------------------------------------

    def _run(self, world: World, entry: Entry, act: W.Action) -> Outcome:
        item = entry.instance.exports(world.store).get(act.field)
        if act.kind == "get":
            return get_global(world.store, item) if isinstance(item, wasmtime.Global) else Outcome("error")
        return call(world.store, item, act.args) if isinstance(item, wasmtime.Func) else Outcome("error")

    def action(self, act: W.Action) -> Outcome | None:
        pair = self.named.get(act.module) if act.module else self.current
        if pair is _SKIPPED_PAIR:
            self.t.skipped["action on a module the text parser refused"] += 1
            return None
        if pair is None or pair.plain is None:
            self.t.spec_failures.append((self.file, act.line, "action on a module that is not there"))
            return None
        self.t.actions += 1
        plain = self._run(self.plain, pair.plain, act)
        if pair.migrated is not None and pair.migrated.instance is not None:
            for error in self.mig.migrate(self.t.refusals):
                self.t.harness_errors.append((self.file, act.line, error))
            if pair.migrated.instance is not None:
                self.t.actions_compared += 1
                mig = self._run(self.mig, pair.migrated, act)
                if not _same(plain, mig):
                    self.t.mismatches.append((self.file, act.line, _show(plain), _show(mig)))
        return plain

    def expect(self, line: int, ok: bool, what: str) -> None:
        if not ok:
            self.t.spec_failures.append((self.file, line, what))

    # --- assertions on modules -------------------------------------------

    def refused_module(self, cmd: W.Assert) -> None:
        """assert_invalid / assert_malformed: the engine and snapshot.prepare must both refuse it."""
        try:
            wasm = _compile(cmd.target)
        except wasmtime.WasmtimeError:
            self.t.text_rejected += 1
            return
        try:
            wasmtime.Module.validate(self.engine, wasm)
            self.expect(cmd.line, False, f"{cmd.kind} module accepted by wasmtime")
        except wasmtime.WasmtimeError:
            pass
        try:
            snapshot.prepare(wasm)
        except snapshot.SnapshotError:
            self.t.refused_ok[cmd.kind] += 1
        except Exception as exc:  # noqa: BLE001 - any other exception is the finding
            self.t.not_refused.append((self.file, cmd.line, cmd.kind, f"{type(exc).__name__}: {exc}"))
        else:
            self.t.not_refused.append((self.file, cmd.line, cmd.kind, "prepare returned a module"))

    def failing_module(self, cmd: W.Assert) -> None:
        """assert_unlinkable / assert_uninstantiable: plain and migrated fail the same way."""
        want = "unlinkable" if cmd.kind == "unlinkable" else "trap"
        modules = self._modules(cmd.target)
        if modules is None or modules is _SKIPPED:
            return
        status, entry, _ = _instantiate(self.plain, modules[0])
        self.expect(cmd.line, status == want, f"expected {want}, got {status}")
        if isinstance(modules[1], str):
            return
        try:
            mstatus, _, _ = _instantiate(self.mig, modules[1])
        except snapshot.UnrepresentableStateError as exc:
            self.t.refusals[feature_of(str(exc))] += 1
            return
        if mstatus != status:
            self.t.mismatches.append((self.file, cmd.line, status, mstatus))


_STATUS = {"trap": "trap", "exhaustion": "exhaustion", "exception": "exception"}


def _show(o: Outcome) -> str:
    return f"{o.status} {o.values}" if o.status == "ok" else f"{o.status}: {o.message.splitlines()[0] if o.message else ''}"


def run_commands(run: ScriptRun, commands: list) -> None:
    t = run.t
    for cmd in commands:
        try:
            _dispatch(run, cmd)
        except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
            t.harness_errors.append((run.file, cmd.line, f"{type(exc).__name__}: {exc}"))


def _dispatch(run: ScriptRun, cmd) -> None:
    if isinstance(cmd, W.Module):
        run.module(cmd)
    elif isinstance(cmd, W.Instance):
        run.instance(cmd)
    elif isinstance(cmd, W.Register):
        run.register(cmd)
    elif isinstance(cmd, W.Skip):
        run.t.skipped[cmd.reason] += 1
    elif isinstance(cmd, W.Action):
        out = run.action(cmd)
        run.expect(cmd.line, out is None or out.status == "ok", f"bare action: {out and _show(out)}")
    elif isinstance(cmd, W.AssertReturn):
        out = run.action(cmd.action)
        if out is not None:
            ok = out.status == "ok" and len(out.values) == len(cmd.expected) and \
                all(matches(e, v) for e, v in zip(cmd.expected, out.values))
            run.expect(cmd.line, ok, f"expected {cmd.expected}, got {_show(out)}")
    elif cmd.kind in ("invalid", "malformed"):
        run.refused_module(cmd)
    elif cmd.kind in ("unlinkable", "uninstantiable"):
        run.failing_module(cmd)
    else:
        out = run.action(cmd.target)
        if out is not None:
            run.expect(cmd.line, out.status == _STATUS[cmd.kind], f"expected {cmd.kind}, got {_show(out)}")


def run_script(text: str, file: str, engine: wasmtime.Engine, totals: Totals) -> None:
    """Parse and run one script, adding to ``totals`` (a script that does not parse is counted as skipped)."""
    totals.files += 1
    try:
        commands = W.parse_script(text, file)
    except W.WastSyntaxError as exc:
        totals.skipped[f"file does not parse: {exc}"] += 1
        return
    run_commands(ScriptRun(engine, totals, file), commands)


def run_file(path: Path, engine: wasmtime.Engine, totals: Totals) -> None:
    run_script(path.read_text(encoding="utf-8", errors="replace"), path.name, engine, totals)
