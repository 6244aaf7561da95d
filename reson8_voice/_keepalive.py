"""A WebSocket keep-alive that a busy connection does not fail, for both ends.

websockets pings every ``ping_interval`` and drops the peer if its pong takes longer than
``ping_timeout``. But a ping and its pong travel in the same byte streams as the data: a
peer that sends audio faster than the other end processes it has its ping (or the other's
pong) queued behind that audio, and a healthy connection was dropped for its own backlog
("keepalive ping timeout": the embedded server after ~40 s of 256 KiB-1 MiB messages, the
client after 67-134 s of a file streamed at full speed). Here a late pong is waited for as
long as the connection makes progress, each sign within the last ``ping_timeout``:

* bytes arriving, messages read, messages written (a send returns once the peer has made
  room for it);
* the peer acknowledging bytes already written: asyncio's write buffer plus, on Linux, the
  kernel's send queue (``SIOCOUTQ``: bytes the peer's TCP has not acknowledged) going down.
  This is the sign of a quiet peer reading a large message, or a backlog left queued after
  the last send; a peer that stops reading stops acknowledging once its receive buffer is
  full. Elsewhere only asyncio's buffer is seen.

One that makes none for ``ping_timeout`` after a ping is closed with 1011 as before (a
vanished peer, or one that neither reads nor sends). While it waits it goes on pinging,
twice per ``min(ping_interval, ping_timeout)``: the other end may be waiting too, for a
pong queued behind the same backlog, and a peer with nothing else to say is heard only
through these pings (a client that has sent a whole file and waits for a quiet server's
results). At half its own timeout they reach an end configured alike well within its
timeout; every ``ping_interval`` would race it.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
from collections.abc import Awaitable
from typing import Any

from websockets.asyncio.connection import Connection
from websockets.frames import CloseCode

__all__ = ["ProgressKeepalive"]

if sys.platform == "linux":
    import fcntl
    import termios

    def _kernel_unacknowledged(fd: int) -> int | None:
        """Bytes in the socket's send queue not yet acknowledged by the peer."""
        try:
            queued = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")  # == SIOCOUTQ
        except OSError:
            return None
        return int(struct.unpack("i", queued)[0])
else:
    def _kernel_unacknowledged(fd: int) -> int | None:
        return None


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
        """Bytes from the peer: progress, whatever they hold."""
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

    def _unacknowledged(self) -> int | None:
        """Bytes written that the peer has not acknowledged yet (None when the connection
        has no transport or socket to ask)."""
        try:
            buffered = self.transport.get_write_buffer_size()
        except (AttributeError, RuntimeError):
            return None
        sock = self.transport.get_extra_info("socket")
        kernel = None
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                kernel = _kernel_unacknowledged(sock.fileno())
        return buffered + (kernel or 0)

    def _check_acknowledged(self, before: int | None) -> int | None:
        """Count the peer acknowledging data since ``before`` (an :meth:`_unacknowledged`
        of earlier) as progress; returns the count now, for the next check."""
        now = self._unacknowledged()
        if before is not None and now is not None and now < before:
            self.last_progress = self.loop.time()
        return now

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

    async def _ping(self) -> Awaitable[float] | None:
        """Send a ping; None if it could not be written within ``ping_timeout`` (a peer
        that reads nothing leaves it in the write buffer)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.ping_timeout):
                return await self.ping()
        return None

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
                unacknowledged = self._unacknowledged()
                first = self.loop.time()
                pong = await self._ping()
                latency = 0.0
                step = min(self.ping_interval, self.ping_timeout) / 2
                while True:
                    if pong is not None:
                        done, _ = await asyncio.wait({asyncio.ensure_future(pong)},
                                                     timeout=step)
                        if done:
                            latency = done.pop().result()
                            break
                    unacknowledged = self._check_acknowledged(unacknowledged)
                    now = self.loop.time()
                    if min(now - first, now - self.last_progress) >= self.ping_timeout:
                        self.logger.debug("- timed out waiting for keepalive pong")
                        await self._close_dead()
                        return
                    if pong is None:
                        break  # the ping is not even out, but the session moves: ping again
                    # else the pong is behind the session's own backlog: keep waiting, and
                    # keep pinging (a pong for a later ping answers this one too)
                    await self._ping()
        except asyncio.CancelledError:
            raise
        except Exception:
            self.logger.error("keepalive ping failed", exc_info=True)
