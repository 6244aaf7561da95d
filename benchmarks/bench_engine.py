"""The embedded turn engine against pipecat's own local turn stack, plus server concurrency and
memory (issue 3, "Speed").

Run: ``python benchmarks/bench_engine.py`` (``--quick`` for a smoke run under a minute; or
import and call :func:`main`). Targets are printed with PASS/MISS, never asserted.

1. Latency per fixture turn, from the ground-truth speech end (``Turn.end_ms``) to the
   decision. Both stacks run on the same 8 kHz audio in the same run, on a simulated
   real-time clock: audio frame *i* arrives at ``(i + 1) * 20 ms``; every bit of compute
   (VAD, model calls) advances the clock by the wall time it really took, and later audio
   waits behind it, as in a live session. So latency = (stream time of the decision -
   speech end) + the wall time of the model calls on the critical path.

   * reson8: :class:`TurnEngine` with the real :class:`LocalModels` (Whisper tiny.en +
     smart-turn v3): ``turn_end_candidate`` and ``turn_end``.
   * pipecat 1.14's default local stack, emulated faithfully from its source with its real
     components: ``SileroVADAnalyzer`` (default params, 8 kHz as pipecat runs it) in the
     user aggregator, ``VADUserTurnStartStrategy``, and
     ``TurnAnalyzerUserTurnStopStrategy(LocalSmartTurnAnalyzerV3)``: at each VAD stop the
     analyzer judges the turn; complete ends it, incomplete waits for more speech or for the
     analyzer's 3 s silence timeout (``SmartTurnParams.stop_secs``), and the controller's
     ``user_turn_stop_timeout`` (5 s) backs both. Transcripts are taken as instant
     (``wait_for_transcript=False``): pipecat's best case. The smart-turn analyzer's
     ``time.monotonic`` is pointed at the simulated clock so its speech buffer is sliced
     as it would be live.

   The fixtures' gaps after each turn are stretched to >= 4 s with the file's own line
   noise: on a call the caller waits for the answer, and pipecat's stack, which waits up to
   3 s for its fallback, would otherwise merge turns (their latency could not be measured).

   Also counted: intra-turn pauses cut (a turn end decided inside a turn, before its last
   segment began) for both stacks, and starts on no speech (the noise-only fixture).

2. Concurrency: the embedded server in a subprocess (``python -m reson8_voice serve
   --port 0``, real models, 2 inference workers) with N simultaneous real-time 8 kHz mu-law
   sessions from this process, half of them talking (a ~15 s clip with two turns), the
   others sending line noise; the talking sessions' clip starts are spread over 5 s so their
   turn ends do not all coincide (``--spread 0``: all at once). N = 2, 4, 8, 12, ... until
   the candidate p90 (speech end -> ``turn_end_candidate`` received) passes 1 s: the knee.
   Target: >= 8 sessions.

3. Memory: server RSS after start (models loaded), and the RSS increment per open session
   (K sessions each holding an open turn). Targets: <= 400 MB base, <= 5 MB per session.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    RATE,
    Clip,
    Score,
    ServerProcess,
    bench_loop,
    fixture_clip,
    fmt_s,
    fmt_x,
    frames_of,
    line_noise,
    machine_line,
    med,
    p90,
    paced,
    quiet_logs,
    run_loop,
    score_turns,
    spread_clip,
    summary_row,
    table,
    verdict,
)

FULL_FIXTURES: tuple[tuple[str, int | None], ...] = (
    ("call_restaurant", None), ("call_support", None), ("call_delivery", None),
    ("demo_call", None), ("long_turn", None), ("short_answers", None), ("noise_only", None))
QUICK_FIXTURES: tuple[tuple[str, int | None], ...] = (("call_restaurant", 3),
                                                      ("short_answers", None))

#: every gap after a turn is stretched to this (see :func:`_common.spread_clip`)
MIN_GAP_MS = 4000

TARGET_END_MEDIAN = 0.45
TARGET_END_P90 = 0.8
TARGET_CAND_MEDIAN = 0.35
TARGET_SESSIONS = 8
TARGET_CAND_P90_CONC = 1.0
TARGET_BASE_MB = 400.0
TARGET_SESSION_MB = 5.0


@dataclass
class Run:
    """Decisions of one stack on one clip: (stream ms, simulated wall ms) per kind."""

    starts: list[tuple[float, float]] = field(default_factory=list)
    candidates: list[tuple[float, float]] = field(default_factory=list)
    ends: list[tuple[float, float]] = field(default_factory=list)
    jobs: dict[str, list[float]] = field(default_factory=dict)  # kind -> wall ms each

    def score(self, clip: Clip, *, wall: bool = True) -> Score:
        k = 1 if wall else 0
        return score_turns(clip.turns, starts=[x[k] for x in self.starts],
                           candidates=[x[k] for x in self.candidates],
                           ends=[x[k] for x in self.ends])


# --------------------------------------------------------------------------------------
# reson8: the engine with real models on a simulated real-time clock
# --------------------------------------------------------------------------------------


def run_reson8(models: Any, clip: Clip) -> Run:
    """Drive a :class:`TurnEngine` frame by frame; jobs run inline with the real models."""
    from reson8_voice.engine.turn_engine import EndOfTurnJob, RecognizeJob, TurnEngine
    from reson8_voice.events import TurnEnd, TurnEndCandidate, TurnStart

    engine = TurnEngine(sample_rate=RATE)
    run = Run(jobs={"recognize": [], "end_of_turn": []})
    clock = 0.0

    def drain(base: float, t0: float) -> None:
        while (item := engine.next()) is not None:
            if isinstance(item, RecognizeJob | EndOfTurnJob):
                tj = time.perf_counter()
                result = models.run(item)
                kind = "recognize" if isinstance(item, RecognizeJob) else "end_of_turn"
                run.jobs[kind].append((time.perf_counter() - tj) * 1000)
                engine.resolve(item, result)
                continue
            at = (engine.stream_ms, base + (time.perf_counter() - t0) * 1000)
            if isinstance(item, TurnStart):
                run.starts.append(at)
            elif isinstance(item, TurnEndCandidate):
                run.candidates.append(at)
            elif isinstance(item, TurnEnd):
                run.ends.append(at)

    for i, frame in enumerate(frames_of(clip.pcm16(), RATE * 20 // 1000 * 2)):
        base = max(clock, (i + 1) * 20.0)
        t0 = time.perf_counter()
        engine.feed(frame)
        drain(base, t0)
        clock = base + (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    engine.end_of_stream()
    drain(clock, t0)
    return run


# --------------------------------------------------------------------------------------
# pipecat 1.14's default local stack, emulated on the same clock
# --------------------------------------------------------------------------------------


class _SimClock:
    """Stands in for the ``time`` module inside pipecat's smart-turn base class."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def monotonic(self) -> float:
        return self.now_s

    perf_counter = staticmethod(time.perf_counter)
    time = staticmethod(time.time)


class PipecatStack:
    """SileroVADAnalyzer + LocalSmartTurnAnalyzerV3 driven as pipecat's user aggregator does.

    Mirrors ``LLMUserAggregator.process_frame`` -> ``VADController`` (VAD frames are queued
    behind the audio frame that caused them) -> ``UserTurnController`` with
    ``VADUserTurnStartStrategy`` and ``TurnAnalyzerUserTurnStopStrategy`` (see
    ``pipecat/turns/user_stop/turn_analyzer_user_turn_stop_strategy.py``).
    """

    def __init__(self) -> None:
        import pipecat.audio.turn.smart_turn.base_smart_turn as bst
        from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3

        self._bst = bst
        self.clock = _SimClock()
        self.turn = LocalSmartTurnAnalyzerV3()
        self.turn.set_sample_rate(RATE)
        self.stop_timeout_ms = 5000.0  # LLMUserAggregatorParams.user_turn_stop_timeout

    async def run(self, clip: Clip) -> Run:
        from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState
        from pipecat.audio.vad.silero import SileroVADAnalyzer
        from pipecat.audio.vad.vad_analyzer import VADState

        vad = SileroVADAnalyzer()  # pipecat defaults: confidence 0.7, start/stop 0.2 s
        vad.set_sample_rate(RATE)
        self.turn.clear()
        real_time = self._bst.time
        self._bst.time = self.clock  # type: ignore[assignment]
        run = Run(jobs={"silero_vad": [], "smart_turn": []})
        vad_state = VADState.QUIET
        user_speaking = False  # UserTurnController._user_speaking
        strategy_speaking = False  # TurnAnalyzerUserTurnStopStrategy._vad_user_speaking
        turn_open = False
        turn_complete = False
        last_activity = 0.0
        clock = 0.0
        try:
            for i, frame in enumerate(frames_of(clip.pcm16(), RATE * 20 // 1000 * 2)):
                stream = (i + 1) * 20.0
                base = max(clock, stream)
                t0 = time.perf_counter()

                def now(base: float = base, t0: float = t0) -> float:
                    return base + (time.perf_counter() - t0) * 1000

                def stop(at: float, stream: float = stream) -> None:
                    nonlocal turn_open, turn_complete, last_activity
                    turn_open = False
                    turn_complete = False
                    last_activity = at
                    self.turn.clear()
                    run.ends.append((stream, at))

                # VADController: analyze the audio; a transition is queued as a VAD frame
                tv = time.perf_counter()
                new = await vad.analyze_audio(frame)
                run.jobs["silero_vad"].append((time.perf_counter() - tv) * 1000)
                transition = None
                if new != vad_state and new in (VADState.SPEAKING, VADState.QUIET):
                    transition, vad_state = new, new
                # the stop strategy sees the audio frame first (with the old speaking flag)
                self.clock.now_s = now() / 1000
                if self.turn.append_audio(frame, strategy_speaking) == EndOfTurnState.COMPLETE:
                    await self.turn.analyze_end_of_turn()  # buffer already cleared: no model
                    turn_complete = True
                    if turn_open and not user_speaking:
                        stop(now())
                # then the queued VAD frame
                if transition == VADState.SPEAKING:
                    user_speaking = True
                    last_activity = now()
                    if not turn_open:  # VADUserTurnStartStrategy
                        turn_open = True
                        turn_complete = False
                        run.starts.append((stream, now()))
                    self.turn.update_vad_start_secs(vad.params.start_secs)
                    strategy_speaking = True
                    turn_complete = False
                elif transition == VADState.QUIET:
                    user_speaking = False
                    strategy_speaking = False
                    last_activity = now()
                    run.candidates.append((stream, now()))  # VAD stop: the candidate analog
                    self.clock.now_s = now() / 1000
                    tj = time.perf_counter()
                    state, _ = await self.turn.analyze_end_of_turn()
                    run.jobs["smart_turn"].append((time.perf_counter() - tj) * 1000)
                    turn_complete = state == EndOfTurnState.COMPLETE
                    if turn_complete and turn_open:
                        stop(now())
                # UserTurnController's stop timeout
                if (turn_open and not user_speaking
                        and now() - last_activity >= self.stop_timeout_ms):
                    stop(now())
                clock = now()
        finally:
            self._bst.time = real_time
            await vad.cleanup()
        return run


# --------------------------------------------------------------------------------------
# part 1: latency
# --------------------------------------------------------------------------------------


def latency_part(fixtures: Sequence[tuple[str, int | None]]) -> None:
    """Both stacks on each (fixture, first n turns or all), gaps stretched."""
    from reson8_voice.engine.models import LocalModels

    t0 = time.perf_counter()
    models = LocalModels.load()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    stack = PipecatStack()
    pc_load_s = time.perf_counter() - t0
    print(f"models loaded: reson8 (Whisper tiny.en + smart-turn v3) {load_s:.1f} s, "
          f"pipecat smart-turn v3 {pc_load_s:.1f} s")

    ours, ours_stream, theirs, theirs_stream = Score(), Score(), Score(), Score()
    jobs: dict[str, list[float]] = {}
    per_fixture: list[list[str]] = []
    noise_starts = [0, 0]
    for name, max_turns in fixtures:
        clip = spread_clip(name, MIN_GAP_MS, max_turns)
        t0 = time.perf_counter()
        r = run_reson8(models, clip)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        p = asyncio.run(stack.run(clip))
        t_theirs = time.perf_counter() - t0
        for run in (r, p):
            for kind, times in run.jobs.items():
                jobs.setdefault(kind, []).extend(times)
        so, sp = r.score(clip), p.score(clip)
        ours.extend(so)
        ours_stream.extend(r.score(clip, wall=False))
        theirs.extend(sp)
        theirs_stream.extend(p.score(clip, wall=False))
        if not clip.turns:
            noise_starts[0] += len(r.starts)
            noise_starts[1] += len(p.starts)
        per_fixture.append([
            clip.name, str(len(clip.turns)),
            fmt_s(med([v / 1000 for v in so.values("end_ms")])),
            fmt_s(med([v / 1000 for v in sp.values("end_ms")])),
            f"{so.cuts}/{so.pauses}", f"{sp.cuts}/{sp.pauses}",
            f"{len(r.starts)}/{len(p.starts)}", f"{t_ours:.1f}/{t_theirs:.1f}"])

    table(["fixture", "turns", "reson8 end med", "pipecat end med", "reson8 cuts",
           "pipecat cuts", "starts r/p", "run s r/p"], per_fixture,
          "Per fixture (s; cuts = intra-turn pauses cut / pauses)")

    rows = [
        summary_row("reson8 turn_end_candidate", ours.values("candidate_ms"),
                    ours.missing("candidate_ms")),
        summary_row("reson8 turn_end", ours.values("end_ms"), ours.missing("end_ms")),
        summary_row("pipecat VAD stop (candidate analog)", theirs.values("candidate_ms"),
                    theirs.missing("candidate_ms")),
        summary_row("pipecat turn stop", theirs.values("end_ms"), theirs.missing("end_ms")),
        summary_row("reson8 turn_end, stream time only", ours_stream.values("end_ms")),
        summary_row("pipecat turn stop, stream time only", theirs_stream.values("end_ms")),
    ]
    table(["speech end -> decision (s)", "n", "median", "p90", "max", "missing"], rows,
          f"Latency over {len(ours.turns)} turns (simulated real time, model calls on the "
          "critical path included)")

    o_end, t_end = ours.values("end_ms"), theirs.values("end_ms")
    o_cand = ours.values("candidate_ms")
    m_oe, p_oe = med(o_end) / 1000, p90(o_end) / 1000
    m_te, p_te = med(t_end) / 1000, p90(t_end) / 1000
    m_oc = med(o_cand) / 1000
    targets = [
        ["turn_end median", fmt_s(m_oe), fmt_s(m_te), fmt_x(m_oe, m_te),
         f"<= {TARGET_END_MEDIAN}", verdict(m_oe, TARGET_END_MEDIAN)],
        ["turn_end p90", fmt_s(p_oe), fmt_s(p_te), fmt_x(p_oe, p_te),
         f"<= {TARGET_END_P90}", verdict(p_oe, TARGET_END_P90)],
        ["candidate median", fmt_s(m_oc), "-", "-", f"<= {TARGET_CAND_MEDIAN}",
         verdict(m_oc, TARGET_CAND_MEDIAN)],
        ["intra-turn pauses cut", f"{ours.cuts}/{ours.pauses}",
         f"{theirs.cuts}/{theirs.pauses}", "-", "<= 1 in 10",
         verdict(ours.cuts / max(1, ours.pauses), 0.1)],
        ["turns never ended (merged)", str(ours.missing("end_ms")),
         str(theirs.missing("end_ms")), "-", "0", verdict(ours.missing("end_ms"), 0)],
        ["starts on noise_only", str(noise_starts[0]), str(noise_starts[1]), "-", "0",
         verdict(noise_starts[0], 0) if any(n == "noise_only" for n, _ in fixtures)
         else "n/a"],
    ]
    table(["", "reson8", "pipecat", "ratio r/p", "target", ""], targets,
          "Targets (reson8; pipecat is the baseline measured in this run)")

    jrows = [[k, str(len(v)), f"{med(v):.1f}", f"{p90(v):.1f}", f"{max(v):.1f}"]
             for k, v in jobs.items() if v]
    table(["model call (wall ms)", "calls", "median", "p90", "max"], jrows,
          "Model calls on the critical path")


# --------------------------------------------------------------------------------------
# part 2 and 3: concurrency and memory, against the server in a subprocess
# --------------------------------------------------------------------------------------


@dataclass
class TrialResult:
    n: int
    talking: int
    score: Score
    late_frames: int
    frames: int
    server_cpu_pct: float
    errors: int

    @property
    def candidate_p90_s(self) -> float:
        values = self.score.values("candidate_ms") + [math.inf] * self.score.missing(
            "candidate_ms")
        return p90(values) / 1000


async def _session(url: str, audio: bytes, t0: float, lateness: list[float],
                   *, settle_s: float = 3.0) -> tuple[float, list[tuple[float, str]]]:
    """Stream ``audio`` in real time from ``t0``; return (t0, [(t, event type)])."""
    from reson8_voice.client import connect_turns
    from reson8_voice.params import TurnsParams

    conn = await connect_turns(url, TurnsParams(encoding="mulaw", sample_rate=RATE))
    events: list[tuple[float, str]] = []

    async def reader() -> None:
        async for event in conn:
            events.append((time.monotonic(), event.type))

    task = asyncio.create_task(reader())
    frames = frames_of(audio, RATE * 20 // 1000)
    try:
        await paced(len(frames), t0, lambda i: conn.send_audio(frames[i]), lateness=lateness)
        await asyncio.sleep(settle_s)
    finally:
        await conn.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return t0, events


async def trial(server: ServerProcess, n: int, talk: Clip, noise: bytes,
                spread_s: float) -> TrialResult:
    """N sessions at once: the talking ones start their clip after ``k * spread_s / talking``
    s of line noise (so their turn ends do not all coincide), the rest send line noise."""
    talking = max(1, n // 2)
    start = time.monotonic() + 0.5
    lateness: list[float] = []
    cpu0, w0 = server.cpu_s(), time.monotonic()
    tasks, delays = [], []
    total_ms = int(talk.duration_ms + spread_s * 1000)
    for k in range(n):
        t0 = start + 0.02 * k / n  # sends interleave rather than collide
        if k < talking:
            delay_ms = int(spread_s * 1000 * k / talking)
            audio = line_noise(talk.name.split("[")[0], delay_ms) + talk.ulaw
            audio += noise[: max(0, total_ms - len(audio) // 8) * 8]
        else:
            delay_ms, audio = 0, (noise * (total_ms * 8 // len(noise) + 1))[: total_ms * 8]
        delays.append(delay_ms)
        tasks.append(asyncio.create_task(_session(server.url, audio, t0, lateness)))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    cpu = 100 * (server.cpu_s() - cpu0) / (time.monotonic() - w0)
    score, errors = Score(), 0
    for k, res in enumerate(results):
        if isinstance(res, BaseException):
            errors += 1
            continue
        if k >= talking:
            continue
        t0, events = res
        turns = [t.shifted(delays[k]) for t in talk.turns]
        ms = [((t - t0) * 1000, kind) for t, kind in events]
        score.extend(score_turns(
            turns, starts=[x for x, kind in ms if kind == "turn_start"],
            candidates=[x for x, kind in ms if kind == "turn_end_candidate"],
            ends=[x for x, kind in ms if kind == "turn_end"]))
    late = sum(1 for x in lateness if x > 0.02)
    return TrialResult(n, talking, score, late, len(lateness), cpu, errors)


async def memory_part(server: ServerProcess, talk: Clip, k: int) -> list[list[str]]:
    """Base RSS, RSS after one warm-up session, and per-session increment with k open turns."""
    from reson8_voice.client import connect_turns
    from reson8_voice.params import TurnsParams

    base = server.rss_mb()
    # warm-up: one whole clip at full speed (the server back-pressures it)
    params = TurnsParams(encoding="mulaw", sample_rate=RATE)
    conn = await connect_turns(server.url, params)
    for frame in frames_of(talk.ulaw, 1600):
        await conn.send_audio(frame)
    await conn.close()
    await asyncio.sleep(1.0)
    warm = server.rss_mb()
    # k sessions, each holding a turn open with 3 s of speech
    speech_from = int(talk.turns[0].start_ms) * 8 if talk.turns else 0
    speech = talk.ulaw[speech_from:speech_from + 3 * RATE]
    conns = [await connect_turns(server.url, params) for _ in range(k)]
    try:
        for c in conns:
            for frame in frames_of(speech, 1600):
                await c.send_audio(frame)
        await asyncio.sleep(3.0)  # let every session process its audio
        loaded = server.rss_mb()
    finally:
        for c in conns:
            await c.close()
    per = (loaded - warm) / k
    return [
        ["server RSS after start (models loaded)", f"{base:.0f} MB", f"<= {TARGET_BASE_MB:.0f}",
         verdict(base, TARGET_BASE_MB)],
        ["server RSS after one warm-up session", f"{warm:.0f} MB", "", ""],
        [f"RSS with {k} sessions holding open turns", f"{loaded:.0f} MB", "", ""],
        ["per-session increment", f"{per:.2f} MB", f"<= {TARGET_SESSION_MB:.0f}",
         verdict(per, TARGET_SESSION_MB)],
    ]


async def server_part(quick: bool, max_sessions: int, budget_s: float,
                      spread_s: float) -> None:
    if quick:
        talk = fixture_clip("call_restaurant", 0, 8000, tail_ms=1500)
        ladder, mem_k = [2, 8], 4
    else:
        talk = fixture_clip("call_restaurant", 0, 15000, tail_ms=2000)
        ladder, mem_k = [2, 4, 8, 12, 16, 20, 24, 32], 16
    ladder = [n for n in ladder if n <= max_sessions]
    noise = line_noise("call_restaurant", int(talk.duration_ms))
    async with ServerProcess() as server:
        print(f"server (subprocess pid {server.pid}) up at {server.url} in "
              f"{server.startup_s:.1f} s")
        mem_rows = await memory_part(server, talk, mem_k)
        rows: list[list[str]] = []
        best = 0
        t_start = time.monotonic()
        for n in ladder:
            res = await trial(server, n, talk, noise, spread_s)
            c = res.score.values("candidate_ms")
            e = res.score.values("end_ms")
            ok = res.candidate_p90_s <= TARGET_CAND_P90_CONC and res.errors == 0
            rows.append([str(n), str(res.talking), str(len(res.score.turns)),
                         fmt_s(med(c) / 1000), fmt_s(res.candidate_p90_s),
                         fmt_s(p90(e) / 1000), str(res.score.missing("candidate_ms")),
                         f"{res.late_frames}/{res.frames}", f"{res.server_cpu_pct:.0f}%",
                         str(res.errors), "ok" if ok else "over"])
            if not ok:
                break
            best = n
            if n != ladder[-1] and time.monotonic() - t_start > budget_s:
                rows.append(["(stopped: time budget)"] + [""] * 10)
                break
    table(["N", "talking", "turns", "cand med", "cand p90", "end p90", "missing",
           "late sends", "server CPU", "errors", "p90<=1s"], rows,
          f"Concurrency: N real-time 8 kHz sessions, half talking ({talk.name}, "
          f"{talk.duration_ms / 1000:.1f} s, starts spread over {spread_s:g} s), latencies "
          "in s from speech end to the event received; late sends = frames sent > 20 ms "
          "after due")
    table(["", "value", "target", ""],
          [["largest N with candidate p90 <= 1 s", str(best), f">= {TARGET_SESSIONS}",
            verdict(best, TARGET_SESSIONS, higher_is_better=True)], *mem_rows],
          "Server capacity and memory")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables; returns 0 (targets are reported, not
    asserted)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two fixtures, N in {2, 8}")
    parser.add_argument("--no-server", action="store_true",
                        help="skip the concurrency and memory part")
    parser.add_argument("--max-sessions", type=int, default=32,
                        help="largest N tried in the concurrency ladder")
    parser.add_argument("--spread", type=float, default=None, metavar="S",
                        help="spread the talking sessions' clip starts over S seconds "
                        "(default 5, quick 2; 0 = all at once, the worst case)")
    args = parser.parse_args(argv)
    quiet_logs()
    t0 = time.monotonic()
    print(f"reson8-voice engine benchmark ({'quick' if args.quick else 'full'}); "
          f"{machine_line()}, {bench_loop()} event loop for the server part")
    print()
    latency_part(QUICK_FIXTURES if args.quick else FULL_FIXTURES)
    if not args.no_server:
        spread = args.spread if args.spread is not None else (2.0 if args.quick else 5.0)
        run_loop(server_part(args.quick, args.max_sessions,
                             budget_s=20 if args.quick else 150, spread_s=spread))
    print(f"done in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
