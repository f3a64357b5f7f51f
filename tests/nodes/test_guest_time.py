"""Stopping guest calls: a cancelled token ends a running call within about a tick, or before it starts."""

import threading

import pytest
import wasmtime

from nodes import CallCancelled, CancelToken, DeadlineExceeded, Host
from nodes._limits import Limits

WAT = """(module (global $n (mut i32) (i32.const 0))
  (func (export "spin") (loop (br 0)))
  (func (export "incr") (result i32) (global.set $n (i32.add (global.get $n) (i32.const 1))) (global.get $n)))"""


@pytest.fixture
def spinner(tmp_path):
    with Host(tmp_path / "node", limits=Limits(call_timeout_s=0.3)) as host:
        yield host, host.deploy(host.add_module(wasmtime.wat2wasm(WAT))).workload_id


def test_a_running_call_stops_when_its_token_is_cancelled_and_the_workload_stays_usable(spinner):
    host, wid = spinner
    token = CancelToken()
    threading.Timer(0.05, token.cancel).start()
    with pytest.raises(CallCancelled) as raised:
        host.call(wid, "spin", cancel=token)
    assert raised.value.started and raised.value.trap_code == "cancelled"
    assert host.call(wid, "incr") == 1
    info = host.info(wid)
    assert (info.traps, info.timeouts) == (1, 0)


def test_a_cancelled_token_keeps_the_call_from_starting(spinner):
    host, wid = spinner
    token = CancelToken()
    token.cancel()
    with pytest.raises(CallCancelled) as raised:
        host.call(wid, "incr", cancel=token)
    assert not raised.value.started
    assert host.call(wid, "incr") == 1  # it never ran


def test_the_deadline_still_stops_a_call_nobody_cancels(spinner):
    host, wid = spinner
    with pytest.raises(DeadlineExceeded):
        host.call(wid, "spin", cancel=CancelToken())
    with pytest.raises(DeadlineExceeded):
        host.call(wid, "spin")
    assert host.call(wid, "incr") == 1
