"""The `relay` command: `relay serve`, `relay demo`."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import gc
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from relay import __version__
from relay.app import create_app
from relay.config import Settings
from relay.errors import ConfigError, StoreError
from relay.runtime.protocol import ConnectionLimits
from relay.runtime.server import bind, make_server
from relay.settings import load_settings
from relay.store import open_store

logger = logging.getLogger(__name__)

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    level = getattr(args, "log_level", "info").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args))
    except (ConfigError, StoreError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay", description="Webhook receiver and job-status relay.")
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    commands = parser.add_subparsers(title="commands")
    serve = commands.add_parser("serve", help="run the relay (uvicorn)")
    serve.add_argument("--config", help="TOML file (default: $RELAY_CONFIG, else ./relay.toml)")
    serve.add_argument("--host", help="overrides server.host and RELAY_HOST")
    serve.add_argument("--port", type=int, help="overrides server.port, RELAY_PORT and PORT")
    serve.add_argument("--log-level", default="info", choices=LOG_LEVELS,
                       help="log level of the relay and uvicorn (default: info)")
    serve.set_defaults(run=_serve)
    demo = commands.add_parser(
        "demo", help="run relay with simulated providers of all three schemas and a dashboard")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--jobs", type=int, help="start this many jobs, then stop starting more")
    demo.add_argument("--exit-after", type=float, metavar="S",
                      help="exit after S seconds (0 if every job started is terminal)")
    demo.add_argument("--dir", type=Path, help="keep relay.db here (default: a temporary dir)")
    demo.add_argument("--log-level", default="warning", choices=LOG_LEVELS)
    demo.set_defaults(run=_demo)
    return parser


def _serve(args: argparse.Namespace) -> int:
    # A fatal signal Python cannot catch (SIGBUS when the SQLite WAL index file is truncated
    # or cannot be extended on a full disk, SIGSEGV) still leaves its traceback on stderr.
    faulthandler.enable()
    settings = _settings(args)
    asyncio.run(_check_store(settings))
    app = create_app(settings)
    _tune_gc()
    sock = _listen(settings.server.host, settings.server.port)
    logger.info("relay listening on http://%s:%s (store %s)", settings.server.host,
                sock.getsockname()[1], settings.server.store)
    # Above info the access log is off, not just filtered: its line is built per request.
    make_server(app, log_level=args.log_level, access_log=args.log_level in ("debug", "info"),
                limits=ConnectionLimits(max_connections=settings.server.max_connections)
                ).run(sockets=[sock])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    try:
        return bind(host, port)
    except OSError as exc:  # a busy port, an address not on this machine, no permission
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _tune_gc() -> None:
    """Collect young garbage less often and leave startup's objects out of collections.

    Each webhook allocates thousands of short-lived objects; with the default threshold
    (700) the collector ran several times per request and cost ~10% of a core. Nothing
    the relay keeps long is cyclic garbage, so rarer young collections cost no memory.
    """
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _demo(args: argparse.Namespace) -> int:
    from relay.sim.demo import DemoOptions, run_demo  # the demo runs on the service, not in it

    options = DemoOptions(host=args.host, port=args.port, jobs=args.jobs,
                          exit_after=args.exit_after, directory=args.dir)
    return asyncio.run(run_demo(options))


def _settings(args: argparse.Namespace) -> Settings:
    environ = dict(os.environ)
    if args.host:
        environ["RELAY_HOST"] = args.host
    if args.port is not None:
        environ["RELAY_PORT"] = str(args.port)
    return load_settings(args.config, environ)


async def _check_store(settings: Settings) -> None:
    """Open and close the store once, so a bad store URL fails here with one line."""
    store = open_store(settings.server.store)
    await store.open()
    await store.close()
