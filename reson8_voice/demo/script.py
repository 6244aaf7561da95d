"""What the simulated caller says: the turns of a committed speech fixture, with ground truth.

A fixture (``tests/fixtures/<name>.ulaw`` + ``manifest.json``, 8 kHz mu-law) is cut into its
turns. The caller plays them as a person would: it waits for the bot's reply to finish
before the next turn, and starts a turn tagged ``barge_in`` while the bot is still talking.
Each turn keeps its exact voiced extent (``speech_start_ms``/``speech_end_ms`` within its
audio), so latencies are measured against ground truth, not a detector's guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CallScript", "CallerTurn", "find_fixtures_dir"]

_BYTES_PER_MS = 8  # 8 kHz mu-law: one byte per sample
_LEAD_MS = 200  # audio kept before a turn's first voiced sample
_TAIL_MS = 300  # and after its last


@dataclass(frozen=True, slots=True)
class CallerTurn:
    """One caller turn: mu-law audio with its voiced extent, or keypad digits.

    Attributes:
        index: position in the script.
        text: what is said (ground truth), or the digits for a DTMF turn.
        audio: 8 kHz mu-law, including a little lead-in and tail noise.
        speech_start_ms: first voiced sample within ``audio``.
        speech_end_ms: last voiced sample within ``audio``.
        tags: manifest tags (``barge_in``, ``hesitation``, ``short_answer``...).
        pauses_ms: the pauses inside the turn.
        dtmf: digits to press instead of speaking.
    """

    index: int
    text: str
    audio: bytes = b""
    speech_start_ms: int = 0
    speech_end_ms: int = 0
    tags: tuple[str, ...] = ()
    pauses_ms: tuple[int, ...] = ()
    dtmf: str = ""

    @property
    def barge_in(self) -> bool:
        """Spoken while the bot is still replying."""
        return "barge_in" in self.tags

    @property
    def duration_ms(self) -> int:
        """Length of the turn's audio."""
        return len(self.audio) // _BYTES_PER_MS


@dataclass(frozen=True, slots=True)
class CallScript:
    """A caller's turns plus the background noise played between them."""

    name: str
    description: str
    turns: tuple[CallerTurn, ...]
    filler: bytes  # mu-law line noise, looped while the caller listens

    @classmethod
    def from_fixture(cls, name: str = "demo_call", fixtures_dir: Path | None = None,
                     turns: tuple[int, ...] | None = None) -> CallScript:
        """Cut fixture ``name`` into turns (all, or the ``turns`` indices given).

        Raises:
            FileNotFoundError: no fixtures directory or audio file.
            KeyError: the manifest has no fixture ``name``.
        """
        folder = fixtures_dir or find_fixtures_dir()
        manifest: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
        entry = manifest["fixtures"][name]
        data = (folder / entry["file"]).read_bytes()
        picked = [t for t in entry["turns"] if turns is None or t["index"] in turns]
        out: list[CallerTurn] = []
        for i, t in enumerate(picked):
            start = max(0, t["start_ms"] - _LEAD_MS)
            end = min(len(data) // _BYTES_PER_MS, t["end_ms"] + _TAIL_MS)
            out.append(CallerTurn(
                index=i, text=t["text"],
                audio=data[start * _BYTES_PER_MS:end * _BYTES_PER_MS],
                speech_start_ms=t["start_ms"] - start, speech_end_ms=t["end_ms"] - start,
                tags=tuple(t.get("tags", ())), pauses_ms=tuple(t.get("pauses_ms", ()))))
        return cls(name, entry.get("description", ""), tuple(out), _noise(data, entry))

    def with_dtmf(self, digits: str, at: int | None = None) -> CallScript:
        """A copy with a keypad turn pressing ``digits`` inserted (default: at the end)."""
        turns = list(self.turns)
        position = len(turns) if at is None else at
        turns.insert(position, CallerTurn(index=position, text=digits, dtmf=digits))
        renumbered = tuple(CallerTurn(i, t.text, t.audio, t.speech_start_ms, t.speech_end_ms,
                                      t.tags, t.pauses_ms, t.dtmf) for i, t in enumerate(turns))
        return CallScript(self.name, self.description, renumbered, self.filler)


def _noise(data: bytes, entry: dict[str, Any]) -> bytes:
    """The longest speech-free stretch of the fixture (trimmed away from speech)."""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for t in entry["turns"]:
        spans.append((cursor, t["start_ms"]))
        cursor = t["end_ms"]
    spans.append((cursor, len(data) // _BYTES_PER_MS))
    a, b = max(spans, key=lambda s: s[1] - s[0])
    a, b = a + _TAIL_MS, b - _LEAD_MS
    if b - a < 100:
        return b"\xff" * 160  # mu-law digital silence
    return data[a * _BYTES_PER_MS:b * _BYTES_PER_MS]


def find_fixtures_dir() -> Path:
    """``tests/fixtures`` of the checkout this package runs from (or of the cwd).

    Raises:
        FileNotFoundError: neither has one (the demo call ships in the repository, not in
            the wheel).
    """
    here = Path(__file__).resolve().parents[2]
    for root in (here, Path.cwd()):
        folder = root / "tests" / "fixtures"
        if (folder / "manifest.json").is_file():
            return folder
    raise FileNotFoundError("no tests/fixtures/manifest.json: run the demo from a "
                            "reson8-voice checkout")
