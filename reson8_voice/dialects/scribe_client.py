"""A thin async client for ElevenLabs Scribe realtime (spec 004), on websockets.

    conn = await connect_scribe("wss://api.elevenlabs.io", ScribeParams(...), api_key="...")
    await conn.send_audio(pcm)        # an input_audio_chunk, base64
    await conn.commit()               # manual strategy: -> committed_transcript
    async for message in conn: ...

:func:`connect_scribe` returns once ``session_started`` arrived (its ``session_id`` and
``config`` are on the connection); an error message instead raises its typed exception
(:class:`~reson8_voice.dialects.scribe.ScribeAuthError` and friends). Auth: the API key in
the ``xi-api-key`` header, or a single-use ``token`` in the query (for browsers).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.exceptions import InvalidStatus

from ..auth import Secret, redact, redact_url
from ..client import MessageStream, _closed, _rejection, open_websocket
from ..errors import ConnectionClosed, Reson8Error
from ..params import split_ws_url
from .scribe import (
    SCRIBE_PATH,
    ScribeAudioChunk,
    ScribeAuthError,
    ScribeErrorEvent,
    ScribeMessage,
    ScribeParams,
    ScribeRateLimitedError,
    ScribeSessionStarted,
    parse_scribe,
    serialize_scribe,
)

__all__ = ["ScribeConnection", "connect_scribe", "scribe_url"]


def scribe_url(base_url: str, params: ScribeParams, token: Secret | None = None) -> str:
    """The handshake URL: ``base_url`` (origin or full URL) + :data:`SCRIBE_PATH` + query."""
    parts = split_ws_url(base_url)
    path = parts.path.rstrip("/")
    if not path.endswith(SCRIBE_PATH):
        path += SCRIBE_PATH
    pairs = params.to_query_pairs()
    if token is not None:
        pairs.append(("token", token.reveal()))
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(pairs), ""))


class ScribeConnection(MessageStream[ScribeMessage]):
    """One open Scribe session (after ``session_started``). Iterate it for messages."""

    _peer = "Scribe"

    def __init__(self, ws: ClientConnection, params: ScribeParams, started: ScribeSessionStarted,
                 url: str) -> None:
        self._ws = ws
        self.params = params
        self.session_id = started.session_id
        self.config: Mapping[str, Any] = started.config
        self.url = url
        self._first = True

    def __repr__(self) -> str:
        return f"<ScribeConnection {self.url.split('?')[0]} session={self.session_id}>"

    async def send(self, message: ScribeAudioChunk) -> None:
        """Send one client message."""
        await self._send(serialize_scribe(message))

    async def send_audio(self, audio: bytes, *, commit: bool = False,
                         previous_text: str | None = None) -> None:
        """Send audio (in the session's ``audio_format``) as an ``input_audio_chunk``.

        ``previous_text`` (context) is only sent with the session's first chunk.
        """
        context = previous_text if self._first else None
        self._first = False
        await self.send(ScribeAudioChunk.of(audio, commit=commit,
                                            sample_rate=self.params.sample_rate,
                                            previous_text=context))

    async def commit(self) -> None:
        """Commit the segment (manual strategy): an empty chunk with ``commit: true``."""
        await self.send_audio(b"", commit=True)

    def _parse(self, text: str) -> ScribeMessage:
        return parse_scribe(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection."""
        await self._ws.close(code, reason)

    async def __aenter__(self) -> ScribeConnection:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


def _http_rejection(exc: InvalidStatus) -> Reson8Error:
    status = exc.response.status_code
    body = (exc.response.body or b"").decode("utf-8", "replace")[:200]
    if status in (401, 403):
        return ScribeAuthError(body or f"HTTP {status}")
    if status == 429:
        return ScribeRateLimitedError(body or "HTTP 429")
    return _rejection(exc)


async def connect_scribe(
    url: str,
    params: ScribeParams | None = None,
    api_key: str | Secret | None = None,
    *,
    token: str | Secret | None = None,
    allow_insecure: bool = False,
    open_timeout: float = 10.0,
    start_timeout: float = 10.0,
    ping_interval: float | None = 20.0,
    ping_timeout: float | None = 20.0,
    ssl_context: ssl.SSLContext | None = None,
    **ws_options: Any,
) -> ScribeConnection:
    """Open a Scribe realtime session and wait for ``session_started``.

    Args:
        url: The origin (``wss://api.elevenlabs.io``), or a base URL with a path prefix
            (the embedded server's ``.../elevenlabs``), or the full endpoint URL.
        params: The query parameters (model, format, commit strategy, VAD, keyterms...).
        api_key: Sent in the ``xi-api-key`` header.
        token: A single-use token, sent as the ``token`` query parameter instead.
        allow_insecure: Permit a credential over plain ``ws://`` to a non-loopback host.
        open_timeout: Seconds for the upgrade.
        start_timeout: Seconds to wait for ``session_started``.
        ping_interval: WebSocket ping interval (None disables).
        ping_timeout: WebSocket ping timeout.
        ssl_context: TLS settings for ``wss``.
        **ws_options: Passed to ``websockets.connect``.

    Raises:
        ScribeError: the server answered with an error message (typed), or refused the
            upgrade with 401/403 (:class:`ScribeAuthError`) or 429
            (:class:`ScribeRateLimitedError`).
        HandshakeError: another HTTP rejection.
        InvalidRequest: bad URL, or a credential over insecure ``ws://``.
        ConnectionClosed: unreachable, or closed before ``session_started``.
    """
    params = params or ScribeParams()
    key = Secret(api_key) if isinstance(api_key, str) else api_key
    tok = Secret(token) if isinstance(token, str) else token
    full_url = scribe_url(url, params, tok)
    headers = {"xi-api-key": key.reveal()} if key is not None else {}
    ws = await open_websocket(full_url, headers, (key, tok), rejection=_http_rejection,
                              allow_insecure=allow_insecure, open_timeout=open_timeout,
                              ping_interval=ping_interval, ping_timeout=ping_timeout,
                              ssl_context=ssl_context, **ws_options)
    try:
        async with asyncio.timeout(start_timeout):
            while True:
                try:
                    raw = await ws.recv()
                except WsConnectionClosed as exc:
                    raise _closed(exc) from None
                if isinstance(raw, bytes):
                    continue
                message = parse_scribe(redact(raw, key, tok))  # a server may echo them
                if isinstance(message, ScribeSessionStarted):
                    return ScribeConnection(ws, params, message, redact_url(full_url))
                if isinstance(message, ScribeErrorEvent):
                    raise message.exception()
    except TimeoutError:
        await ws.close(1000, "no session_started")
        raise ConnectionClosed(None, f"no 'session_started' within {start_timeout:g} s") \
            from None
    except BaseException:
        await ws.close(1000)
        raise
