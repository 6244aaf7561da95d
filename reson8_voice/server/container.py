"""Streaming decode of OGG, FLAC and WebM for ``encoding=auto`` (spec 003), with PyAV.

FLAC is split into frames here (:class:`FlacDecoder`) and each frame decoded with PyAV's
codec as soon as its last byte has arrived: no demuxer, no thread, and no hold-back beyond
the frame being received. (FFmpeg's FLAC demuxer looks ten frame headers ahead before it
returns a frame: 2.3-4.9 s of audio held back for sox's 4096-sample frames at 16 and
8 kHz, so the silence after the last turn never reached the engine while the stream was
open.) The STREAMINFO block's sample count, when the encoder wrote it, marks the end of
the stream: the decoder then reports :attr:`FlacDecoder.ended` and hands out its tail.

OGG and WebM go through PyAV's demuxers, which pull from a file object, so their decoder
runs in its own thread reading a pipe that :meth:`ContainerDecoder.feed` fills; decoded
audio (mono s16le at 16 kHz) comes back through a queue. ``feed`` never blocks on
decoding: it returns what is ready, the rest follows on the next call or at
:meth:`ContainerDecoder.close`. PyAV ships with faster-whisper (the ``local`` extra);
without it these formats are refused with a clear error.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

__all__ = ["ContainerDecoder", "FlacDecoder", "pyav_available"]

#: The rate and layout the engine is fed from a container.
OUTPUT_RATE = 16000
_FORMATS = {"OGG": "ogg", "FLAC": "flac", "WebM": "matroska"}
_MAX_PENDING = 4 << 20  # bytes fed but not yet read by the demuxer


def pyav_available() -> bool:
    """Whether PyAV can be imported."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


class _Pipe:
    """A blocking, non-seekable file object between ``feed`` and the demuxer thread."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._closed = False

    def write(self, data: bytes) -> None:
        with self._cond:
            self._buf += data
            self._cond.notify_all()

    def close_writer(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def read(self, size: int = -1) -> bytes:
        with self._cond:
            while not self._buf and not self._closed:
                self._cond.wait()
            n = len(self._buf) if size is None or size < 0 else min(size, len(self._buf))
            out = bytes(self._buf[:n])
            del self._buf[:n]
            return out


class ContainerDecoder:
    """Decodes one container stream (``kind``: OGG, FLAC or WebM) as it arrives."""

    def __init__(self, kind: str) -> None:
        """Start the demuxer thread for a stream whose header named ``kind``."""
        self.kind = kind
        self._pipe = _Pipe()
        self._out: queue.SimpleQueue[bytes | BaseException | None] = queue.SimpleQueue()
        self._done = False
        self._thread = threading.Thread(target=self._run, name=f"reson8-{kind.lower()}",
                                        daemon=True)
        self._thread.start()

    def feed(self, data: bytes) -> bytes:
        """Hand container bytes to the demuxer; returns the audio decoded so far."""
        if self._pipe.pending > _MAX_PENDING:
            raise ValueError(f"{self.kind} stream is not decoding (over 4 MiB pending)")
        self._pipe.write(data)
        return self._drain(block=False)

    def close(self, timeout: float = 5.0) -> bytes:
        """End of stream: wait for the demuxer to finish; returns the remaining audio."""
        self._pipe.close_writer()
        self._thread.join(timeout)
        return self._drain(block=False)

    def _drain(self, *, block: bool) -> bytes:
        parts: list[bytes] = []
        while True:
            try:
                item = self._out.get(block=block)
            except queue.Empty:
                break
            if item is None:
                self._done = True
                break
            if isinstance(item, BaseException):
                raise ValueError(f"cannot decode the {self.kind} stream: {item}") from item
            parts.append(item)
        return b"".join(parts)

    def _run(self) -> None:
        try:
            import av

            # small reads and no long probing: decoding must start with the first packets
            container: Any = av.open(
                self._pipe, mode="r", format=_FORMATS.get(self.kind), buffer_size=4096,
                options={"probesize": "4096", "analyzeduration": "0", "fflags": "nobuffer"})
            resampler = av.AudioResampler(format="s16", layout="mono", rate=OUTPUT_RATE)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    self._out.put(out.to_ndarray().astype("<i2").tobytes())
            for out in resampler.resample(None):
                self._out.put(out.to_ndarray().astype("<i2").tobytes())
            container.close()
        except BaseException as exc:  # reported to the session by feed/close
            self._out.put(exc)
        finally:
            self._out.put(None)


def _crc8(data: bytes | bytearray) -> int:
    """FLAC's frame-header CRC-8 (polynomial 0x07, initial 0)."""
    crc = 0
    for byte in data:
        crc = _CRC8[crc ^ byte]
    return crc


def _crc8_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        table.append(c)
    return table


_CRC8 = _crc8_table()


def _frame_header(buf: bytearray, i: int) -> bool | None:
    """Whether a valid FLAC frame header starts at ``buf[i]`` (its sync code already
    matched); None when the buffer ends inside it."""
    if len(buf) < i + 5:
        return None
    block_code, rate_code = buf[i + 2] >> 4, buf[i + 2] & 0x0F
    channels, size_code = buf[i + 3] >> 4, (buf[i + 3] >> 1) & 0x07
    if block_code == 0 or rate_code == 0x0F or channels > 10 or size_code == 3 \
            or buf[i + 3] & 1:
        return False
    first = buf[i + 4]  # the frame or sample number, UTF-8 style (1 to 7 bytes)
    if first < 0x80:
        extra = 0
    elif 0xC0 <= first < 0xFF:
        extra = 1
        while first & (0x40 >> extra):
            extra += 1
        if extra > 6:
            return False
    else:
        return False
    end = i + 5 + extra
    end += {6: 1, 7: 2}.get(block_code, 0) + {12: 1, 13: 2, 14: 2}.get(rate_code, 0)
    if len(buf) < end + 1:
        return None
    if any(b & 0xC0 != 0x80 for b in buf[i + 5:i + 5 + extra]):
        return False
    return _crc8(buf[i:end]) == buf[end]


class FlacDecoder:
    """Decodes one FLAC stream frame by frame as it arrives (see the module docstring).

    Frames are found by their sync code and header CRC-8, and confirmed by decoding: a
    frame cut short fails to decode, so a frame is handed to the decoder when the next
    frame's header follows it or when the data received so far ends exactly with it (a
    sender that sends whole frames waits for nothing).
    """

    kind = "FLAC"

    def __init__(self) -> None:
        """A decoder expecting the stream from its ``fLaC`` marker on."""
        import av

        self._av: Any = av
        self._buf = bytearray()
        self._magic = False
        self._in_metadata = True
        self._skip = 0  # bytes of a metadata block still to drop
        self._last_block = False
        self._codec: Any = None
        self._resampler: Any = av.AudioResampler(format="s16", layout="mono",
                                                 rate=OUTPUT_RATE)
        self._sync = b""  # the two sync bytes of this stream's frames (fixed or variable)
        self._scan = 2  # where the search for the next frame header resumes
        self._min_frame = self._max_frame = 0  # bytes, from STREAMINFO (0: unknown)
        #: samples in the stream per STREAMINFO (0: unknown, e.g. a live encoder's)
        self.total_samples = 0
        #: samples decoded so far
        self.samples = 0
        self._finished = False

    @property
    def ended(self) -> bool:
        """Whether every sample STREAMINFO announced has been decoded."""
        return self._finished or 0 < self.total_samples <= self.samples

    def feed(self, data: bytes) -> bytes:
        """Take the next bytes; returns the audio of every frame they complete."""
        if self.ended:
            return b""
        self._buf += data
        if len(self._buf) > _MAX_PENDING:
            raise ValueError("FLAC stream is not decoding (over 4 MiB pending)")
        if self._in_metadata and not self._read_metadata():
            return b""
        parts: list[bytes] = []
        while self._buf and not self.ended:
            pcm = self._next_frame()
            if pcm is None:
                break
            parts.append(pcm)
        if self.ended:
            parts.append(self._finish())
        return b"".join(parts)

    def close(self, timeout: float = 5.0) -> bytes:
        """End of stream: decode what is left; returns the remaining audio."""
        if self._finished:
            return b""
        parts: list[bytes] = []
        if not self._in_metadata and self._buf:
            pcm = self._decode(len(self._buf))
            if pcm is not None:
                parts.append(pcm)
        parts.append(self._finish())
        return b"".join(parts)

    def _finish(self) -> bytes:
        self._finished = True
        self._buf.clear()
        return b"".join(out.to_ndarray().astype("<i2").tobytes()
                        for out in self._resampler.resample(None))

    def _read_metadata(self) -> bool:
        """Consume the marker and metadata blocks; True once the frames begin."""
        buf = self._buf
        if not self._magic:
            if len(buf) < 4:
                return False
            if bytes(buf[:4]) != b"fLaC":
                raise ValueError("not a FLAC stream")
            del buf[:4]
            self._magic = True
        while True:
            if self._skip:
                n = min(self._skip, len(buf))
                del buf[:n]
                self._skip -= n
                if self._skip:
                    return False
                if self._last_block:
                    break
            if len(buf) < 4:
                return False
            kind, size = buf[0] & 0x7F, int.from_bytes(buf[1:4], "big")
            self._last_block = bool(buf[0] & 0x80)
            if self._codec is None:
                if kind != 0 or size < 34:
                    raise ValueError("FLAC metadata does not start with STREAMINFO")
                if len(buf) < 4 + size:
                    return False
                self._streaminfo(bytes(buf[4:4 + size]))
                del buf[:4 + size]
                if self._last_block:
                    break
                continue
            del buf[:4]
            self._skip = size
            if not size and self._last_block:
                break
        self._in_metadata = False
        return True

    def _streaminfo(self, info: bytes) -> None:
        self._min_frame = int.from_bytes(info[4:7], "big")
        self._max_frame = int.from_bytes(info[7:10], "big")
        self.total_samples = ((info[13] & 0x0F) << 32) | int.from_bytes(info[14:18], "big")
        codec = self._av.CodecContext.create("flac", "r")
        codec.extradata = info[:34]
        self._codec = codec

    def _next_frame(self) -> bytes | None:
        """Decode the frame at the start of the buffer if all of it is there."""
        buf = self._buf
        if not self._sync or bytes(buf[:2]) != self._sync:
            if not self._resync():
                return None
        limit = self._max_frame + 64 if self._max_frame else _MAX_PENDING
        pos = self._scan
        while True:
            j = buf.find(self._sync, pos)
            if j < 0:
                break
            valid = _frame_header(buf, j)
            if valid is None:  # the data ends inside a header: the frame before may be whole
                pcm = self._decode(j)
                if pcm is None:
                    self._scan = j
                return pcm
            if valid:
                pcm = self._decode(j)
                if pcm is not None:
                    return pcm
                if j > limit:
                    raise ValueError("cannot decode the FLAC stream: a frame is corrupt")
            pos = j + 1
        self._scan = max(2, len(buf) - 1)  # a sync code may be split across messages
        end = len(buf) - 1 if buf[-1] == 0xFF else len(buf)
        if end < self._min_frame:
            return None
        return self._decode(end)  # a sender may send whole frames: this one may be done

    def _resync(self) -> bool:
        """Drop bytes up to the first valid frame header (the first frame, normally)."""
        buf = self._buf
        pos = 0
        while True:
            j = buf.find(b"\xff", pos)
            if j < 0 or j + 1 >= len(buf):
                keep = len(buf) - 1 if j >= 0 else len(buf)
                del buf[:keep]
                return False
            if buf[j + 1] in (0xF8, 0xF9):
                valid = _frame_header(buf, j)
                if valid is None:
                    del buf[:j]
                    return False
                if valid:
                    del buf[:j]
                    self._sync = bytes(buf[:2])
                    self._scan = 2
                    return True
            pos = j + 1

    def _decode(self, end: int) -> bytes | None:
        """Decode ``buf[:end]`` as one frame; None (nothing consumed) if it is not one."""
        if end < 6:
            return None
        try:
            frames = self._codec.decode(self._av.Packet(bytes(self._buf[:end])))
        except self._av.error.FFmpegError:
            return None
        if not frames:
            return None
        del self._buf[:end]
        self._scan = 2
        parts: list[bytes] = []
        for frame in frames:
            self.samples += frame.samples
            for out in self._resampler.resample(frame):
                parts.append(out.to_ndarray().astype("<i2").tobytes())
        return b"".join(parts)
