"""The call's report folder: ``events.json`` and a self-contained ``timeline.html``.

The picture is one inline SVG (no scripts, no network): the caller's waveform with the
ground-truth turns, the service's turns (start, candidates, continuations, end with its
latency), the bot's audio as the caller heard it, barge-ins (``clear``) and fallback spans.
Hover any mark for its details.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..g711 import ulaw_decode
from .timeline import CallSummary, CallTimeline, TimelineEvent

__all__ = ["write_report"]

_PX_PER_S = 60
_LEFT = 110
_LANES = {"caller": (30, 90), "turns": (140, 70), "bot": (230, 70), "fallback": (320, 20)}
_HEIGHT = 370
_LANE_LABELS = {"caller": "caller audio", "turns": "Reson8 turns", "bot": "bot audio",
                "fallback": "fallback"}


def _envelope(mulaw: bytes, columns: int, samples_per_col: int) -> list[tuple[float, float]]:
    if not mulaw or columns <= 0:
        return []
    pcm = np.frombuffer(ulaw_decode(mulaw), dtype="<i2").astype(np.float32) / 32768.0
    out: list[tuple[float, float]] = []
    for c in range(columns):
        seg = pcm[c * samples_per_col:(c + 1) * samples_per_col]
        if seg.size == 0:
            break
        out.append((float(seg.min()), float(seg.max())))
    return out


def _x(t: float) -> float:
    return round(_LEFT + t * _PX_PER_S, 1)


def _title(text: str) -> str:
    return f"<title>{html.escape(text)}</title>"


def _wave_path(env: list[tuple[float, float]], x0: float, mid: float, half: float) -> str:
    """Min/max columns, scaled x2.5 (speech peaks near -10 dBFS) and kept inside the lane."""
    def y(v: float) -> float:
        return mid - max(-1.0, min(1.0, v * 2.5)) * half * 0.95

    return "".join(f"M{x0 + i:.1f},{y(hi):.1f}V{y(lo):.1f}" for i, (lo, hi) in enumerate(env))


def _svg(timeline: CallTimeline, summary: CallSummary) -> str:
    duration = max(summary.duration_s, len(timeline.caller_audio) / 8000, 1.0) + 0.5
    width = int(_LEFT + duration * _PX_PER_S + 40)
    samples_per_px = 8000 // _PX_PER_S
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{_HEIGHT}" '
        f'viewBox="0 0 {width} {_HEIGHT}" font-family="sans-serif" font-size="11">']
    for name, (y, h) in _LANES.items():
        out.append(f'<rect x="{_LEFT}" y="{y}" width="{width - _LEFT}" height="{h}" '
                   f'fill="#f7f7f9"/><text x="8" y="{y + h / 2 + 4}" fill="#333">'
                   f'{_LANE_LABELS[name]}</text>')
    for s in range(int(duration) + 1):
        x = _x(s)
        major = s % 5 == 0
        out.append(f'<line x1="{x}" y1="20" x2="{x}" y2="{_HEIGHT - 20}" '
                   f'stroke="{"#ccc" if major else "#eee"}"/>')
        if major:
            out.append(f'<text x="{x}" y="{_HEIGHT - 6}" text-anchor="middle" '
                       f'fill="#666">{s}s</text>')
    # caller: ground truth spans, then the waveform
    cy, ch = _LANES["caller"]
    for turn in timeline.turns:
        color = "#fde2b8" if "barge_in" in turn.tags else "#d6ecff"
        w = max(2.0, (turn.end_s - turn.start_s) * _PX_PER_S)
        label = "keypad " + turn.text if turn.dtmf else turn.text
        out.append(f'<rect x="{_x(turn.start_s)}" y="{cy}" width="{w:.1f}" height="{ch}" '
                   f'fill="{color}">{_title(f"caller turn {turn.index + 1}: {label}")}</rect>')
        out.append(f'<text x="{_x(turn.start_s) + 2}" y="{cy + 11}" fill="#235">'
                   f'{html.escape(label[:int(w / 6) + 8])}</text>')
    env = _envelope(bytes(timeline.caller_audio), int(duration * _PX_PER_S), samples_per_px)
    out.append(f'<path d="{_wave_path(env, _LEFT, cy + ch / 2, ch / 2)}" stroke="#2a6fb0" '
               'stroke-width="1"/>')
    # turns lane
    ty, th = _LANES["turns"]
    open_at: float | None = None
    for e in timeline.events:
        if e.kind == "turn_start":
            open_at = e.t
        elif e.kind == "turn_end":
            start = open_at if open_at is not None else e.t
            text = str(e.data.get("text", ""))
            out.append(f'<rect x="{_x(start)}" y="{ty + 18}" width="'
                       f'{max(2.0, (e.t - start) * _PX_PER_S):.1f}" height="{th - 36}" '
                       f'fill="#ffe9a8" stroke="#c9a227">'
                       f'{_title(f"turn {start:.2f}-{e.t:.2f} s: {text}")}</rect>')
            open_at = None
    for e in timeline.events:
        out.extend(_turn_mark(e, ty, th, timeline))
    # bot lane: playback spans, waveform, clears
    by, bh = _LANES["bot"]
    start_t: float | None = None
    for e in timeline.events:
        if e.kind == "bot_speech_start":
            start_t = e.t
        elif e.kind == "bot_speech_stop" and start_t is not None:
            out.append(f'<rect x="{_x(start_t)}" y="{by}" width="'
                       f'{max(1.0, (e.t - start_t) * _PX_PER_S):.1f}" height="{bh}" '
                       f'fill="#eadcf7">{_title(f"bot audio {start_t:.2f}-{e.t:.2f} s")}'
                       '</rect>')
            start_t = None
    for t_start, audio in timeline.bot_audio:
        env = _envelope(audio, max(1, len(audio) // samples_per_px), samples_per_px)
        out.append(f'<path d="{_wave_path(env, _x(t_start), by + bh / 2, bh / 2)}" '
                   'stroke="#7b3fb5" stroke-width="1"/>')
    for e in timeline.of("bot_reply"):
        text = str(e.data.get("text", ""))
        out.append(f'<text x="{_x(e.t) + 2}" y="{by + bh - 4}" fill="#53287a">'
                   f'{html.escape(text[:60] + ("..." if len(text) > 60 else ""))}'
                   f'{_title("bot reply: " + text)}</text>')
    for e in timeline.of("clear_received"):
        if not e.data.get("during_speech"):
            continue
        out.append(f'<line x1="{_x(e.t)}" y1="{cy}" x2="{_x(e.t)}" y2="{by + bh}" '
                   f'stroke="#d62728" stroke-width="2">'
                   f'{_title(_clear_text(e))}'
                   f'</line><text x="{_x(e.t) + 3}" y="{by + 12}" fill="#d62728">barge-in'
                   '</text>')
    # fallback spans
    fy, fh = _LANES["fallback"]
    fb_start: float | None = None
    for e in timeline.events:
        if e.kind == "fallback_started":
            fb_start = e.t
        elif e.kind == "fallback_ended" and fb_start is not None:
            out.append(f'<rect x="{_x(fb_start)}" y="{fy}" width="'
                       f'{(e.t - fb_start) * _PX_PER_S:.1f}" height="{fh}" fill="#f4a3a3"/>')
            fb_start = None
    if fb_start is not None:
        out.append(f'<rect x="{_x(fb_start)}" y="{fy}" width="'
                   f'{(duration - fb_start) * _PX_PER_S:.1f}" height="{fh}" fill="#f4a3a3"/>')
    out.append("</svg>")
    return "".join(out)


def _clear_text(e: TimelineEvent) -> str:
    return (f"barge-in at {e.t:.2f} s: clear, {e.data.get('dropped_ms')} ms of queued bot "
            "audio dropped")


def _turn_mark(e: TimelineEvent, ty: int, th: int, timeline: CallTimeline) -> list[str]:
    x = _x(e.t)
    if e.kind == "turn_start":
        return [f'<path d="M{x},{ty + 4}l5,8h-10z" fill="#2ca02c">'
                f'{_title(f"turn_start {e.t:.2f} s")}</path>']
    if e.kind == "candidate":
        text = str(e.data.get("text", ""))
        return [f'<circle cx="{x}" cy="{ty + th / 2}" r="4" fill="#ff7f0e">'
                f'{_title(f"turn_end_candidate {e.t:.2f} s: {text}")}</circle>']
    if e.kind == "continuation":
        return [f'<path d="M{x - 4},{ty + th / 2 - 4}l8,8M{x + 4},{ty + th / 2 - 4}l-8,8" '
                f'stroke="#9467bd" stroke-width="2">'
                f'{_title(f"turn_continuation {e.t:.2f} s")}</path>']
    if e.kind == "turn_end":
        started = [p for p in timeline.turns if p.start_s <= e.t and not p.dtmf]
        if started and e.t < started[-1].end_s:
            label = "early"  # the caller was still talking
        else:
            done = [p for p in timeline.turns if p.end_s <= e.t and not p.dtmf]
            label = f"{(e.t - done[-1].end_s) * 1000:.0f} ms" if done else ""
        return [f'<path d="M{x},{ty + th - 4}l5,-8h-10z" fill="#d62728">'
                f'{_title("turn_end {:.2f} s: {}".format(e.t, e.data.get("text", "")))}</path>',
                f'<text x="{x + 3}" y="{ty + th - 2}" fill="#a00">{label}</text>']
    return []


_CSS = """body{font-family:sans-serif;margin:24px;color:#222}
.scroll{overflow-x:auto;border:1px solid #ddd;padding:4px}
table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #ddd;padding:4px 8px;
text-align:left;font-size:13px}th{background:#f0f0f3}.num{text-align:right}
.legend span{display:inline-block;margin-right:16px;font-size:12px}
.sw{display:inline-block;width:12px;height:12px;vertical-align:middle;margin-right:4px}"""


def _table(summary: CallSummary) -> str:
    def ms(v: float | None) -> str:
        return "&ndash;" if v is None else f"{v * 1000:.0f} ms"

    rows = []
    for r in summary.turns:
        notes = []
        if r.barge_in:
            notes.append("barge-in" + (f", bot stopped {ms(r.stopped_bot_s)} after onset"
                                       if r.stopped_bot_s is not None else ""))
        if r.continuations:
            notes.append(f"{r.continuations} continuation(s)")
        if r.early_ends:
            notes.append(f"{r.early_ends} early end(s)")
        rows.append(f"<tr><td>{r.index + 1}</td><td>{html.escape(r.said)}</td>"
                    f"<td>{html.escape(r.heard or '(no turn_end)')}</td>"
                    f"<td class=num>{ms(r.end_latency_s)}</td>"
                    f"<td class=num>{ms(r.response_latency_s)}</td>"
                    f"<td>{html.escape('; '.join(notes))}</td></tr>")
    return ("<table><tr><th>#</th><th>caller said (ground truth)</th><th>turn text</th>"
            "<th>end of speech &rarr; turn_end</th><th>end of speech &rarr; bot audio</th>"
            "<th>notes</th></tr>" + "".join(rows) + "</table>")


def write_report(folder: Path, timeline: CallTimeline, summary: CallSummary,
                 meta: dict[str, Any]) -> Path:
    """Write ``events.json`` and ``timeline.html`` into ``folder``; returns the HTML path."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {"meta": meta, "summary": summary.as_dict(), **timeline.to_json()}
    (folder / "events.json").write_text(json.dumps(data, indent=1, default=str))
    services = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>"
                       for k, v in (meta.get("services") or {}).items())
    headline = (
        f"{summary.detected}/{sum(1 for r in summary.turns if not r.dtmf)} turns detected; "
        f"end of speech &rarr; turn_end median "
        f"{(summary.end_latency_median_s or 0) * 1000:.0f} ms, p90 "
        f"{(summary.end_latency_p90_s or 0) * 1000:.0f} ms; barge-ins {summary.barge_ins}; "
        f"continuations {summary.continuations}; fallback switches {summary.fallbacks}")
    legend = "".join(
        f'<span><i class=sw style="background:{c}"></i>{html.escape(t)}</span>'
        for c, t in (("#d6ecff", "caller turn (ground truth)"), ("#fde2b8", "barge-in turn"),
                     ("#2ca02c", "turn_start"), ("#ff7f0e", "turn_end_candidate"),
                     ("#9467bd", "turn_continuation"), ("#d62728", "turn_end / clear"),
                     ("#eadcf7", "bot audio heard by the caller"), ("#f4a3a3", "fallback")))
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>reson8-voice call "
            f"{html.escape(str(meta.get('started_at', '')))}</title><style>{_CSS}</style>"
            f"</head><body><h2>reson8-voice demo call</h2><p>{headline}</p><ul>{services}</ul>"
            f"<div class=legend>{legend}</div><div class=scroll>{_svg(timeline, summary)}"
            f"</div>{_table(summary)}<p style='color:#777;font-size:12px'>Generated "
            f"{dt.datetime.now().isoformat(timespec='seconds')}; times are call seconds "
            "(caller audio streamed). Hover marks for details; the raw log is events.json."
            "</p></body></html>")
    path = folder / "timeline.html"
    path.write_text(page)
    return path
