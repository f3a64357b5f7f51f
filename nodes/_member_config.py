"""The membership and discovery settings: parsing ``--capability KEY=VALUE`` and ``--join-dns NAME``, and checks."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ._errors import ConfigError

if TYPE_CHECKING:
    from ._config import NodeConfig

#: The bounds a received membership entry must keep (``nodes._member_messages``); ours keep them too.
MAX_LOCATION = 128
MAX_CAPABILITIES = 32
MAX_CAPABILITY_VALUE = 256
KEY_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def capability_refusal(key: str, value: str) -> str | None:
    """Why ``key=value`` is not a capability; None if it is one."""
    if not KEY_PATTERN.match(key):
        return (f"capability name {key!r} must be 1-64 lower-case letters, digits, '.', '_' or '-', "
                "starting with a letter or digit")
    if not value or len(value) > MAX_CAPABILITY_VALUE or not value.isprintable():
        return f"capability {key!r}: its value must be 1-{MAX_CAPABILITY_VALUE} printable characters"
    return None


def parse_capability(text: str) -> tuple[str, str]:
    """Parse ``KEY=VALUE`` (``gpu=nvidia-h100``); raise ConfigError if it is not one."""
    key, sep, value = text.strip().partition("=")
    if not sep:
        raise ConfigError(f"capability {text!r} is not KEY=VALUE (e.g. gpu=nvidia-h100)")
    why = capability_refusal(key.strip(), value.strip())
    if why is not None:
        raise ConfigError(why)
    return key.strip(), value.strip()


def parse_dns_name(text: str) -> str:
    """Check a DNS name (``nodes.default.svc.cluster.local``); raise ConfigError if it is not one."""
    name = text.strip().rstrip(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ConfigError(f"{text!r} is not a DNS name")
    return name


def check_membership_settings(config: NodeConfig) -> None:
    """Raise ConfigError for a location or capabilities other nodes would refuse to take in."""
    if len(config.location) > MAX_LOCATION or not config.location.isprintable():
        raise ConfigError(f"location must be at most {MAX_LOCATION} printable characters, got {config.location!r}")
    if len(config.capability) > MAX_CAPABILITIES:
        raise ConfigError(f"at most {MAX_CAPABILITIES} capabilities, got {len(config.capability)}")
    keys = [key for key, _ in config.capability]
    for key, value in config.capability:
        why = capability_refusal(key, value)
        if why is not None:
            raise ConfigError(why)
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ConfigError(f"capability {repeated[0]!r} is given twice")
    if config.join_dns is not None:
        parse_dns_name(config.join_dns)
