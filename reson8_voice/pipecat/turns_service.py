"""``Reson8TurnsSTTService``: the Reson8 turns endpoint as pipecat turn frames, with failover.

Mapping (spec 001 -> pipecat 1.14), in order, nothing lost or duplicated:

- ``turn_start`` -> broadcast ``ProposedUserStartedSpeakingFrame`` (the user aggregator's
  external strategies resolve it into ``UserStartedSpeakingFrame`` + ``InterruptionFrame``);
- ``turn_end_candidate`` -> ``InterimTranscriptionFrame``, and ``EagerTranscriptionFrame``
  with ``enable_eager_end_of_turn``;
- ``turn_continuation`` -> ``EagerEndOfTurnCancelFrame``;
- ``turn_end`` -> ``TranscriptionFrame(finalized=True)`` with the last candidate's text
  (``result`` is the :class:`~reson8_voice.CompletedTurn`: words, timing, language), then
  ``ProposedUserStoppedSpeakingFrame``, queued behind it.

What the anchors (Deepgram Flux, Cartesia turns) lack: a local webrtcvad that always runs
on the forwarded audio and takes over turn detection when the service is unreachable,
drops, rejects the session or goes silent (a liveness watchdog); a bounded backlog of the
audio, replayed on the next connection so the outage's speech is still transcribed; and an
optional local-first barge-in. The policy lives in :class:`reson8_voice.arbiter.TurnArbiter`
(sans-I/O); this class only does I/O and frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    ErrorFrame,
    Frame,
    InterimTranscriptionFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    StartFrame,
    STTMetadataFrame,
    TranscriptionFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import STTSettings
from pipecat.transcriptions.language import Language
from pipecat.turns.eager_end_of_turn_mixin import EagerEndOfTurnSTTServiceMixin
from pipecat.utils.time import time_now_iso8601
from pipecat.utils.tracing.service_decorators import traced_stt
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given

from .. import g711
from ..arbiter import (
    BargeInPolicy,
    CancelEager,
    Candidate,
    Decision,
    FallbackEnded,
    FallbackStarted,
    FinalTranscript,
    Mode,
    ProposeStart,
    ProposeStop,
    ProtocolViolation,
    TurnArbiter,
    WatchdogExpired,
)
from ..auth import ApiKey, BearerToken, Credentials, redact_url
from ..backlog import AudioBacklog
from ..client import Reson8Connection, check_transport, connect_turns
from ..engine.turn_engine import Job
from ..errors import (
    BadRequest,
    ConnectionClosed,
    HandshakeError,
    InvalidRequest,
    RemoteProtocolError,
    Unauthorized,
)
from ..events import ErrorEvent, TurnContinuation, TurnEnd, TurnEndCandidate, TurnStart
from ..params import HOSTED_URL, TurnsParams
from ..turns import CompletedTurn
from ..vad import SpeechStarted, SpeechStopped
from ._local_transcriber import LocalTranscriber
from ._pipeline_vad import PipelineVad
from ._session_service import SessionSTTService

__all__ = ["DEFAULT_LOCAL_URL", "Reson8TurnsSTTService", "Reson8TurnsSTTSettings"]

#: Where the embedded server listens by default (``reson8-voice serve``).
DEFAULT_LOCAL_URL = "ws://127.0.0.1:8765"

_CONNECTION_BOUND = ("language", "custom_model_id", "include_timestamps", "include_words",
                     "include_language", "patterns")
_TURN_START_REWIND_S = 0.6
_MIN_TURN_GAP_S = 0.1
#: replayed speech this long owes a turn (a "no" is 0.3-0.4 s); one the server ignores (a
#: cough) is let go once a ping behind the replay shows the server is alive and has it all
_REPLAY_MIN_SPEECH_S = 0.2


@dataclass
class Reson8TurnsSTTSettings(STTSettings):
    """Runtime-updatable settings. A change to any field is applied with a new connection,
    once no turn is open.

    Parameters:
        custom_model_id: ID of a custom model to bias transcription (spec 001).
        include_timestamps: ``start_ms``/``duration_ms`` on candidates and words.
        include_words: word-level detail on candidates (in the frames' ``result``).
        include_language: the detected language on candidates.
        patterns: regex-style patterns for short alphanumeric tokens to recover.
    """

    custom_model_id: str | NotGiven | None = field(default_factory=lambda: NOT_GIVEN)
    include_timestamps: bool | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    include_words: bool | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    include_language: bool | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    patterns: list[str] | NotGiven | None = field(default_factory=lambda: NOT_GIVEN)


def _resolve_url(url: str | None, has_credentials: bool) -> str:
    if url:
        return url
    if has_credentials:
        return HOSTED_URL
    return os.environ.get("RESON8_URL") or DEFAULT_LOCAL_URL


class Reson8TurnsSTTService(EagerEndOfTurnSTTServiceMixin,
                            SessionSTTService[Reson8Connection[TurnsParams]]):
    """Turn-taking for a pipecat pipeline from the Reson8 turns endpoint, with failover.

    Event handlers (besides pipecat's ``on_connected``, ``on_disconnected``,
    ``on_connection_error``):

    - ``on_turn_start(service)``; ``on_turn_end_candidate(service, text)``;
      ``on_turn_continuation(service)``; ``on_turn_end(service, turn)`` with the
      :class:`~reson8_voice.CompletedTurn`;
    - ``on_fallback_started(service, reason)``; ``on_fallback_ended(service, outage_s)``.

    Example::

        stt = Reson8TurnsSTTService()          # embedded server, or RESON8_URL
        stt = Reson8TurnsSTTService(api_key=os.environ["RESON8_API_KEY"])  # hosted
    """

    Settings = Reson8TurnsSTTSettings
    _settings: Reson8TurnsSTTSettings

    def __init__(
        self,
        *,
        api_key: str | None = None,
        token: str | None = None,
        url: str | None = None,
        sample_rate: int | None = None,
        telephony_encoding: Literal["mulaw", "alaw", "pcm_s16le"] = "mulaw",
        barge_in: BargeInPolicy = "first",
        min_barge_in_ms: int = 0,
        should_interrupt: bool = True,
        enable_eager_end_of_turn: bool = False,
        watchdog_s: float = 2.0,
        replay_buffer_s: float = 30.0,
        reconnect_delay_s: tuple[float, float] = (0.25, 5.0),
        rejected_retry_s: float = 30.0,
        vad_aggressiveness: int = 2,
        vad_start_ms: int = 80,
        vad_stop_ms: int = 800,
        allow_insecure: bool = False,
        fallback_transcripts: Literal["replay", "local"] = "replay",
        local_run_job: Callable[[Job], Any] | None = None,
        settings: Reson8TurnsSTTSettings | None = None,
        **kwargs: Any,
    ) -> None:
        """Create the service; every argument is optional.

        Args:
            api_key: Reson8 API key (``Authorization: ApiKey``); selects the hosted endpoint.
            token: access token (``Authorization: Bearer``), instead of a key.
            url: server URL; wins over everything (default: hosted with credentials, else
                ``$RESON8_URL``, else the embedded server at ``ws://127.0.0.1:8765``).
            sample_rate: uplink rate; default: the pipeline's input rate.
            telephony_encoding: at 8 kHz, send G.711 (``mulaw``/``alaw``, byte-identical to
                what the carrier sent) or ``pcm_s16le``. Other rates always send PCM.
            barge_in: ``server`` (wait for ``turn_start``), ``local`` (local VAD onset) or
                ``first`` (whichever comes first).
            min_barge_in_ms: while the bot is speaking, hold a turn start until the caller
                has spoken this long, or the server's candidate has words, so a cough or a
                click does not cut the bot off (e.g. 300); 0 proposes at once.
            should_interrupt: whether a new turn interrupts the bot (passed to the
                recommended turn strategies).
            enable_eager_end_of_turn: answer candidates speculatively.
            watchdog_s: how long the server may owe an event before the session is
                declared dead and the local VAD takes over.
            replay_buffer_s: outage audio kept for replay (oldest dropped, with a warning).
            reconnect_delay_s: (first, longest) reconnect backoff, with jitter.
            rejected_retry_s: retry interval after 400/401 rejections (the call goes on in
                fallback meanwhile).
            vad_aggressiveness: webrtcvad aggressiveness 0-3 for the local VAD.
            vad_start_ms: voiced audio that confirms speech locally (the barge-in guard).
            vad_stop_ms: silence that ends speech locally: the end-of-utterance delay in
                fallback (800 ms rides over mid-turn pauses; the server is faster).
            allow_insecure: permit credentials over plain ``ws://`` to a remote host.
            fallback_transcripts: where an outage's transcripts come from: ``replay`` (the
                service transcribes the buffered audio once it is back) or ``local`` (the
                embedded engine transcribes it in-process at once: needs the ``local``
                extra; the replay then starts after the last locally finished turn).
            local_run_job: the engine's job runner for ``local`` (default: the bundled
                Whisper tiny.en and smart-turn v3, loaded when the first outage begins).
            settings: runtime-updatable settings (language, custom model, include_*).
            **kwargs: passed to pipecat's ``STTService``.
        """
        if api_key and token:
            raise InvalidRequest("credentials", "pass either api_key or token, not both")
        default_settings = self.Settings(
            model=None, language=None, custom_model_id=None, include_timestamps=True,
            include_words=True, include_language=True, patterns=None,
        )
        if settings is not None:
            default_settings.apply_update(settings)
        super().__init__(
            sample_rate=sample_rate,
            enable_eager_end_of_turn=enable_eager_end_of_turn,
            settings=default_settings,
            **kwargs,
        )
        self._credentials: Credentials | None = (
            ApiKey.of(api_key) if api_key else BearerToken.of(token) if token else None
        )
        self._url = _resolve_url(url, self._credentials is not None)
        check_transport(self._url, carries_secret=self._credentials is not None,
                        allow_insecure=allow_insecure)
        self._telephony_encoding = telephony_encoding
        self._should_interrupt = should_interrupt
        self._replay_buffer_s = replay_buffer_s
        self._reconnect_delay_s = reconnect_delay_s
        self._rejected_retry_s = rejected_retry_s
        self._vad_args = (vad_aggressiveness, vad_start_ms, vad_stop_ms)
        self._allow_insecure = allow_insecure
        self._fallback_transcripts = fallback_transcripts
        self._local_run_job = local_run_job
        self._local: LocalTranscriber | None = None
        self._local_base = 0  # backlog position where the local engine's audio begins
        self.arbiter = TurnArbiter(barge_in=barge_in, eager=enable_eager_end_of_turn,
                                   watchdog_s=watchdog_s, min_barge_in_s=min_barge_in_ms / 1000)
        self._planned_close = False
        self._encoder: g711.G711Encoder | None = None
        self._encoding = "pcm_s16le"
        self._anchor = 0  # replay from here if the connection dies
        self._conn_start = 0  # backlog position where the current session's audio begins
        self._warned_drop = False
        self._last_stop_at = 0.0
        self._start_unsent = False
        self._speech_started_ms = 0
        #: local speech (start, end) in backlog positions, for the replay's bookkeeping
        self._speech_spans: deque[tuple[int, int]] = deque(maxlen=64)
        self._language: Language | str | None = None
        #: counters for operators: malformed / unknown messages, violations, fallbacks
        self.stats: dict[str, int] = {"malformed": 0, "unknown": 0, "violations": 0,
                                      "fallbacks": 0, "dropped_bytes": 0, "replayed_bytes": 0}
        for name in ("on_turn_start", "on_turn_end_candidate", "on_turn_continuation",
                     "on_turn_end", "on_fallback_started", "on_fallback_ended"):
            self._register_event_handler(name)

    def __repr__(self) -> str:
        return f"<Reson8TurnsSTTService {redact_url(self._url)} mode={self.arbiter.mode.value}>"

    # -- pipecat conventions -----------------------------------------------------------
    def can_generate_metrics(self) -> bool:
        """Usage and turn-latency (processing) metrics are reported."""
        return True

    @property
    def supports_ttfs(self) -> bool:
        """The server defines turn boundaries: there is no speech-end -> final interval."""
        return False

    @property
    def url(self) -> str:
        """The server URL in use (credentials in its query masked)."""
        return redact_url(self._url)

    @property
    def in_fallback(self) -> bool:
        """Whether the local VAD is deciding turns right now."""
        return self.arbiter.mode is Mode.FALLBACK

    def service_metadata_frame(self) -> STTMetadataFrame:
        """Recommend external turn strategies (eager ones with eager end of turn)."""
        frame: STTMetadataFrame = super().service_metadata_frame()
        frame.user_turn_strategies = self.recommended_user_turn_strategies(
            enable_interruptions=self._should_interrupt)
        return frame

    def _params(self) -> TurnsParams:
        s = self._settings
        language = s.language if is_given(s.language) and s.language else None
        patterns = s.patterns if is_given(s.patterns) and s.patterns else ()
        return TurnsParams(
            encoding=self._encoding,
            sample_rate=self.sample_rate,
            channels=1,
            language=str(language) if language else None,
            custom_model_id=s.custom_model_id if is_given(s.custom_model_id) else None,
            include_timestamps=bool(s.include_timestamps) if is_given(s.include_timestamps)
            else False,
            include_words=bool(s.include_words) if is_given(s.include_words) else False,
            include_language=bool(s.include_language) if is_given(s.include_language)
            else False,
            patterns=tuple(patterns),
        )

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, frame: StartFrame) -> None:
        """Set up the uplink encoding and local VAD, then connect in the background."""
        await super().start(frame)
        rate = self.sample_rate
        if rate == 8000 and self._telephony_encoding in ("mulaw", "alaw"):
            self._encoding = self._telephony_encoding
            self._encoder = g711.G711Encoder(self._telephony_encoding)
        else:
            self._encoding = "pcm_s16le"
        self._params()  # validate before any connection is tried
        width = self._uplink_width()
        self._backlog = AudioBacklog(int(self._replay_buffer_s * rate * width))
        self._vad = PipelineVad(rate, *self._vad_args)
        self._start_tasks("reson8")

    async def _finish(self) -> None:
        if self._local is not None:
            await self._local.close()
        await self._apply(self.arbiter.close(time.monotonic()))

    async def _send(self, session: Reson8Connection[TurnsParams], data: bytes) -> None:
        await session.send_audio(data)

    async def _close_session(self, session: Reson8Connection[TurnsParams]) -> None:
        await session.close()

    def _uplink_width(self) -> int:
        """1 for the G.711 uplink, 2 for PCM."""
        return 1 if self._encoder else 2

    async def _update_settings(self, delta: STTSettings) -> dict[str, Any]:  # type: ignore[override]
        """Apply a settings delta; connection-bound changes reconnect between turns."""
        changed: dict[str, Any] = await super()._update_settings(delta)
        if changed.keys() & set(_CONNECTION_BOUND):
            self._params()  # an invalid value is refused here, naming the parameter
            self._reconnect_requested = True
            await self._maybe_planned_reconnect()
        return changed

    async def _maybe_planned_reconnect(self) -> None:
        if (self._reconnect_requested and self._conn is not None
                and not self.arbiter.turn_open and not self.arbiter.server.in_turn):
            self._reconnect_requested = False
            self._planned_close = True
            logger.info("reson8: reconnecting to apply new settings")
            await self._close_quietly(self._conn)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Track whether the bot is speaking (for the barge-in guard), then as pipecat does."""
        if isinstance(frame, BotStartedSpeakingFrame):
            self.arbiter.bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self.arbiter.bot_speaking = False
        await super().process_frame(frame, direction)

    # -- audio in ----------------------------------------------------------------------
    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        """Forward audio upstream (or into the backlog) and run the local VAD on it."""
        assert self._backlog is not None and self._vad is not None
        data = self._encoder.encode(audio) if self._encoder else audio
        # audio before the anchor is answered for: a replay would never need it
        self._backlog.discard_before(min(self._anchor, self._sent))
        dropped = self._backlog.append(data)
        if self._healthy.is_set():
            await self._pump()
        elif dropped:
            self.stats["dropped_bytes"] += dropped
            if not self._warned_drop:
                self._warned_drop = True
                logger.warning(f"reson8: outage longer than the {self._replay_buffer_s:g} s "
                               "replay buffer: the oldest audio is being dropped")
        pcm, events = self._vad.process(audio)
        if self._local is not None and self._local.active:
            self._local.feed(pcm)
        now = time.monotonic()
        for event in events:
            if isinstance(event, SpeechStarted):
                self._speech_started_ms = event.at_ms
                await self._apply(self.arbiter.local_speech_started(now))
            elif isinstance(event, SpeechStopped):
                speech_s = max(0.0, (event.at_ms - self._speech_started_ms) / 1000)
                self._speech_spans.append((self._ms_to_pos(self._speech_started_ms),
                                           self._ms_to_pos(event.at_ms)))
                await self._apply(self.arbiter.local_speech_stopped(now, speech_s))
        yield None

    # -- the connection ----------------------------------------------------------------
    async def _connection_loop(self) -> None:
        """Connect, replay, receive; on failure fall back and retry with backoff."""
        delay = self._reconnect_delay_s[0]
        while not self._stopping:
            retry_after = delay
            try:
                conn = await connect_turns(self._url, self._params(), self._credentials,
                                           allow_insecure=self._allow_insecure,
                                           open_timeout=5.0, ping_interval=5.0,
                                           ping_timeout=5.0)
            except (Unauthorized, BadRequest) as exc:
                await self._report_rejection(exc)
                retry_after = self._rejected_retry_s
            except HandshakeError as exc:  # 500, a refused redirect: may pass, so back off
                await self._report_rejection(exc)
            except (ConnectionClosed, OSError, TimeoutError) as exc:
                await self._lost(f"unreachable: {exc}")
                await self._call_event_handler("on_connection_error", str(exc))
            else:
                delay = self._reconnect_delay_s[0]
                self._warned_drop = False
                await self._run_connection(conn)
                if self._stopping:
                    return
                retry_after = 0.05  # a planned or first reconnect is immediate
            await asyncio.sleep(retry_after * random.uniform(0.8, 1.2))
            delay = min(self._reconnect_delay_s[1], delay * 2)

    async def _run_connection(self, conn: Reson8Connection[TurnsParams]) -> None:
        assert self._backlog is not None
        self._conn = conn
        if self._local is not None:
            await self._local.stop()  # the server answers from here; the replay covers the rest
        now = time.monotonic()
        replay_from = self._replay_start()
        replay = self._backlog.position - replay_from
        self._sent = self._conn_start = replay_from
        owed = replay > 0 and self._speech_in(replay_from)
        speech_end = self._speech_end_after(replay_from) if owed else replay_from
        await self._call_event_handler("on_connected")
        await self._apply(self.arbiter.connection_ready(
            now, replay_pending=replay > 0, replay_has_speech=owed,
            replay_speech_s=self._pos_to_s(speech_end - replay_from)))
        reader = asyncio.create_task(self._receive(conn))
        heard: asyncio.Task[None] | None = None
        try:
            if replay > 0:
                logger.info(f"reson8: replaying {replay} bytes of audio after the outage")
                self.stats["replayed_bytes"] += replay
                with contextlib.suppress(ConnectionClosed, OSError):
                    await self._replay()  # a drop mid-replay: the reader reports why
                await self._apply(self.arbiter.replay_done(time.monotonic()))
                if owed:
                    heard = asyncio.create_task(self._replay_heard(conn))
            self._healthy.set()
            await self._pump()  # what arrived while the replay was going out
            reason = await reader
        finally:
            self._healthy.clear()
            for task in (reader, heard):
                if task is not None and not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            self._conn = None
        await self._close_quietly(conn)
        await self._call_event_handler("on_disconnected")
        if self._planned_close:
            self._planned_close = False
            await self._apply(self.arbiter.connection_paused(time.monotonic()))
        elif not self._stopping:
            await self._lost(reason)

    async def _replay_heard(self, conn: Reson8Connection[TurnsParams]) -> None:
        """Ping behind the replay: the pong says the server has received all of it."""
        try:
            pong = await conn.websocket.ping()
            await pong
        except Exception:  # closed: the reader reports why
            return
        await self._apply(self.arbiter.replay_heard(time.monotonic()))

    async def _receive(self, conn: Reson8Connection[TurnsParams]) -> str:
        """Read events until the connection ends; returns why it ended."""
        while True:
            try:
                event = await conn.recv()
            except ConnectionClosed as exc:
                return "closed by server" if exc.code in (1000, 1001) else f"dropped: {exc}"
            except RemoteProtocolError as exc:
                self.stats["malformed"] += 1
                logger.warning(f"reson8: skipped a malformed message: {exc}")
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a socket error websockets did not wrap
                return f"dropped: {exc.__class__.__name__}"
            now = time.monotonic()
            if isinstance(event, TurnStart | TurnEndCandidate | TurnContinuation | TurnEnd):
                self._move_anchor(event)
                await self._apply(self.arbiter.server_event(now, event))
                await self._maybe_planned_reconnect()
            elif isinstance(event, ErrorEvent):
                logger.warning(f"reson8: server error {event.code}: {event.message}")
                await self._push_service_error(f"Reson8 error {event.code}: {event.message}")
            else:
                self.stats["unknown"] += 1
                logger.debug(f"reson8: skipped unknown message type {event.type!r}")

    def _ms_to_pos(self, ms: float) -> int:
        """Backlog position of stream time ``ms`` (both count from the call's start)."""
        return int(ms * self.sample_rate / 1000) * self._uplink_width()

    def _pos_to_s(self, n_bytes: int) -> float:
        return n_bytes / (self.sample_rate * self._uplink_width())

    def _local_speech(self) -> list[tuple[int, int]]:
        """The local VAD's speech spans (backlog positions), the open one up to now."""
        assert self._vad is not None
        spans = list(self._speech_spans)
        if self._vad.detector.speaking:
            spans.append((self._ms_to_pos(self._speech_started_ms),
                          self._ms_to_pos(self._vad.detector.stream_ms)))
        return spans

    def _replay_start(self) -> int:
        """Where the next session's audio begins: at the anchor, but silence after it is
        skipped (up to a short lead-in before the next speech): it needs no answer, and a
        server that only keeps real time would fall behind by all of it."""
        assert self._backlog is not None
        start = max(self._anchor, self._backlog.start)
        lead_in = self._ms_to_pos(_TURN_START_REWIND_S * 1000)
        onsets = [a for a, end in self._local_speech() if end > start]
        first = min(onsets) if onsets else self._backlog.position
        return max(start, first - lead_in)

    def _speech_end_after(self, start: int) -> int:
        """The end of the last local speech after ``start`` (``start`` if none)."""
        return max([start, *(end for _, end in self._local_speech() if end > start)])

    def _speech_in(self, start: int) -> bool:
        """Whether the local VAD heard enough speech after ``start`` that the server, given
        that audio, owes a turn for it (a word's tail at the edge does not count)."""
        heard = sum(max(0, end - max(a, start)) for a, end in self._local_speech())
        return heard >= self._ms_to_pos(_REPLAY_MIN_SPEECH_S * 1000)

    def _move_anchor(self, event: TurnStart | TurnEndCandidate | TurnContinuation |
                     TurnEnd) -> None:
        """Where a replay would start: just after the speech the server has answered for.

        A candidate's text covers the turn's speech up to its end (``start_ms`` +
        ``duration_ms``, session time), not what has been sent since: a server that lags
        has not heard that yet. A turn start answers for nothing (the turn's text is still
        owed), and neither does a continuation.
        """
        if isinstance(event, TurnEndCandidate):
            position = self._sent
            if event.start_ms is not None and event.duration_ms is not None:
                end = self._conn_start + self._ms_to_pos(event.start_ms + event.duration_ms)
                position = min(position, end)
            self._anchor = max(self._anchor, position)

    async def _lost(self, reason: str) -> None:
        decisions = self.arbiter.connection_lost(time.monotonic(), reason)
        await self._apply(decisions)
        if self.in_fallback and self._fallback_transcripts == "local":
            await self._start_local()

    async def _start_local(self) -> None:
        if self._local is not None and self._local.active:
            return
        if self._local is None:
            run_job = self._local_run_job
            if run_job is None:
                from ..engine.models import LocalModels

                try:
                    models = await asyncio.to_thread(LocalModels.load)
                except ImportError as exc:  # the local extra is not installed
                    logger.warning(f"reson8: no local transcripts ({exc}); using replay")
                    self._fallback_transcripts = "replay"
                    return
                run_job = self._local_run_job = models.run
            rate = self._vad.sample_rate if self._vad is not None else 16000
            self._local = LocalTranscriber(run_job, rate, self._on_local_turn)
        assert self._backlog is not None
        self._local_base = self._backlog.position
        self._local.start()

    async def _on_local_turn(self, turn: CompletedTurn, end_ms: float) -> None:
        """A turn the in-process engine finished during the outage: its text, at once."""
        width = self._uplink_width()
        self._anchor = max(self._anchor, self._local_base
                           + int(end_ms * self.sample_rate / 1000) * width)
        await self._apply([FinalTranscript(turn)])

    async def _report_rejection(self, exc: HandshakeError) -> None:
        if isinstance(exc, Unauthorized):
            message = (f"Reson8 rejected the credentials (401 {exc.code}); continuing with "
                       "local turn detection")
        else:
            param = getattr(exc, "parameter", None)
            message = (f"Reson8 rejected the session ({exc.status} {exc.code})"
                       f"{f' for parameter {param!r}' if param else ''}: {exc.message}")
        await self._lost(f"rejected: HTTP {exc.status}")
        await self._push_service_error(message)
        await self._call_event_handler("on_connection_error", message)

    async def _push_service_error(self, message: str) -> None:
        # Deliberately without a permanent category: the local fallback keeps the call
        # working, so the service must stay usable.
        await self.push_error_frame(ErrorFrame(error=message))

    async def _watchdog_loop(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            for decision in self.arbiter.check(time.monotonic()):
                if isinstance(decision, WatchdogExpired):
                    logger.warning(f"reson8: no {decision.expecting} within "
                                   f"{decision.waited_s:g} s: declaring the session dead")
                    conn = self._conn
                    if conn is not None:
                        # fall back now: a stalled peer may never finish a closing handshake
                        self._healthy.clear()
                        await self._lost(f"silent for {decision.waited_s:g} s")
                        conn.websocket.transport.abort()
                else:
                    await self._apply([decision])

    # -- decisions -> frames -----------------------------------------------------------
    async def _apply(self, decisions: list[Decision]) -> None:
        for d in decisions:
            logger.trace(f"reson8: {d}")
            if isinstance(d, ProposeStart):
                # A start is a system frame and overtakes the queued stop (a control frame,
                # behind its transcript): the aggregator would ignore a start that arrives
                # while the previous turn is still open, and drop the new turn. Keep them
                # a short gap apart so the stop is processed first.
                gap = self._last_stop_at + _MIN_TURN_GAP_S - time.monotonic()
                self._start_unsent = True  # until broadcast (a stop may cancel the wait)
                if gap > 0:
                    await asyncio.sleep(gap)
                await self.broadcast_frame(ProposedUserStartedSpeakingFrame)
                self._start_unsent = False
                await self._call_event_handler("on_turn_start")
            elif isinstance(d, Candidate):
                await self._on_candidate(d)
            elif isinstance(d, CancelEager):
                await self._cancel_eager_end_of_turn()
                await self._call_event_handler("on_turn_continuation")
            elif isinstance(d, FinalTranscript):
                await self._on_final(d)
            elif isinstance(d, ProposeStop):
                if self._start_unsent:  # its start never went out: neither does the stop
                    self._start_unsent = False
                    continue
                await self.broadcast_frame(ProposedUserStoppedSpeakingFrame)
                self._last_stop_at = time.monotonic()
                await self._maybe_planned_reconnect()
            elif isinstance(d, FallbackStarted):
                self.stats["fallbacks"] += 1
                logger.warning(f"reson8: local turn detection takes over ({d.reason})")
                await self._call_event_handler("on_fallback_started", d.reason)
            elif isinstance(d, FallbackEnded):
                logger.info(f"reson8: service back after {d.outage_s:.1f} s")
                await self._call_event_handler("on_fallback_ended", d.outage_s)
            elif isinstance(d, ProtocolViolation):
                self.stats["violations"] += 1
                logger.warning(f"reson8: server broke the turn protocol: {d.error}")

    @staticmethod
    def _frame_language(language: str | None) -> Language | None:
        if not language:
            return None
        try:
            return Language(language)
        except ValueError:
            return None  # still in the frame's ``result``

    async def _on_candidate(self, d: Candidate) -> None:
        text, language = d.event.text, self._frame_language(d.event.language)
        if text:
            await self.push_frame(InterimTranscriptionFrame(
                text, self._user_id, time_now_iso8601(), language, result=d.event))
        if d.eager:
            await self._push_eager_end_of_turn(text, user_id=self._user_id,
                                               language=language, result=d.event)
        await self._call_event_handler("on_turn_end_candidate", text)

    async def _on_final(self, d: FinalTranscript) -> None:
        self._clear_eager_end_of_turn()
        turn, language = d.turn, self._frame_language(d.turn.language)
        await self.emit_stt_usage_metrics()
        await self.push_frame(TranscriptionFrame(
            turn.text, self._user_id, time_now_iso8601(), language, result=turn,
            finalized=not turn.cut_short))
        await self._handle_transcription(turn.text, True, language)
        await self._call_event_handler("on_turn_end", turn)

    @traced_stt
    async def _handle_transcription(self, transcript: str, is_final: bool,
                                    language: Language | None = None) -> None:
        """Tracing hook for final transcripts."""
