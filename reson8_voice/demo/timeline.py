"""The call's event log on one clock, printed live, and the numbers drawn from it.

Every event carries the *call time*: seconds of caller audio streamed when it happened
(``(monotonic - t0) * speed``; at real time, wall seconds since the first media message).
Caller-side events (ground-truth speech, bot audio heard, ``clear`` received) come from the
simulated caller; turn and bot events from the bot's observer in the same process.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

__all__ = ["CallSummary", "CallTimeline", "PlacedTurn", "TimelineEvent", "TurnResult",
           "TerminalPrinter", "summarize"]

#: bot observer kinds that come from the turn-taking service
_RESON8_KINDS = {"turn_start", "candidate", "continuation", "turn_end", "fallback_started",
                 "fallback_ended"}


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One thing that happened, at call time ``t`` (seconds)."""

    t: float
    source: str  # "caller" | "reson8" | "bot"
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PlacedTurn:
    """A caller turn as streamed: where its voiced audio fell on the call clock."""

    index: int
    text: str
    tags: tuple[str, ...]
    start_s: float
    end_s: float
    dtmf: bool = False


class CallTimeline:
    """Collects events from the caller and the bot on one clock."""

    def __init__(self, speed: float = 1.0,
                 listener: Callable[[TimelineEvent], None] | None = None) -> None:
        """Create an empty log; ``listener`` sees each event as it is added."""
        self.speed = speed
        self.t0: float | None = None
        self.events: list[TimelineEvent] = []
        self.turns: list[PlacedTurn] = []
        self.caller_audio = bytearray()  # mu-law as streamed, call time 0 = byte 0
        self.bot_audio: list[tuple[float, bytes]] = []  # (call time, mu-law) as played
        self.listener = listener

    def start_clock(self, t0: float | None = None) -> None:
        """Call time 0 is now (or monotonic ``t0``)."""
        self.t0 = time.monotonic() if t0 is None else t0

    def call_time(self, monotonic: float | None = None) -> float:
        """Call time of a ``time.monotonic()`` reading (now by default)."""
        now = time.monotonic() if monotonic is None else monotonic
        return 0.0 if self.t0 is None else (now - self.t0) * self.speed

    def add(self, source: str, kind: str, at: float | None = None,
            **data: Any) -> TimelineEvent:
        """Log an event at monotonic time ``at`` (default now)."""
        event = TimelineEvent(round(self.call_time(at), 4), source, kind, data)
        self.events.append(event)
        if self.listener is not None:
            self.listener(event)
        return event

    def bot_observer(self, kind: str, data: dict[str, Any]) -> None:
        """The Twilio bot's observer: ``data["t"]`` is its monotonic timestamp."""
        payload = dict(data)
        at = payload.pop("t", None)
        source = "reson8" if kind in _RESON8_KINDS else "bot"
        self.add(source, kind, at if isinstance(at, float) else None, **payload)

    def of(self, *kinds: str) -> list[TimelineEvent]:
        """Events of the given kinds, in order."""
        return [e for e in self.events if e.kind in kinds]

    def to_json(self) -> dict[str, Any]:
        """Events and ground truth as JSON-ready data."""
        return {"speed": self.speed,
                "turns": [asdict(t) for t in self.turns],
                "events": [asdict(e) for e in self.events]}


@dataclass(frozen=True, slots=True)
class TurnResult:
    """How the bot handled one caller turn."""

    index: int
    said: str
    heard: str | None
    start_s: float
    end_s: float
    end_latency_s: float | None  # speech end -> turn_end
    response_latency_s: float | None  # speech end -> bot audio playing at the caller
    early_ends: int  # turn_end events before the caller had finished
    continuations: int
    barge_in: bool
    stopped_bot_s: float | None  # speech start -> clear received (barge-in reaction)
    dtmf: bool = False


@dataclass(frozen=True, slots=True)
class CallSummary:
    """The numbers a developer asks for after a call."""

    turns: tuple[TurnResult, ...]
    detected: int
    end_latency_median_s: float | None
    end_latency_p90_s: float | None
    response_latency_median_s: float | None
    response_latency_p90_s: float | None
    barge_ins: int
    clears: int
    continuations: int
    early_ends: int
    fallbacks: int
    ended_by: str | None
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo), 3)


def summarize(timeline: CallTimeline) -> CallSummary:
    """Match the service's turns to the ground truth and measure them.

    A ``turn_end`` belongs to the last caller turn that had started before it. Ends that
    arrive before the caller finished speaking are early (the bot would have cut in); the
    latency is that of the first ``turn_end`` after the end of speech.
    """
    ends = timeline.of("turn_end")
    speech = [e for e in timeline.of("bot_speech_start")]
    clears = [e for e in timeline.of("clear_received") if e.data.get("during_speech")]
    rows: list[TurnResult] = []
    turns = timeline.turns
    for i, turn in enumerate(turns):
        next_start = turns[i + 1].start_s if i + 1 < len(turns) else float("inf")
        mine = [e for e in ends if turn.start_s <= e.t < next_start]
        early = [e for e in mine if e.t < turn.end_s]
        late = [e for e in mine if e.t >= turn.end_s]
        final = late[0] if late else None
        text = str(final.data.get("text", "")) if final else None
        reply = next((e.t for e in speech if turn.end_s <= e.t < next_start), None)
        cont = [e for e in timeline.of("continuation") if turn.start_s <= e.t < next_start]
        barge = "barge_in" in turn.tags
        cleared = next((e.t for e in clears if turn.start_s <= e.t < next_start), None)
        rows.append(TurnResult(
            index=turn.index, said=turn.text, heard=text, start_s=turn.start_s,
            end_s=turn.end_s,
            end_latency_s=round(final.t - turn.end_s, 3) if final else None,
            response_latency_s=round(reply - turn.end_s, 3) if reply is not None else None,
            early_ends=len(early), continuations=len(cont), barge_in=barge,
            stopped_bot_s=round(cleared - turn.start_s, 3) if cleared is not None else None,
            dtmf=turn.dtmf))
    spoken = [r for r in rows if not r.dtmf]
    end_lat = [r.end_latency_s for r in spoken if r.end_latency_s is not None]
    resp_lat = [r.response_latency_s for r in spoken if r.response_latency_s is not None]
    ended = timeline.of("hangup", "caller_hangup")
    last = timeline.events[-1].t if timeline.events else 0.0
    return CallSummary(
        turns=tuple(rows),
        detected=sum(1 for r in spoken if r.heard is not None),
        end_latency_median_s=round(statistics.median(end_lat), 3) if end_lat else None,
        end_latency_p90_s=_percentile(end_lat, 0.9),
        response_latency_median_s=round(statistics.median(resp_lat), 3) if resp_lat else None,
        response_latency_p90_s=_percentile(resp_lat, 0.9),
        barge_ins=sum(1 for r in rows if r.stopped_bot_s is not None),
        clears=len(timeline.of("clear_received")),
        continuations=len(timeline.of("continuation")),
        early_ends=sum(r.early_ends for r in rows),
        fallbacks=len(timeline.of("fallback_started")),
        ended_by=("bot" if ended and ended[0].kind == "hangup" else
                  "caller" if ended else None),
        duration_s=round(last, 3))


# -- terminal output ---------------------------------------------------------------------

_COLORS = {"caller": "36", "reson8": "33", "bot": "35", "warn": "31", "dim": "2"}


class TerminalPrinter:
    """Prints the timeline as it happens, one readable line per event that matters."""

    def __init__(self, stream: TextIO | None = None, color: bool | None = None,
                 verbose: bool = False) -> None:
        """Print to ``stream`` (stdout); colour when it is a terminal."""
        self.stream = stream or sys.stdout
        self.color = self.stream.isatty() if color is None else color
        self.verbose = verbose
        self.turns: list[PlacedTurn] = []

    def _paint(self, text: str, tone: str) -> str:
        return f"\x1b[{_COLORS[tone]}m{text}\x1b[0m" if self.color else text

    def line(self, text: str = "") -> None:
        """Print a plain line."""
        print(text, file=self.stream, flush=True)

    def __call__(self, event: TimelineEvent) -> None:
        """Print ``event`` if it is worth a line."""
        text = self.describe(event)
        if text is None:
            return
        tone = "warn" if event.kind in ("clear_received", "fallback_started",
                                        "bot_interrupted") else event.source
        who = {"caller": "caller", "reson8": "turns ", "bot": "bot   "}.get(event.source,
                                                                         event.source)
        stamp = f"{max(event.t, 0.0):7.2f}s"
        self.line(f"{self._paint(stamp, 'dim')}  {self._paint(who, tone)}  {text}")

    def _latency(self, t: float) -> str:
        done = [p for p in self.turns if p.end_s <= t]
        if not done:
            return ""
        turn = done[-1]
        return f"  ({(t - turn.end_s) * 1000:.0f} ms after end of speech)"

    def describe(self, event: TimelineEvent) -> str | None:
        """The line for ``event`` (None: not printed)."""
        d, k = event.data, event.kind
        if k == "speech_start":
            mark = " [barge-in]" if "barge_in" in d.get("tags", ()) else ""
            hes = " [hesitates]" if "hesitation" in d.get("tags", ()) else ""
            return f'starts talking{mark}{hes}: "{d.get("text", "")}"'
        if k == "speech_end":
            return "stops talking (ground truth end of speech)"
        if k == "dtmf_sent":
            return f"presses keys {d.get('digits', '')}"
        if k == "turn_start":
            return "turn_start"
        if k == "candidate":
            return f'turn_end_candidate "{d.get("text", "")}"'
        if k == "continuation":
            return "turn_continuation (the caller went on: candidate withdrawn)"
        if k == "turn_end":
            flag = " (cut short)" if d.get("cut_short") else ""
            return f'turn_end "{d.get("text", "")}"{flag}{self._latency(event.t)}'
        if k == "fallback_started":
            return f"fallback: local VAD takes over ({d.get('reason', '')})"
        if k == "fallback_ended":
            return f"fallback over: service back after {d.get('outage_s', 0):.1f} s"
        if k == "bot_reply":
            return f'replies "{d.get("text", "")}"'
        if k == "bot_speech_start":
            return "bot audio starts playing at the caller"
        if k == "bot_speech_stop":
            return "bot audio stops" + (" (cut by clear)" if d.get("cleared") else "")
        if k == "clear_received":
            if not d.get("during_speech"):
                return "Twilio clear received (the bot was not speaking)" \
                    if self.verbose else None
            return (f"barge-in: Twilio clear received, {d.get('dropped_ms', 0):.0f} ms of "
                    "queued bot audio dropped")
        if k == "bot_interrupted":
            heard = d.get("heard") or "nothing"
            return f'interrupted; the caller heard: "{heard}"'
        if k == "hangup":
            return f"hangs up ({d.get('reason', '')}; farewell heard: " \
                   f"{'yes' if d.get('farewell_heard') else 'no'})"
        if k == "caller_hangup":
            return "the caller hung up"
        if k == "stop_sent":
            return "hangs up (Twilio stop)"
        if k == "socket_closed":
            return f"media stream closed by the bot (code {d.get('code')})"
        if self.verbose and k in ("mark_heard", "mark_flushed", "mark_echoed"):
            return f"{k} {d.get('name', '')}"
        return None

    def summary(self, summary: CallSummary) -> None:
        """The per-turn table and the headline numbers."""
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.0f} ms"

        self.line()
        self.line(f"{'#':>2}  {'caller said':<42} {'end->turn_end':>13} {'end->bot':>9}  "
                  "notes")
        for r in summary.turns:
            said = (r.said if len(r.said) <= 42 else r.said[:39] + "...")
            notes = []
            if r.dtmf:
                notes.append("keypad")
            if r.barge_in:
                notes.append(f"barge-in, bot stopped {ms(r.stopped_bot_s)} after onset"
                             if r.stopped_bot_s is not None else "barge-in (bot was silent)")
            if r.continuations:
                notes.append(f"{r.continuations} continuation(s)")
            if r.early_ends:
                notes.append(f"{r.early_ends} early end(s)")
            if r.heard is None:
                notes.append("no turn_end")
            elif not r.dtmf:
                notes.append(f'heard "{r.heard}"')
            self.line(f"{r.index + 1:>2}  {said:<42} {ms(r.end_latency_s):>13} "
                      f"{ms(r.response_latency_s):>9}  {'; '.join(notes)}")
        spoken = [r for r in summary.turns if not r.dtmf]
        self.line()
        self.line(f"turns detected       {summary.detected}/{len(spoken)}")
        self.line(f"end of speech -> turn_end    median {ms(summary.end_latency_median_s)}, "
                  f"p90 {ms(summary.end_latency_p90_s)}")
        self.line(f"end of speech -> bot audio   median "
                  f"{ms(summary.response_latency_median_s)}, "
                  f"p90 {ms(summary.response_latency_p90_s)}")
        silent = summary.clears - summary.barge_ins
        self.line(f"barge-ins            {summary.barge_ins} (Twilio clear messages: "
                  f"{summary.clears}, {silent} of them while the bot was silent)")
        self.line(f"continuations        {summary.continuations}; early turn ends "
                  f"{summary.early_ends}; fallback switches {summary.fallbacks}")
        self.line(f"call ended by        {summary.ended_by or '?'} after "
                  f"{summary.duration_s:.1f} s")
