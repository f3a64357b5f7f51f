"""Shared helpers for the snapshot tests: engines and instantiation."""

from __future__ import annotations

import wasmtime
import pytest

import snapshot
from live_instance import Live


@pytest.fixture(scope="session")
def engine() -> wasmtime.Engine:
    return wasmtime.Engine()


@pytest.fixture
def live(engine):
    """Factory: live(wasm_or_wat) -> Live, preparing the module first."""

    def make(module, *, boot: bool = True) -> Live:
        wasm = wasmtime.wat2wasm(module) if isinstance(module, str) else module
        return Live(engine, snapshot.prepare(wasm), boot=boot)

    return make
