"""The client's keep-alive: a late pong is fine while the connection makes progress.

A file streamed at full speed to a server that reads only as fast as it works has the
client's ping (and the server's pong) queued behind megabytes of audio. websockets' own
keep-alive dropped such healthy connections ("keepalive ping timeout"), even while the
server's own pings kept arriving; a peer that stops reading and talking must still be
dropped. Servers on loopback play the slow, the quiet and the dead server; the client is
the project's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.protocol import State
from websockets.utils import accept_key

from reson8_voice import ConnectionClosed, TurnsParams, connect_turns
from reson8_voice._keepalive import ProgressKeepalive
from reson8_voice.server import Reson8Server

from .fault_proxy import FaultProxy

CHUNK = bytes(64 * 1024)
PARAMS = TurnsParams(encoding="pcm_s16le", sample_rate=16000)


N = 150  # ~10 MB: the ping waits seconds behind the audio


class _KeepaliveServerConnection(ProgressKeepalive, ServerConnection):
    """A server connection with the embedded server's keep-alive."""


@contextlib.asynccontextmanager
async def _server(handler: Callable[[ServerConnection], Awaitable[None]],
                  ping_interval: float | None, **options: Any) -> AsyncIterator[str]:
    # the server's own pings (if any) never drop the client unless a test asks for a
    # ping_timeout: it is the client's keep-alive under test; a small queue, so a handler
    # that reads slowly stops websockets reading the socket (back-pressure)
    options = {"ping_timeout": None, **options}
    async with serve(handler, "127.0.0.1", 0, ping_interval=ping_interval, max_queue=1,
                     max_size=None, **options) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


def _slow_reader(n: int, all_received: asyncio.Event,
                 ) -> Callable[[ServerConnection], Awaitable[None]]:
    async def read_slowly(ws: ServerConnection) -> None:
        received = 0
        async for _ in ws:  # 64 KiB per 20 ms: ~3 MiB/s, behind a full-speed sender
            received += 1
            if received == n:
                all_received.set()
            await asyncio.sleep(0.02)

    return read_slowly


async def _send_all_then_wait(url: str, n: int, all_received: asyncio.Event,
                              checked: asyncio.Event | None = None,
                              ping_timeout: float = 0.3) -> None:
    """Send ``n`` chunks at full speed, then wait (nothing more to send) until the server
    has read them all; the connection must be open throughout. ``checked`` is set once
    that is asserted, before the client closes."""
    conn = await connect_turns(url, PARAMS, ping_interval=0.1, ping_timeout=ping_timeout)
    try:
        for _ in range(n):
            await conn.send_audio(CHUNK)
        await asyncio.wait_for(all_received.wait(), 20)
        # alive throughout (a keep-alive that gave up would be closing: its close frame
        # waits for the peer's for up to close_timeout, and close_code is still None)
        assert conn.websocket.state is State.OPEN
        if checked is not None:
            checked.set()
    finally:
        await conn.close()


async def test_a_slow_but_reading_server_keeps_the_connection() -> None:
    all_received = asyncio.Event()
    async with _server(_slow_reader(N, all_received), ping_interval=0.1) as url:
        await _send_all_then_wait(url, N, all_received)


async def test_a_quiet_server_with_the_projects_keepalive_keeps_the_connection() -> None:
    """The client's pong to the server is late (behind the audio), and so is the server's
    to the client. Once the client has sent everything, the server's pings are all it
    hears while the server works through the backlog: a server keep-alive that stopped
    pinging while waiting for its own late pong left the client to drop it, and one that
    pinged every ping_interval raced a client whose timeout is that long (both default to
    20 s); here the client's is even a little shorter than the server's interval."""
    all_received = asyncio.Event()
    async with _server(_slow_reader(N, all_received), ping_interval=0.3, ping_timeout=0.3,
                       create_connection=_KeepaliveServerConnection) as url:
        await _send_all_then_wait(url, N, all_received, ping_timeout=0.25)


@pytest.mark.skipif(sys.platform != "linux", reason="the kernel's send queue (SIOCOUTQ)")
async def test_a_silent_server_reading_the_queued_audio_keeps_the_connection() -> None:
    """A peer that never writes a byte (no pong, no ping, no message) but reads: what the
    client sent waits in its own socket (the server's receive buffer is small), and the
    only sign of the server reading it is the client's unacknowledged bytes going down."""
    total = 16 * len(CHUNK)  # 1 MiB, ~1.3 s at the server's pace
    all_received, checked = asyncio.Event(), asyncio.Event()

    async def silent_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            ) -> None:
        request = await reader.readuntil(b"\r\n\r\n")  # the upgrade, by hand
        match = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", request)
        assert match is not None
        accept = accept_key(match.group(1).decode())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                     + accept.encode() + b"\r\n\r\n")
        received = 0
        while data := await reader.read(16 * 1024):  # ~0.8 MiB/s, and never a reply
            received += len(data)
            if received >= total:
                all_received.set()
                await checked.wait()
                break
            await asyncio.sleep(0.02)
        writer.close()  # no close frame either: the client's close() ends at the EOF

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # inherited
    listener.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(silent_reader, sock=listener, limit=16 * 1024)
    async with server:
        url = f"ws://127.0.0.1:{listener.getsockname()[1]}"
        await _send_all_then_wait(url, total // len(CHUNK), all_received, checked)


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
