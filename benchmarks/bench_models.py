"""Latency of the embedded engine's two models on real phone speech, against stock Whisper.

Run: ``python benchmarks/bench_models.py`` (``--quick`` skips the WER sweep; or import and
call :func:`main`).

* Recogniser: time per call on ~1 s, ~3 s and ~8 s utterances cut from the committed
  fixtures (8 kHz mu-law upsampled to 16 kHz), for beam 1 and beam 5, with the engine's
  reduced encoder window (:class:`WhisperRecognizer`, 15 s minimum) and with the stock
  30 s window (``min_window_s=30``). The baseline is stock faster-whisper
  ``WhisperModel.transcribe`` (30 s window, beam 5, no VAD filter) on the same model.
* Word error rate of each configuration over every fixture turn.
* Word timestamps: the extra cost of ``word_timestamps=True``.
* Throughput of one shared model (two replicas) under two threads against one.
* End of turn: smart-turn v3 per call (features + ONNX inference) and features alone; and
  how well it separates the fixtures' turn ends from their intra-turn pauses at 100-400 ms
  of silence (AUC: the chance that an end scores above a pause; 0.5 is a coin).
* Load times and the process RSS after loading both models.

Every figure is measured in this run; timings are the median and the minimum of several
repeats on a machine that may be shared (the minimum is the least noisy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from reson8_voice.engine.asr import SAMPLE_RATE, WhisperRecognizer, resample_pcm16
from reson8_voice.engine.eot import WINDOW_SECONDS, SmartTurnModel
from tests.audio_fixtures import Fixture, Turn, all_fixtures, load_fixture, wer


def rss_after_loading(load: bool = True) -> float:
    """RSS in MiB of a new interpreter that loads the default recogniser and smart-turn."""
    import subprocess

    code = ("import numpy, reson8_voice.engine.asr, reson8_voice.engine.eot\n"
            + ("reson8_voice.engine.asr.WhisperRecognizer()\n"
               "reson8_voice.engine.eot.SmartTurnModel()\n" if load else "")
            + "import pathlib\n"
            "print([l for l in pathlib.Path('/proc/self/status').read_text().splitlines()"
            " if l.startswith('VmRSS:')][0].split()[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[-1]) / 1024


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float, float]:
    """(median wall, min wall, median CPU) time of ``fn`` in ms.

    CPU time (all threads of the process) is the contention-proof figure for a
    single-threaded inference on a shared machine."""
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append((time.perf_counter() - t0) * 1000)
        cpus.append((time.process_time() - c0) * 1000)
    return statistics.median(walls), min(walls), statistics.median(cpus)


def cut(fixture: Fixture, start_ms: int, end_ms: int) -> np.ndarray:
    return resample_pcm16(fixture.samples()[start_ms * 8 : end_ms * 8], 8000)


def utterances() -> dict[str, tuple[np.ndarray, str]]:
    """~1 s, ~3 s and ~8 s of speech with their ground truth, padded as a segmenter would."""
    short = load_fixture("short_answers").turns[0]
    one = (cut(load_fixture("short_answers"), short.start_ms - 300, short.start_ms + 700),
           short.text)
    fixtures = [f for f in all_fixtures() if f.turns]
    three_f, three_t = min(((f, t) for f in fixtures for t in f.turns),
                           key=lambda ft: abs(ft[1].duration_ms - 2500))
    three = (cut(three_f, three_t.start_ms - 200, three_t.start_ms - 200 + 3000), three_t.text)
    long_f = load_fixture("long_turn")
    long_t = long_f.turns[0]
    segs = [s for s in long_t.segments if s.end_ms - long_t.start_ms <= 7500]
    eight = (cut(long_f, long_t.start_ms - 200, long_t.start_ms - 200 + 8000),
             " ".join(s.text for s in segs))
    return {"1 s": one, "3 s": three, "8 s": eight}


def all_turns() -> list[tuple[np.ndarray, Turn]]:
    out = []
    for fixture in all_fixtures():
        for turn in fixture.turns:
            out.append((cut(fixture, max(0, turn.start_ms - 200),
                            min(fixture.duration_ms, turn.end_ms + 300)), turn))
    return out


def separability(eot: SmartTurnModel, silences: tuple[int, ...] = (100, 200, 300, 400)) -> None:
    """p(complete) after ``silence`` ms at every turn end and every intra-turn pause that
    long (the turn so far as the model sees it), and the AUC of ends against pauses."""
    print("\nsmart-turn v3 on the fixtures: turn ends against intra-turn pauses")
    print(f"{'silence':>8} {'ends >= 0.5':>12} {'pauses >= 0.5':>14} {'AUC':>6}")
    fixtures = all_fixtures()
    for silence in silences:
        ends: list[float] = []
        pauses: list[float] = []
        for fixture in fixtures:
            for turn in fixture.turns:
                for i, seg in enumerate(turn.segments):
                    last = i == len(turn.segments) - 1
                    if not last and turn.segments[i + 1].start_ms - seg.end_ms < silence:
                        continue
                    stop = seg.end_ms + silence
                    p = eot.predict(cut(fixture, max(turn.start_ms, stop - 8000), stop))
                    (ends if last else pauses).append(p)
        auc = sum((e > q) + 0.5 * (e == q) for e in ends for q in pauses) / (
            len(ends) * len(pauses))
        print(f"{silence:>6}ms {sum(e >= 0.5 for e in ends):>6}/{len(ends):<5} "
              f"{sum(q >= 0.5 for q in pauses):>7}/{len(pauses):<6} {auc:6.2f}")


def aggregate_wer(pairs: list[tuple[str, str]]) -> float:
    from tests.audio_fixtures import normalize_text

    words = [len(normalize_text(ref)) for ref, _ in pairs]
    return sum(wer(ref, hyp) * n for (ref, hyp), n in zip(pairs, words, strict=True)) / sum(
        words)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="skip the WER sweep")
    args = parser.parse_args(argv)
    rep = args.repeats

    print(f"cores: {os.cpu_count()}")
    recognizers = {
        (beam, win): WhisperRecognizer(beam_size=beam, min_window_s=win, warm_up=False)
        for beam in (1, 5) for win in (10.0, 15.0, 30.0)
    }
    for r in recognizers.values():  # warm every configuration
        r.transcribe(np.zeros(SAMPLE_RATE, dtype=np.int16), word_timestamps=True)
    t1 = time.perf_counter()
    single = WhisperRecognizer()
    whisper_load_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    eot = SmartTurnModel()
    eot_load_s = time.perf_counter() - t2
    stock = single._model  # the same faster-whisper model, for the stock baseline

    def stock_call(audio: np.ndarray, beam: int) -> str:
        segments, _ = stock.transcribe(
            audio.astype(np.float32) / 32768.0, language="en", beam_size=beam,
            vad_filter=False, condition_on_previous_text=False, without_timestamps=True)
        return " ".join(s.text.strip() for s in segments)

    print(f"load + warm-up: Whisper tiny.en int8 {whisper_load_s:.2f} s, "
          f"smart-turn v3 {eot_load_s:.2f} s")

    # -- recogniser latency ------------------------------------------------------------------
    utt = utterances()
    print("\nRecogniser, ms per call: wall median / wall min / CPU median, one thread:")
    header = f"{'configuration':44}" + "".join(f"{k:>21}" for k in utt)
    print(header)
    baseline: dict[str, float] = {}
    rows: list[tuple[str, Callable[[np.ndarray], Any]]] = [
        ("stock faster-whisper, 30 s window, beam 5", lambda a: stock_call(a, 5)),
        ("stock faster-whisper, 30 s window, beam 1", lambda a: stock_call(a, 1)),
    ]
    for (beam, win), r in recognizers.items():
        rows.append((f"WhisperRecognizer window>={win:.0f} s, beam {beam}",
                     lambda a, r=r: r.transcribe(a)))
    rows.append(("WhisperRecognizer default + word timestamps",
                 lambda a: single.transcribe(a, word_timestamps=True)))
    for name, fn in rows:
        cells = []
        for key, (audio, _) in utt.items():
            med, low, cpu = timed(lambda fn=fn, audio=audio: fn(audio), rep)
            if not baseline.get(key):
                baseline[key] = cpu
            cells.append(f"{med:5.0f}/{low:4.0f}/{cpu:4.0f} {baseline[key] / cpu:3.1f}x")
        print(f"{name:44}" + "".join(f"{c:>21}" for c in cells))
    print("(x = CPU-time speed-up against the first row)")

    # -- accuracy -----------------------------------------------------------------------------
    if not args.quick:
        turns = all_turns()
        total_s = sum(len(a) for a, _ in turns) / SAMPLE_RATE
        print(f"\nWER over all {len(turns)} fixture turns ({total_s:.0f} s of audio):")
        configs: list[tuple[str, Callable[[np.ndarray], str]]] = [
            ("stock faster-whisper, 30 s window, beam 5", lambda a: stock_call(a, 5)),
            ("stock faster-whisper, 30 s window, beam 1", lambda a: stock_call(a, 1)),
        ] + [
            (f"WhisperRecognizer window>={win:.0f} s, beam {beam}",
             lambda a, r=r: r.transcribe(a).text)
            for (beam, win), r in recognizers.items()
        ]
        for name, fn in configs:
            t = time.perf_counter()
            pairs = [(turn.text, fn(audio)) for audio, turn in turns]
            elapsed = time.perf_counter() - t
            bad = sum(wer(ref, hyp) > 0.2 for ref, hyp in pairs)
            print(f"  {name:44} WER {aggregate_wer(pairs) * 100:5.1f} %   turns >20 %: {bad:2}"
                  f"   {elapsed / len(turns) * 1000:5.0f} ms/turn, RTF "
                  f"{elapsed / total_s:.3f}")

    # -- throughput ---------------------------------------------------------------------------
    audio3 = utt["3 s"][0]
    shared = WhisperRecognizer(num_workers=2)
    calls = 8
    print()
    for threads in (1, 2):
        with ThreadPoolExecutor(threads) as pool:
            c, t = time.process_time(), time.perf_counter()
            list(pool.map(lambda _: shared.transcribe(audio3), range(calls)))
            elapsed, cpu_s = time.perf_counter() - t, time.process_time() - c
        print(f"throughput, one model (num_workers=2), {threads} thread(s): "
              f"{calls / elapsed:.2f} calls/s on the 3 s utterance "
              f"(CPU {cpu_s / elapsed:.2f} cores busy)")

    # -- end of turn --------------------------------------------------------------------------
    fixture = load_fixture("call_restaurant")
    turn = fixture.turns[0]
    clip = cut(fixture, turn.start_ms - 300, turn.end_ms + 300)
    med, low, cpu = timed(lambda: eot.predict(clip), rep * 3)
    window = np.zeros(WINDOW_SECONDS * SAMPLE_RATE, dtype=np.float32)
    window[-len(clip):] = clip / 32768.0
    fmed, flow, fcpu = timed(lambda: eot._features(window, do_normalize=True), rep * 3)
    print(f"\nsmart-turn v3 per call: wall {med:.0f} ms median / {low:.0f} ms min, CPU "
          f"{cpu:.0f} ms (features alone: wall {fmed:.1f} / {flow:.1f} ms, CPU {fcpu:.1f} ms); "
          f"p(complete) here = "
          f"{eot.predict(clip):.3f}")

    separability(eot)

    print(f"\nRSS of a fresh process after loading both models: {rss_after_loading():.0f} MiB "
          f"(python + numpy alone: {rss_after_loading(load=False):.0f} MiB)")


if __name__ == "__main__":
    main()
