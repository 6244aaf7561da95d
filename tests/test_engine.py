"""The local turn engine's segmentation with scripted models (fast; real models in
test_engine_quality.py): turn counts against ground truth, noise, determinism, options."""

from __future__ import annotations

import pytest

from reson8_voice import InvalidRequest, TurnEnd, TurnStart
from reson8_voice.engine.turn_engine import EngineConfig, TurnEngine, run_to_completion

from .audio_fixtures import all_fixtures, load_fixture
from .conftest import scripted_runner


@pytest.mark.parametrize("fx", all_fixtures(), ids=lambda f: f.name)
def test_one_turn_per_spoken_turn_and_none_from_noise(fx: object) -> None:
    from .audio_fixtures import Fixture

    assert isinstance(fx, Fixture)
    events = run_to_completion(TurnEngine(sample_rate=8000), fx.chunks(20, pcm=True),
                               scripted_runner())
    starts = [t for t, e in events if isinstance(e, TurnStart)]
    assert len(starts) == len(fx.turns) == sum(isinstance(e, TurnEnd) for _, e in events)
    for t, turn in zip(starts, fx.turns, strict=True):
        assert turn.start_ms <= t <= turn.start_ms + 400  # onset confirmed within 400 ms


def test_chunking_does_not_change_the_events() -> None:
    fx = load_fixture("call_restaurant")
    pcm = fx.pcm16()
    whole = run_to_completion(TurnEngine(sample_rate=8000), [pcm], scripted_runner())
    odd = run_to_completion(TurnEngine(sample_rate=8000),
                            (pcm[i:i + 333] for i in range(0, len(pcm), 333)),
                            scripted_runner())
    assert whole == odd


def test_silero_option_segments_short_answers() -> None:
    fx = load_fixture("short_answers")
    engine = TurnEngine(EngineConfig(vad="silero"), sample_rate=8000)
    events = run_to_completion(engine, fx.chunks(20, pcm=True), scripted_runner())
    assert sum(isinstance(e, TurnStart) for _, e in events) == len(fx.turns)
    noise = load_fixture("noise_only")
    engine = TurnEngine(EngineConfig(vad="silero"), sample_rate=8000)
    assert run_to_completion(engine, noise.chunks(20, pcm=True), scripted_runner()) == []


@pytest.mark.parametrize("kwargs", [{"vad": "rnn"}, {"vad_frame_ms": 25},
                                    {"eot_schedule": ((500, 0.5), (300, 0.5))},
                                    {"eot_schedule": ((300, 1.5),)},
                                    {"max_silence_ms": 100}])
def test_config_is_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        EngineConfig(**kwargs)  # type: ignore[arg-type]
