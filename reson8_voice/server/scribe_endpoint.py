"""The embedded server's Scribe endpoint: ElevenLabs Scribe realtime (spec 004), locally.

Served at ``/elevenlabs`` + ``/v1/speech-to-text/realtime`` (the Reson8 realtime endpoint
already owns the bare path), on the same
:class:`~reson8_voice.engine.turn_engine.TranscriptEngine` as the realtime endpoint:

- The handshake's query is :class:`~reson8_voice.dialects.scribe.ScribeParams`
  (``model_id`` required); auth is the ``xi-api-key`` header or the ``token`` query
  parameter, checked against the server's key when it has one. The first message is
  ``session_started`` with a fresh ``session_id`` and the session's ``config``.
- ``input_audio_chunk`` audio (base64, in ``audio_format``) feeds the engine; partial
  transcripts follow the speech.
- ``commit_strategy=manual``: finished segments are held (shown in partials) until the
  client sends a chunk with ``commit: true``; then the buffered audio is finalised and one
  ``committed_transcript`` carries everything since the previous commit (its text may be
  empty when nothing was said).
- ``commit_strategy=vad``: the server commits at each segment end; the segmenter follows
  the VAD parameters: ``vad_silence_threshold_secs`` is the silence that ends a segment,
  ``min_speech_duration_ms`` the voiced run that starts one, ``vad_threshold`` picks the
  VAD's aggressiveness (< 0.25: 0, < 0.4: 1, < 0.65: 2, else 3). ``min_silence_duration_ms``
  is validated but has no separate knob in this segmenter.
- ``language_code`` may be ISO 639-1 or 639-3 (spec 004): a 639-3 code is checked and
  recognised as its 639-1 form (``eng`` -> ``en``); ``session_started`` echoes it as sent.
- With ``include_timestamps`` or ``include_language_detection`` each commit is followed by
  ``committed_transcript_with_timestamps`` (words with ``start``/``end`` in seconds, and
  ``spacing`` items between them; ``language_code``).
- ``keyterms`` are validated (at most 50, 20 characters each) but do not bias the local
  recogniser; ``no_verbatim`` and ``enable_logging`` are accepted.

Errors are typed error messages followed by a close: ``auth_error``, ``input_error`` (bad
parameters), ``chunk_size_exceeded`` (a message over the size limit),
``insufficient_audio_activity`` (no chunk for ``idle_timeout_s``, when set),
``session_time_limit_exceeded`` and ``transcriber_error``. A malformed chunk is an
``input_error`` that does not end the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.http11 import Request

from ..auth import single_header
from ..dialects.scribe import (
    SCRIBE_PATH,
    ScribeAudioChunk,
    ScribeCommittedTranscript,
    ScribeCommittedTranscriptWithTimestamps,
    ScribeErrorEvent,
    ScribeParams,
    ScribePartialTranscript,
    ScribeServerMessage,
    ScribeSessionStarted,
    ScribeWord,
    parse_scribe,
    serialize_scribe,
)
from ..engine.turn_engine import EngineConfig, TranscriptEngine
from ..errors import InvalidRequest, RemoteProtocolError
from ..events import Event, FlushConfirmation, Transcript, Word
from .audio_input import AudioInput, UnsupportedAudio
from .connection import complain
from .gateway_endpoint import EngineDriver, FailReason, Infer, engine_config_for

if TYPE_CHECKING:
    from .app import ServerConfig

__all__ = ["SCRIBE_EMBEDDED_PATH", "SCRIBE_PREFIX", "ScribeEndpoint", "ScribeSession"]

#: Where the embedded server serves Scribe: a prefix before the documented path.
SCRIBE_PREFIX = "/elevenlabs"
SCRIBE_EMBEDDED_PATH = SCRIBE_PREFIX + SCRIBE_PATH
_COMMIT = "commit"


def _aggressiveness(vad_threshold: float) -> int:
    if vad_threshold < 0.25:
        return 0
    if vad_threshold < 0.4:
        return 1
    return 2 if vad_threshold < 0.65 else 3


class ScribeEndpoint:
    """Accepts Scribe sessions for :class:`~reson8_voice.server.Reson8Server`."""

    path = SCRIBE_EMBEDDED_PATH

    def __init__(self, config: ServerConfig, infer: Infer,
                 check_language: Callable[[str | None], None] | None = None) -> None:
        """Serve with the server's ``config`` (key, limits, engine) and inference pool;
        ``check_language`` raises ``InvalidRequest`` for a language the recogniser lacks."""
        self.config = config
        self.infer = infer
        self.check_language = check_language or (lambda language: None)
        #: end a session that sends no chunk for this long (None: never), like the hosted
        #: service's insufficient_audio_activity
        self.idle_timeout_s: float | None = None
        self.stats: dict[str, int] = {"sessions": 0, "chunks": 0, "commits": 0}

    def too_large_message(self) -> str:
        """The error sent before the 1009 close of a message over the size limit."""
        limit = self.config.max_message_bytes
        return serialize_scribe(ScribeErrorEvent(
            "chunk_size_exceeded", f"messages are limited to {limit} bytes"))

    def session_for(self, request: Request) -> ScribeSession:
        """Check the key and parse the parameters; the verdict is delivered in the session."""
        query = urlsplit(request.path).query
        pairs = parse_qsl(query, keep_blank_values=True)
        error: tuple[str, str] | None = None
        key = self.config.api_key
        if key is not None:
            # spec 004: a valid key in the xi-api-key header *or* a valid token in the
            # query; with a token "xi-api-key is no longer required", so a stray (empty or
            # stale) header does not refuse a valid token
            header = single_header(request.headers, "xi-api-key")
            token = next((v for k, v in pairs if k == "token"), None)
            offered = [c for c in (header.strip() if header else None, token) if c]
            if not any([key.matches(c) for c in offered]):
                error = ("auth_error", "invalid or missing API key or token")
        params: ScribeParams | None = None
        if error is None:
            try:
                params = ScribeParams.from_query(pairs)
            except InvalidRequest as exc:
                error = ("input_error", str(exc))
            else:
                try:  # an ISO 639-3 code is checked (and recognised) as its 639-1 form
                    self.check_language(params.language)
                except InvalidRequest as exc:
                    error = ("input_error", str(InvalidRequest(
                        "language_code", _as_sent(exc.reason, params))))
        return ScribeSession(self, params, error)

    def engine_config(self, params: ScribeParams) -> EngineConfig:
        """The segmenter settings for a session's commit strategy and VAD parameters."""
        base = self.config.engine
        if params.commit_strategy != "vad":
            return base
        changes: dict[str, Any] = {
            "segment_silence_ms": round(1000 * (params.vad_silence_threshold_secs or 1.5)),
        }
        if params.vad_threshold is not None:
            changes["vad_aggressiveness"] = _aggressiveness(params.vad_threshold)
        if params.min_speech_duration_ms is not None:
            changes["speech_start_ms"] = params.min_speech_duration_ms
        return engine_config_for(base, **changes)


def _as_sent(reason: str, params: ScribeParams) -> str:
    """A language refusal quoting ``language_code`` as the client sent it (not the 639-1
    form that was checked)."""
    sent, checked = params.language_code, params.language
    if sent is None or checked is None or sent == checked:
        return reason
    return reason.replace(repr(checked[:40]), f"{sent[:40]!r} ({checked[:40]!r})", 1)


def _words(words: tuple[Word, ...]) -> tuple[ScribeWord, ...]:
    out: list[ScribeWord] = []
    for word in words:
        start = (word.start_ms or 0.0) / 1000
        end = start + (word.duration_ms or 0.0) / 1000
        if out:
            out.append(ScribeWord(" ", out[-1].end, start, "spacing"))
        logprob = round(math.log(max(word.confidence, 1e-6)), 4) \
            if word.confidence is not None else None
        out.append(ScribeWord(word.text, round(start, 3), round(end, 3), "word",
                              logprob=logprob))
    return tuple(out)


class ScribeSession:
    """One Scribe session on the local engine."""

    def __init__(self, endpoint: ScribeEndpoint, params: ScribeParams | None,
                 error: tuple[str, str] | None) -> None:
        self.endpoint = endpoint
        self.params = params
        self._error = error
        self.session_id = secrets.token_hex(16)
        self._pending: list[Transcript] = []  # finished, uncommitted segments (manual)

    async def _send(self, ws: ServerConnection, message: ScribeServerMessage) -> None:
        await ws.send(serialize_scribe(message))

    async def _abort(self, ws: ServerConnection, kind: str, message: str, close: int) -> None:
        with contextlib.suppress(WsConnectionClosed):
            await self._send(ws, ScribeErrorEvent(kind, message))
            await ws.close(close, message[:120])

    async def fail(self, ws: ServerConnection, reason: FailReason, message: str) -> None:
        """Report a session-ending problem (time limit, internal error) and close."""
        if reason == "time_limit":
            await self._abort(ws, "session_time_limit_exceeded", message, 1008)
        else:
            await self._abort(ws, "transcriber_error", message, 1011)

    def _config(self, params: ScribeParams) -> dict[str, Any]:
        config: dict[str, Any] = {
            "sample_rate": params.sample_rate, "audio_format": params.audio_format,
            "model_id": params.model_id, "vad_commit_strategy": params.commit_strategy,
            "include_timestamps": params.include_timestamps,
            "disable_logging": params.enable_logging is False,
        }
        if params.language_code is not None:
            config["language_code"] = params.language_code
        if params.commit_strategy == "vad":
            engine = self.endpoint.engine_config(params)
            config["vad_silence_threshold_secs"] = engine.segment_silence_ms / 1000
            config["min_speech_duration_ms"] = engine.speech_start_ms
            for name in ("vad_threshold", "min_silence_duration_ms"):
                if getattr(params, name) is not None:
                    config[name] = getattr(params, name)
        return config

    async def run(self, ws: ServerConnection) -> None:
        """Serve the session until the client leaves or a fatal error."""
        if self._error is not None or self.params is None:
            kind, text = self._error or ("input_error", "bad parameters")
            await self._abort(ws, kind, text, 1008)
            return
        params = self.params
        endpoint = self.endpoint
        endpoint.stats["sessions"] += 1
        await self._send(ws, ScribeSessionStarted(self.session_id, self._config(params)))
        audio = AudioInput(params.encoding, params.sample_rate, 1)
        engine = TranscriptEngine(endpoint.engine_config(params), sample_rate=audio.output_rate,
                                  language=params.language, include_interim=True,
                                  include_words=True, include_timestamps=True,
                                  include_confidence=True)
        driver = EngineDriver(engine, endpoint.infer, params.language)

        async def emit(event: Event) -> None:
            await self._emit(ws, params, driver, event)

        while True:
            try:
                async with asyncio.timeout(endpoint.idle_timeout_s):
                    raw = await ws.recv()
            except TimeoutError:
                await self._abort(ws, "insufficient_audio_activity",
                                  f"no audio for {endpoint.idle_timeout_s:g} s", 1008)
                return
            except WsConnectionClosed:
                return
            if isinstance(raw, bytes):
                await self._send(ws, ScribeErrorEvent(
                    "input_error", "send audio as input_audio_chunk JSON messages"))
                continue
            try:
                parsed = parse_scribe(raw)
                if not isinstance(parsed, ScribeAudioChunk):
                    got = getattr(parsed, "message_type", None) or getattr(parsed, "type", "")
                    raise RemoteProtocolError(f"expected input_audio_chunk, got {got!r}")
                message = parsed
                data = message.decode()
            except RemoteProtocolError as exc:
                complain(ws, f"scribe session: bad client message: {exc}")
                await self._send(ws, ScribeErrorEvent("input_error", str(exc)[:200]))
                continue
            if message.sample_rate is not None and message.sample_rate != params.sample_rate:
                await self._send(ws, ScribeErrorEvent(
                    "input_error", f"chunk sample_rate {message.sample_rate} does not match "
                                   f"audio_format {params.audio_format}"))
                continue
            endpoint.stats["chunks"] += 1
            try:
                pcm = audio.feed(data)
            except UnsupportedAudio as exc:
                await self._abort(ws, "input_error", str(exc), 1003)
                return
            if pcm:
                engine.feed(pcm)
            if message.commit:
                endpoint.stats["commits"] += 1
                engine.flush(_COMMIT)
            await driver.drain(emit)

    async def _emit(self, ws: ServerConnection, params: ScribeParams, driver: EngineDriver,
                    event: Event) -> None:
        manual = params.commit_strategy == "manual"
        if isinstance(event, Transcript):
            if not event.final:
                held = [t.text for t in self._pending] if manual else []
                await self._send(ws, ScribePartialTranscript(" ".join([*held, event.text])))
            elif manual:
                self._pending.append(event)
                await self._send(ws, ScribePartialTranscript(
                    " ".join(t.text for t in self._pending)))
            else:
                await self._commit(ws, params, driver, [event])
        elif isinstance(event, FlushConfirmation) and event.id == _COMMIT:
            if manual or self._pending:
                segments, self._pending = self._pending, []
                await self._commit(ws, params, driver, segments)

    async def _commit(self, ws: ServerConnection, params: ScribeParams, driver: EngineDriver,
                      segments: list[Transcript]) -> None:
        text = " ".join(t.text for t in segments if t.text)
        await self._send(ws, ScribeCommittedTranscript(text))
        if params.include_timestamps or params.include_language_detection:
            words = _words(tuple(w for t in segments for w in t.words or ())) \
                if params.include_timestamps else None
            language = (driver.language or "en") if params.include_language_detection else None
            await self._send(ws, ScribeCommittedTranscriptWithTimestamps(text, language, words))
