"""ScribeRealtimeSTTService in real pipecat pipelines against the embedded server (spec 004)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    InterimTranscriptionFrame,
    ProposedUserStartedSpeakingFrame,
    TranscriptionFrame,
)
from pipecat.utils.errors import ErrorCategory
from websockets.asyncio.server import ServerConnection, serve

from reson8_voice import InvalidRequest
from reson8_voice.dialects import (
    ScribeCommittedTranscript,
    ScribeCommittedTranscriptWithTimestamps,
    ScribeQuotaExceededError,
    ScribeRateLimitedError,
)
from reson8_voice.pipecat.scribe_service import ScribeRealtimeSTTService
from reson8_voice.server import Reson8Server

from .audio_fixtures import load_fixture
from .pipeline_harness import Harness
from .test_realtime_service import TURN_FRAMES, eventually, split_turns, stops, watch


def collect_errors(service: Any) -> list[ErrorFrame]:
    errors: list[ErrorFrame] = []

    @service.event_handler("on_error")
    async def _on_error(_: object, frame: ErrorFrame) -> None:
        errors.append(frame)

    return errors


@pytest.mark.parametrize(("fixture", "detailed"), [("short_answers", False),
                                                   ("call_delivery", True)])
async def test_manual_commit_at_local_end_of_speech(
    scripted_server: Reson8Server, fixture: str, detailed: bool,
) -> None:
    fx = load_fixture(fixture)
    stt = ScribeRealtimeSTTService(url=scripted_server.scribe_url, include_timestamps=detailed,
                                   include_language_detection=detailed,
                                   keyterms=("delivery", "order"))
    connected = watch(stt, "on_connected")
    async with Harness([stt]) as h:
        await asyncio.wait_for(connected.wait(), 10)
        await h.feed(fx.pcm16(), speed=10.0)
        await h.wait_for(lambda h: stops(h) == len(fx.turns), 30)
    turns, rest = split_turns(h.timeline(TURN_FRAMES))
    assert len(turns) == len(fx.turns) and not rest
    for turn in turns:
        assert turn[0] == "ProposedUserStartedSpeakingFrame"
        # exactly one committed transcript per turn, the one answering its commit
        assert turn[-2:] == ["TranscriptionFrame", "ProposedUserStoppedSpeakingFrame"]
        assert turn.count("TranscriptionFrame") == 1
    assert h.of_type(InterimTranscriptionFrame)
    finals = h.of_type(TranscriptionFrame)
    assert all(f.finalized and f.text for f in finals)  # type: ignore[attr-defined]
    kind = ScribeCommittedTranscriptWithTimestamps if detailed else ScribeCommittedTranscript
    assert all(type(f.result) is kind for f in finals)  # type: ignore[attr-defined]
    if detailed:
        assert all(f.result.words and f.language == "en" for f in finals)  # type: ignore[attr-defined]
    assert scripted_server.scribe.stats["commits"] == len(fx.turns)
    assert stt.last_ttfb_s is not None and stt.stats["fallbacks"] == 0


async def test_vad_commit_strategy_ends_turns_on_the_server_commit(
    scripted_server: Reson8Server,
) -> None:
    fx = load_fixture("call_restaurant")
    stt = ScribeRealtimeSTTService(url=scripted_server.scribe_url, commit_strategy="vad",
                                   vad_silence_threshold_secs=1.0, vad_threshold=0.4,
                                   min_speech_duration_ms=100)
    connected = watch(stt, "on_connected")
    async with Harness([stt]) as h:
        await asyncio.wait_for(connected.wait(), 10)
        await h.feed(fx.pcm16(), speed=10.0)
        await h.wait_for(lambda h: stops(h) == len(fx.turns), 30)
    turns, _ = split_turns(h.timeline(TURN_FRAMES))
    assert len(turns) == len(fx.turns)
    for turn in turns:
        assert turn[0] == "ProposedUserStartedSpeakingFrame"
        assert turn[-2:] == ["TranscriptionFrame", "ProposedUserStoppedSpeakingFrame"]
    assert scripted_server.scribe.stats["commits"] == 0  # the client never committed
    assert stt.stats["flushes"] == 0 and stt.stats["fallbacks"] == 0


async def test_keepalive_prevents_the_idle_timeout(scripted_server: Reson8Server) -> None:
    scripted_server.scribe.idle_timeout_s = 0.6
    stt = ScribeRealtimeSTTService(url=scripted_server.scribe_url, keepalive_interval_s=0.2)
    connected, dropped = watch(stt, "on_connected"), watch(stt, "on_disconnected")
    errors = collect_errors(stt)
    async with Harness([stt]):
        await asyncio.wait_for(connected.wait(), 10)
        await asyncio.sleep(1.5)  # no audio from the pipeline at all
        assert not dropped.is_set() and errors == []
        assert stt.stats["keepalives"] >= 3


async def _scripted_error_server(kind: str, sessions: list[int]) -> Any:
    async def handler(ws: ServerConnection) -> None:
        sessions.append(1)
        await ws.send(json.dumps({"message_type": "session_started", "session_id": "s",
                                  "config": {}}))
        await ws.recv()  # the first audio chunk
        await ws.send(json.dumps({"message_type": kind, "error": f"{kind} for a test"}))
        await ws.close(1008)

    return serve(handler, "127.0.0.1", 0)


@pytest.mark.parametrize(("kind", "exc", "category", "fatal"), [
    ("rate_limited", ScribeRateLimitedError, ErrorCategory.RATE_LIMIT, False),
    ("quota_exceeded", ScribeQuotaExceededError, ErrorCategory.QUOTA, True),
])
async def test_retryable_errors_reconnect_and_fatal_ones_wait(
    kind: str, exc: type, category: ErrorCategory, fatal: bool,
) -> None:
    sessions: list[int] = []
    async with await _scripted_error_server(kind, sessions) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        stt = ScribeRealtimeSTTService(url=f"ws://127.0.0.1:{port}",
                                       reconnect_delay_s=(0.05, 0.1), rejected_retry_s=60.0)
        errors = collect_errors(stt)
        fell_back = watch(stt, "on_fallback_started")
        async with Harness([stt], sample_rate=16000) as h:
            await h.feed(bytes(3200), speed=float("inf"))
            await asyncio.wait_for(fell_back.wait(), 10)
            await eventually(lambda: bool(errors), 10)
            if fatal:
                await h.feed(bytes(16000), speed=1.0)  # half a second of the call goes on
                assert len(sessions) == 1  # no retry before rejected_retry_s
            else:
                await eventually(lambda: len(sessions) >= 2, 10)  # backed off, came back
    assert isinstance(errors[0].exception, exc) and errors[0].category is category
    assert stt.is_usable  # the local VAD keeps the call going either way


async def test_fail_over_on_fatal_marks_the_service_unusable() -> None:
    sessions: list[int] = []
    async with await _scripted_error_server("auth_error", sessions) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        stt = ScribeRealtimeSTTService(url=f"ws://127.0.0.1:{port}", fail_over_on_fatal=True)
        errors = collect_errors(stt)
        async with Harness([stt], sample_rate=16000) as h:
            await h.feed(bytes(3200), speed=float("inf"))
            await eventually(lambda: bool(errors), 10)
    assert errors[0].category is ErrorCategory.AUTHENTICATION and not stt.is_usable


def test_parameters_are_validated_up_front() -> None:
    with pytest.raises(InvalidRequest) as info:
        ScribeRealtimeSTTService(commit_strategy="vad", vad_silence_threshold_secs=5.0)
    assert info.value.parameter == "vad_silence_threshold_secs"
    with pytest.raises(InvalidRequest):
        ScribeRealtimeSTTService(keyterms=[f"k{i}" for i in range(51)])


async def test_telephony_ulaw_uplink(scripted_server: Reson8Server) -> None:
    fx = load_fixture("short_answers")
    stt = ScribeRealtimeSTTService(url=scripted_server.scribe_url, telephony_encoding="ulaw")
    connected = watch(stt, "on_connected")
    async with Harness([stt]) as h:
        await asyncio.wait_for(connected.wait(), 10)
        assert stt.params().audio_format == "ulaw_8000"
        await h.feed(fx.pcm16(), speed=8.0)
        await h.wait_for(lambda h: stops(h) == len(fx.turns), 20)
    assert len(h.of_type(ProposedUserStartedSpeakingFrame)) == len(fx.turns)
    assert all(f.text for f in h.of_type(TranscriptionFrame))  # type: ignore[attr-defined]


def _names(decisions: list[Any]) -> list[str]:
    return [type(d).__name__ for d in decisions]


def test_policy_server_commit_mode() -> None:
    from reson8_voice.pipecat._vad_stt import Final, Interim, TranscriptTurnPolicy

    policy = TranscriptTurnPolicy(end_of_turn="server", commit_timeout_s=2.0)
    policy.connection_ready(0.0)
    # a click: local speech, nothing transcribed, no commit -> withdrawn quietly
    assert _names(policy.local_speech_started(1.0)) == ["ProposeStart"]
    assert policy.local_speech_stopped(1.2) == []
    assert _names(policy.check(3.3)) == ["ProposeStop"]
    # speech with text but the commit never comes -> the session is declared dead
    policy.local_speech_started(4.0)
    policy.server_interim(4.2, Interim("hello"))
    policy.local_speech_stopped(5.0)
    assert _names(policy.check(7.1)) == ["WatchdogExpired", "ProposeStop"]
    # the server commits while the local VAD still hears speech: the turn ends there, and
    # the next partial with text opens a new one
    policy.local_speech_started(8.0)
    assert _names(policy.server_final(9.0, Final("one", ends_turn=True))) == \
        ["PushFinal", "ProposeStop"]
    assert _names(policy.server_interim(9.5, Interim("two"))) == ["ProposeStart", "PushInterim"]
    assert not policy.server_final(9.8, Final("", ends_turn=True))  # empty, still speaking
    policy.local_speech_stopped(10.0)
    assert _names(policy.server_final(10.5, Final("two", ends_turn=True))) == \
        ["PushFinal", "ProposeStop"]
    assert not policy.turn_open
