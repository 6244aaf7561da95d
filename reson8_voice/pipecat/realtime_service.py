"""``Reson8RealtimeSTTService``: the Reson8 realtime endpoint with local-VAD turn-taking.

The realtime endpoint (spec 000) transcribes; it does not take turns. This service takes
them with the local VAD (see :mod:`reson8_voice.pipecat._vad_stt`): speech onset proposes
the user's turn, interim results become ``InterimTranscriptionFrame`` (``include_interim``)
and finals ``TranscriptionFrame`` (``result`` is the :class:`~reson8_voice.Transcript`,
with words, timings and confidences as asked), and at the local end of speech a
``flush_request`` with a fresh id goes out; the turn ends when the ``flush_confirmation``
with that id arrives, so the final text is always in before the end of the utterance.
TTFB is measured from the flush.

The guide's rules (spec 003): the default ``encoding="pcm_s16le"`` needs no container;
with ``encoding="auto"`` every connection, reconnections included, starts with a fresh
streaming WAV header (an indefinite-length one, as the guide describes). Server pings are
answered by the WebSocket layer while the receive loop runs.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import Any, Literal

from pipecat.services.settings import STTSettings
from pipecat.utils.types import is_given

from ..auth import ApiKey, BearerToken, Credentials, redact_url
from ..client import Reson8Connection, check_transport, connect_realtime
from ..errors import InvalidRequest, ServiceError
from ..events import ErrorEvent, FlushConfirmation, Transcript, UnknownEvent
from ..params import HOSTED_URL, RealtimeParams
from ._vad_stt import (
    ErrorFlags,
    Failure,
    Final,
    FlushDone,
    Inbound,
    Interim,
    Skip,
    VADTurnSTTService,
    classify_error,
)

__all__ = ["Reson8RealtimeSTTService", "streaming_wav_header"]

_DEFAULT_LOCAL_URL = "ws://127.0.0.1:8765"

#: The embedded server's in-session error codes (reson8_voice.server) -> what to do.
_ERROR_FLAGS: dict[str, ErrorFlags] = {
    "SESSION_TIME_LIMIT": ErrorFlags(True, False, "server"),  # a fresh session will do
    "INTERNAL_ERROR": ErrorFlags(True, False, "server"),
    "MESSAGE_TOO_LARGE": ErrorFlags(False, True, "invalid_request"),
    "INVALID_REQUEST": ErrorFlags(False, True, "invalid_request"),  # repeating it would loop
    "INVALID_AUDIO": ErrorFlags(False, True, "invalid_request"),
    "UNSUPPORTED_AUDIO": ErrorFlags(False, True, "invalid_request"),
}


def streaming_wav_header(sample_rate: int, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV header of indefinite length (sizes 0xFFFFFFFF), for streaming."""
    block = 2 * channels
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt "
            + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block,
                          block, 16)
            + b"data" + struct.pack("<I", 0xFFFFFFFF))


class Reson8RealtimeSTTService(VADTurnSTTService):
    """Reson8 realtime transcription with local-VAD turn-taking and failover.

    Example::

        stt = Reson8RealtimeSTTService()                        # embedded server
        stt = Reson8RealtimeSTTService(api_key=os.environ["RESON8_API_KEY"])  # hosted
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        token: str | None = None,
        url: str | None = None,
        encoding: Literal["pcm_s16le", "auto"] = "pcm_s16le",
        custom_model_id: str | None = None,
        include_interim: bool = True,
        include_words: bool = True,
        include_confidence: bool = True,
        settings: STTSettings | None = None,
        **kwargs: Any,
    ) -> None:
        """Create the service; every argument is optional.

        Args:
            api_key: Reson8 API key (``Authorization: ApiKey``); selects the hosted endpoint.
            token: Access token (``Authorization: Bearer``), instead of a key.
            url: Server URL; wins over everything (default: hosted with credentials, else
                ``$RESON8_URL``, else the embedded server at ``ws://127.0.0.1:8765``).
            encoding: ``pcm_s16le`` (raw PCM) or ``auto`` (a streaming WAV header at the
                start of every connection).
            custom_model_id: A custom model to bias transcription (spec 000).
            include_interim: Interim results -> ``InterimTranscriptionFrame``.
            include_words: Word-level detail in the frames' ``result``.
            include_confidence: Word confidences in the frames' ``result``.
            settings: Runtime-updatable settings (``language``); a change reconnects
                between turns.
            **kwargs: See :class:`~reson8_voice.pipecat._vad_stt.VADTurnSTTService`
                (VAD, timeouts, replay, keep-alive) and pipecat's ``STTService``.
        """
        if api_key and token:
            raise InvalidRequest("credentials", "pass either api_key or token, not both")
        if encoding not in ("pcm_s16le", "auto"):
            raise InvalidRequest("encoding", f"must be pcm_s16le or auto, got {encoding!r}")
        default_settings = STTSettings(model=None, language=None)
        if settings is not None:
            default_settings.apply_update(settings)
        super().__init__(settings=default_settings, **kwargs)
        self._credentials: Credentials | None = (
            ApiKey.of(api_key) if api_key else BearerToken.of(token) if token else None)
        self._url = url or (HOSTED_URL if self._credentials else
                            os.environ.get("RESON8_URL") or _DEFAULT_LOCAL_URL)
        check_transport(self._url, carries_secret=self._credentials is not None,
                        allow_insecure=self._allow_insecure)
        self._encoding = encoding
        self._options = (custom_model_id, include_interim, include_words, include_confidence)

    def __repr__(self) -> str:
        return f"<Reson8RealtimeSTTService {redact_url(self._url)} mode={self.policy.mode.value}>"

    @property
    def url(self) -> str:
        """The server URL in use (credentials in its query masked)."""
        return redact_url(self._url)

    def params(self) -> RealtimeParams:
        """The query parameters of the next connection (timestamps are always asked for:
        they tell a replay after an outage exactly where the server's answers end)."""
        custom_model_id, interim, words, confidence = self._options
        language = self._settings.language
        return RealtimeParams(
            encoding=self._encoding, sample_rate=self.sample_rate, channels=1,
            language=str(language) if is_given(language) and language else None,
            custom_model_id=custom_model_id, include_timestamps=True,
            include_words=words, include_confidence=confidence, include_interim=interim)

    # -- the wire format ---------------------------------------------------------------------
    async def _open(self) -> Reson8Connection[RealtimeParams]:
        return await connect_realtime(self._url, self.params(), self._credentials,
                                      allow_insecure=self._allow_insecure, open_timeout=5.0,
                                      ping_interval=5.0, ping_timeout=5.0)

    def _preamble(self) -> bytes:
        return streaming_wav_header(self.sample_rate) if self._encoding == "auto" else b""

    async def _send(self, session: Reson8Connection[RealtimeParams], data: bytes) -> None:
        await session.send_audio(data)

    async def _request_flush(self, session: Reson8Connection[RealtimeParams],
                             flush_id: str) -> None:
        await session.flush(flush_id)

    async def _recv_inbound(self, session: Reson8Connection[RealtimeParams]) -> Sequence[Inbound]:
        event = await session.recv()
        if isinstance(event, Transcript):
            if not event.final:
                return [Interim(event.text, None, event)]
            end = event.start_ms + event.duration_ms \
                if event.start_ms is not None and event.duration_ms is not None else None
            return [Final(event.text, None, event, end)]
        if isinstance(event, FlushConfirmation):
            return [FlushDone(event.id or "")]
        if isinstance(event, ErrorEvent):
            return [Failure(ServiceError(event.code, event.message))]
        name = event.type if isinstance(event, UnknownEvent) else type(event).__name__
        return [Skip(f"message {name!r}")]

    async def _close_session(self, session: Reson8Connection[RealtimeParams]) -> None:
        await session.close()

    def _classify(self, exc: BaseException) -> ErrorFlags:
        if isinstance(exc, ServiceError) and exc.code in _ERROR_FLAGS:
            return _ERROR_FLAGS[exc.code]
        return classify_error(exc)
