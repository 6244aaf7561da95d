"""A pipecat transport over audio files: the microphone is a file, the speaker a WAV.

It stands in for ``LocalAudioTransport`` where there is no sound card (tests, CI, servers):
the input plays the file in real time (or ``speed`` times faster) followed by silence,
the output "plays" bot audio on the same clock and keeps it, so the turn-taking sees the
same timing as with a microphone and a speaker.
"""

from __future__ import annotations

import asyncio
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import soxr
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    InputAudioRawFrame,
    OutputAudioRawFrame,
    StartFrame,
)
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

from reson8_voice import g711
from reson8_voice.demo.transcribe import read_audio_file

__all__ = ["FileAudioInput", "FileAudioOutput", "FileAudioTransport", "load_pcm"]

_CHUNK_S = 0.02


def load_pcm(path: Path, sample_rate: int) -> bytes:
    """A WAV or raw G.711/PCM file as mono s16le at ``sample_rate``."""
    audio = read_audio_file(path)
    data = audio.data
    if audio.encoding in ("mulaw", "alaw"):
        data = g711.decode("mulaw" if audio.encoding == "mulaw" else "alaw", data)
    samples = np.frombuffer(data, dtype="<i2")
    if audio.channels > 1:
        samples = samples.reshape(-1, audio.channels).mean(axis=1).astype(np.int16)
    if audio.sample_rate != sample_rate:
        samples = np.asarray(soxr.resample(samples, audio.sample_rate, sample_rate),
                             dtype=np.int16)
    return samples.astype("<i2").tobytes()


class FileAudioInput(BaseInputTransport):
    """Plays ``path`` into the pipeline as microphone audio, then ``tail_s`` of silence."""

    def __init__(self, path: Path, params: TransportParams, *, speed: float = 1.0,
                 tail_s: float = 3.0, **kwargs: Any) -> None:
        """Create the input; it starts playing when the pipeline starts."""
        super().__init__(params, **kwargs)
        self._path = path
        self._speed = speed
        self._tail_s = tail_s
        self._task: asyncio.Task[None] | None = None
        #: set once the whole file (and the tail) has been played
        self.done = asyncio.Event()

    async def start(self, frame: StartFrame) -> None:
        """Start playing the file."""
        await super().start(frame)
        await self.set_transport_ready(frame)
        if self._task is None:
            self._task = self.create_task(self._play(), "file-audio-input")

    async def stop(self, frame: EndFrame) -> None:
        """Stop playing."""
        await self._halt()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        """Stop playing at once."""
        await self._halt()
        await super().cancel(frame)

    async def _halt(self) -> None:
        if self._task is not None:
            await self.cancel_task(self._task)
            self._task = None

    async def _play(self) -> None:
        rate = self.sample_rate
        pcm = load_pcm(self._path, rate) + b"\x00\x00" * int(self._tail_s * rate)
        step = int(rate * _CHUNK_S) * 2
        t0 = time.monotonic()
        for i, start in enumerate(range(0, len(pcm), step)):
            await self.push_audio_frame(InputAudioRawFrame(pcm[start:start + step], rate, 1))
            due = t0 + (i + 1) * _CHUNK_S / self._speed
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        self.done.set()


class FileAudioOutput(BaseOutputTransport):
    """Plays bot audio on the wall clock (``speed`` times faster) into memory or a WAV."""

    def __init__(self, params: TransportParams, *, path: Path | None = None,
                 speed: float = 1.0, **kwargs: Any) -> None:
        """Create the output; with ``path``, the audio is written there at the end."""
        super().__init__(params, **kwargs)
        self._path = path
        self._speed = speed
        self._play_until = 0.0
        self.audio = bytearray()
        #: monotonic time the last bot audio finished playing
        self.last_played = 0.0

    async def start(self, frame: StartFrame) -> None:
        """Ready to play."""
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        """Keep the audio and wait as long as it would take to play."""
        self.audio += frame.audio
        now = time.monotonic()
        self._play_until = max(self._play_until, now) + len(frame.audio) / 2 / frame.sample_rate \
            / self._speed
        self.last_played = self._play_until
        await asyncio.sleep(max(0.0, self._play_until - now - 0.005))
        return True

    def save(self) -> Path | None:
        """Write what the bot said to the WAV ``path`` (if one was given)."""
        if self._path is None:
            return None
        with wave.open(str(self._path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(self.sample_rate)
            out.writeframes(bytes(self.audio))
        return self._path


class FileAudioTransport(BaseTransport):
    """Input from an audio file, output to memory (and optionally a WAV file)."""

    def __init__(self, path: Path, params: TransportParams, *, out_path: Path | None = None,
                 speed: float = 1.0, tail_s: float = 3.0) -> None:
        """Play ``path`` as the microphone; record the bot to ``out_path``."""
        super().__init__()
        self._input = FileAudioInput(path, params, speed=speed, tail_s=tail_s)
        self._output = FileAudioOutput(params, path=out_path, speed=speed)

    def input(self) -> FileAudioInput:
        """The microphone side."""
        return self._input

    def output(self) -> FileAudioOutput:
        """The speaker side."""
        return self._output
