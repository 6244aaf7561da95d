"""Cost per 20 ms frame at 8 kHz of the G.711 codecs and the local VAD, against baselines.

Run: ``python benchmarks/bench_audio.py`` (or import and call :func:`main`).

* G.711: our wrappers (``reson8_voice.g711``) vs a bare ``audioop`` call on the same frame;
  target: wrapper within 1.5x of bare.
* VAD decision: ``VoiceActivityDetector.is_speech`` (WebRTC) vs pipecat's
  ``SileroVADAnalyzer.voice_confidence`` (the onnx model pipecat ships, run offline), both
  normalised to 20 ms of audio; target: WebRTC >= 50x cheaper. The full streaming path
  (``process``: buffering, decode, hysteresis) and the bare ``webrtcvad`` call are shown too.
* Detection latency on the real-speech fixture, for the barge-in target (median <= 100 ms).

Timings are the best of several repeats of many iterations (``time.perf_counter_ns``), which
is the least noisy estimate of the per-call cost on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import struct
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reson8_voice import g711
from reson8_voice.vad import SpeechStarted, VoiceActivityDetector

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

import webrtcvad

RATE = 8000
FRAME_MS = 20
SAMPLES = RATE * FRAME_MS // 1000
FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "vad_speech.ulaw"
MANIFEST = FIXTURE.with_suffix(".json")


_NO_ARG: Any = object()


def speech_pcm() -> bytes:
    """Real speech from the test fixture, or a synthetic voiced signal if it is absent."""
    if FIXTURE.exists():
        return g711.ulaw_decode(FIXTURE.read_bytes())
    values = [
        round(6000 * math.sin(2 * math.pi * 180 * n / RATE) * (1 + math.sin(n / 400)) / 2)
        for n in range(RATE * 5)
    ]
    return struct.pack(f"<{len(values)}h", *values)


def frames_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data) - size + 1, size)]


def time_per_call(
    fn: Callable[..., object], inputs: list[Any], min_calls: int, repeats: int,
    arg: Any = _NO_ARG,
) -> float:
    """Best-of-``repeats`` mean ns per call of ``fn(item[, arg])`` over ``inputs`` (cycled).

    ``arg`` lets a bare C function be called directly (``audioop.lin2ulaw(frame, 2)``)
    rather than through a lambda, which would flatter any wrapper compared with it.
    """
    passes = max(1, math.ceil(min_calls / len(inputs)))
    best = math.inf
    for _ in range(repeats):
        if arg is not _NO_ARG:
            start = time.perf_counter_ns()
            for _ in range(passes):
                for item in inputs:
                    fn(item, arg)
        else:
            start = time.perf_counter_ns()
            for _ in range(passes):
                for item in inputs:
                    fn(item)
        elapsed = time.perf_counter_ns() - start
        best = min(best, elapsed / (passes * len(inputs)))
    return best


def fmt_ns(ns: float) -> str:
    return f"{ns / 1000:8.2f} us" if ns >= 1000 else f"{ns:8.0f} ns"


def bench_codecs(pcm: bytes, calls: int, repeats: int) -> list[tuple[str, float, float]]:
    pcm_frames = frames_of(pcm, 2 * SAMPLES)
    ulaw_frames = [audioop.lin2ulaw(f, 2) for f in pcm_frames]
    alaw_frames = [audioop.lin2alaw(f, 2) for f in pcm_frames]
    mu_enc = g711.G711Encoder("mulaw")
    a_enc = g711.G711Encoder("alaw")
    cases: list[tuple[str, Callable[..., object], Callable[..., object], list[bytes]]] = [
        ("mu-law encode", g711.ulaw_encode, audioop.lin2ulaw, pcm_frames),
        ("mu-law decode", g711.ulaw_decode, audioop.ulaw2lin, ulaw_frames),
        ("A-law encode", g711.alaw_encode, audioop.lin2alaw, pcm_frames),
        ("A-law decode", g711.alaw_decode, audioop.alaw2lin, alaw_frames),
        ("mu-law G711Encoder.encode", mu_enc.encode, audioop.lin2ulaw, pcm_frames),
        ("A-law G711Encoder.encode", a_enc.encode, audioop.lin2alaw, pcm_frames),
    ]
    rows = []
    for name, ours, bare, inputs in cases:
        # Interleave the two measurements so machine noise hits both alike.
        t_ours, t_bare = math.inf, math.inf
        for _ in range(repeats):
            t_bare = min(t_bare, time_per_call(bare, inputs, calls, 1, 2))
            t_ours = min(t_ours, time_per_call(ours, inputs, calls, 1))
        rows.append((name, t_ours, t_bare))
    return rows


def bench_vad(pcm: bytes, calls: int, silero_calls: int, repeats: int) -> dict[str, float]:
    pcm_frames = frames_of(pcm, 2 * SAMPLES)
    ulaw_frames = [audioop.lin2ulaw(f, 2) for f in pcm_frames]
    out: dict[str, float] = {}

    ours = VoiceActivityDetector(sample_rate=RATE, frame_ms=FRAME_MS)
    out["ours.is_speech"] = time_per_call(ours.is_speech, pcm_frames, calls, repeats)
    bare = webrtcvad.Vad(ours.aggressiveness)
    out["webrtcvad"] = time_per_call(bare.is_speech, pcm_frames, calls, repeats, RATE)
    stream = VoiceActivityDetector(sample_rate=RATE, frame_ms=FRAME_MS)
    out["ours.process"] = time_per_call(stream.process, pcm_frames, calls, repeats)
    stream_mu = VoiceActivityDetector(sample_rate=RATE, frame_ms=FRAME_MS, encoding="mulaw")
    out["ours.process.mulaw"] = time_per_call(stream_mu.process, ulaw_frames, calls, repeats)

    try:
        from loguru import logger

        logger.disable("pipecat")
        from pipecat.audio.vad.silero import SileroVADAnalyzer
    except Exception as exc:  # pragma: no cover - pipecat or onnxruntime missing
        print(f"(Silero unavailable: {exc})", file=sys.stderr)
        return out
    silero = SileroVADAnalyzer(sample_rate=RATE)
    silero.set_sample_rate(RATE)
    window = silero.num_frames_required() * 2
    windows = frames_of(pcm, window)
    per_window = time_per_call(silero.voice_confidence, windows, silero_calls, min(repeats, 3))
    out["silero.window_ms"] = silero.num_frames_required() * 1000 / RATE
    out["silero.per_window"] = per_window
    out["silero"] = per_window * FRAME_MS / out["silero.window_ms"]
    return out


def detection_latency() -> list[int]:
    """Stream ms from each true onset to the SpeechStarted that reports it, frame by frame."""
    if not MANIFEST.exists():
        return []
    truth = [s["start_ms"] for s in json.loads(MANIFEST.read_text())["speech"]]
    ulaw = FIXTURE.read_bytes()
    vad = VoiceActivityDetector(sample_rate=RATE, encoding="mulaw")
    latencies: list[int] = []
    for i in range(0, len(ulaw), SAMPLES):
        for event in vad.process(ulaw[i : i + SAMPLES]):
            if isinstance(event, SpeechStarted) and len(latencies) < len(truth):
                latencies.append(vad.stream_ms - truth[len(latencies)])
    return latencies


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the tables; returns a process exit code (always 0)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args(argv)
    calls, silero_calls, repeats = (20_000, 200, 3) if args.quick else (100_000, 1_000, 5)

    pcm = speech_pcm()
    print(f"reson8-voice audio benchmark: 20 ms frames at {RATE} Hz "
          f"({SAMPLES} samples), Python {sys.version.split()[0]}")
    print()
    print(f"{'G.711 (per 20 ms frame)':<28} {'ours':>11} {'bare audioop':>13} {'ratio':>7}"
          f"  target <= 1.5x")
    for name, t_ours, t_bare in bench_codecs(pcm, calls, repeats):
        ratio = t_ours / t_bare
        flag = "ok" if ratio <= 1.5 else "SLOW"
        print(f"{name:<28} {fmt_ns(t_ours):>11} {fmt_ns(t_bare):>13} {ratio:6.2f}x  {flag}")
    print()

    vad = bench_vad(pcm, calls // 10, silero_calls, repeats)
    print(f"{'VAD decision (per 20 ms)':<40} {'cost':>11}")
    print(f"{'webrtcvad.Vad.is_speech (bare)':<40} {fmt_ns(vad['webrtcvad']):>11}")
    print(f"{'VoiceActivityDetector.is_speech':<40} {fmt_ns(vad['ours.is_speech']):>11}")
    print(f"{'VoiceActivityDetector.process (PCM)':<40} {fmt_ns(vad['ours.process']):>11}")
    print(f"{'VoiceActivityDetector.process (mu-law)':<40} "
          f"{fmt_ns(vad['ours.process.mulaw']):>11}")
    if "silero" in vad:
        print(f"{'SileroVADAnalyzer (pipecat), per 20 ms':<40} {fmt_ns(vad['silero']):>11}"
              f"   ({fmt_ns(vad['silero.per_window']).strip()} per "
              f"{vad['silero.window_ms']:.0f} ms window)")
        ratio = vad["silero"] / vad["ours.is_speech"]
        flag = "ok" if ratio >= 50 else "SLOW"
        print(f"Silero / WebRTC decision: {ratio:.0f}x cheaper  (target >= 50x)  {flag}")
        ratio_stream = vad["silero"] / vad["ours.process.mulaw"]
        print(f"Silero / full mu-law streaming path: {ratio_stream:.0f}x cheaper")
    print()

    latencies = detection_latency()
    if latencies:
        print(f"Barge-in detection latency on the speech fixture (ms after true onset): "
              f"{latencies}, median {statistics.median(latencies):.0f} ms (target <= 100)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
