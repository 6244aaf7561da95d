"""A simulated Twilio caller: Twilio's side of a ``<Connect><Stream>`` call, over a real socket.

It does what Twilio does for a phone call answered by the bot: fetches the TwiML, opens
the media-stream WebSocket it names, sends ``connected`` and ``start``, then streams the
caller's audio as ``media`` messages (base64 mu-law, 20 ms each, paced in real time or
``speed`` times faster). It also plays the bot's audio from a playout buffer on the same
clock: ``mark`` messages are echoed once the audio before them has been played, ``clear``
empties the buffer and echoes the pending marks at once, as Twilio documents. At the end
it hangs up with ``stop`` unless the bot hung up first.

Turns are spoken as a person would: after the previous turn, the caller waits for the
bot's reply to finish (or for ``reply_timeout_s`` if none comes), except for a turn tagged
``barge_in``, which starts once the bot has talked for ``barge_in_after_s``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ..g711 import ulaw_decode
from .script import CallerTurn, CallScript
from .timeline import CallTimeline, PlacedTurn

__all__ = ["CallerOptions", "SimulatedTwilioCaller", "fetch_twiml"]

_CHUNK_MS = 20
_CHUNK_BYTES = 160  # 20 ms of 8 kHz mu-law
_SILENCE = b"\xff"
_GIVE_UP_S = 45.0


@dataclass(frozen=True, slots=True)
class CallerOptions:
    """How the simulated caller behaves (times in call seconds)."""

    speed: float = 1.0
    #: pause after the bot's reply ends before the caller speaks again
    reply_pause_s: float = 0.7
    #: go on if the bot has not started replying within this long
    reply_timeout_s: float = 8.0
    #: the first turn waits this long for a greeting to start
    greeting_wait_s: float = 4.0
    #: a barge_in turn starts once the bot has been audible this long
    barge_in_after_s: float = 1.2
    #: after the last turn: wait this long for the bot to hang up, then send ``stop``
    hangup_wait_s: float = 12.0
    #: hang up with ``stop`` right after the last reply instead of waiting for the bot
    caller_hangs_up: bool = False
    #: bot audio gaps shorter than this belong to one stretch of speech
    merge_gap_s: float = 0.35


def fetch_twiml(url: str, form: dict[str, str]) -> tuple[str, dict[str, str]]:
    """POST Twilio's webhook form to ``url``; returns (stream URL, stream parameters).

    Raises:
        ValueError: the answer is not TwiML with a ``<Connect><Stream>``.
        OSError: the bot could not be reached.
    """
    body = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=10) as response:
        xml = response.read().decode()
    root = ET.fromstring(xml)
    stream = root.find("./Connect/Stream")
    if stream is None or not stream.get("url"):
        raise ValueError(f"no <Connect><Stream url=...> in the TwiML: {xml[:200]}")
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return str(stream.get("url")), params


def _audible(payload: bytes) -> bool:
    """Whether mu-law ``payload`` holds more than near-silence (|sample| >= 64)."""
    pcm = np.frombuffer(ulaw_decode(payload), dtype="<i2")
    return bool(pcm.size) and int(np.abs(pcm.astype(np.int32)).max()) >= 64


class _Playout:
    """Twilio's playback buffer for the bot's audio, on the call clock.

    ``end`` is when the buffered audio finishes; ``voice_end`` when its last audible part
    does (trailing silence, such as pipecat's end-of-call padding, is not speech).
    """

    def __init__(self, caller: SimulatedTwilioCaller) -> None:
        self.caller = caller
        self.end = 0.0
        self.voice_end = 0.0
        self.span_start: float | None = None
        self.marks: list[tuple[float, str, asyncio.TimerHandle]] = []

    @property
    def _gap(self) -> float:
        return self.caller.options.merge_gap_s / self.caller.options.speed

    def speaking(self, now: float) -> bool:
        """Bot speech is audible (gaps shorter than ``merge_gap_s`` included)."""
        return self.span_start is not None and now < self.voice_end + self._gap

    def media(self, payload: bytes, now: float) -> None:
        rate = 8000.0 * self.caller.options.speed
        timeline = self.caller.timeline
        start = max(now, self.end)
        self.end = start + len(payload) / rate
        timeline.bot_audio.append((timeline.call_time(start), payload))
        if not _audible(payload):
            return
        if self.span_start is not None and start > self.voice_end + self._gap:
            self._close_span(now)
        if self.span_start is None:
            self.span_start = start
            timeline.add("caller", "bot_speech_start", start)
        self.voice_end = self.end

    def mark(self, name: str, now: float) -> None:
        due = max(now, self.end)
        loop = asyncio.get_running_loop()
        handle = loop.call_at(loop.time() + (due - now), self._echo, name)
        self.marks.append((due, name, handle))

    def _echo(self, name: str) -> None:
        self.marks = [m for m in self.marks if m[1] != name]
        self.caller.echo_mark(name)

    def clear(self, now: float) -> None:
        dropped = max(0.0, self.end - now) * self.caller.options.speed
        timeline = self.caller.timeline
        speaking = self.speaking(now)
        timeline.add("caller", "clear_received", now, dropped_ms=round(dropped * 1000),
                     during_speech=speaking)
        if speaking:
            timeline.add("caller", "bot_speech_stop", now, cleared=True)
            self.span_start = None
        self._truncate(timeline.call_time(now))
        self.end = min(self.end, now)
        self.voice_end = min(self.voice_end, now)
        pending, self.marks = self.marks, []
        for _, name, handle in pending:  # Twilio echoes every pending mark on clear
            handle.cancel()
            self.caller.echo_mark(name)

    def _truncate(self, t_call: float) -> None:
        kept: list[tuple[float, bytes]] = []
        for start, audio in self.caller.timeline.bot_audio:
            if start >= t_call:
                continue
            played = int((t_call - start) * 8000)
            kept.append((start, audio[:played]))
        self.caller.timeline.bot_audio[:] = kept

    def tick(self, now: float) -> None:
        if self.span_start is not None and now > self.voice_end + self._gap:
            self._close_span(now)

    def _close_span(self, now: float) -> None:
        if self.span_start is not None:
            self.caller.timeline.add("caller", "bot_speech_stop", min(now, self.voice_end))
            self.span_start = None

    def quiet_since(self, now: float) -> float | None:
        """Monotonic time the bot went quiet, None while it is audible."""
        return None if self.speaking(now) else self.voice_end

    def replied_after(self, t: float) -> bool:
        """Whether the bot spoke after monotonic time ``t``."""
        return self.voice_end > t


class SimulatedTwilioCaller:
    """Plays Twilio's part of one call against a bot's TwiML URL."""

    def __init__(self, twiml_url: str, script: CallScript, timeline: CallTimeline,
                 options: CallerOptions | None = None) -> None:
        """Prepare a call to the bot whose webhook is ``twiml_url``."""
        self.twiml_url = twiml_url
        self.script = script
        self.timeline = timeline
        self.options = options or CallerOptions(speed=timeline.speed)
        self.call_sid = "CA" + uuid.uuid4().hex
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.account_sid = "AC" + uuid.uuid4().hex
        self.received: list[dict[str, Any]] = []  # every message from the bot
        self.sent: list[dict[str, Any]] = []  # every non-media message to the bot
        self.ws: ClientConnection | None = None
        self.ended_by: str | None = None
        self._seq = 0
        self._chunk = 0
        self._playout = _Playout(self)
        self._send_lock = asyncio.Lock()
        self._pending_echoes: list[str] = []

    # -- messages ------------------------------------------------------------------------
    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    async def _send(self, message: dict[str, Any]) -> None:
        if self.ws is None:
            return
        if message.get("event") != "media":
            self.sent.append(message)
        try:
            async with self._send_lock:
                await self.ws.send(json.dumps(message))
        except ConnectionClosed:
            self._bot_closed()

    def _bot_closed(self) -> None:
        """The bot closed the stream (seen by a send or by the receive loop, once)."""
        if self.ended_by is None:
            self.ended_by = "bot"
            code = self.ws.close_code if self.ws is not None else None
            self.timeline.add("caller", "socket_closed", code=code)

    def echo_mark(self, name: str) -> None:
        """Echo a mark back to the bot (played, or flushed by ``clear``)."""
        self.timeline.add("caller", "mark_echoed", name=name)
        self._pending_echoes.append(name)

    async def _flush_echoes(self) -> None:
        while self._pending_echoes:
            name = self._pending_echoes.pop(0)
            await self._send({"event": "mark", "sequenceNumber": self._next_seq(),
                              "streamSid": self.stream_sid, "mark": {"name": name}})

    # -- the call ------------------------------------------------------------------------
    async def run(self) -> None:
        """Place the call and stream the whole script; returns when the call is over."""
        form = {"CallSid": self.call_sid, "AccountSid": self.account_sid,
                "From": "+15550100", "To": "+15550199", "CallStatus": "in-progress",
                "Direction": "inbound"}
        stream_url, params = await asyncio.to_thread(fetch_twiml, self.twiml_url, form)
        async with connect(stream_url, open_timeout=10, max_size=1 << 22, proxy=None,
                           compression=None) as ws:  # Twilio does not deflate
            self.ws = ws
            self.timeline.start_clock()
            self.timeline.add("caller", "call_connected", url=stream_url)
            await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            await self._send({
                "event": "start", "sequenceNumber": self._next_seq(),
                "streamSid": self.stream_sid,
                "start": {"accountSid": self.account_sid, "streamSid": self.stream_sid,
                          "callSid": self.call_sid, "tracks": ["inbound"],
                          "customParameters": params,
                          "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                          "channels": 1}}})
            reader = asyncio.create_task(self._read())
            try:
                await self._stream()
            finally:
                if not reader.done():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(reader, 10)
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        self.ws = None

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                now = time.monotonic()
                try:
                    message = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                event = message.get("event")
                if event != "media":
                    self.received.append(message)
                if event == "media":
                    payload = base64.b64decode(message.get("media", {}).get("payload", ""))
                    if payload:
                        self.received.append({"event": "media", "bytes": len(payload)})
                        self._playout.media(payload, now)
                elif event == "mark":
                    self._playout.mark(str(message.get("mark", {}).get("name", "")), now)
                elif event == "clear":
                    self._playout.clear(now)
        except ConnectionClosed:
            pass
        self._playout.tick(time.monotonic() + 3600)  # whatever was playing has stopped
        self._bot_closed()

    async def _stream(self) -> None:
        """Send 20 ms media messages on a fixed clock until the call ends."""
        opts = self.options
        t0 = self.timeline.t0 or time.monotonic()
        interval = _CHUNK_MS / 1000 / opts.speed
        filler = self.script.filler or _SILENCE * _CHUNK_BYTES
        filler_pos = 0
        turns = list(self.script.turns)
        current: CallerTurn | None = None
        pos = 0
        last_end = t0  # monotonic end of the caller's last speech
        finished_at: float | None = None
        while self.ended_by is None:
            now = time.monotonic()
            self._playout.tick(now)
            await self._flush_echoes()
            if current is None and turns and self._ready(turns[0], now, last_end, t0):
                current, pos = turns.pop(0), 0
                if current.dtmf:
                    await self._press(current)
                    last_end, current = time.monotonic(), None
                else:
                    last_end = self._place(current)
            if current is not None:
                chunk = current.audio[pos:pos + _CHUNK_BYTES]
                pos += _CHUNK_BYTES
                if pos >= len(current.audio):
                    current = None
            else:
                chunk = filler[filler_pos:filler_pos + _CHUNK_BYTES]
                filler_pos = (filler_pos + _CHUNK_BYTES) % max(1, len(filler) - _CHUNK_BYTES)
            await self._media(chunk.ljust(_CHUNK_BYTES, _SILENCE))
            if current is None and not turns and self._done(now, last_end, finished_at):
                break
            if current is None and not turns and finished_at is None:
                finished_at = now
            self._chunk += 1
            due = t0 + self._chunk * interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        await self._flush_echoes()
        if self.ended_by is None:
            await self.hang_up()

    def _done(self, now: float, last_end: float, finished_at: float | None) -> bool:
        """After the last turn: has the caller listened long enough to hang up?"""
        opts = self.options
        if finished_at is None:
            return False
        quiet = self._playout.quiet_since(now)
        if quiet is None:
            return False
        replied = self._playout.replied_after(last_end)
        if opts.caller_hangs_up:
            return (replied and now - quiet >= opts.reply_pause_s / opts.speed) \
                or now - finished_at > opts.reply_timeout_s / opts.speed
        return now - max(finished_at, quiet) > opts.hangup_wait_s / opts.speed

    def _ready(self, turn: CallerTurn, now: float, last_end: float, t0: float) -> bool:
        """Whether the caller would start ``turn`` now."""
        opts = self.options
        speed = opts.speed
        timeout = opts.reply_timeout_s if last_end > t0 else opts.greeting_wait_s
        if not self._playout.replied_after(last_end) and now - last_end > timeout / speed:
            return True  # the bot said nothing: go on
        if now - last_end > _GIVE_UP_S / speed:
            return True  # a bot that never stops talking: speak anyway
        if turn.barge_in:
            started = self._playout.span_start
            return (started is not None and started > last_end and self._playout.speaking(now)
                    and now - started >= opts.barge_in_after_s / speed)
        quiet = self._playout.quiet_since(now)
        if quiet is None or not self._playout.replied_after(last_end):
            return False  # the bot is talking, or has not answered yet
        return now - quiet >= opts.reply_pause_s / speed

    def _place(self, turn: CallerTurn) -> float:
        """Log where ``turn``'s speech falls; returns the monotonic time it ends."""
        t_call = self._chunk * _CHUNK_MS / 1000  # call time of this chunk's first sample
        start = t_call + turn.speech_start_ms / 1000
        end = t_call + turn.speech_end_ms / 1000
        placed = PlacedTurn(turn.index, turn.text, turn.tags, round(start, 3), round(end, 3))
        self.timeline.turns.append(placed)
        t0 = self.timeline.t0 or 0.0
        speed = self.options.speed
        loop = asyncio.get_running_loop()
        for kind, at in (("speech_start", start), ("speech_end", end)):
            delay = t0 + at / speed - time.monotonic()
            loop.call_later(max(0.0, delay), self._log_speech, kind, turn, t0 + at / speed)
        return t0 + end / speed

    def _log_speech(self, kind: str, turn: CallerTurn, at: float) -> None:
        self.timeline.add("caller", kind, at, index=turn.index, text=turn.text,
                          tags=list(turn.tags))

    async def _press(self, turn: CallerTurn) -> None:
        t_call = self._chunk * _CHUNK_MS / 1000
        self.timeline.turns.append(PlacedTurn(turn.index, turn.text, turn.tags, t_call,
                                              t_call, dtmf=True))
        self.timeline.add("caller", "dtmf_sent", digits=turn.dtmf)
        for digit in turn.dtmf:
            await self._send({"event": "dtmf", "streamSid": self.stream_sid,
                              "sequenceNumber": self._next_seq(),
                              "dtmf": {"track": "inbound_track", "digit": digit}})

    async def _media(self, chunk: bytes) -> None:
        self.timeline.caller_audio += chunk
        await self._send({
            "event": "media", "sequenceNumber": self._next_seq(),
            "streamSid": self.stream_sid,
            "media": {"track": "inbound", "chunk": str(self._chunk + 1),
                      "timestamp": str(self._chunk * _CHUNK_MS),
                      "payload": base64.b64encode(chunk).decode()}})

    async def hang_up(self) -> None:
        """The caller hangs up: Twilio sends ``stop`` and closes the stream."""
        if self.ws is None or self.ended_by is not None:
            return
        self.ended_by = "caller"
        self.timeline.add("caller", "stop_sent")
        with contextlib.suppress(ConnectionClosed):
            await self._send({"event": "stop", "sequenceNumber": self._next_seq(),
                              "streamSid": self.stream_sid,
                              "stop": {"accountSid": self.account_sid,
                                       "callSid": self.call_sid}})
            await asyncio.sleep(0.2)
            await self.ws.close()
