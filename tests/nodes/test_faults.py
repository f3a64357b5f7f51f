"""Crash-test hooks: settings are checked, a pause holds until released."""

import subprocess
import threading

import pytest
import trio

from nodes import ConfigError
from nodes import _faults as faults

from nodeproc import clean_env, migrate_node_command


@pytest.fixture
def phase(monkeypatch):
    """A registered phase and a fresh pause state; the environment is restored afterwards."""
    faults.register("test:phase")
    monkeypatch.setattr(faults, "_paused", False)
    monkeypatch.setattr(faults, "_release", None)
    for var in (faults.CRASH_ENV, faults.PAUSE_ENV, faults.PAUSE_S_ENV):
        monkeypatch.delenv(var, raising=False)
    return "test:phase"


def test_a_setting_that_names_no_phase_is_refused(phase, monkeypatch):
    monkeypatch.setenv(faults.CRASH_ENV, "target:chnuk")
    with pytest.raises(ConfigError, match="MIGRATE_NODE_CRASH_AT='target:chnuk' names no phase"):
        faults.check_environment()


@pytest.mark.parametrize("value", ["0", "-1", "soon", "4000"])
def test_a_pause_length_outside_0_to_3600_s_is_refused(phase, monkeypatch, value):
    monkeypatch.setenv(faults.PAUSE_S_ENV, value)
    with pytest.raises(ConfigError, match="MIGRATE_NODE_PAUSE_S"):
        faults.check_environment()


def test_an_unregistered_phase_in_the_code_is_a_bug(phase):
    with pytest.raises(ValueError, match="unregistered"):
        faults.point_blocking("nowhere:phase")


def test_a_blocking_pause_holds_until_released_and_only_once(phase, monkeypatch):
    monkeypatch.setenv(faults.PAUSE_ENV, phase)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (faults.point_blocking(phase), done.set()))
    worker.start()
    assert not done.wait(0.2)  # held
    faults.release()
    worker.join(5)
    assert done.is_set()
    faults.point_blocking(phase)  # the second arrival passes at once


async def test_an_async_pause_holds_only_its_task_until_released(phase, monkeypatch):
    monkeypatch.setenv(faults.PAUSE_ENV, phase)
    passed = trio.Event()

    async def reach() -> None:
        await faults.point(phase)
        passed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reach)
        await trio.sleep(0.2)  # the event loop runs on
        assert not passed.is_set()
        faults.release()
    assert passed.is_set()


def test_a_node_refuses_to_start_with_a_misspelt_crash_phase(tmp_path):
    done = subprocess.run([*migrate_node_command(), "serve", "--name", "edge-1", "--insecure", "--listen",
                           "127.0.0.1:0", "--data-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=60, env=clean_env({faults.CRASH_ENV: "source:frozn"}))
    assert done.returncode != 0
    assert "MIGRATE_NODE_CRASH_AT='source:frozn' names no phase" in done.stderr

