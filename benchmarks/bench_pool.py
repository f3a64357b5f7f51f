"""Measure stateless pools: starting from the pool's captured state, throughput on 2 slots, reset cost.

Three phases, each with its reference measured in the same run:

* **Start.** QuickJS-NG's reactor (the test dependency
  ``qjs-wasi-reactor.wasm``), whose init is the JS runtime's start-up
  (``_initialize`` then ``qjs_init``).  Cold: instantiate, first boot,
  ``qjs_init``.  Two ways a pool gets a pristine instance for a call,
  each against that cold reference: a new instance from the pool's state
  (instantiate, then ``snapshot.Resettable`` writes the pages, globals and
  tables init changed and arms the dirty tracker), and the reset of a used
  one after a small JS eval (what a warm pool does before each call).
  Both with the module given to ``Pristine`` (its tables, which QuickJS's
  code never writes, are then neither read at a start nor compared at a
  reset) and, as the reference for that, without.  Same engine settings
  as a node.
* **Throughput.** A CPU-bound call (a loop of ``SPIN`` iterations) through
  ``nodes.InstancePool.call``, reset included, from 1 thread on 1 slot
  (the reference) and from ``cores`` threads on as many slots.
* **Reset.** A module with 16 MiB or 256 MiB of memory; a call writes one
  byte in each of 1, 16 or 256 pages; ``Resettable.reset`` is timed.
  Reference: a memcpy of the whole memory (what a reset that ignored the
  tracker would copy).

Run as ``python -m benchmarks.bench_pool`` (``--quick`` for fewer rounds).
Writes benchmarks/results/pool.json and pool.md.
"""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import wasmtime

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._measure import argument_parser, memcpy_samples, table_head, write_results  # noqa: E402
from nodes import Host, InstancePool, Limits, open_engine  # noqa: E402
import snapshot  # noqa: E402
from workloads.thirdparty import REQUIREMENT, QuickJS, find_thirdparty  # noqa: E402

SPIN = 3_000_000
DIRTY = (1, 16, 256)
MEMORY_MIB = (16, 256)

_SPIN_WAT = """
(module
  (memory (export "memory") 1)
  (func (export "spin") (param $n i32) (result i32)
    (local $i i32)
    (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
             (br_if $l (i32.lt_u (local.get $i) (local.get $n))))
    (i32.store (i32.const 64) (local.get $i))
    (local.get $i)))
"""


def _dirty_wat(mib: int) -> str:
    return f"""
(module
  (memory (export "memory") {mib * 16})
  (func (export "dirty") (param $n i32)
    (local $i i32)
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (i32.store8 (i32.mul (local.get $i) (i32.const 4096)) (i32.const 7))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))))
"""


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 4)


def _median_ms(samples: list[float]) -> float:
    return _ms(statistics.median(samples))


class _Module:
    """A prepared module on a node's engine settings, with WASI linked."""

    def __init__(self, engine: wasmtime.Engine, wasm: bytes) -> None:
        self.engine = engine
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        self.prepared = snapshot.prepare(wasm)
        self.pre = linker.instantiate_pre(wasmtime.Module(engine, self.prepared))

    def instance(self) -> tuple[wasmtime.Store, wasmtime.Instance]:
        store = wasmtime.Store(self.engine)
        store.set_wasi(wasmtime.WasiConfig())
        store.set_epoch_deadline(1 << 40)
        return store, self.pre.instantiate(store)


def measure_start(engine: wasmtime.Engine, rounds: int) -> dict[str, object]:
    path = find_thirdparty()
    if path is None:
        return {"skipped": f"QuickJS not installed: pip install '{REQUIREMENT}'"}
    qjs = _Module(engine, path.read_bytes())

    def cold(init=None) -> tuple[wasmtime.Store, wasmtime.Instance]:
        store, instance = qjs.instance()
        snapshot.first_boot(store, instance)
        # ``init`` is the export fetched alone, as the pool fetches it;
        # without it, the way wasmtime-py users do (every export wrapped).
        func = init(store, instance) if init else instance.exports(store)["qjs_init"]
        if func(store) != 0:
            raise RuntimeError("qjs_init failed")
        return store, instance

    store, instance = cold()
    after_init = snapshot.capture(store, instance)
    store, instance = qjs.instance()
    fresh = snapshot.capture(store, instance)
    pristine = snapshot.Pristine(after_init, fresh, module=qjs.prepared)
    compared = snapshot.Pristine(after_init, fresh)  # every table read at a start, compared at a reset
    cold_s, cold_wrapped_s, pooled_s, compared_s = [], [], [], []
    for _ in range(rounds):
        store, instance = qjs.instance()
        snapshot.Resettable(pristine, store, instance).close()  # learns the export names once
        # Each timed region starts with no instance of the previous one left
        # to drop: freeing a used instance is not part of starting one.
        store = instance = None
        t0 = time.perf_counter()
        store, instance = qjs.instance()
        snapshot.first_boot(store, instance)
        init = _fetch(pristine, store, instance, "qjs_init")
        if init(store) != 0:
            raise RuntimeError("qjs_init failed")
        cold_s.append(time.perf_counter() - t0)
        store = instance = init = None
        t0 = time.perf_counter()
        cold()
        cold_wrapped_s.append(time.perf_counter() - t0)
        for which, samples in ((pristine, pooled_s), (compared, compared_s)):
            t0 = time.perf_counter()
            store, instance = qjs.instance()
            started = snapshot.Resettable(which, store, instance)
            samples.append(time.perf_counter() - t0)
            assert started.exports["qjs_get_context"](store) != 0  # the JS context init made is there
            started.close()
            store = instance = started = None
    reset_s, _ = _after_eval(qjs, pristine, rounds, items=10)
    reset_compared_s, _ = _after_eval(qjs, compared, rounds, items=10)
    grown_s, dropped = _after_eval(qjs, pristine, rounds, items=1000)
    cold_ms, pooled_ms, reset_ms = _median_ms(cold_s), _median_ms(pooled_s), _median_ms(reset_s)
    wrapped_ms = _median_ms(cold_wrapped_s)
    compared.close()
    return {"module_bytes": path.stat().st_size, "memory_bytes": pristine.memory_bytes,
            "pages_written_at_start": sum(len(p) for p in pristine.start_pages),
            "table_elements_never_compared": sum(len(t.elements) for t in after_init.tables
                                                 if t.index in pristine.fixed_tables),
            "cold_instantiate_and_init_ms": cold_ms, "cold_with_every_export_wrapped_ms": wrapped_ms,
            "start_from_pool_state_ms": pooled_ms, "reset_after_small_js_eval_ms": reset_ms,
            "start_tables_compared_ms": _median_ms(compared_s),
            "reset_tables_compared_ms": _median_ms(reset_compared_s),
            "after_large_js_eval_ms": _median_ms(grown_s), "large_eval_instances_dropped": dropped,
            "start_speedup": round(cold_ms / pooled_ms, 1), "reset_speedup": round(cold_ms / reset_ms, 1),
            "start_speedup_vs_wrapped": round(wrapped_ms / pooled_ms, 1), "rounds": rounds}


def _fetch(pristine, store, instance, name: str):
    """One export of a fresh instance, fetched alone (as the pool does), without starting it."""
    return snapshot.Resettable.fetch_export(pristine, store, instance, name)


def _after_eval(qjs: _Module, pristine, rounds: int, items: int) -> tuple[list[float], int]:
    """What the pool does after a JS eval building ``items`` objects: reset the instance, or drop it and
    start another when it cannot be reset (its memory grew).  Returns the seconds of each, and how many
    instances were dropped."""
    def start():
        store, instance = qjs.instance()
        return snapshot.Resettable(pristine, store, instance)

    resettable = start()
    js = QuickJS(resettable.store, resettable.instance)
    samples, dropped = [], 0
    code = f"let a = []; for (let i = 0; i < {items}; i++) a.push({{i, s: 'x' + i}}); a.length"
    for _ in range(rounds):
        if js.eval(code) != str(items):
            raise RuntimeError("JS eval failed")
        t0 = time.perf_counter()
        try:
            resettable.reset()
        except snapshot.NotResettable:
            resettable.close()
            dropped += 1
            resettable = start()
        samples.append(time.perf_counter() - t0)
        if js._store is not resettable.store:  # wrapping the new instance is the benchmark's, not timed
            js = QuickJS(resettable.store, resettable.instance)
    resettable.close()
    return samples, dropped


def measure_throughput(seconds: float) -> dict[str, object]:
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as data, Host(Path(data), limits=Limits(call_timeout_s=10.0)) as host:
        sha = host.add_module(wasmtime.wat2wasm(_SPIN_WAT))
        pool = InstancePool(host, sha, name="bench", app="bench", init=None, max_instances=cores, idle_s=3600)
        params = pool.check_call("spin", (SPIN,))
        for slot in range(cores):
            pool.call(slot, "spin", params)  # start every instance before timing

        def rate(threads: int) -> float:
            counts = [0] * threads
            stop = time.perf_counter() + seconds

            def work(slot: int) -> None:
                while time.perf_counter() < stop:
                    pool.call(slot, "spin", params)
                    counts[slot] += 1

            workers = [threading.Thread(target=work, args=(s,)) for s in range(threads)]
            t0 = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            return sum(counts) / (time.perf_counter() - t0)

        one = rate(1)
        many = rate(cores)
        stats = pool.stats()
        pool.close()
    return {"cores": cores, "spin": SPIN, "seconds": seconds, "one_slot_calls_per_s": round(one, 1),
            "all_slots_calls_per_s": round(many, 1), "scaling": round(many / one, 2),
            "scaling_per_core": round(many / one / cores, 2), "calls": stats.calls,
            "left_state": stats.left_state}


def measure_reset(engine: wasmtime.Engine, rounds: int) -> dict[str, object]:
    out = {}
    for mib in MEMORY_MIB:
        module = _Module(engine, wasmtime.wat2wasm(_dirty_wat(mib)))
        store, instance = module.instance()
        state = snapshot.capture(store, instance)
        pristine = snapshot.Pristine(state, state)
        store, instance = module.instance()
        resettable = snapshot.Resettable(pristine, store, instance)
        dirty = instance.exports(store)["dirty"]
        memory = instance.exports(store)["memory"]
        base = ctypes.addressof(memory.data_ptr(store).contents)
        figures = {"memcpy_whole_memory_ms": _median_ms(memcpy_samples(base, mib << 20, max(3, rounds // 4)))}
        for pages in DIRTY:
            samples = []
            for _ in range(rounds):
                dirty(store, pages)
                t0 = time.perf_counter()
                report = resettable.reset()
                samples.append(time.perf_counter() - t0)
                assert report.pages == pages, report
            figures[f"reset_{pages}_pages_ms"] = _median_ms(samples)
        resettable.close()
        pristine.close()
        out[f"{mib}MiB"] = figures
    return out


def run(quick: bool) -> dict[str, object]:
    engine, _ = open_engine(Limits())
    return {
        "start": measure_start(engine, rounds=5 if quick else 30),
        "throughput": measure_throughput(seconds=0.5 if quick else 3.0),
        "reset": measure_reset(engine, rounds=5 if quick else 40),
        "uffd": snapshot.uffd_available(),
        "machine": {"python": platform.python_version(), "kernel": platform.release(),
                    "arch": platform.machine(), "cores": os.cpu_count()},
    }


def markdown(result: dict[str, object]) -> str:
    start, tp, reset = result["start"], result["throughput"], result["reset"]
    lines = table_head("Stateless pools: start, throughput, reset",
                       [f"Linux {result['machine']['kernel']}, Python {result['machine']['python']}, "
                        f"{result['machine']['cores']} cores; dirty tracking by "
                        f"{'userfaultfd' if result['uffd'] else 'compare'}. Medians; references from the same run."],
                       ["what", "figure", "reference", "ratio"])
    if "skipped" in start:
        lines.append(f"| start | skipped: {start['skipped']} | | |")
    else:
        cold = f"cold instantiate + init {start['cold_instantiate_and_init_ms']} ms"
        skipped = f"{start['table_elements_never_compared']} table elements never read"
        lines += [
            f"| a pristine QuickJS instance for a call: a new one from the pool's state "
            f"({start['pages_written_at_start']} pages written, {skipped}) "
            f"| {start['start_from_pool_state_ms']} ms | {cold} | {start['start_speedup']}x faster |",
            f"| the same | | cold, every export wrapped (wasmtime-py's `exports()`) "
            f"{start['cold_with_every_export_wrapped_ms']} ms | {start['start_speedup_vs_wrapped']}x faster |",
            f"| the same, tables read (no module given to `Pristine`) | {start['start_tables_compared_ms']} ms | | |",
            f"| a pristine QuickJS instance for a call: the reset of a used one, after a small JS eval "
            f"(10 objects; {skipped}) | {start['reset_after_small_js_eval_ms']} ms | {cold} "
            f"| {start['reset_speedup']}x faster |",
            f"| the same, tables compared (no module given to `Pristine`) | {start['reset_tables_compared_ms']} ms "
            f"| | |",
            f"| QuickJS after a JS eval of 1,000 objects (memory grew: {start['large_eval_instances_dropped']} of "
            f"{start['rounds']} instances dropped and started again) | {start['after_large_js_eval_ms']} ms | | |"]
    lines.append(f"| calls/s on {tp['cores']} slots ({tp['cores']} threads) | {tp['all_slots_calls_per_s']} "
                 f"| 1 slot: {tp['one_slot_calls_per_s']} | {tp['scaling']}x ({tp['scaling_per_core']} per core) |")
    for size, figures in reset.items():
        memcpy = figures["memcpy_whole_memory_ms"]
        for pages in DIRTY:
            ms = figures[f"reset_{pages}_pages_ms"]
            lines.append(f"| reset, {pages} pages dirtied, {size} memory | {ms} ms | memcpy of {size} {memcpy} ms "
                         f"| {round(memcpy / ms, 1)}x faster |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, "fewer rounds and 0.5 s throughput phases")
    args = parser.parse_args(argv)
    result = run(args.quick)
    write_results(args.out, "pool", args.quick, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
