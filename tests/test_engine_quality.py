"""The local turn engine with the real models on speech with known ground truth.

One run of every fixture through :class:`TurnEngine` (webrtcvad + smart-turn v3 + Whisper
tiny.en, as the embedded server runs it), then the issue's quality bars:
every turn gets exactly one turn_start and one turn_end; at most 1 in 10 intra-turn pauses
is cut; no event comes from noise alone; word error rate of the committed text <= 15 %.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from reson8_voice import TurnContinuation, TurnEnd, TurnEndCandidate, TurnStart
from reson8_voice.engine.models import LocalModels
from reson8_voice.engine.turn_engine import TurnEngine, run_to_completion

from .audio_fixtures import Fixture, all_fixtures, wer


@dataclass
class Span:
    start: float
    end: float = 0.0
    text: str = ""
    candidates: list[float] = field(default_factory=list)
    continuations: int = 0


def spans_of(events: list[tuple[float, object]]) -> list[Span]:
    spans: list[Span] = []
    for t, e in events:
        if isinstance(e, TurnStart):
            spans.append(Span(t))
        elif isinstance(e, TurnEndCandidate):
            spans[-1].text = e.text
            spans[-1].candidates.append(t)
        elif isinstance(e, TurnContinuation):
            spans[-1].continuations += 1
        elif isinstance(e, TurnEnd):
            spans[-1].end = t
    return spans


@pytest.fixture(scope="module")
def runs() -> list[tuple[Fixture, list[Span]]]:
    models = LocalModels.load()
    out = []
    for fx in all_fixtures():
        engine = TurnEngine(sample_rate=fx.sample_rate, include_words=True,
                            include_timestamps=True)
        events = run_to_completion(engine, fx.chunks(20, pcm=True), models.run)
        out.append((fx, spans_of(events)))
    return out


def _overlapping(span: Span, fx: Fixture) -> list[int]:
    return [i for i, t in enumerate(fx.turns) if span.start < t.end_ms + 300
            and span.end > t.start_ms]


def test_every_turn_gets_exactly_one_start_and_one_end(
    runs: list[tuple[Fixture, list[Span]]]
) -> None:
    for fx, spans in runs:
        assert all(s.end for s in spans), f"{fx.name}: a turn never ended"
        owners = [_overlapping(s, fx) for s in spans]
        assert all(len(o) == 1 for o in owners), f"{fx.name}: a turn spans {owners}"
        assert sorted(o[0] for o in owners) == list(range(len(fx.turns))), \
            f"{fx.name}: {len(spans)} engine turns for {len(fx.turns)} spoken turns"


def test_at_most_one_in_ten_intra_turn_pauses_is_cut(
    runs: list[tuple[Fixture, list[Span]]]
) -> None:
    pauses = cut = 0
    where = []
    for fx, spans in runs:
        for turn in fx.turns:
            pauses += len(turn.segments) - 1
            # a cut pause splits a spoken turn into several engine turns
            pieces = [s for s in spans if s.start < turn.end_ms + 300 and s.end > turn.start_ms]
            if len(pieces) > 1:
                cut += len(pieces) - 1
                where.append(f"{fx.name}@{turn.start_ms}: {[p.text for p in pieces]}")
    assert pauses >= 20
    assert cut * 10 <= pauses, f"{cut} of {pauses} intra-turn pauses cut: {where}"


def test_no_event_comes_from_noise_alone(runs: list[tuple[Fixture, list[Span]]]) -> None:
    for fx, spans in runs:
        for noise in fx.noise:
            inside = [s for s in spans if noise.start_ms <= s.start < noise.end_ms]
            assert not inside, f"{fx.name}: a turn started in noise at {inside[0].start}"
        if not fx.turns:
            assert spans == []


def test_word_error_rate_of_committed_text(runs: list[tuple[Fixture, list[Span]]]) -> None:
    ref_words = errors = 0.0
    for fx, spans in runs:
        for i, turn in enumerate(fx.turns):
            hypothesis = " ".join(s.text for s in spans if _overlapping(s, fx) == [i])
            n = len(turn.text.split())
            ref_words += n
            errors += wer(turn.text, hypothesis) * n
    rate = errors / ref_words
    assert rate <= 0.15, f"WER {rate:.1%}"
