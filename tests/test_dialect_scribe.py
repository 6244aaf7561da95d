"""ElevenLabs Scribe realtime (spec 004): wire format, parameters, errors, client, server.

Spec 004 shows no JSON, so the vectors below are built from its field descriptions (one
per object it names: the audio chunk, session_started, the three transcript kinds and the
thirteen errors). The embedded server's Scribe endpoint is checked with a raw
``websockets`` client written from the document, and the project's client against it.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import pytest
from websockets.asyncio.client import connect as raw_connect
from websockets.exceptions import ConnectionClosed as WsConnectionClosed

from reson8_voice import InvalidRequest, RemoteProtocolError, Secret, UnknownEvent
from reson8_voice.dialects import (
    SCRIBE_ERROR_TYPES,
    ScribeAudioChunk,
    ScribeAuthError,
    ScribeChunkSizeExceededError,
    ScribeCommittedTranscript,
    ScribeCommittedTranscriptWithTimestamps,
    ScribeError,
    ScribeErrorEvent,
    ScribeInputError,
    ScribeInsufficientAudioActivityError,
    ScribeParams,
    ScribePartialTranscript,
    ScribeQueueOverflowError,
    ScribeQuotaExceededError,
    ScribeRateLimitedError,
    ScribeResourceExhaustedError,
    ScribeSessionStarted,
    ScribeSessionTimeLimitExceededError,
    ScribeThrottledError,
    ScribeTranscriberError,
    ScribeUnacceptedTermsError,
    parse_scribe,
    scribe_error,
    serialize_scribe,
)
from reson8_voice.dialects.scribe_client import connect_scribe, scribe_url
from reson8_voice.engine.turn_engine import Job, RecognizeJob
from reson8_voice.server import Reson8Server, ServerConfig

from .audio_fixtures import load_fixture
from .conftest import scripted_runner

KEY = "xi_test_key_0123456789"

#: spec 004's error objects -> (wire message_type, exception class)
ERRORS: dict[str, tuple[str, type[ScribeError]]] = {
    "scribeError": ("error", ScribeError),
    "scribeAuthError": ("auth_error", ScribeAuthError),
    "scribeQuotaExceededError": ("quota_exceeded", ScribeQuotaExceededError),
    "scribeThrottledError": ("commit_throttled", ScribeThrottledError),
    "scribeUnacceptedTermsError": ("unaccepted_terms", ScribeUnacceptedTermsError),
    "scribeRateLimitedError": ("rate_limited", ScribeRateLimitedError),
    "scribeQueueOverflowError": ("queue_overflow", ScribeQueueOverflowError),
    "scribeResourceExhaustedError": ("resource_exhausted", ScribeResourceExhaustedError),
    "scribeSessionTimeLimitExceededError": ("session_time_limit_exceeded",
                                            ScribeSessionTimeLimitExceededError),
    "scribeInputError": ("input_error", ScribeInputError),
    "scribeChunkSizeExceededError": ("chunk_size_exceeded", ScribeChunkSizeExceededError),
    "scribeInsufficientAudioActivityError": ("insufficient_audio_activity",
                                             ScribeInsufficientAudioActivityError),
    "scribeTranscriberError": ("transcriber_error", ScribeTranscriberError),
}

VECTORS: list[tuple[type, dict[str, Any]]] = [
    (ScribeAudioChunk, {"message_type": "input_audio_chunk", "audio_base_64": "AAAA",
                        "commit": False, "sample_rate": 16000}),
    (ScribeAudioChunk, {"message_type": "input_audio_chunk", "audio_base_64": "",
                        "commit": True, "sample_rate": 16000, "previous_text": "hello"}),
    (ScribeSessionStarted, {"message_type": "session_started",
                            "session_id": "0b0a72b57fd743ebbed6555d44836cf2",
                            "config": {"sample_rate": 16000, "audio_format": "pcm_16000",
                                       "model_id": "scribe_v2_realtime"}}),
    (ScribePartialTranscript, {"message_type": "partial_transcript", "text": "Hello, how are"}),
    (ScribeCommittedTranscript, {"message_type": "committed_transcript",
                                 "text": "Hello, how are you?"}),
    (ScribeCommittedTranscriptWithTimestamps, {
        "message_type": "committed_transcript_with_timestamps", "text": "Hello there",
        "language_code": "en",
        "words": [{"text": "Hello", "start": 0.1, "end": 0.4, "type": "word", "logprob": -0.1,
                   "speaker_id": "speaker_0", "characters": ["H", "e", "l", "l", "o"]},
                  {"text": " ", "start": 0.4, "end": 0.45, "type": "spacing"},
                  {"text": "there", "start": 0.45, "end": 0.8, "type": "word"}]}),
    *[(ScribeErrorEvent, {"message_type": wire, "error": f"{name} happened"})
      for name, (wire, _) in ERRORS.items()],
]


@pytest.mark.parametrize(("cls", "vector"), VECTORS,
                         ids=[f"{i}-{v['message_type']}" for i, (_, v) in enumerate(VECTORS)])
def test_vector_parses_and_round_trips(cls: type, vector: dict[str, Any]) -> None:
    message = parse_scribe(json.dumps(vector, indent=2))
    assert type(message) is cls
    assert json.loads(serialize_scribe(message)) == vector
    assert message.message_type == vector["message_type"]  # type: ignore[union-attr]


def test_every_error_of_the_document_has_its_typed_exception() -> None:
    assert set(SCRIBE_ERROR_TYPES) == {wire for wire, _ in ERRORS.values()}
    for name, (wire, cls) in ERRORS.items():
        event = parse_scribe(json.dumps({"message_type": wire, "error": "boom"}))
        assert isinstance(event, ScribeErrorEvent)
        exc = event.exception()
        assert type(exc) is cls and exc.code == wire and "boom" in str(exc), name
        assert not (exc.retryable and exc.fatal)


def test_retryable_and_fatal_errors_are_those_the_issue_lists() -> None:
    retryable = {wire for wire, cls in ERRORS.values() if cls.retryable}
    fatal = {wire for wire, cls in ERRORS.values() if cls.fatal}
    assert retryable == {"commit_throttled", "rate_limited", "queue_overflow",
                         "resource_exhausted"}
    assert fatal == {"auth_error", "quota_exceeded", "unaccepted_terms",
                     "session_time_limit_exceeded"}
    from pipecat.utils.errors import ErrorCategory

    for _, cls in ERRORS.values():  # every category is one of pipecat's
        assert ErrorCategory(cls.category)
    assert ErrorCategory(ScribeAuthError.category) is ErrorCategory.AUTHENTICATION
    assert ErrorCategory(ScribeQuotaExceededError.category) is ErrorCategory.QUOTA
    assert ErrorCategory(ScribeRateLimitedError.category) is ErrorCategory.RATE_LIMIT


def test_unknown_error_types_are_errors_and_other_unknowns_are_skipped() -> None:
    event = parse_scribe('{"message_type": "invalid_request", "error": "bad"}')
    assert isinstance(event, ScribeErrorEvent)
    assert type(event.exception()) is ScribeError and event.exception().code == "invalid_request"
    assert type(scribe_error("brand_new", "x")) is ScribeError
    assert isinstance(parse_scribe('{"message_type": "speech_started"}'), UnknownEvent)


@pytest.mark.parametrize("text", [
    "{", '{"type": "partial_transcript"}', '{"message_type": "partial_transcript"}',
    '{"message_type": "input_audio_chunk", "audio_base_64": "", "commit": "yes"}',
    '{"message_type": "committed_transcript_with_timestamps", "text": "x", "words": {}}',
    '{"message_type": "auth_error", "error": 5}',
])
def test_malformed_messages_raise(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_scribe(text)


def test_chunk_audio_is_base64() -> None:
    chunk = ScribeAudioChunk.of(b"\x01\x02", sample_rate=8000)
    assert chunk.decode() == b"\x01\x02" and not chunk.commit
    with pytest.raises(RemoteProtocolError):
        ScribeAudioChunk("not base64!").decode()


# -- parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "good", "bad"), [
    ("vad_silence_threshold_secs", (0.3, 3.0), (0.29, 3.01)),
    ("vad_threshold", (0.1, 0.9), (0.09, 0.91)),
    ("min_speech_duration_ms", (50, 2000), (49, 2001)),
    ("min_silence_duration_ms", (50, 2000), (49, 2001)),
])
def test_vad_parameters_have_the_documented_ranges(
    field: str, good: tuple[float, float], bad: tuple[float, float],
) -> None:
    for value in good:
        params = ScribeParams(commit_strategy="vad", **{field: value})
        assert ScribeParams.from_query(params.to_query()) == params
    for value in bad:
        with pytest.raises(InvalidRequest) as info:
            ScribeParams(**{field: value})
        assert info.value.parameter == field


def test_keyterm_limits() -> None:
    ScribeParams(keyterms=tuple(f"term{i}" for i in range(50)))
    ScribeParams(keyterms=("x" * 20,))
    for keyterms in (tuple(f"t{i}" for i in range(51)), ("x" * 21,), ("",)):
        with pytest.raises(InvalidRequest) as info:
            ScribeParams(keyterms=keyterms)
        assert info.value.parameter == "keyterms"


def test_query_round_trip_and_required_model() -> None:
    params = ScribeParams(audio_format="ulaw_8000", language_code="nl", commit_strategy="vad",
                          include_timestamps=True, include_language_detection=True,
                          keyterms=("Reson8", "pipecat"), no_verbatim=True,
                          vad_silence_threshold_secs=1.2, enable_logging=False)
    query = params.to_query()
    assert query.count("keyterms=") == 2 and "enable_logging=false" in query
    assert ScribeParams.from_query(query) == params
    assert (params.encoding, params.sample_rate) == ("mulaw", 8000)
    with pytest.raises(InvalidRequest) as info:
        ScribeParams.from_query("audio_format=pcm_16000")
    assert info.value.parameter == "model_id"
    for query, name in (("model_id=m&audio_format=mp3", "audio_format"),
                        ("model_id=m&commit_strategy=auto", "commit_strategy"),
                        ("model_id=m&include_timestamps=maybe", "include_timestamps"),
                        ("model_id=m&vad_threshold=high", "vad_threshold")):
        with pytest.raises(InvalidRequest) as info:
            ScribeParams.from_query(query)
        assert info.value.parameter == name


# -- the embedded server, from the document --------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[Reson8Server]:
    async with Reson8Server(ServerConfig(port=0, api_key=Secret(KEY)), scripted_runner()) as s:
        yield s


def _chunks(pcm: bytes, rate: int, step: int = 3200) -> list[str]:
    return [json.dumps({"message_type": "input_audio_chunk",
                        "audio_base_64": base64.b64encode(pcm[i:i + step]).decode(),
                        "commit": False, "sample_rate": rate})
            for i in range(0, len(pcm), step)]


def _url(server: Reson8Server, **query: Any) -> str:
    return f"{server.scribe_url}/v1/speech-to-text/realtime?{urlencode(query, doseq=True)}"


async def _messages_until(ws: Any, kind: str, count: int = 1) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(20):
        while sum(m["message_type"] == kind for m in out) < count:
            out.append(json.loads(await ws.recv()))
    return out


async def test_raw_client_manual_commit(server: Reson8Server) -> None:
    fx = load_fixture("short_answers")
    url = _url(server, model_id="scribe_v2_realtime", audio_format="pcm_8000",
               include_timestamps="true", include_language_detection="true",
               keyterms=["yes", "sure"])
    async with raw_connect(url, additional_headers={"xi-api-key": KEY}) as ws:
        started = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert started["message_type"] == "session_started" and started["session_id"]
        assert started["config"]["audio_format"] == "pcm_8000"
        assert started["config"]["sample_rate"] == 8000
        cut = fx.turns[1].end_ms * 16 + 8000  # two answers, then a commit
        for chunk in _chunks(fx.pcm16()[:cut], 8000):
            await ws.send(chunk)
        await asyncio.sleep(0.2)
        await ws.send(json.dumps({"message_type": "input_audio_chunk", "audio_base_64": "",
                                  "commit": True, "sample_rate": 8000}))
        got = await _messages_until(ws, "committed_transcript_with_timestamps")
    kinds = [m["message_type"] for m in got]
    assert "partial_transcript" in kinds
    assert kinds[-2:] == ["committed_transcript", "committed_transcript_with_timestamps"]
    assert kinds.count("committed_transcript") == 1  # manual: nothing commits on its own
    committed, detailed = got[-2], got[-1]
    assert committed["text"] == detailed["text"] and len(committed["text"].split()) >= 2
    assert detailed["language_code"] == "en"
    words = [w for w in detailed["words"] if w["type"] == "word"]
    assert [w["text"] for w in words] == committed["text"].split()
    assert all(0 <= w["start"] < w["end"] for w in words)
    assert abs(words[0]["start"] - fx.turns[0].start_ms / 1000) < 0.5  # seconds, stream time


async def test_raw_client_vad_commit_with_token_auth(server: Reson8Server) -> None:
    fx = load_fixture("short_answers")
    url = _url(server, model_id="scribe_v2_realtime", audio_format="pcm_8000",
               commit_strategy="vad", vad_silence_threshold_secs="0.5", token=KEY)
    async with raw_connect(url) as ws:
        started = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert started["config"]["vad_commit_strategy"] == "vad"
        assert started["config"]["vad_silence_threshold_secs"] == 0.5
        for chunk in _chunks(fx.pcm16(), 8000):
            await ws.send(chunk)
        got = await _messages_until(ws, "committed_transcript", len(fx.turns))
    assert [m["text"] for m in got if m["message_type"] == "committed_transcript"] and \
        all(m["text"] for m in got if m["message_type"] == "committed_transcript")
    assert server.scribe.stats["commits"] == 0  # the server committed by itself


@pytest.mark.parametrize(("query", "headers", "kind"), [
    ({"model_id": "m"}, {}, "auth_error"),
    ({"model_id": "m", "token": "wrong"}, {}, "auth_error"),
    ({"audio_format": "pcm_8000"}, {"xi-api-key": KEY}, "input_error"),
    ({"model_id": "m", "vad_threshold": "0.95"}, {"xi-api-key": KEY}, "input_error"),
    ({"model_id": "m", "keyterms": ["x" * 21]}, {"xi-api-key": KEY}, "input_error"),
])
async def test_refusals_are_typed_error_messages(
    server: Reson8Server, query: dict[str, Any], headers: dict[str, str], kind: str,
) -> None:
    async with raw_connect(_url(server, **query), additional_headers=headers) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(WsConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1008
    assert first["message_type"] == kind and isinstance(first["error"], str)
    assert KEY not in first["error"]


async def test_bad_chunks_are_input_errors_and_idle_sessions_end(server: Reson8Server) -> None:
    server.scribe.idle_timeout_s = 0.5
    url = _url(server, model_id="m", audio_format="pcm_16000")
    async with raw_connect(url, additional_headers={"xi-api-key": KEY}) as ws:
        await asyncio.wait_for(ws.recv(), 10)  # session_started
        await ws.send(json.dumps({"message_type": "input_audio_chunk", "audio_base_64": "%%",
                                  "commit": False}))
        await ws.send(_chunks(bytes(320), 8000)[0])  # a rate that is not the session's
        errors = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
        assert [e["message_type"] for e in errors] == ["input_error", "input_error"]
        idle = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert idle["message_type"] == "insufficient_audio_activity"


async def test_client_session_and_typed_errors(server: Reson8Server) -> None:
    fx = load_fixture("short_answers")
    params = ScribeParams(audio_format="pcm_8000")
    async with await connect_scribe(server.scribe_url, params, KEY) as conn:
        assert conn.session_id and conn.config["model_id"] == "scribe_v2_realtime"
        await conn.send_audio(fx.pcm16()[: fx.turns[0].end_ms * 16 + 4000],
                              previous_text="Hi")
        await conn.commit()
        async for message in conn:
            if isinstance(message, ScribeCommittedTranscript):
                assert message.text
                break
    with pytest.raises(ScribeAuthError) as info:
        await connect_scribe(server.scribe_url, params, "xi_wrong_SECRET42")
    assert "SECRET42" not in str(info.value)
    with pytest.raises(ScribeAuthError):
        await connect_scribe(server.scribe_url, params, token="wrong-token")
    url = scribe_url("wss://api.elevenlabs.io", params, Secret("tok"))
    assert url.startswith("wss://api.elevenlabs.io/v1/speech-to-text/realtime?model_id=")
    assert url.endswith("&token=tok")


async def test_iso_639_3_language_codes_are_accepted_and_recognised_as_639_1() -> None:
    # spec 004: language_code is "Language code in ISO 639-1 or ISO 639-3 format"
    fx = load_fixture("short_answers")
    run = scripted_runner()
    asked: list[str | None] = []

    def recording(job: Job) -> Any:
        if isinstance(job, RecognizeJob):
            asked.append(job.language)
        return run(job)

    async with Reson8Server(ServerConfig(port=0), recording,
                            languages=frozenset({"en"})) as srv:
        url = f"{srv.scribe_url}/v1/speech-to-text/realtime?" + urlencode(
            {"model_id": "m", "audio_format": "pcm_8000", "language_code": "eng"})
        async with raw_connect(url) as ws:
            started = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert started["message_type"] == "session_started"
            assert started["config"]["language_code"] == "eng"
            for chunk in _chunks(fx.pcm16()[: fx.turns[0].end_ms * 16 + 4000], 8000):
                await ws.send(chunk)
            await ws.send(json.dumps({"message_type": "input_audio_chunk",
                                      "audio_base_64": "", "commit": True,
                                      "sample_rate": 8000}))
            got = await _messages_until(ws, "committed_transcript")
        assert got[-1]["text"] and asked and set(asked) == {"en"}
        url = url.replace("language_code=eng", "language_code=deu")
        async with raw_connect(url) as ws:
            refused = json.loads(await asyncio.wait_for(ws.recv(), 10))
            with pytest.raises(WsConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
        assert refused["message_type"] == "input_error"
        assert "language_code" in refused["error"] and "deu" in refused["error"]


@pytest.mark.parametrize("header", ["", "xi_stale_key_from_an_old_config"])
async def test_a_valid_token_authenticates_whatever_the_xi_api_key_header(
    server: Reson8Server, header: str,
) -> None:
    # spec 004: a valid key in the xi-api-key header *or* a valid token in the token
    # query parameter; "If provided, xi-api-key is no longer required"
    url = _url(server, model_id="m", audio_format="pcm_8000", token=KEY)
    async with raw_connect(url, additional_headers={"xi-api-key": header}) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert first["message_type"] == "session_started"
