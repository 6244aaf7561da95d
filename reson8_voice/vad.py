"""Local voice activity detection on WebRTC's VAD, with start/stop hysteresis.

This is the fallback that keeps barge-in working when the Reson8 turns endpoint (spec file
001) is unreachable or slow: it needs no model, no network and about 3 us of CPU per 20 ms
frame. It is sans-I/O: feed bytes of any length to :meth:`VoiceActivityDetector.process` and
act on the :class:`SpeechStarted` / :class:`SpeechStopped` events it returns.

Input may be PCM s16le or G.711 (``mulaw``/``alaw``), the encodings the turns endpoint
accepts, so 8 kHz telephony audio can be checked without a separate decode step.

WebRTC's VAD already smooths its decisions: after a voiced frame it keeps answering "voiced"
for a few more frames (its *hangover*: 60 ms after a short voiced run and 100 ms after a long
one, at aggressiveness 2-3 with 20 ms frames). So a single voiced frame -- a click, a tap, or
the detector's own start-up while its noise model adapts -- shows up as an 80 ms voiced run.
Two rules keep those from starting speech. An *onset gate*: while speech has not started, a
voiced frame in the first 120 ms of a run counts only if it is ``onset_snr_db`` (6 dB) above
the line's noise floor (the lower envelope of frame levels: it falls to any quieter frame at
once and rises 20 dB/s). The hangover after a click is line noise again, at the floor, so it
breaks the run; speech onsets on a phone line stand well above it. And ``start_ms`` (80 ms,
four frames) must be voiced in a row. Where the model is untrained -- in the stream's first
100 ms and right after digital silence -- plain noise can even pass for 100 ms of voice, so a
voiced run starting there must last 120 ms. ``SpeechStopped.at_ms`` (the end of the last
voiced frame) includes the hangover.

Known limit of WebRTC's VAD: its noise model adapts over seconds, so a sudden, lasting rise
of the noise floor by 20 dB or more reads as speech until it has adapted (3-5 s).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Final, Literal, TypeAlias

import webrtcvad

from reson8_voice import g711
from reson8_voice.errors import AudioFormatError, InvalidRequest

__all__ = [
    "DEFAULT_AGGRESSIVENESS",
    "DEFAULT_FRAME_MS",
    "DEFAULT_START_MS",
    "DEFAULT_STOP_MS",
    "DEFAULT_ONSET_SNR_DB",
    "FRAME_MS",
    "SAMPLE_RATES",
    "SpeechStarted",
    "SpeechStopped",
    "VadEncoding",
    "VadEvent",
    "VoiceActivityDetector",
]

#: Sample rates WebRTC's VAD accepts (Hz).
SAMPLE_RATES: Final[tuple[int, ...]] = (8000, 16000, 32000, 48000)
#: Frame durations WebRTC's VAD accepts (ms).
FRAME_MS: Final[tuple[int, ...]] = (10, 20, 30)
#: Input encodings, spelled as the turns endpoint's ``encoding`` parameter (spec file 001).
VadEncoding: TypeAlias = Literal["pcm_s16le", "mulaw", "alaw"]
_ENCODINGS: Final[tuple[str, ...]] = ("pcm_s16le", "mulaw", "alaw")

#: 2 ("aggressive") rejects line noise at phone levels without chopping speech; 3 splits
#: words apart at 8 kHz and 0-1 take a noise floor for speech.
DEFAULT_AGGRESSIVENESS: Final = 2
DEFAULT_FRAME_MS: Final = 20
#: Four voiced frames; with the onset gate, a click plus WebRTC's hangover never gets there,
#: and barge-in fires ~80 ms after onset.
DEFAULT_START_MS: Final = 80
#: How far (dB) above the noise floor a voiced frame must be to count toward a start: a
#: click's hangover frames sit at the floor (within ~3 dB), speech onsets well above it.
DEFAULT_ONSET_SNR_DB: Final = 6.0
#: Pauses between words stay inside speech; WebRTC's own 100 ms hangover comes on top.
DEFAULT_STOP_MS: Final = 200


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech began.

    Attributes:
        at_ms: Stream time (ms since the detector was created or reset) at which the voiced
            run that confirmed speech began: the event is backdated by ``start_ms``.
    """

    at_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """Speech ended.

    Attributes:
        at_ms: Stream time (ms) at the end of the last voiced frame, which includes WebRTC's
            hangover; the event itself is emitted ``stop_ms`` later.
    """

    at_ms: int


VadEvent: TypeAlias = SpeechStarted | SpeechStopped

_rms: Final = g711.pcm16_rms
#: The noise floor tracker: the lower envelope of frame RMS outside speech, taken from the
#: first frame, falling at once to a quieter frame, rising this fast (dB per second).
_FLOOR_START: Final = float("inf")
_FLOOR_RISE_DB_PER_S: Final = 20.0
#: How long plain noise may read as voiced where WebRTC's noise model is untrained.
_UNTRAINED_MS: Final = 100
_Decide: TypeAlias = Callable[[g711.BytesLike, int], bool]


def _frame_decider(vad: webrtcvad.Vad, sample_rate: int) -> _Decide:
    """Return ``decide(pcm_frame, num_samples) -> bool`` for ``vad`` at ``sample_rate``.

    ``webrtcvad.Vad.is_speech`` is a Python layer over the C extension ``_webrtcvad`` (same
    wheel) that recomputes the length and re-checks it; calling the extension directly saves
    ~0.4 us of a ~3 us frame. Falls back to the public method if the layout ever changes.
    """
    handle = getattr(vad, "_vad", None)
    try:
        native = importlib.import_module("_webrtcvad").process
    except (ImportError, AttributeError):  # pragma: no cover - other webrtcvad builds
        native = None
    if handle is None or native is None:  # pragma: no cover - other webrtcvad builds
        return lambda frame, _n: bool(vad.is_speech(frame, sample_rate))
    decide: _Decide = partial(native, handle, sample_rate)
    return decide


class VoiceActivityDetector:
    """Streaming speech start/stop detection on WebRTC's VAD.

    Sans-I/O and not thread-safe: one instance per audio stream. Stream time starts at 0
    on construction and on :meth:`reset`, and advances by ``frame_ms`` per whole frame fed.

    Speech starts once ``start_ms`` of consecutive frames are voiced (``SpeechStarted`` is
    backdated to the run's first frame) and stops once ``stop_ms`` of consecutive frames are
    unvoiced (``SpeechStopped`` carries the end of the last voiced frame).

    Example::

        vad = VoiceActivityDetector(sample_rate=8000, encoding="mulaw")
        for event in vad.process(chunk):  # any length; partial frames are kept
            if isinstance(event, SpeechStarted):
                interrupt_the_bot()
    """

    __slots__ = (
        "_aggressiveness",
        "_buffer",
        "_decide",
        "_decode",
        "_encoding",
        "_floor",
        "_floor_rise",
        "_frame_bytes",
        "_frame_ms",
        "_frames",
        "_gate_frames",
        "_last_voiced_end",
        "_onset_ratio",
        "_pcm_frame_bytes",
        "_previous",
        "_run_needed",
        "_run_start",
        "_sample_rate",
        "_samples",
        "_silent_frame",
        "_speaking",
        "_start_frames",
        "_start_ms",
        "_stop_frames",
        "_stop_ms",
        "_untrained_needed",
        "_unvoiced_run",
        "_vad",
        "_voiced_run",
    )

    def __init__(
        self,
        sample_rate: int = 8000,
        frame_ms: int = DEFAULT_FRAME_MS,
        aggressiveness: int = DEFAULT_AGGRESSIVENESS,
        start_ms: int = DEFAULT_START_MS,
        stop_ms: int = DEFAULT_STOP_MS,
        encoding: VadEncoding = "pcm_s16le",
        onset_snr_db: float | None = DEFAULT_ONSET_SNR_DB,
    ) -> None:
        """Create a detector.

        Args:
            sample_rate: 8000, 16000, 32000 or 48000 Hz (what WebRTC's VAD supports).
            frame_ms: Analysis frame, 10, 20 or 30 ms. 20 ms matches telephony packets.
            aggressiveness: 0 (least) to 3 (most eager to call audio non-speech).
            start_ms: Voiced audio needed to start speech; rounded up to whole frames.
            stop_ms: Unvoiced audio needed to stop speech; rounded up to whole frames.
            encoding: ``"pcm_s16le"``, ``"mulaw"`` or ``"alaw"``, as fed to :meth:`process`.
            onset_snr_db: before speech starts, a voiced frame less than this far above the
                noise floor counts as unvoiced (click rejection); ``None`` turns it off.

        Raises:
            AudioFormatError: unsupported ``sample_rate``, ``frame_ms`` or ``encoding``.
            InvalidRequest: ``aggressiveness``, ``start_ms`` or ``stop_ms`` out of range.
        """
        if sample_rate not in SAMPLE_RATES:
            raise AudioFormatError(
                f"VAD sample rate must be one of {', '.join(map(str, SAMPLE_RATES))} Hz "
                f"(WebRTC VAD), got {sample_rate!r}; resample first"
            )
        if frame_ms not in FRAME_MS:
            raise AudioFormatError(
                f"VAD frame length must be 10, 20 or 30 ms (WebRTC VAD), got {frame_ms!r} ms"
            )
        if encoding not in _ENCODINGS:
            raise AudioFormatError(
                f"VAD input encoding must be one of {', '.join(_ENCODINGS)}, got {encoding!r}"
            )
        if type(aggressiveness) is not int or not 0 <= aggressiveness <= 3:
            raise InvalidRequest("aggressiveness", f"must be 0, 1, 2 or 3, got {aggressiveness!r}")
        for name, value in (("start_ms", start_ms), ("stop_ms", stop_ms)):
            if type(value) is not int or value <= 0:
                raise InvalidRequest(name, f"must be a positive number of ms, got {value!r}")

        self._sample_rate = sample_rate
        self._frame_ms = frame_ms
        self._aggressiveness = aggressiveness
        if onset_snr_db is not None and not 0 < onset_snr_db <= 60:
            raise InvalidRequest("onset_snr_db", f"must be in (0, 60] dB, got {onset_snr_db!r}")
        self._start_ms = start_ms
        self._stop_ms = stop_ms
        # compared as RMS ratios: a frame counts when rms >= floor * ratio
        self._onset_ratio = 0.0 if onset_snr_db is None else 10.0 ** (onset_snr_db / 20.0)
        self._floor_rise = 10.0 ** (_FLOOR_RISE_DB_PER_S * frame_ms / 1000 / 20)
        self._encoding: VadEncoding = encoding
        self._samples = sample_rate * frame_ms // 1000
        self._pcm_frame_bytes = 2 * self._samples
        self._frame_bytes = self._pcm_frame_bytes if encoding == "pcm_s16le" else self._samples
        self._decode: Callable[[g711.BytesLike], bytes] | None = (
            None if encoding == "pcm_s16le" else g711.ulaw_decode if encoding == "mulaw"
            else g711.alaw_decode
        )
        self._silent_frame = bytes(self._pcm_frame_bytes)
        self._start_frames = max(1, math.ceil(start_ms / frame_ms))
        # the onset gate watches a run as long as untrained noise could pass for voice
        self._gate_frames = math.ceil(_UNTRAINED_MS / frame_ms) + 1
        self._untrained_needed = max(self._gate_frames, self._start_frames + 1)
        self._stop_frames = max(1, math.ceil(stop_ms / frame_ms))
        self._vad = webrtcvad.Vad(aggressiveness)
        self._decide = _frame_decider(self._vad, sample_rate)
        self._buffer = bytearray()
        self._frames = 0
        self._speaking = False
        self._voiced_run = 0
        self._unvoiced_run = 0
        self._run_start = 0
        self._run_needed = self._start_frames
        self._floor = _FLOOR_START
        self._last_voiced_end = 0
        self._previous: g711.BytesLike | None = None  # last PCM chunk analysed; None at start

    # -- configuration ------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        """Sample rate of the input, Hz."""
        return self._sample_rate

    @property
    def frame_ms(self) -> int:
        """Analysis frame length, ms."""
        return self._frame_ms

    @property
    def frame_bytes(self) -> int:
        """Bytes of one analysis frame in the input encoding (what :meth:`is_speech` takes)."""
        return self._frame_bytes

    @property
    def encoding(self) -> VadEncoding:
        """Encoding of the input bytes."""
        return self._encoding

    @property
    def aggressiveness(self) -> int:
        """WebRTC VAD mode, 0-3."""
        return self._aggressiveness

    @property
    def start_ms(self) -> int:
        """Voiced audio needed to start speech, ms, as whole frames."""
        return self._start_frames * self._frame_ms

    @property
    def stop_ms(self) -> int:
        """Unvoiced audio needed to stop speech, ms, as whole frames."""
        return self._stop_frames * self._frame_ms

    # -- state --------------------------------------------------------------------------

    @property
    def speaking(self) -> bool:
        """Whether speech has started and not yet stopped."""
        return self._speaking

    @property
    def stream_ms(self) -> int:
        """Stream time analysed so far (whole frames), ms."""
        return self._frames * self._frame_ms

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an incomplete frame waiting for the next :meth:`process` call."""
        return len(self._buffer)

    # -- processing ---------------------------------------------------------------------

    def is_speech(self, frame: g711.BytesLike) -> bool:
        """Return WebRTC's raw decision for exactly one frame in the input encoding.

        No hysteresis and no stream clock; it does feed the same WebRTC instance (its noise
        model and hangover) as :meth:`process`, so use a separate detector for side checks.

        Raises:
            AudioFormatError: ``frame`` is not exactly :attr:`frame_bytes` long.
        """
        if len(frame) != self._frame_bytes:
            raise AudioFormatError(
                f"a {self._frame_ms} ms {self._encoding} frame at {self._sample_rate} Hz is "
                f"{self._frame_bytes} bytes, got {len(frame)}"
            )
        if self._decode is not None:
            return self._decide(self._decode(frame), self._samples)
        return self._decide(frame, self._samples)

    def process(self, audio: g711.BytesLike) -> list[VadEvent]:
        """Feed audio of any length; return the speech events it completes, oldest first.

        Bytes short of a whole frame are kept for the next call, so a frame split across
        network chunks (or a PCM sample split across them) is analysed exactly once.
        """
        buffer = self._buffer
        size = self._frame_bytes
        chunk: g711.BytesLike
        if buffer:
            buffer += audio
            usable = len(buffer) - len(buffer) % size
            if not usable:
                return []
            chunk = bytes(buffer[:usable])
            del buffer[:usable]
        else:
            usable = len(audio) - len(audio) % size
            if usable != len(audio):
                buffer += audio[usable:]
                if not usable:
                    return []
                chunk = audio[:usable]
            else:
                chunk = audio
        pcm = self._decode(chunk) if self._decode is not None else chunk
        return self._run(pcm, usable // size)

    def _run(self, pcm: g711.BytesLike, count: int) -> list[VadEvent]:
        events: list[VadEvent] = []
        decide = self._decide
        samples = self._samples
        step = self._pcm_frame_bytes
        frame_index = self._frames
        source = pcm
        if count > 1:
            pcm = memoryview(pcm)  # slices below without copying
        ratio = self._onset_ratio
        for offset in range(0, count * step, step):
            frame = pcm[offset : offset + step] if count > 1 else pcm
            if decide(frame, samples):
                if self._speaking:
                    self._unvoiced_run = 0
                    self._last_voiced_end = frame_index + 1
                    frame_index += 1
                    continue
                if ratio and self._voiced_run < self._gate_frames:
                    # the onset gate: early in a run, a frame at the noise floor (a click's
                    # hangover) is not voice
                    level = self._track_floor(frame)
                    if level < self._floor * ratio:
                        self._voiced_run = 0
                        frame_index += 1
                        continue
                if self._voiced_run == 0:
                    self._run_start = frame_index
                    self._run_needed = self._untrained_frames(pcm, offset, frame_index)
                self._voiced_run += 1
                if self._voiced_run >= self._run_needed:
                    self._speaking = True
                    self._voiced_run = 0
                    self._unvoiced_run = 0
                    self._last_voiced_end = frame_index + 1
                    events.append(SpeechStarted(self._run_start * self._frame_ms))
            elif self._speaking:
                if ratio:
                    self._track_floor(frame)
                self._unvoiced_run += 1
                if self._unvoiced_run >= self._stop_frames:
                    self._speaking = False
                    self._unvoiced_run = 0
                    events.append(SpeechStopped(self._last_voiced_end * self._frame_ms))
            else:
                self._voiced_run = 0
                if ratio:
                    self._track_floor(frame)
            frame_index += 1
        self._frames = frame_index
        # For _untrained_frames at the next chunk's first frame: kept as is when immutable,
        # else the last frame is copied (the caller may reuse a bytearray).
        self._previous = source if type(source) is bytes else bytes(source[-step:])
        return events

    def _track_floor(self, frame: g711.BytesLike) -> float:
        """Update the noise floor with one frame outside speech; return the frame's RMS."""
        level = float(_rms(frame))
        self._floor = level if level < self._floor else self._floor * self._floor_rise
        return level

    def _untrained_frames(self, pcm: g711.BytesLike, offset: int, frame_index: int) -> int:
        """Frames a voiced run must last when it starts where WebRTC's model is untrained.

        WebRTC's noise model does not train on digital silence, so the first noise after it
        (or in the stream's first 100 ms) can be called voiced for up to 100 ms: a run that
        starts there must outlast that by a frame. Elsewhere ``start_ms`` applies. Only
        evaluated when a voiced run starts, so the per-frame cost is nil.
        """
        untrained = self._untrained_needed
        if frame_index * self._frame_ms < _UNTRAINED_MS:
            return untrained
        step = self._pcm_frame_bytes
        if offset:
            before = pcm[offset - step : offset]
        elif self._previous is None:
            return untrained
        else:
            before = self._previous[len(self._previous) - step :]
        return untrained if before == self._silent_frame else self._start_frames

    def flush(self) -> list[VadEvent]:
        """End the stream: close an open speech segment and drop any partial frame.

        Returns ``[SpeechStopped]`` if speech was in progress (at the end of its last voiced
        frame), else ``[]``. The stream clock and WebRTC's state carry on; use :meth:`reset`
        to start a new stream.
        """
        self._buffer.clear()
        self._voiced_run = 0
        self._unvoiced_run = 0
        if not self._speaking:
            return []
        self._speaking = False
        return [SpeechStopped(self._last_voiced_end * self._frame_ms)]

    def reset(self) -> None:
        """Forget everything: stream clock back to 0, fresh WebRTC state, no buffered bytes."""
        self._vad = webrtcvad.Vad(self._aggressiveness)
        self._decide = _frame_decider(self._vad, self._sample_rate)
        self._buffer.clear()
        self._frames = 0
        self._speaking = False
        self._voiced_run = 0
        self._unvoiced_run = 0
        self._run_start = 0
        self._run_needed = self._start_frames
        self._floor = _FLOOR_START
        self._last_voiced_end = 0
        self._previous = None

    def __repr__(self) -> str:
        return (
            f"VoiceActivityDetector(sample_rate={self._sample_rate}, frame_ms={self._frame_ms}, "
            f"aggressiveness={self._aggressiveness}, start_ms={self.start_ms}, "
            f"stop_ms={self.stop_ms}, encoding={self._encoding!r}, speaking={self._speaking})"
        )
