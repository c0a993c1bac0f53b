"""The `relay` command: `relay serve`, `relay demo`, `relay config-keys`.

`main` first takes SIGINT and SIGTERM over, noting them, so a Ctrl-C that comes while Python
still loads relay is never a traceback; only light modules are imported before it. Each
command then imports what it runs. `relay serve` hands both signals back to their defaults
before its slow start (Ctrl-C is a KeyboardInterrupt, exit 130; uvicorn takes them over while
it serves); `relay demo` keeps noting them until its event loop takes them over
(relay.sim.demo), so none is lost while it starts.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from relay.errors import ConfigError, StoreError

if TYPE_CHECKING:
    import socket

    from relay.config import Settings

logger = logging.getLogger(__name__)

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")  # relay.runtime.logs.FORMATS, not imported before it is needed
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    received = _note_signals()
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    from relay.runtime.logs import configure

    configure(getattr(args, "log_level", "info"), getattr(args, "log_format", "text"))
    try:
        return int(args.run(args, received))
    except (ConfigError, StoreError) as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _note_signals() -> list[int]:
    """SIGINT and SIGTERM, noted instead of acted on: the list of those received."""
    received: list[int] = []

    def note(sig: int, frame: FrameType | None) -> None:
        received.append(sig)

    for sig in SIGNALS:
        signal.signal(sig, note)
    return received


def _default_signals(received: Sequence[int]) -> None:
    """SIGINT and SIGTERM back to Python's defaults; KeyboardInterrupt if one came already."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if received:
        raise KeyboardInterrupt


class _Parser(argparse.ArgumentParser):
    """Says what is wrong with the command line in one line (and where help is), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message.removeprefix('argument ')} "
                     f"(see {self.prog} --help)\n")


class _Version(argparse.Action):
    """`--version`: read only when asked for (relay.__version__ loads importlib.metadata)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> NoReturn:
        from relay import __version__

        print(f"relay {__version__}")
        parser.exit(0)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="relay", description="Webhook receiver and job-status relay.")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print the version and exit")
    commands = parser.add_subparsers(title="commands")
    _serve_parser(commands.add_parser("serve", help="run the relay (uvicorn)"))
    _demo_parser(commands.add_parser(
        "demo", help="run relay with simulated providers of all three schemas and a dashboard"))
    keys = commands.add_parser(
        "config-keys", help="print every configuration key, its default and meaning (Markdown)")
    keys.set_defaults(run=_config_keys)
    return parser


def _serve_parser(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--config", help="TOML file (default: $RELAY_CONFIG, else ./relay.toml)")
    serve.add_argument("--host", help="overrides server.host and RELAY_HOST")
    serve.add_argument("--port", type=int, help="overrides server.port, RELAY_PORT and PORT")
    serve.add_argument("--log-level", default="info", choices=LOG_LEVELS,
                       help="log level of the relay and uvicorn (default: info)")
    serve.set_defaults(run=_serve)


def _demo_parser(demo: argparse.ArgumentParser) -> None:
    demo.description = (
        "Runs relay with simulated providers of all three schemas, keeps starting jobs, and "
        "serves a dashboard at / until Ctrl-C. With --jobs or --exit-after it runs headless: "
        "a progress line every few seconds, a summary at the end, and exit status 0 only "
        "when every job it started is terminal.")
    demo.add_argument("--host", default="127.0.0.1",
                      help="loopback address to listen on (default: 127.0.0.1)")
    demo.add_argument("--port", type=_port,
                      help="port to listen on (default: $RELAY_PORT, else $PORT, else 8000)")
    demo.add_argument("--jobs", type=_at_least_one, metavar="N",
                      help="start N jobs (at least 1), then wait until every one is terminal")
    demo.add_argument("--exit-after", type=_seconds, metavar="S",
                      help="end after S seconds (more than 0) even if jobs are still running; "
                           "without --jobs, keep starting jobs until then")
    demo.add_argument("--dir", type=Path,
                      help="keep relay.db in this directory (default: a temporary one, "
                           "removed at exit)")
    demo.add_argument("--log-level", default="warning", choices=LOG_LEVELS,
                      help="log level of the relay and uvicorn (default: warning)")
    demo.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                      help="text, or json: one JSON object per line (default: text)")
    demo.set_defaults(run=_demo)


def _whole(low: int, high: int | None, wanted: str) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high` (None: no upper bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value
    return parse


_at_least_one = _whole(1, None, "a whole number of at least 1")
_port = _whole(1, 65535, "a port from 1 to 65535")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected seconds, more than 0, got {text!r}")
    return value


# -- relay serve ----------------------------------------------------------------------------

def _serve(args: argparse.Namespace, received: Sequence[int]) -> int:
    _default_signals(received)
    import asyncio
    import faulthandler

    from relay.app import create_app
    from relay.runtime.logs import configure
    from relay.runtime.protocol import ConnectionLimits
    from relay.runtime.server import make_server

    # A fatal signal Python cannot catch (SIGBUS when the SQLite WAL index file is truncated
    # or cannot be extended on a full disk, SIGSEGV) still leaves its traceback on stderr.
    faulthandler.enable()
    settings = _settings(args)
    configure(args.log_level, settings.server.log_format)
    asyncio.run(_check_store(settings))
    app = create_app(settings)
    _tune_gc()
    sock = _listen(settings.server.host, settings.server.port)
    logger.info("relay listening on http://%s:%s (store %s)", settings.server.host,
                sock.getsockname()[1], settings.server.store)
    make_server(app, log_level=args.log_level,
                limits=ConnectionLimits(max_connections=settings.server.max_connections)
                ).run(sockets=[sock])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    from relay.runtime.server import bind

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
    import gc

    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _settings(args: argparse.Namespace) -> Settings:
    from relay.settings import load_settings

    environ = dict(os.environ)
    if args.host:
        environ["RELAY_HOST"] = args.host
    if args.port is not None:
        environ["RELAY_PORT"] = str(args.port)
    return load_settings(args.config, environ)


async def _check_store(settings: Settings) -> None:
    """Open and close the store once, so a bad store URL fails here with one line."""
    from relay.store import open_store

    store = open_store(settings.server.store)
    await store.open()
    await store.close()


# -- relay demo -----------------------------------------------------------------------------

def _demo(args: argparse.Namespace, received: Sequence[int]) -> int:
    host, port = demo_address(args.host, args.port, os.environ)
    import asyncio

    from relay.sim.demo import DemoOptions, run_demo  # the demo runs on the service, not in it

    if received:
        return 128 + received[0]
    options = DemoOptions(host=host, port=port, jobs=args.jobs, exit_after=args.exit_after,
                          directory=args.dir)
    return asyncio.run(run_demo(options, received))


def demo_address(host: str, port: int | None, environ: Mapping[str, str]) -> tuple[str, int]:
    """Where the demo listens: `port`, else RELAY_PORT, else PORT, else server.port's default
    (8000), the order `relay serve` reads them in; on loopback only, since the demo has no
    secret and no API keys."""
    from relay.config import ServerConfig, is_loopback

    if not is_loopback(host):
        raise ConfigError(f"--host: the demo listens on loopback only, got {host!r}")
    if port is not None:
        return host, port
    for name in ("RELAY_PORT", "PORT"):
        if environ.get(name):
            try:
                return host, _port(environ[name])
            except argparse.ArgumentTypeError as exc:
                raise ConfigError(f"{name}: {exc}") from None
    return host, ServerConfig().port


# -- relay config-keys ----------------------------------------------------------------------

def _config_keys(args: argparse.Namespace, received: Sequence[int]) -> int:
    from relay.settings import keys_markdown

    print(keys_markdown(), end="")
    return 0
