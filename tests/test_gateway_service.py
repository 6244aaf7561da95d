"""Reson8GatewaySTTService in real pipecat pipelines against the embedded server (spec 002)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    InterimTranscriptionFrame,
    ProposedUserStartedSpeakingFrame,
    TranscriptionFrame,
)
from pipecat.utils.errors import ErrorCategory

from reson8_voice import InvalidRequest, Secret
from reson8_voice.dialects import GatewayAuthError, GatewayFinalTranscript
from reson8_voice.pipecat.gateway_service import Reson8GatewaySTTService
from reson8_voice.server import Reson8Server, ServerConfig

from .audio_fixtures import load_fixture
from .conftest import scripted_runner
from .pipeline_harness import Harness
from .test_realtime_service import TURN_FRAMES, eventually, split_turns, stops, watch

KEY = "slng_test_key_0123456789"


@pytest.fixture
async def server() -> AsyncIterator[Reson8Server]:
    async with Reson8Server(ServerConfig(port=0, api_key=Secret(KEY)), scripted_runner()) as s:
        yield s


async def test_turns_finals_keepalive_and_close(server: Reson8Server) -> None:
    fx = load_fixture("call_restaurant")
    stt = Reson8GatewaySTTService(api_key=KEY, url=server.url, world_part="eu",
                                  keepalive_interval_s=0.2)
    connected = watch(stt, "on_connected")
    async with Harness([stt]) as h:
        await asyncio.wait_for(connected.wait(), 10)
        await h.feed(fx.pcm16(), speed=10.0)
        await h.wait_for(lambda h: stops(h) == len(fx.turns), 30)
        assert server.gateway.stats["closes"] == 0
        # no audio flows now: the service keeps the session alive
        await eventually(lambda: server.gateway.stats["keepalives"] >= 2)
    turns, rest = split_turns(h.timeline(TURN_FRAMES))
    assert len(turns) == len(fx.turns) and not rest
    for turn in turns:
        assert turn[0] == "ProposedUserStartedSpeakingFrame"
        assert turn[-2:] == ["TranscriptionFrame", "ProposedUserStoppedSpeakingFrame"]
    assert h.of_type(InterimTranscriptionFrame)  # enable_partials
    finals = h.of_type(TranscriptionFrame)
    for frame in finals:
        result = frame.result  # type: ignore[attr-defined]
        assert isinstance(result, GatewayFinalTranscript)
        assert result.language == "en" and result.confidence and result.duration
    assert server.gateway.stats["finalizes"] == len(fx.turns)
    await eventually(lambda: server.gateway.stats["closes"] == 1)  # ``close`` at the end
    assert stt.stats["fallbacks"] == 0 and h.of_type(ErrorFrame) == []


async def test_rejected_key_is_a_typed_error_and_turns_go_on_locally(
    server: Reson8Server,
) -> None:
    fx = load_fixture("short_answers")
    stt = Reson8GatewaySTTService(api_key="slng_wrong_SECRET77", url=server.url,
                                  rejected_retry_s=60.0)
    fell_back = watch(stt, "on_fallback_started")
    errors: list[ErrorFrame] = []

    @stt.event_handler("on_error")
    async def _on_error(service: object, frame: ErrorFrame) -> None:
        errors.append(frame)

    async with Harness([stt]) as h:
        await asyncio.wait_for(fell_back.wait(), 10)
        await h.feed(fx.pcm16(), speed=8.0)
        await h.wait_for(lambda h: stops(h) == len(fx.turns), 20)
    assert len(errors) == 1 and errors[0].category is ErrorCategory.AUTHENTICATION
    assert isinstance(errors[0].exception, GatewayAuthError)
    assert "SECRET77" not in errors[0].error
    assert stt.is_usable and stt.in_fallback  # the local VAD kept the call going
    assert len(h.of_type(ProposedUserStartedSpeakingFrame)) == len(fx.turns)
    assert server.gateway.stats["sessions"] == 0  # never past the auth check


def test_unknown_world_part_is_refused_up_front() -> None:
    with pytest.raises(InvalidRequest):
        Reson8GatewaySTTService(world_part="mars")
