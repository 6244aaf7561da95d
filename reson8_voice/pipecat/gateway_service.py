"""``Reson8GatewaySTTService``: Reson8 realtime through the gateway's JSON framing (spec 002).

The same turn-taking as :class:`~reson8_voice.pipecat.Reson8RealtimeSTTService` (local VAD
turns, see :mod:`reson8_voice.pipecat._vad_stt`), over the gateway's protocol: ``init``
with the recognition config and a wait for ``ready``; audio as base64 ``audio`` messages;
``finalize`` at the local end of speech, the utterance ending at its
``flush_confirmation`` (confirmations answer finalizes in order); ``keepalive`` when no
audio has been sent for ``keepalive_interval_s``; ``close`` at the end.
``partial_transcript`` -> ``InterimTranscriptionFrame``, ``final_transcript`` ->
``TranscriptionFrame`` (``result`` carries its confidence, language and duration), and
``error`` -> typed errors (``auth_error`` is fatal: the call goes on with local turn
detection and the service retries every ``rejected_retry_s``). Auth is
``Authorization: Bearer``; ``world_part`` pins the region.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipecat.services.settings import STTSettings
from pipecat.utils.types import is_given
from websockets.asyncio.client import ClientConnection

from ..auth import Secret, redact_url
from ..client import check_transport
from ..dialects.gateway import (
    HOSTED_GATEWAY_URL,
    WORLD_PARTS,
    GatewayConfig,
    GatewayErrorEvent,
    GatewayFinalTranscript,
    GatewayFlushConfirmation,
    GatewayPartialTranscript,
)
from ..dialects.gateway_client import GatewayConnection, connect_gateway
from ..errors import InvalidRequest
from ._vad_stt import Failure, Final, FlushDone, Inbound, Interim, Skip, VADTurnSTTService

__all__ = ["Reson8GatewaySTTService"]

_DEFAULT_LOCAL_URL = "ws://127.0.0.1:8765"


@dataclass
class _Session:
    conn: GatewayConnection
    finalizes: deque[str] = field(default_factory=deque)

    @property
    def websocket(self) -> ClientConnection:
        """The session's socket (to abort it when its close cannot finish)."""
        return self.conn.websocket


class Reson8GatewaySTTService(VADTurnSTTService):
    """Reson8 realtime behind the gateway, with local-VAD turn-taking and failover.

    Example::

        stt = Reson8GatewaySTTService(api_key=os.environ["SLNG_API_KEY"], world_part="eu")
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        url: str | None = None,
        world_part: str | None = None,
        enable_partials: bool = True,
        custom_model_id: str | None = None,
        keepalive_interval_s: float | None = 5.0,
        settings: STTSettings | None = None,
        **kwargs: Any,
    ) -> None:
        """Create the service; every argument is optional.

        Args:
            api_key: The gateway key (``Authorization: Bearer``); selects the hosted
                gateway.
            url: Server URL; wins over everything (default: the hosted gateway with a key,
                else ``$RESON8_GATEWAY_URL``, else the embedded server).
            world_part: Pin the region (``X-World-Part-Override``: ``eu``); None lets the
                gateway choose.
            enable_partials: Interim results -> ``InterimTranscriptionFrame``.
            custom_model_id: A custom Reson8 model, passed in the ``init`` config.
            keepalive_interval_s: Send ``keepalive`` when no audio went out for this long.
            settings: Runtime-updatable settings (``language``); a change reconnects
                between turns.
            **kwargs: See :class:`~reson8_voice.pipecat._vad_stt.VADTurnSTTService`.
        """
        if world_part is not None and world_part not in WORLD_PARTS:
            raise InvalidRequest("world_part", f"must be one of {', '.join(WORLD_PARTS)}, "
                                               f"got {world_part!r}")
        default_settings = STTSettings(model=None, language=None)
        if settings is not None:
            default_settings.apply_update(settings)
        super().__init__(settings=default_settings,
                         keepalive_interval_s=keepalive_interval_s, **kwargs)
        self._api_key = Secret(api_key) if api_key else None
        self._url = url or (HOSTED_GATEWAY_URL if self._api_key else
                            os.environ.get("RESON8_GATEWAY_URL") or _DEFAULT_LOCAL_URL)
        check_transport(self._url, carries_secret=self._api_key is not None,
                        allow_insecure=self._allow_insecure)
        self._world_part = world_part
        self._enable_partials = enable_partials
        self._custom_model_id = custom_model_id

    def __repr__(self) -> str:
        return f"<Reson8GatewaySTTService {redact_url(self._url)} mode={self.policy.mode.value}>"

    @property
    def url(self) -> str:
        """The gateway URL in use (credentials in its query masked)."""
        return redact_url(self._url)

    def config(self) -> GatewayConfig:
        """The ``init`` config of the next connection."""
        language = self._settings.language
        return GatewayConfig(
            encoding="pcm_s16le", sample_rate=self.sample_rate, channels=1,
            enable_partials=self._enable_partials,
            language=str(language) if is_given(language) and language else None,
            custom_model_id=self._custom_model_id)

    # -- the wire format ---------------------------------------------------------------------
    async def _open(self) -> _Session:
        conn = await connect_gateway(self._url, self.config(), self._api_key,
                                     world_part=self._world_part,
                                     allow_insecure=self._allow_insecure, open_timeout=5.0,
                                     ready_timeout=5.0, ping_interval=5.0, ping_timeout=5.0)
        return _Session(conn)

    async def _send(self, session: _Session, data: bytes) -> None:
        await session.conn.send_audio(data)

    async def _request_flush(self, session: _Session, flush_id: str) -> None:
        session.finalizes.append(flush_id)
        await session.conn.finalize()

    async def _keepalive(self, session: _Session) -> None:
        await session.conn.keepalive()

    async def _recv_inbound(self, session: _Session) -> Sequence[Inbound]:
        message = await session.conn.recv()
        if isinstance(message, GatewayPartialTranscript):
            return [Interim(message.transcript, None, message)]
        if isinstance(message, GatewayFinalTranscript):
            return [Final(message.transcript, message.language, message)]
        if isinstance(message, GatewayFlushConfirmation):
            if not session.finalizes:
                return [Skip("flush_confirmation for no finalize")]
            return [FlushDone(session.finalizes.popleft())]
        if isinstance(message, GatewayErrorEvent):
            return [Failure(message.exception())]
        return [Skip(f"message {message.type!r}")]

    async def _close_session(self, session: _Session) -> None:
        await session.conn.close()
