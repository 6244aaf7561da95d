"""The wire format against the spec documents' own examples and field tables."""

from __future__ import annotations

import json
from typing import Any

import pytest

from reson8_voice import (
    ErrorEvent,
    FlushConfirmation,
    FlushRequest,
    RemoteProtocolError,
    Transcript,
    TurnContinuation,
    TurnEnd,
    TurnEndCandidate,
    TurnStart,
    UnknownEvent,
    Word,
    parse_event,
    serialize_event,
)
from reson8_voice.wire import event_to_dict

from .spec_vectors import SPEC_DIR, SPEC_FILES, extract, load

# The field tables of spec 001 (turns) and 000 (realtime): name -> JSON type.
NUMBER, STRING, BOOL, ARRAY = "number", "string", "boolean", "array"
FIELD_TABLES: dict[str, dict[str, str]] = {
    "turn_start": {},
    "turn_continuation": {},
    "turn_end": {},
    "turn_end_candidate": {"text": STRING, "language": STRING, "start_ms": NUMBER,
                           "duration_ms": NUMBER, "words": ARRAY},
    "transcript": {"text": STRING, "is_final": BOOL, "start_ms": NUMBER,
                   "duration_ms": NUMBER, "words": ARRAY},
    "flush_request": {"id": STRING},
    "flush_confirmation": {"id": STRING},
}
ALWAYS = {"turn_end_candidate": {"text"}, "transcript": {"text"}, "flush_confirmation": {"id"}}
WORD_TABLES = {
    "turn_end_candidate": {"text": STRING, "start_ms": NUMBER, "duration_ms": NUMBER},
    "transcript": {"text": STRING, "start_ms": NUMBER, "duration_ms": NUMBER,
                   "confidence": NUMBER},
}
CLASSES: dict[str, type] = {
    "turn_start": TurnStart, "turn_end_candidate": TurnEndCandidate,
    "turn_continuation": TurnContinuation, "turn_end": TurnEnd, "transcript": Transcript,
    "flush_request": FlushRequest, "flush_confirmation": FlushConfirmation,
}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int | float):
        return NUMBER
    if isinstance(value, str):
        return STRING
    if isinstance(value, list):
        return ARRAY
    return type(value).__name__


VECTORS = [(spec, v) for spec in ("000", "001") for v in load(spec)]


def test_vectors_cover_every_message_of_both_documents() -> None:
    assert {v["type"] for _, v in VECTORS} == set(FIELD_TABLES)


@pytest.mark.skipif(not SPEC_DIR.is_dir(), reason="spec folder not beside this checkout")
@pytest.mark.parametrize("spec", sorted(SPEC_FILES))
def test_committed_vectors_match_the_spec_documents(spec: str) -> None:
    assert extract((SPEC_DIR / SPEC_FILES[spec]).read_text()) == load(spec)


@pytest.mark.parametrize(("spec", "vector"), VECTORS,
                         ids=[f"{s}-{i}-{v['type']}" for i, (s, v) in enumerate(VECTORS)])
def test_spec_example_parses_and_round_trips(spec: str, vector: dict[str, Any]) -> None:
    text = json.dumps(vector, indent=2)
    event = parse_event(text)
    assert type(event) is CLASSES[vector["type"]]
    assert json.loads(serialize_event(event)) == vector
    # Field table: only documented fields, of the documented types, mirrored on the object.
    table = FIELD_TABLES[vector["type"]]
    for name, value in vector.items():
        if name == "type":
            continue
        assert name in table, f"{name} not in the field table of {vector['type']}"
        assert _json_type(value) == table[name]
        if name != "words":
            assert getattr(event, name) == value
    for name in ALWAYS.get(vector["type"], ()):
        assert name in vector
    for raw_word, word in zip(vector.get("words", []), getattr(event, "words", None) or (),
                              strict=True):
        assert isinstance(word, Word)
        for name, value in raw_word.items():
            assert _json_type(value) == WORD_TABLES[vector["type"]][name]
            assert getattr(word, name) == value


def test_absent_optional_fields_stay_absent() -> None:
    assert serialize_event(TurnEndCandidate("hi")) == '{"type":"turn_end_candidate","text":"hi"}'
    assert serialize_event(FlushRequest()) == '{"type":"flush_request"}'
    assert serialize_event(Transcript("a", words=(Word("a"),))) == \
        '{"type":"transcript","text":"a","words":[{"text":"a"}]}'


def test_flush_confirmation_always_carries_id_even_null() -> None:
    assert json.loads(serialize_event(FlushConfirmation())) == \
        {"type": "flush_confirmation", "id": None}
    assert parse_event('{"type":"flush_confirmation","id":null}') == FlushConfirmation(None)


def test_unknown_extra_fields_are_tolerated() -> None:
    event = parse_event('{"type":"turn_end_candidate","text":"x","confidence":0.5,"v":2}')
    assert event == TurnEndCandidate("x")


def test_unknown_type_becomes_unknown_event_and_round_trips() -> None:
    raw = {"type": "speech_started", "at_ms": 12}
    event = parse_event(json.dumps(raw))
    assert isinstance(event, UnknownEvent)
    assert event.type == "speech_started"
    assert json.loads(serialize_event(event)) == raw


def test_error_event_round_trips() -> None:
    event = ErrorEvent("MESSAGE_TOO_LARGE", "frames are limited to 1 MiB")
    assert parse_event(serialize_event(event)) == event
    assert event_to_dict(event) == {"type": "error", "code": "MESSAGE_TOO_LARGE",
                                    "message": "frames are limited to 1 MiB"}


@pytest.mark.parametrize("text", [
    "", "{", "not json", "[1,2]", '"turn_start"', "null", '{"text":"no type"}',
    '{"type":5}', '{"type":"turn_end_candidate"}', '{"type":"turn_end_candidate","text":3}',
    '{"type":"turn_end_candidate","text":"a","start_ms":"12"}',
    '{"type":"turn_end_candidate","text":"a","start_ms":true}',
    '{"type":"turn_end_candidate","text":"a","words":"the"}',
    '{"type":"turn_end_candidate","text":"a","words":[1]}',
    '{"type":"turn_end_candidate","text":"a","words":[{"start_ms":1}]}',
    '{"type":"transcript","text":"a","is_final":"yes"}',
    '{"type":"flush_confirmation","id":7}',
    '{"type":"error","code":"X"}',
    "[" * 100_000,
])
def test_malformed_input_raises_remote_protocol_error(text: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_event(text)
    assert info.value.raw is not None
    assert len(info.value.raw) <= 200 + len("... [99999999 more characters]")


def test_error_quotes_at_most_200_characters() -> None:
    text = '{"type":"turn_end_candidate","text":' + "7" * 5000 + "}"
    with pytest.raises(RemoteProtocolError) as info:
        parse_event(text)
    assert info.value.raw is not None
    assert info.value.raw.startswith(text[:200])
    assert "7" * 201 not in str(info.value)


def test_serialization_is_compact_utf8() -> None:
    assert serialize_event(TurnEndCandidate("café")) == \
        '{"type":"turn_end_candidate","text":"café"}'


def test_numbers_keep_their_json_type() -> None:
    event = parse_event('{"type":"turn_end_candidate","text":"a","start_ms":1200,'
                        '"duration_ms":2400.5}')
    assert json.loads(serialize_event(event)) == {"type": "turn_end_candidate", "text": "a",
                                                  "start_ms": 1200, "duration_ms": 2400.5}
    assert isinstance(json.loads(serialize_event(event))["start_ms"], int)
