"""A connection must send its request in time, and there is a cap on open connections: a
public server cannot be held open by clients that send a byte now and then."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from relay.app import create_app
from relay.runtime.protocol import ConnectionLimits
from relay.runtime.server import serving
from tests.support import eventually, make_settings

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def relay_within(limits: ConnectionLimits) -> AsyncIterator[tuple[str, int]]:
    async with serving(create_app(make_settings()), limits=limits) as url:
        parsed = httpx.URL(url)
        yield parsed.host, parsed.port or 80


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """What the server sent before it closed the connection."""
    async with asyncio.timeout(timeout):
        return await reader.read()


async def test_connections_that_never_finish_their_request_head_are_closed():
    async with relay_within(ConnectionLimits(header_timeout=0.5)) as (host, port):
        streams = [await asyncio.open_connection(host, port) for _ in range(300)]
        for _, writer in streams:
            writer.write(b"GET /healthz HTTP/1.1\r\nhost: relay\r\nx-slow: ")
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            assert (await client.get("/healthz")).status_code == 200  # others are served
        ends = await asyncio.gather(*(closed_by_server(reader, 10) for reader, _ in streams))
        assert ends == [b""] * 300
        for _, writer in streams:
            writer.close()


async def test_a_body_that_stops_arriving_closes_the_connection():
    async with relay_within(ConnectionLimits(body_timeout=0.5)) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /hooks/gen HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json"
                     b"\r\nsync-signature: t=%d,v1=00\r\ncontent-length: 100\r\n\r\n{\"id\": "
                     % time.time())
        assert await closed_by_server(reader, 10) == b""
        writer.close()


async def test_past_max_connections_a_new_connection_gets_503_in_the_envelope():
    async with relay_within(ConnectionLimits(max_connections=3)) as (host, port):
        held = [await asyncio.open_connection(host, port) for _ in range(3)]
        reader, writer = await asyncio.open_connection(host, port)
        answer = await closed_by_server(reader, 10)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ")
        assert json.loads(body)["error"] == "unavailable"
        for _, other in [*held, (reader, writer)]:
            other.close()

        async def served_again() -> bool:  # once the server has seen the others close
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
                return (await client.get("/healthz")).status_code == 200

        await eventually(served_again)
