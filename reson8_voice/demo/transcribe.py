"""``reson8-voice transcribe FILE``: stream a WAV or raw G.711/PCM file to a turns or realtime
endpoint with the project client and report what comes back.

The file's format is read here (WAV header, or the extension of a raw file), so the
session is opened with an explicit ``encoding``/``sample_rate``/``channels`` (spec 001/000)
and the progress bar knows the duration. The realtime endpoint takes only PCM, so G.711 is
decoded locally first. At the end of the file the turns endpoint gets a little silence (it
has no flush: a turn ends on silence), the realtime endpoint a ``flush_request``.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from .. import g711
from ..auth import ApiKey, Credentials, redacted_repr
from ..client import connect_realtime, connect_turns
from ..errors import ConnectionClosed, RemoteProtocolError, ServiceError
from ..events import (
    ErrorEvent,
    Event,
    FlushConfirmation,
    Transcript,
    TurnContinuation,
    TurnEnd,
    TurnEndCandidate,
    TurnStart,
)
from ..params import RealtimeParams, TurnsParams
from ..turns import CompletedTurn, TurnStateMachine

__all__ = ["AudioFile", "TranscribeOptions", "UnreadableAudio", "read_audio_file",
           "transcribe_file"]

_RAW_EXTENSIONS = {".ulaw": "mulaw", ".mulaw": "mulaw", ".mu": "mulaw", ".ul": "mulaw",
                   ".alaw": "alaw", ".al": "alaw", ".pcm": "pcm_s16le", ".raw": "pcm_s16le",
                   ".s16": "pcm_s16le"}
_WAVE_FORMATS = {1: "pcm_s16le", 6: "alaw", 7: "mulaw"}


class UnreadableAudio(ValueError):
    """The file is missing, empty or in a format this command cannot send."""


@dataclass(frozen=True, slots=True)
class AudioFile:
    """Raw audio ready to stream: bytes in ``encoding`` at ``sample_rate``/``channels``."""

    path: Path
    data: bytes
    encoding: str
    sample_rate: int
    channels: int

    @property
    def bytes_per_second(self) -> int:
        """Audio bytes per second of this file."""
        width = 1 if self.encoding in ("mulaw", "alaw") else 2
        return self.sample_rate * self.channels * width

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return len(self.data) / self.bytes_per_second


def read_audio_file(path: Path, encoding: str | None = None, sample_rate: int | None = None,
                    channels: int | None = None) -> AudioFile:
    """Read a WAV (PCM 16-bit, A-law, mu-law) or a raw file named by its extension.

    Raises:
        UnreadableAudio: with a one-line reason.
    """
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise UnreadableAudio(f"cannot read {path}: {exc.strerror or exc}") from None
    if not blob:
        raise UnreadableAudio(f"{path} is empty")
    if blob[:4] == b"RIFF" and blob[8:12] == b"WAVE":
        return _read_wav(path, blob)
    enc = encoding or _RAW_EXTENSIONS.get(path.suffix.lower())
    if enc is None or enc == "auto":
        raise UnreadableAudio(f"{path.name}: not a WAV file; say what it holds with "
                              "--encoding mulaw|alaw|pcm_s16le (and --sample-rate)")
    rate = sample_rate or (8000 if enc in ("mulaw", "alaw") else 16000)
    return AudioFile(path, blob, enc, rate, channels or 1)


def _read_wav(path: Path, blob: bytes) -> AudioFile:
    pos, fmt, data = 12, None, None
    while pos + 8 <= len(blob):
        chunk_id, size = blob[pos:pos + 4], struct.unpack("<I", blob[pos + 4:pos + 8])[0]
        body = blob[pos + 8:pos + 8 + size]
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            data = blob[pos + 8:] if size in (0, 0xFFFFFFFF) else body  # streaming WAV
            break
        pos += 8 + size + (size & 1)
    if fmt is None or len(fmt) < 16 or data is None:
        raise UnreadableAudio(f"{path.name}: a WAV file without fmt/data chunks")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == 0xFFFE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]
    encoding = _WAVE_FORMATS.get(tag)
    if encoding is None or (encoding == "pcm_s16le" and bits != 16):
        raise UnreadableAudio(f"{path.name}: WAV format {tag} with {bits}-bit samples is not "
                              "supported (use 16-bit PCM, A-law or mu-law)")
    return AudioFile(path, data, encoding, rate, channels)


@dataclass
class TranscribeOptions:
    """How to stream the file and what to print."""

    __repr__ = redacted_repr  # a ?token= in a URL field is a credential

    url: str
    endpoint: Literal["turns", "realtime"] = "turns"
    api_key: str | None = field(default=None, repr=False)
    language: str | None = None
    #: pace as a multiple of real time; 0 sends as fast as the server takes it
    speed: float = 0.0
    tail_silence_s: float = 2.0
    json_output: bool = False
    events: bool = False
    progress: bool | None = None  # None: on a terminal, for files over 15 s
    chunk_s: float = 0.1
    idle_timeout_s: float = 15.0


class _Progress:
    def __init__(self, total_s: float, stream: TextIO, enabled: bool) -> None:
        self.total_s, self.stream, self.enabled = total_s, stream, enabled
        self.done_s, self.turns, self._last = 0.0, 0, 0.0

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.1):
            return
        self._last = now
        frac = min(1.0, self.done_s / self.total_s) if self.total_s else 1.0
        bar = "#" * int(frac * 30)
        self.stream.write(f"\r[{bar:<30}] {frac * 100:3.0f}%  {self.done_s:6.1f}/"
                          f"{self.total_s:.1f} s  {self.turns} turn(s)")
        self.stream.flush()

    def clear(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _turn_json(turn: CompletedTurn) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "turn", "index": turn.index, "text": turn.text}
    for name in ("language", "start_ms", "duration_ms"):
        value = getattr(turn, name)
        if value is not None:
            out[name] = value
    if turn.words is not None:
        out["words"] = [{k: v for k, v in (("text", w.text), ("start_ms", w.start_ms),
                                            ("duration_ms", w.duration_ms),
                                            ("confidence", w.confidence)) if v is not None}
                        for w in turn.words]
    out["continuations"] = turn.continuations
    if turn.cut_short:
        out["cut_short"] = True
    return out


def _span(start_ms: float | None, duration_ms: float | None) -> str:
    if start_ms is None:
        return ""
    end = start_ms + (duration_ms or 0)
    return f"[{start_ms / 1000:7.2f} -{end / 1000:7.2f}] "


async def transcribe_file(audio: AudioFile, options: TranscribeOptions,
                          out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Stream ``audio``; print turns (or transcripts); returns how many were printed.

    Raises:
        HandshakeError | ConnectionClosed: the server refused or could not be reached.
        ServiceError: the server reported an error inside the session.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    credentials: Credentials | None = ApiKey.of(options.api_key) if options.api_key else None
    realtime = options.endpoint == "realtime"
    data, encoding = audio.data, audio.encoding
    if realtime and encoding in ("mulaw", "alaw"):
        law: g711.Law = "mulaw" if encoding == "mulaw" else "alaw"
        data, encoding = g711.decode(law, data), "pcm_s16le"
    show = options.progress if options.progress is not None else (
        err.isatty() and audio.duration_s > 15)
    progress = _Progress(audio.duration_s, err, bool(show))
    count = 0

    def emit(line: str) -> None:
        progress.clear()
        print(line, file=out, flush=True)
        progress.draw(force=True)

    def on_event(event: Event, completed: CompletedTurn | None) -> None:
        nonlocal count
        if options.events:
            payload = {"type": event.type, **{k: v for k, v in _fields(event).items()
                                              if v is not None}}
            emit(json.dumps(payload, default=_jsonable) if options.json_output
                 else f"  {event.type} {payload.get('text', '')}".rstrip())
        if completed is not None:
            count += 1
            progress.turns = count
            if not options.events:
                emit(json.dumps(_turn_json(completed)) if options.json_output
                     else f"{_span(completed.start_ms, completed.duration_ms)}{completed.text}")
        if isinstance(event, Transcript) and event.final and not options.events:
            count += 1
            progress.turns = count
            emit(json.dumps({"type": "transcript", "text": event.text,
                             "start_ms": event.start_ms, "duration_ms": event.duration_ms})
                 if options.json_output
                 else f"{_span(event.start_ms, event.duration_ms)}{event.text}")

    if realtime:
        rparams = RealtimeParams(encoding=encoding, sample_rate=audio.sample_rate,
                                 channels=audio.channels, language=options.language,
                                 include_timestamps=True, include_words=True)
        conn_r = await connect_realtime(options.url, rparams, credentials)
        async with conn_r:
            await _run(conn_r, data, encoding, audio, options, progress, on_event,
                       realtime=True)
    else:
        tparams = TurnsParams(encoding=encoding, sample_rate=audio.sample_rate,
                              channels=audio.channels, language=options.language,
                              include_timestamps=True, include_words=True,
                              include_language=True)
        conn_t = await connect_turns(options.url, tparams, credentials)
        async with conn_t:
            await _run(conn_t, data, encoding, audio, options, progress, on_event,
                       realtime=False)
    progress.clear()
    return count


def _fields(event: Event) -> dict[str, Any]:
    return {name: getattr(event, name) for name in getattr(event, "__slots__", ())}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return {name: getattr(value, name) for name in getattr(value, "__slots__", ())}


async def _run(conn: Any, data: bytes, encoding: str, audio: AudioFile,
               options: TranscribeOptions, progress: _Progress,
               on_event: Callable[[Event, CompletedTurn | None], None],
               *, realtime: bool) -> None:
    machine = TurnStateMachine()
    done_sending = asyncio.Event()
    flush_confirmed = asyncio.Event()
    last_event = time.monotonic()

    async def reader() -> None:
        nonlocal last_event
        while True:
            try:
                event = await conn.recv()
            except RemoteProtocolError:
                continue
            except ConnectionClosed as exc:
                if exc.code in (1000, 1001) and done_sending.is_set():
                    return
                raise
            last_event = time.monotonic()
            if isinstance(event, ErrorEvent):
                raise ServiceError(event.code, event.message)
            completed = None
            if isinstance(event, TurnStart | TurnEndCandidate | TurnContinuation | TurnEnd):
                completed = machine.resync(event)
            on_event(event, completed)
            if isinstance(event, FlushConfirmation):
                flush_confirmed.set()

    task = asyncio.create_task(reader())
    frame = (1 if encoding in ("mulaw", "alaw") else 2) * audio.channels
    per_second = audio.sample_rate * frame
    step = max(frame, int(per_second * options.chunk_s) // frame * frame)
    t0 = time.monotonic()
    try:
        for i, start in enumerate(range(0, len(data), step)):
            if task.done():
                break
            await conn.send_audio(data[start:start + step])
            progress.done_s = min(audio.duration_s, (start + step) / per_second)
            progress.draw()
            if options.speed > 0:
                due = t0 + (i + 1) * options.chunk_s / options.speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            else:
                await asyncio.sleep(0)
        if not task.done():
            if realtime:
                await conn.flush("end-of-file")
            else:  # the turns endpoint has no flush: a turn ends on silence
                silence = {"mulaw": b"\xff", "alaw": b"\xd5"}.get(encoding, b"\x00\x00")
                frames = int(options.tail_silence_s * audio.sample_rate) * audio.channels
                await conn.send_audio(silence * frames)
        done_sending.set()
        last_event = time.monotonic()
        while not task.done():  # the last events: a flush confirmation, or quiet and idle
            quiet = time.monotonic() - last_event
            if realtime and flush_confirmed.is_set():
                break
            if not realtime and not machine.in_turn and quiet > 1.0:
                break
            if quiet > options.idle_timeout_s:
                break
            await asyncio.sleep(0.05)
    finally:
        if not task.done():
            task.cancel()
        results = await asyncio.gather(task, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
    closed = machine.close()
    if closed is not None and closed.text:
        on_event(TurnEnd(), closed)
