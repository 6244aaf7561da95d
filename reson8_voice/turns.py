"""The turn state machine: the one place that knows the turns protocol's rules (spec 001).

Rules::

    state        event                 next        note
    IDLE         turn_start            IN_TURN     a new turn opens
    IN_TURN      turn_end_candidate    CANDIDATE   the turn's whole text so far
    CANDIDATE    turn_continuation     IN_TURN     the candidate is withdrawn
    CANDIDATE    turn_end              IDLE        the candidate is final
    anything else is illegal

``turn_end`` carries no text: the completed turn (text, words, language, timing) is
assembled from the last candidate. A ``turn_continuation`` withdraws the candidate, and the
next candidate repeats the whole turn's text.

The machine does not know which side it runs on. The server feeds it what it is about to
emit (``peer=False``: an illegal event is a :class:`LocalProtocolError`, a bug to fix); the
client feeds it what it received (``peer=True``: a :class:`RemoteProtocolError`), and can
:meth:`TurnStateMachine.resync` to the state the peer evidently is in, so a misbehaving
server is reported, never a crash.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import LocalProtocolError, RemoteProtocolError
from .events import TurnContinuation, TurnEnd, TurnEndCandidate, TurnEvent, TurnStart, Word

__all__ = ["CompletedTurn", "IllegalTransition", "TurnState", "TurnStateMachine"]


class TurnState(enum.Enum):
    """Where a turns session is between events."""

    IDLE = "idle"
    IN_TURN = "in_turn"
    CANDIDATE = "candidate"


_TRANSITIONS: dict[tuple[TurnState, str], TurnState] = {
    (TurnState.IDLE, TurnStart.type): TurnState.IN_TURN,
    (TurnState.IN_TURN, TurnEndCandidate.type): TurnState.CANDIDATE,
    (TurnState.CANDIDATE, TurnContinuation.type): TurnState.IN_TURN,
    (TurnState.CANDIDATE, TurnEnd.type): TurnState.IDLE,
}

#: The state each event leaves a well-behaved peer in, used to resynchronise.
_IMPLIED: dict[str, TurnState] = {
    TurnStart.type: TurnState.IN_TURN,
    TurnEndCandidate.type: TurnState.CANDIDATE,
    TurnContinuation.type: TurnState.IN_TURN,
    TurnEnd.type: TurnState.IDLE,
}


class IllegalTransition(Exception):
    """Mixin carried by both protocol errors raised for an illegal event."""

    state: TurnState
    event_type: str


class _LocalIllegal(LocalProtocolError, IllegalTransition):
    pass


class _RemoteIllegal(RemoteProtocolError, IllegalTransition):
    pass


@dataclass(frozen=True, slots=True)
class CompletedTurn:
    """A finished turn, assembled from its last candidate.

    ``cut_short`` is true when the turn was closed without a ``turn_end`` (the connection
    died, or the peer broke the protocol); its text is then the last text seen, possibly of
    a withdrawn candidate.
    """

    index: int
    text: str
    language: str | None = None
    start_ms: float | None = None
    duration_ms: float | None = None
    words: tuple[Word, ...] | None = None
    continuations: int = 0
    cut_short: bool = False


class TurnStateMachine:
    """Validates a stream of turn events and assembles completed turns."""

    def __init__(self, *, peer: bool = True) -> None:
        """Create a machine; ``peer`` says whether events come from the remote side."""
        self._peer = peer
        self._state = TurnState.IDLE
        self._index = 0
        self._candidate: TurnEndCandidate | None = None
        self._last_text: TurnEndCandidate | None = None
        self._continuations = 0

    def __repr__(self) -> str:
        return f"<TurnStateMachine {self._state.value} turn={self._index}>"

    @property
    def state(self) -> TurnState:
        """The current state."""
        return self._state

    @property
    def turn_index(self) -> int:
        """1-based number of the current (or last) turn; 0 before the first."""
        return self._index

    @property
    def in_turn(self) -> bool:
        """Whether a turn is open (started and not ended)."""
        return self._state is not TurnState.IDLE

    @property
    def candidate(self) -> TurnEndCandidate | None:
        """The pending candidate, if the state is CANDIDATE."""
        return self._candidate

    @property
    def text_so_far(self) -> str:
        """The latest text of the open turn, including a withdrawn candidate's."""
        return self._last_text.text if self._last_text is not None else ""

    def allows(self, event: TurnEvent) -> bool:
        """Whether ``event`` is legal now."""
        return (self._state, event.type) in _TRANSITIONS

    def process(self, event: TurnEvent) -> CompletedTurn | None:
        """Apply ``event``; return the completed turn on ``turn_end``.

        Raises:
            LocalProtocolError | RemoteProtocolError: the event is illegal in this state
                (which one depends on ``peer``); both are :class:`IllegalTransition`.
        """
        target = _TRANSITIONS.get((self._state, event.type))
        if target is None:
            cls = _RemoteIllegal if self._peer else _LocalIllegal
            err = cls(f"illegal {event.type!r} in state {self._state.value!r}")
            err.state = self._state
            err.event_type = event.type
            raise err
        return self._apply(event, target)

    def resync(self, event: TurnEvent) -> CompletedTurn | None:
        """Force the state ``event`` implies after a protocol violation.

        Returns the open turn, closed with ``cut_short=True``, when ``event`` starts a new
        turn over it; a stray ``turn_end`` closes the open turn the same way.
        """
        if self.allows(event):
            return self.process(event)
        closed: CompletedTurn | None = None
        if self.in_turn and isinstance(event, TurnStart | TurnEnd):
            closed = self.close()
        if isinstance(event, TurnEnd):
            return closed
        if isinstance(event, TurnEndCandidate) and self._state is TurnState.IDLE:
            self._open()
        if isinstance(event, TurnContinuation) and self._state is TurnState.IDLE:
            self._open()
            return closed
        self._apply(event, _IMPLIED[event.type])
        return closed

    def close(self) -> CompletedTurn | None:
        """Close the open turn without ``turn_end`` (the connection died); None if idle."""
        if not self.in_turn:
            return None
        turn = self._completed(self._candidate or self._last_text, cut_short=True)
        self._reset_turn()
        return turn

    def reset(self) -> None:
        """Forget the open turn (a new connection starts idle); the turn count is kept."""
        self._reset_turn()

    def _open(self) -> None:
        self._index += 1
        self._continuations = 0
        self._candidate = None
        self._last_text = None
        self._state = TurnState.IN_TURN

    def _apply(self, event: TurnEvent, target: TurnState) -> CompletedTurn | None:
        if isinstance(event, TurnStart):
            self._open()
            return None
        if isinstance(event, TurnEndCandidate):
            self._candidate = self._last_text = event
        elif isinstance(event, TurnContinuation):
            self._candidate = None
            self._continuations += 1
        else:
            turn = self._completed(self._candidate, cut_short=False)
            self._reset_turn()
            return turn
        self._state = target
        return None

    def _completed(self, src: TurnEndCandidate | None, *, cut_short: bool) -> CompletedTurn:
        if src is None:
            return CompletedTurn(self._index, "", continuations=self._continuations,
                                 cut_short=cut_short)
        return CompletedTurn(
            self._index, src.text, src.language, src.start_ms, src.duration_ms, src.words,
            self._continuations, cut_short,
        )

    def _reset_turn(self) -> None:
        self._state = TurnState.IDLE
        self._candidate = None
        self._last_text = None
        self._continuations = 0
