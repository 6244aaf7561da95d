"""One frozen type per message of the Reson8 turns and realtime endpoints.

Named as on the wire (spec 001, turns; spec 000, realtime). Optional fields default to
``None`` and mean *absent on the wire*: :func:`reson8_voice.serialize_event` leaves them out,
so a parsed spec example serializes back to the same JSON value.

Server -> client (turns): :class:`TurnStart`, :class:`TurnEndCandidate`,
:class:`TurnContinuation`, :class:`TurnEnd`. Server -> client (realtime): :class:`Transcript`,
:class:`FlushConfirmation`. Client -> server (realtime): :class:`FlushRequest`. Both
endpoints: :class:`ErrorEvent` (an in-session error; the documents define only upgrade
rejections, so the embedded server uses this shape, that of the gateway's ``error``, to say
why it is about to close). Anything else parses to :class:`UnknownEvent`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

__all__ = [
    "ErrorEvent",
    "Event",
    "FlushConfirmation",
    "FlushRequest",
    "Transcript",
    "TurnContinuation",
    "TurnEnd",
    "TurnEndCandidate",
    "TurnEvent",
    "TurnStart",
    "UnknownEvent",
    "Word",
]


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word (``words`` items of spec 000 and 001).

    ``start_ms``/``duration_ms`` are present with include_timestamps, ``confidence`` with
    include_confidence (realtime only). Times are from the start of the session's audio.
    """

    text: str
    start_ms: float | None = None
    duration_ms: float | None = None
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class TurnStart:
    """The speaker began a new turn (not sent when a turn resumes after a continuation)."""

    type: ClassVar[str] = "turn_start"


@dataclass(frozen=True, slots=True)
class TurnEndCandidate:
    """A silence likely to end the turn, with the whole turn's text so far.

    Confirmed by :class:`TurnEnd` or withdrawn by :class:`TurnContinuation`.
    """

    type: ClassVar[str] = "turn_end_candidate"
    text: str
    language: str | None = None
    start_ms: float | None = None
    duration_ms: float | None = None
    words: tuple[Word, ...] | None = None


@dataclass(frozen=True, slots=True)
class TurnContinuation:
    """The speaker went on: the previous candidate is withdrawn."""

    type: ClassVar[str] = "turn_continuation"


@dataclass(frozen=True, slots=True)
class TurnEnd:
    """The previous candidate is the turn's end. Carries no text: the candidate's is final."""

    type: ClassVar[str] = "turn_end"


@dataclass(frozen=True, slots=True)
class Transcript:
    """A realtime transcript; ``is_final`` is present only with include_interim."""

    type: ClassVar[str] = "transcript"
    text: str
    is_final: bool | None = None
    start_ms: float | None = None
    duration_ms: float | None = None
    words: tuple[Word, ...] | None = None

    @property
    def final(self) -> bool:
        """Whether this result is final (absent ``is_final`` means final, spec 000)."""
        return self.is_final is not False


@dataclass(frozen=True, slots=True)
class FlushRequest:
    """Ask the realtime server to finalise buffered audio; ``id`` is echoed back."""

    type: ClassVar[str] = "flush_request"
    id: str | None = None


@dataclass(frozen=True, slots=True)
class FlushConfirmation:
    """The flush with this ``id`` is done (``id`` is always sent, null when none was given)."""

    type: ClassVar[str] = "flush_confirmation"
    id: str | None = None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """An error inside an open session, sent before the server closes the connection."""

    type: ClassVar[str] = "error"
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """A message whose ``type`` this version does not know: log it and skip it."""

    name: str
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def type(self) -> str:
        """The unknown ``type`` as sent."""
        return self.name


#: The four events of the turns protocol.
TurnEvent: TypeAlias = TurnStart | TurnEndCandidate | TurnContinuation | TurnEnd

#: Every message this package parses or serializes.
Event: TypeAlias = (
    TurnStart
    | TurnEndCandidate
    | TurnContinuation
    | TurnEnd
    | Transcript
    | FlushRequest
    | FlushConfirmation
    | ErrorEvent
    | UnknownEvent
)
