"""Client audio to engine audio: decode, downmix, resample. Sans-I/O.

The server accepts what spec 001 lists: ``pcm_s16le``, ``mulaw`` and ``alaw`` at the given
``sample_rate`` and ``channels``, and ``auto``, which reads a container header (spec 003).
WAV is parsed here, including the indefinite-length streaming WAV the guide describes (a
data size of 0xFFFFFFFF or 0: read until the stream ends). OGG, FLAC and WebM are
recognised by their magic bytes and decoded as they stream in by PyAV
(:mod:`.container`), or refused with a clear message where PyAV is not installed. Raw
audio with ``encoding=auto`` is refused with a clear error rather than transcribed as
noise.

Where the container says how long the stream is (a WAV data size, a FLAC STREAMINFO
sample count), :attr:`AudioInput.ended` turns true once it has all been received and
:meth:`AudioInput.finish` hands out the decoder's and resampler's tail: the session ends
the engine's stream there, so the last turn ends even without trailing silence.

Output is mono s16le at 8 kHz (8 kHz input: the VAD's native rate, no resampling) or
16 kHz (everything else, resampled with soxr). Frames may split samples anywhere: bytes
are carried over to the next message.
"""

from __future__ import annotations

import struct

import numpy as np
import soxr

from .. import g711
from ..errors import AudioFormatError
from ..params import TurnsParams
from .container import ContainerDecoder, FlacDecoder, pyav_available

__all__ = ["AudioInput", "UnsupportedAudio"]

_WAVE_PCM, _WAVE_ALAW, _WAVE_MULAW, _WAVE_EXTENSIBLE = 1, 6, 7, 0xFFFE
_MAX_HEADER = 64 * 1024


class UnsupportedAudio(AudioFormatError):
    """The audio cannot be decoded; ``code`` is the error code sent to the client."""

    def __init__(self, message: str, code: str = "UNSUPPORTED_AUDIO") -> None:
        super().__init__(message)
        self.code = code


class AudioInput:
    """Turns a session's binary frames into engine PCM."""

    def __init__(self, encoding: str, sample_rate: int, channels: int,
                 raw_encodings: tuple[str, ...] = TurnsParams.raw_encodings()) -> None:
        """Start a decoder; with ``encoding='auto'`` the format comes from the header.

        ``raw_encodings``: the explicit encodings the endpoint accepts, named in the error
        for raw audio under ``encoding=auto`` (the realtime endpoint has only pcm_s16le).
        """
        self.encoding = encoding
        self._raw_encodings = raw_encodings
        self.sample_rate = sample_rate
        self.channels = channels
        self._pending = bytearray()
        self._header_done = encoding != "auto"
        self._resampler: soxr.ResampleStream | None = None
        self._remaining: int | None = None  # bytes of WAV data left, None = unbounded
        self._container: ContainerDecoder | FlacDecoder | None = None
        self._finished = False
        if self._header_done:
            self._configure(encoding, sample_rate, channels)

    @property
    def format_known(self) -> bool:
        """Whether the audio format (and so :attr:`output_rate`) is settled: always with an
        explicit encoding, after the container header with ``auto``."""
        return self._header_done

    @property
    def decoding_in_background(self) -> bool:
        """Whether a container decoder may have audio ready between messages."""
        return isinstance(self._container, ContainerDecoder)

    @property
    def ended(self) -> bool:
        """Whether the stream is complete by its own account: a WAV's data size or a FLAC's
        sample count all received (never for streaming containers or raw audio)."""
        if self._finished:
            return True
        if isinstance(self._container, FlacDecoder):
            return self._container.ended
        return self._remaining == 0

    @property
    def output_rate(self) -> int:
        """The engine rate this input is converted to."""
        return 8000 if self.sample_rate == 8000 else 16000

    def _configure(self, encoding: str, sample_rate: int, channels: int) -> None:
        self.encoding, self.sample_rate, self.channels = encoding, sample_rate, channels
        self._width = 1 if encoding in ("mulaw", "alaw") else 2
        self._frame = self._width * channels
        if sample_rate not in (8000, 16000):
            self._resampler = soxr.ResampleStream(sample_rate, 16000, 1, dtype="int16")

    def feed(self, data: bytes) -> bytes:
        """Decode one message; returns engine PCM (possibly empty, and always after
        :meth:`finish`: bytes after the end, such as a WAV's trailing chunks, are dropped)."""
        if self._finished:
            return b""
        if self._container is not None:
            return self._from_container(data)
        self._pending += data
        if not self._header_done:
            if not self._parse_header():
                return b""
            if self._container is not None:
                data, self._pending = bytes(self._pending), bytearray()
                return self._from_container(data)
        if self._remaining is not None:
            if self._remaining <= 0:
                self._pending.clear()
                return b""
            if len(self._pending) > self._remaining:
                del self._pending[self._remaining:]
        usable = len(self._pending) - len(self._pending) % self._frame
        if usable == 0:
            return b""
        chunk = bytes(self._pending[:usable])
        del self._pending[:usable]
        if self._remaining is not None:
            self._remaining -= usable
        return self._convert(chunk)

    def _from_container(self, data: bytes) -> bytes:
        assert self._container is not None
        try:
            return self._container.feed(data)
        except ValueError as exc:
            raise UnsupportedAudio(str(exc), code="INVALID_AUDIO") from None

    def close(self) -> bytes:
        """End of the session: stop a container decoder; returns its last audio."""
        if self._container is None:
            return b""
        container, self._container = self._container, None
        try:
            return container.close()
        except ValueError:
            return b""

    def finish(self) -> bytes:
        """End of stream: the audio a decoder or resampler still holds (once; may block
        up to 5 s on an OGG/WebM demuxer thread)."""
        if self._finished:
            return b""
        self._finished = True
        return self.close() + self.flush()

    def flush(self) -> bytes:
        """End of stream: whatever the resampler still holds."""
        if self._resampler is None:
            return b""
        tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        return bytes(np.asarray(tail, dtype=np.int16).tobytes())

    def _convert(self, chunk: bytes) -> bytes:
        if self.encoding == "mulaw":
            chunk = g711.ulaw_decode(chunk)
        elif self.encoding == "alaw":
            chunk = g711.alaw_decode(chunk)
        if self.channels == 1 and self._resampler is None:
            return chunk  # already the engine's s16le audio (the common phone-call case)
        samples = np.frombuffer(chunk, dtype="<i2")
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).mean(axis=1).astype(np.int16)
        if self._resampler is not None:
            samples = np.asarray(self._resampler.resample_chunk(samples), dtype=np.int16)
        return bytes(samples.astype("<i2", copy=False).tobytes())

    def _parse_header(self) -> bool:
        buf = self._pending
        if len(buf) < 12:
            if len(buf) >= 4 and not _could_be_container(bytes(buf[:4])):
                raise _raw_audio_error(self._raw_encodings)
            return False
        head = bytes(buf[:12])
        if head[:4] in (b"RIFF", b"RIFX") and head[8:12] == b"WAVE":
            if head[:4] == b"RIFX":
                raise UnsupportedAudio("big-endian WAV (RIFX) is not supported")
            return self._parse_wav()
        if head[:4] == b"OggS" or head[:4] == b"fLaC" or head[:4] == b"\x1a\x45\xdf\xa3":
            kind = {b"OggS": "OGG", b"fLaC": "FLAC"}.get(head[:4], "WebM")
            if not pyav_available():
                raise UnsupportedAudio(
                    f"{kind} audio needs PyAV on the server (pip install av); send WAV or "
                    f"raw audio with encoding={'|'.join(self._raw_encodings)}")
            self._container = FlacDecoder() if kind == "FLAC" else ContainerDecoder(kind)
            self._configure("pcm_s16le", 16000, 1)
            self._header_done = True
            return True
        raise _raw_audio_error(self._raw_encodings)

    def _parse_wav(self) -> bool:
        buf = bytes(self._pending[:_MAX_HEADER])
        pos = 12
        fmt: tuple[int, int, int, int] | None = None
        while pos + 8 <= len(buf):
            chunk_id = buf[pos:pos + 4]
            (size,) = struct.unpack_from("<I", buf, pos + 4)
            body = pos + 8
            if chunk_id == b"fmt ":
                if body + 16 > len(buf):
                    return False
                tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", buf, body)
                if tag == _WAVE_EXTENSIBLE and size >= 40 and body + 26 <= len(buf):
                    tag = struct.unpack_from("<H", buf, body + 24)[0]
                fmt = (tag, channels, rate, bits)
            elif chunk_id == b"data":
                if fmt is None:
                    raise UnsupportedAudio("WAV data chunk before its fmt chunk")
                self._start_wav(fmt, size)
                del self._pending[:body]
                self._header_done = True
                return True
            pos = body + size + (size & 1)
        if len(self._pending) >= _MAX_HEADER:
            raise UnsupportedAudio("WAV header larger than 64 KiB or without a data chunk")
        return False

    def _start_wav(self, fmt: tuple[int, int, int, int], size: int) -> None:
        tag, channels, rate, bits = fmt
        encodings = {(_WAVE_PCM, 16): "pcm_s16le", (_WAVE_MULAW, 8): "mulaw",
                     (_WAVE_ALAW, 8): "alaw"}
        encoding = encodings.get((tag, bits))
        if encoding is None:
            raise UnsupportedAudio(
                f"WAV format {tag} with {bits}-bit samples is not supported; use 16-bit PCM, "
                "mu-law or A-law")
        if not 8000 <= rate <= 48000 or not 1 <= channels <= 8:
            raise UnsupportedAudio(f"WAV with {rate} Hz and {channels} channels is out of range")
        self._configure(encoding, rate, channels)
        # Streaming WAV: a size of 0 or 0xFFFFFFFF (or anything huge) means "until the end".
        self._remaining = None if size in (0, 0xFFFFFFFF) or size >= 0x7FFFFFFF else size


def _could_be_container(head: bytes) -> bool:
    return any(m.startswith(head[: len(m)]) or head.startswith(m)
               for m in (b"RIFF", b"RIFX", b"OggS", b"fLaC", b"\x1a\x45\xdf\xa3"))


def _raw_audio_error(encodings: tuple[str, ...]) -> UnsupportedAudio:
    names = encodings[0] if len(encodings) == 1 else \
        ", ".join(encodings[:-1]) + " or " + encodings[-1]
    return UnsupportedAudio(
        "encoding=auto needs a container header (WAV, OGG, FLAC or WebM) at the start of "
        f"the stream; for raw audio set encoding={names} with sample_rate and channels",
        code="INVALID_AUDIO")
