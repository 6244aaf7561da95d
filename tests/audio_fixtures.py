"""Loader for the committed speech fixtures under ``tests/fixtures/`` and a WER helper.

The fixtures are headerless 8 kHz mono G.711 mu-law (what Twilio media streams carry) with
exact ground truth in ``tests/fixtures/manifest.json`` (see ``tests/fixtures/README.md``).
Tests import it as ``from .audio_fixtures import load_fixture``; benchmarks and the demo,
run from the repository root, as ``from tests.audio_fixtures import load_fixture``. It needs
only numpy (no audioop, no espeak/flite/sox).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "FIXTURES_DIR",
    "SAMPLE_RATE",
    "Fixture",
    "NoiseStretch",
    "Segment",
    "Turn",
    "all_fixtures",
    "fixture_names",
    "load_fixture",
    "mulaw_to_pcm16",
    "normalize_text",
    "wer",
]

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
SAMPLE_RATE = 8000
_BYTES_PER_MS = SAMPLE_RATE // 1000  # mu-law: one byte per sample


def _mulaw_table() -> npt.NDArray[np.int16]:
    """G.711 mu-law byte -> s16 sample (bit-identical to ``audioop.ulaw2lin``)."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


_MULAW_TABLE = _mulaw_table()


def mulaw_to_pcm16(data: bytes) -> bytes:
    """Decode G.711 mu-law bytes to s16le PCM (works without ``audioop`` on 3.13+)."""
    idx = np.frombuffer(data, dtype=np.uint8)
    return _MULAW_TABLE[idx].astype("<i2").tobytes()


@dataclass(frozen=True)
class Segment:
    """One separately synthesized sentence or phrase: its voiced extent and text."""

    start_ms: int
    end_ms: int
    text: str
    filler: bool = False

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


@dataclass(frozen=True)
class Turn:
    """One caller turn: speech onset of its first segment to offset of its last."""

    index: int
    start_ms: int
    end_ms: int
    text: str
    segments: tuple[Segment, ...]
    pauses_ms: tuple[int, ...]
    gap_before_ms: int
    tags: tuple[str, ...]
    voice: str
    wpm: int

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms

    @property
    def is_barge_in(self) -> bool:
        """Starts while a bot would still be replying to the previous turn."""
        return "barge_in" in self.tags

    @property
    def is_hesitation(self) -> bool:
        """Contains a mid-sentence hesitation ("I want to ... um ... change")."""
        return "hesitation" in self.tags

    @property
    def is_short_answer(self) -> bool:
        return "short_answer" in self.tags

    def pause_spans(self) -> list[tuple[int, int]]:
        """(start_ms, end_ms) of each intra-turn pause."""
        return [(a.end_ms, b.start_ms) for a, b in pairwise(self.segments)]


@dataclass(frozen=True)
class NoiseStretch:
    """A loud noise-only stretch (no speech) at ``level_dbfs`` RMS."""

    start_ms: int
    end_ms: int
    kind: str
    level_dbfs: float


@dataclass(frozen=True)
class Fixture:
    """One fixture file: raw mu-law bytes plus its ground truth."""

    name: str
    path: Path
    description: str
    data: bytes
    sample_rate: int
    encoding: str
    duration_ms: int
    noise_floor_dbfs: float
    turns: tuple[Turn, ...]
    noise: tuple[NoiseStretch, ...]

    def __repr__(self) -> str:
        return (
            f"Fixture(name={self.name!r}, duration_ms={self.duration_ms}, "
            f"turns={len(self.turns)}, noise={len(self.noise)})"
        )

    @property
    def text(self) -> str:
        """All turns' ground truth joined with spaces."""
        return " ".join(t.text for t in self.turns)

    @property
    def segments(self) -> tuple[Segment, ...]:
        return tuple(s for t in self.turns for s in t.segments)

    def pcm16(self) -> bytes:
        """The audio decoded to s16le mono at 8 kHz."""
        return mulaw_to_pcm16(self.data)

    def samples(self) -> npt.NDArray[np.int16]:
        """The decoded audio as an int16 array."""
        return np.frombuffer(self.pcm16(), dtype="<i2")

    def chunks(self, ms: int = 20, *, pcm: bool = False) -> Iterator[bytes]:
        """Yield consecutive ``ms``-long chunks (mu-law, or s16le if ``pcm``); the last may be
        shorter."""
        if ms <= 0:
            raise ValueError("ms must be positive")
        data = self.pcm16() if pcm else self.data
        step = ms * _BYTES_PER_MS * (2 if pcm else 1)
        for i in range(0, len(data), step):
            yield data[i : i + step]

    def speech_free_spans(self, margin_ms: int = 0) -> list[tuple[int, int]]:
        """(start_ms, end_ms) spans containing no speech: everything outside the segments,
        each shrunk by ``margin_ms`` at both ends (empty spans dropped)."""
        spans: list[tuple[int, int]] = []
        cur = 0
        for seg in self.segments:
            spans.append((cur, seg.start_ms))
            cur = seg.end_ms
        spans.append((cur, self.duration_ms))
        out = []
        for a, b in spans:
            a2 = a + margin_ms if a > 0 else a
            b2 = b - margin_ms if b < self.duration_ms else b
            if b2 > a2:
                out.append((a2, b2))
        return out


@cache
def _manifest() -> dict[str, Any]:
    with (FIXTURES_DIR / "manifest.json").open() as f:
        data: dict[str, Any] = json.load(f)
    return data


def fixture_names() -> list[str]:
    """Names of all fixtures in the manifest (excludes other helpers' ``vad_*`` files)."""
    return list(_manifest()["fixtures"])


@cache
def load_fixture(name: str) -> Fixture:
    """Load one fixture by name (e.g. ``"call_restaurant"``); cached."""
    try:
        entry = _manifest()["fixtures"][name]
    except KeyError:
        raise KeyError(f"unknown fixture {name!r}; have {fixture_names()}") from None
    path = FIXTURES_DIR / entry["file"]
    turns = tuple(
        Turn(
            index=t["index"],
            start_ms=t["start_ms"],
            end_ms=t["end_ms"],
            text=t["text"],
            segments=tuple(
                Segment(s["start_ms"], s["end_ms"], s["text"], bool(s.get("filler", False)))
                for s in t["segments"]
            ),
            pauses_ms=tuple(t["pauses_ms"]),
            gap_before_ms=t["gap_before_ms"],
            tags=tuple(t["tags"]),
            voice=t["voice"],
            wpm=t["wpm"],
        )
        for t in entry["turns"]
    )
    noise = tuple(
        NoiseStretch(n["start_ms"], n["end_ms"], n["kind"], float(n["level_dbfs"]))
        for n in entry["noise"]
    )
    return Fixture(
        name=name,
        path=path,
        description=entry["description"],
        data=path.read_bytes(),
        sample_rate=entry["sample_rate"],
        encoding=entry["encoding"],
        duration_ms=entry["duration_ms"],
        noise_floor_dbfs=float(entry["noise_floor_dbfs"]),
        turns=turns,
        noise=noise,
    )


def all_fixtures() -> list[Fixture]:
    """Every fixture in the manifest, in manifest order."""
    return [load_fixture(n) for n in fixture_names()]


# --------------------------------------------------------------------------------------
# Word error rate
# --------------------------------------------------------------------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_FILLERS = frozenset({"um", "umm", "uh", "uhm", "uh-huh", "er", "erm", "hmm", "mm", "ah"})
_EQUIV = {"ok": "okay", "alright": "all right", "%": "percent"}


def _number_words(digits: str) -> list[str]:
    """0-99 as words ("42" -> forty two); longer digit strings digit by digit ("555")."""
    if len(digits) > 2:
        return [_ONES[int(d)] for d in digits]
    n = int(digits)
    if n < 20:
        return [_ONES[n]]
    tens, ones = divmod(n, 10)
    return [_TENS[tens]] if ones == 0 else [_TENS[tens], _ONES[ones]]


def normalize_text(text: str) -> list[str]:
    """Words for WER: lowercase, punctuation and fillers dropped, apostrophes removed
    ("I'd" -> "id"), digits spelled out ("4" -> four, "7:30" -> seven thirty, "555-1234" ->
    digit by digit), "ok" -> "okay"."""
    t = text.lower().replace("\u2019", "'").replace("%", " % ")
    t = re.sub(r"(\d)[:\-.,/](?=\d)", r"\1 ", t)  # 7:30, 555-1234, 1,000 -> separate numbers
    t = t.replace("'", "")
    t = re.sub(r"[^a-z0-9% ]+", " ", t)
    words: list[str] = []
    for tok in t.split():
        if tok in _FILLERS:
            continue
        tok = _EQUIV.get(tok, tok)
        for w in tok.split():
            if w.isdigit():
                words.extend(_number_words(w))
            else:
                # "4pm" -> "4", "pm"
                for part in re.findall(r"\d+|[a-z]+", w):
                    words.extend(_number_words(part) if part.isdigit() else [part])
    return words


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate (substitutions + deletions + insertions) / reference words, by
    Levenshtein distance over :func:`normalize_text` words. An empty reference gives 0.0 for
    an empty hypothesis, else 1.0. Can exceed 1.0 when the hypothesis has many insertions."""
    ref = normalize_text(reference)
    hyp = normalize_text(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / len(ref)
