"""``migrate-node``: a node with live migration, and the commands that move workloads.

    migrate-node serve --name edge-1 --role edge --listen 127.0.0.1:7401 --tls-dir tls/edge-1
    migrate-node migrate WORKLOAD --to cloud-1 [--strategy precopy|stop-copy] --node HOST:PORT
    migrate-node drain [--to cloud-1] --node HOST:PORT
    migrate-node cordon NAME | uncordon NAME --node HOST:PORT
    migrate-node status | list | deploy | call | remove | hibernate | exports | ca init | cert issue

The node commands come from ``nodes.cli``; here ``serve`` runs the node
with the migration and pool plugins (``migrate._service.PLUGINS``), and ``migrate``
and ``drain`` ask a node to move workloads (``migrate._operator``).  This
is the ``migrate-node`` console script; ``python -m migrate.cli`` runs it
without the script.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from nodes import cli as node_cli

from ._cli_workloads import (add_exports, add_hibernate, add_remove, call_command, exports_command,
                             hibernate_command, remove_command)
from ._errors import MigrateError
from ._operator import cordon_command, drain_command, migrate_command, uncordon_command
from ._service import PLUGINS


def _add_move_options(p: argparse.ArgumentParser, *, to_required: bool = True) -> argparse.ArgumentParser:
    p.add_argument("--to", required=to_required, metavar="NODE",
                   help="target node name (a peer) or HOST:PORT" + ("" if to_required else
                                                                    " (default: placement picks one per workload)"))
    p.add_argument("--strategy", choices=("precopy", "stop-copy"), default="precopy")
    node_cli.add_client_options(p)
    return p


def _add_migrate(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("migrate", help="move one workload to another node, live")
    p.add_argument("workload")
    return _add_move_options(p)


def _add_drain(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return _add_move_options(sub.add_parser("drain", help="cordon a node and move every workload off it, "
                                                          "showing progress"), to_required=False)


def _add_cordoning(verb: str, what: str) -> Callable[[argparse._SubParsersAction], argparse.ArgumentParser]:
    def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
        p = sub.add_parser(verb, help=what)
        p.add_argument("name", help="the node's name (the connected node or a peer of it)")
        node_cli.add_client_options(p)
        return p
    return add


_NODE_COMMANDS = node_cli.COMMANDS

#: The node commands, ``serve`` with the migration plugin, and the moving commands before ``ca`` and ``cert``.
COMMANDS: dict[str, node_cli.Command] = {
    **{name: command for name, command in _NODE_COMMANDS.items() if name not in ("ca", "cert")},
    "serve": node_cli.serve_command(PLUGINS),
    "call": (_NODE_COMMANDS["call"][0], node_cli.client_command(call_command)),  # follows moves
    "remove": (add_remove, node_cli.client_command(remove_command)),
    "hibernate": (add_hibernate, node_cli.client_command(hibernate_command)),
    "exports": (add_exports, node_cli.client_command(exports_command)),
    "migrate": (_add_migrate, node_cli.client_command(migrate_command)),
    "drain": (_add_drain, node_cli.client_command(drain_command)),
    "cordon": (_add_cordoning("cordon", "stop new placements on a node (node certificate)"),
               node_cli.client_command(cordon_command)),
    "uncordon": (_add_cordoning("uncordon", "resume new placements on a node (node certificate)"),
                 node_cli.client_command(uncordon_command)),
    "ca": _NODE_COMMANDS["ca"],
    "cert": _NODE_COMMANDS["cert"],
}


def build_parser() -> argparse.ArgumentParser:
    return node_cli.build_parser(COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``migrate-node``; return the exit status."""
    return node_cli.main(argv, commands=COMMANDS, failures=(MigrateError,))


if __name__ == "__main__":
    sys.exit(main())
