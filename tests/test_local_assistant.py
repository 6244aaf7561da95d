"""The local assistant: its pipeline builds without PyAudio, and a file plays the mic."""

from __future__ import annotations

import importlib.util
import wave
from pathlib import Path

import pytest
from pipecat.pipeline.pipeline import Pipeline

from agents.local_assistant import (
    AssistantConfig,
    build_assistant,
    file_transport,
    local_audio_transport,
    run_assistant,
)
from reson8_voice.demo.espeak_tts import EspeakTTSService
from reson8_voice.pipecat import Reson8TurnsSTTService
from reson8_voice.server import Reson8Server, ServerConfig

from .audio_fixtures import FIXTURES_DIR, load_fixture
from .conftest import scripted_runner

SPEED = 3.0


def test_pipeline_builds_without_the_local_audio_extra(tmp_path: Path) -> None:
    assistant = build_assistant(file_transport(FIXTURES_DIR / "short_answers.ulaw"),
                                AssistantConfig(reson8_url="ws://127.0.0.1:9"))
    assert isinstance(assistant.pipeline, Pipeline)
    assert isinstance(assistant.stt, Reson8TurnsSTTService)
    names = [type(p).__name__ for p in assistant.pipeline.processors]
    assert names[1:-1] == ["FileAudioInput", "Reson8TurnsSTTService", "LLMUserAggregator",
                           "ScriptedReplyLLM", "EspeakTTSService", "FileAudioOutput",
                           "LLMAssistantAggregator"]


@pytest.mark.skipif(importlib.util.find_spec("pyaudio") is not None,
                    reason="PyAudio is installed")
def test_microphone_without_pyaudio_names_the_extra() -> None:
    with pytest.raises(ImportError, match="local-audio"):
        local_audio_transport()


async def test_a_file_source_is_heard_turn_by_turn_and_answered(tmp_path: Path) -> None:
    fx = load_fixture("short_answers")
    out = tmp_path / "bot.wav"
    async with Reson8Server(ServerConfig(port=0), scripted_runner()) as server:
        transport = file_transport(FIXTURES_DIR / "short_answers.ulaw", out_path=out,
                                   speed=SPEED, tail_s=2.0)
        assistant = build_assistant(transport, AssistantConfig(
            reson8_url=server.url, greeting=None,
            stt_options={"watchdog_s": 2.0 * SPEED + 2.0}))
        await run_assistant(assistant, settle_s=0.5)
    # the bot's audio was played on the clock (speed times real time), not dumped
    output = transport.output()
    played_s = len(output.audio) / 2 / 16000
    assert output.last_played > 0 and played_s >= len(fx.turns)
    assert len(assistant.turns) == len(fx.turns)
    assert all(t.text.startswith("w0") and not t.cut_short for t in assistant.turns)
    with wave.open(str(out)) as w:
        assert w.getframerate() == 16000
        seconds = w.getnframes() / 16000
    # every answer was spoken: at least a second of bot audio per turn
    assert seconds >= len(fx.turns)
    assert isinstance(assistant.pipeline.processors[5], EspeakTTSService)
