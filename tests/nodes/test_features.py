"""The wasm features a node advertises are what its engine validates, not a fixed list."""

from __future__ import annotations

import wasmtime

from nodes import Host, Limits
from nodes._engine import engine_settings, make_engine
from nodes._features import PROBES, engine_features


def test_every_probe_is_valid_wat_and_the_default_engine_accepts_the_standard_features():
    features = engine_features(wasmtime.Engine())
    # Standardised in WebAssembly 2.0 and on by default in wasmtime.
    assert {"multi-value", "bulk-memory", "reference-types", "simd", "sign-extension"} <= set(features)
    assert set(features) <= set(PROBES)


def test_a_feature_turned_off_in_the_engine_config_is_not_advertised():
    config = wasmtime.Config()
    config.wasm_simd = False
    config.wasm_relaxed_simd = False
    config.wasm_memory64 = False
    features = engine_features(wasmtime.Engine(config))
    assert "simd" not in features and "relaxed-simd" not in features and "memory64" not in features
    assert "bulk-memory" in features


def test_a_hosts_engine_is_probed_with_its_own_settings(tmp_path):
    engine = make_engine(engine_settings(Limits()))
    with Host(tmp_path) as host:
        assert engine_features(host.engine) == engine_features(engine)
