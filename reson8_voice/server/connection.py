"""The server's WebSocket connection: websockets' own, with two behaviours of the spec.

**Oversized messages.** ``max_size`` is the message limit itself, so websockets refuses an
oversized message from its frame header, before buffering any of its payload, whatever
length the header declares (a text message counts its UTF-8 bytes). It then closes with
1009; :class:`SessionConnection` first sends the endpoint's JSON error
(:attr:`SessionConnection.too_large`), so the client learns why in the protocol's own
terms. Nothing of the oversized payload is read: after the close frame the server shuts
its side of the TCP connection, and the rest of the client's message is discarded.

**Keep-alive.** The server pings every ``ping_interval`` and, by default, websockets drops
a client whose pong takes longer than ``ping_timeout``. But a pong travels in the same
byte stream as the client's audio: a client sending faster than real time has its pong
queued behind audio the server has not read yet, because the server is busy with the
audio before it (it reads only as fast as it transcribes: back-pressure). Such a client
was dropped for the server's own backlog ("keepalive ping timeout" after ~40 s of 256 KiB-
1 MiB messages). Here a late pong is waited for as long as the session is making progress
(bytes arriving, messages read, inference finishing, events sent, each within the last
``ping_timeout``); a connection that makes none for ``ping_timeout`` after a ping is
closed with 1011 as before (a vanished client, or one that neither reads nor sends).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode
from websockets.protocol import State
from websockets.server import ServerProtocol

__all__ = ["SessionConnection"]


class SessionConnection(ServerConnection):
    """A :class:`~websockets.asyncio.server.ServerConnection` with the server's error for
    oversized messages and a keep-alive that a busy session does not fail."""

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, *args, **kwargs)
        #: the JSON text sent before websockets closes with 1009 for an oversized message
        #: (the endpoint's own error message; set when the upgrade picks the endpoint)
        self.too_large: str | None = None
        #: loop time of the last sign of progress (see the module docstring)
        self.last_progress = self.loop.time()
        self._protocol_fail = protocol.fail
        protocol.fail = self._fail  # type: ignore[method-assign]

    def _fail(self, code: CloseCode | int, reason: str = "") -> None:
        """websockets fails the connection; for an oversized message, say why first."""
        if (code == CloseCode.MESSAGE_TOO_BIG and self.too_large is not None
                and self.protocol.state is State.OPEN
                and not self.protocol.expect_continuation_frame):
            self.protocol.send_text(self.too_large.encode())
        self._protocol_fail(code, reason)

    def note_progress(self) -> None:
        """The session moved on (a job finished, an event went out)."""
        self.last_progress = self.loop.time()

    def data_received(self, data: bytes) -> None:
        """Bytes from the client: progress, whatever they hold."""
        self.last_progress = self.loop.time()
        super().data_received(data)

    async def recv(self, decode: bool | None = None) -> Any:
        """Read the next message (a message taken from the queue is progress)."""
        message = await super().recv(decode)
        self.last_progress = self.loop.time()
        return message

    async def send(self, message: Any, *, text: bool | None = None) -> None:
        """Send a message (once it is written, that is progress)."""
        await super().send(message, text=text)
        self.last_progress = self.loop.time()

    async def _close_dead(self) -> None:
        """Close with 1011; abort if even the close frame cannot be written."""
        try:
            async with asyncio.timeout(self.close_timeout or 1.0):
                await self.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        except TimeoutError:
            self.transport.abort()

    async def keepalive(self) -> None:
        """Ping every ``ping_interval``; close with 1011 when no pong came within
        ``ping_timeout`` and the session made no progress in that time either."""
        assert self.ping_interval is not None
        latency = 0.0
        try:
            while True:
                await asyncio.sleep(max(0.0, self.ping_interval - latency))
                if self.ping_timeout is None:
                    await self.ping()
                    continue
                pong: Awaitable[float] | None = None
                try:  # a client that reads nothing leaves the ping in the write buffer
                    async with asyncio.timeout(self.ping_timeout):
                        pong = await self.ping()
                except TimeoutError:
                    pass
                latency = 0.0
                while True:
                    if pong is not None:
                        done, _ = await asyncio.wait({asyncio.ensure_future(pong)},
                                                     timeout=self.ping_timeout)
                        if done:
                            latency = done.pop().result()
                            break
                    if self.loop.time() - self.last_progress >= self.ping_timeout:
                        self.logger.debug("- timed out waiting for keepalive pong")
                        await self._close_dead()
                        return
                    if pong is None:
                        break  # the ping is not even out, but the session moves: ping again
                    # else the pong is behind the session's own backlog: keep waiting
        except asyncio.CancelledError:
            raise
        except Exception:
            self.logger.error("keepalive ping failed", exc_info=True)
