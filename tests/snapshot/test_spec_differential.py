"""The spec test suite through a migration before every action, against the same run without one.

The default run takes a fixed sample of the suite (``benchmarks.spec.SAMPLE``:
memory, tables, globals, bulk memory, data/elem drop, SIMD, reference types,
call_indirect, linking, exceptions); ``pytest -m spec_full`` runs every file.
Both require 0 mismatches outside ``KNOWN_GAPS`` and every invalid or
malformed module refused by ``snapshot.prepare`` with a SnapshotError.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import snapshot

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks is not installed: use the checkout's
from benchmarks import spec  # noqa: E402
from benchmarks._spec_diff import Totals, run_script  # noqa: E402
from benchmarks._wast_engine import product_engine  # noqa: E402

import wast  # noqa: E402

#: Mismatches still expected, each (file, line of the command) -> why.  A
#: listed gap that no longer mismatches fails the test: remove it then.
KNOWN_GAPS: dict[tuple[str, int], str] = {}  # none: dropped segments travel with snapshots since format 2


def _suite():
    root = wast.testsuite_dir()
    if root is None:
        pytest.skip("spec test suite not found (set WASM_TESTSUITE)")
    return root


def _check(totals: Totals, files: set[str]) -> None:
    gaps = {k: v for k, v in KNOWN_GAPS.items() if k[0] in files}
    found = {(f, line): (plain, migrated) for f, line, plain, migrated in totals.mismatches}
    unexplained = {k: v for k, v in found.items() if k not in gaps}
    assert not unexplained, f"mismatches (plain, migrated): {unexplained}"
    stale = [k for k in gaps if k not in found]
    assert not stale, f"{stale} no longer mismatch: remove it from KNOWN_GAPS"
    assert totals.not_refused == [], "invalid/malformed modules prepare did not refuse with SnapshotError"
    assert totals.harness_errors == [] and totals.spec_failures == [], (totals.harness_errors, totals.spec_failures)


@pytest.fixture(scope="module")
def sample_totals():
    root = _suite()
    totals, _ = spec.run([root / f for f in spec.SAMPLE])
    return totals


def test_sample_migrates_before_every_action_without_mismatches(sample_totals):
    t = sample_totals
    _check(t, set(spec.SAMPLE))
    assert t.files == len(spec.SAMPLE)
    # The sample really exercises migration: most actions ran on a restored instance.
    assert t.actions_compared > 0.9 * t.actions > 3000, (t.actions_compared, t.actions)
    assert t.modules_migrated > 0.8 * t.modules


def test_sample_refuses_every_invalid_and_malformed_binary(sample_totals):
    assert sample_totals.refused_ok["invalid"] > 300 and sample_totals.refused_ok["malformed"] > 0
    assert sample_totals.not_refused == []


@pytest.mark.spec_full
def test_whole_suite_migrates_before_every_action_without_mismatches():
    root = _suite()
    paths = sorted(root.glob("*.wast"))
    totals, _ = spec.run(paths)
    _check(totals, {p.name for p in paths})
    assert totals.actions_compared > 0.9 * totals.actions


# --- the harness itself ------------------------------------------------------------

COUNTER = """
(module $lib
  (memory (export "mem") 1)
  (global $g (export "g") (mut i32) (i32.const 0))
  (func (export "bump") (result i32)
    (global.set $g (i32.add (global.get $g) (i32.const 1)))
    (i32.store (i32.const 8) (global.get $g))
    (global.get $g)))
(register "lib" $lib)
(module $user
  (import "lib" "mem" (memory 1))
  (func (export "peek") (result i32) (i32.load (i32.const 8)))
  (func (export "poke") (param i32) (i32.store (i32.const 8) (local.get 0))))
(assert_return (invoke $lib "bump") (i32.const 1))
(assert_return (invoke $lib "bump") (i32.const 2))
(assert_return (invoke $user "peek") (i32.const 2))
(invoke $user "poke" (i32.const 40))
(assert_return (invoke $lib "bump") (i32.const 3))
(assert_return (invoke $user "peek") (i32.const 3))
(assert_return (get $lib "g") (i32.const 3))
(assert_return (invoke $lib "bump") (f32.const 0))
"""


def _run(text: str) -> Totals:
    totals = Totals()
    run_script(text, "t.wast", product_engine(), totals)
    return totals


def test_linked_instances_migrate_together_and_expectations_are_checked():
    t = _run(COUNTER)
    assert t.mismatches == [] and t.harness_errors == []
    assert (t.modules, t.modules_migrated, t.actions, t.actions_compared) == (2, 2, 8, 8)
    # The last assertion is wrong on purpose: the plain run is checked against the script.
    assert [line for _, line, _ in t.spec_failures] == [COUNTER.count("\n", 0, COUNTER.index("(f32.const 0)")) + 1]


def test_a_migration_that_loses_state_is_a_mismatch(monkeypatch):
    monkeypatch.setattr(snapshot, "restore", lambda snap, store, instance: None)
    t = _run(COUNTER)
    lines = [line for _, line, _, _ in t.mismatches]
    assert len(lines) >= 4, t.mismatches  # every bump after the first restarts from the module's initial state


def test_refusals_are_counted_by_feature_and_invalid_modules_must_be_refused():
    t = _run("""
(module
  (global $g (mut externref) (ref.null extern))
  (func (export "keep") (param externref) (global.set $g (local.get 0)))
  (func (export "one") (result i32) (i32.const 1)))
(invoke "keep" (ref.extern 7))
(assert_return (invoke "one") (i32.const 1))
(assert_invalid (module (func (result i32))) "type mismatch")
(assert_malformed (module binary "\\00asm\\02\\00\\00\\00") "unknown binary version")
""")
    assert t.refusals == {"global N holds a host externref (int)": 1}
    assert (t.actions, t.actions_compared) == (2, 1)
    assert t.refused_ok == {"invalid": 1, "malformed": 1} and t.not_refused == []


def test_importers_of_a_refused_instance_are_refused_and_definitions_instantiate():
    t = _run("""
(module $a
  (global $g (mut externref) (ref.null extern))
  (func (export "keep") (param externref) (global.set $g (local.get 0)))
  (func (export "two") (result i32) (i32.const 2)))
(register "a" $a)
(module definition $D
  (import "a" "two" (func $two (result i32)))
  (func (export "three") (result i32) (i32.add (call $two) (i32.const 1))))
(module instance $I $D)
(assert_return (invoke $I "three") (i32.const 3))
(invoke $a "keep" (ref.extern 1))
(assert_return (invoke $I "three") (i32.const 3))
""")
    assert t.refusals == {"global N holds a host externref (int)": 1,
                          "imports from a refused instance (global N holds a host externref (int))": 1}
    assert (t.modules, t.modules_migrated, t.actions, t.actions_compared) == (2, 2, 3, 2)
    assert t.mismatches == [] and t.spec_failures == [] and t.harness_errors == []
