"""Running ASGI apps on uvicorn: `relay serve`, the demo, the simulated providers and tests.

Uvicorn's graceful shutdown waits for open responses to finish, and an SSE stream never
finishes by itself. So the server tells the app it is stopping (`app.state.stopping`, an
asyncio.Event the SSE streams watch) the moment an exit is requested, and streams close
at once instead of holding shutdown for `timeout_graceful_shutdown`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from types import FrameType
from typing import Any

import uvicorn

from relay.runtime.protocol import ConnectionLimits, limited

logger = logging.getLogger(__name__)

class Server(uvicorn.Server):
    """uvicorn.Server that wakes the app's streams when asked to exit.

    With `owns_signals=False` (servers embedded in a program with several of them: the demo,
    tests) it leaves SIGINT and SIGTERM to that program instead of capturing them.
    """

    def __init__(self, config: uvicorn.Config, owns_signals: bool = True) -> None:
        super().__init__(config)
        self.owns_signals = owns_signals
        self._loop: asyncio.AbstractEventLoop | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if not self.owns_signals:
            yield
            return
        with super().capture_signals():
            try:
                yield
            finally:
                # Uvicorn raises again the signal that stopped it once this block ends, and
                # its default action ends the process there, in the loop's last turn: the
                # lines held for that turn's end (relay.runtime.logs) are written first.
                for handler in logging.getLogger().handlers:
                    handler.flush()

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self.signal_stopping()

    def signal_stopping(self) -> None:
        stopping = getattr(getattr(self.config.app, "state", None), "stopping", None)
        if stopping is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(stopping.set)

    def stop(self) -> None:
        """Ask the server to exit, from any thread."""
        self.should_exit = True
        self.signal_stopping()


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket; port 0 picks a free one (read it back with `sock.getsockname()`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, said explicitly, is what lets asyncio set TCP_NODELAY on accepted
    # connections; without it Nagle's algorithm adds ~40 ms to responses on kept-alive ones.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_server(app: Any, owns_signals: bool = True, limits: ConnectionLimits | None = None,
                **config: Any) -> Server:
    """A server for `app` on the relay's HTTP protocol (uvicorn's, within `limits`). Uvicorn
    configures no logging of its own (its lines go through relay.runtime.logs' handler) and
    writes no access lines: relay writes its own (relay.runtime.access). Nor does it rewrite
    the client address and scheme from X-Forwarded-* headers: relay reads neither, and the
    rewriting middleware would be one more frame held by every open stream."""
    limits = limits or ConnectionLimits()
    config.setdefault("log_level", "warning")
    config.setdefault("log_config", None)
    config.setdefault("access_log", False)
    config.setdefault("proxy_headers", False)
    config.setdefault("lifespan", "on")
    config.setdefault("timeout_graceful_shutdown", 5)
    config.setdefault("http", limited(limits))
    return Server(uvicorn.Config(app, **config), owns_signals=owns_signals)


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


@contextlib.asynccontextmanager
async def serving(app: Any, host: str = "127.0.0.1", port: int = 0,
                  **config: Any) -> AsyncIterator[str]:
    """Serve `app` in this event loop for the duration of the block; yields its base URL."""
    sock = bind(host, port)
    server = make_server(app, owns_signals=False, **config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server exited during startup")
            await asyncio.sleep(0.01)
        yield base_url(sock)
    finally:
        server.stop()
        await task
        sock.close()


@contextlib.contextmanager
def serving_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0,
                      **config: Any) -> Iterator[str]:
    """Serve `app` on its own thread and event loop (for synchronous tests); yields the URL."""
    sock = bind(host, port)
    server = make_server(app, owns_signals=False, **config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("server exited during startup")
            threading.Event().wait(0.01)
        yield base_url(sock)
    finally:
        server.stop()
        thread.join(timeout=15)
        sock.close()
