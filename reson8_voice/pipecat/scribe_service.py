"""``ScribeRealtimeSTTService``: ElevenLabs Scribe realtime (spec 004) with Reson8's turns.

A drop-in for pipecat's ``ElevenLabsRealtimeSTTService`` that gives the pipeline the same
turn frames as the Reson8 services (see :mod:`reson8_voice.pipecat._vad_stt`):

- ``commit_strategy="manual"`` (default): the local VAD proposes the turn's start; at the
  local end of speech the service commits (an empty ``input_audio_chunk`` with
  ``commit: true``) and the utterance ends when the ``committed_transcript`` answering that
  commit has been pushed as the final ``TranscriptionFrame``.
- ``commit_strategy="vad"``: the server's commit is the end of the utterance (the
  ``vad_*`` parameters tune it); the local VAD still gives barge-in at once.

Partials -> ``InterimTranscriptionFrame``. With ``include_timestamps`` or
``include_language_detection`` the final is ``committed_transcript_with_timestamps``
(words, detected language) and the plain ``committed_transcript`` is skipped, as the server
sends both. Every error type maps to a typed exception and a pipecat ``ErrorCategory``:
retryable ones (throttled, rate limited, queue overflow, resource exhausted) reconnect with
backoff, fatal ones (auth, quota, unaccepted terms, session time limit) leave the call on
local turn detection and retry every ``rejected_retry_s`` (or, with
``fail_over_on_fatal``, mark the service unusable so a ``ServiceSwitcher`` can take over).
Keep-alive: silence when no audio went out for ``keepalive_interval_s``, as the pipecat
service does.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pipecat.services.settings import STTSettings
from pipecat.utils.types import is_given
from websockets.asyncio.client import ClientConnection

from .. import g711
from ..auth import Secret, redact_url
from ..client import check_transport
from ..dialects.scribe import (
    AUDIO_FORMATS,
    DEFAULT_MODEL_ID,
    HOSTED_SCRIBE_URL,
    CommitStrategy,
    ScribeCommittedTranscript,
    ScribeCommittedTranscriptWithTimestamps,
    ScribeErrorEvent,
    ScribeParams,
    ScribePartialTranscript,
)
from ..dialects.scribe_client import ScribeConnection, connect_scribe
from ..errors import InvalidRequest
from ._vad_stt import (
    EndOfTurn,
    Failure,
    Final,
    FlushDone,
    Inbound,
    Interim,
    Skip,
    VADTurnSTTService,
)

__all__ = ["ScribeRealtimeSTTService"]

_DEFAULT_LOCAL_URL = "ws://127.0.0.1:8765/elevenlabs"


@dataclass
class _Session:
    conn: ScribeConnection
    commits: deque[str] = field(default_factory=deque)

    @property
    def websocket(self) -> ClientConnection:
        """The session's socket (to abort it when its close cannot finish)."""
        return self.conn.websocket


class ScribeRealtimeSTTService(VADTurnSTTService):
    """ElevenLabs Scribe realtime with local-VAD turn-taking, typed errors and failover.

    Example::

        stt = ScribeRealtimeSTTService(api_key=os.environ["ELEVENLABS_API_KEY"])
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        token: str | None = None,
        url: str | None = None,
        model_id: str = DEFAULT_MODEL_ID,
        commit_strategy: CommitStrategy = "manual",
        telephony_encoding: Literal["pcm", "ulaw"] = "pcm",
        include_timestamps: bool = False,
        include_language_detection: bool = False,
        keyterms: Sequence[str] = (),
        no_verbatim: bool | None = None,
        vad_silence_threshold_secs: float | None = None,
        vad_threshold: float | None = None,
        min_speech_duration_ms: int | None = None,
        min_silence_duration_ms: int | None = None,
        enable_logging: bool | None = None,
        keepalive_interval_s: float | None = 5.0,
        settings: STTSettings | None = None,
        **kwargs: Any,
    ) -> None:
        """Create the service; the Scribe parameters are validated here (spec 004 ranges).

        Args:
            api_key: ElevenLabs API key (``xi-api-key``); selects the hosted service.
            token: A single-use token (``token`` query parameter), instead of a key.
            url: Server URL; wins over everything (default: hosted with a credential, else
                ``$SCRIBE_URL``, else the embedded server's ``/elevenlabs`` endpoint).
            model_id: The Scribe model.
            commit_strategy: ``manual`` (commit at the local end of speech) or ``vad``
                (the server's commit ends the utterance).
            telephony_encoding: At 8 kHz, ``ulaw`` sends ``ulaw_8000`` (G.711, half the
                bytes) instead of ``pcm_8000``.
            include_timestamps: Word timestamps in the finals' ``result``.
            include_language_detection: The detected language on the finals.
            keyterms: At most 50 terms of at most 20 characters to bias recognition.
            no_verbatim: Remove fillers and false starts.
            vad_silence_threshold_secs: VAD strategy: silence that commits (0.3-3 s).
            vad_threshold: VAD strategy: sensitivity (0.1-0.9).
            min_speech_duration_ms: VAD strategy: shortest speech (50-2000 ms).
            min_silence_duration_ms: VAD strategy: shortest silence (50-2000 ms).
            enable_logging: False selects zero-retention mode (enterprise).
            keepalive_interval_s: Send silence when no audio went out for this long.
            settings: Runtime-updatable settings (``language``); a change reconnects
                between turns.
            **kwargs: See :class:`~reson8_voice.pipecat._vad_stt.VADTurnSTTService`.
        """
        if api_key and token:
            raise InvalidRequest("credentials", "pass either api_key or token, not both")
        self._end_of_turn: EndOfTurn = "server" if commit_strategy == "vad" else "flush"
        self._scribe = ScribeParams(
            model_id=model_id, commit_strategy=commit_strategy,
            include_timestamps=include_timestamps,
            include_language_detection=include_language_detection, keyterms=tuple(keyterms),
            no_verbatim=no_verbatim, vad_silence_threshold_secs=vad_silence_threshold_secs,
            vad_threshold=vad_threshold, min_speech_duration_ms=min_speech_duration_ms,
            min_silence_duration_ms=min_silence_duration_ms, enable_logging=enable_logging)
        default_settings = STTSettings(model=model_id, language=None)
        if settings is not None:
            default_settings.apply_update(settings)
        super().__init__(settings=default_settings,
                         keepalive_interval_s=keepalive_interval_s, **kwargs)
        self.policy.commit_timeout_s = (vad_silence_threshold_secs or 1.5) + \
            self.policy.flush_timeout_s
        self._api_key = Secret(api_key) if api_key else None
        self._token = Secret(token) if token else None
        has_credentials = self._api_key is not None or self._token is not None
        self._url = url or (HOSTED_SCRIBE_URL if has_credentials else
                            os.environ.get("SCRIBE_URL") or _DEFAULT_LOCAL_URL)
        check_transport(self._url, carries_secret=has_credentials,
                        allow_insecure=self._allow_insecure)
        self._telephony_encoding = telephony_encoding
        self._encoder: g711.G711Encoder | None = None

    def __repr__(self) -> str:
        return f"<ScribeRealtimeSTTService {redact_url(self._url)} mode={self.policy.mode.value}>"

    @property
    def url(self) -> str:
        """The server URL in use (credentials in its query masked)."""
        return redact_url(self._url)

    def params(self) -> ScribeParams:
        """The handshake parameters of the next connection."""
        language = self._settings.language
        code = str(language).split("-")[0] if is_given(language) and language else None
        model = self._settings.model
        audio_format = "ulaw_8000" if self._encoder is not None else \
            f"pcm_{self.sample_rate}"
        return replace(self._scribe, language_code=code, audio_format=audio_format,
                       model_id=model if isinstance(model, str) and model
                       else self._scribe.model_id)

    def _setup_uplink(self) -> None:
        """Check the rate against Scribe's audio formats; G.711 at 8 kHz if asked."""
        rate = self.sample_rate
        if f"pcm_{rate}" not in AUDIO_FORMATS:
            raise InvalidRequest("sample_rate", f"Scribe takes 8000, 16000, 22050, 24000, "
                                                f"44100 or 48000 Hz, not {rate}")
        if rate == 8000 and self._telephony_encoding == "ulaw":
            self._encoder = g711.G711Encoder("mulaw")

    # -- the wire format ---------------------------------------------------------------------
    def _encode_uplink(self, audio: bytes) -> bytes:
        return self._encoder.encode(audio) if self._encoder is not None else audio

    def _uplink_width(self) -> int:
        return 1 if self._telephony_encoding == "ulaw" and self.sample_rate == 8000 else 2

    async def _open(self) -> _Session:
        conn = await connect_scribe(self._url, self.params(), self._api_key, token=self._token,
                                    allow_insecure=self._allow_insecure, open_timeout=5.0,
                                    start_timeout=5.0, ping_interval=5.0, ping_timeout=5.0)
        return _Session(conn)

    async def _send(self, session: _Session, data: bytes) -> None:
        await session.conn.send_audio(data)

    async def _request_flush(self, session: _Session, flush_id: str) -> None:
        session.commits.append(flush_id)
        await session.conn.commit()

    async def _keepalive(self, session: _Session) -> None:
        await self._inject_silence(0.1)

    async def _recv_inbound(self, session: _Session) -> Sequence[Inbound]:
        message = await session.conn.recv()
        params = session.conn.params
        detailed = params.include_timestamps or params.include_language_detection
        if isinstance(message, ScribePartialTranscript):
            return [Interim(message.text, None, message)]
        if isinstance(message, ScribeCommittedTranscript):
            if detailed:
                return [Skip("committed_transcript (its detailed twin follows)")]
            return self._committed(session, Final(message.text, params.language_code,
                                                  message))
        if isinstance(message, ScribeCommittedTranscriptWithTimestamps):
            end_s = message.end_s
            return self._committed(session, Final(
                message.text, message.language_code or params.language_code, message,
                end_s * 1000 if end_s is not None else None))
        if isinstance(message, ScribeErrorEvent):
            return [Failure(message.exception())]
        return [Skip(f"message {getattr(message, 'message_type', message)!r}")]

    def _committed(self, session: _Session, final: Final) -> list[Inbound]:
        if self._end_of_turn == "server":
            return [Final(final.text, final.language, final.result, final.end_ms, True)]
        if session.commits:
            return [final, FlushDone(session.commits.popleft())]
        return [final]

    async def _close_session(self, session: _Session) -> None:
        await session.conn.close()
