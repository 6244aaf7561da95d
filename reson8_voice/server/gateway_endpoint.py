"""The embedded server's gateway endpoint: spec 002's JSON framing on the local engine.

Served at :data:`~reson8_voice.dialects.gateway.GATEWAY_PATH`. A session is the realtime
protocol of spec 000 in JSON clothes, driven by the same
:class:`~reson8_voice.engine.turn_engine.TranscriptEngine`:

- ``init`` first (within ``init_timeout_s``); its ``config`` becomes the realtime
  parameters (``enable_partials`` -> interim results); the answer is ``ready`` with a fresh
  ``session_id``. A bad config (a value out of range or of the wrong JSON type) is an
  ``invalid_config`` error naming the field.
- ``audio`` (base64) feeds the engine; ``finalize`` is a flush whose
  ``flush_confirmation`` carries a server-made id (``flush-001``, ...); ``keepalive`` is
  counted; ``close`` finishes the stream (the last finals are sent) and closes with 1000.
- Partials and finals carry ``confidence`` (mean word confidence); finals also ``language``
  and ``duration`` (s).

Errors are ``error`` messages followed by a close: ``auth_error`` (no or a wrong
``Authorization: Bearer`` key, when the server has one), ``invalid_world_part`` (an
``X-World-Part-Override`` other than those spec 002 lists), ``not_initialized``,
``invalid_config``, ``invalid_audio``, ``message_too_large``, ``session_time_limit``,
``internal_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.http11 import Request

from .._fields import decode_tagged
from ..auth import BearerToken, parse_auth, single_header
from ..dialects.gateway import (
    GATEWAY_PATH,
    WORLD_PART_HEADER,
    WORLD_PARTS,
    GatewayAudio,
    GatewayClose,
    GatewayErrorEvent,
    GatewayFinalize,
    GatewayFinalTranscript,
    GatewayFlushConfirmation,
    GatewayInit,
    GatewayKeepalive,
    GatewayPartialTranscript,
    GatewayReady,
    GatewayServerMessage,
    parse_gateway,
    serialize_gateway,
)
from ..engine.turn_engine import EndOfTurnJob, EngineConfig, Job, RecognizeJob, TranscriptEngine
from ..errors import InvalidRequest, RemoteProtocolError
from ..events import Event, FlushConfirmation, Transcript
from ..params import RealtimeParams
from .audio_input import AudioInput, UnsupportedAudio
from .connection import complain

if TYPE_CHECKING:
    from .app import ServerConfig

__all__ = ["EngineDriver", "FailReason", "GatewayEndpoint", "GatewaySession", "Infer"]

#: Runs one engine job off the event loop (the server's shared pool).
Infer = Callable[[Job], Awaitable[Any]]
FailReason = Literal["time_limit", "internal"]


class EngineDriver:
    """Runs a :class:`TranscriptEngine`'s jobs and hands its events on, in order.

    Also remembers the language of the latest recognition, which the realtime events do
    not carry but the gateway's and Scribe's finals do.
    """

    def __init__(self, engine: TranscriptEngine, infer: Infer,
                 language: str | None = None) -> None:
        self.engine = engine
        self._infer = infer
        self.language = language

    async def drain(self, emit: Callable[[Event], Awaitable[None]]) -> None:
        """Run every job the engine asks for and emit every event it has, until it waits."""
        while (item := self.engine.next()) is not None:
            if isinstance(item, RecognizeJob | EndOfTurnJob):
                result = await self._infer(item)
                detected = getattr(result, "language", None)
                if isinstance(detected, str) and detected:
                    self.language = detected
                self.engine.resolve(item, result)
            else:
                await emit(item)


def realtime_engine(config: EngineConfig, params: RealtimeParams, rate: int, *,
                    words: bool = True) -> TranscriptEngine:
    """A transcript engine for ``params`` (words, timings and confidences always computed
    when ``words``, so a dialect can derive its own fields from them)."""
    return TranscriptEngine(config, sample_rate=rate, language=params.language,
                            include_interim=params.include_interim,
                            include_words=words or params.include_words,
                            include_timestamps=words or params.include_timestamps,
                            include_confidence=words or params.include_confidence)


def _is_init(text: str | bytes) -> bool:
    """Whether ``text`` is a JSON object of type ``init`` (whatever its fields hold)."""
    try:
        return decode_tagged(text)[1] == "init"
    except RemoteProtocolError:
        return False


def _header(request: Request, name: str) -> str | None:
    value = single_header(request.headers, name)
    return value.strip() if value is not None else None


class GatewayEndpoint:
    """Accepts gateway sessions for :class:`~reson8_voice.server.Reson8Server`."""

    path = GATEWAY_PATH

    def __init__(self, config: ServerConfig, infer: Infer,
                 check_language: Callable[[str | None], None] | None = None) -> None:
        """Serve with the server's ``config`` (key, limits, engine) and inference pool;
        ``check_language`` raises ``InvalidRequest`` for a language the recogniser lacks."""
        self.config = config
        self.infer = infer
        self.check_language = check_language or (lambda language: None)
        self.init_timeout_s = 10.0
        #: per-endpoint counters (sessions, keepalives, finalizes), for operators and tests
        self.stats: dict[str, int] = {"sessions": 0, "keepalives": 0, "finalizes": 0,
                                      "audio_messages": 0, "closes": 0}

    def too_large_message(self) -> str:
        """The error sent before the 1009 close of a message over the size limit."""
        limit = self.config.max_message_bytes
        return serialize_gateway(GatewayErrorEvent(
            "message_too_large", f"messages are limited to {limit} bytes"))

    def session_for(self, request: Request) -> GatewaySession:
        """Check the upgrade's key and region; the verdict is delivered in the session."""
        error: tuple[str, str] | None = None
        if self.config.api_key is not None:
            credentials = parse_auth(request.headers)
            if not isinstance(credentials, BearerToken) or \
                    not self.config.api_key.matches(credentials.secret):
                error = ("auth_error", "Invalid or expired API key")
        world_part = _header(request, WORLD_PART_HEADER)
        if error is None and world_part is not None and world_part not in WORLD_PARTS:
            error = ("invalid_world_part", f"unknown world part {world_part[:20]!r}; "
                                           f"available: {', '.join(WORLD_PARTS)}")
        return GatewaySession(self, error)


class GatewaySession:
    """One gateway session on the local engine."""

    def __init__(self, endpoint: GatewayEndpoint, error: tuple[str, str] | None) -> None:
        self.endpoint = endpoint
        self._error = error
        self.session_id = "sess_" + secrets.token_hex(8)
        self._flushes = 0

    async def _send(self, ws: ServerConnection, message: GatewayServerMessage) -> None:
        await ws.send(serialize_gateway(message))

    async def fail(self, ws: ServerConnection, reason: FailReason, message: str) -> None:
        """Report a session-ending problem (time limit, internal error) and close."""
        code, close = ("session_time_limit", 1008) if reason == "time_limit" \
            else ("internal_error", 1011)
        await self._abort(ws, code, message, close)

    async def _abort(self, ws: ServerConnection, code: str, message: str, close: int) -> None:
        with contextlib.suppress(WsConnectionClosed):
            await self._send(ws, GatewayErrorEvent(code, message))
            await ws.close(close, message[:120])

    async def run(self, ws: ServerConnection) -> None:
        """Serve the session until ``close``, a fatal error or the client leaving."""
        endpoint = self.endpoint
        if self._error is not None:
            await self._abort(ws, *self._error, 1008)
            return
        endpoint.stats["sessions"] += 1
        try:
            async with asyncio.timeout(endpoint.init_timeout_s):
                first = await ws.recv()
        except TimeoutError:
            await self._abort(ws, "not_initialized", "no 'init' message", 1008)
            return
        try:
            message = parse_gateway(first)
        except RemoteProtocolError as exc:
            # an init whose config has a field of the wrong type is a bad config, not a
            # missing init
            if _is_init(first):
                await self._abort(ws, "invalid_config", str(exc), 1008)
            else:
                await self._abort(ws, "not_initialized", f"expected 'init': {exc}", 1008)
            return
        if not isinstance(message, GatewayInit):
            await self._abort(ws, "not_initialized", f"expected 'init', got "
                                                     f"{message.type!r}", 1008)
            return
        try:
            params = message.config.to_realtime_params()
            endpoint.check_language(params.language)
        except InvalidRequest as exc:
            await self._abort(ws, "invalid_config", str(exc), 1008)
            return
        await self._send(ws, GatewayReady(self.session_id))
        await self._stream(ws, params)

    async def _stream(self, ws: ServerConnection, params: RealtimeParams) -> None:
        # the raw encodings named in an encoding=auto error are the gateway's own (its
        # config is realtime's: pcm_s16le only), not AudioInput's default (turns' list)
        audio = AudioInput(params.encoding, params.sample_rate, params.channels,
                           params.raw_encodings())
        try:
            await self._stream_audio(ws, params, audio)
        finally:
            audio.close()  # stops an OGG/WebM demuxer thread

    async def _stream_audio(self, ws: ServerConnection, params: RealtimeParams,
                            audio: AudioInput) -> None:
        endpoint = self.endpoint
        driver: EngineDriver | None = None

        def ensure_driver() -> EngineDriver:
            nonlocal driver
            if driver is None:
                driver = EngineDriver(realtime_engine(endpoint.config.engine, params,
                                                      audio.output_rate),
                                      endpoint.infer, params.language)
            return driver

        async def emit(event: Event) -> None:
            await self._emit(ws, event, driver)

        async for raw in ws:
            if isinstance(raw, bytes):
                await self._send(ws, GatewayErrorEvent(
                    "invalid_message", "binary frames are not part of this protocol; send "
                                       "audio as base64 'audio' messages"))
                continue
            try:
                message = parse_gateway(raw)
            except RemoteProtocolError as exc:
                complain(ws, f"gateway session: bad client message: {exc}")
                await self._send(ws, GatewayErrorEvent("invalid_message", str(exc)[:200]))
                continue
            if isinstance(message, GatewayAudio):
                endpoint.stats["audio_messages"] += 1
                try:
                    pcm = audio.feed(message.decode())
                except RemoteProtocolError as exc:
                    await self._send(ws, GatewayErrorEvent("invalid_audio", str(exc)[:200]))
                    continue
                except UnsupportedAudio as exc:
                    await self._abort(ws, "invalid_audio", str(exc), 1003)
                    return
                if pcm:
                    ensure_driver().engine.feed(pcm)
            elif isinstance(message, GatewayFinalize):
                endpoint.stats["finalizes"] += 1
                self._flushes += 1
                flush_id = f"flush-{self._flushes:03d}"
                if driver is None and not audio.format_known:
                    # no audio yet: confirm without fixing the rate before the header
                    await self._send(ws, GatewayFlushConfirmation(flush_id))
                    continue
                ensure_driver().engine.flush(flush_id)
            elif isinstance(message, GatewayKeepalive):
                endpoint.stats["keepalives"] += 1
                continue
            elif isinstance(message, GatewayClose):
                endpoint.stats["closes"] += 1
                if driver is not None:
                    # the decoder's and resampler's tail (joins an OGG/WebM demuxer thread)
                    tail = await asyncio.to_thread(audio.finish)
                    if tail:
                        driver.engine.feed(tail)
                    driver.engine.end_of_stream()
                    await driver.drain(emit)
                await ws.close(1000, "closed by client")
                return
            else:
                complain(ws, f"gateway session: ignored client message {message.type!r}")
                continue
            if driver is not None:
                await driver.drain(emit)

    async def _emit(self, ws: ServerConnection, event: Event,
                    driver: EngineDriver | None) -> None:
        if isinstance(event, FlushConfirmation):
            await self._send(ws, GatewayFlushConfirmation(event.id))
        elif isinstance(event, Transcript):
            # spec 002's examples carry a confidence on partials as on finals
            confidences = [w.confidence for w in event.words or () if w.confidence is not None]
            confidence = round(sum(confidences) / len(confidences), 3) if confidences else None
            if not event.final:
                await self._send(ws, GatewayPartialTranscript(event.text, confidence))
                return
            duration = round(event.duration_ms / 1000, 3) if event.duration_ms is not None \
                else None
            language = driver.language if driver is not None else None
            await self._send(ws, GatewayFinalTranscript(event.text, confidence, language,
                                                        duration))


def engine_config_for(base: EngineConfig, **changes: Any) -> EngineConfig:
    """``base`` with ``changes`` (validated by :class:`EngineConfig`)."""
    return replace(base, **changes) if changes else base
