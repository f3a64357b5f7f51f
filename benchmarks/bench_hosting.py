"""Measure workload hosting: 1,000 small workloads on one Host, and call latency.

In the same run we measure:

* compiling the counter module against loading its cached cwasm (a new Host
  on the same data dir);
* deploying N counter workloads (new Store, WASI, instantiate, first boot):
  total time, time per workload (mean, p50, p99), and memory per workload as
  the growth of this process's RSS (``/proc/self/status``) divided by N, after
  deploy and again after one call into each;
* call latency, p50/p99/max, of a no-op export called straight through
  wasmtime-py on a default engine (the in-process reference), of the
  counter's ``get`` called straight through wasmtime-py on the host's engine
  and of the same ``get`` through ``Host.call`` (lock, argument checks,
  deadline, counters);
* two CPU-bound calls (``trap.spin``) on two workloads, one after the other
  and from two threads: the speed-up shows calls into different workloads
  running in parallel;
* ``checkpoint_all`` and ``restore_all`` of the N workloads (the SIGTERM path).

Run ``python -m benchmarks.bench_hosting [--quick] [--workloads N]``.  Writes
benchmarks/results/hosting.json and hosting.md (hosting-quick.* with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import wasmtime

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import snapshot  # noqa: E402
import workloads  # noqa: E402
from nodes import EPOCH_TICK_S, Host, Limits  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def percentiles_us(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e3  # noqa: E731
    return {"p50_us": round(pick(0.50), 2), "p99_us": round(pick(0.99), 2),
            "max_us": round(ordered[-1] / 1e3, 2), "n": len(ordered)}


def time_calls(call, n: int) -> dict[str, float]:
    for _ in range(min(n, 1000)):  # warm up
        call()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        call()
        samples.append(clock() - t0)
    return percentiles_us(samples)


def raw_noop_call() -> tuple:
    """A no-op export on a default engine: the in-process floor."""
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    module = wasmtime.Module(engine, wasmtime.wat2wasm('(module (func (export "noop")))'))
    func = wasmtime.Instance(store, module, []).exports(store)["noop"]
    return lambda: func(store), (engine, store, module)


def raw_get_call(host: Host) -> tuple:
    """counter.get on the host's engine, straight through wasmtime-py."""
    engine = host.engine
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    store.set_epoch_deadline(1 << 40)
    instance = linker.instantiate(store, wasmtime.Module(engine, snapshot.prepare(workloads.load("counter"))))
    snapshot.first_boot(store, instance)
    func = instance.exports(store)["get"]
    return lambda: func(store), (store, instance)


def parallel_spin(host: Host, sha: str, iterations: int) -> dict[str, float]:
    ids = [host.deploy(sha, workload_id=f"spin{i}").workload_id for i in range(2)]
    host.call(ids[0], "spin", [iterations // 10])  # warm up
    t0 = time.perf_counter()
    for wid in ids:
        host.call(wid, "spin", [iterations])
    sequential_s = time.perf_counter() - t0
    threads = [threading.Thread(target=host.call, args=(wid, "spin", [iterations])) for wid in ids]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    parallel_s = time.perf_counter() - t0
    for wid in ids:
        host.remove(wid)
    return {"iterations": iterations, "sequential_s": round(sequential_s, 4),
            "two_threads_s": round(parallel_s, 4), "speedup": round(sequential_s / parallel_s, 2)}


def run(n: int, calls: int, spin_iterations: int, data_dir: Path) -> dict:
    counter = workloads.load("counter")
    limits = Limits(max_workloads=n + 10, max_workloads_per_app=n + 10, call_timeout_s=30.0)
    result: dict = {"workloads": n}

    with Host(data_dir, limits=limits) as host:
        t0 = time.perf_counter()
        sha = host.add_module(counter)
        result["compile_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
    with Host(data_dir, limits=limits) as host:
        t0 = time.perf_counter()
        host.deploy(sha, workload_id="warm")  # loads the cwasm
        result["load_cached_and_deploy_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
        assert host.stats().compiles == 0, "the cached cwasm was not used"
        host.remove("warm")

        rss0 = rss_bytes()
        durations = []
        t_all = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter_ns()
            host.deploy(sha, workload_id=f"c{i}")
            durations.append(time.perf_counter_ns() - t0)
        total_s = time.perf_counter() - t_all
        rss1 = rss_bytes()
        for i in range(n):
            host.call(f"c{i}", "incr", [i])
        rss2 = rss_bytes()
        ordered = sorted(durations)
        result["deploy"] = {
            "total_s": round(total_s, 3),
            "per_workload_ms": round(total_s / n * 1e3, 4),
            "p50_ms": round(ordered[len(ordered) // 2] / 1e6, 4),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] / 1e6, 4),
            "rss_per_workload_kib": round((rss1 - rss0) / n / 1024, 1),
            "rss_per_workload_after_a_call_kib": round((rss2 - rss0) / n / 1024, 1),
            "linear_memory_per_workload_kib": round(host.stats().memory_bytes / n / 1024, 1),
        }
        assert all(host.call(f"c{i}", "get", []) == i for i in range(0, n, max(1, n // 50)))

        noop, _keep_noop = raw_noop_call()
        get, _keep_get = raw_get_call(host)
        result["latency"] = {
            "raw_noop_default_engine": time_calls(noop, calls),
            "raw_get_host_engine": time_calls(get, calls),
            "host_call_get": time_calls(lambda: host.call("c0", "get", []), calls),
        }
        lat = result["latency"]
        result["latency"]["host_call_over_raw_noop_p50"] = round(
            lat["host_call_get"]["p50_us"] / lat["raw_noop_default_engine"]["p50_us"], 2)

        ckpt = data_dir / "checkpoint"
        t0 = time.perf_counter()
        report = host.checkpoint_all(ckpt)
        checkpoint_s = time.perf_counter() - t0
        assert not report.failed
        for i in range(n):
            host.remove(f"c{i}")
        t0 = time.perf_counter()
        report = host.restore_all(ckpt)
        restore_s = time.perf_counter() - t0
        assert len(report.done) == n and not report.failed
        assert host.call(f"c{n - 1}", "get", []) == n - 1
        result["checkpoint_all_s"] = round(checkpoint_s, 3)
        result["restore_all_s"] = round(restore_s, 3)
        result["checkpoint_bytes_per_workload"] = round(
            sum(p.stat().st_size for p in ckpt.glob("*.snap")) / n)

        result["parallel"] = parallel_spin(host, host.add_module(workloads.load("trap")), spin_iterations)
    return result


def markdown(r: dict, quick: bool) -> str:
    d, lat, par = r["deploy"], r["latency"], r["parallel"]
    lines = [
        "# Workload hosting benchmark" + (" (quick)" if quick else ""),
        "",
        f"{r['workloads']} `counter` workloads deployed one after another on one `Host` "
        f"(own Store, WASI, first boot each). Memory is this process's RSS growth divided by the count.",
        "",
        "| workloads | deploy total s | per workload ms (p50 / p99) | RSS per workload KiB | "
        "after one call KiB | linear memory KiB | compile ms | cached load + deploy ms |",
        "|---|---|---|---|---|---|---|---|",
        f"| {r['workloads']} | {d['total_s']} | {d['per_workload_ms']} ({d['p50_ms']} / {d['p99_ms']}) | "
        f"{d['rss_per_workload_kib']} | {d['rss_per_workload_after_a_call_kib']} | "
        f"{d['linear_memory_per_workload_kib']} | {r['compile_ms']} | {r['load_cached_and_deploy_ms']} |",
        "",
        "Call latency, measured in the same run (µs):",
        "",
        "| call | p50 | p99 | max |",
        "|---|---|---|---|",
    ]
    names = {
        "raw_noop_default_engine": "no-op export, wasmtime-py, default engine (reference)",
        "raw_get_host_engine": "counter `get`, wasmtime-py, host's engine (epoch checks on)",
        "host_call_get": "counter `get` through `Host.call`",
    }
    for key, label in names.items():
        s = lat[key]
        lines.append(f"| {label} | {s['p50_us']} | {s['p99_us']} | {s['max_us']} |")
    lines += [
        "",
        f"`Host.call` p50 is {lat['host_call_over_raw_noop_p50']}x the in-process no-op call.",
        "",
        f"Two CPU-bound calls (`spin({par['iterations']})`) into two workloads: "
        f"{par['sequential_s']} s one after the other, {par['two_threads_s']} s from two threads "
        f"(speed-up {par['speedup']}x on {os.cpu_count()} CPUs).",
        "",
        f"`checkpoint_all` of {r['workloads']} workloads: {r['checkpoint_all_s']} s "
        f"({r['checkpoint_bytes_per_workload']} bytes each on disk); `restore_all`: {r['restore_all_s']} s.",
        "",
        f"Epoch tick {EPOCH_TICK_S * 1e3:g} ms. Python {platform.python_version()}, {platform.machine()}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 workloads, fewer calls")
    parser.add_argument("--workloads", type=int, default=None, help="how many workloads to deploy")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    n = args.workloads or (100 if args.quick else 1000)
    calls = 2000 if args.quick else 20000
    spin = 100_000_000 if args.quick else 200_000_000
    with tempfile.TemporaryDirectory(prefix="bench-hosting-") as tmp:
        result = run(n, calls, spin, Path(tmp))
    name = "hosting-quick" if args.quick else "hosting"
    report = {"benchmark": "hosting", "quick": args.quick, "python": platform.python_version(),
              "machine": platform.machine(), "cpus": os.cpu_count(),
              "wasmtime": _wasmtime_version(), "results": result}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(result, args.quick))
    print(markdown(result, args.quick))
    return 0


def _wasmtime_version() -> str:
    from importlib.metadata import version

    return version("wasmtime")


if __name__ == "__main__":
    sys.exit(main())
