"""Reson8RealtimeSTTService in real pipecat pipelines against the embedded server.

Turn-taking comes from the local VAD; the end of each utterance waits for the
``flush_confirmation`` of the flush sent at the local end of speech (spec 000).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from typing import Any

import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    InterimTranscriptionFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    TranscriptionFrame,
)
from pipecat.utils.errors import ErrorCategory
from websockets.asyncio.server import ServerConnection, serve

from reson8_voice import Transcript
from reson8_voice.pipecat._vad_stt import TranscriptTurnPolicy
from reson8_voice.pipecat.realtime_service import Reson8RealtimeSTTService
from reson8_voice.server import Reson8Server, ServerConfig

from .audio_fixtures import load_fixture
from .conftest import scripted_runner
from .pipeline_harness import Harness

TURN_FRAMES = (ProposedUserStartedSpeakingFrame, InterimTranscriptionFrame, TranscriptionFrame,
               ProposedUserStoppedSpeakingFrame)


def watch(service: Any, event: str) -> asyncio.Event:
    fired = asyncio.Event()

    @service.event_handler(event)
    async def _on_event(*args: Any) -> None:
        fired.set()

    return fired


def split_turns(names: list[str]) -> tuple[list[list[str]], list[str]]:
    """Frame names cut after each stop; returns the turns and what is left over."""
    turns, current = [], []
    for name in names:
        current.append(name)
        if name == "ProposedUserStoppedSpeakingFrame":
            turns.append(current)
            current = []
    return turns, current


async def eventually(predicate: Any, timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds (checked every 20 ms), at most ``timeout`` s."""
    async with asyncio.timeout(timeout):
        for _ in itertools.count():
            if predicate():
                return
            await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stops(h: Harness) -> int:
    return len(h.of_type(ProposedUserStoppedSpeakingFrame))


async def test_turns_from_local_vad_with_finals_before_each_stop(
    scripted_server: Reson8Server,
) -> None:
    fx = load_fixture("call_delivery")
    stt = Reson8RealtimeSTTService(url=scripted_server.url)
    connected = watch(stt, "on_connected")
    async with Harness([stt]) as h:
        await asyncio.wait_for(connected.wait(), 10)
        await h.feed(fx.pcm16(), speed=10.0)
        await h.wait_for(lambda h: stops(h) == len(fx.turns), 30)
    turns, rest = split_turns(h.timeline(TURN_FRAMES))
    assert len(turns) == len(fx.turns) and not rest
    for turn in turns:
        assert turn[0] == "ProposedUserStartedSpeakingFrame"
        assert turn[-1] == "ProposedUserStoppedSpeakingFrame"
        assert "TranscriptionFrame" in turn  # the turn's final text came before its stop
        assert turn.count("ProposedUserStartedSpeakingFrame") == 1
    finals = h.of_type(TranscriptionFrame)
    assert all(isinstance(f.result, Transcript) and f.text for f in finals)  # type: ignore[attr-defined]
    # include_words and include_confidence reach the frames' result
    words = [w for f in finals for w in f.result.words]  # type: ignore[attr-defined]
    assert words and all(w.confidence is not None and w.start_ms is not None for w in words)
    # one flush per end of utterance, each confirmed; TTFB measured from the flush, which
    # went out inside the last turn: so it fits between that turn's start and stop frames
    assert stt.stats["flushes"] == len(fx.turns) and stt.stats["fallbacks"] == 0
    last_start, last_stop = (max(t for t, f in h.recorder.frames if isinstance(f, kind))
                             for kind in (ProposedUserStartedSpeakingFrame,
                                          ProposedUserStoppedSpeakingFrame))
    assert stt.last_ttfb_s is not None and 0 < stt.last_ttfb_s < last_stop - last_start
    assert not stt.in_fallback


async def test_a_final_answering_the_flush_is_finalized_and_precedes_the_stop(
    scripted_server: Reson8Server,
) -> None:
    # with a short local stop the flush arrives before the server's own segment end, so
    # the final transcript is the flush's answer
    fx = load_fixture("short_answers")
    stt = Reson8RealtimeSTTService(url=scripted_server.url, vad_stop_ms=100)
    connected = watch(stt, "on_connected")
    async with Harness([stt]) as h:
        await asyncio.wait_for(connected.wait(), 10)
        await h.feed(fx.pcm16(), speed=8.0)
        await h.wait_for(lambda h: stops(h) == len(fx.turns), 20)
    turns, _ = split_turns(h.timeline((TranscriptionFrame, ProposedUserStoppedSpeakingFrame,
                                       ProposedUserStartedSpeakingFrame)))
    assert [t[-2:] for t in turns] == [["TranscriptionFrame",
                                        "ProposedUserStoppedSpeakingFrame"]] * len(fx.turns)
    assert all(f.finalized for f in h.of_type(TranscriptionFrame))  # type: ignore[attr-defined]


async def test_unanswered_flush_times_out_into_the_fallback() -> None:
    """A server that accepts audio but never confirms a flush: the turn still ends."""
    flushes: list[str] = []

    async def mute(ws: ServerConnection) -> None:
        async for message in ws:
            if isinstance(message, str):
                flushes.append(message)

    fx = load_fixture("short_answers")
    async with serve(mute, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        stt = Reson8RealtimeSTTService(url=f"ws://127.0.0.1:{port}", flush_timeout_s=0.5,
                                       reconnect_delay_s=(5.0, 5.0))
        connected, fell_back = watch(stt, "on_connected"), watch(stt, "on_fallback_started")
        async with Harness([stt]) as h:
            await asyncio.wait_for(connected.wait(), 10)
            first = fx.turns[0]
            await h.feed(fx.pcm16()[: (first.end_ms + 1200) * 16], speed=4.0)
            await h.wait_for(lambda h: stops(h) == 1, 10)
            await asyncio.wait_for(fell_back.wait(), 5)
            assert stt.in_fallback
    assert flushes and '"flush_request"' in flushes[0] and '"id":"eou-1"' in flushes[0]
    assert h.of_type(TranscriptionFrame) == []


async def test_an_in_session_invalid_request_is_not_retried_at_once() -> None:
    """The embedded server answers a malformed request (e.g. a flush id that is not a
    string) with INVALID_REQUEST and closes 1008: repeating it at once would only loop, so
    the service reports it as an invalid request (not ``unknown``) and waits
    ``rejected_retry_s`` before the next session."""
    opened: list[float] = []
    second = asyncio.Event()

    async def refuse(ws: ServerConnection) -> None:
        opened.append(asyncio.get_running_loop().time())
        if len(opened) >= 2:
            second.set()
        await ws.send('{"type":"error","code":"INVALID_REQUEST","message":"bad flush id"}')
        await ws.close(1008, "invalid request")

    async with serve(refuse, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        stt = Reson8RealtimeSTTService(url=f"ws://127.0.0.1:{port}", rejected_retry_s=1.0,
                                       reconnect_delay_s=(0.05, 0.05))
        reported: list[tuple[str, ErrorCategory | None]] = []

        @stt.event_handler("on_error")
        async def _on_error(service: Any, frame: ErrorFrame) -> None:
            reported.append((frame.error, frame.category))

        async with Harness([stt]):
            await asyncio.wait_for(second.wait(), 5)
    assert any("INVALID_REQUEST" in text and "bad flush id" in text
               and category is ErrorCategory.INVALID_REQUEST
               for text, category in reported), reported
    assert opened[1] - opened[0] >= 0.75  # rejected_retry_s (1 s) with -20 % jitter


async def test_auto_encoding_starts_every_connection_with_a_fresh_header() -> None:
    """encoding=auto across a server restart: the second session decodes too (spec 003)."""
    fx = load_fixture("short_answers")
    pcm = fx.pcm16()
    port = free_port()
    split = (fx.turns[1].end_ms + 1000) * 16
    stt = Reson8RealtimeSTTService(url=f"ws://127.0.0.1:{port}", encoding="auto",
                                   reconnect_delay_s=(0.05, 0.2))
    errors: list[Any] = []
    async with Reson8Server(ServerConfig(port=port), scripted_runner()) as first_server:
        connected = watch(stt, "on_connected")
        async with Harness([stt]) as h:
            await asyncio.wait_for(connected.wait(), 10)
            await h.feed(pcm[:split], speed=8.0)
            await h.wait_for(lambda h: stops(h) == 2, 20)
            assert len(h.of_type(TranscriptionFrame)) >= 2
            await first_server.close()
            reconnected = watch(stt, "on_connected")
            async with Reson8Server(ServerConfig(port=port), scripted_runner()) as second:
                await asyncio.wait_for(reconnected.wait(), 10)
                await h.feed(pcm[split:], speed=8.0)
                await h.wait_for(lambda h: stops(h) == len(fx.turns), 20)
                await h.wait_for(lambda h: len({id(f) for f in h.of_type(TranscriptionFrame)
                                                if f.text}) >= len(fx.turns), 10)  # type: ignore[attr-defined]
                assert second.sessions_total == 1
            errors = h.of_type(ErrorFrame)
    assert errors == []  # no INVALID_AUDIO: the new connection had its header


async def test_server_pings_are_answered() -> None:
    """The server pings every 0.1 s and drops a client that misses a pong for 0.3 s."""
    config = ServerConfig(port=0, ping_interval=0.1, ping_timeout=0.3)
    async with Reson8Server(config, scripted_runner()) as srv:
        stt = Reson8RealtimeSTTService(url=srv.url)
        connected, dropped = watch(stt, "on_connected"), watch(stt, "on_disconnected")
        async with Harness([stt]) as h:
            await asyncio.wait_for(connected.wait(), 10)
            await h.feed(bytes(16000 * 2), speed=2.0)  # 2 s of silence, 1 s of wall time
            await asyncio.sleep(0.5)
            assert not dropped.is_set() and srv.sessions_active == 1


def test_policy_resumed_speech_keeps_the_turn_open() -> None:
    policy = TranscriptTurnPolicy(flush_timeout_s=1.0)
    policy.connection_ready(0.0)
    assert [type(d).__name__ for d in policy.local_speech_started(1.0)] == ["ProposeStart"]
    flush = policy.local_speech_stopped(2.0)
    assert [type(d).__name__ for d in flush] == ["SendFlush"]
    policy.local_speech_started(2.1)  # the speaker went on before the confirmation
    done = policy.flush_done(2.2, flush[0].flush_id)  # type: ignore[union-attr]
    assert [type(d).__name__ for d in done] == ["FlushConfirmed"] and policy.turn_open
    second = policy.local_speech_stopped(3.0)
    assert [type(d).__name__ for d in
            policy.flush_done(3.1, second[0].flush_id)] == [  # type: ignore[union-attr]
        "FlushConfirmed", "ProposeStop"]


@pytest.mark.parametrize("late", [False, True])
def test_policy_stale_or_late_confirmation_never_double_stops(late: bool) -> None:
    policy = TranscriptTurnPolicy(flush_timeout_s=1.0)
    policy.connection_ready(0.0)
    policy.local_speech_started(1.0)
    flush = policy.local_speech_stopped(2.0)[0]
    expired = policy.check(3.5 if late else 2.5)
    if late:
        assert [type(d).__name__ for d in expired] == ["WatchdogExpired", "ProposeStop"]
        assert policy.flush_done(3.6, flush.flush_id) == []  # type: ignore[union-attr]
    else:
        assert expired == []
        assert [type(d).__name__ for d in policy.flush_done(2.6, flush.flush_id)] == [  # type: ignore[union-attr]
            "FlushConfirmed", "ProposeStop"]
    assert not policy.turn_open


async def test_unreachable_at_start_falls_back_then_replays_the_outage() -> None:
    fx = load_fixture("short_answers")
    pcm = fx.pcm16()
    port = free_port()
    stt = Reson8RealtimeSTTService(url=f"ws://127.0.0.1:{port}", reconnect_delay_s=(0.05, 0.2))
    fell_back, came_back = watch(stt, "on_fallback_started"), watch(stt, "on_fallback_ended")
    split = (fx.turns[1].end_ms + 1000) * 16  # after the second turn, in silence
    async with Harness([stt]) as h:
        await asyncio.wait_for(fell_back.wait(), 10)
        await h.feed(pcm[:split], speed=8.0)
        # the outage: the local VAD alone proposed both turns, without text
        await h.wait_for(lambda h: stops(h) == 2, 10)
        assert h.of_type(TranscriptionFrame) == []
        async with Reson8Server(ServerConfig(port=port), scripted_runner()) as srv:
            await asyncio.wait_for(came_back.wait(), 15)
            # the two outage turns were replayed and transcribed
            await h.wait_for(lambda h: len(h.of_type(TranscriptionFrame)) >= 2, 15)
            recovered = len(h.of_type(TranscriptionFrame))
            await h.feed(pcm[split:], speed=8.0)
            await h.wait_for(lambda h: stops(h) == len(fx.turns), 20)
            assert srv.sessions_total == 1
            await h.stop()
    assert len(h.of_type(ProposedUserStartedSpeakingFrame)) == len(fx.turns)
    assert stt.stats["replayed_bytes"] >= split // 2 and stt.stats["fallbacks"] == 1
    live = h.of_type(TranscriptionFrame)[recovered:]
    assert len(live) >= len(fx.turns) - 2 and not stt.in_fallback


async def test_any_pipecat_vad_analyzer_can_take_the_turns(
    scripted_server: Reson8Server,
) -> None:
    from pipecat.audio.vad.vad_analyzer import VADParams

    from reson8_voice.pipecat import WebRTCVADAnalyzer

    fx = load_fixture("short_answers")
    analyzer = WebRTCVADAnalyzer(params=VADParams(start_secs=0.1, stop_secs=0.5, min_volume=0))
    stt = Reson8RealtimeSTTService(url=scripted_server.url, vad_analyzer=analyzer)
    connected = watch(stt, "on_connected")
    async with Harness([stt]) as h:
        await asyncio.wait_for(connected.wait(), 10)
        await h.feed(fx.pcm16(), speed=8.0)
        await h.wait_for(lambda h: stops(h) == len(fx.turns), 20)
    turns, rest = split_turns(h.timeline(TURN_FRAMES))
    assert len(turns) == len(fx.turns) and not rest
    assert all("TranscriptionFrame" in t for t in turns)


async def test_a_settings_change_reconnects_between_turns(
    scripted_server: Reson8Server,
) -> None:
    from pipecat.frames.frames import STTUpdateSettingsFrame
    from pipecat.services.settings import STTSettings

    fx = load_fixture("short_answers")
    stt = Reson8RealtimeSTTService(url=scripted_server.url)
    connected = watch(stt, "on_connected")
    async with Harness([stt]) as h:
        await asyncio.wait_for(connected.wait(), 10)
        first = fx.turns[0]
        await h.feed(fx.pcm16()[: (first.end_ms + 1200) * 16], speed=8.0)
        await h.wait_for(lambda h: stops(h) == 1, 10)
        reconnected = watch(stt, "on_connected")
        await h.send(STTUpdateSettingsFrame(delta=STTSettings(language="nl")))
        await asyncio.wait_for(reconnected.wait(), 10)
        assert stt.params().language == "nl" and scripted_server.sessions_total == 2
