"""The node commands of ``migrate-node``: run a node, look at one, manage the cluster's certificates.

    migrate-node serve --name edge-1 --role edge --listen 127.0.0.1:7401 --tls-dir tls/edge-1
    migrate-node status --node 127.0.0.1:7401 --tls-dir tls/app
    migrate-node list | members | deploy MODULE | call WORKLOAD EXPORT [ARG...] | ca init --dir ca
    migrate-node cert issue --ca ca --name edge-1 --role node --out tls/edge-1

Each command is one entry in a table (``COMMANDS``): a function that adds
its subparser and the function that runs it.  The ``migrate-node`` entry
point is ``migrate.cli``: it runs ``main`` with this table, a ``serve``
that gives the node the migration plugin (``serve_command``), and its own
``migrate`` and ``drain`` commands, built with ``add_client_options`` and
``client_command``.  User errors print one line and exit with status 2 (bad
usage or settings) or 1 (the operation failed); there are no tracebacks for
them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import trio

from . import _completion
from . import _crash as crash
from . import _host_errors as he
from ._client import NodeClient
from ._config import DEFAULT_PORT, SETTINGS, Address, NodeConfig, parse_address, resolve_config
from ._errors import ConfigError, NodeError
from ._groups import unwrap_group
from ._logging import configure_logging
from ._cli_text import jsonable, text
from ._members_cli import add_members, members
from ._plugin import Plugin
from ._revocation import revoke
from ._tls import CERT_ROLES, describe, init_ca, issue_cert

logger = logging.getLogger("nodes.cli")

EXIT_FAILED = 1
EXIT_USAGE = 2
#: The client commands' own settings: MIGRATE_NODE_* are the server's (``serve``).
_CLIENT_ENV = "MIGRATE_CLI_NODE"
_CLIENT_TLS_ENV = "MIGRATE_CLI_TLS_DIR"


class UsageError(Exception):
    """Bad command-line usage (exit status 2)."""


#: What a command adds its parser to (a string: argparse's class is not subscriptable at run time).
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
#: A command: the function that adds its subparser, and the function that runs it (returns the exit status).
Command = tuple[Callable[[SubParsers], argparse.ArgumentParser], Callable[[argparse.Namespace], int]]


# --- serve ------------------------------------------------------------------

def _add_serve(sub: SubParsers) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="run a node",
                       description="Run a node. Settings come from flags, then MIGRATE_NODE_* "
                                   "environment variables, then --config, then defaults.")
    p.add_argument("--config", type=Path, help="a TOML file of settings (MIGRATE_NODE_CONFIG)")
    for setting in SETTINGS:
        if setting.is_switch:
            p.add_argument(setting.flag, action="store_const", const=True, default=None,
                           help=setting.help)
        elif setting.repeated:
            p.add_argument(setting.flag, type=_flag(setting.parse), action="append", default=None,
                           metavar="HOST:PORT", help=setting.help)
        else:
            p.add_argument(setting.flag, type=_flag(setting.parse), default=None, help=setting.help)
    return p


def _flag(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap a setting parser so argparse reports its ConfigError as a usage error."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


async def _serve_until_signalled(config: NodeConfig, plugins: Sequence[Plugin]) -> None:
    from ._daemon import Notifier, freeze_startup_objects, serve  # imports wasmtime: only serve needs it

    crash.allow(phase for plugin in plugins for phase in plugin.crash_phases)
    crash.check_environment()
    stop = trio.Event()
    reload, reloads = trio.open_memory_channel(1)  # SIGHUP: reload the certificate and the revocation list
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals, unwrap_group():
        async with trio.open_nursery() as nursery:
            async def on_signal() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        with contextlib.suppress(trio.WouldBlock):  # one reload pending is enough
                            reload.send_nowait(None)
                        continue
                    logger.info("stopping on %s", signal.Signals(signum).name)
                    crash.release()  # a crash test's paused phase goes on from here
                    stop.set()

            nursery.start_soon(on_signal)

            async def run(task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
                await serve(config, plugins=plugins, stop=stop, reload=reloads, notifier=Notifier.from_env(),
                            task_status=task_status)
                nursery.cancel_scope.cancel()  # stopped, the shutdown checkpoint written: end on_signal too

            await nursery.start(run)
            freeze_startup_objects()



def serve_command(plugins: Sequence[Plugin] = ()) -> Command:
    """The ``serve`` command, running a node with ``plugins``."""
    def run(args: argparse.Namespace) -> int:
        config = resolve_config(vars(args), os.environ, args.config)
        configure_logging(config.name, config.log_level)
        try:
            trio.run(_serve_until_signalled, config, tuple(plugins))
        except OSError as exc:  # an unusable setting: a busy port, an unwritable data dir
            if exc.filename:
                raise ConfigError(f"cannot use {exc.filename}: {exc.strerror or exc}") from None
            raise ConfigError(f"cannot listen on {config.listen}: {exc.strerror or exc}") from None
        logger.info("stopped")
        return 0
    return _add_serve, run


# --- client commands -----------------------------------------------------------

def add_client_options(p: argparse.ArgumentParser) -> None:
    """Add the options every client command takes: --node, --tls-dir, --insecure, --json."""
    p.add_argument("--node", type=_flag(parse_address), default=None, metavar="HOST:PORT",
                   help=f"the node to ask (default ${_CLIENT_ENV} or 127.0.0.1:{DEFAULT_PORT})")
    p.add_argument("--tls-dir", type=Path, default=None,
                   help=f"this client's cert.pem, key.pem and ca.pem (default ${_CLIENT_TLS_ENV})")
    p.add_argument("--insecure", action="store_true", help="plain TCP (loopback only)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


async def connect(args: argparse.Namespace, address: Any = None) -> NodeClient:
    """Connect as ``args`` say (--node, --tls-dir, --insecure), or to ``address`` with the same TLS."""
    address = address or args.node or parse_address(os.environ.get(_CLIENT_ENV, f"127.0.0.1:{DEFAULT_PORT}"))
    tls = None
    if not args.insecure:
        tls = args.tls_dir or os.environ.get(_CLIENT_TLS_ENV)
        if not tls:
            raise UsageError(f"say which TLS dir to use (--tls-dir or {_CLIENT_TLS_ENV}; MIGRATE_NODE_TLS_DIR "
                             "is the server's own), or --insecure for a loopback node")
    with trio.fail_after(30):
        return await NodeClient.connect(address, tls=tls)


def client_command(run: Callable[[NodeClient, argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
    """A command that runs ``await run(client, args)`` against the node of ``--node`` and prints the result."""
    def command(args: argparse.Namespace) -> int:
        async def main() -> Any:
            async with await connect(args) as client:
                return await run(client, args)
        result = trio.run(main)
        if args.json:
            print(json.dumps(result, default=jsonable, indent=2))
        elif result is not None:
            print(text(result))
        return 0
    return command


async def _status(client: NodeClient, args: argparse.Namespace) -> Any:
    return await client.status()


async def _list(client: NodeClient, args: argparse.Namespace) -> Any:
    return await client.workloads()


async def _deploy(client: NodeClient, args: argparse.Namespace) -> Any:
    try:
        wasm = Path(args.module).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {args.module}: {exc.strerror}") from None
    return await client.deploy(wasm, workload_id=args.id, app=args.app)


async def _call(client: NodeClient, args: argparse.Namespace) -> Any:
    return await client.call(args.workload, args.export, *args.args)


def _number(text: str) -> int | float:
    try:
        return int(text, 0)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _add_status(sub: SubParsers) -> argparse.ArgumentParser:
    p = sub.add_parser("status", help="a node's role, capacity, workloads, peers and migrations")
    add_client_options(p)
    return p


def _add_list(sub: SubParsers) -> argparse.ArgumentParser:
    p = sub.add_parser("list", help="a node's workloads")
    add_client_options(p)
    return p


def _add_deploy(sub: SubParsers) -> argparse.ArgumentParser:
    p = sub.add_parser("deploy", help="start a workload from a .wasm file")
    p.add_argument("module", help="path of a .wasm module")
    p.add_argument("--id", default=None, help="workload id (default: generated)")
    p.add_argument("--app", default="", help="application the workload belongs to: the certificate's name "
                                                "(default) or NAME/SUFFIX")
    add_client_options(p)
    return p


def _add_call(sub: SubParsers) -> argparse.ArgumentParser:
    p = sub.add_parser("call", help="call a workload's export with numbers")
    p.add_argument("workload")
    p.add_argument("export")
    p.add_argument("args", nargs="*", type=_number)
    add_client_options(p)
    return p


# --- certificates -------------------------------------------------------------------

def _add_ca(sub: SubParsers) -> argparse.ArgumentParser:
    p = sub.add_parser("ca", help="the cluster's certificate authority")
    ca_sub = p.add_subparsers(dest="ca_command", required=True, metavar="init")
    init = ca_sub.add_parser("init", help="create a cluster CA")
    init.add_argument("--dir", type=Path, required=True, help="where to write ca.pem and ca-key.pem")
    return p


def _run_ca(args: argparse.Namespace) -> int:
    path = init_ca(args.dir)
    print(f"created cluster CA {path} (keep {args.dir / 'ca-key.pem'} private)")
    return 0


def _add_cert(sub: SubParsers) -> argparse.ArgumentParser:
    p = sub.add_parser("cert", help="node and client certificates")
    cert_sub = p.add_subparsers(dest="cert_command", required=True, metavar="issue|show|revoke")
    issue = cert_sub.add_parser("issue", help="issue a key and certificate signed by the cluster CA")
    issue.add_argument("--ca", type=Path, required=True, help="the CA dir from `ca init`")
    issue.add_argument("--name", required=True, help="node or client name (the certificate's CN)")
    issue.add_argument("--role", required=True, choices=CERT_ROLES)
    issue.add_argument("--out", type=Path, required=True, help="TLS dir to write cert.pem, key.pem, ca.pem")
    issue.add_argument("--san", action="append", default=[], metavar="NAME_OR_IP",
                       help="another DNS name or IP address the node is reached by (repeatable)")
    show = cert_sub.add_parser("show", help="a certificate's name, role, serial and expiry")
    show.add_argument("path", type=Path, help="a TLS dir or a certificate file")
    revoked = cert_sub.add_parser("revoke", help="add a certificate to a revocation list (nodes re-read it)")
    revoked.add_argument("--list", type=Path, required=True, dest="revoked",
                         help="the revocation list (a node's --revoked; default TLS_DIR/revoked.txt)")
    revoked.add_argument("entry", help="serial:0x..., name:NAME, or a bare serial or name")
    return p


def _run_cert(args: argparse.Namespace) -> int:
    if args.cert_command == "show":
        print(describe(args.path))
    elif args.cert_command == "revoke":
        print(f"added {revoke(args.revoked, args.entry)} to {args.revoked}; nodes using it re-read it within "
              "--tls-poll-s, or at once on SIGHUP")
    else:
        path = issue_cert(args.ca, name=args.name, role=args.role, out_dir=args.out, extra_names=tuple(args.san))
        print(f"issued {args.role} certificate {path} for {args.name}: {describe(path)}")
    return 0


# --- the command table ------------------------------------------------------------

COMMANDS: Mapping[str, Command] = {
    "serve": serve_command(),
    "status": (_add_status, client_command(_status)),
    "list": (_add_list, client_command(_list)),
    "members": (lambda sub: add_members(sub, add_client_options), client_command(members)),
    "deploy": (_add_deploy, client_command(_deploy)),
    "call": (_add_call, client_command(_call)),
    "ca": (_add_ca, _run_ca),
    "cert": (_add_cert, _run_cert),
}


def build_parser(commands: Mapping[str, Command] = COMMANDS, *,
                 prog: str = "migrate-node") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Run and manage wasm-migrate nodes.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add, run) in commands.items():
        add(sub).set_defaults(run=run)
    _completion.add_command(sub, parser, prog)
    return parser


def _version() -> str:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # a checkout never installed
        return importlib.metadata.version("wasm-migrate")
    return "(not installed)"


def main(argv: Sequence[str] | None = None, *, commands: Mapping[str, Command] = COMMANDS,
         failures: tuple[type[Exception], ...] = (), prog: str = "migrate-node") -> int:
    """Run the command line with ``commands``; return the exit status.

    ``failures`` are the caller's own error classes that mean "the
    operation failed" (exit status 1, one line), like the nodes package's.
    """
    parser = build_parser(commands, prog=prog)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, UsageError) as exc:
        print(f"{prog} {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (NodeError, he.HostError, trio.TooSlowError) + failures as exc:  # mypy reads no *unpacking here
        print(f"{prog} {args.command}: {exc or 'timed out'}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
