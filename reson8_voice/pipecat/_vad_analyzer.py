"""A pipecat ``VADAnalyzer`` on WebRTC's VAD: the local fallback where pipecat takes a VAD.

Pipecat's stock analyzer runs Silero through onnxruntime (~0.1-0.2 ms per 32 ms window);
WebRTC's GMM costs ~3 us per 20 ms frame, which matters when one process serves many phone
calls. Plug it in wherever pipecat accepts a ``vad_analyzer`` (``VADProcessor``,
``LLMUserAggregatorParams``, a transport's params).

WebRTC's decision is binary, so :meth:`WebRTCVADAnalyzer.voice_confidence` returns 1.0 or
0.0 and pipecat's ``VADParams.confidence`` threshold has no effect. Pipecat's own start/stop
hysteresis (``start_secs``/``stop_secs``, counted in our frames) does the smoothing. As in
:class:`reson8_voice.vad.VoiceActivityDetector`, the first voiced frame of a run that starts
at the stream start or right after digital silence is reported as 0.0, because there WebRTC's
untrained noise model can call up to 100 ms of plain noise voiced.
"""

from __future__ import annotations

from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams

from reson8_voice.errors import AudioFormatError
from reson8_voice.vad import (
    DEFAULT_AGGRESSIVENESS,
    DEFAULT_FRAME_MS,
    DEFAULT_STOP_MS,
    VoiceActivityDetector,
)

__all__ = ["WebRTCVADAnalyzer", "phone_vad_params"]


def phone_vad_params() -> VADParams:
    """Default ``VADParams`` for WebRTC's VAD on telephone audio.

    * ``start_secs`` 0.1: one voiced frame plus WebRTC's hangover is an 80 ms voiced run
      (clicks, the detector's start-up), so 100 ms is the shortest start that ignores them.
      (:class:`~reson8_voice.vad.VoiceActivityDetector` starts at 80 ms because its
      onset gate breaks such runs; pipecat's hysteresis has no such gate.)
    * ``stop_secs`` 0.2: pipecat's default; WebRTC's ~100 ms hangover comes on top.
    * ``min_volume`` 0.0: pipecat's 0.6 (about -50 LUFS over a 400 ms window, smoothed)
      rejects quiet 8 kHz PCMU callers outright and delays every onset until the rolling
      loudness catches up, while WebRTC's VAD already has its own energy floor. Raise it
      only to ignore faint background talkers.
    """
    return VADParams(
        start_secs=0.1,
        stop_secs=DEFAULT_STOP_MS / 1000,
        min_volume=0.0,
    )


class WebRTCVADAnalyzer(VADAnalyzer):
    """Pipecat ``VADAnalyzer`` backed by :class:`reson8_voice.vad.VoiceActivityDetector`.

    Example::

        vad = VADProcessor(vad_analyzer=WebRTCVADAnalyzer())
    """

    def __init__(
        self,
        *,
        sample_rate: int | None = None,
        params: VADParams | None = None,
        aggressiveness: int = DEFAULT_AGGRESSIVENESS,
        frame_ms: int = DEFAULT_FRAME_MS,
    ) -> None:
        """Create the analyzer.

        Args:
            sample_rate: Fixed input rate (8/16/32/48 kHz); ``None`` takes the pipeline's.
            params: Pipecat VAD parameters; default :func:`phone_vad_params`.
            aggressiveness: WebRTC VAD mode 0-3 (see :mod:`reson8_voice.vad`).
            frame_ms: Analysis frame, 10, 20 or 30 ms.

        Raises:
            AudioFormatError: unsupported ``sample_rate`` or ``frame_ms``.
            InvalidRequest: ``aggressiveness`` out of range.
        """
        # Validate everything now, not when the pipeline starts.
        VoiceActivityDetector(
            sample_rate=sample_rate or 8000, frame_ms=frame_ms, aggressiveness=aggressiveness
        )
        super().__init__(sample_rate=sample_rate, params=params or phone_vad_params())
        self._aggressiveness = aggressiveness
        self._frame_ms = frame_ms
        self._detector: VoiceActivityDetector | None = None
        self._silent_frame = b""
        self._previous: bytes | None = None  # the last frame analysed; None at stream start
        self._previous_voiced = False

    @property
    def aggressiveness(self) -> int:
        """WebRTC VAD mode, 0-3."""
        return self._aggressiveness

    def set_sample_rate(self, sample_rate: int) -> None:
        """Set the input rate (pipecat calls this at pipeline start) and reset the detector.

        Raises:
            AudioFormatError: the rate is not 8000, 16000, 32000 or 48000 Hz; resample first.
        """
        rate = self._init_sample_rate or sample_rate
        self._detector = VoiceActivityDetector(
            sample_rate=rate, frame_ms=self._frame_ms, aggressiveness=self._aggressiveness
        )
        self._silent_frame = bytes(self._detector.frame_bytes)
        self._previous = None
        self._previous_voiced = False
        super().set_sample_rate(sample_rate)

    def num_frames_required(self) -> int:
        """Samples per analysis frame: ``frame_ms`` at the current rate (160 at 8 kHz)."""
        return self.sample_rate * self._frame_ms // 1000

    def voice_confidence(self, buffer: bytes) -> float:
        """1.0 if WebRTC's VAD calls the frame speech, else 0.0.

        Raises:
            AudioFormatError: called before :meth:`set_sample_rate`, or with a buffer that is
                not exactly one frame (pipecat always passes one).
        """
        detector = self._detector
        if detector is None:
            raise AudioFormatError("set_sample_rate() must be called before analysing audio")
        voiced = detector.is_speech(buffer)
        previous, self._previous = self._previous, buffer
        started = voiced and not self._previous_voiced
        self._previous_voiced = voiced
        if started and (previous is None or previous == self._silent_frame):
            return 0.0
        return 1.0 if voiced else 0.0
