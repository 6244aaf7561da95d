"""The engine's models bundled for a server: one recogniser and one end-of-turn model.

:meth:`LocalModels.run` executes a :class:`~reson8_voice.engine.turn_engine.Job` (it is
what the server calls in its thread pool): the job's audio is brought to 16 kHz float32,
the model the job needs is run, and the result handed back to the engine. The models are
shared by all sessions; see :mod:`reson8_voice.engine.asr` for thread safety.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import soxr

from .asr import Recognizer, pcm16_to_float32
from .eot import EndOfTurnModel
from .turn_engine import EndOfTurnJob, Job, RecognizeJob

__all__ = ["LocalModels", "to_float16k"]


def to_float16k(pcm16: bytes, sample_rate: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Mono s16le at ``sample_rate`` -> float32 in [-1, 1) at 16 kHz (what the models take).

    Raises:
        AudioFormatError: an odd byte count.
    """
    audio = pcm16_to_float32(pcm16)
    if sample_rate != 16000 and audio.size:
        audio = np.asarray(soxr.resample(audio, sample_rate, 16000), dtype=np.float32)
    return audio


@dataclass
class LocalModels:
    """A recogniser and an end-of-turn model, run on behalf of engine jobs."""

    recognizer: Recognizer
    end_of_turn: EndOfTurnModel

    @classmethod
    def load(cls, asr_model: str | None = None, *, workers: int = 1) -> LocalModels:
        """Load Whisper (the bundled tiny.en, or ``asr_model``) and smart-turn v3, offline.

        ``workers``: Whisper replicas (CTranslate2 ``num_workers``, one copy of the
        weights): up to this many recognitions run at once. Give it the size of the
        server's inference pool (``ServerConfig.workers``); with one replica, concurrent
        recognitions queue inside CTranslate2 whatever the pool size.

        Raises:
            ImportError: the ``local`` extra is not installed (the message says so).
        """
        from .asr import WhisperRecognizer
        from .eot import SmartTurnModel

        return cls(WhisperRecognizer(asr_model, num_workers=workers), SmartTurnModel())

    @property
    def languages(self) -> frozenset[str]:
        """Language codes the recogniser accepts (the server refuses others at the upgrade)."""
        return self.recognizer.languages

    def run(self, job: Job) -> Any:
        """Run one engine job; returns what :meth:`TurnEngine.resolve` expects."""
        audio = to_float16k(job.pcm16, job.sample_rate)
        if isinstance(job, RecognizeJob):
            return self.recognizer.transcribe(audio, language=job.language,
                                              word_timestamps=job.want_words)
        if isinstance(job, EndOfTurnJob):
            return float(self.end_of_turn.predict(audio))
        raise TypeError(f"unknown job {job!r}")
