"""The JSON wire format of the turns and realtime endpoints, as pure functions.

``parse_event`` turns one text frame into an event of :mod:`reson8_voice.events`;
``serialize_event`` does the reverse. Both are sans-I/O and cheap (a few microseconds for
a candidate with 20 words). Rules, from spec files 000 and 001:

- Unknown extra fields are tolerated (servers add fields over time).
- An unknown ``type`` is not an error: it parses to :class:`UnknownEvent`.
- Malformed JSON, a missing ``type`` or a field of the wrong type raises
  :class:`RemoteProtocolError`, quoting at most 200 characters of the input.
- Optional fields absent on the wire stay absent when serialized.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from ._fields import FieldError as _FieldError
from ._fields import decode_tagged as _decode_tagged
from ._fields import opt_bool as _opt_bool
from ._fields import opt_num as _opt_num
from ._fields import opt_str as _opt_str
from ._fields import req_str as _str
from .errors import LocalProtocolError, RemoteProtocolError
from .events import (
    ErrorEvent,
    Event,
    FlushConfirmation,
    FlushRequest,
    Transcript,
    TurnContinuation,
    TurnEnd,
    TurnEndCandidate,
    TurnStart,
    UnknownEvent,
    Word,
)

__all__ = ["event_to_dict", "parse_event", "serialize_event"]

_TURN_START = TurnStart()
_TURN_CONTINUATION = TurnContinuation()
_TURN_END = TurnEnd()


def _words(obj: Mapping[str, Any]) -> tuple[Word, ...] | None:
    raw = obj.get("words")
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _FieldError(f"field 'words' must be an array, got {type(raw).__name__}")
    words = []
    for item in raw:
        if not isinstance(item, dict):
            raise _FieldError("each word must be an object")
        words.append(
            Word(
                _str(item, "text"),
                _opt_num(item, "start_ms"),
                _opt_num(item, "duration_ms"),
                _opt_num(item, "confidence"),
            )
        )
    return tuple(words)


def _candidate(obj: Mapping[str, Any]) -> TurnEndCandidate:
    return TurnEndCandidate(
        _str(obj, "text"),
        _opt_str(obj, "language"),
        _opt_num(obj, "start_ms"),
        _opt_num(obj, "duration_ms"),
        _words(obj),
    )


def _transcript(obj: Mapping[str, Any]) -> Transcript:
    return Transcript(
        _str(obj, "text"),
        _opt_bool(obj, "is_final"),
        _opt_num(obj, "start_ms"),
        _opt_num(obj, "duration_ms"),
        _words(obj),
    )


_PARSERS: dict[str, Callable[[Mapping[str, Any]], Event]] = {
    "turn_start": lambda _: _TURN_START,
    "turn_end_candidate": _candidate,
    "turn_continuation": lambda _: _TURN_CONTINUATION,
    "turn_end": lambda _: _TURN_END,
    "transcript": _transcript,
    "flush_request": lambda o: FlushRequest(_opt_str(o, "id")),
    "flush_confirmation": lambda o: FlushConfirmation(_opt_str(o, "id")),
    "error": lambda o: ErrorEvent(_str(o, "code"), _str(o, "message")),
}


def parse_event(text: str | bytes) -> Event:
    """Parse one JSON text frame into a typed event.

    Raises:
        RemoteProtocolError: the frame is not JSON, not an object, has no string ``type``,
            or a known field has the wrong type.
    """
    obj, kind = _decode_tagged(text)
    parser = _PARSERS.get(kind)
    if parser is None:
        return UnknownEvent(kind, obj)
    try:
        return parser(obj)
    except _FieldError as exc:
        raise RemoteProtocolError(f"bad {kind!r} message: {exc}", text) from None


def _word_dict(word: Word) -> dict[str, Any]:
    out: dict[str, Any] = {"text": word.text}
    if word.start_ms is not None:
        out["start_ms"] = word.start_ms
    if word.duration_ms is not None:
        out["duration_ms"] = word.duration_ms
    if word.confidence is not None:
        out["confidence"] = word.confidence
    return out


def event_to_dict(event: Event) -> dict[str, Any]:
    """The JSON object of ``event``, with absent optional fields left out."""
    if isinstance(event, UnknownEvent):
        return dict(event.data)
    out: dict[str, Any] = {"type": event.type}
    if isinstance(event, TurnEndCandidate | Transcript):
        out["text"] = event.text
        if isinstance(event, TurnEndCandidate):
            if event.language is not None:
                out["language"] = event.language
        elif event.is_final is not None:
            out["is_final"] = event.is_final
        if event.start_ms is not None:
            out["start_ms"] = event.start_ms
        if event.duration_ms is not None:
            out["duration_ms"] = event.duration_ms
        if event.words is not None:
            out["words"] = [_word_dict(w) for w in event.words]
    elif isinstance(event, FlushRequest):
        if event.id is not None:
            out["id"] = event.id
    elif isinstance(event, FlushConfirmation):
        out["id"] = event.id  # spec 000: always present, null when none was given
    elif isinstance(event, ErrorEvent):
        out["code"] = event.code
        out["message"] = event.message
    elif not isinstance(event, TurnStart | TurnContinuation | TurnEnd):
        raise LocalProtocolError(f"not a reson8 event: {event!r}")
    return out


def serialize_event(event: Event) -> str:
    """Serialize ``event`` to one compact JSON text frame."""
    return json.dumps(event_to_dict(event), separators=(",", ":"), ensure_ascii=False)
