"""An offline pipecat TTS on eSpeak NG, loaded from the ``espeakng-loader`` wheel by ctypes.

The demo and the agents need a voice that installs from PyPI alone and runs without a
network or model download: ``espeakng-loader`` bundles ``libespeak-ng`` and its data. The
voice is robotic, but it is real speech with real durations, which is what turn-taking
needs (the bot must talk long enough to be interrupted). Synthesis runs in a thread under a
process-wide lock: eSpeak NG keeps global state.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import numpy as np
import soxr
from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService

__all__ = ["EspeakSynthesizer", "EspeakTTSService", "espeak_available"]

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE, _ESPEAK_PITCH = 1, 3
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)
_CHUNK_S = 0.1


def espeak_available() -> bool:
    """Whether the ``espeakng-loader`` package (the ``agents`` extra) is installed."""
    try:
        import espeakng_loader  # noqa: F401
    except ImportError:
        return False
    return True


class EspeakSynthesizer:
    """Text -> 16-bit mono PCM with libespeak-ng. One per process (see :meth:`shared`)."""

    _shared: EspeakSynthesizer | None = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        """Load the bundled library and data.

        Raises:
            ImportError: ``espeakng-loader`` is missing (install ``reson8-voice[agents]``).
            OSError: the library could not be loaded or initialised.
        """
        try:
            import espeakng_loader
        except ImportError as exc:
            raise ImportError("the offline TTS needs espeakng-loader: "
                              "pip install 'reson8-voice[agents]'") from exc
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                          ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint,
                                     ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                     ctypes.c_void_p, ctypes.c_void_p]
        data_parent = str(Path(espeakng_loader.get_data_path()).parent).encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent, 0)
        if rate <= 0:
            raise OSError("espeak-ng failed to initialise")
        self.sample_rate: int = rate
        self._lib = lib
        self._chunks: list[bytes] = []
        self._callback = _CALLBACK(self._on_audio)  # kept alive: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()

    @classmethod
    def shared(cls) -> EspeakSynthesizer:
        """The process-wide synthesizer (eSpeak NG cannot have two)."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def _on_audio(self, wav: Any, samples: int, events: Any) -> int:
        if samples > 0 and wav:
            self._chunks.append(ctypes.string_at(wav, samples * 2))
        return 0

    def synthesize(self, text: str, voice: str = "en-us", rate_wpm: int = 175,
                   pitch: int = 50) -> bytes:
        """Speak ``text``; returns s16le mono PCM at :attr:`sample_rate`.

        Raises:
            ValueError: the voice is unknown to eSpeak NG.
        """
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"unknown espeak-ng voice {voice!r}")
            self._lib.espeak_SetParameter(_ESPEAK_RATE, rate_wpm, 0)
            self._lib.espeak_SetParameter(_ESPEAK_PITCH, pitch, 0)
            self._chunks = []
            data = text.encode("utf-8")
            self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0,
                                   _ESPEAK_CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
            pcm, self._chunks = b"".join(self._chunks), []
            return pcm


class EspeakTTSService(TTSService):
    """pipecat TTS on the bundled eSpeak NG: offline, instant, no model download.

    Example::

        tts = EspeakTTSService(voice="en-us", rate_wpm=170)
    """

    def __init__(self, *, voice: str = "en-us", rate_wpm: int = 175, pitch: int = 50,
                 **kwargs: Any) -> None:
        """Create the service; the library loads on first use.

        Args:
            voice: an eSpeak NG voice name (``en-us``, ``en-gb``, ``de``, ...).
            rate_wpm: speaking rate in words per minute.
            pitch: base pitch, 0-100.
            **kwargs: passed to pipecat's ``TTSService``.
        """
        super().__init__(push_start_frame=True, push_stop_frames=True,
                         settings=TTSSettings(model=None, voice=voice, language=None),
                         **kwargs)
        self._voice = voice
        self._rate_wpm = rate_wpm
        self._pitch = pitch

    def can_generate_metrics(self) -> bool:
        """TTFB and usage metrics are reported."""
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Synthesize ``text`` in a thread and yield it in 100 ms audio frames."""
        await self.start_tts_usage_metrics(text)
        try:
            engine = await asyncio.to_thread(EspeakSynthesizer.shared)
            pcm = await asyncio.to_thread(engine.synthesize, text, self._voice,
                                          self._rate_wpm, self._pitch)
        except (ImportError, OSError, ValueError) as exc:
            yield ErrorFrame(error=f"espeak-ng TTS failed: {exc}")
            return
        await self.stop_ttfb_metrics()
        rate = self.sample_rate
        if engine.sample_rate != rate and pcm:
            samples = np.frombuffer(pcm, dtype="<i2")
            pcm = np.asarray(soxr.resample(samples, engine.sample_rate, rate),
                             dtype="<i2").tobytes()
        step = max(2, int(rate * _CHUNK_S) * 2)
        for start in range(0, len(pcm), step):
            yield TTSAudioRawFrame(pcm[start:start + step], rate, 1, context_id=context_id)
