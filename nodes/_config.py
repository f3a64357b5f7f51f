"""A node's settings: one frozen NodeConfig, resolved from flags, environment, a TOML file and defaults.

Every setting is declared once in ``SETTINGS``, which gives its flag
(``--call-timeout-s``), its environment variable
(``MIGRATE_NODE_CALL_TIMEOUT_S``) and its config-file key
(``call_timeout_s``).  ``resolve_config`` takes the first of flag,
environment, file and default that sets each one.  The config file is named
by ``--config`` or ``MIGRATE_NODE_CONFIG``; relative paths inside it are
relative to the file.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._budget import LOOKAHEAD_BYTES
from ._errors import ConfigError
from ._limits import Limits, system_memory
from ._member_config import check_membership_settings, parse_capability, parse_dns_name
from ._protocol import DEFAULT_MAX_FRAME_BYTES
from ._tls import is_loopback

ENV_PREFIX = "MIGRATE_NODE_"
NODE_ROLES = ("client", "edge", "cloud")
DEFAULT_PORT = 7400
#: Share of physical memory (MemTotal) the workloads' memory caps may add up
#: to when ``workloads_memory_bytes`` is not set.
DEFAULT_WORKLOADS_MEMORY_SHARE = 0.5


@dataclass(frozen=True, order=True)
class Address:
    """A TCP endpoint, written ``HOST:PORT`` (``[::1]:PORT`` for IPv6)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse ``HOST:PORT``; raise ConfigError if it is not one."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{text!r} is not HOST:PORT")
    return Address(host, int(port))


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{text!r} is not a boolean (use true or false)")


def _parse_number(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    return parse


#: Worker threads for calls: two per core (a guest sleeping in WASI holds
#: one), at least 4.
DEFAULT_CALL_WORKERS = max(4, 2 * (os.cpu_count() or 1))


def _default_data_dir(name: str) -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "migrate-node" / name


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """Everything ``serve`` needs.  Raises ConfigError at construction if a value is unusable."""

    name: str
    role: str = "edge"
    listen: Address = Address("127.0.0.1", DEFAULT_PORT)
    data_dir: Path | None = None     # None: $XDG_DATA_HOME/migrate-node/NAME
    join: tuple[Address, ...] = ()
    tls_dir: Path | None = None      # None: DATA_DIR/tls
    insecure: bool = False
    revoked: Path | None = None      # None: TLS_DIR/revoked.txt (nodes._revocation)
    tls_poll_s: float = 5.0          # how often the TLS files and the revocation list are checked for changes
    data_key_file: Path | None = None  # None: TLS_DIR/data.key, DATA_DIR/data.key if insecure (nodes._at_rest)
    # workload limits (nodes._limits.Limits)
    workload_memory_bytes: int = Limits.memory_bytes
    call_timeout_s: float = Limits.call_timeout_s
    max_workloads: int = Limits.max_workloads
    max_workloads_per_app: int = Limits.max_workloads_per_app
    call_workers: int = DEFAULT_CALL_WORKERS  # threads running calls, shared fairly by workloads
    app_memory_bytes: int | None = Limits.app_memory_bytes  # None: no per-application budget
    workloads_memory_bytes: int | None = None  # None: DEFAULT_WORKLOADS_MEMORY_SHARE of MemTotal
    idle_s: float = 0.0              # hibernate a workload unused this long (nodes._hibernate); 0: never
    hibernated_bytes: int | None = Limits.hibernated_bytes  # None: no cap on hibernation files
    # connections
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_in_flight: int = 16          # requests handled at once per connection
    inbound_buffer_bytes: int = 256 << 20  # inbound bytes buffered at once, all connections together
    max_connections: int = 1024      # connections served at once; more are refused
    hello_timeout_s: float = 10.0    # time a new connection gets for TLS and the Hello exchange
    idle_timeout_s: float = 60.0     # a connection that stalls this long is closed (nodes._transport)
    peer_refresh_s: float = 2.0
    # membership and discovery (nodes._gossip, nodes._discovery)
    location: str = ""               # a label placement may match, e.g. "eu-west/rack-3"
    capability: tuple[tuple[str, str], ...] = ()  # operator capabilities, e.g. ("gpu", "nvidia-h100")
    member: bool = True              # announce this node in the membership (False: only follow it)
    mdns: bool = False               # advertise and browse _wasm-migrate._tcp.local.
    join_dns: str | None = None      # a DNS name whose A/AAAA/SRV records are join seeds
    dns_server: Address | None = None  # the server --join-dns asks (None: /etc/resolv.conf)
    shutdown_grace_s: float = 10.0
    discard_state: bool = False      # start empty when the saved state is damaged (set aside, not deleted)
    log_level: str = "info"
    metrics_listen: Address | None = None  # None: no metrics, health or readiness endpoint (nodes._health)
    metrics_public: bool = False     # allow metrics_listen beyond loopback

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "._-" for c in self.name):
            raise ConfigError(f"node name {self.name!r} must be letters, digits, '.', '_' or '-'")
        if self.role not in NODE_ROLES:
            raise ConfigError(f"role must be one of {', '.join(NODE_ROLES)}, got {self.role!r}")
        for field in ("workload_memory_bytes", "call_timeout_s", "max_workloads",
                      "max_workloads_per_app", "call_workers", "max_frame_bytes", "max_in_flight",
                      "inbound_buffer_bytes", "max_connections", "hello_timeout_s", "idle_timeout_s",
                      "peer_refresh_s", "shutdown_grace_s", "tls_poll_s"):
            if not getattr(self, field) > 0:
                raise ConfigError(f"{field} must be positive, got {getattr(self, field)!r}")
        for field in ("app_memory_bytes", "workloads_memory_bytes", "hibernated_bytes"):
            if getattr(self, field) is not None and not getattr(self, field) > 0:
                raise ConfigError(f"{field} must be positive, got {getattr(self, field)!r}")
        if not self.idle_s >= 0:
            raise ConfigError(f"idle_s must be 0 (never hibernate) or more, got {self.idle_s!r}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"log_level must be debug, info, warning or error, got {self.log_level!r}")
        # A reader waits for a whole frame while every other connection may hold a
        # lookahead: the largest frame must still fit (the rule in nodes._budget).
        reserved = self.max_connections * LOOKAHEAD_BYTES
        if self.max_frame_bytes + reserved > self.inbound_buffer_bytes:
            raise ConfigError(
                f"inbound_buffer_bytes ({self.inbound_buffer_bytes}) must hold max_frame_bytes "
                f"({self.max_frame_bytes}) plus {LOOKAHEAD_BYTES} bytes for each of max_connections "
                f"({self.max_connections}): at least {self.max_frame_bytes + reserved}")
        check_membership_settings(self)
        if self.metrics_listen is not None and not (self.metrics_public or is_loopback(self.metrics_listen.host)):
            raise ConfigError(f"--metrics-listen {self.metrics_listen} is not loopback: the metrics name tenants "
                              "and peers to anyone who connects, without TLS; add --metrics-public to allow it")
        refused = [why for why in map(self.dial_refusal, (self.listen, *self.join)) if why]
        if refused:
            raise ConfigError(refused[0])

    def dial_refusal(self, address: Address) -> str | None:
        """Why this node may not listen on, dial or learn ``address``; None if it may.

        The one check of ``--insecure``: such a node talks to loopback only,
        in both directions, whatever named the address (a flag, a Hello, a
        request).
        """
        if not self.insecure or is_loopback(address.host):
            return None
        return (f"--insecure is allowed only on loopback (127.0.0.1, ::1, localhost), not {address}: "
                "without TLS anyone who can reach the node could run code on it")

    @property
    def data_path(self) -> Path:
        return self.data_dir if self.data_dir is not None else _default_data_dir(self.name)

    @property
    def tls_path(self) -> Path:
        return self.tls_dir if self.tls_dir is not None else self.data_path / "tls"

    @property
    def revoked_path(self) -> Path:
        return self.revoked if self.revoked is not None else self.tls_path / "revoked.txt"

    @property
    def data_key_path(self) -> Path:
        if self.data_key_file is not None:
            return self.data_key_file
        return (self.data_path if self.insecure else self.tls_path) / "data.key"

    @property
    def checkpoint_path(self) -> Path:
        return self.data_path / "checkpoints"

    def limits(self) -> Limits:
        workloads_memory = self.workloads_memory_bytes
        if workloads_memory is None:  # a share of physical memory; no cap if it is unknown
            workloads_memory = int(system_memory()[0] * DEFAULT_WORKLOADS_MEMORY_SHARE) or None
        return Limits(memory_bytes=self.workload_memory_bytes, call_timeout_s=self.call_timeout_s,
                      max_workloads=self.max_workloads, max_workloads_per_app=self.max_workloads_per_app,
                      app_memory_bytes=self.app_memory_bytes, workloads_memory_bytes=workloads_memory,
                      hibernated_bytes=self.hibernated_bytes)


@dataclass(frozen=True)
class Setting:
    """One NodeConfig field as flags, environment and config files spell it."""

    name: str
    parse: Callable[[str], Any]   # from a flag or environment string
    help: str
    repeated: bool = False        # a flag given several times; comma-separated in the environment

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def is_switch(self) -> bool:
        """A boolean: a flag without a value on the command line."""
        return self.parse is _parse_bool


SETTINGS: tuple[Setting, ...] = (
    Setting("name", str, "this node's name, unique in the cluster"),
    Setting("role", str, "client, edge or cloud"),
    Setting("listen", parse_address, "HOST:PORT to listen on (port 0 picks one)"),
    Setting("data_dir", Path, "modules, workload output and checkpoints"),
    Setting("join", parse_address, "HOST:PORT of a peer to know (repeatable)", repeated=True),
    Setting("tls_dir", Path, "cert.pem, key.pem and ca.pem (default DATA_DIR/tls)"),
    Setting("insecure", _parse_bool, "no TLS; only on loopback, for development"),
    Setting("revoked", Path, "revocation list: serial:0x... or name:... lines (default TLS_DIR/revoked.txt)"),
    Setting("tls_poll_s", _parse_number(float), "how often TLS files and the revocation list are checked"),
    Setting("data_key_file", Path, "256-bit key checkpoints are encrypted with "
                                   "(default TLS_DIR/data.key; DATA_DIR/data.key if insecure)"),
    Setting("workload_memory_bytes", _parse_number(int), "linear memory cap per workload"),
    Setting("call_timeout_s", _parse_number(float), "per-call deadline: a call running longer is "
                                                   "stopped with deadline_exceeded"),
    Setting("max_workloads", _parse_number(int), "workloads on this node"),
    Setting("call_workers", _parse_number(int), "threads running calls, shared fairly by workloads"),
    Setting("max_workloads_per_app", _parse_number(int), "workloads per application (tenant)"),
    Setting("app_memory_bytes", _parse_number(int), "sum of the memory caps of one application's "
                                                    "(tenant's) workloads (default: no budget)"),
    Setting("workloads_memory_bytes", _parse_number(int), "sum of the memory caps of all workloads "
                                                          "(default: half of physical memory)"),
    Setting("idle_s", _parse_number(float), "hibernate a workload no call used for this many seconds: its "
                                            "state goes to disk, its memory is freed (default 0: never)"),
    Setting("hibernated_bytes", _parse_number(int), "bytes of hibernation files on this node "
                                                    "(default: no cap)"),
    Setting("max_frame_bytes", _parse_number(int), "largest frame accepted"),
    Setting("max_in_flight", _parse_number(int), "requests handled at once per connection"),
    Setting("inbound_buffer_bytes", _parse_number(int), "inbound bytes buffered at once, all connections "
                                                        "together; beyond it reads pause"),
    Setting("max_connections", _parse_number(int), "connections served at once; more are refused"),
    Setting("hello_timeout_s", _parse_number(float), "time a new connection gets for TLS and its Hello"),
    Setting("idle_timeout_s", _parse_number(float), "close a connection idle (or stalled inside a frame, "
                                                    "or not reading) this long"),
    Setting("peer_refresh_s", _parse_number(float), "how often peers are pinged and membership gossiped"),
    Setting("location", str, "a location label advertised to the cluster (e.g. eu-west/rack-3)"),
    Setting("capability", parse_capability, "KEY=VALUE an operator advertises, e.g. gpu=nvidia-h100 "
                                            "(repeatable)", repeated=True),
    Setting("member", _parse_bool, "announce this node in the cluster membership (off: only follow it)"),
    Setting("mdns", _parse_bool, "advertise and discover nodes with mDNS (_wasm-migrate._tcp)"),
    Setting("join_dns", parse_dns_name, "a DNS name whose A/AAAA (or SRV) records are join seeds, "
                                        "resolved every refresh"),
    Setting("dns_server", parse_address, "HOST:PORT of the DNS server --join-dns asks "
                                         "(default: those of /etc/resolv.conf)"),
    Setting("shutdown_grace_s", _parse_number(float), "time allowed to checkpoint on SIGTERM"),
    Setting("discard_state", _parse_bool, "start empty if the saved checkpoint is damaged "
                                          "(it is moved aside, not deleted)"),
    Setting("log_level", str, "debug, info, warning or error"),
    Setting("metrics_listen", parse_address, "HOST:PORT serving /metrics (Prometheus), /healthz and /readyz "
                                             "over plain HTTP (default: none)"),
    Setting("metrics_public", _parse_bool, "allow --metrics-listen beyond loopback (the metrics name "
                                           "tenants and peers, unauthenticated)"),
)
_BY_NAME = {s.name: s for s in SETTINGS}
assert set(_BY_NAME) == {f.name for f in dataclasses.fields(NodeConfig)}


def _from_env(setting: Setting, text: str) -> Any:
    if setting.repeated:
        return tuple(setting.parse(part) for part in text.split(",") if part.strip())
    return setting.parse(text)


def _from_file(setting: Setting, value: Any, base: Path) -> Any:
    """Check a TOML value's type and convert it like a flag would be."""
    if setting.repeated:
        if not isinstance(value, list):
            raise ConfigError(f"{setting.name} must be a list")
        return tuple(_from_file(dataclasses.replace(setting, repeated=False), v, base) for v in value)
    if setting.parse is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{setting.name} must be a string")
        return base / Path(value).expanduser()
    if setting.parse is _parse_bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{setting.name} must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{setting.name} must be a string or a number")
    if setting.parse in (str, parse_address) and not isinstance(value, str):
        raise ConfigError(f"{setting.name} must be a string")
    return setting.parse(str(value))


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML config file into setting values; raise ConfigError if it is unusable."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    values = {}
    for key, value in raw.items():
        setting = _BY_NAME.get(key.replace("-", "_"))
        if setting is None:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        try:
            values[setting.name] = _from_file(setting, value, Path(path).parent)
        except ConfigError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    return values


def resolve_config(flags: Mapping[str, Any], env: Mapping[str, str] = os.environ,
                   config_file: Path | None = None) -> NodeConfig:
    """Merge flags (None means not given) over environment over config file over defaults.

    ``config_file`` defaults to ``MIGRATE_NODE_CONFIG`` from ``env``.
    Raises ConfigError naming the offending source.
    """
    if config_file is None and env.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(env[ENV_PREFIX + "CONFIG"])
    values = load_config_file(config_file) if config_file is not None else {}
    for setting in SETTINGS:
        text = env.get(setting.env)
        if text is not None:
            try:
                values[setting.name] = _from_env(setting, text)
            except ConfigError as exc:
                raise ConfigError(f"{setting.env}: {exc}") from None
    for name, value in flags.items():
        if name in _BY_NAME and value is not None and value != [] and value != ():
            values[name] = tuple(value) if _BY_NAME[name].repeated else value
    if "name" not in values:
        raise ConfigError("a node needs a name: --name NAME, MIGRATE_NODE_NAME or name = ... in the config file")
    return NodeConfig(**values)
