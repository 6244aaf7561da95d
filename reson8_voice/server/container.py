"""Streaming decode of OGG, FLAC and WebM for ``encoding=auto`` (spec 003), with PyAV.

PyAV's demuxers pull from a file object, so the decoder runs in its own thread reading a
pipe that :meth:`ContainerDecoder.feed` fills; decoded audio (mono s16le at 16 kHz) comes
back through a queue. ``feed`` never blocks on decoding: it returns what is ready, the
rest follows on the next call or at :meth:`close`. PyAV ships with faster-whisper (the
``local`` extra); without it these formats are refused with a clear error.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

__all__ = ["ContainerDecoder", "pyav_available"]

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
