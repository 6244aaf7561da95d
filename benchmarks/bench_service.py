"""Reson8TurnsSTTService in a real pipecat pipeline against the embedded server, beside
pipecat's own local turn stack (issue 4, "Benchmark").

Run: ``python benchmarks/bench_service.py`` (``--quick`` for a smoke run under a minute; or
import and call :func:`main`). Targets are printed with PASS/MISS, never asserted.

Pipelines (pipecat 1.14, real frames, real time):

* reson8: ``Reson8TurnsSTTService -> LLMUserAggregator`` with no strategies of its own, so
  the aggregator adopts the ones the service recommends in its ``STTMetadataFrame``
  (``ExternalUserTurnStrategies``), against the embedded server (real models) in a
  subprocess (``python -m reson8_voice serve --port 0``). One pipeline per barge-in policy:
  ``first`` (the default, whose figures are the targets) alone, then ``server`` and
  ``local`` side by side on the same audio (two sessions share the server's two workers).
* pipecat: ``LLMUserAggregator(vad_analyzer=SileroVADAnalyzer(), stop=[
  TurnAnalyzerUserTurnStopStrategy(LocalSmartTurnAnalyzerV3(), wait_for_transcript=False)])``,
  pipecat's default local stack with transcripts taken as instant (its best case), run
  alone afterwards on the same audio.

Audio: committed fixtures with exact ground truth, 20 ms frames queued when each frame's
audio is complete in real time, every gap after a turn stretched to >= 4 s with the file's
own line noise (pipecat's stack would merge turns otherwise; see ``_common.spread_clip``).
pipecat 1.14 broadcasts an ``InterruptionFrame`` whenever a user turn starts with
interruptions enabled, bot speaking or not, so no bot is simulated.

Measured:

* barge-in latency: ground-truth speech onset -> ``InterruptionFrame`` at the pipeline end;
* end of utterance: speech end -> ``UserStoppedSpeakingFrame``; and how much later it is
  than the service received the server's ``turn_end`` (the arbiter's input is tapped);
* false cut-offs: ``UserStoppedSpeakingFrame`` while the caller is mid-turn (in a pause),
  and interruptions on no speech;
* the service's own CPU per 20 ms frame: ``run_stt`` (mu-law encode, backlog, websocket
  send, local VAD, arbiter) called directly, connected to a no-op server in a subprocess;
  beside pipecat's ``SileroVADAnalyzer`` per 20 ms (the local stack's VAD alone) and a bare
  websocket send of the same frame.

Targets: barge-in median <= 100 ms and p90 <= 150 ms with ``first``; overhead <= 50 us per
frame; end of utterance no later than the server's ``turn_end`` + 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
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
    fmt_s,
    fmt_x,
    frames_of,
    machine_line,
    med,
    p90,
    paced,
    quiet_logs,
    score_turns,
    spread_clip,
    summary_row,
    table,
    verdict,
)

POLICIES = ("server", "local", "first")
TARGET_BARGE_MEDIAN_MS = 100.0
TARGET_BARGE_P90_MS = 150.0
TARGET_OVERHEAD_US = 50.0
TARGET_EOU_GAP_MS = 10.0

NOOP_SERVER = """
import asyncio, sys
from websockets.asyncio.server import serve

async def sink(ws):
    async for _ in ws:
        pass

async def main():
    async with serve(sink, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"no-op server at ws://127.0.0.1:{port}", flush=True)
        await asyncio.Future()

asyncio.run(main())
"""


@dataclass
class StackRun:
    """What one pipeline produced, as stream ms since its audio began."""

    label: str
    interruptions: list[float] = field(default_factory=list)
    stops: list[float] = field(default_factory=list)
    server_ends: list[float] = field(default_factory=list)  # turn_end received (reson8)
    server_starts: list[float] = field(default_factory=list)
    strategies: str = ""
    stats: dict[str, int] = field(default_factory=dict)  # the service's counters
    late_frames: int = 0
    frames: int = 0

    def score(self, clip: Clip, shift_ms: float = 0.0) -> Score:
        return score_turns([t.shifted(shift_ms) for t in clip.turns],
                           starts=self.interruptions, ends=self.stops)

    def eou_gaps_ms(self) -> list[float]:
        """Per UserStoppedSpeakingFrame: how long after the last turn_end received (<= 1 s)."""
        gaps = []
        for stop in self.stops:
            before = [e for e in self.server_ends if e <= stop + 0.5]
            if before and stop - before[-1] <= 1000:
                gaps.append(stop - before[-1])
        return gaps


def _aggregator(pipecat_stack: bool) -> Any:
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMUserAggregator,
        LLMUserAggregatorParams,
    )

    if not pipecat_stack:
        return LLMUserAggregator(LLMContext())  # adopts the service's recommendation
    from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.turns.user_stop import TurnAnalyzerUserTurnStopStrategy
    from pipecat.turns.user_turn_strategies import UserTurnStrategies

    strategies = UserTurnStrategies(stop=[TurnAnalyzerUserTurnStopStrategy(
        turn_analyzer=LocalSmartTurnAnalyzerV3(), wait_for_transcript=False)])
    return LLMUserAggregator(LLMContext(), params=LLMUserAggregatorParams(
        vad_analyzer=SileroVADAnalyzer(), user_turn_strategies=strategies))


async def run_stacks(clip: Clip, url: str | None, policies: Sequence[str]) -> list[StackRun]:
    """Run one pipeline per policy (or pipecat's stack when ``url`` is None) at once."""
    from pipecat.frames.frames import (
        InputAudioRawFrame,
        InterruptionFrame,
        UserStoppedSpeakingFrame,
    )

    from reson8_voice.events import TurnEnd, TurnStart
    from reson8_voice.pipecat import Reson8TurnsSTTService
    from tests.pipeline_harness import Harness

    runs: list[StackRun] = []
    harnesses: list[Harness] = []
    aggregators: list[Any] = []
    services: list[Any] = []
    connected: list[asyncio.Event] = []
    base = time.monotonic()  # replaced by the stream start below

    def tap(run: StackRun, arbiter: Any) -> None:
        original = arbiter.server_event

        def server_event(now: float, event: Any) -> Any:
            if isinstance(event, TurnEnd):
                run.server_ends.append((now - base) * 1000)
            elif isinstance(event, TurnStart):
                run.server_starts.append((now - base) * 1000)
            return original(now, event)

        arbiter.server_event = server_event

    labels = [f"reson8 barge_in={p}" for p in policies] if url else ["pipecat local stack"]
    for i, label in enumerate(labels):
        run = StackRun(label)
        agg = _aggregator(pipecat_stack=url is None)
        processors: list[Any] = [agg]
        if url is not None:
            policy: Any = policies[i]
            stt = Reson8TurnsSTTService(url=url, barge_in=policy)
            ready = asyncio.Event()

            @stt.event_handler("on_connected")
            async def _on_connected(_: Any, ready: asyncio.Event = ready) -> None:
                ready.set()

            connected.append(ready)
            services.append(stt)
            tap(run, stt.arbiter)
            processors.insert(0, stt)
        runs.append(run)
        aggregators.append(agg)
        harnesses.append(Harness(processors, sample_rate=RATE))
    for h in harnesses:
        await h.__aenter__()
    try:
        for ev in connected:
            await asyncio.wait_for(ev.wait(), 30)
        await asyncio.sleep(0.5)  # the aggregators adopt the recommended strategies
        for run, agg in zip(runs, aggregators, strict=True):
            run.strategies = type(agg._user_turn_controller.user_turn_strategies).__name__
        frames = frames_of(clip.pcm16(), RATE * 20 // 1000 * 2)
        lateness: list[float] = []
        base = time.monotonic() + 0.2
        for h in harnesses:
            h.recorder.frames.clear()

        async def push(i: int) -> None:
            for h in harnesses:
                await h.send(InputAudioRawFrame(frames[i], RATE, 1))

        await paced(len(frames), base, push, lateness=lateness)
        await asyncio.sleep(1.0)
    finally:
        for h in harnesses:
            await h.stop()
    for run, stt in zip(runs, services, strict=False):
        run.stats = dict(stt.stats)
    for run, h in zip(runs, harnesses, strict=True):
        run.frames, run.late_frames = len(lateness), sum(1 for x in lateness if x > 0.02)
        for t, frame in h.recorder.frames:
            ms = (t - base) * 1000
            if isinstance(frame, InterruptionFrame):
                run.interruptions.append(ms)
            elif isinstance(frame, UserStoppedSpeakingFrame):
                run.stops.append(ms)
    return runs


# --------------------------------------------------------------------------------------
# the service's own cost per frame
# --------------------------------------------------------------------------------------


async def overhead_part(quick: bool) -> list[list[str]]:
    from pipecat.audio.vad.silero import SileroVADAnalyzer

    from reson8_voice.client import connect_turns
    from reson8_voice.params import TurnsParams
    from reson8_voice.pipecat import Reson8TurnsSTTService
    from tests.audio_fixtures import load_fixture
    from tests.pipeline_harness import Harness

    frames = frames_of(load_fixture("call_restaurant").pcm16(), RATE * 20 // 1000 * 2)
    n, repeats = (300, 2) if quick else (500, 5)

    async def measure(stt: Any, count: int, offset: int) -> tuple[float, float]:
        """(CPU us per frame, median wall us per frame) of ``run_stt`` over ``count``."""
        walls = []
        c0 = time.process_time()
        for i in range(offset, offset + count):
            t = time.perf_counter_ns()
            async for _frame in stt.run_stt(frames[i % len(frames)]):
                pass
            walls.append(time.perf_counter_ns() - t)
        return (time.process_time() - c0) / count * 1e6, statistics.median(walls) / 1000

    cmd = [sys.executable, "-c", NOOP_SERVER]
    async with ServerProcess(command=cmd) as noop:
        # watchdog off: a no-op server never answers, and fallback would stop the sends
        stt = Reson8TurnsSTTService(url=noop.url, watchdog_s=3600.0)
        ready = asyncio.Event()

        @stt.event_handler("on_connected")
        async def _on_connected(_: Any) -> None:
            ready.set()

        async with Harness([stt], sample_rate=RATE):
            await asyncio.wait_for(ready.wait(), 30)
            fresh = await measure(stt, 250, 0)  # the first 5 s: replay backlog small
            sent = 250
            await measure(stt, 1500, sent)  # 30 s with no server event: backlog full
            sent += 1500
            steady = []
            for _ in range(repeats):
                steady.append(await measure(stt, n, sent))
                sent += n
                await asyncio.sleep(0.1)
        # a bare websocket send of the same mu-law frame, through the project's client
        conn = await connect_turns(noop.url, TurnsParams(encoding="mulaw", sample_rate=RATE))
        ulaw_frames = frames_of(load_fixture("call_restaurant").data, RATE * 20 // 1000)[:n]
        sends = []
        for _ in range(repeats):
            c0 = time.process_time()
            for f in ulaw_frames:
                await conn.send_audio(f)
            sends.append((time.process_time() - c0) / len(ulaw_frames) * 1e6)
        await conn.close()
    # pipecat's Silero VAD on the same 20 ms frames (what its local stack pays per frame)
    silero = SileroVADAnalyzer()
    silero.set_sample_rate(RATE)
    sil = []
    for _ in range(max(1, repeats // 2)):
        c0 = time.process_time()
        for f in frames[:n]:
            silero._run_analyzer(f)
        sil.append((time.process_time() - c0) / n * 1e6)
    await silero.cleanup()

    steady_cpu = min(c for c, _ in steady)
    steady_wall = min(w for _, w in steady)
    send_cpu, silero_cpu = min(sends), min(sil)
    return [
        ["run_stt, steady state (30 s since last server event)", f"{steady_cpu:.1f}",
         "1.00x", f"<= {TARGET_OVERHEAD_US:.0f}", verdict(steady_cpu, TARGET_OVERHEAD_US)],
        ["run_stt, steady state, median wall", f"{steady_wall:.1f}",
         fmt_x(steady_wall, steady_cpu), "", ""],
        ["run_stt, first 5 s of a call", f"{fresh[0]:.1f}", fmt_x(fresh[0], steady_cpu),
         f"<= {TARGET_OVERHEAD_US:.0f}", verdict(fresh[0], TARGET_OVERHEAD_US)],
        ["bare websocket send of the frame", f"{send_cpu:.1f}", fmt_x(send_cpu, steady_cpu),
         "", ""],
        ["pipecat SileroVADAnalyzer per 20 ms", f"{silero_cpu:.1f}",
         fmt_x(silero_cpu, steady_cpu), "", ""],
    ]


# --------------------------------------------------------------------------------------


async def run(quick: bool) -> None:
    clips = ([spread_clip("short_answers", max_turns=2)] if quick else
             [spread_clip("short_answers"), spread_clip("call_restaurant", max_turns=3)])
    # the recommended policy alone (its latencies are the targets), then the other two
    passes: list[tuple[str, ...]] = [("first",), ("server", "local")]
    print("audio: " + ", ".join(f"{c.name} ({c.duration_ms / 1000:.1f} s, {len(c.turns)} "
                               f"turns, {c.pauses} pauses)" for c in clips))
    print("reson8 passes (pipelines at once): " + "; ".join(", ".join(p) for p in passes)
          + "; then pipecat's stack alone")
    ours: dict[str, Score] = {p: Score() for p in POLICIES}
    server_turns: Score = Score()
    gaps: dict[str, list[float]] = {p: [] for p in POLICIES}
    theirs = Score()
    late = [0, 0]
    strategies: set[str] = set()
    stats: dict[str, dict[str, int]] = {p: {} for p in POLICIES}
    async with ServerProcess() as server:
        print(f"embedded server (subprocess pid {server.pid}) at {server.url}, up in "
              f"{server.startup_s:.1f} s")
        for policies in passes:
            for clip in clips:
                runs = await run_stacks(clip, server.url, policies)
                for policy, r in zip(policies, runs, strict=True):
                    ours[policy].extend(r.score(clip))
                    gaps[policy].extend(r.eou_gaps_ms())
                    strategies.add(r.strategies)
                    for k, v in r.stats.items():
                        stats[policy][k] = stats[policy].get(k, 0) + v
                    late[0] += r.late_frames
                    late[1] += r.frames
                    if policy == "first":
                        server_turns.extend(score_turns(clip.turns, starts=r.server_starts,
                                                        ends=r.server_ends))
    for clip in clips:
        (r,) = await run_stacks(clip, None, ())
        theirs.extend(r.score(clip))
        strategies.add(f"pipecat: {r.strategies}")
        late[0] += r.late_frames
        late[1] += r.frames
    print(f"strategies in effect: {', '.join(sorted(strategies))}; "
          f"frames queued > 20 ms late: {late[0]}/{late[1]}")
    print()

    rows = [summary_row(f"reson8 {p}", ours[p].values("onset_ms"), ours[p].missing("onset_ms"))
            for p in POLICIES]
    rows.append(summary_row("  server turn_start received (first)",
                            server_turns.values("onset_ms")))
    rows.append(summary_row("pipecat local stack", theirs.values("onset_ms"),
                            theirs.missing("onset_ms")))
    table(["barge-in: speech onset -> InterruptionFrame (s)", "n", "median", "p90", "max",
           "missing"], rows)

    rows = [summary_row(f"reson8 {p}", ours[p].values("end_ms"), ours[p].missing("end_ms"))
            for p in POLICIES]
    rows.append(summary_row("  server turn_end received (first)",
                            server_turns.values("end_ms")))
    rows.append(summary_row("pipecat local stack", theirs.values("end_ms"),
                            theirs.missing("end_ms")))
    table(["end of utterance: speech end -> UserStoppedSpeakingFrame (s)", "n", "median",
           "p90", "max", "missing"], rows)

    rows = [[f"reson8 {p}", f"{ours[p].cuts}/{ours[p].pauses}",
             str(ours[p].spurious_starts), f"{med(gaps[p]):.1f}" if gaps[p] else "-",
             f"{p90(gaps[p]):.1f}" if gaps[p] else "-",
             f"{max(gaps[p]):.1f}" if gaps[p] else "-",
             str(stats[p].get("fallbacks", 0)), str(stats[p].get("violations", 0))]
            for p in POLICIES]
    rows.append(["pipecat local stack", f"{theirs.cuts}/{theirs.pauses}",
                 str(theirs.spurious_starts), "-", "-", "-", "-", "-"])
    table(["", "false cut-offs (pauses)", "interruptions on no speech",
           "EoU - turn_end med ms", "p90", "max", "fallbacks", "violations"], rows)

    fb = ours["first"]
    m_b, p_b = med(fb.values("onset_ms")), p90(fb.values("onset_ms"))
    m_pb, p_pb = med(theirs.values("onset_ms")), p90(theirs.values("onset_ms"))
    m_e, m_pe = med(fb.values("end_ms")), med(theirs.values("end_ms"))
    g = p90(gaps["first"]) if gaps["first"] else None
    overhead = await overhead_part(quick)
    table(["service CPU per 20 ms frame", "us", "ratio", "target", ""], overhead,
          "Service overhead: run_stt called directly, connected to a no-op server in a "
          "subprocess (best of repeats)")
    table(["", "reson8 (first)", "pipecat", "ratio r/p", "target", ""], [
        ["barge-in median (ms)", f"{m_b:.0f}", f"{m_pb:.0f}", fmt_x(m_b, m_pb),
         f"<= {TARGET_BARGE_MEDIAN_MS:.0f}", verdict(m_b, TARGET_BARGE_MEDIAN_MS)],
        ["barge-in p90 (ms)", f"{p_b:.0f}", f"{p_pb:.0f}", fmt_x(p_b, p_pb),
         f"<= {TARGET_BARGE_P90_MS:.0f}", verdict(p_b, TARGET_BARGE_P90_MS)],
        ["end of utterance median (s)", fmt_s(m_e / 1000), fmt_s(m_pe / 1000),
         fmt_x(m_e, m_pe), "", ""],
        ["false cut-offs", f"{fb.cuts}/{fb.pauses}", f"{theirs.cuts}/{theirs.pauses}", "-",
         "", ""],
        ["EoU after server turn_end, p90 (ms)", f"{g:.1f}" if g is not None else "-", "-",
         "-", f"<= {TARGET_EOU_GAP_MS:.0f}", verdict(g, TARGET_EOU_GAP_MS)],
        ["service overhead per frame, steady (us)", overhead[0][1], "-", "-",
         f"<= {TARGET_OVERHEAD_US:.0f}", overhead[0][4]],
    ], "Targets (pipecat's local stack is the baseline measured in this run)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables; returns 0 (targets are reported, not
    asserted)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="two short turns instead of two fixtures (< 1 min)")
    args = parser.parse_args(argv)
    quiet_logs("ERROR")
    t0 = time.monotonic()
    print(f"reson8-voice service benchmark ({'quick' if args.quick else 'full'}); "
          f"{machine_line()}")
    asyncio.run(run(args.quick))
    print(f"done in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
