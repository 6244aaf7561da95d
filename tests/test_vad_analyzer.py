"""WebRTCVADAnalyzer as pipecat uses it: analyze_audio state transitions and real pipelines.

Audio is the real-speech telephone fixture of test_vad.py (8 kHz mu-law, ground truth in
tests/fixtures/vad_speech.json), decoded to PCM the way pipecat's serializers do.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState
from pipecat.frames.frames import (
    InputAudioRawFrame,
    InterruptionFrame,
    UserStartedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMUserAggregator,
    LLMUserAggregatorParams,
)
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.tests.utils import run_test

from reson8_voice import g711
from reson8_voice.errors import AudioFormatError, InvalidRequest
from reson8_voice.pipecat._vad_analyzer import WebRTCVADAnalyzer, phone_vad_params

FIXTURES = Path(__file__).parent / "fixtures"
RATE = 8000
FRAME_BYTES = 320  # 20 ms of 8 kHz PCM s16le
ONSET_TOLERANCE_MS = 40
OFFSET_EARLY_MS = 60
OFFSET_LATE_MS = 160  # WebRTC's 100 ms hangover plus a frame


@pytest.fixture(scope="module")
def speech() -> tuple[bytes, list[tuple[int, int]]]:
    manifest = json.loads((FIXTURES / "vad_speech.json").read_text())
    pcm = g711.ulaw_decode((FIXTURES / manifest["file"]).read_bytes())
    return pcm, [(s["start_ms"], s["end_ms"]) for s in manifest["speech"]]


@pytest.fixture(autouse=True)
def _quiet_pipecat_logs() -> Iterator[None]:
    logger.disable("pipecat")
    yield
    logger.enable("pipecat")


def scaled(pcm: bytes, db: float) -> bytes:
    factor = 10 ** (db / 20)
    values = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    return struct.pack(f"<{len(values)}h", *(round(v * factor) for v in values))


async def transitions(
    analyzer: VADAnalyzer, pcm: bytes, chunk: int
) -> list[tuple[VADState, int]]:
    """Feed ``pcm`` in ``chunk``-byte pieces; return (SPEAKING/QUIET, stream ms) changes."""
    analyzer.set_sample_rate(RATE)
    found: list[tuple[VADState, int]] = []
    current = VADState.QUIET
    for i in range(0, len(pcm), chunk):
        state = await analyzer.analyze_audio(pcm[i : i + chunk])
        if state in (VADState.SPEAKING, VADState.QUIET) and state != current:
            current = state
            found.append((state, min(i + chunk, len(pcm)) * 1000 // (2 * RATE)))
    await analyzer.cleanup()  # type: ignore[no-untyped-call]
    return found


def assert_follows_truth(
    found: list[tuple[VADState, int]], truth: list[tuple[int, int]], start_ms: int, stop_ms: int
) -> None:
    # SPEAKING is reached start_ms after the onset; QUIET stop_ms after the (hangover-
    # extended) offset. Detection times, not backdated times: that is what pipecat reports.
    expected: list[tuple[VADState, int, int, int]] = []
    for onset, offset in truth:
        expected.append((VADState.SPEAKING, onset + start_ms, ONSET_TOLERANCE_MS, 60))
        expected.append((VADState.QUIET, offset + stop_ms, OFFSET_EARLY_MS, OFFSET_LATE_MS + 60))
    assert [s for s, _ in found] == [e[0] for e in expected], found
    for (_, at), (_, want, early, late) in zip(found, expected, strict=True):
        assert want - early <= at <= want + late, (found, truth)


# --- the VADAnalyzer contract ------------------------------------------------------------


@pytest.mark.parametrize("chunk", [FRAME_BYTES, 160, 640, 1102])
async def test_analyze_audio_tracks_real_speech(
    speech: tuple[bytes, list[tuple[int, int]]], chunk: int
) -> None:
    # Chunks of 10, 20, 40 ms and an odd size: pipecat buffers to whole frames itself.
    pcm, truth = speech
    found = await transitions(WebRTCVADAnalyzer(), pcm, chunk)
    assert_follows_truth(found, truth, start_ms=100, stop_ms=200)


async def test_vad_params_drive_the_hysteresis(
    speech: tuple[bytes, list[tuple[int, int]]],
) -> None:
    # start_secs longer than "Yes" (~290 ms) drops it; a long stop_secs merges nothing here
    # (the gaps are 1.5 s) but moves every QUIET later.
    pcm, truth = speech
    params = VADParams(start_secs=0.5, stop_secs=0.6, min_volume=0.0)
    found = await transitions(WebRTCVADAnalyzer(params=params), pcm, FRAME_BYTES)
    long_ones = [(s, e) for s, e in truth if e - s > 1000]
    assert_follows_truth(found, long_ones, start_ms=500, stop_ms=600)


async def test_quiet_phone_audio_is_detected_with_the_phone_defaults(
    speech: tuple[bytes, list[tuple[int, int]]],
) -> None:
    # 20 dB down (peaks near -36 dBFS, a quiet PCMU caller) every utterance is still caught
    # within 200 ms with min_volume 0 (the soft end of a long one may split it in two) ...
    pcm, truth = speech
    quiet = scaled(pcm, -20)
    found = await transitions(WebRTCVADAnalyzer(), quiet, FRAME_BYTES)
    starts = [at for state, at in found if state == VADState.SPEAKING]
    for onset, _ in truth:
        assert any(onset + 60 <= at <= onset + 200 for at in starts), (onset, found)
    for at in starts:
        assert any(onset < at <= offset + 100 for onset, offset in truth), (at, found)
    assert found[-1][0] == VADState.QUIET
    assert abs(found[-1][1] - (truth[-1][1] + 300)) <= 100
    # ... while pipecat's stock min_volume (0.6) hears nothing at all: why the default.
    stock = WebRTCVADAnalyzer(params=VADParams())
    assert stock.params.min_volume == pytest.approx(0.6)
    assert await transitions(stock, quiet, FRAME_BYTES) == []


async def test_noise_floor_from_the_first_frame_stays_quiet() -> None:
    rng = random.Random(4)
    for rms in (10.0, 30.0, 100.0):
        hiss = struct.pack("<24000h", *(round(rng.gauss(0.0, rms)) for _ in range(24000)))
        assert await transitions(WebRTCVADAnalyzer(), hiss, FRAME_BYTES) == []
        silence_then_hiss = bytes(16000) + hiss
        assert await transitions(WebRTCVADAnalyzer(), silence_then_hiss, FRAME_BYTES) == []


def test_frames_and_confidence() -> None:
    analyzer = WebRTCVADAnalyzer()
    assert isinstance(analyzer, VADAnalyzer)
    with pytest.raises(AudioFormatError, match="set_sample_rate"):
        analyzer.voice_confidence(bytes(FRAME_BYTES))
    analyzer.set_sample_rate(8000)
    assert analyzer.sample_rate == 8000 and analyzer.num_frames_required() == 160
    assert analyzer.voice_confidence(bytes(FRAME_BYTES)) == 0.0
    with pytest.raises(AudioFormatError):
        analyzer.voice_confidence(bytes(100))
    analyzer.set_sample_rate(16000)
    assert analyzer.num_frames_required() == 320
    fixed = WebRTCVADAnalyzer(sample_rate=48000, frame_ms=10, aggressiveness=3)
    fixed.set_sample_rate(16000)  # a fixed rate wins over the pipeline's, as in pipecat
    assert fixed.sample_rate == 48000 and fixed.num_frames_required() == 480
    assert fixed.aggressiveness == 3


def test_confidence_is_binary_on_speech(speech: tuple[bytes, list[tuple[int, int]]]) -> None:
    pcm, truth = speech
    analyzer = WebRTCVADAnalyzer()
    analyzer.set_sample_rate(RATE)
    start, end = truth[0]
    values = [
        analyzer.voice_confidence(pcm[i : i + FRAME_BYTES])
        for i in range(0, 2 * RATE * end // 1000, FRAME_BYTES)
    ]
    assert set(values) == {0.0, 1.0}
    inside = values[(start + 40) // 20 : (end - 40) // 20]
    assert sum(inside) / len(inside) > 0.9


def test_defaults_and_validation() -> None:
    params = phone_vad_params()
    assert (params.start_secs, params.stop_secs, params.min_volume) == (0.1, 0.2, 0.0)
    assert WebRTCVADAnalyzer().params == params
    with pytest.raises(AudioFormatError, match="24000"):
        WebRTCVADAnalyzer().set_sample_rate(24000)
    with pytest.raises(ValueError):  # what pipecat's own analyzers raise for a bad rate
        WebRTCVADAnalyzer().set_sample_rate(44100)
    with pytest.raises(AudioFormatError):
        WebRTCVADAnalyzer(sample_rate=22050)
    with pytest.raises(AudioFormatError):
        WebRTCVADAnalyzer(frame_ms=25)
    with pytest.raises(InvalidRequest):
        WebRTCVADAnalyzer(aggressiveness=5)


# --- inside real pipecat pipelines -------------------------------------------------------


def audio_frames(pcm: bytes) -> list[InputAudioRawFrame]:
    return [
        InputAudioRawFrame(audio=pcm[i : i + FRAME_BYTES], sample_rate=RATE, num_channels=1)
        for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)
    ]


async def vad_frames_with_times(processor: FrameProcessor, pcm: bytes) -> list[tuple[str, int]]:
    down, _up = await run_test(
        processor,
        frames_to_send=audio_frames(pcm),
        pipeline_params=PipelineParams(audio_in_sample_rate=RATE),
    )
    found: list[tuple[str, int]] = []
    audio_seen = 0
    for frame in down:
        if isinstance(frame, InputAudioRawFrame):
            audio_seen += 1
        elif isinstance(frame, VADUserStartedSpeakingFrame | VADUserStoppedSpeakingFrame):
            found.append((type(frame).__name__, audio_seen * 20))
    return found


async def test_vad_processor_pipeline(speech: tuple[bytes, list[tuple[int, int]]]) -> None:
    # VADProcessor forwards each audio frame before analysing it, so the number of audio
    # frames ahead of a VAD frame in the sink is the stream time at which it fired.
    pcm, truth = speech
    found = await vad_frames_with_times(VADProcessor(vad_analyzer=WebRTCVADAnalyzer()), pcm)
    states = [
        (VADState.SPEAKING if name.startswith("VADUserStarted") else VADState.QUIET, at)
        for name, at in found
    ]
    assert_follows_truth(states, truth, start_ms=100, stop_ms=200)


async def test_user_aggregator_barge_in(speech: tuple[bytes, list[tuple[int, int]]]) -> None:
    # The recommended pipecat 1.x setup: VAD on the user aggregator. Speech must open a
    # user turn and interrupt the bot (UserStartedSpeakingFrame + InterruptionFrame).
    pcm, truth = speech
    aggregator = LLMUserAggregator(
        LLMContext(), params=LLMUserAggregatorParams(vad_analyzer=WebRTCVADAnalyzer())
    )
    down, _up = await run_test(
        aggregator,
        frames_to_send=audio_frames(pcm),
        pipeline_params=PipelineParams(audio_in_sample_rate=RATE),
    )
    names = [type(f) for f in down]
    vad = [n for n in names if n in (VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame)]
    assert vad == [VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame] * len(truth)
    assert UserStartedSpeakingFrame in names and InterruptionFrame in names


def test_pipeline_vad_runs_at_rates_webrtcvad_cannot() -> None:
    """A 24 kHz pipeline is resampled to 16 kHz for webrtcvad; speech is still found."""
    import numpy as np
    import soxr

    from reson8_voice.pipecat._pipeline_vad import PipelineVad
    from reson8_voice.vad import SpeechStarted

    from .audio_fixtures import load_fixture

    fx = load_fixture("short_answers")
    audio = soxr.resample(fx.samples(), 8000, 24000).astype(np.int16).tobytes()
    vad = PipelineVad(24000, 2, 100, 800)
    assert vad.sample_rate == 16000
    starts, resampled = [], 0
    for i in range(0, len(audio), 960):  # 20 ms at 24 kHz
        pcm, events = vad.process(audio[i:i + 960])
        resampled += len(pcm)
        starts += [e.at_ms for e in events if isinstance(e, SpeechStarted)]
    assert len(starts) == len(fx.turns)
    assert all(abs(s - t.start_ms) < 150 for s, t in zip(starts, fx.turns, strict=True))
    assert abs(resampled - len(audio) * 2 // 3) < 4000  # the audio the detector heard
