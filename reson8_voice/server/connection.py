"""The server's WebSocket connection: websockets' own, with two behaviours of the spec.

**Oversized messages.** ``max_size`` is the message limit itself, so websockets refuses an
oversized message from its frame header, before buffering any of its payload, whatever
length the header declares (a text message counts its UTF-8 bytes). It then closes with
1009; :class:`SessionConnection` first sends the endpoint's JSON error
(:attr:`SessionConnection.too_large`), so the client learns why in the protocol's own
terms. Nothing of the oversized payload is read: after the close frame the server shuts
its side of the TCP connection, and the rest of the client's message is discarded.

**Keep-alive.** A late pong is waited for as long as the session makes progress
(:mod:`reson8_voice._keepalive`); here inference finishing counts too
(:meth:`~reson8_voice._keepalive.ProgressKeepalive.note_progress`), since the server reads
a fast client's audio only as fast as it transcribes it.
"""

from __future__ import annotations

from typing import Any

from loguru import logger
from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode
from websockets.protocol import State
from websockets.server import ServerProtocol

from .._keepalive import ProgressKeepalive

__all__ = ["SessionConnection", "complain", "complaints_summary"]

#: a client's bad messages logged one by one; after these, only the 10th, 100th, ...
_COMPLAINTS_IN_FULL = 3


class SessionConnection(ProgressKeepalive, ServerConnection):
    """A :class:`~websockets.asyncio.server.ServerConnection` with the server's error for
    oversized messages and a keep-alive that a busy session does not fail."""

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, *args, **kwargs)
        #: the JSON text sent before websockets closes with 1009 for an oversized message
        #: (the endpoint's own error message; set when the upgrade picks the endpoint)
        self.too_large: str | None = None
        #: bad messages from this client (see :func:`complain`)
        self.complaints = 0
        self._protocol_fail = protocol.fail
        protocol.fail = self._fail  # type: ignore[method-assign]

    def _fail(self, code: CloseCode | int, reason: str = "") -> None:
        """websockets fails the connection; for an oversized message, say why first."""
        if (code == CloseCode.MESSAGE_TOO_BIG and self.too_large is not None
                and self.protocol.state is State.OPEN
                and not self.protocol.expect_continuation_frame):
            self.protocol.send_text(self.too_large.encode())
        self._protocol_fail(code, reason)


def complain(ws: ServerConnection, text: str) -> None:
    """Log a warning about a bad client message, throttled per session: the first few
    in full, then only the 10th, 100th, 1000th, ... with the count (one client sent 5,000
    in half a second, a warning each); :func:`complaints_summary` gives the total."""
    if not isinstance(ws, SessionConnection):
        logger.warning(text)
        return
    ws.complaints += 1
    n = ws.complaints
    if n <= _COMPLAINTS_IN_FULL:
        logger.warning(text)
    elif str(n).rstrip("0") == "1":  # 10, 100, 1000, ...
        logger.warning(f"{text} ({n} bad messages from this client so far; the others since "
                       f"the first {_COMPLAINTS_IN_FULL} were not logged)")


def complaints_summary(ws: ServerConnection, label: str) -> None:
    """At the session's end: how many bad messages it had, if some were not logged."""
    if isinstance(ws, SessionConnection) and ws.complaints > _COMPLAINTS_IN_FULL:
        logger.warning(f"{label}: the client sent {ws.complaints} bad messages in all")
