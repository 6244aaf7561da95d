"""Who decides the turn: the remote service, the local VAD, or both. Sans-I/O.

:class:`TurnArbiter` merges two turn sources into one stream of decisions for the pipecat
adapter (or any other consumer):

- the remote turns endpoint's events (spec 001), validated by a :class:`TurnStateMachine`;
- the local VAD's speech starts and stops, always running on the audio being forwarded.

In ``REMOTE`` mode the server decides; the local VAD may open the turn first (barge-in
policy ``first`` or ``local``) because it hears speech ~100 ms sooner. In ``FALLBACK`` mode
(the service unreachable, dropped, rejecting the session, or silent) the local VAD proposes
turn start and stop, and what the server still says (transcripts of replayed audio) only
contributes text. Turn detection is handed back to the server between turns: once the
connection is back, the replay is sent, nobody is speaking and no server turn is open.

Every method takes the current time (seconds, monotonic) and returns a list of
:data:`Decision` values for the caller to act on, so the whole policy is testable without
sockets, clocks or pipecat. The liveness watchdog is here too: :meth:`TurnArbiter.check`
reports :class:`WatchdogExpired` when the server owes an event (a ``turn_start`` after
local speech onset, a candidate after local speech end) and stays silent too long.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal, TypeAlias

from .errors import RemoteProtocolError
from .events import TurnContinuation, TurnEndCandidate, TurnEvent, TurnStart
from .turns import CompletedTurn, TurnStateMachine

__all__ = [
    "BargeInPolicy",
    "CancelEager",
    "Candidate",
    "Decision",
    "FallbackEnded",
    "FallbackStarted",
    "FinalTranscript",
    "Mode",
    "ProposeStart",
    "ProposeStop",
    "ProtocolViolation",
    "TurnArbiter",
    "WatchdogExpired",
]

BargeInPolicy: TypeAlias = Literal["server", "local", "first"]

#: how far short of the local VAD's end of the replayed speech a server turn may end and
#: still count as answering it (the two VADs place speech ends differently)
_REPLAY_SLACK_MS = 1000.0


def _turn_end_ms(turn: CompletedTurn) -> float:
    """Session time at which a finished turn's speech ends (infinite without timestamps:
    such a turn is taken to answer for everything replayed)."""
    if turn.start_ms is None or turn.duration_ms is None:
        return float("inf")
    return turn.start_ms + turn.duration_ms


class Mode(enum.Enum):
    """Which source proposes turn boundaries."""

    REMOTE = "remote"
    FALLBACK = "fallback"


@dataclass(frozen=True, slots=True)
class ProposeStart:
    """Propose that the user started speaking (barge-in). ``source``: server or local."""

    source: str


@dataclass(frozen=True, slots=True)
class ProposeStop:
    """Propose that the user's turn ended (end of utterance)."""

    source: str


@dataclass(frozen=True, slots=True)
class Candidate:
    """A turn end candidate: an interim transcript, and an eager end of turn if enabled."""

    event: TurnEndCandidate
    eager: bool


@dataclass(frozen=True, slots=True)
class CancelEager:
    """The candidate was withdrawn (``turn_continuation``)."""


@dataclass(frozen=True, slots=True)
class FinalTranscript:
    """The final text of a turn. ``recovered``: it came from audio replayed after an outage."""

    turn: CompletedTurn
    recovered: bool = False


@dataclass(frozen=True, slots=True)
class FallbackStarted:
    """Local turn detection took over."""

    reason: str


@dataclass(frozen=True, slots=True)
class FallbackEnded:
    """The server decides turns again."""

    outage_s: float


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The server broke the turn rules; the state was resynchronised."""

    error: RemoteProtocolError


@dataclass(frozen=True, slots=True)
class WatchdogExpired:
    """The server owed an event and stayed silent: treat the connection as dead."""

    waited_s: float
    expecting: str


Decision: TypeAlias = (
    ProposeStart | ProposeStop | Candidate | CancelEager | FinalTranscript | FallbackStarted
    | FallbackEnded | ProtocolViolation | WatchdogExpired
)


class TurnArbiter:
    """Merges server turn events and local VAD into one consistent turn stream.

    Guarantees: every proposed start is followed by exactly one proposed stop before the
    next start, no matter how the sources misbehave; a turn open when the connection dies
    is closed with its text so far, or handed to the local VAD if the caller is still
    speaking.
    """

    def __init__(
        self, *, barge_in: BargeInPolicy = "first", eager: bool = False,
        watchdog_s: float = 2.0, min_barge_in_s: float = 0.0,
    ) -> None:
        """Create an arbiter that starts in FALLBACK until the first connection is ready.

        ``min_barge_in_s``: while the bot is speaking, a turn start is held until the caller
        has spoken this long (or the server's candidate has words), so a cough or a short
        noise does not cut the bot off; 0 proposes at once.
        """
        self.barge_in: BargeInPolicy = barge_in
        self.min_barge_in_s = min_barge_in_s
        self.bot_speaking = False
        self._held_start: tuple[float, str] | None = None
        self.eager = eager
        self.watchdog_s = watchdog_s
        self.mode = Mode.FALLBACK
        self.server = TurnStateMachine(peer=True)
        self.turn_open = False  # a proposed start awaits its stop
        self.local_speaking = False
        self.connected = False
        self._replay_pending = False
        self._replay_owed = False
        self._replay_deadline: float | None = None
        self._replay_speech_ms = 0.0  # session time at which the replayed speech ends
        self._answered_ms = -1.0  # session time the server's finished turns reach (-1: none)
        self._replay_progress = False  # the server said something on this session
        self._ready_at = 0.0
        self._paused_in_turn = False  # the local VAD heard the open turn end
        self._outage_since: float | None = 0.0
        self._deadline: tuple[float, str] | None = None
        self._false_start: float | None = None
        self._local_started = 0.0
        self._server_heard_at = -1.0
        self._fallback_announced = False
        #: local speech at least this long must have produced a server turn_start
        self.min_server_speech_s = 0.6
        #: how long a short local-only start waits for the server before it is withdrawn
        self.false_start_s = 0.8

    # -- inputs ----------------------------------------------------------------------------
    def connection_ready(self, now: float, *, replay_pending: bool = False,
                         replay_has_speech: bool = False,
                         replay_speech_s: float = 0.0) -> list[Decision]:
        """A session is open.

        ``replay_pending``: outage audio is being replayed first; ``replay_has_speech``:
        the local VAD heard speech in it, so the server owes a turn for it before it may
        decide turns again (otherwise its answers for old speech would read as new turns).
        ``replay_speech_s``: seconds of audio from the replay's start to the end of that
        speech (session time). The server owes turns up to there (turns without timestamps
        count as reaching it); one that only keeps real time needs that long to hear it, so
        it is not declared dead before then (plus twice ``watchdog_s``, extended by each
        of its events). If it answers some of the replay and then goes quiet while the
        caller is silent, it is alive and has said all it will: turns are handed back.
        """
        self.connected = True
        self._replay_pending = replay_pending
        self._replay_owed = replay_has_speech
        self._replay_speech_ms = replay_speech_s * 1000
        self._answered_ms = -1.0
        self._replay_progress = False
        self._ready_at = now
        self.server.reset()
        self._deadline = None
        return self._maybe_hand_back(now)

    def replay_done(self, now: float) -> list[Decision]:
        """All replayed audio has been sent."""
        self._replay_pending = False
        if self._replay_owed and self._answered_for_replay():
            self._replay_owed = False  # answered while it was still going out
        if self._replay_owed:
            # the server must answer for the replayed speech, or it is no better than the last
            heard_at = self._ready_at + self._replay_speech_ms / 1000
            self._replay_deadline = max(now, heard_at) + 2 * self.watchdog_s
        return self._maybe_hand_back(now)

    def replay_heard(self, now: float) -> list[Decision]:
        """The server has received the whole replay (it answered a ping sent after it).

        It is alive: if it then says nothing for twice ``watchdog_s`` while the caller is
        silent, the replayed speech was not a turn to it (a cough), and turns are handed
        back instead of the session being declared dead.
        """
        self._replay_progress = True
        self._extend_replay_deadline(now)
        return []

    def connection_paused(self, now: float) -> list[Decision]:
        """A planned reconnect between turns (new settings): no fallback, no turn change."""
        self.connected = False
        self._deadline = None
        self.server.reset()
        return []

    def connection_lost(self, now: float, reason: str) -> list[Decision]:
        """The session ended (drop, rejection, watchdog). Closes or hands over its turn."""
        self.connected = False
        self._deadline = None
        out: list[Decision] = []
        closed = self.server.close()
        if self.mode is Mode.REMOTE:
            self.mode = Mode.FALLBACK
            self._outage_since = now
            out.append(FallbackStarted(reason))
            self._fallback_announced = True
        elif not self._fallback_announced:
            out.append(FallbackStarted(reason))
            self._fallback_announced = True
        if closed is not None and closed.text:
            out.append(FinalTranscript(closed))
        if self.turn_open and (not self.local_speaking or self._paused_in_turn):
            # over, or the caller is already on a new utterance: close the old turn
            out.append(self._stop("local"))
            if self.local_speaking:
                out.append(self._start("local"))
        self._paused_in_turn = False
        return out

    def local_speech_started(self, now: float) -> list[Decision]:
        """The local VAD confirmed speech."""
        self.local_speaking = True
        self._local_started = now
        out: list[Decision] = []
        if not self.turn_open and (self.mode is Mode.FALLBACK or self.barge_in != "server"):
            out.extend(self._start_or_hold(now, "local"))
        return out

    def local_speech_stopped(self, now: float, speech_s: float | None = None) -> list[Decision]:
        """The local VAD heard the speech end; ``speech_s``: how long the speech lasted
        (without the VAD's stop hangover), if known."""
        self.local_speaking = False
        self._paused_in_turn = self.turn_open
        self._extend_replay_deadline(now)  # the owed turn cannot end before the caller stops
        out: list[Decision] = []
        if self.mode is Mode.FALLBACK:
            if self.turn_open:
                out.append(self._stop("local"))
            out.extend(self._maybe_hand_back(now))
        elif self.server.in_turn:
            # a pause: the server owes a candidate, or the end of the candidate it sent
            owed = "turn_end" if self.server.candidate is not None else "turn_end_candidate"
            self._deadline = (now + self.watchdog_s, owed)
        elif self._server_heard_at >= self._local_started:
            pass  # the server already answered for this speech (its turn may be over)
        elif (speech_s if speech_s is not None else now - self._local_started) \
                >= self.min_server_speech_s:
            # speech the server must have heard, yet no turn_start: it owes one
            self._deadline = (now + self.watchdog_s, "turn_start")
        elif self.turn_open:
            # too short for the server to call it speech (a click, a cough): give it a
            # moment, then withdraw the locally opened turn
            self._false_start = now + self.false_start_s
        return out

    def server_event(self, now: float, event: TurnEvent) -> list[Decision]:
        """A turn event from the server; illegal sequences are reported and resynchronised."""
        self._deadline = None
        self._false_start = None
        self._server_heard_at = now
        self._replay_progress = True
        self._extend_replay_deadline(now)  # it is working through the replay
        out: list[Decision] = []
        try:
            turn = self.server.process(event)
        except RemoteProtocolError as exc:
            out.append(ProtocolViolation(exc))
            turn = self.server.resync(event)
            if isinstance(event, TurnContinuation):
                return out  # nothing was pending: nothing to withdraw
            if turn is not None and self.mode is Mode.REMOTE:
                # a turn the server abandoned: close it with what it had said
                out.extend(self._finish(turn))
                if isinstance(event, TurnStart):
                    out.extend(self._on_start(now))
                return out
        if self.mode is Mode.FALLBACK:
            if isinstance(event, TurnEndCandidate):
                out.append(Candidate(event, eager=False))
            elif turn is not None:
                if turn.text:
                    out.append(FinalTranscript(turn, recovered=True))
                self._answered_ms = max(self._answered_ms, _turn_end_ms(turn))
                if not self._replay_pending and self._answered_for_replay():
                    self._replay_owed = False
                    self._replay_deadline = None
                out.extend(self._maybe_hand_back(now))
            return out
        if isinstance(event, TurnStart):
            out.extend(self._on_start(now))
        elif isinstance(event, TurnEndCandidate):
            if not self.turn_open and event.text.strip():
                out.extend(self._release_held())  # words: it was speech, not a cough
            if not self.turn_open and self.barge_in != "local" and self._held_start is None:
                out.append(self._start("server"))
            if self.turn_open:
                out.append(Candidate(event, eager=self.eager))
        elif isinstance(event, TurnContinuation):
            out.append(CancelEager())
        elif turn is not None:
            out.extend(self._finish(turn))
        return out

    def check(self, now: float) -> list[Decision]:
        """The watchdog: call periodically (every ~100 ms) while connected."""
        out: list[Decision] = []
        if self._held_start is not None and now >= self._held_start[0]:
            if self.local_speaking:
                out.extend(self._release_held())  # still talking: a real barge-in
            else:
                self._held_start = None  # it was short: the bot talks on
        if (self.connected and self._replay_deadline is not None and not self.local_speaking
                and now >= self._replay_deadline):
            self._replay_deadline = None
            if self._replay_progress:
                # it answered, went quiet, and the caller is silent: it has said all it will
                self._replay_owed = False
                out.extend(self._maybe_hand_back(now))
            else:  # the new session never answered for the replayed speech: it is dead too
                out.append(WatchdogExpired(2 * self.watchdog_s, "turn for the replayed speech"))
        if self._false_start is not None and now >= self._false_start:
            self._false_start = None
            if self.turn_open and not self.local_speaking and not self.server.in_turn:
                out.append(self._stop("local"))
        if self.connected and self._deadline is not None and now >= self._deadline[0]:
            expecting = self._deadline[1]
            self._deadline = None
            out.append(WatchdogExpired(self.watchdog_s, expecting))
        return out

    def close(self, now: float) -> list[Decision]:
        """The call is ending: close whatever turn is open."""
        out: list[Decision] = []
        closed = self.server.close()
        if closed is not None and closed.text and self.mode is Mode.REMOTE:
            out.append(FinalTranscript(closed))
        if self.turn_open:
            out.append(self._stop("local"))
        return out

    # -- helpers ---------------------------------------------------------------------------
    def _answered_for_replay(self) -> bool:
        return self._answered_ms >= max(0.0, self._replay_speech_ms - _REPLAY_SLACK_MS)

    def _extend_replay_deadline(self, now: float) -> None:
        if self._replay_deadline is not None:
            self._replay_deadline = max(self._replay_deadline, now + 2 * self.watchdog_s)

    def _on_start(self, now: float) -> list[Decision]:
        if self.turn_open or self.barge_in == "local":
            return []
        return self._start_or_hold(now, "server")

    def _start_or_hold(self, now: float, source: str) -> list[Decision]:
        """Propose a start, or hold it while the bot talks (the barge-in guard)."""
        if self.bot_speaking and self.min_barge_in_s > 0:
            if self._held_start is None:
                since = self._local_started if self.local_speaking else now
                self._held_start = (since + self.min_barge_in_s, source)
            return []
        return [self._start(source)]

    def _release_held(self) -> list[Decision]:
        if self._held_start is None or self.turn_open:
            self._held_start = None
            return []
        source = self._held_start[1]
        self._held_start = None
        return [self._start(source)]

    def _finish(self, turn: CompletedTurn) -> list[Decision]:
        self._held_start = None
        out: list[Decision] = []
        if not self.turn_open and turn.text:
            out.append(self._start("server"))  # a turn the local VAD never opened
        if turn.text:
            out.append(FinalTranscript(turn))
        if self.turn_open:
            out.append(self._stop("server"))
        return out

    def _start(self, source: str) -> ProposeStart:
        self.turn_open = True
        self._paused_in_turn = False
        return ProposeStart(source)

    def _stop(self, source: str) -> ProposeStop:
        self.turn_open = False
        self._paused_in_turn = False
        return ProposeStop(source)

    def _maybe_hand_back(self, now: float) -> list[Decision]:
        if (self.mode is Mode.FALLBACK and self.connected and not self._replay_pending
                and not self._replay_owed and not self.local_speaking
                and not self.server.in_turn and not self.turn_open):
            self.mode = Mode.REMOTE
            self._replay_deadline = None
            since = self._outage_since if self._outage_since is not None else now
            self._outage_since = None
            announced, self._fallback_announced = self._fallback_announced, False
            return [FallbackEnded(max(0.0, now - since))] if announced else []
        return []
