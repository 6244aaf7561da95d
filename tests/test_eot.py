"""The engine's end-of-turn model on real phone audio (the committed fixtures, 8 kHz mu-law
upsampled to 16 kHz), and its parity with pipecat's own smart-turn v3 analyser."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from reson8_voice.engine._models import default_smart_turn_path, smart_turn_dir
from reson8_voice.engine.asr import SAMPLE_RATE, resample_pcm16
from reson8_voice.engine.eot import (
    WINDOW_SECONDS,
    EndOfTurnModel,
    ScriptedEndOfTurn,
    SmartTurnModel,
)
from reson8_voice.errors import AudioFormatError

from . import audio_fixtures as af

TAIL_MS = 300  # silence after the last word when the engine asks (a pause being judged)


def audio_until(fixture: af.Fixture, turn: af.Turn, end_ms: int) -> np.ndarray:
    """The turn from 300 ms before its onset to ``end_ms``, at 16 kHz (int16)."""
    start = max(0, turn.start_ms - 300)
    return resample_pcm16(fixture.samples()[start * 8 : end_ms * 8], 8000)


@pytest.fixture(scope="module")
def smart_turn() -> SmartTurnModel:
    return SmartTurnModel()


def test_model_is_the_one_pipecat_ships() -> None:
    path = default_smart_turn_path()
    assert path.parent == smart_turn_dir() / "data"
    assert path.name.startswith("smart-turn-v3") and path.suffix == ".onnx"


def test_loading_does_not_import_pipecat() -> None:
    """The model and pipecat's feature code are found without running pipecat's __init__."""
    code = ("import sys; from reson8_voice.engine.eot import SmartTurnModel; "
            "m = SmartTurnModel(); p = m.predict(b'\\x00\\x00' * 16000); "
            "print(0.0 <= p <= 1.0, any(n.split('.')[0] == 'pipecat' for n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.split() == ["True", "False"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pipecat's importlib.resources use
def test_probabilities_match_pipecats_analyser(smart_turn: SmartTurnModel) -> None:
    from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3

    pipecat_model = LocalSmartTurnAnalyzerV3()
    fixture = af.load_fixture("long_turn")  # 17 s: exercises the 8 s truncation too
    turn = fixture.turns[0]
    cuts = [turn.segments[0].end_ms + TAIL_MS, turn.segments[2].start_ms + 700,
            turn.end_ms + TAIL_MS]
    ours, theirs = [], []
    for cut in cuts:
        audio = audio_until(fixture, turn, cut)
        ours.append(smart_turn.predict(audio))
        theirs.append(pipecat_model._predict_endpoint(audio.astype(np.float32) / 32768.0)[
            "probability"])
    assert ours == pytest.approx(theirs, abs=1e-5)
    assert max(ours) - min(ours) > 0.05  # the cuts really differ


@pytest.mark.slow  # ~45 inferences: 4-8 s on two cores
def test_complete_turns_score_higher_than_turns_cut_mid_phrase(
        smart_turn: SmartTurnModel) -> None:
    """Across the fixtures, silence after a finished turn looks more final than a cut in
    the middle of a phrase. (On these synthetic voices smart-turn is far less sure than on
    human speech, so only the aggregate ordering is asserted.)"""
    complete, cut = [], []
    for fixture in af.all_fixtures():
        for turn in fixture.turns:
            complete.append(smart_turn.predict(
                audio_until(fixture, turn, turn.end_ms + TAIL_MS)))
            longest = max(turn.segments, key=lambda s: s.duration_ms)
            if longest.duration_ms >= 1000:
                cut.append(smart_turn.predict(
                    audio_until(fixture, turn, longest.start_ms + longest.duration_ms // 2)))
    assert len(complete) >= 20 and len(cut) >= 15
    assert all(0.0 <= p <= 1.0 for p in complete + cut)
    assert np.mean(complete) > np.mean(cut) + 0.1, (complete, cut)
    assert np.median(complete) > np.median(cut)


def test_only_the_last_eight_seconds_count(smart_turn: SmartTurnModel) -> None:
    fixture = af.load_fixture("long_turn")
    turn = fixture.turns[0]
    audio = audio_until(fixture, turn, turn.end_ms + TAIL_MS)
    window = WINDOW_SECONDS * SAMPLE_RATE
    assert len(audio) > window
    assert smart_turn.predict(audio) == smart_turn.predict(audio[-window:])
    short = audio[-3 * SAMPLE_RATE :]
    padded = np.concatenate([np.zeros(window - len(short), dtype=np.int16), short])
    assert smart_turn.predict(short) == smart_turn.predict(padded)


def test_input_forms_agree(smart_turn: SmartTurnModel) -> None:
    fixture = af.load_fixture("call_restaurant")
    turn = fixture.turns[0]
    audio = audio_until(fixture, turn, turn.end_ms + TAIL_MS)
    as_int16 = smart_turn.predict(audio)
    assert smart_turn.predict(audio.tobytes()) == as_int16
    assert smart_turn.predict(audio.astype(np.float32) / 32768.0) == pytest.approx(as_int16,
                                                                                   abs=1e-6)
    with pytest.raises(AudioFormatError):
        smart_turn.predict(b"\x00")


def test_concurrent_calls_match_sequential_ones(smart_turn: SmartTurnModel) -> None:
    fixture = af.load_fixture("call_delivery")
    clips = [audio_until(fixture, t, t.end_ms + TAIL_MS) for t in fixture.turns[:4]]
    expected = [smart_turn.predict(c) for c in clips]
    barrier = threading.Barrier(4)

    def run(i: int) -> float:
        barrier.wait(timeout=10)
        return smart_turn.predict(clips[i % 4])

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(run, range(8))) == [expected[i % 4] for i in range(8)]
    assert isinstance(smart_turn, EndOfTurnModel)


def test_scripted_end_of_turn() -> None:
    second = np.zeros(SAMPLE_RATE, dtype=np.int16)
    constant = ScriptedEndOfTurn(0.25)
    assert constant.predict(second) == 0.25 and constant.calls == [1.0]
    sequence = ScriptedEndOfTurn([0.1, 0.9])
    assert [sequence.predict(b"\x00\x00") for _ in range(3)] == [0.1, 0.9, 0.9]
    by_length = ScriptedEndOfTurn(lambda seconds: min(1.0, seconds / 2))
    assert by_length.predict(second) == 0.5
    assert isinstance(by_length, EndOfTurnModel)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: constant.predict(second), range(100)))
    assert len(constant.calls) == 101
