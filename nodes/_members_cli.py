"""The membership view of ``migrate-node``: the ``members`` command, and the table ``status`` ends with.

    NODE      ROLE   ADDRESS            LOCATION  STATE    HEARD   LOAD  WORKLOADS  FREE        CAPABILITIES
    edge-1    edge   127.0.0.1:7401     lab-1     alive    0.0 s   0.31          2  3.1 GiB     gpu=nvidia-h100
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from ._client import NodeClient
from ._member_messages import MemberRecord


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.1f} GiB"


def members_text(members: Sequence[Any]) -> str:
    """A table of member records (``MemberRecord``s, or the maps ``status`` carries), this node first."""
    if not members:
        return "no members (membership off)"
    rows = [f"{'NODE':<16} {'ROLE':<6} {'ADDRESS':<22} {'LOCATION':<12} {'STATE':<8} {'HEARD':>8} {'LOAD':>6} "
            f"{'WORKLOADS':>9} {'FREE':>10}  CAPABILITIES"]
    for m in members:
        m = m if isinstance(m, Mapping) else asdict(m)
        state = m["state"] + ("*" if m.get("cordoned") else "")
        capabilities = ",".join(f"{k}={v}" for k, v in sorted(m["capabilities"].items())) or "-"
        rows.append(f"{m['name']:<16} {m['role']:<6} {m['address']:<22} {m['location'] or '-':<12} {state:<8} "
                    f"{m['last_heard_s']:>6.1f} s {m['load']:>6} {m['workloads']:>9} "
                    f"{_gib(m['memory_free_bytes']):>10}  {capabilities}")
    if any((m if isinstance(m, Mapping) else asdict(m)).get("cordoned") for m in members):
        rows.append("* cordoned: no new placements")
    return "\n".join(rows)


def add_members(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                add_client_options: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    p = sub.add_parser("members", help="every node the node knows: role, location, state, when last heard")
    add_client_options(p)
    return p


async def members(client: NodeClient, args: argparse.Namespace) -> tuple[MemberRecord, ...]:
    return await client.members()
