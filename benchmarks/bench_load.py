"""Load: N simultaneous simulated phone calls through Reson8TurnsSTTService into the embedded
server (issue 7, "Load"). Loopback only, bounded in count and time.

Run: ``python benchmarks/bench_load.py`` (both modes, bounded: ~4 min), ``--scripted`` or
``--real`` for one mode, ``--quick`` for a smoke run under a minute, ``--duration 600`` for
the full 10-minute soak; or import and call :func:`main`. Targets are printed with
PASS/MISS, never asserted.

Each call is a real pipecat pipeline (``Reson8TurnsSTTService`` at 8 kHz, mu-law uplink)
fed Twilio-style: one 20 ms frame of 8 kHz audio (decoded from the committed mu-law
fixtures, as pipecat's Twilio serializer decodes it) queued when its audio is complete in
real time. Calls loop a phone-call fixture from a per-call offset (deterministic), so their
turns do not line up. The server runs in a subprocess:

* ``--scripted``: ``python benchmarks/_common.py serve-scripted``, the embedded server with
  real VAD and turn logic but zero-cost scripted recognition (turns end at the engine's
  silence ceiling): this isolates transport and turn logic. Target: 50 calls for 10 minutes
  with no error, no late frame and memory flat within 10 % after warm-up.
* ``--real``: ``python -m reson8_voice serve --port 0`` (Whisper tiny.en + smart-turn v3):
  N = 2, 4, 6, 8, 12, ... calls until the candidate p90 passes 1 s (the knee).

Reported: per-call turn latencies (speech end -> ``InterimTranscriptionFrame``, the
candidate, and -> ``ProposedUserStoppedSpeakingFrame``, the end of turn; speech onset ->
``ProposedUserStartedSpeakingFrame``); frames late (reaching the service's ``run_stt`` more
than 20 ms after their audio was complete) or dropped (never reaching it, or dropped from
its outage backlog); fallbacks and errors; CPU (% of one core) and RSS of this process (the
calls) and of the server, sampled from /proc over time. A host probe (its own process,
SCHED_FIFO when run as root) notes every moment the whole machine stalled (> 10 ms), and
each late frame is set against them: late frames with no host stall in their transit are
the load's own.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    RATE,
    REPO,
    GtTurn,
    ProcSampler,
    Sample,
    Score,
    ServerProcess,
    TurnScore,
    bench_loop,
    fmt_s,
    machine_line,
    med,
    p90,
    quiet_logs,
    run_loop,
    score_turns,
    summary_row,
    table,
    verdict,
)

_THIS = str(Path(__file__).resolve())
CALL_FIXTURES = ("call_restaurant", "call_support", "call_delivery", "demo_call")
LATE_S = 0.020
HIST_BINS = 2000
MAX_LATE_SPANS = 10_000
#: the host probe: sleeps this long, and notes every wake-up later than STALL_S
PROBE_PERIOD_S = 0.002
STALL_S = 0.010
TARGET_CALLS = 50
TARGET_SOAK_S = 600
TARGET_MEM_GROWTH = 0.10
TARGET_CAND_P90_S = 1.0


@dataclass
class CallAudio:
    """One call's audio: a fixture looped from an offset, and the complete turns in it."""

    name: str
    pcm16: bytes
    turns: tuple[GtTurn, ...]


def call_audio(index: int, duration_s: float, seed: int = 7) -> CallAudio:
    """Call ``index``: a fixture (round robin) looped from a seeded offset, ``duration_s``."""
    from tests.audio_fixtures import load_fixture

    fx = load_fixture(CALL_FIXTURES[index % len(CALL_FIXTURES)])
    rng = random.Random(seed * 1000 + index)
    offset_ms = rng.randrange(0, fx.duration_ms)
    total_ms = int(duration_s * 1000)
    reps = (offset_ms + total_ms) // fx.duration_ms + 1
    ulaw = (fx.data * reps)[offset_ms * 8:(offset_ms + total_ms) * 8]
    turns = []
    for r in range(reps):
        for t in fx.turns:
            g = GtTurn(t.start_ms, t.end_ms, t.segments[-1].start_ms,
                       tuple((float(a), float(b)) for a, b in t.pause_spans())
                       ).shifted(r * fx.duration_ms - offset_ms)
            if g.start_ms >= 0 and g.end_ms + 1500 <= total_ms:
                turns.append(g)
    from tests.audio_fixtures import mulaw_to_pcm16

    return CallAudio(f"{fx.name}@{offset_ms / 1000:.1f}s", mulaw_to_pcm16(ulaw), tuple(turns))


@dataclass
class CallResult:
    name: str
    score: Score = field(default_factory=Score)
    queued: int = 0
    reached: int = 0
    late: int = 0
    #: frames reaching run_stt by lateness, in 1 ms bins (the last bin: that late or more)
    lateness_hist: list[int] = field(default_factory=lambda: [0] * HIST_BINS)
    lateness_max: float = 0.0  # s
    #: late frames per minute of the call, to tell a steady shortfall from pauses
    late_by_minute: list[int] = field(default_factory=list)
    #: (due, reached) monotonic times of the first MAX_LATE_SPANS late frames, to set
    #: against the host stalls the probe saw
    late_spans: list[tuple[float, float]] = field(default_factory=list)
    errors: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    fallbacks: list[tuple[float, str]] = field(default_factory=list)  # (stream s, reason)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form (a worker process hands its results back this way)."""
        return {
            "name": self.name, "queued": self.queued, "reached": self.reached,
            "late": self.late, "hist": self.lateness_hist, "max": self.lateness_max,
            "by_minute": self.late_by_minute, "late_spans": self.late_spans,
            "errors": self.errors, "stats": self.stats, "fallbacks": self.fallbacks,
            "spurious": self.score.spurious_starts,
            "turns": [[t.turn.start_ms, t.turn.end_ms, t.turn.last_segment_start_ms,
                       [list(p) for p in t.turn.pauses], t.onset_ms, t.candidate_ms,
                       t.end_ms, t.cuts] for t in self.score.turns],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CallResult:
        score = Score(spurious_starts=d["spurious"])
        for start, end, last, pauses, onset, cand, end_lat, cuts in d["turns"]:
            turn = GtTurn(start, end, last, tuple((a, b) for a, b in pauses))
            score.turns.append(TurnScore(turn, onset, cand, end_lat, cuts))
        return cls(d["name"], score, d["queued"], d["reached"], d["late"], d["hist"],
                   d["max"], d["by_minute"], [(a, b) for a, b in d["late_spans"]],
                   d["errors"], d["stats"],
                   [(a, b) for a, b in d["fallbacks"]])


class Call:
    """One simulated call: a pipeline with the service, fed in real time from ``t0``."""

    def __init__(self, audio: CallAudio, url: str) -> None:
        from reson8_voice.pipecat import Reson8TurnsSTTService
        from tests.pipeline_harness import Harness

        self.audio = audio
        # --no-passthrough (inherited by the workers through the environment): audio stops
        # at the service instead of flowing on through the pipeline, as pipecat's default
        passthrough = os.environ.get("RESON8_BENCH_PASSTHROUGH", "1") != "0"
        self.stt = Reson8TurnsSTTService(url=url, audio_passthrough=passthrough)
        self.times = event_times()
        self.harness = Harness([self.stt, self.times], sample_rate=RATE, lean=True,
                               record=False)
        self.connected = asyncio.Event()
        #: set once every frame of the call has reached run_stt (a run that fell behind
        #: is drained before it is scored, so its last turns are not counted as unended)
        self.drained = asyncio.Event()
        self.frame_bytes = RATE * 20 // 1000 * 2
        self.frames = len(audio.pcm16) // self.frame_bytes
        self.result = CallResult(audio.name)
        self.fallbacks: list[tuple[float, str]] = []
        self.t0 = 0.0

        @self.stt.event_handler("on_connected")
        async def _on_connected(_: Any) -> None:
            self.connected.set()

        @self.stt.event_handler("on_fallback_started")
        async def _on_fallback(_: Any, reason: str) -> None:
            self.fallbacks.append((time.monotonic() - self.t0, reason))

        original = self.stt.run_stt
        res = self.result
        hist, by_minute = res.lateness_hist, res.late_by_minute

        async def run_stt(audio: bytes) -> Any:  # when each frame reaches the service
            # online statistics: a per-frame list would grow the heap all call long
            now = time.monotonic()
            due = self.t0 + (res.reached + 1) * 0.02
            late = now - due
            res.reached += 1
            if res.reached >= self.frames:
                self.drained.set()
            hist[min(HIST_BINS - 1, max(0, int(late * 1000)))] += 1
            res.lateness_max = max(res.lateness_max, late)
            if late > LATE_S:
                res.late += 1
                if len(res.late_spans) < MAX_LATE_SPANS:
                    res.late_spans.append((due, now))
                minute = int(res.reached * 0.02 // 60)
                by_minute.extend([0] * (minute + 1 - len(by_minute)))
                by_minute[minute] += 1
            async for frame in original(audio):
                yield frame

        self.stt.run_stt = run_stt  # type: ignore[method-assign]

    async def start(self) -> None:
        await self.harness.__aenter__()
        await asyncio.wait_for(self.connected.wait(), 30)

    async def feed(self, t0: float) -> int:
        """Queue every 20 ms frame at ``t0 + (i + 1) * 20 ms``; returns frames queued."""
        from pipecat.frames.frames import InputAudioRawFrame

        self.t0 = t0
        pcm, size = self.audio.pcm16, self.frame_bytes
        for i in range(self.frames):  # sliced as sent: no list of 30,000 frames on the heap
            delay = t0 + (i + 1) * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.harness.send(InputAudioRawFrame(pcm[i * size:(i + 1) * size], RATE, 1))
        return self.frames

    async def finish(self, queued: int) -> CallResult:
        await self.harness.stop()
        res, times = self.result, self.times
        res.queued, res.stats, res.fallbacks = queued, dict(self.stt.stats), list(self.fallbacks)
        res.errors = times.errors

        def ms(ts: list[float]) -> list[float]:
            return [(t - self.t0) * 1000 for t in ts]

        res.score = score_turns(self.audio.turns, starts=ms(times.starts),
                                candidates=ms(times.candidates), ends=ms(times.ends))
        return res


def event_times() -> Any:
    """A processor that notes when each turn frame passed (monotonic floats only), so a
    10-minute call keeps no frames alive and the collector's full passes stay short."""
    from pipecat.frames.frames import (
        ErrorFrame,
        Frame,
        InterimTranscriptionFrame,
        ProposedUserStartedSpeakingFrame,
        ProposedUserStoppedSpeakingFrame,
    )
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

    class EventTimes(FrameProcessor):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.starts: list[float] = []
            self.candidates: list[float] = []
            self.ends: list[float] = []
            self.errors = 0

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, ProposedUserStartedSpeakingFrame):
                self.starts.append(time.monotonic())
            elif isinstance(frame, InterimTranscriptionFrame):
                self.candidates.append(time.monotonic())
            elif isinstance(frame, ProposedUserStoppedSpeakingFrame):
                self.ends.append(time.monotonic())
            elif isinstance(frame, ErrorFrame):
                self.errors += 1
            await self.push_frame(frame, direction)

    return EventTimes()


#: per calls process: its event loop's worst lag per minute and its garbage collections
#: (``run_calls`` collects them here, for the pauses table)
PAUSES: list[dict[str, Any]] = []


class PauseWatch:
    """How long this process's event loop stalls: the worst lateness of a 10 ms tick, per
    minute, and every garbage collection's duration (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.lag_ms_by_minute: list[float] = []
        self.gc_counts = [0, 0, 0]
        self.gc_max_ms = [0.0, 0.0, 0.0]
        self.gc_total_ms = 0.0
        self._gc_t0 = 0.0
        self._task: asyncio.Task[None] | None = None

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
            return
        ms = (time.perf_counter() - self._gc_t0) * 1000
        gen = int(info.get("generation", 0))
        self.gc_counts[gen] += 1
        self.gc_max_ms[gen] = max(self.gc_max_ms[gen], ms)
        self.gc_total_ms += ms

    async def _ticks(self) -> None:
        t0 = time.monotonic()
        while True:
            due = time.monotonic() + 0.01
            await asyncio.sleep(0.01)
            lag = (time.monotonic() - due) * 1000
            minute = int((time.monotonic() - t0) // 60)
            self.lag_ms_by_minute.extend([0.0] * (minute + 1 - len(self.lag_ms_by_minute)))
            self.lag_ms_by_minute[minute] = max(self.lag_ms_by_minute[minute], lag)

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.create_task(self._ticks())

    async def stop(self) -> dict[str, Any]:
        gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return {"lag": [round(x, 1) for x in self.lag_ms_by_minute], "gc": self.gc_counts,
                "gc_max": [round(x, 1) for x in self.gc_max_ms],
                "gc_total": round(self.gc_total_ms, 1)}


def host_probe_main() -> None:
    """The host probe process: sleep PROBE_PERIOD_S in a loop, at real-time priority where
    allowed (root: SCHED_FIFO, so no process of the load can delay its wake-up), and note
    every wake-up more than STALL_S late as ``(start, seconds)`` in monotonic time (shared by
    all processes). Prints its priority, then the stalls as JSON once stdin closes."""
    import threading

    done = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        priority = "SCHED_FIFO"
    except (AttributeError, OSError):
        priority = "normal priority"
    print(json.dumps({"priority": priority}), flush=True)
    stalls: list[tuple[float, float]] = []
    while not done.is_set():
        before = time.monotonic()
        time.sleep(PROBE_PERIOD_S)
        over = time.monotonic() - before - PROBE_PERIOD_S
        if over > STALL_S and len(stalls) < 100_000:
            stalls.append((before + PROBE_PERIOD_S, over))
    print(json.dumps({"stalls": stalls}), flush=True)


class HostProbe:
    """Runs :func:`host_probe_main` in its own process: whole-machine stalls (the VM not
    running) that no process of the load causes, to tell them from the load's own lateness.
    At idle on this 2-vCPU VM two 1 ms sleepers stalled 24 and 42 ms at the same instant."""

    def __init__(self) -> None:
        self.priority = ""
        self.stalls: list[tuple[float, float]] = []
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, _THIS, "--host-probe", stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, limit=1 << 24)
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), 30)
        self.priority = json.loads(line)["priority"]

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            self.stalls = [(a, b) for a, b in json.loads(line)["stalls"]]
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


def stall_overlaps(spans: list[tuple[float, float]], stalls: list[tuple[float, float]]
                   ) -> tuple[int, int]:
    """Of the late frames ``spans`` (due, reached): how many were in transit while the host
    stalled, and how many of those were late by the stall alone (lateness minus the stalled
    time within LATE_S). ``stalls`` are (start, seconds), in time order."""
    import bisect

    ends = [a + d for a, d in stalls]
    during = alone = 0
    for due, reached in spans:
        overlap = 0.0
        i = bisect.bisect_right(ends, due)
        while i < len(stalls) and stalls[i][0] < reached:
            overlap += min(reached, ends[i]) - max(due, stalls[i][0])
            i += 1
        if overlap > 0:
            during += 1
            alone += (reached - due) - overlap <= LATE_S
    return during, alone


async def _calls_here(url: str, indices: Sequence[int], total: int, duration_s: float,
                      sample_s: float, go: Any) -> tuple[list[CallResult], list[Sample], int]:
    """Run the calls ``indices`` in this process; ``go()`` returns the monotonic start."""
    calls = [Call(call_audio(i, duration_s), url) for i in indices]
    await asyncio.gather(*(c.start() for c in calls))
    # what setup allocated (modules, pipelines, the calls' audio) lives all run: keep it out
    # of the collector's full passes, whose pauses would otherwise show up as late frames
    from reson8_voice.eventloop import freeze_startup_objects

    freeze_startup_objects()
    t0 = await go()
    sampler = ProcSampler({"calls": "self"}, sample_s)
    sampler.start()
    watch = PauseWatch()
    watch.start()
    # calls start spread over one frame period so their sends interleave
    fed = await asyncio.gather(*(c.feed(t0 + 0.02 * i / total)
                                 for i, c in zip(indices, calls, strict=True)),
                               return_exceptions=True)
    drained = asyncio.gather(*(c.drained.wait() for c in calls))
    try:  # a run that fell behind catches up first (bounded), then the last turn's events
        await asyncio.wait_for(drained, 60)
    except TimeoutError:
        pass
    await asyncio.sleep(2.0)
    await sampler.stop()
    PAUSES.append(await watch.stop())
    results, failures = [], 0
    for c, q in zip(calls, fed, strict=True):
        if isinstance(q, BaseException):
            failures += 1
            q = 0
        try:
            results.append(await c.finish(q))
        except Exception:
            failures += 1
    return results, sampler.samples["calls"], failures


async def run_calls(url: str, n: int, duration_s: float, server_pid: int, sample_s: float,
                    procs: int = 1) -> tuple[list[CallResult], dict[str, list[Sample]], int]:
    """N calls at once for ``duration_s``, in this process or spread over ``procs`` worker
    processes; returns the results, /proc samples ("calls" summed over the processes,
    "server") and the number of calls that failed."""
    server = ProcSampler({"server": server_pid, "host": "host"}, sample_s)
    procs = min(procs, n)
    if procs <= 1:
        async def go() -> float:
            server.start()
            return time.monotonic() + 0.5

        results, calls_samples, failures = await _calls_here(url, range(n), n, duration_s,
                                                             sample_s, go)
        await server.stop()
        return results, {"calls": calls_samples, **server.samples}, failures
    workers = []
    for k in range(procs):
        indices = ",".join(str(i) for i in range(k, n, procs))
        workers.append(await asyncio.create_subprocess_exec(
            sys.executable, _THIS, "--worker", url, "--indices", indices, "--total", str(n),
            "--duration", str(duration_s), "--sample", str(sample_s), cwd=str(REPO),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, limit=1 << 26))
    try:
        for w in workers:
            assert w.stdout is not None
            line = await asyncio.wait_for(w.stdout.readline(), 120)
            if not line.startswith(b"READY"):
                raise RuntimeError(f"load worker failed to start: {line[:200]!r}")
        server.start()
        go_at = time.time() + 0.5
        for w in workers:
            assert w.stdin is not None
            w.stdin.write(f"GO {go_at!r}\n".encode())
            await w.stdin.drain()

        async def result(w: asyncio.subprocess.Process) -> Any:
            assert w.stdout is not None
            line = await w.stdout.readline()
            await w.wait()
            if not line:
                raise RuntimeError(f"load worker exited with {w.returncode}")
            return json.loads(line)

        outputs = await asyncio.wait_for(asyncio.gather(*(result(w) for w in workers)),
                                         duration_s + 120)
    finally:
        await server.stop()
        for w in workers:
            if w.returncode is None:
                w.kill()
                await w.wait()
    PAUSES.extend(out["pauses"] for out in outputs)
    results = [CallResult.from_json(d) for out in outputs for d in out["results"]]
    failures = sum(out["failures"] for out in outputs)
    per_proc = [[Sample(*x) for x in out["samples"]] for out in outputs]
    length = min(len(p) for p in per_proc)
    summed = [Sample(per_proc[0][i].t, sum(p[i].rss_mb for p in per_proc),
                     sum(p[i].cpu_pct for p in per_proc)) for i in range(length)]
    return results, {"calls": summed, **server.samples}, failures


async def worker_main(url: str, indices: list[int], total: int, duration_s: float,
                      sample_s: float) -> None:
    """A load worker process: set up, print READY, wait for "GO <epoch>", run, print JSON."""
    loop = asyncio.get_running_loop()

    async def go() -> float:
        print("READY", flush=True)
        line = await loop.run_in_executor(None, sys.stdin.readline)
        epoch = float(line.split()[1])
        return time.monotonic() + (epoch - time.time())

    results, samples, failures = await _calls_here(url, indices, total, duration_s, sample_s,
                                                   go)
    print(json.dumps({"results": [r.to_json() for r in results], "failures": failures,
                      "pauses": PAUSES[-1],
                      "samples": [[x.t, x.rss_mb, x.cpu_pct] for x in samples]}), flush=True)


def _lat_cells(values_ms: list[float]) -> list[str]:
    return [fmt_s(med(values_ms) / 1000), fmt_s(max(values_ms) / 1000 if values_ms else None)]


def print_calls(results: list[CallResult], limit: int) -> None:
    rows = []
    for i, r in enumerate(results[:limit]):
        s = r.score
        rows.append([f"{i:>2} {r.name}", str(len(s.turns)),
                     *_lat_cells(s.values("onset_ms")), *_lat_cells(s.values("candidate_ms")),
                     *_lat_cells(s.values("end_ms")),
                     str(s.missing("end_ms")), f"{r.late}/{r.queued}",
                     str(r.queued - r.reached + r.stats.get("dropped_bytes", 0) // 160),
                     str(r.stats.get("fallbacks", 0)), str(r.errors)])
    more = f" (first {limit} of {len(results)})" if len(results) > limit else ""
    table(["call", "turns", "start med", "max", "cand med", "max", "end med", "max",
           "unended", "late", "dropped", "fallbacks", "errors"], rows,
          f"Per call{more}: latencies in s from ground-truth speech onset/end")
    for i, r in enumerate(results):
        for at, reason in r.fallbacks:
            print(f"  call {i} ({r.name}): fallback at {at:.1f} s of the call: {reason}")
    if any(r.fallbacks for r in results):
        print()


def print_samples(samples: dict[str, list[Sample]], warm_s: float, procs: int
                  ) -> dict[str, float]:
    """The /proc time series (at most ~12 rows) and each process's RSS growth after warm-up."""
    calls, server, host = samples["calls"], samples["server"], samples["host"]
    step = max(1, len(calls) // 12)
    rows = [[f"{a.t:.0f}", f"{a.cpu_pct:.0f}%", f"{a.rss_mb:.0f}", f"{b.cpu_pct:.0f}%",
             f"{b.rss_mb:.0f}", f"{h.cpu_pct:.0f}% / {h.steal_pct:.0f}%"]
            for a, b, h in list(zip(calls, server, host, strict=False))[::step]]
    who = "calls (this process)" if procs <= 1 else f"calls ({procs} processes, summed)"
    table(["t (s)", "calls CPU", "calls RSS MB", "server CPU", "server RSS MB",
           "machine busy / stolen"], rows,
          f"CPU (% of one core) and RSS over time; {who}; machine = all "
          f"{os.cpu_count()} CPUs, stolen = taken by the hypervisor")
    if calls and max(s.cpu_pct for s in calls) >= 85 * max(1, procs):
        print("note: the calls process(es) reached a full core: a Python process uses one, so"
              " the load generator itself is the bottleneck (try --procs)\n")
    growth = {}
    for name, series in samples.items():
        if name == "host":
            continue
        warm = [s for s in series if s.t >= warm_s]
        if len(warm) >= 2:
            growth[name] = (warm[-1].rss_mb - warm[0].rss_mb) / warm[0].rss_mb
    return growth


def totals(results: list[CallResult]) -> tuple[Score, int, int, int, int, int, list[int]]:
    score = Score()
    late = queued = dropped = fallbacks = errors = 0
    hist = [0] * HIST_BINS
    for r in results:
        score.extend(r.score)
        late += r.late
        queued += r.queued
        dropped += r.queued - r.reached + r.stats.get("dropped_bytes", 0) // 160
        fallbacks += r.stats.get("fallbacks", 0)
        errors += r.errors
        hist = [a + b for a, b in zip(hist, r.lateness_hist, strict=True)]
    return score, late, queued, dropped, fallbacks, errors, hist


def hist_quantile_ms(hist: list[int], q: float) -> int:
    """The ``q`` quantile of a 1 ms histogram, as the bin's lower edge (ms)."""
    total, seen = sum(hist), 0
    for ms, n in enumerate(hist):
        seen += n
        if total and seen >= q * total:
            return ms
    return 0


async def scripted_mode(calls: int, duration_s: float, per_call: int, procs: int) -> None:
    async with ServerProcess(scripted=True) as server:
        print(f"scripted server (subprocess pid {server.pid}) at {server.url}; "
              f"{calls} calls x {duration_s:g} s in {procs} process(es)")
        probe = HostProbe()
        await probe.start()
        t0 = time.monotonic()
        try:
            results, samples, failures = await run_calls(
                server.url, calls, duration_s, server.pid, 5.0 if duration_s > 60 else 2.0,
                procs)
        finally:
            await probe.stop()
        wall = time.monotonic() - t0
    print_calls(results, per_call)
    warm_s = min(60.0, max(10.0, duration_s * 0.2))
    growth = print_samples(samples, warm_s, procs)
    score, late, queued, dropped, fallbacks, errors, hist = totals(results)
    worst = max((r.lateness_max for r in results), default=0.0)
    by_minute = [sum(r.late_by_minute[m] for r in results if m < len(r.late_by_minute))
                 for m in range(max((len(r.late_by_minute) for r in results), default=0))]
    spans = [x for r in results for x in r.late_spans]
    during, alone = stall_overlaps(sorted(spans), probe.stalls)
    classified = "" if len(spans) == late else f" (of the first {MAX_LATE_SPANS} per call)"
    stalls_ms = [d * 1000 for _, d in probe.stalls]
    stall_cell = (f"{len(stalls_ms)}, max {max(stalls_ms):.0f} ms, {sum(stalls_ms):.0f} ms in all"
                  if stalls_ms else "0")
    busy = [x.cpu_pct for x in samples["calls"] if x.t <= duration_s]
    per_frame_us = (statistics.fmean(busy) * 1e4 / (len(results) * 50)) if busy and results \
        else float("nan")
    table(["all calls", "n", "median", "p90", "max", "missing"], [
        summary_row("speech onset -> turn start", score.values("onset_ms"),
                    score.missing("onset_ms")),
        summary_row("speech end -> candidate", score.values("candidate_ms"),
                    score.missing("candidate_ms")),
        summary_row("speech end -> end of turn", score.values("end_ms"),
                    score.missing("end_ms")),
    ], f"Turn latencies over {len(score.turns)} turns of {len(results)} calls "
       f"(scripted recognizer: turns end at the silence ceiling)")
    problems = errors + failures + fallbacks
    table(["", "value", "target", ""], [
        ["calls x duration", f"{len(results)} x {duration_s:g} s",
         f"{TARGET_CALLS} x {TARGET_SOAK_S} s",
         verdict(min(len(results) / TARGET_CALLS, duration_s / TARGET_SOAK_S), 1.0,
                 higher_is_better=True)],
        ["errors + failed calls + fallbacks", f"{errors} + {failures} + {fallbacks}", "0",
         verdict(problems, 0)],
        ["frames late (> 20 ms)", f"{late}/{queued}", "0", verdict(late, 0)],
        ["frame lateness p99 / max (ms)",
         f"{hist_quantile_ms(hist, 0.99)} / {worst * 1000:.1f}", "", ""],
        ["late frames per minute of the calls", " ".join(map(str, by_minute)) or "-", "", ""],
        [f"host stalls > {STALL_S * 1000:.0f} ms ({probe.priority} probe)", stall_cell, "", ""],
        [f"late frames in transit in a host stall{classified}",
         f"{during} ({alone} late by the stall alone)", "", ""],
        ["late frames with no host stall in transit", str(len(spans) - during), "0",
         verdict(len(spans) - during, 0)],
        ["frames dropped", str(dropped), "0", verdict(dropped, 0)],
        ["client CPU per call-frame (pipeline + service)", f"{per_frame_us:.0f} us", "", ""],
        ["turns never ended", str(score.missing("end_ms")), "0",
         verdict(score.missing("end_ms"), 0)],
        [f"RSS growth after {warm_s:.0f} s, calls process",
         f"{growth.get('calls', float('nan')) * 100:+.1f}%", "within 10 %",
         verdict(abs(growth.get("calls", float("nan"))), TARGET_MEM_GROWTH)],
        [f"RSS growth after {warm_s:.0f} s, server",
         f"{growth.get('server', float('nan')) * 100:+.1f}%", "within 10 %",
         verdict(abs(growth.get("server", float("nan"))), TARGET_MEM_GROWTH)],
        ["wall time of the run", f"{wall:.0f} s", "", ""],
    ], "Scripted soak (transport + turn logic)")
    print_pauses()


def print_pauses() -> None:
    """Each calls process's event-loop stalls and garbage collections (for late frames)."""
    rows = [[str(i), " ".join(f"{x:.0f}" for x in p["lag"]),
             " / ".join(str(n) for n in p["gc"]), " / ".join(f"{x:.0f}" for x in p["gc_max"]),
             f"{p['gc_total']:.0f}"] for i, p in enumerate(PAUSES)]
    table(["process", "worst loop lag per minute (ms)", "GC runs gen 0/1/2",
           "GC max ms gen 0/1/2", "GC total ms"], rows,
          "Calls processes: event-loop stalls (a 10 ms tick's lateness) and collections")
    PAUSES.clear()


async def real_mode(ladder: list[int], trial_s: float, budget_s: float, per_call: int,
                    procs: int) -> None:
    rows: list[list[str]] = []
    best = 0
    knee: int | None = None
    async with ServerProcess() as server:
        print(f"real server (subprocess pid {server.pid}) at {server.url}; ladder "
              f"{ladder}, {trial_s:g} s per trial")
        t_start = time.monotonic()
        last: list[CallResult] = []
        for n in ladder:
            results, samples, failures = await run_calls(server.url, n, trial_s, server.pid,
                                                         2.0, procs)
            last = results
            score, late, queued, dropped, fallbacks, errors, _ = totals(results)
            cands = score.values("candidate_ms")
            p90_c = p90(cands + [float("inf")] * score.missing("candidate_ms")) / 1000
            cpu = [s.cpu_pct for s in samples["server"]]
            ok = p90_c <= TARGET_CAND_P90_S
            rows.append([str(n), str(len(score.turns)), fmt_s(med(cands) / 1000),
                         fmt_s(p90_c), fmt_s(p90(score.values("end_ms")) / 1000),
                         str(score.missing("candidate_ms")), f"{late}/{queued}", str(dropped),
                         str(fallbacks), str(errors + failures),
                         f"{med(cpu):.0f}%" if cpu else "-", "ok" if ok else "over"])
            if not ok:
                knee = n
                break
            best = n
            if n != ladder[-1] and time.monotonic() - t_start > budget_s:
                rows.append(["(stopped: time budget)"] + [""] * 11)
                break
    table(["calls", "turns", "cand med", "cand p90", "end p90", "no cand", "late", "dropped",
           "fallbacks", "errors", "server CPU", "p90<=1s"], rows,
          "Real recognizer: latencies in s from speech end to the frame at the pipeline end")
    if last:
        print_calls(last, per_call)
    table(["", "value", ""], [
        ["largest N with candidate p90 <= 1 s", str(best), ""],
        ["knee (first N over 1 s)", str(knee) if knee else f"> {best} (not reached)", ""],
    ], "Real recognizer capacity through the service")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load benchmark and print its tables; returns 0 (targets are reported, not
    asserted)."""
    from reson8_voice.eventloop import EVENT_LOOPS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--scripted", action="store_true", help="only the scripted soak")
    mode.add_argument("--real", action="store_true", help="only the real-recognizer knee")
    parser.add_argument("--quick", action="store_true", help="10 calls x 15 s; N in {2, 4}")
    parser.add_argument("--calls", type=int, default=None, help="scripted calls (default 50)")
    parser.add_argument("--duration", type=float, default=None,
                        help="scripted soak seconds (default 60; 600 is the full target)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds after which the real-recognizer ladder starts no new "
                        "step (default 120; 15 with --quick)")
    parser.add_argument("--per-call", type=int, default=12,
                        help="how many calls to list individually")
    parser.add_argument("--procs", type=int, default=0,
                        help="spread the calls over this many worker processes (default: one "
                        "per CPU, at most 4; 1 = all calls in this process)")
    parser.add_argument("--no-passthrough", action="store_true",
                        help="audio_passthrough=False: audio frames stop at the service "
                        "(pipecat's default passes them on to the rest of the pipeline)")
    parser.add_argument("--loop", choices=EVENT_LOOPS, default=None,
                        help="event loop of the calls and the server (default "
                        "$RESON8_BENCH_LOOP or auto: uvloop when installed)")
    parser.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--host-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--indices", help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sample", type=float, default=2.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.host_probe:
        host_probe_main()
        return 0
    quiet_logs("ERROR")
    if args.no_passthrough:
        os.environ["RESON8_BENCH_PASSTHROUGH"] = "0"
    if args.loop:
        os.environ["RESON8_BENCH_LOOP"] = args.loop
    if args.worker:
        indices = [int(i) for i in args.indices.split(",") if i]
        run_loop(worker_main(args.worker, indices, args.total, args.duration, args.sample))
        return 0
    t0 = time.monotonic()
    print(f"reson8-voice load benchmark ({'quick' if args.quick else 'full'}); "
          f"{machine_line()}, {bench_loop()} event loop")
    print()
    calls = args.calls or (10 if args.quick else TARGET_CALLS)
    procs = args.procs or min(4, os.cpu_count() or 1)
    duration = args.duration or (15.0 if args.quick else 60.0)
    if not args.real:
        run_loop(scripted_mode(calls, duration, args.per_call, min(procs, calls)))
    if not args.scripted:
        ladder = [2, 4] if args.quick else [2, 4, 6, 8, 12, 16, 24]
        run_loop(real_mode(ladder, 12.0 if args.quick else 25.0,
                              budget_s=args.budget or (15 if args.quick else 120),
                              per_call=args.per_call,
                              procs=procs))
    print(f"done in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
