"""edge-1 and cloud-1 started for one link (``deploy``), and how the suite reaches them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import netem
from migrate.launcher import LocalCluster

SOURCE, TARGET = "edge-1", "cloud-1"


@dataclass(frozen=True)
class Deployment:
    """edge-1 and cloud-1 running for one link, and how the client reaches them."""

    profile: netem.LinkProfile
    edge: str
    cloud: str
    tls: Path
    client_namespace: str | None
    pids: dict[str, int] = field(default_factory=dict)  # each node's process, for its memory (``_memory``)


@contextlib.contextmanager
def deploy(profile: netem.LinkProfile, root: Path, memory_limit_bytes: int) -> Iterator[Deployment]:
    """Start edge-1 and cloud-1 for ``profile``; stop them (and delete any namespaces) on exit.

    Raises NetemError or NodeError when they cannot start.
    """
    args = ["--workload-memory-bytes", str(memory_limit_bytes)]
    if profile.emulated:
        with netem.EmulatedSites(profile, root / profile.name) as sites:
            edge = sites.start_node(SOURCE, "edge", args=args)
            cloud = sites.start_node(TARGET, "cloud", args=args)
            yield Deployment(profile, edge, cloud, sites.tls_for("bench"), sites.namespace("client"),
                             {name: sites.pid_of(name) for name in (SOURCE, TARGET)})
    else:
        with LocalCluster(root / profile.name) as lc:
            edge = lc.start(SOURCE, "edge", args=args)
            cloud = lc.start(TARGET, "cloud", args=args)
            yield Deployment(profile, str(edge.address), str(cloud.address), lc.tls_for("bench", "node"), None,
                             {SOURCE: edge.pid, TARGET: cloud.pid})


def client_side(deployment: Deployment):
    if deployment.client_namespace is None:
        return contextlib.nullcontext()
    return netem.entered(deployment.client_namespace)
