"""The local webrtcvad at whatever rate the pipeline runs (shared by every service)."""

from __future__ import annotations

import numpy as np
import soxr

from ..vad import SAMPLE_RATES, VadEvent, VoiceActivityDetector

__all__ = ["PipelineVad"]


class PipelineVad:
    """A :class:`VoiceActivityDetector` fed pipeline PCM at any rate.

    webrtcvad runs at 8, 16, 32 or 48 kHz; other rates (24 kHz, 44.1 kHz) are resampled to
    16 kHz on the way in. :meth:`process` also returns the audio at the detector's rate, for
    anything that must hear exactly what the detector heard.
    """

    def __init__(self, rate: int, aggressiveness: int, start_ms: int, stop_ms: int) -> None:
        """Build the detector (and a resampler if ``rate`` is not one webrtcvad takes)."""
        vad_rate = rate if rate in SAMPLE_RATES else 16000
        self._resampler = (soxr.ResampleStream(rate, vad_rate, 1, dtype="int16")
                           if vad_rate != rate else None)
        self.detector = VoiceActivityDetector(sample_rate=vad_rate,
                                              aggressiveness=aggressiveness,
                                              start_ms=start_ms, stop_ms=stop_ms)

    @property
    def sample_rate(self) -> int:
        """The rate the detector runs at."""
        return self.detector.sample_rate

    def process(self, audio: bytes) -> tuple[bytes, list[VadEvent]]:
        """Run the detector on pipeline PCM; returns (PCM at the detector's rate, events)."""
        pcm = audio
        if self._resampler is not None:
            samples = np.frombuffer(audio, dtype=np.int16)
            pcm = np.asarray(self._resampler.resample_chunk(samples), np.int16).tobytes()
        return pcm, self.detector.process(pcm)
