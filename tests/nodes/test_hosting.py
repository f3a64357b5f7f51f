"""Workload hosting: module cache, isolation, WASI sandbox, limits, checkpoints."""

from __future__ import annotations

import shutil
import struct
import threading
import time

import msgpack
import pytest
import wasmtime

import snapshot
import workloads
from nodes import (NOT_NOW, BadArguments, Host, HostClosed, InvalidModule, Limits, ResourceLimitExceeded, SnapshotFailed,
                   UnknownExport, UnknownModule, UnknownWorkload, UnsupportedImports, WorkloadExists, WorkloadExited,
                   WorkloadTimeout, WorkloadTrap)

FAST = Limits(call_timeout_s=0.5)
MiB = 2**20

# A probe of the WASI sandbox: fd 3 is the first preopened directory, if any.
WASI_PROBE = wasmtime.wat2wasm(r"""
(module
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $envsz (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $argsz (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 1000) "made-by-guest")
  (data (i32.const 1100) "../escaped")
  (func (export "prestat") (result i32) (call $prestat (i32.const 3) (i32.const 0)))
  ;; create the file named at [ptr, ptr+len) in fd 3 (oflags 1 = creat)
  (func (export "create") (param i32 i32) (result i32)
    (call $open (i32.const 3) (i32.const 0) (local.get 0) (local.get 1) (i32.const 1)
                (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 0)))
  (func (export "env_count") (result i32)
    (drop (call $envsz (i32.const 0) (i32.const 4))) (i32.load (i32.const 0)))
  (func (export "arg_count") (result i32)
    (drop (call $argsz (i32.const 0) (i32.const 4))) (i32.load (i32.const 0)))
  ;; one relative clock subscription (userdata 77) of `ns` nanoseconds at 64,
  ;; events at 128, nevents at 8; returns the errno
  (func (export "sleep") (param $ns i64) (result i32)
    (i64.store (i32.const 64) (i64.const 77))
    (i32.store8 (i32.const 72) (i32.const 0))
    (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (local.get $ns))
    (i64.store (i32.const 96) (i64.const 0))
    (i32.store16 (i32.const 104) (i32.const 0))
    (call $poll (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 8)))
  ;; one fd_write subscription (userdata 78) on stdout, or none at all
  (func (export "poll_stdout") (param $nsubs i32) (result i32)
    (i64.store (i32.const 64) (i64.const 78))
    (i32.store8 (i32.const 72) (i32.const 2))
    (i32.store (i32.const 80) (i32.const 1))
    (call $poll (i32.const 64) (i32.const 128) (local.get $nsubs) (i32.const 8)))
  (func (export "exit") (param i32) (call $exit (local.get 0)))
  (func $deep (export "deep") (param i32) (result i32)
    (i32.add (i32.const 1) (call $deep (local.get 0))))
)
""")


@pytest.fixture
def host(tmp_path):
    with Host(tmp_path / "node", limits=FAST) as h:
        yield h


def deploy(host: Host, name: str, **kwargs) -> str:
    return host.deploy(host.add_module(workloads.load(name)), **kwargs).workload_id


def put(host: Host, wid: str, key: bytes, value: bytes) -> int:
    """kv_put through the workload's own allocator (the wm.h convention)."""
    kptr = host.call(wid, "wm_alloc", [len(key)])
    vptr = host.call(wid, "wm_alloc", [len(value)])
    host.write_memory(wid, kptr, key)
    host.write_memory(wid, vptr, value)
    result = host.call(wid, "kv_put", [kptr, len(key), vptr, len(value)])
    host.call(wid, "wm_free", [kptr])
    host.call(wid, "wm_free", [vptr])
    return result


def get(host: Host, wid: str, key: bytes) -> bytes | None:
    kptr = host.call(wid, "wm_alloc", [len(key)])
    host.write_memory(wid, kptr, key)
    ptr = host.call(wid, "kv_get", [kptr, len(key)])
    host.call(wid, "wm_free", [kptr])
    if ptr == 0:
        return None
    (length,) = struct.unpack("<I", host.read_memory(wid, ptr, 4))
    return host.read_memory(wid, ptr + 4, length)


def state_of(host: Host, wid: str) -> tuple:
    snap = host.checkpoint(wid)
    return snap.module_sha256, [snap.memory_bytes(m.index) for m in snap.memories], snap.globals, snap.tables


# --- module cache ---------------------------------------------------------

def test_repeat_add_module_is_a_cache_hit_without_compiling(host):
    wasm = workloads.load("counter")
    sha = host.add_module(wasm)
    assert host.add_module(wasm) == sha
    stats = host.stats()
    assert (stats.compiles, stats.cache_hits, stats.modules) == (1, 1, 1)
    assert host.has_module(sha)
    assert host.module_bytes(sha) == wasm


def test_new_host_on_same_data_dir_deserializes_instead_of_compiling(tmp_path):
    wasm = workloads.load("counter")
    with Host(tmp_path, limits=FAST) as first:
        sha = first.add_module(wasm)
        assert first.stats().compiles == 1
    with Host(tmp_path, limits=FAST) as second:
        assert second.has_module(sha)
        wid = second.deploy(sha).workload_id
        assert second.call(wid, "incr", [5]) == 5
        assert second.add_module(wasm) == sha
        stats = second.stats()
        assert (stats.compiles, stats.deserializations, stats.cache_hits) == (0, 1, 1)


def test_cwasm_from_another_engine_config_is_recompiled_not_loaded(tmp_path):
    wasm = workloads.load("counter")
    with Host(tmp_path, limits=FAST) as first:
        sha = first.add_module(wasm)
    (cwasm,) = (tmp_path / "modules").glob(f"{sha}.*.cwasm")
    fuel = wasmtime.Config()
    fuel.consume_fuel = True
    fuel.epoch_interruption = True
    alien = wasmtime.Module(wasmtime.Engine(fuel), snapshot.prepare(wasm)).serialize()
    cwasm.write_bytes(alien)
    with Host(tmp_path, limits=FAST) as second:
        wid = second.deploy(sha).workload_id
        assert second.call(wid, "incr", [2]) == 2
        assert (second.stats().compiles, second.stats().deserializations) == (1, 0)
    assert cwasm.read_bytes() != alien  # overwritten with a usable one


def test_a_different_limits_engine_uses_its_own_cwasm(tmp_path):
    wasm = workloads.load("counter")
    with Host(tmp_path, limits=Limits(max_wasm_stack_bytes=256 * 1024)) as first:
        sha = first.add_module(wasm)
    with Host(tmp_path, limits=FAST) as second:
        second.deploy(sha)
        assert second.stats().compiles == 1
    assert len(list((tmp_path / "modules").glob(f"{sha}.*.cwasm"))) == 2


@pytest.mark.parametrize("sha", ["", "../../etc/passwd", "A" * 64, "0" * 63, None, 7])
def test_malformed_sha_is_unknown(host, sha):
    assert not host.has_module(sha)
    with pytest.raises(UnknownModule):
        host.deploy(sha)
    with pytest.raises(UnknownModule):
        host.module_bytes(sha)


def test_imports_other_than_wasi_are_refused_and_listed(host, tmp_path):
    wasm = wasmtime.wat2wasm("""
      (module
        (import "env" "host_secret" (func (result i32)))
        (import "env" "memory" (memory 1))
        (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))
    """)
    with pytest.raises(UnsupportedImports) as info:
        host.add_module(wasm)
    assert info.value.imports == ("env::host_secret (func)", "env::memory (memory)")
    assert "env::host_secret" in str(info.value)
    assert host.stats().modules == 0
    assert list((tmp_path / "node" / "modules").iterdir()) == []


def test_a_wasi_function_that_does_not_exist_is_refused(host):
    wasm = wasmtime.wat2wasm('(module (import "wasi_snapshot_preview1" "launch_missiles" (func)))')
    with pytest.raises(InvalidModule, match="launch_missiles"):
        host.add_module(wasm)


@pytest.mark.parametrize("wasm", [b"", b"not wasm at all", b"\0asm\x01\0\0\0\x99"])
def test_invalid_bytes_are_refused(host, wasm):
    with pytest.raises(InvalidModule):
        host.add_module(wasm)


# --- calls and isolation ---------------------------------------------------

def test_counter_calls_and_info(host):
    wid = deploy(host, "counter", workload_id="c1", app="shop")
    assert host.call(wid, "incr", [40]) == 40
    assert host.call(wid, "incr", [2]) == 42
    assert host.call(wid, "get", []) == 42
    info = host.info(wid)
    assert (info.workload_id, info.app, info.calls, info.traps, info.state) == ("c1", "shop", 3, 0, "ready")
    assert info.memory_bytes > 0
    assert [w.workload_id for w in host.workloads()] == ["c1"]


def test_infinite_loop_is_interrupted_and_the_workload_stays_usable(host):
    wid = deploy(host, "trap")
    with pytest.raises(WorkloadTimeout) as info:
        host.call(wid, "spin", [-1])
    assert info.value.trap_code == "interrupt"
    assert host.call(wid, "spin", [1000]) == 1000
    assert (host.info(wid).timeouts, host.info(wid).traps, host.info(wid).calls) == (1, 0, 2)


def test_first_boot_runs_within_the_budget(host):
    wasm = wasmtime.wat2wasm('(module (func $s (loop $l (br $l))) (start $s) (memory (export "memory") 1))')
    with pytest.raises(WorkloadTimeout):
        host.deploy(host.add_module(wasm), workload_id="looper")
    assert host.workloads() == []
    host.deploy(host.add_module(workloads.load("counter")), workload_id="looper")  # the id is free again


def test_a_trap_is_typed_and_neighbours_are_unaffected(host):
    counter = deploy(host, "counter")
    host.call(counter, "incr", [7])
    bomb = deploy(host, "trap")
    with pytest.raises(WorkloadTrap) as info:
        host.call(bomb, "boom", [])
    assert info.value.trap_code == "unreachable"
    assert info.value.workload_id == bomb
    assert host.call(bomb, "hog_mb", []) == 0
    assert host.call(counter, "incr", [1]) == 8
    assert host.info(bomb).traps == 1


def test_stack_overflow_is_a_trap(tmp_path):
    with Host(tmp_path, limits=FAST) as host:
        wid = host.deploy(host.add_module(WASI_PROBE)).workload_id
        with pytest.raises(WorkloadTrap) as info:
            host.call(wid, "deep", [0])
        assert info.value.trap_code == "stack_overflow"
        assert host.call(wid, "arg_count", []) == 1


def test_memory_hog_is_capped_and_neighbours_are_unaffected(host):
    counter = deploy(host, "counter")
    hog = deploy(host, "trap", memory_limit_bytes=8 * MiB)
    assert host.call(hog, "hog", [4]) == 1
    assert host.call(hog, "hog", [64]) == 0  # malloc fails: memory.grow returned -1
    assert host.call(hog, "hog_mb", []) == 4
    assert host.info(hog).memory_bytes <= 8 * MiB
    assert host.call(counter, "incr", [3]) == 3


def test_a_runaway_call_does_not_block_other_workloads(tmp_path):
    with Host(tmp_path, limits=Limits(call_timeout_s=30.0)) as host:
        spinner = deploy(host, "trap")
        counter = deploy(host, "counter")
        outcome = []

        def spin():
            try:
                host.call(spinner, "spin", [-1])
            except Exception as exc:  # noqa: BLE001 - the outcome is asserted below
                outcome.append(exc)

        thread = threading.Thread(target=spin)
        thread.start()
        while host.info(spinner).state != "busy":
            pass
        assert [host.call(counter, "incr", [1]) for _ in range(50)] == list(range(1, 51))
        assert host.info(spinner).state == "busy"  # the neighbour did not wait for it
        # Bring the spinner's 30 s deadline forward: its deadline callback counts one tick per call and
        # asks for the next one a tick later, so each tick must come after the callback has run.
        give_up = time.monotonic() + 120
        while thread.is_alive() and time.monotonic() < give_up:
            host.engine.increment_epoch()
            time.sleep(0.0001)
        thread.join(timeout=5)
        assert not thread.is_alive()
        assert isinstance(outcome[0], WorkloadTimeout)


def test_proc_exit_is_typed(tmp_path):
    with Host(tmp_path, limits=FAST) as host:
        wid = host.deploy(host.add_module(WASI_PROBE)).workload_id
        with pytest.raises(WorkloadExited) as info:
            host.call(wid, "exit", [3])
        assert info.value.exit_code == 3


@pytest.mark.parametrize("export,args,error", [
    ("nope", [], UnknownExport),
    ("memory", [], UnknownExport),
    ("_initialize", [], UnknownExport),
    ("__wm_sha256_0", [], UnknownExport),
    ("incr", [], BadArguments),
    ("incr", [1, 2], BadArguments),
    ("incr", [1.5], BadArguments),
    ("incr", [True], BadArguments),
    ("incr", ["1"], BadArguments),
    ("incr", [2**64], BadArguments),
    ("incr", [-(2**63) - 1], BadArguments),
    ("incr", "1", BadArguments),
    (7, [], UnknownExport),
])
def test_bad_calls_are_refused_before_running(host, export, args, error):
    wid = deploy(host, "counter")
    with pytest.raises(error):
        host.call(wid, export, args)
    assert host.info(wid).calls == 0


def test_unsigned_integers_are_passed_as_their_signed_bits(host):
    wid = deploy(host, "counter")
    assert host.call(wid, "incr", [2**64 - 1]) == -1


def test_ids_are_checked_and_unique(host):
    sha = host.add_module(workloads.load("counter"))
    for bad in ["../escape", "", "a/b", ".hidden", "x" * 129, 5]:
        with pytest.raises(BadArguments):
            host.deploy(sha, workload_id=bad)
    with pytest.raises(BadArguments):
        host.deploy(sha, app="../app")
    host.deploy(sha, workload_id="same")
    with pytest.raises(WorkloadExists):
        host.deploy(sha, workload_id="same")
    for call in (lambda: host.call("other", "get", []), lambda: host.output("other"),
                 lambda: host.checkpoint("other"), lambda: host.remove("other")):
        with pytest.raises(UnknownWorkload):
            call()


def test_remove_frees_the_workload_and_its_files(host, tmp_path):
    wid = deploy(host, "clockrand")
    host.call(wid, "say", [1])
    directory = tmp_path / "node" / "workloads" / wid
    assert directory.is_dir()
    host.remove(wid)
    assert not directory.exists()
    with pytest.raises(UnknownWorkload):
        host.call(wid, "say", [1])
    assert host.stats().workloads == 0


def test_rename_keeps_state_and_output_under_the_new_id(host, tmp_path):
    wid = deploy(host, "clockrand")
    other = deploy(host, "counter")
    host.call(wid, "sample", [])
    written = host.call(wid, "say", [3])
    before = state_of(host, wid)
    with pytest.raises(WorkloadExists):
        host.hold(wid).rename(other)
    with pytest.raises(BadArguments):
        host.hold(wid).rename("../escape")
    with pytest.raises(UnknownWorkload):
        host.hold("nobody").rename("somebody")
    host.hold(wid).rename("renamed")
    assert not (tmp_path / "node" / "workloads" / wid).exists()
    assert state_of(host, "renamed") == before
    assert host.info("renamed").workload_id == "renamed"
    assert len(host.output("renamed")[0]) == written
    host.call("renamed", "say", [4])  # output goes on into the moved file
    assert host.output("renamed")[0].count(b"clockrand say") == 2
    with pytest.raises(UnknownWorkload):
        host.call(wid, "say", [1])
    deploy(host, "counter", workload_id=wid)  # the old id is free again
    assert host.stats().workloads == 3


def test_read_and_write_memory(host):
    wid = deploy(host, "kvstore")
    assert put(host, wid, b"alpha", b"one") == 1
    assert get(host, wid, b"alpha") == b"one"
    assert get(host, wid, b"beta") is None
    size = host.info(wid).memory_bytes
    assert host.read_memory(wid, size - 4, 4) == b"\0\0\0\0"
    for offset, length in [(size - 3, 4), (size, 1), (-1, 1), (0, -1)]:
        with pytest.raises(BadArguments):
            host.read_memory(wid, offset, length)
    with pytest.raises(BadArguments):
        host.write_memory(wid, size - 1, b"ab")
    with pytest.raises(BadArguments):
        host.write_memory(wid, 0, "text")


# --- WASI sandbox ------------------------------------------------------

def test_stdout_is_captured_per_workload(host):
    a = deploy(host, "clockrand")
    b = deploy(host, "clockrand")
    host.call(a, "sample", [])
    written = host.call(a, "say", [7])
    out, err = host.output(a)
    assert out.startswith(b"clockrand say 7 samples=1 state=") and len(out) == written
    assert err == b""
    assert host.output(b) == (b"", b"")


def test_output_is_capped(tmp_path):
    with Host(tmp_path, limits=Limits(call_timeout_s=0.5, output_bytes=100)) as host:
        wid = deploy(host, "clockrand")
        for n in range(10):
            host.call(wid, "say", [n])
        out, _ = host.output(wid)
        assert len(out) == 100 and out.startswith(b"clockrand say 0 ")


def test_output_read_while_remove_deletes_the_files_is_unknown_workload(tmp_path):
    """Found by the node fuzz campaign: ``output`` racing ``remove`` raised FileNotFoundError (answered ``internal``).

    ``remove`` deletes the output files after it released the workload; an
    ``output`` that found the workload just before reads them then.
    """
    with Host(tmp_path, limits=FAST) as host:
        wid = deploy(host, "clockrand")
        host.call(wid, "say", [1])
        shutil.rmtree(tmp_path / "workloads" / wid)  # what remove does while such an output reads
        with pytest.raises(UnknownWorkload, match=wid):
            host.output(wid)


def test_no_filesystem_without_a_grant(tmp_path):
    with Host(tmp_path / "node", limits=FAST) as host:
        wid = host.deploy(host.add_module(WASI_PROBE)).workload_id
        assert host.call(wid, "prestat", []) == 8  # EBADF: there is no fd 3
        assert host.call(wid, "create", [1000, 13]) == 8
    assert not list(tmp_path.rglob("made-by-guest"))


def test_a_granted_directory_is_all_the_guest_reaches(tmp_path):
    granted = tmp_path / "granted"
    granted.mkdir()
    with Host(tmp_path / "node", limits=FAST) as host:
        wid = host.deploy(host.add_module(WASI_PROBE), preopen={"/data": granted}).workload_id
        assert host.call(wid, "prestat", []) == 0
        assert host.call(wid, "create", [1000, 13]) == 0
        assert host.call(wid, "create", [1100, 10]) in (63, 76)  # EPERM, ENOTCAPABLE: no way out
    assert (granted / "made-by-guest").exists()
    assert not (tmp_path / "escaped").exists()


def test_missing_preopen_directory_is_refused(host, tmp_path):
    with pytest.raises(BadArguments):
        host.deploy(host.add_module(WASI_PROBE), preopen={"/data": tmp_path / "absent"})


def test_args_and_env_are_exactly_what_was_given(host, monkeypatch):
    monkeypatch.setenv("NODE_SECRET", "do-not-leak")
    sha = host.add_module(WASI_PROBE)
    bare = host.deploy(sha).workload_id
    assert host.call(bare, "env_count", []) == 0
    assert host.call(bare, "arg_count", []) == 1
    given = host.deploy(sha, args=["a", "b"], env={"MODE": "test"}).workload_id
    assert host.call(given, "env_count", []) == 1
    assert host.call(given, "arg_count", []) == 3
    for env in ({"A=B": "x"}, {"A": "x\0y"}, {"": "x"}):
        with pytest.raises(BadArguments):
            host.deploy(sha, env=env)


def test_a_short_sleep_works(host):
    wid = host.deploy(host.add_module(WASI_PROBE)).workload_id
    assert host.call(wid, "sleep", [1_000_000]) == 0
    assert struct.unpack("<I", host.read_memory(wid, 8, 4)) == (1,)  # one event
    userdata, errno, kind = struct.unpack("<QHB", host.read_memory(wid, 128, 11))
    assert (userdata, errno, kind) == (77, 0, 0)


def test_polling_stdout_is_ready_at_once_and_empty_polls_are_refused(host):
    wid = host.deploy(host.add_module(WASI_PROBE)).workload_id
    assert host.call(wid, "poll_stdout", [1]) == 0
    assert struct.unpack("<I", host.read_memory(wid, 8, 4)) == (1,)
    userdata, errno, kind = struct.unpack("<QHB", host.read_memory(wid, 128, 11))
    assert (userdata, errno, kind) == (78, 0, 2)  # fd_write ready
    assert host.call(wid, "poll_stdout", [0]) == 28  # EINVAL
    assert host.call(wid, "poll_stdout", [100_000_000]) == 21  # EFAULT: past the end of memory


def test_a_sleep_past_the_budget_times_out_instead_of_holding_the_thread(host):
    wid = host.deploy(host.add_module(WASI_PROBE)).workload_id
    outcome = []

    def sleep_an_hour():
        try:
            host.call(wid, "sleep", [3600 * 10**9])
        except Exception as exc:  # noqa: BLE001 - the outcome is asserted below
            outcome.append(exc)

    thread = threading.Thread(target=sleep_an_hour, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the guest's sleep held the thread"
    assert isinstance(outcome[0], WorkloadTimeout)
    assert host.call(wid, "arg_count", []) == 1


# --- limits ------------------------------------------------------------

def test_max_workloads_per_host(tmp_path):
    with Host(tmp_path, limits=Limits(max_workloads=2)) as host:
        sha = host.add_module(workloads.load("counter"))
        host.deploy(sha, app="a")
        last = host.deploy(sha, app="b").workload_id
        with pytest.raises(ResourceLimitExceeded) as info:
            host.deploy(sha, app="c")
        assert (info.value.limit, info.value.allowed) == ("max_workloads", 2)
        host.remove(last)
        host.deploy(sha, app="c")


def test_max_workloads_per_app(tmp_path):
    with Host(tmp_path, limits=Limits(max_workloads_per_app=1)) as host:
        sha = host.add_module(workloads.load("counter"))
        host.deploy(sha, app="a")
        with pytest.raises(ResourceLimitExceeded) as info:
            host.deploy(sha, app="a")
        assert info.value.limit == "max_workloads_per_app"
        host.deploy(sha, app="b")


def test_app_memory_budget_reserves_each_workloads_cap(tmp_path):
    with Host(tmp_path, limits=Limits(memory_bytes=64 * MiB, app_memory_bytes=100 * MiB)) as host:
        sha = host.add_module(workloads.load("counter"))
        host.deploy(sha, app="a")  # reserves 64 MiB
        with pytest.raises(ResourceLimitExceeded) as info:
            host.deploy(sha, app="a")
        assert info.value.limit == "app_memory_bytes"
        host.deploy(sha, app="a", memory_limit_bytes=36 * MiB)
        host.deploy(sha, app="b")
        with pytest.raises(ResourceLimitExceeded):
            host.deploy(sha, app="b", memory_limit_bytes=65 * MiB)


def test_concurrent_deploys_never_exceed_the_limit(tmp_path):
    with Host(tmp_path, limits=Limits(max_workloads=5)) as host:
        sha = host.add_module(workloads.load("counter"))
        refused = []

        def deploy_one():
            try:
                host.deploy(sha)
            except ResourceLimitExceeded as exc:
                refused.append(exc)

        threads = [threading.Thread(target=deploy_one) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (host.stats().workloads, len(refused)) == (5, 7)


def test_a_module_needing_more_memory_than_the_cap_is_refused(host):
    sha = host.add_module(wasmtime.wat2wasm('(module (memory (export "memory") 32))'))  # 2 MiB
    with pytest.raises(ResourceLimitExceeded) as info:
        host.deploy(sha, memory_limit_bytes=1 * MiB)
    assert info.value.limit == "memory_bytes"
    host.deploy(sha, memory_limit_bytes=2 * MiB)
    with pytest.raises(ResourceLimitExceeded):
        host.deploy(sha, memory_limit_bytes=FAST.memory_bytes + 1)


def test_invalid_limits_are_refused():
    for bad in ({"memory_bytes": 0}, {"call_timeout_s": -1.0}, {"max_workloads": 0},
                {"app_memory_bytes": 0}, {"output_bytes": -1}):
        with pytest.raises(ValueError):
            Limits(**bad)


# --- checkpoints ------------------------------------------------------------

def test_checkpoint_and_restore_into_a_new_workload(host):
    src = deploy(host, "kvstore")
    put(host, src, b"k", b"v" * 1000)
    snap = host.checkpoint(src)
    sha = host.info(src).module_sha256
    copy = host.restore(sha, snap, workload_id="copy", calls=99)
    assert copy.calls == 99
    assert state_of(host, "copy") == state_of(host, src)
    assert get(host, "copy", b"k") == b"v" * 1000


def test_restore_over_the_memory_cap_is_refused(host):
    src = deploy(host, "trap")
    host.call(src, "hog", [8])
    snap = host.checkpoint(src)
    with pytest.raises(ResourceLimitExceeded):
        host.restore(host.info(src).module_sha256, snap, workload_id="small", memory_limit_bytes=4 * MiB)
    assert [w.workload_id for w in host.workloads()] == [src]


def test_restore_from_another_module_is_refused(host):
    snap = host.checkpoint(deploy(host, "kvstore"))
    with pytest.raises(SnapshotFailed) as info:
        host.restore(host.add_module(workloads.load("counter")), snap, workload_id="wrong")
    assert isinstance(info.value.__cause__, snapshot.SnapshotError)
    with pytest.raises(BadArguments):
        host.restore(host.add_module(workloads.load("counter")), b"bytes", workload_id="wrong")


def test_checkpoint_all_then_restore_all_gives_exact_state(tmp_path):
    node, ckpt = tmp_path / "node", tmp_path / "ckpt"
    with Host(node, limits=FAST) as host:
        kv = deploy(host, "kvstore", workload_id="kv", app="shop", env={"MODE": "x"})
        for i in range(200):
            put(host, kv, b"key%d" % i, b"value%d" % i * (i % 7 + 1))
        counter = deploy(host, "counter", workload_id="ctr")
        host.call(counter, "incr", [12345])
        for i in range(100):
            host.call(counter, "add_and_get_log", [i])
        talker = deploy(host, "clockrand", workload_id="talker")
        host.call(talker, "sample", [])
        host.call(talker, "say", [1])
        before = {wid: (state_of(host, wid), host.info(wid).calls) for wid in (kv, counter, talker)}
        report = host.checkpoint_all(ckpt)
        assert sorted(report.done) == ["ctr", "kv", "talker"] and report.failed == ()
    with Host(node, limits=FAST) as host:
        report = host.restore_all(ckpt)
        assert sorted(report.done) == ["ctr", "kv", "talker"] and report.failed == ()
        after = {wid: (state_of(host, wid), host.info(wid).calls) for wid in before}
        assert after == before
        assert host.info("kv").app == "shop"
        assert get(host, "kv", b"key199") == b"value199" * 4
        assert host.call("ctr", "incr", [1]) == 12346
        assert host.output("talker")[0].startswith(b"clockrand say 1 ")  # output kept
        assert host.stats().compiles == 0


def test_checkpoint_all_replaces_the_previous_generation(host, tmp_path):
    ckpt = tmp_path / "ckpt"
    a = deploy(host, "counter", workload_id="a")
    deploy(host, "counter", workload_id="b")
    host.checkpoint_all(ckpt)
    host.remove("b")
    host.call(a, "incr", [9])
    host.checkpoint_all(ckpt)
    manifest = msgpack.unpackb((ckpt / "manifest.msgpack").read_bytes())
    assert manifest["generation"] == 2
    assert [e["id"] for e in manifest["workloads"]] == ["a"]
    assert sorted(p.name for p in ckpt.iterdir()) == ["a.2.snap", "manifest.msgpack"]
    host.remove("a")
    assert host.restore_all(ckpt).done == ("a",)
    assert host.call("a", "get", []) == 9


def test_restore_all_reports_what_it_could_not_restore(host, tmp_path):
    ckpt = tmp_path / "ckpt"
    deploy(host, "counter", workload_id="good")
    deploy(host, "counter", workload_id="bad")
    host.checkpoint_all(ckpt)
    (ckpt / "bad.1.snap").write_bytes(b"garbage")
    host.remove("good")
    host.remove("bad")
    report = host.restore_all(ckpt)
    assert report.done == ("good",)
    assert [wid for wid, _ in report.failed] == ["bad"]


def test_restore_all_of_an_empty_directory_restores_nothing(host, tmp_path):
    assert host.restore_all(tmp_path).done == ()
    (tmp_path / "manifest.msgpack").write_bytes(b"\xc1")
    with pytest.raises(SnapshotFailed):
        host.restore_all(tmp_path)


def test_encrypted_checkpoint_needs_the_key(host, tmp_path):
    key = snapshot.generate_key()
    deploy(host, "counter", workload_id="secret")
    host.checkpoint_all(tmp_path, key=key)
    host.remove("secret")
    with pytest.raises(SnapshotFailed, match="needs the node's data key"):  # the manifest is sealed too
        host.restore_all(tmp_path)
    assert host.workloads() == []
    assert host.restore_all(tmp_path, key=key).done == ("secret",)


# --- lifecycle ------------------------------------------------------------

def test_close_stops_the_ticker_and_refuses_further_use(tmp_path):
    host = Host(tmp_path, limits=FAST)
    wid = deploy(host, "counter")
    host.close()
    host.close()  # idempotent
    assert not [t for t in threading.enumerate() if t.name == "wasm-epoch-ticker"]
    for call in (lambda: host.call(wid, "get", []), lambda: host.add_module(b""),
                 lambda: host.deploy("0" * 64), lambda: host.remove(wid)):
        with pytest.raises(HostClosed):
            call()


def test_an_engine_without_epoch_interruption_is_refused(tmp_path):
    with pytest.raises(ValueError, match="epoch_interruption"):
        Host(tmp_path, engine=wasmtime.Engine())


def test_a_caller_engine_with_epoch_interruption_works(tmp_path):
    config = wasmtime.Config()
    config.epoch_interruption = True
    with Host(tmp_path, limits=FAST, engine=wasmtime.Engine(config), engine_fingerprint="mine") as host:
        wid = deploy(host, "trap")
        with pytest.raises(WorkloadTimeout):
            host.call(wid, "spin", [-1])


def test_pause_holds_guest_calls_until_resume_and_remove_releases_them(tmp_path):
    """A migration's final round: calls wait out a pause; captures do not."""
    import threading

    with Host(tmp_path / "h") as host:
        sha = host.add_module(workloads.load("counter"))
        host.deploy(sha, workload_id="w")
        host.hold("w").pause()
        results = []
        t = threading.Thread(target=lambda: results.append(host.call("w", "incr", [1])))
        t.start()
        t.join(0.2)
        assert t.is_alive() and results == []          # held
        host.checkpoint("w")                            # captures still run
        host.hold("w").resume()
        t.join(5)
        assert results == [1]
        host.hold("w").pause()
        errors = []

        def blocked():
            try:
                host.call("w", "incr", [1])
            except UnknownWorkload as exc:
                errors.append(exc)

        t = threading.Thread(target=blocked)
        t.start()
        t.join(0.2)
        host.remove("w")                                # the workload moved away
        t.join(5)
        assert len(errors) == 1                         # the held call never ran here


# --- calls run on the calling thread (Host.call_now) ----------------------------------------------


def test_a_provably_short_export_runs_now_and_counts_as_a_call(host):
    wid = deploy(host, "counter")
    assert host.info(wid).calls == 0
    assert host.call_now(wid, "incr", [40]) == 40
    assert host.call_now(wid, "get") == 40
    assert host.call(wid, "get") == 40
    assert host.info(wid).calls == 3


def test_an_export_without_a_bound_is_not_run_now(host):
    wid = deploy(host, "trap")
    assert host.call_now(wid, "spin", [3]) is NOT_NOW  # a loop
    assert host.info(wid).calls == 0
    assert host.call(wid, "spin", [3]) == 3


def test_a_short_call_that_traps_raises_as_call_does(host):
    wid = deploy(host, "trap")
    with pytest.raises(WorkloadTrap):
        host.call_now(wid, "boom")
    assert (host.info(wid).calls, host.info(wid).traps) == (1, 1)
    with pytest.raises(BadArguments):
        host.call_now(wid, "boom", [1])
    with pytest.raises(UnknownWorkload):
        host.call_now("nobody", "boom")


def test_a_workload_in_use_paused_recording_or_hibernated_is_not_run_now(host):
    wid = deploy(host, "counter")
    host.call(wid, "incr", [1])
    taken, release = threading.Event(), threading.Event()

    def busy() -> None:  # another thread holds the workload's lock (as a worker running a call would)
        with host._using(host._registry.get(wid)):
            taken.set()
            release.wait()

    thread = threading.Thread(target=busy)
    thread.start()
    taken.wait()
    try:
        assert host.call_now(wid, "incr", [1]) is NOT_NOW
    finally:
        release.set()
        thread.join()
    held = host.hold(wid)
    held.pause()
    assert host.call_now(wid, "incr", [1]) is NOT_NOW
    held.resume()
    held.set_replay_mode("record")
    assert host.call_now(wid, "incr", [1]) is NOT_NOW
    held.set_replay_mode("off")
    host.hibernate(wid)
    assert host.call_now(wid, "incr", [1]) is NOT_NOW
    assert host.info(wid).state == "hibernated"  # not woken
    assert host.call(wid, "get") == 1  # nothing above ran
    assert host.call_now(wid, "incr", [1]) == 2
