"""A WebSocket keep-alive that a busy connection does not fail, for both ends.

websockets pings every ``ping_interval`` and drops the peer if its pong takes longer than
``ping_timeout``. But a ping and its pong travel in the same byte streams as the data: a
peer that sends audio faster than the other end processes it has its ping (or the other's
pong) queued behind that audio, and a healthy connection was dropped for its own backlog
("keepalive ping timeout": the embedded server after ~40 s of 256 KiB-1 MiB messages, the
client after 67-134 s of a file streamed at full speed). Here a late pong is waited for as
long as the connection makes progress (bytes arriving, messages read, messages written,
each within the last ``ping_timeout``); one that makes none for ``ping_timeout`` after a
ping is closed with 1011 as before (a vanished peer, or one that neither reads nor sends).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from websockets.asyncio.connection import Connection
from websockets.frames import CloseCode

__all__ = ["ProgressKeepalive"]


class ProgressKeepalive(Connection):
    """Mixin for a websockets asyncio connection class (list it first among the bases)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: loop time of the last sign of progress (see the module docstring)
        self.last_progress = self.loop.time()

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
        """Close with 1011; abort if even the close frame cannot be written (at once when
        unsent data is still waiting: the close frame would only queue behind it)."""
        if self.transport.get_write_buffer_size():
            self.transport.abort()
            return
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
