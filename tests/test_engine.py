"""The local turn engine's segmentation with scripted models (fast; real models in
test_engine_quality.py): turn counts against ground truth, noise, determinism, options."""

from __future__ import annotations

from itertools import pairwise

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
                                    {"max_silence_ms": 100}, {"eot_lead_ms": -1}])
def test_config_is_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        EngineConfig(**kwargs)  # type: ignore[arg-type]


def test_speculative_recognition_is_ready_when_the_candidate_is_due() -> None:
    # Recognition starts at 100 ms of silence; the candidate (at 200 ms) uses it, and a
    # speculation overtaken by resumed speech is dropped: with a recogniser that answers
    # "x" per job, the candidates' texts count exactly the segments, as without speculation
    # (each segment recognised alone: asr_context_ms=0).
    from reson8_voice.engine.turn_engine import RecognizeJob, TurnEndCandidate

    fx = load_fixture("call_delivery")

    def drive(speculate_ms: int) -> tuple[list[tuple[float, object]], list[float]]:
        engine = TurnEngine(EngineConfig(speculate_silence_ms=speculate_ms, asr_context_ms=0),
                            sample_rate=8000)
        issued: list[float] = []
        base = scripted_runner()

        def run(job: object) -> object:
            if isinstance(job, RecognizeJob):
                issued.append(engine.stream_ms)
                return base(RecognizeJob(b"\0\0" * 2000, 8000, None, False))  # "w0 w1": fixed
            return base(job)  # type: ignore[arg-type]

        return run_to_completion(engine, fx.chunks(20, pcm=True), run), issued

    plain, plain_jobs = drive(0)
    fast, fast_jobs = drive(100)
    assert [(t, type(e)) for t, e in fast] == [(t, type(e)) for t, e in plain]
    assert fast == plain  # same texts: no dropped speculation leaked into a candidate
    candidates = [t for t, e in fast if isinstance(e, TurnEndCandidate)]
    assert candidates
    for t in candidates:  # each candidate's recognition began 100 ms earlier in the stream
        assert max(j for j in fast_jobs if j <= t) == pytest.approx(t - 100, abs=20)
    assert len(fast_jobs) >= len(plain_jobs) == len(candidates)


def test_a_noise_burst_in_the_pause_does_not_hold_the_turn_open() -> None:
    # call_support: "okay" ends, and 700 ms later a 3.2 s burst of pink noise + hum at
    # -38 dBFS begins (noise floor -55 dBFS). The jump out of the pause is not speech: no
    # continuation, and the turn ends within the silence ceiling plus the 300 ms it takes
    # to rule the burst out, not when the noise stops.
    from reson8_voice import TurnContinuation

    fx = load_fixture("call_support")
    burst = fx.noise[1]
    okay = next(t for t in fx.turns if t.end_ms < burst.start_ms < t.end_ms + 1000)
    events = run_to_completion(TurnEngine(sample_rate=8000), fx.chunks(20, pcm=True),
                               scripted_runner())
    assert not [t for t, e in events
                if isinstance(e, TurnContinuation) and okay.end_ms < t < burst.end_ms]
    end = next(t for t, e in events if isinstance(e, TurnEnd) and t > okay.end_ms)
    config = EngineConfig()
    assert end - okay.end_ms <= config.max_silence_ms + config.modulation_window_ms


def test_the_end_of_turn_model_is_asked_ahead_and_answers_at_the_checkpoint() -> None:
    # The model is asked eot_lead_ms before its checkpoint and its answer applied at the
    # checkpoint, so inference overlaps the silence. With an oracle model (complete only
    # when asked after a turn's last word), asking ahead changes no event: a pause that
    # resumes after the question drops the answer (reusing it would end the turn later, at
    # the ceiling), and every turn ends at its checkpoint, 200 ms of stream after the ask.
    from reson8_voice.engine.turn_engine import EndOfTurnJob, Job

    fx = load_fixture("call_delivery")

    def drive(lead_ms: int) -> tuple[list[tuple[float, object]], list[float]]:
        engine = TurnEngine(EngineConfig(eot_schedule=((500, 0.5),), eot_lead_ms=lead_ms),
                            sample_rate=8000)
        asked: list[float] = []
        base = scripted_runner()

        def run(job: Job) -> object:
            if isinstance(job, EndOfTurnJob):
                now = engine.stream_ms
                asked.append(now)
                return float(any(t.end_ms < now < t.end_ms + 1000 for t in fx.turns))
            return base(job)

        return run_to_completion(engine, fx.chunks(20, pcm=True), run), asked

    ahead, asked_ahead = drive(200)
    plain, asked_plain = drive(0)
    assert ahead == plain
    ends = [t for t, e in ahead if isinstance(e, TurnEnd)]
    assert len(ends) == len(fx.turns)
    for t, turn in zip(ends, fx.turns, strict=True):
        assert 450 <= t - turn.end_ms < 650  # the checkpoint (500 ms), not the ceiling
        assert max(a for a in asked_ahead if a <= t) == pytest.approx(t - 200, abs=20)
    # pauses of 300-500 ms were asked about, then resumed (their answers dropped)
    assert len(asked_ahead) > len(asked_plain)


def test_recognition_covers_the_turn_so_far_within_the_asr_context() -> None:
    # long_turn: one 17.4 s turn of five phrases. With asr_context_ms, each recognition
    # re-covers the earlier pieces that still fit 9 s, and its text replaces theirs; one
    # by one (0), each phrase is recognised alone. The turn events are the same either way.
    from reson8_voice import TurnEndCandidate
    from reson8_voice.engine.asr import Recognition
    from reson8_voice.engine.turn_engine import Job, RecognizeJob

    fx = load_fixture("long_turn")
    base = scripted_runner()

    def drive(context_ms: int) -> tuple[list[tuple[float, object]], list[str], list[float]]:
        engine = TurnEngine(EngineConfig(asr_context_ms=context_ms), sample_rate=8000)
        spans: list[float] = []

        def run(job: Job) -> object:
            if isinstance(job, RecognizeJob):  # the text names the audio it came from
                spans.append(len(job.pcm16) / 2 / job.sample_rate * 1000)
                return Recognition(f"<{len(spans) - 1}>", "en")
            return base(job)

        events = run_to_completion(engine, fx.chunks(20, pcm=True), run)
        texts = [e.text for _, e in events if isinstance(e, TurnEndCandidate)]
        return events, texts, spans

    joint, joint_texts, joint_ms = drive(9000)
    alone, alone_texts, alone_ms = drive(0)
    assert [(t, type(e)) for t, e in joint] == [(t, type(e)) for t, e in alone]
    assert max(joint_ms) <= 9000 < sum(alone_ms) and max(joint_ms) > max(alone_ms)
    # one by one, each candidate adds a piece; with context the second candidate is one
    # recognition of the whole turn so far, and the last needs more than one (17 s)
    assert [t.count("<") for t in alone_texts] == list(range(1, len(alone_texts) + 1))
    assert joint_texts[1].count("<") == 1 and 1 < joint_texts[-1].count("<") < len(alone_texts)


def _long_segment() -> tuple[bytes, float]:
    """long_turn's speech eight times over: 141 s that a 2 s segment silence keeps whole."""
    fx = load_fixture("long_turn")
    turn = fx.turns[0]
    pcm = fx.pcm16()[(turn.start_ms - 100) * 16:(turn.end_ms + 100) * 16] * 8
    return pcm, len(pcm) / 16000


@pytest.mark.parametrize("with_words", [True, False])
def test_interims_re_recognise_a_bounded_window_and_keep_the_words_before(
    with_words: bool,
) -> None:
    """Each interim hears at most interim_window_ms (+ about an interval) of the segment's
    end; what lies before comes from earlier interims, cut at a word's end, or, from a
    recogniser without word times, whole (an interim's text up to what it heard). The
    text still grows with the segment, and the final hears the segment whole."""
    from reson8_voice.engine.asr import Recognition, RecognizedWord
    from reson8_voice.engine.turn_engine import Job, RecognizeJob, TranscriptEngine
    from reson8_voice.events import Transcript

    pcm, seconds = _long_segment()
    config = EngineConfig(segment_silence_ms=2000, interim_window_ms=5000)
    heard: list[float] = []

    def run(job: Job) -> object:
        assert isinstance(job, RecognizeJob)
        ms = len(job.pcm16) / 2 / job.sample_rate * 1000
        heard.append(ms / 1000)
        n = int(ms // 250)
        words = tuple(RecognizedWord(f"w{i}", i * 250, 200, 0.9) for i in range(n))
        return Recognition(" ".join(w.text for w in words), "en",
                           words if with_words and job.want_words else ())

    engine = TranscriptEngine(config, sample_rate=8000, include_interim=True)
    events = [e for _, e in run_to_completion(engine, [pcm[i:i + 3200]
                                                       for i in range(0, len(pcm), 3200)],
                                              run)]
    assert all(isinstance(e, Transcript) for e in events)
    interims = [e for e in events if isinstance(e, Transcript) and not e.final]
    assert len([e for e in events if isinstance(e, Transcript) and e.final]) == 1
    assert heard[-1] > seconds - 1  # the final
    assert max(heard[:-1]) <= 5 + 1.5
    counts = [len(e.text.split()) for e in interims]
    assert counts[-1] >= 0.85 * (seconds - 1.5) / 0.25, counts[-1]
    # the text grows with the segment, never losing what was held (+- a word at a cut)
    assert all(b >= a - 2 for a, b in pairwise(counts))


def test_interim_settings_are_validated() -> None:
    with pytest.raises(InvalidRequest):
        EngineConfig(interim_window_ms=500)  # shorter than the interval
    with pytest.raises(InvalidRequest):
        EngineConfig(interim_interval_ms=0)
