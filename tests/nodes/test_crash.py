"""Crash points: settings are checked, a crash ends the process, a pause holds until released."""

import subprocess
import sys
import threading

import pytest
import trio

from nodes import ConfigError
from nodes import _crash as crash

from nodeproc import clean_env, migrate_node_command

PHASE = "checkpoint:write"


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """A fresh pause state, only the node's own phases and no crash-test settings; all restored afterwards."""
    monkeypatch.setattr(crash, "_phases", set(crash.NODE_PHASES))
    monkeypatch.setattr(crash, "_paused", False)
    monkeypatch.setattr(crash, "_release", None)
    for var in (crash.ENV, crash.PAUSE_ENV, crash.PAUSE_S_ENV):
        monkeypatch.delenv(var, raising=False)


def test_a_setting_that_names_no_phase_is_refused(monkeypatch):
    monkeypatch.setenv(crash.ENV, "target:chnuk")
    with pytest.raises(ConfigError, match="MIGRATE_NODE_CRASH_AT='target:chnuk' names no phase"):
        crash.check_environment()


@pytest.mark.parametrize("value", ["0", "-1", "soon", "4000"])
def test_a_pause_length_outside_0_to_3600_s_is_refused(monkeypatch, value):
    monkeypatch.setenv(crash.PAUSE_S_ENV, value)
    with pytest.raises(ConfigError, match="MIGRATE_NODE_PAUSE_S"):
        crash.check_environment()


def test_an_undocumented_phase_in_the_code_is_a_bug():
    with pytest.raises(ValueError, match="unknown crash phase"):
        crash.crash_point("nowhere:phase")


def test_a_plugin_phase_is_known_once_allowed(monkeypatch):
    monkeypatch.setenv(crash.ENV, "plugin:step")
    with pytest.raises(ValueError, match="unknown crash phase"):
        crash.crash_point("plugin:step")
    with pytest.raises(ConfigError, match="names no phase"):
        crash.check_environment()
    crash.allow(["plugin:step"])
    monkeypatch.setenv(crash.ENV, "")
    crash.check_environment()
    crash.crash_point("plugin:step")  # known now, and not the phase to crash at


def test_a_crash_point_ends_the_process_with_status_137():
    code = f"from nodes import _crash; _crash.crash_point({PHASE!r}); print('survived')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=clean_env({crash.ENV: PHASE}))
    assert done.returncode == crash.CRASH_STATUS and "survived" not in done.stdout


def test_a_blocking_pause_holds_until_released_and_only_once(monkeypatch):
    monkeypatch.setenv(crash.PAUSE_ENV, PHASE)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (crash.crash_point(PHASE), done.set()))
    worker.start()
    assert not done.wait(0.2)  # held
    crash.release()
    worker.join(5)
    assert done.is_set()
    crash.crash_point(PHASE)  # the second arrival passes at once


async def test_an_async_pause_holds_only_its_task_until_released(monkeypatch):
    monkeypatch.setenv(crash.PAUSE_ENV, PHASE)
    passed = trio.Event()

    async def reach() -> None:
        await crash.crash_point_async(PHASE)
        passed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reach)
        await trio.sleep(0.2)  # the event loop runs on
        assert not passed.is_set()
        crash.release()
    assert passed.is_set()


def test_a_node_refuses_to_start_with_a_misspelt_crash_phase(tmp_path):
    done = subprocess.run([*migrate_node_command(), "serve", "--name", "edge-1", "--insecure", "--listen",
                           "127.0.0.1:0", "--data-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=60, env=clean_env({crash.ENV: "source:frozn"}))
    assert done.returncode != 0
    assert "MIGRATE_NODE_CRASH_AT='source:frozn' names no phase" in done.stderr
