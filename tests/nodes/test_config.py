"""Node settings: flags over environment over config file over defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nodes import Address, ConfigError, NodeConfig, parse_address, resolve_config
from nodes._config import SETTINGS


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults():
    config = resolve_config({"name": "n1"}, env={})
    assert config == NodeConfig(name="n1")
    assert config.role == "edge" and config.listen == Address("127.0.0.1", 7400)
    assert config.tls_path == config.data_path / "tls"
    assert config.limits().call_timeout_s == config.call_timeout_s == 30.0
    assert config.call_workers == max(4, 2 * (os.cpu_count() or 1))


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path):
    file = write(tmp_path / "node.toml", """
        name = "from-file"
        role = "cloud"
        listen = "127.0.0.1:7000"
        call_timeout_s = 3
        max_in_flight = 5
        join = ["10.0.0.1:7400", "10.0.0.2:7400"]
    """)
    env = {"MIGRATE_NODE_ROLE": "client", "MIGRATE_NODE_LISTEN": "127.0.0.1:7001",
           "MIGRATE_NODE_JOIN": "10.0.0.3:1,10.0.0.4:2"}
    flags = {"listen": parse_address("127.0.0.1:7002"), "role": None, "join": None}
    config = resolve_config(flags, env, file)
    assert config.name == "from-file"                       # file over default
    assert config.role == "client"                          # environment over file
    assert config.listen == Address("127.0.0.1", 7002)      # flag over environment
    assert config.join == (Address("10.0.0.3", 1), Address("10.0.0.4", 2))
    assert config.call_timeout_s == 3.0 and config.max_in_flight == 5
    assert resolve_config({"join": [Address("h", 1)]}, env, file).join == (Address("h", 1),)


def test_config_file_named_by_environment_and_relative_paths(tmp_path):
    file = write(tmp_path / "node.toml", 'name = "n"\ndata_dir = "state"\ntls_dir = "~/tls"\n')
    config = resolve_config({}, {"MIGRATE_NODE_CONFIG": str(file)})
    assert config.data_dir == tmp_path / "state"
    assert config.tls_dir == Path("~/tls").expanduser()


def test_discard_state_is_off_unless_a_flag_the_environment_or_the_file_turns_it_on(tmp_path):
    assert not resolve_config({"name": "n"}, env={}).discard_state
    assert resolve_config({"name": "n", "discard_state": True}, env={}).discard_state
    assert resolve_config({"name": "n"}, env={"MIGRATE_NODE_DISCARD_STATE": "yes"}).discard_state
    file = write(tmp_path / "node.toml", 'name = "n"\ndiscard_state = true\n')
    assert resolve_config({}, env={}, config_file=file).discard_state
    with pytest.raises(ConfigError, match="DISCARD_STATE"):
        resolve_config({"name": "n"}, env={"MIGRATE_NODE_DISCARD_STATE": "perhaps"})


def test_every_setting_has_a_flag_an_environment_variable_and_a_key():
    names = {s.name for s in SETTINGS}
    assert names == set(NodeConfig.__dataclass_fields__)
    assert {s.env for s in SETTINGS} == {"MIGRATE_NODE_" + n.upper() for n in names}


@pytest.mark.parametrize("text, message", [
    ('name = "n"\ncolour = "red"', "unknown setting 'colour'"),
    ('name = "n"\nmax_in_flight = "many"', "not an integer"),
    ('name = "n"\ninsecure = "yes"', "true or false"),
    ('name = "n"\njoin = "h:1"', "must be a list"),
    ('name = "n"\nlisten = 7400', "must be a string"),
    ("name = ", "not valid TOML"),
])
def test_bad_config_files_are_refused_with_the_reason(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config({}, {}, write(tmp_path / "node.toml", text))


@pytest.mark.parametrize("env, message", [
    ({"MIGRATE_NODE_NAME": "n", "MIGRATE_NODE_LISTEN": "nowhere"}, "MIGRATE_NODE_LISTEN: 'nowhere' is not HOST:PORT"),
    ({"MIGRATE_NODE_NAME": "n", "MIGRATE_NODE_INSECURE": "perhaps"}, "not a boolean"),
    ({"MIGRATE_NODE_NAME": "n", "MIGRATE_NODE_ROLE": "mainframe"}, "role must be one of"),
    ({"MIGRATE_NODE_NAME": "n", "MIGRATE_NODE_CALL_TIMEOUT_S": "-1"}, "must be positive"),
    ({"MIGRATE_NODE_NAME": "n", "MIGRATE_NODE_CALL_WORKERS": "0"}, "must be positive"),
    ({"MIGRATE_NODE_NAME": "n", "MIGRATE_NODE_CALL_WORKERS": "2.5"}, "not an integer"),
    ({"MIGRATE_NODE_NAME": "a b"}, "node name"),
    ({}, "needs a name"),
])
def test_bad_settings_are_refused_with_the_reason(env, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config({}, env)


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        resolve_config({"name": "n"}, {}, tmp_path / "absent.toml")


@pytest.mark.parametrize("listen, join, allowed", [
    ("127.0.0.1:1", [], True),
    ("[::1]:1", ["localhost:2"], True),
    ("0.0.0.0:1", [], False),
    ("192.168.1.5:1", [], False),
    ("127.0.0.1:1", ["10.0.0.2:7400"], False),
])
def test_insecure_only_on_loopback(listen, join, allowed):
    flags = {"name": "n", "insecure": True, "listen": parse_address(listen),
             "join": [parse_address(j) for j in join]}
    if allowed:
        assert resolve_config(flags, {}).insecure
    else:
        with pytest.raises(ConfigError, match="only on loopback"):
            resolve_config(flags, {})


def test_the_inbound_budget_must_hold_the_largest_frame_beside_every_connections_lookahead():
    flags = {"name": "n", "inbound_buffer_bytes": 64 << 20, "max_frame_bytes": 60 << 20}
    assert resolve_config({**flags, "max_connections": 256}, {}).inbound_buffer_bytes == 64 << 20
    with pytest.raises(ConfigError, match="inbound_buffer_bytes .* must hold max_frame_bytes"):
        resolve_config({**flags, "max_connections": 257}, {})
    with pytest.raises(ConfigError, match="idle_timeout_s must be positive"):
        resolve_config({"name": "n", "idle_timeout_s": 0}, {})


@pytest.mark.parametrize("text, address", [
    ("127.0.0.1:7400", Address("127.0.0.1", 7400)),
    ("[::1]:80", Address("::1", 80)),
    ("edge-1.lan:0", Address("edge-1.lan", 0)),
])
def test_addresses_parse_and_print_back(text, address):
    assert parse_address(text) == address
    assert str(address) == text


@pytest.mark.parametrize("text", ["7400", "host:", ":7400", "host:http", "host:70000"])
def test_bad_addresses(text):
    with pytest.raises(ConfigError):
        parse_address(text)


def test_workload_memory_limits_come_from_flags_environment_and_file(tmp_path):
    file = write(tmp_path / "node.toml", 'name = "n"\napp_memory_bytes = 1048576\n')
    config = resolve_config({"workloads_memory_bytes": 8 << 20}, {"MIGRATE_NODE_MAX_WORKLOADS_PER_APP": "3"}, file)
    limits = config.limits()
    assert (limits.app_memory_bytes, limits.workloads_memory_bytes, limits.max_workloads_per_app) == (1 << 20,
                                                                                                       8 << 20, 3)
    unset = resolve_config({"name": "n"}, env={})
    assert unset.app_memory_bytes is None and unset.workloads_memory_bytes is None  # the limits() share decides
    for name in ("app_memory_bytes", "workloads_memory_bytes"):
        with pytest.raises(ConfigError, match=f"{name} must be positive"):
            resolve_config({"name": "n", name: 0}, env={})
        with pytest.raises(ConfigError, match=name.upper()):
            resolve_config({"name": "n"}, env={f"MIGRATE_NODE_{name.upper()}": "lots"})
