"""Shared fixtures: a scripted job runner for the embedded server, and servers on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from reson8_voice.engine.turn_engine import EndOfTurnJob, Job, RecognizeJob
from reson8_voice.server import Reson8Server, ServerConfig


@dataclass(frozen=True)
class _Word:
    text: str
    start_ms: float
    duration_ms: float
    confidence: float | None = 0.9


@dataclass(frozen=True)
class _Recognition:
    text: str
    language: str | None = "en"
    words: tuple[_Word, ...] = field(default=())


def scripted_runner(eot: float = 0.0) -> Callable[[Job], Any]:
    """Recognition = one word per 250 ms of audio ("w1 w2 ..."); end of turn = ``eot``."""

    def run(job: Job) -> Any:
        if isinstance(job, EndOfTurnJob):
            return eot
        assert isinstance(job, RecognizeJob)
        ms = len(job.pcm16) / 2 / job.sample_rate * 1000
        n = max(1, int(ms // 250))
        words = tuple(_Word(f"w{i}", i * 250.0, 200.0) for i in range(n))
        return _Recognition(" ".join(w.text for w in words), "en", words)

    return run



@pytest.fixture
async def scripted_server() -> AsyncIterator[Reson8Server]:
    """The embedded server with real VAD and scripted recognition (turns end on silence)."""
    async with Reson8Server(ServerConfig(port=0), scripted_runner()) as srv:
        yield srv
