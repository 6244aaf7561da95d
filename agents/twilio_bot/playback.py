"""What the caller actually heard, from Twilio ``mark`` echoes.

pipecat paces bot audio locally and never sends Twilio marks (pipecat 1.14: the serializer
ignores them), so "bot speaking" is a guess about the far end. Twilio plays our audio from
its own buffer and echoes each ``mark`` we send once the audio before it has been played;
on ``clear`` it drops the buffer and echoes every pending mark at once. So:

- :class:`PlaybackMarker` (between the TTS and the transport output) sends a mark after
  each spoken sentence and at the end of each reply, recording the text and audio before
  it in a :class:`PlaybackLedger`;
- :class:`MarkAwareTwilioSerializer` turns inbound ``mark``/``stop`` messages into
  ``InputTransportMessageFrame``s, and :class:`MarkEchoReceiver` (right after the transport
  input) feeds them to the ledger;
- an echo that arrives for a mark sent before the last ``clear`` is a flush, not playback.

The ledger then says what the caller heard of each reply (used to correct the assistant
message in the LLM context after a barge-in) and when everything sent has been played
(used to hang up only after the farewell was heard).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pipecat.frames.frames import (
    Frame,
    InputTransportMessageFrame,
    InterruptionFrame,
    OutputTransportMessageFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.serializers.twilio import TwilioFrameSerializer

__all__ = [
    "MarkAwareTwilioSerializer",
    "MarkEchoReceiver",
    "MarkRecord",
    "PlaybackLedger",
    "PlaybackMarker",
]

Observer = Callable[[str, dict[str, Any]], None]


class MarkAwareTwilioSerializer(TwilioFrameSerializer):
    """TwilioFrameSerializer that also surfaces ``mark`` and ``stop`` messages.

    pipecat's serializer drops both; here they become ``InputTransportMessageFrame``s.
    """

    async def deserialize(self, data: str | bytes) -> Frame | None:
        """Media and DTMF as pipecat does; ``mark`` and ``stop`` as transport messages."""
        frame = await super().deserialize(data)
        if frame is not None:
            return frame
        try:
            message = json.loads(data)
        except (TypeError, ValueError):
            return None
        if isinstance(message, dict) and message.get("event") in ("mark", "stop"):
            return InputTransportMessageFrame(message=message)
        return None


@dataclass
class MarkRecord:
    """One mark we sent: the reply it belongs to and what it vouches for."""

    name: str
    reply: int
    text: str
    audio_ms: float
    epoch: int
    sent_at: float
    final: bool = False
    heard: bool | None = None  # None: no echo yet
    echoed_at: float | None = None


@dataclass
class PlaybackLedger:
    """Marks sent and echoed; what the caller heard of each reply."""

    observer: Observer | None = None
    marks: dict[str, MarkRecord] = field(default_factory=dict)
    epoch: int = 0
    reply: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def emit(self, kind: str, **data: Any) -> None:
        if self.observer is not None:
            self.observer(kind, data)

    def add(self, text: str, audio_ms: float, *, final: bool = False) -> MarkRecord:
        """Record a mark about to be sent after ``audio_ms`` of the current reply."""
        name = f"r{self.reply}-{sum(1 for m in self.marks.values() if m.reply == self.reply)}"
        record = MarkRecord(name, self.reply, text, audio_ms, self.epoch, time.monotonic(),
                            final)
        self.marks[name] = record
        self._changed.set()
        return record

    def echoed(self, name: str) -> MarkRecord | None:
        """Twilio echoed ``name``: played, unless a ``clear`` went out after it was sent."""
        record = self.marks.get(name)
        if record is None or record.heard is not None:
            return None
        record.heard = record.epoch == self.epoch
        record.echoed_at = time.monotonic()
        self.emit("mark_heard" if record.heard else "mark_flushed", name=name,
                   text=record.text, audio_ms=record.audio_ms, reply=record.reply)
        self._changed.set()
        return record

    def cleared(self) -> None:
        """A ``clear`` is going out: marks pending now will echo unplayed."""
        self.epoch += 1
        self._changed.set()

    @property
    def pending(self) -> list[MarkRecord]:
        """Marks of the current epoch not echoed yet (audio still playing)."""
        return [m for m in self.marks.values() if m.heard is None and m.epoch == self.epoch]

    def heard_text(self, reply: int | None = None) -> str:
        """Text of ``reply`` (default: the current one) the caller has heard."""
        reply = self.reply if reply is None else reply
        return " ".join(m.text for m in self.marks.values()
                        if m.reply == reply and m.heard and m.text).strip()

    def unheard_text(self, reply: int | None = None) -> str:
        """Text of ``reply`` sent but not (yet, or ever) heard."""
        reply = self.reply if reply is None else reply
        return " ".join(m.text for m in self.marks.values()
                        if m.reply == reply and not m.heard and m.text).strip()

    async def wait_played(self, within_s: float, *, after: int | None = None) -> bool:
        """Wait until everything sent has been played (or flushed); False on timeout.

        With ``after`` (a ``len(marks)`` taken earlier), also wait for a reply's final mark
        sent since then: the reply being synthesized at that moment must be heard too.
        """
        try:
            async with asyncio.timeout(within_s):
                while True:
                    newer = list(self.marks.values())[after:] if after is not None else []
                    if not self.pending and (after is None or any(m.final for m in newer)):
                        return True
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False


class PlaybackMarker(FrameProcessor):
    """Sends a Twilio mark after each sentence of bot audio and at the end of each reply.

    Sits between the TTS and the transport output: the marks travel in the output's audio
    queue, so each goes out right after the audio it follows.
    """

    def __init__(self, ledger: PlaybackLedger, stream_sid: str, **kwargs: Any) -> None:
        """Create the marker for the stream ``stream_sid``."""
        super().__init__(**kwargs)
        self._ledger = ledger
        self._stream_sid = stream_sid
        self._audio_ms = 0.0
        self._marked_ms = 0.0
        self._text: list[str] = []
        self._in_reply = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Track bot audio and text; push marks after them."""
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            reply = self._ledger.reply
            unplayed = [m for m in self._ledger.marks.values()
                        if m.reply == reply and m.heard is None]
            if self._in_reply or unplayed:  # the reply was still being heard
                self._ledger.emit("bot_interrupted", reply=reply,
                                   heard=self._ledger.heard_text(),
                                   unheard=self._ledger.unheard_text())
            self._ledger.cleared()
            self._in_reply = False
            self._text = []
            await self.push_frame(frame, direction)
            return
        await self.push_frame(frame, direction)
        if direction is not FrameDirection.DOWNSTREAM:
            return
        if isinstance(frame, TTSStartedFrame):
            if not self._in_reply:
                self._ledger.reply += 1
                self._audio_ms = self._marked_ms = 0.0
                self._text = []
                self._in_reply = True
        elif isinstance(frame, TTSAudioRawFrame):
            self._audio_ms += len(frame.audio) / 2 / frame.sample_rate * 1000
        elif isinstance(frame, TTSTextFrame) and self._in_reply:
            self._text.append(frame.text)
            await self._mark()
        elif isinstance(frame, TTSStoppedFrame) and self._in_reply:
            await self._mark(final=True)
            self._in_reply = False

    async def _mark(self, *, final: bool = False) -> None:
        text = " ".join(t.strip() for t in self._text if t.strip())
        if not text and self._audio_ms <= self._marked_ms and not final:
            return
        record = self._ledger.add(text, self._audio_ms, final=final)
        self._text = []
        self._marked_ms = self._audio_ms
        await self.push_frame(OutputTransportMessageFrame(message={
            "event": "mark", "streamSid": self._stream_sid, "mark": {"name": record.name}}))


class MarkEchoReceiver(FrameProcessor):
    """Feeds Twilio ``mark`` echoes to the ledger and reports ``stop`` (the call ended)."""

    def __init__(self, ledger: PlaybackLedger,
                 on_stop: Callable[[dict[str, Any]], Awaitable[None]], **kwargs: Any) -> None:
        """Create the receiver; ``on_stop`` runs when Twilio says the stream stopped."""
        super().__init__(**kwargs)
        self._ledger = ledger
        self._on_stop = on_stop

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Consume mark/stop messages; pass everything else on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, InputTransportMessageFrame) and isinstance(frame.message, dict):
            event = frame.message.get("event")
            if event == "mark":
                name = (frame.message.get("mark") or {}).get("name")
                if isinstance(name, str):
                    self._ledger.echoed(name)
                return
            if event == "stop":
                await self._on_stop(frame.message)
                return
        await self.push_frame(frame, direction)
