"""The client's keep-alive: a late pong is fine while the connection makes progress.

A file streamed at full speed to a server that reads only as fast as it works has the
client's ping (and the server's pong) queued behind megabytes of audio. websockets' own
keep-alive dropped such healthy connections ("keepalive ping timeout"), even while the
server's own pings kept arriving; a peer that stops reading and talking must still be
dropped. Raw ``websockets`` servers on loopback play
the slow and the dead server; the client is the project's own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.asyncio.server import ServerConnection, serve

from reson8_voice import ConnectionClosed, TurnsParams, connect_turns
from reson8_voice.server import Reson8Server

from .fault_proxy import FaultProxy

CHUNK = bytes(64 * 1024)
PARAMS = TurnsParams(encoding="pcm_s16le", sample_rate=16000)


N = 150  # ~10 MB: the ping waits seconds behind the audio


@contextlib.asynccontextmanager
async def _server(handler: Callable[[ServerConnection], Awaitable[None]],
                  ping_interval: float | None) -> AsyncIterator[str]:
    # the server's own pings (if any) never drop the client: only the client's keep-alive
    # is under test; a small queue, so a handler that reads slowly stops websockets
    # reading the socket (back-pressure)
    async with serve(handler, "127.0.0.1", 0, ping_interval=ping_interval,
                     ping_timeout=None, max_queue=1, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


received: list[int] = []
all_received = asyncio.Event()


async def _read_slowly(ws: ServerConnection) -> None:
    async for message in ws:  # 64 KiB per 20 ms: ~3 MiB/s, behind a full-speed sender
        received.append(len(message))
        if len(received) == N:
            all_received.set()
        await asyncio.sleep(0.02)


async def test_a_slow_but_reading_server_keeps_the_connection() -> None:
    received.clear()
    all_received.clear()
    async with _server(_read_slowly, ping_interval=0.1) as url:  # alive: it pings
        conn = await connect_turns(url, PARAMS, ping_interval=0.1, ping_timeout=0.3)
        try:
            for _ in range(N):
                await conn.send_audio(CHUNK)
            await asyncio.wait_for(all_received.wait(), 20)
            assert conn.websocket.close_code is None  # alive throughout
        finally:
            await conn.close()
    assert sum(received) == N * len(CHUNK)


async def test_a_server_that_stops_reading_and_answering_is_dropped(
    scripted_server: Reson8Server,
) -> None:
    async with FaultProxy("127.0.0.1", scripted_server.port) as proxy:
        conn = await connect_turns(proxy.url, PARAMS, ping_interval=0.1, ping_timeout=0.3)
        proxy.half_open()  # nothing reaches the server any more (audio, pongs, pings)...
        proxy.stall()  # ...and nothing comes back: a dead path with both sockets open
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:  # the buffers fill, then sends block: no progress, no pong
                    await conn.send_audio(CHUNK)
        assert conn.websocket.close_code in (1006, 1011)  # aborted, or closed with 1011
