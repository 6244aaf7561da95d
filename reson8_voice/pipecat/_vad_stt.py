"""Turn-taking on transcript-only backends: the local VAD decides, the server transcribes.

The Reson8 realtime endpoint (spec 000), the gateway framing (spec 002) and Scribe realtime
(spec 004) send transcripts, not turns. The services built on :class:`VADTurnSTTService`
give a pipeline the same turn frames as :class:`~reson8_voice.pipecat.Reson8TurnsSTTService`:

- local speech onset (webrtcvad, or any pipecat ``VADAnalyzer``) -> broadcast
  ``ProposedUserStartedSpeakingFrame`` (barge-in);
- interim results -> ``InterimTranscriptionFrame``; finals -> ``TranscriptionFrame``;
- local end of speech -> the backend is asked to finalise (``flush_request`` with a fresh
  id, ``finalize``, a Scribe commit), and when *that* request is confirmed, the final text
  has arrived and ``ProposedUserStoppedSpeakingFrame`` is proposed, queued behind it. With a
  server-side commit strategy (Scribe VAD) the server's commit ends the utterance instead;
- a confirmation that does not come in time is a dead session: the turn ends locally, the
  connection is dropped, and the local VAD alone takes turns (``on_fallback_started``)
  while the service reconnects with backoff; the outage's audio is kept and replayed on the
  next connection, and turn detection is handed back between turns
  (``on_fallback_ended``).

The policy is :class:`TranscriptTurnPolicy`, sans-I/O (it takes the time and returns
decisions); :class:`VADTurnSTTService` does the I/O and the frames, and a subclass only
speaks its wire format through a handful of hooks.
"""

from __future__ import annotations

import asyncio
import random
import time
from abc import abstractmethod
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from loguru import logger
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADState
from pipecat.frames.frames import (
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
from pipecat.turns.user_turn_strategies import ExternalUserTurnStrategies
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.time import time_now_iso8601
from pipecat.utils.tracing.service_decorators import traced_stt

from ..arbiter import (
    FallbackEnded,
    FallbackStarted,
    Mode,
    ProposeStart,
    ProposeStop,
    WatchdogExpired,
)
from ..backlog import AudioBacklog
from ..errors import (
    BadRequest,
    ConnectionClosed,
    HandshakeError,
    InternalServerError,
    RemoteProtocolError,
    Reson8Error,
    Unauthorized,
)
from ..vad import SpeechStarted, SpeechStopped
from ._pipeline_vad import PipelineVad
from ._session_service import SessionSTTService

__all__ = [
    "EndOfTurn",
    "ErrorFlags",
    "Failure",
    "Final",
    "FlushConfirmed",
    "FlushDone",
    "Inbound",
    "Interim",
    "PushFinal",
    "PushInterim",
    "SendFlush",
    "Skip",
    "TranscriptTurnPolicy",
    "VADTurnSTTService",
    "classify_error",
]

#: Who ends an utterance: the client's finalise request (confirmed) or the server's commit.
EndOfTurn: TypeAlias = Literal["flush", "server"]



# -- what a backend says, normalised ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interim:
    """An interim result (it may change)."""

    text: str
    language: str | None = None
    result: Any = None


@dataclass(frozen=True, slots=True)
class Final:
    """A final result. ``end_ms``: where its audio ends in the connection's stream, when
    known (it lets a replay start right after it); ``ends_turn``: a server-side commit that
    ends the utterance (Scribe's VAD strategy)."""

    text: str
    language: str | None = None
    result: Any = None
    end_ms: float | None = None
    ends_turn: bool = False


@dataclass(frozen=True, slots=True)
class FlushDone:
    """The finalise request ``flush_id`` is done: every final for its audio has arrived."""

    flush_id: str


@dataclass(frozen=True, slots=True)
class Failure:
    """The server reported an error (a typed exception with ``retryable``/``fatal``)."""

    error: Reson8Error


@dataclass(frozen=True, slots=True)
class Skip:
    """Nothing to act on (session metadata, an unknown message)."""

    reason: str


Inbound: TypeAlias = Interim | Final | FlushDone | Failure | Skip


@dataclass(frozen=True, slots=True)
class ErrorFlags:
    """What to do about an error: retry with backoff, give up until something changes, or
    neither (report and carry on); ``category`` is a pipecat ``ErrorCategory`` value."""

    retryable: bool
    fatal: bool
    category: str


def classify_error(exc: BaseException) -> ErrorFlags:
    """Flags for an exception: the dialect errors carry their own, the rest are mapped."""
    fatal = getattr(exc, "fatal", None)
    retryable = getattr(exc, "retryable", None)
    category = getattr(exc, "category", None)
    if isinstance(fatal, bool) and isinstance(retryable, bool) and isinstance(category, str):
        return ErrorFlags(retryable, fatal, category)
    if isinstance(exc, Unauthorized):
        return ErrorFlags(False, True, "authentication")
    if isinstance(exc, BadRequest):
        return ErrorFlags(False, True, "invalid_request")
    if isinstance(exc, InternalServerError):
        return ErrorFlags(True, False, "server")
    if isinstance(exc, HandshakeError):
        return ErrorFlags(True, False, "unknown")
    if isinstance(exc, ConnectionClosed | OSError | TimeoutError):
        return ErrorFlags(True, False, "connectivity")
    return ErrorFlags(False, False, "unknown")


# -- the policy (sans-I/O) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendFlush:
    """Ask the backend to finalise everything sent so far; answer expected as FlushDone."""

    flush_id: str


@dataclass(frozen=True, slots=True)
class PushInterim:
    """Push an interim transcript."""

    item: Interim


@dataclass(frozen=True, slots=True)
class PushFinal:
    """Push a final transcript; ``finalized``: it answers the flush that ends the turn."""

    item: Final
    finalized: bool


@dataclass(frozen=True, slots=True)
class FlushConfirmed:
    """The pending flush was confirmed; ``answered``: a final came for it."""

    flush_id: str
    answered: bool


Decision: TypeAlias = (
    ProposeStart | ProposeStop | SendFlush | PushInterim | PushFinal | FlushConfirmed
    | FallbackStarted | FallbackEnded | WatchdogExpired
)


class TranscriptTurnPolicy:
    """Turns from the local VAD, closed by a confirmed flush or the server's commit.

    Guarantees, however the sources misbehave: every proposed start is followed by exactly
    one proposed stop before the next start; a final that answers the turn-ending flush is
    decided before that turn's stop; a flush or commit that never comes ends the turn
    locally within the timeout and reports :class:`WatchdogExpired`.
    """

    def __init__(self, *, end_of_turn: EndOfTurn = "flush", flush_timeout_s: float = 2.0,
                 commit_timeout_s: float = 4.0) -> None:
        """Start in FALLBACK until the first connection is ready."""
        self.end_of_turn: EndOfTurn = end_of_turn
        self.flush_timeout_s = flush_timeout_s
        self.commit_timeout_s = commit_timeout_s
        self.mode = Mode.FALLBACK
        self.connected = False
        self.turn_open = False
        self.local_speaking = False
        self.pending_flush: str | None = None
        self._ends_turn = False
        self._answered = False
        self._heard_text = False
        self._replay_pending = False
        self._deadline: tuple[float, str, float] | None = None  # (at, expecting, waited)
        self._outage_since: float | None = 0.0
        self._fallback_announced = False
        self._flushes = 0

    # -- connection ------------------------------------------------------------------------
    def connection_ready(self, now: float, *, replay_pending: bool = False) -> list[Decision]:
        """A session is open (``replay_pending``: outage audio goes out first)."""
        self.connected = True
        self._replay_pending = replay_pending
        self.pending_flush = None
        self._deadline = None
        return self._maybe_hand_back(now)

    def replay_done(self, now: float) -> list[Decision]:
        """The replayed audio has been sent."""
        self._replay_pending = False
        return self._maybe_hand_back(now)

    def connection_lost(self, now: float, reason: str) -> list[Decision]:
        """The session ended (a drop, a rejection, the watchdog)."""
        self.connected = False
        self.pending_flush = None
        self._deadline = None
        out: list[Decision] = []
        if self.mode is Mode.REMOTE:
            self.mode = Mode.FALLBACK
            self._outage_since = now
        if not self._fallback_announced:
            self._fallback_announced = True
            out.append(FallbackStarted(reason))
        if self.turn_open and not self.local_speaking:
            out.append(self._stop("local"))
        return out

    # -- local VAD -------------------------------------------------------------------------
    def local_speech_started(self, now: float) -> list[Decision]:
        """The local VAD confirmed speech."""
        self.local_speaking = True
        if self.turn_open:
            # the speaker went on: a pending flush no longer ends the turn, and the server
            # owes no commit for a pause that is over
            self._ends_turn = False
            if self._deadline is not None and self._deadline[1] == "commit":
                self._deadline = None
            return []
        self._heard_text = False
        return [self._start("local")]

    def local_speech_stopped(self, now: float) -> list[Decision]:
        """The local VAD heard the speech end: the end of the utterance, once confirmed."""
        self.local_speaking = False
        if not self.turn_open:
            return self._maybe_hand_back(now)
        if self.mode is Mode.FALLBACK or not self.connected:
            return [self._stop("local"), *self._maybe_hand_back(now)]
        if self.end_of_turn == "server":
            self._deadline = (now + self.commit_timeout_s, "commit", self.commit_timeout_s)
            return []
        self._flushes += 1
        self.pending_flush = f"eou-{self._flushes}"
        self._ends_turn = True
        self._answered = False
        self._deadline = (now + self.flush_timeout_s, "flush_confirmation",
                          self.flush_timeout_s)
        return [SendFlush(self.pending_flush)]

    # -- server ----------------------------------------------------------------------------
    def server_interim(self, now: float, item: Interim) -> list[Decision]:
        """An interim result."""
        out: list[Decision] = []
        if item.text.strip():
            if (not self.turn_open and self.mode is Mode.REMOTE
                    and self.end_of_turn == "server"):
                self._heard_text = True
                out.append(self._start("server"))  # speech the local VAD did not hear
            elif self.turn_open:
                self._heard_text = True
        out.append(PushInterim(item))
        return out

    def server_final(self, now: float, item: Final) -> list[Decision]:
        """A final result (or, with ``ends_turn``, the server's commit)."""
        has_text = bool(item.text.strip())
        if self.mode is Mode.FALLBACK:
            return [PushFinal(item, False)] if has_text else []
        out: list[Decision] = []
        if item.ends_turn and self.end_of_turn == "server":
            if not self.turn_open and has_text:
                out.append(self._start("server"))
            if has_text:
                out.append(PushFinal(item, True))
            if self.turn_open and (has_text or not self.local_speaking):
                self._deadline = None
                out.append(self._stop("server"))
            return out
        if not has_text:
            return out
        finalized = self.pending_flush is not None and self._ends_turn
        if self.pending_flush is not None:
            self._answered = True
        if self.turn_open:
            self._heard_text = True
        out.append(PushFinal(item, finalized))
        return out

    def flush_done(self, now: float, flush_id: str) -> list[Decision]:
        """A finalise request is done; the pending one ends the turn if nobody spoke since."""
        if flush_id != self.pending_flush:
            return []  # stale (superseded) or not ours to judge (a replay's flush)
        self.pending_flush = None
        self._deadline = None
        out: list[Decision] = [FlushConfirmed(flush_id, self._answered)]
        if self._ends_turn and self.turn_open and not self.local_speaking:
            out.append(self._stop("local"))
        out.extend(self._maybe_hand_back(now))
        return out

    def check(self, now: float) -> list[Decision]:
        """The watchdog: call periodically (every ~100 ms)."""
        if self._deadline is None or now < self._deadline[0]:
            return []
        _, expecting, waited = self._deadline
        self._deadline = None
        out: list[Decision] = []
        if expecting == "commit" and not self._heard_text:
            # nothing was transcribed (a cough, a click): the server has nothing to commit
            if self.turn_open and not self.local_speaking:
                out.append(self._stop("local"))
            return out
        self.pending_flush = None
        out.append(WatchdogExpired(waited, expecting))
        if self.turn_open and not self.local_speaking:
            out.append(self._stop("local"))
        return out

    def close(self, now: float) -> list[Decision]:
        """The call is ending: close the open turn."""
        self._deadline = None
        return [self._stop("local")] if self.turn_open else []

    # -- helpers ---------------------------------------------------------------------------
    def _start(self, source: str) -> ProposeStart:
        self.turn_open = True
        return ProposeStart(source)

    def _stop(self, source: str) -> ProposeStop:
        self.turn_open = False
        return ProposeStop(source)

    def _maybe_hand_back(self, now: float) -> list[Decision]:
        if (self.mode is Mode.FALLBACK and self.connected and not self._replay_pending
                and not self.local_speaking and not self.turn_open):
            self.mode = Mode.REMOTE
            since = self._outage_since if self._outage_since is not None else now
            self._outage_since = None
            announced, self._fallback_announced = self._fallback_announced, False
            return [FallbackEnded(max(0.0, now - since))] if announced else []
        return []


# -- the pipecat base ------------------------------------------------------------------------


class VADTurnSTTService(SessionSTTService[Any]):
    """Base of the transcript-only services: local VAD turns, flush-confirmed ends, failover.

    Event handlers (besides pipecat's ``on_connected``, ``on_disconnected``,
    ``on_connection_error``, ``on_error``): ``on_fallback_started(service, reason)`` and
    ``on_fallback_ended(service, outage_s)``.

    A subclass implements :meth:`_open`, :meth:`_send`, :meth:`_request_flush`,
    :meth:`_recv_inbound` and :meth:`_close_session` for its wire format, and may override
    :meth:`_preamble` (bytes every connection starts with), :meth:`_keepalive`,
    :meth:`_encode_uplink` and :meth:`_classify`.
    """

    _end_of_turn: EndOfTurn = "flush"

    def __init__(
        self,
        *,
        sample_rate: int | None = None,
        vad_analyzer: VADAnalyzer | None = None,
        should_interrupt: bool = True,
        flush_timeout_s: float = 2.0,
        replay_buffer_s: float = 30.0,
        reconnect_delay_s: tuple[float, float] = (0.25, 5.0),
        rejected_retry_s: float = 30.0,
        fail_over_on_fatal: bool = False,
        vad_aggressiveness: int = 2,
        vad_start_ms: int = 80,
        vad_stop_ms: int = 800,
        keepalive_interval_s: float | None = None,
        allow_insecure: bool = False,
        ttfs_p99_latency: float | None = 0.0,
        **kwargs: Any,
    ) -> None:
        """Create the service.

        Args:
            sample_rate: Uplink rate; default: the pipeline's input rate.
            vad_analyzer: A pipecat VAD analyzer to take turns with; default: webrtcvad
                (:class:`~reson8_voice.vad.VoiceActivityDetector`) with the ``vad_*``
                settings below.
            should_interrupt: Whether a new turn interrupts the bot (passed to the
                recommended ``ExternalUserTurnStrategies``).
            flush_timeout_s: How long a finalise request may go unconfirmed before the
                session is declared dead and the local VAD takes over.
            replay_buffer_s: Outage audio kept for replay (oldest dropped, with a warning).
            reconnect_delay_s: (first, longest) reconnect backoff, with jitter.
            rejected_retry_s: Retry interval after a fatal error (rejected credentials,
                quota...): the call goes on with local turn detection meanwhile.
            fail_over_on_fatal: On a fatal error, mark the service unusable (pipecat's
                permanent-error path, for a ``ServiceSwitcher`` to fail over) instead of
                carrying on with local turn detection.
            vad_aggressiveness: webrtcvad aggressiveness 0-3.
            vad_start_ms: Voiced audio that confirms speech (the barge-in guard).
            vad_stop_ms: Silence that ends the utterance; 800 ms rides over mid-turn pauses.
            keepalive_interval_s: Send the protocol's keep-alive when no audio was sent for
                this long (None: never).
            allow_insecure: Permit credentials over plain ``ws://`` to a remote host.
            ttfs_p99_latency: Passed to pipecat; 0 because the final transcript is always
                pushed before the stop, so the aggregator needs no extra wait.
            **kwargs: Passed to pipecat's ``STTService``.
        """
        super().__init__(sample_rate=sample_rate, ttfs_p99_latency=ttfs_p99_latency, **kwargs)
        self._vad_analyzer = vad_analyzer
        self._should_interrupt = should_interrupt
        self._replay_buffer_s = replay_buffer_s
        self._reconnect_delay_s = reconnect_delay_s
        self._rejected_retry_s = rejected_retry_s
        self._fail_over_on_fatal = fail_over_on_fatal
        self._vad_args = (vad_aggressiveness, vad_start_ms, vad_stop_ms)
        self._keepalive_interval_s = keepalive_interval_s
        self._allow_insecure = allow_insecure
        self.policy = TranscriptTurnPolicy(end_of_turn=self._end_of_turn,
                                           flush_timeout_s=flush_timeout_s)
        self._conn_start = 0  # backlog position of the current connection's first byte
        self._anchor = 0  # a replay starts here: the server has answered for what precedes
        self._flush_positions: dict[str, int] = {}
        self._stop_position: int | None = None
        self._ttfb_started: float | None = None
        self._analyzer_speaking = False
        self._replays = 0
        #: seconds from the last turn-ending flush (or speech end) to its answer
        self.last_ttfb_s: float | None = None
        #: counters for operators
        self.stats: dict[str, int] = {"malformed": 0, "unknown": 0, "fallbacks": 0,
                                      "dropped_bytes": 0, "replayed_bytes": 0, "flushes": 0,
                                      "errors": 0, "keepalives": 0}
        for name in ("on_fallback_started", "on_fallback_ended"):
            self._register_event_handler(name)

    # -- the wire format (subclass hooks) ---------------------------------------------------
    @abstractmethod
    async def _open(self) -> Any:
        """Connect and complete the protocol's handshake; raise a typed error on failure."""

    @abstractmethod
    async def _send(self, session: Any, data: bytes) -> None:
        """Send uplink audio (already encoded) on ``session``."""

    @abstractmethod
    async def _request_flush(self, session: Any, flush_id: str) -> None:
        """Ask the backend to finalise everything sent; answer with ``FlushDone(flush_id)``."""

    @abstractmethod
    async def _recv_inbound(self, session: Any) -> Sequence[Inbound]:
        """Read the next server message; raise ConnectionClosed at the end."""

    @abstractmethod
    async def _close_session(self, session: Any) -> None:
        """Close ``session`` politely (errors are ignored by the caller)."""

    def _preamble(self) -> bytes:
        """Bytes each connection's stream starts with (e.g. a container header)."""
        return b""

    async def _keepalive(self, session: Any) -> None:
        """Keep an idle session alive (default: nothing to do)."""

    def _setup_uplink(self) -> None:
        """Check the pipeline's rate and set up the uplink encoding (at start)."""

    def _encode_uplink(self, audio: bytes) -> bytes:
        """Pipeline PCM -> uplink bytes (default: unchanged)."""
        return audio

    def _classify(self, exc: BaseException) -> ErrorFlags:
        """Flags for an error; override to classify protocol-specific codes."""
        return classify_error(exc)

    # -- pipecat conventions -----------------------------------------------------------------
    def can_generate_metrics(self) -> bool:
        """TTFB (from the flush), usage metrics."""
        return True

    @property
    def in_fallback(self) -> bool:
        """Whether the local VAD alone is taking turns right now."""
        return self.policy.mode is Mode.FALLBACK

    def service_metadata_frame(self) -> STTMetadataFrame:
        """Recommend external turn strategies: this service proposes the turns."""
        frame: STTMetadataFrame = super().service_metadata_frame()
        frame.user_turn_strategies = ExternalUserTurnStrategies(
            enable_interruptions=self._should_interrupt)
        return frame

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, frame: StartFrame) -> None:
        """Set up the local VAD and the backlog, then connect in the background."""
        await super().start(frame)
        self._setup_uplink()
        rate = self.sample_rate
        self._backlog = AudioBacklog(max(1, int(self._replay_buffer_s * rate
                                                * self._uplink_width())))
        if self._vad_analyzer is not None:
            self._vad_analyzer.set_sample_rate(rate)
        else:
            self._vad = PipelineVad(rate, *self._vad_args)
        self._start_tasks("stt")

    async def _finish(self) -> None:
        await self._apply(self.policy.close(time.monotonic()))

    async def _update_settings(self, delta: STTSettings) -> dict[str, Any]:  # type: ignore[override]
        """Apply a settings delta; any change reconnects between turns."""
        changed: dict[str, Any] = await super()._update_settings(delta)
        if changed:
            self._reconnect_requested = True
            await self._maybe_planned_reconnect()
        return changed

    async def _maybe_planned_reconnect(self) -> None:
        if (self._reconnect_requested and self._conn is not None and not self.policy.turn_open
                and self.policy.pending_flush is None):
            self._reconnect_requested = False
            logger.info(f"{self.name}: reconnecting to apply new settings")
            await self._close_quietly(self._conn)

    # -- audio in ----------------------------------------------------------------------------
    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        """Forward audio (or keep it for replay) and run the local VAD on it."""
        assert self._backlog is not None
        dropped = self._backlog.append(self._encode_uplink(audio))
        if dropped:
            self.stats["dropped_bytes"] += dropped
            logger.warning(f"{self.name}: outage backlog full, dropped {dropped} bytes")
        if self._healthy.is_set():
            await self._pump()
        await self._run_vad(audio)
        yield None

    async def _run_vad(self, audio: bytes) -> None:
        now = time.monotonic()
        if self._vad_analyzer is not None:
            state = await self._vad_analyzer.analyze_audio(audio)
            if state is VADState.SPEAKING and not self._analyzer_speaking:
                self._analyzer_speaking = True
                await self._local_started(now)
            elif state is VADState.QUIET and self._analyzer_speaking:
                self._analyzer_speaking = False
                await self._local_stopped(now)
            return
        assert self._vad is not None
        _, events = self._vad.process(audio)
        for event in events:
            if isinstance(event, SpeechStarted):
                await self._local_started(now)
            elif isinstance(event, SpeechStopped):
                await self._local_stopped(now)

    async def _local_started(self, now: float) -> None:
        self._stop_position = None
        await self._apply(self.policy.local_speech_started(now))

    async def _local_stopped(self, now: float) -> None:
        assert self._backlog is not None
        self._stop_position = self._backlog.position
        if self._end_of_turn == "server" and self.policy.turn_open and \
                self.policy.mode is Mode.REMOTE:
            self._ttfb_started = now
            await self.start_ttfb_metrics()
        await self._apply(self.policy.local_speech_stopped(now))

    async def _inject_silence(self, seconds: float) -> None:
        """Append silence to the stream (a keep-alive for protocols that have none)."""
        assert self._backlog is not None
        self._backlog.append(self._encode_uplink(bytes(2 * int(self.sample_rate * seconds))))
        await self._pump()

    # -- the connection ----------------------------------------------------------------------
    async def _connection_loop(self) -> None:
        """Connect, replay, receive; on failure fall back and retry with backoff."""
        delay = self._reconnect_delay_s[0]
        while not self._stopping:
            retry_after = delay
            try:
                session = await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                flags = self._classify(exc)
                await self._lost(f"cannot connect: {exc}")
                await self._call_event_handler("on_connection_error", str(exc))
                if flags.fatal:
                    await self._report(exc, flags)
                    if self._fail_over_on_fatal:
                        return
                    retry_after = self._rejected_retry_s
            else:
                delay = self._reconnect_delay_s[0]
                failure = await self._run_connection(session)
                if self._stopping:
                    return
                if failure is None:
                    retry_after = 0.05  # a planned or first reconnect is immediate
                else:
                    flags = self._classify(failure)
                    if flags.fatal:
                        if self._fail_over_on_fatal:
                            return
                        retry_after = self._rejected_retry_s
            await asyncio.sleep(retry_after * random.uniform(0.8, 1.2))
            delay = min(self._reconnect_delay_s[1], delay * 2)

    async def _run_connection(self, session: Any) -> Reson8Error | None:
        """Serve one connection; returns the server error that ended it, if one did."""
        assert self._backlog is not None
        self._conn = session
        now = time.monotonic()
        replay_from = max(self._anchor, self._backlog.start)
        replay = self._backlog.position - replay_from
        self._sent = self._conn_start = replay_from
        self._flush_positions.clear()
        await self._call_event_handler("on_connected")
        await self._apply(self.policy.connection_ready(now, replay_pending=replay > 0))
        reader = asyncio.create_task(self._receive(session))
        failure: Reson8Error | None = None
        try:
            preamble = self._preamble()
            if preamble:
                await self._send(session, preamble)
            if replay > 0:
                logger.info(f"{self.name}: replaying {replay} bytes of audio after the outage")
                self.stats["replayed_bytes"] += replay
                await self._replay()
                if self._end_of_turn == "flush":
                    self._replays += 1
                    await self._send_flush(f"replay-{self._replays}")
                await self._apply(self.policy.replay_done(time.monotonic()))
            self._healthy.set()
            await self._pump()
            reason, failure = await reader
        except (ConnectionClosed, OSError) as exc:
            reason = f"dropped: {exc}"
        finally:
            self._healthy.clear()
            if not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            self._conn = None
        await self._close_quietly(session)
        await self._call_event_handler("on_disconnected")
        if not self._stopping:
            await self._lost(reason)
        return failure

    async def _receive(self, session: Any) -> tuple[str, Reson8Error | None]:
        """Read until the connection ends; returns why, and the error that ended it."""
        while True:
            try:
                items = await self._recv_inbound(session)
            except ConnectionClosed as exc:
                reason = "closed by server" if exc.code in (1000, 1001) else f"dropped: {exc}"
                return reason, None
            except RemoteProtocolError as exc:
                self.stats["malformed"] += 1
                logger.warning(f"{self.name}: skipped a malformed message: {exc}")
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a socket error the client did not wrap
                return f"dropped: {exc.__class__.__name__}", None
            for item in items:
                if isinstance(item, Failure):
                    flags = self._classify(item.error)
                    await self._report(item.error, flags)
                    if flags.fatal or flags.retryable:
                        return f"server error {item.error}", item.error
                else:
                    await self._on_inbound(item)

    async def _on_inbound(self, item: Inbound) -> None:
        now = time.monotonic()
        if isinstance(item, Interim):
            await self._apply(self.policy.server_interim(now, item))
        elif isinstance(item, Final):
            if item.end_ms is not None:
                end = self._conn_start + int(item.end_ms * self.sample_rate / 1000) \
                    * self._uplink_width()
                self._anchor = max(self._anchor, min(end, self._sent))
            elif item.ends_turn and self._stop_position is not None:
                self._anchor = max(self._anchor, self._stop_position)
            await self._apply(self.policy.server_final(now, item))
        elif isinstance(item, FlushDone):
            position = self._flush_positions.pop(item.flush_id, None)
            if position is not None:
                self._anchor = max(self._anchor, position)
            await self._apply(self.policy.flush_done(now, item.flush_id))
        elif isinstance(item, Skip):
            self.stats["unknown"] += 1
            logger.debug(f"{self.name}: skipped: {item.reason}")

    async def _send_flush(self, flush_id: str) -> None:
        await self._pump()  # the flush covers everything received so far
        conn = self._conn
        if conn is None:
            return
        self._flush_positions[flush_id] = self._sent
        self.stats["flushes"] += 1
        try:
            await self._request_flush(conn, flush_id)
        except (ConnectionClosed, OSError) as exc:
            logger.debug(f"{self.name}: flush failed: {exc}")
            self._healthy.clear()

    async def _lost(self, reason: str) -> None:
        await self._apply(self.policy.connection_lost(time.monotonic(), reason))

    async def _report(self, exc: BaseException, flags: ErrorFlags) -> None:
        """Push an ErrorFrame with the error's category.

        Unless ``fail_over_on_fatal``, the service stays usable even for a permanent
        category: the local VAD keeps the call's turn-taking going.
        """
        self.stats["errors"] += 1
        try:
            category = ErrorCategory(flags.category)
        except ValueError:
            category = ErrorCategory.UNKNOWN
        frame = ErrorFrame(error=f"{self.name}: {exc}", exception=exc
                           if isinstance(exc, Exception) else None, category=category)
        if flags.fatal and self._fail_over_on_fatal:
            await self.push_error_frame(frame, force_treat_as_permanent=True)
            return
        frame.processor = self
        logger.warning(f"{self.name}: {exc} ({category.value}"
                       f"{', fatal' if flags.fatal else ''}"
                       f"{', retryable' if flags.retryable else ''})")
        await self._call_event_handler("on_error", frame)
        await self.push_frame(frame, FrameDirection.UPSTREAM)

    async def _watchdog_loop(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for decision in self.policy.check(now):
                if isinstance(decision, WatchdogExpired):
                    logger.warning(f"{self.name}: no {decision.expecting} within "
                                   f"{decision.waited_s:g} s: declaring the session dead")
                    self._healthy.clear()
                    if self._conn is not None:
                        await self._close_quietly(self._conn)
                else:
                    await self._apply([decision])
            interval = self._keepalive_interval_s
            if interval is not None and self._conn is not None and self._healthy.is_set() \
                    and now - self._last_send >= interval:
                self._last_send = now
                self.stats["keepalives"] += 1
                try:
                    await self._keepalive(self._conn)
                except (ConnectionClosed, OSError) as exc:
                    logger.debug(f"{self.name}: keepalive failed: {exc}")
            await self._maybe_planned_reconnect()

    # -- decisions -> frames -----------------------------------------------------------------
    async def _apply(self, decisions: Sequence[Decision]) -> None:
        for d in decisions:
            if isinstance(d, ProposeStart):
                await self.broadcast_frame(ProposedUserStartedSpeakingFrame)
            elif isinstance(d, ProposeStop):
                await self.broadcast_frame(ProposedUserStoppedSpeakingFrame)
                await self._maybe_planned_reconnect()
            elif isinstance(d, SendFlush):
                self._ttfb_started = time.monotonic()
                await self.start_ttfb_metrics()
                await self._send_flush(d.flush_id)
            elif isinstance(d, PushInterim):
                await self.push_frame(InterimTranscriptionFrame(
                    d.item.text, self._user_id, time_now_iso8601(),
                    _language(d.item.language), result=d.item.result))
            elif isinstance(d, PushFinal):
                await self._push_final(d)
            elif isinstance(d, FlushConfirmed):
                if not d.answered:
                    self._measured()
                    await self.stop_ttfb_metrics()
            elif isinstance(d, FallbackStarted):
                self.stats["fallbacks"] += 1
                logger.warning(f"{self.name}: local turn detection takes over ({d.reason})")
                await self._call_event_handler("on_fallback_started", d.reason)
            elif isinstance(d, FallbackEnded):
                logger.info(f"{self.name}: service back after {d.outage_s:.1f} s")
                await self._call_event_handler("on_fallback_ended", d.outage_s)

    def _measured(self) -> None:
        if self._ttfb_started is not None:
            self.last_ttfb_s = time.monotonic() - self._ttfb_started
            self._ttfb_started = None

    async def _push_final(self, d: PushFinal) -> None:
        item, language = d.item, _language(d.item.language)
        if d.finalized:
            self._measured()
        await self.emit_stt_usage_metrics()
        await self.push_frame(TranscriptionFrame(
            item.text, self._user_id, time_now_iso8601(), language, result=item.result,
            finalized=d.finalized))
        await self._handle_transcription(item.text, True, language)

    @traced_stt
    async def _handle_transcription(self, transcript: str, is_final: bool,
                                    language: Language | None = None) -> None:
        """Tracing hook for final transcripts."""


def _language(language: str | None) -> Language | None:
    if not language:
        return None
    try:
        return Language(language)
    except ValueError:
        return None  # still in the frame's ``result``
