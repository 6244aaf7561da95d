"""Shared helpers of the benchmark scripts: statistics, tables, ground-truth scoring, clips,
process sampling (/proc), real-time pacing and the embedded server in a subprocess.

Imported by ``benchmarks/bench_*.py`` (run from the repository root). Run directly, it is the
scripted embedded server used by ``bench_load.py --scripted``::

    python benchmarks/_common.py serve-scripted [--port 0]

(the ``reson8-voice serve`` command has no scripted-recogniser mode, so the load benchmark
starts this one). Nothing here asserts a target: :func:`verdict` prints PASS or MISS.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RATE = 8000
FRAME_MS = 20
ULAW_SILENCE = b"\xff"


def bench_loop() -> str:
    """The event loop a benchmark runs on: ``$RESON8_BENCH_LOOP`` (``auto``, ``asyncio`` or
    ``uvloop``; default ``auto``, as the CLI), resolved. Subprocesses inherit the variable."""
    from reson8_voice.eventloop import resolve_event_loop

    return resolve_event_loop(os.environ.get("RESON8_BENCH_LOOP", "auto"))


def run_loop(main: Any) -> Any:
    """``asyncio.run(main)`` on :func:`bench_loop`'s event loop."""
    from reson8_voice.eventloop import run

    return run(main, bench_loop())


def quiet_logs(level: str = "WARNING") -> None:
    """Send loguru (pipecat's and ours) to stderr at ``level`` only: tables stay readable."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=level)


# --------------------------------------------------------------------------------------
# statistics and printing
# --------------------------------------------------------------------------------------


def pct(values: Iterable[float], q: float) -> float:
    """The ``q`` quantile (0..1) with linear interpolation; NaN for no values."""
    xs = sorted(values)
    if not xs:
        return math.nan
    k = (len(xs) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def med(values: Iterable[float]) -> float:
    return pct(values, 0.5)


def p90(values: Iterable[float]) -> float:
    return pct(values, 0.9)


def fmt_s(value: float | None, digits: int = 3) -> str:
    """Seconds, or '-' when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def fmt_x(num: float | None, den: float | None) -> str:
    """The ratio num/den as '0.52x', or '-'."""
    if num is None or den is None or math.isnan(num) or math.isnan(den) or den == 0:
        return "-"
    return f"{num / den:.2f}x"


def verdict(value: float | None, target: float, *, higher_is_better: bool = False) -> str:
    """PASS or MISS beside a target (never an assertion); '-' when nothing was measured."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "PASS" if ok else "MISS"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> None:
    """Print an aligned text table (first column left-aligned, the rest right-aligned)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if title:
        print(title)

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        print(line(r))
    print()


def machine_line() -> str:
    """CPU count and load average, printed at the top: the numbers depend on them."""
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = ["?"]
    return (f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
            f"load average {' '.join(load)}")


# --------------------------------------------------------------------------------------
# ground truth: clips and scoring
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GtTurn:
    """A caller turn in stream ms: onset, end, where its last segment starts, its pauses."""

    start_ms: float
    end_ms: float
    last_segment_start_ms: float
    pauses: tuple[tuple[float, float], ...] = ()

    def shifted(self, by_ms: float) -> GtTurn:
        return GtTurn(self.start_ms + by_ms, self.end_ms + by_ms,
                      self.last_segment_start_ms + by_ms,
                      tuple((a + by_ms, b + by_ms) for a, b in self.pauses))


@dataclass(frozen=True)
class Clip:
    """Mu-law audio at 8 kHz with the turns it contains (complete turns only)."""

    name: str
    ulaw: bytes
    turns: tuple[GtTurn, ...]

    @property
    def duration_ms(self) -> float:
        return len(self.ulaw) / RATE * 1000

    def pcm16(self) -> bytes:
        from tests.audio_fixtures import mulaw_to_pcm16

        return mulaw_to_pcm16(self.ulaw)

    @property
    def pauses(self) -> int:
        return sum(len(t.pauses) for t in self.turns)


def fixture_clip(name: str, start_ms: int = 0, end_ms: int | None = None,
                 tail_ms: int = 0) -> Clip:
    """A fixture, optionally cut to [start_ms, end_ms) and padded with ``tail_ms`` of its
    own line noise (the speech-free opening of the file, looped), with the turns that lie
    wholly inside."""
    from tests.audio_fixtures import load_fixture

    fx = load_fixture(name)
    end = fx.duration_ms if end_ms is None else min(end_ms, fx.duration_ms)
    data = fx.data[start_ms * 8:end * 8]
    if tail_ms:
        data += line_noise(name, tail_ms)
    turns = tuple(
        GtTurn(t.start_ms, t.end_ms, t.segments[-1].start_ms,
               tuple((float(a), float(b)) for a, b in t.pause_spans())).shifted(-start_ms)
        for t in fx.turns if t.start_ms >= start_ms and t.end_ms + 300 <= end
    )
    return Clip(name if end_ms is None and not start_ms else f"{name}[{start_ms}:{end}]",
                data, turns)


def spread_clip(name: str, min_gap_ms: int = 4000, max_turns: int | None = None) -> Clip:
    """A fixture (its first ``max_turns`` turns) with every gap after a turn stretched to at
    least ``min_gap_ms`` by inserting the file's own line noise 600 ms after the turn ends.

    On a call the caller waits for the answer; the fixtures' 1.5-2 s gaps assume a bot
    answered. A stack that waits for a fallback timeout (pipecat's 3 s) would otherwise
    merge the turn with the next one, and its latency could not be measured.
    """
    from tests.audio_fixtures import load_fixture

    fx = load_fixture(name)
    kept = fx.turns[:max_turns]
    data = bytearray()
    turns: list[GtTurn] = []
    pos = 0  # in the original, ms
    shift = 0  # inserted so far, ms
    for k, t in enumerate(kept):
        nxt = fx.turns[k + 1].start_ms if k + 1 < len(fx.turns) else fx.duration_ms
        turns.append(GtTurn(t.start_ms, t.end_ms, t.segments[-1].start_ms,
                            tuple((float(a), float(b)) for a, b in t.pause_spans())
                            ).shifted(shift))
        gap = nxt - t.end_ms
        cut = t.end_ms + min(600, gap // 2)
        data += fx.data[pos * 8:cut * 8]
        pos = cut
        if gap < min_gap_ms:
            data += line_noise(name, min_gap_ms - gap)
            shift += min_gap_ms - gap
    if len(kept) < len(fx.turns):  # the rest of the gap, without the next turn's onset
        data += fx.data[pos * 8:(fx.turns[len(kept)].start_ms - 200) * 8]
        name = f"{name}[:{len(kept)} turns]"
    else:
        data += fx.data[pos * 8:]
    return Clip(name, bytes(data), tuple(turns))


def line_noise(name: str, ms: int) -> bytes:
    """``ms`` of the fixture's line noise (its speech-free opening, looped): no speech."""
    from tests.audio_fixtures import load_fixture

    fx = load_fixture(name)
    first = fx.turns[0].start_ms if fx.turns else fx.duration_ms
    quiet = fx.data[: max(8, (first - 100) * 8)]
    reps = ms * 8 // len(quiet) + 1
    return (quiet * reps)[: ms * 8]


@dataclass
class TurnScore:
    """How a turn source did on one ground-truth turn (latencies in ms; None = missing)."""

    turn: GtTurn
    onset_ms: float | None = None
    candidate_ms: float | None = None
    end_ms: float | None = None
    cuts: int = 0


@dataclass
class Score:
    """All turns of a run, plus events that match no turn."""

    turns: list[TurnScore] = field(default_factory=list)
    spurious_starts: int = 0

    def values(self, attr: str) -> list[float]:
        return [float(getattr(t, attr)) for t in self.turns if getattr(t, attr) is not None]

    def missing(self, attr: str) -> int:
        return sum(1 for t in self.turns if getattr(t, attr) is None)

    @property
    def cuts(self) -> int:
        return sum(t.cuts for t in self.turns)

    @property
    def pauses(self) -> int:
        return sum(len(t.turn.pauses) for t in self.turns)

    def extend(self, other: Score) -> None:
        self.turns.extend(other.turns)
        self.spurious_starts += other.spurious_starts


def score_turns(turns: Sequence[GtTurn], *, starts: Iterable[float] = (),
                candidates: Iterable[float] = (), ends: Iterable[float] = (),
                onset_slack_ms: float = 300.0) -> Score:
    """Match event times (ms from the stream's start, as they arrived) to ground-truth turns.

    Events arrive in stream order (a turn's end before the next turn's start), so a turn's
    window closes at the next turn's start *event*, not at its ground-truth start: on a
    starved machine an end can arrive after the next turn has begun and still be this one's.

    - onset: the first start in [turn start - slack, turn end), or up to this turn's end
      event for a start that arrived late (a one-word turn, under load);
    - cut: an end decided after this turn's start event and before its speech ended (the
      caller was mid-turn, in a pause, and would have been answered too early);
    - end: the first end at or after the turn's speech end and before the next turn's
      start event (its ground-truth start, when none came);
    - candidate: the last candidate in [last segment start, that end] (the one that
      carried the whole turn), or the first one after the last segment start when no end.
    """
    s, c, e = sorted(starts), sorted(candidates), sorted(ends)
    out = Score()
    matched: set[int] = set()

    def first_start(t: GtTurn) -> float | None:
        return next((x for x in s if x >= t.start_ms - onset_slack_ms), None)

    for k, t in enumerate(turns):
        nxt = math.inf
        if k + 1 < len(turns):
            nxt_event = first_start(turns[k + 1])
            nxt = turns[k + 1].start_ms if nxt_event is None else max(
                nxt_event, turns[k + 1].start_ms)
        ts = TurnScore(t)
        end = next((x for x in e if t.end_ms <= x < nxt), None)
        until = t.end_ms if end is None else max(t.end_ms, end)
        mine = [i for i, x in enumerate(s) if t.start_ms - onset_slack_ms <= x < until]
        matched.update(mine)
        if mine:
            ts.onset_ms = s[mine[0]] - t.start_ms
        began = s[mine[0]] if mine else t.start_ms
        ts.cuts = sum(1 for x in e if max(began, t.start_ms) < x < t.end_ms)
        if end is not None:
            ts.end_ms = end - t.end_ms
            within = [x for x in c if t.last_segment_start_ms <= x <= end]
            cand = within[-1] if within else None
        else:
            cand = next((x for x in c if t.last_segment_start_ms <= x < nxt), None)
        if cand is not None:
            ts.candidate_ms = cand - t.end_ms
        out.turns.append(ts)
    out.spurious_starts = len(s) - len(matched)
    return out


def summary_row(label: str, values_ms: Sequence[float], missing: int = 0) -> list[str]:
    """[label, n, median s, p90 s, max s, missing] for a table."""
    v = [x / 1000 for x in values_ms]
    return [label, str(len(v)), fmt_s(med(v)), fmt_s(p90(v)),
            fmt_s(max(v) if v else None), str(missing)]


# --------------------------------------------------------------------------------------
# /proc sampling (no psutil needed)
# --------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of ``pid`` in MiB (VmRSS), NaN if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def cpu_s(pid: int | str = "self") -> float:
    """User + system CPU seconds consumed by ``pid`` (all its threads)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def host_cpu_s() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine, all CPUs, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return math.nan, math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICK, steal / _TICK


@dataclass
class Sample:
    t: float
    rss_mb: float
    cpu_pct: float
    #: the "host" series only: CPU time stolen by the hypervisor, % of one core
    steal_pct: float = 0.0


class ProcSampler:
    """Samples RSS and CPU (% of one core) of some processes every ``interval`` s; the pid
    ``"host"`` samples the whole machine (busy and stolen CPU, % of one core; no RSS)."""

    def __init__(self, pids: dict[str, int | str], interval: float = 2.0) -> None:
        self.pids = pids
        self.interval = interval
        self.samples: dict[str, list[Sample]] = {k: [] for k in pids}
        self._task: asyncio.Task[None] | None = None
        self.t0 = time.monotonic()

    @staticmethod
    def _read(pid: int | str) -> tuple[float, float]:
        return host_cpu_s() if pid == "host" else (cpu_s(pid), 0.0)

    async def _run(self) -> None:
        last = {k: (time.monotonic(), *self._read(p)) for k, p in self.pids.items()}
        while True:
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            for k, p in self.pids.items():
                c, stolen = self._read(p)
                t_prev, c_prev, stolen_prev = last[k]
                span = max(1e-6, now - t_prev)
                self.samples[k].append(Sample(
                    now - self.t0, math.nan if p == "host" else rss_mb(p),
                    100 * (c - c_prev) / span, 100 * (stolen - stolen_prev) / span))
                last[k] = (now, c, stolen)

    def start(self) -> None:
        self.t0 = time.monotonic()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


# --------------------------------------------------------------------------------------
# the embedded server in a subprocess
# --------------------------------------------------------------------------------------

_URL = re.compile(r"ws://[^/\s]+")
_THIS = str(Path(__file__).resolve())


class ServerProcess:
    """The embedded server in its own process (so its CPU and memory are measured apart).

    ``scripted=False``: ``python -m reson8_voice serve --port 0`` (real models).
    ``scripted=True``: this module's ``serve-scripted`` (zero-cost scripted recognition).
    ``command``: any other server that prints ``ws://host:port`` on a line of its stdout.
    """

    def __init__(self, *, scripted: bool = False, workers: int = 2,
                 start_timeout: float = 180.0, command: Sequence[str] | None = None) -> None:
        self.command = list(command) if command else None
        self.scripted = scripted
        self.workers = workers
        self.start_timeout = start_timeout
        self.url = ""
        self.pid = 0
        self.startup_s = 0.0
        self._proc: asyncio.subprocess.Process | None = None
        self._log = tempfile.NamedTemporaryFile(
            prefix="reson8-bench-server-", suffix=".log", delete=False)

    async def __aenter__(self) -> ServerProcess:
        if self.command:
            cmd = self.command
        elif self.scripted:
            cmd = [sys.executable, _THIS, "serve-scripted",
                   "--workers", str(self.workers)]
        else:
            cmd = [sys.executable, "-m", "reson8_voice", "serve", "--port", "0",
                   "--workers", str(self.workers), "--loop", bench_loop()]
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        env.pop("RESON8_API_KEY", None)
        t0 = time.monotonic()
        self._proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=self._log,
            stdin=subprocess.DEVNULL)
        self.pid = self._proc.pid
        assert self._proc.stdout is not None
        try:
            async with asyncio.timeout(self.start_timeout):
                while True:
                    line = (await self._proc.stdout.readline()).decode()
                    if not line:
                        raise RuntimeError(f"server exited; see {self._log.name}")
                    match = _URL.search(line)
                    if match:
                        self.url = match.group(0)
                        break
        except BaseException:
            await self._stop(keep_log=True)
            raise
        self.startup_s = time.monotonic() - t0
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop(keep_log=exc[0] is not None)

    async def _stop(self, keep_log: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._log.close()
        if keep_log:
            print(f"(server log kept in {self._log.name})", file=sys.stderr)
        else:
            with contextlib.suppress(OSError):
                os.unlink(self._log.name)

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def cpu_s(self) -> float:
        return cpu_s(self.pid)

    @property
    def log_path(self) -> str:
        return self._log.name


# --------------------------------------------------------------------------------------
# pacing
# --------------------------------------------------------------------------------------


async def paced(n_frames: int, t0: float, on_frame: Callable[[int], Any],
                frame_ms: int = FRAME_MS, lateness: list[float] | None = None) -> None:
    """Call ``on_frame(i)`` (sync or async) when frame i's audio is complete in real time:
    at ``t0 + (i + 1) * frame_ms``. Records how late each call was (s) in ``lateness``."""
    for i in range(n_frames):
        due = t0 + (i + 1) * frame_ms / 1000
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if lateness is not None:
            lateness.append(time.monotonic() - due)
        result = on_frame(i)
        if asyncio.iscoroutine(result):
            await result


def frames_of(data: bytes, size: int) -> list[bytes]:
    """Consecutive ``size``-byte frames (a short last one is padded with its last byte)."""
    out = [data[i:i + size] for i in range(0, len(data), size)]
    if out and len(out[-1]) < size:
        out[-1] = out[-1] + out[-1][-1:] * (size - len(out[-1]))
    return out


# --------------------------------------------------------------------------------------
# the scripted server (entry point)
# --------------------------------------------------------------------------------------


def scripted_job_runner(eot: float = 0.0) -> Callable[[Any], Any]:
    """Zero-cost jobs: one word per 250 ms of audio; end of turn probability ``eot`` (0.0:
    turns end at the engine's silence ceiling). The same script as the tests' runner."""
    from reson8_voice.engine.asr import Recognition, RecognizedWord
    from reson8_voice.engine.turn_engine import EndOfTurnJob

    def run(job: Any) -> Any:
        if isinstance(job, EndOfTurnJob):
            return eot
        ms = len(job.pcm16) / 2 / job.sample_rate * 1000
        n = max(1, int(ms // 250))
        words = tuple(RecognizedWord(f"w{i}", i * 250, 200, 0.9) for i in range(n))
        return Recognition(" ".join(w.text for w in words), "en", words, 1.0)

    return run


async def _serve_scripted(port: int, workers: int) -> None:
    from reson8_voice.server import Reson8Server, ServerConfig

    quiet_logs()
    server = Reson8Server(ServerConfig(port=port, workers=workers), scripted_job_runner())
    await server.start()
    print(f"reson8-voice: serving {server.url}/v1/speech-to-text/turns (scripted recognizer)",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``serve-scripted``: the embedded server with scripted recognition (for load tests)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("command", choices=["serve-scripted"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        run_loop(_serve_scripted(args.port, args.workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
