"""Every example imports and builds; the client example transcribes a real file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from reson8_voice.pipecat import Reson8TurnsSTTService
from reson8_voice.server import Reson8Server, ServerConfig

from .audio_fixtures import FIXTURES_DIR, load_fixture
from .conftest import scripted_runner

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_minimal_pipeline_is_under_40_lines_and_builds() -> None:
    source = (EXAMPLES / "minimal_pipeline.py").read_text()
    assert len(source.splitlines()) < 40
    from agents.local_assistant import file_transport

    worker = _load("minimal_pipeline").build(file_transport(FIXTURES_DIR / "noise_only.ulaw"))
    inner = next(p for p in worker.pipeline.processors if type(p).__name__ == "Pipeline")
    names = [type(p).__name__ for p in inner.processors]
    assert "Reson8TurnsSTTService" in names and "EspeakTTSService" in names


def test_custom_turn_strategies_pins_eager_end_of_turn() -> None:
    from pipecat.turns.user_turn_strategies import EagerUserTurnStrategies

    stt, pair = _load("custom_turn_strategies").build()
    assert stt.arbiter is not None and stt._enable_eager_end_of_turn
    strategies = pair.user()._params.user_turn_strategies
    assert isinstance(strategies, EagerUserTurnStrategies)


def test_hosted_service_switches_on_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _load("hosted_service")
    monkeypatch.delenv("RESON8_API_KEY", raising=False)
    monkeypatch.delenv("RESON8_TOKEN", raising=False)
    monkeypatch.setenv("RESON8_URL", "ws://10.1.2.3:8765")
    assert module.make_stt().url == "ws://10.1.2.3:8765"
    monkeypatch.setenv("RESON8_API_KEY", "sk-test-123")
    stt = module.make_stt()
    assert isinstance(stt, Reson8TurnsSTTService)
    assert stt.url == "wss://api.reson8.dev" and "sk-test-123" not in repr(stt)


async def test_transcribe_file_example_returns_the_turns() -> None:
    fx = load_fixture("short_answers")
    async with Reson8Server(ServerConfig(port=0), scripted_runner()) as server:
        turns = await _load("transcribe_file").transcribe(
            FIXTURES_DIR / "short_answers.ulaw", server.url)
    assert len(turns) == len(fx.turns)
    for turn, truth in zip(turns, fx.turns, strict=True):
        assert turn.text.startswith("w0")
        assert turn.start_ms is not None and abs(turn.start_ms - truth.start_ms) <= 400
