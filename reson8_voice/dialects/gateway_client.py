"""A thin async client for the gateway framing of Reson8 realtime (spec 002), on websockets.

    conn = await connect_gateway("wss://api.slng.ai", GatewayConfig(...), api_key="...")
    await conn.send_audio(pcm)        # an ``audio`` message, base64
    await conn.finalize()             # -> final_transcript(s), then flush_confirmation
    async for message in conn: ...

:func:`connect_gateway` sends ``init`` and returns once ``ready`` arrived (its
``session_id`` is on the connection); an ``error`` instead of ``ready`` raises the typed
:class:`~reson8_voice.dialects.gateway.GatewayServiceError`. Policy-free: reconnection and
buffering belong to the pipecat service.
"""

from __future__ import annotations

import asyncio
import ssl
from types import TracebackType
from typing import Any
from urllib.parse import urlunsplit

from websockets.asyncio.client import ClientConnection

from ..auth import Secret, redact_url
from ..client import MessageStream, open_websocket
from ..errors import ConnectionClosed, InvalidRequest
from ..params import split_ws_url
from .gateway import (
    GATEWAY_PATH,
    WORLD_PART_HEADER,
    WORLD_PARTS,
    GatewayAudio,
    GatewayClientMessage,
    GatewayClose,
    GatewayConfig,
    GatewayErrorEvent,
    GatewayFinalize,
    GatewayInit,
    GatewayKeepalive,
    GatewayMessage,
    GatewayReady,
    parse_gateway,
    serialize_gateway,
)

__all__ = ["GatewayConnection", "connect_gateway", "gateway_url"]


def gateway_url(base_url: str) -> str:
    """``base_url`` (an origin, or the full endpoint URL) joined with :data:`GATEWAY_PATH`."""
    parts = split_ws_url(base_url)
    path = parts.path.rstrip("/")
    if not path.endswith(GATEWAY_PATH):
        path += GATEWAY_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class GatewayConnection(MessageStream[GatewayMessage]):
    """One open gateway session (after ``ready``). Iterate it for server messages."""

    _peer = "the gateway"

    def __init__(self, ws: ClientConnection, config: GatewayConfig, session_id: str,
                 url: str) -> None:
        self._ws = ws
        self.config = config
        self.session_id = session_id
        self.url = url

    def __repr__(self) -> str:
        return f"<GatewayConnection {self.url} session={self.session_id}>"

    async def send(self, message: GatewayClientMessage) -> None:
        """Send one client message."""
        await self._send(serialize_gateway(message))

    async def send_audio(self, audio: bytes) -> None:
        """Send audio (encoded as the session's ``config.encoding``) as an ``audio`` message."""
        if not audio:
            return
        await self.send(GatewayAudio.of(audio))

    async def finalize(self) -> None:
        """Ask the server to finalise buffered audio; a ``flush_confirmation`` follows."""
        await self.send(GatewayFinalize())

    async def keepalive(self) -> None:
        """Keep the session alive while no audio flows."""
        await self.send(GatewayKeepalive())

    async def send_close(self) -> None:
        """End the audio stream; the server sends what is left, then closes."""
        await self.send(GatewayClose())

    def _parse(self, text: str) -> GatewayMessage:
        return parse_gateway(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send ``close`` (if the socket is still open) and close the connection."""
        try:
            await self.send_close()
        except ConnectionClosed:
            pass
        await self._ws.close(code, reason)

    async def __aenter__(self) -> GatewayConnection:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


async def connect_gateway(
    url: str,
    config: GatewayConfig | None = None,
    api_key: str | Secret | None = None,
    *,
    world_part: str | None = None,
    allow_insecure: bool = False,
    open_timeout: float = 10.0,
    ready_timeout: float = 10.0,
    ping_interval: float | None = 20.0,
    ping_timeout: float | None = 20.0,
    ssl_context: ssl.SSLContext | None = None,
    **ws_options: Any,
) -> GatewayConnection:
    """Open a gateway session: upgrade, ``init``, wait for ``ready``.

    Args:
        url: The gateway origin (``wss://api.slng.ai``) or the full endpoint URL.
        config: The recognition config sent in ``init`` (default: pcm_s16le 16 kHz mono).
        api_key: The gateway key, sent as ``Authorization: Bearer``.
        world_part: Pin the region (``X-World-Part-Override``; spec 002 lists ``eu``);
            None lets the gateway choose.
        allow_insecure: Permit the key over plain ``ws://`` to a non-loopback host.
        open_timeout: Seconds for the upgrade.
        ready_timeout: Seconds to wait for ``ready`` after ``init``.
        ping_interval: WebSocket ping interval (None disables).
        ping_timeout: WebSocket ping timeout.
        ssl_context: TLS settings for ``wss``.
        **ws_options: Passed to ``websockets.connect``.

    Raises:
        InvalidRequest: bad URL, world part or config, or a key over insecure ``ws://``.
        GatewayServiceError: the gateway answered ``init`` with an ``error`` (typed:
            :class:`GatewayAuthError` for ``auth_error``).
        HandshakeError: the upgrade was refused with an HTTP status.
        ConnectionClosed: unreachable, or closed before ``ready``.
    """
    config = config or GatewayConfig(encoding="pcm_s16le", sample_rate=16000, channels=1)
    config.to_realtime_params()  # refuse a bad config before connecting
    full_url = gateway_url(url)
    secret = Secret(api_key) if isinstance(api_key, str) else api_key
    headers: dict[str, str] = {}
    if secret is not None:
        headers["Authorization"] = f"Bearer {secret.reveal()}"
    if world_part is not None:
        if world_part not in WORLD_PARTS:
            raise InvalidRequest("world_part", f"must be one of {', '.join(WORLD_PARTS)}, "
                                               f"got {world_part!r}")
        headers[WORLD_PART_HEADER] = world_part
    ws = await open_websocket(full_url, headers, (secret,), allow_insecure=allow_insecure,
                              open_timeout=open_timeout, ping_interval=ping_interval,
                              ping_timeout=ping_timeout, ssl_context=ssl_context, **ws_options)
    conn = GatewayConnection(ws, config, "", redact_url(full_url))
    try:
        try:
            await conn.send(GatewayInit(config))
        except ConnectionClosed:
            pass  # refused at once: the reason is in the messages already received
        async with asyncio.timeout(ready_timeout):
            while True:
                message = await conn.recv()
                if isinstance(message, GatewayReady):
                    conn.session_id = message.session_id
                    return conn
                if isinstance(message, GatewayErrorEvent):
                    raise message.exception()
    except TimeoutError:
        await ws.close(1000, "no ready")
        raise ConnectionClosed(None, f"no 'ready' within {ready_timeout:g} s") from None
    except BaseException:
        await ws.close(1000)
        raise
