"""The embedded server under abuse, while a well-behaved caller is served: latency, memory.

Run: ``python benchmarks/bench_abuse.py [--attempts 10000] [--quick]``. Loopback only,
bounded in count and time. In one process: the server (scripted recognition, so the
numbers are about the server, not the model), then in parallel

* ``--attempts`` upgrades with bad keys (at most 50 in flight),
* sessions that send random bytes, random JSON and oversized frames,
* half-finished handshakes held open,

while a good client streams a fixture in real time, several times over. Its turn_end
latency (from the ground-truth end of speech) is printed beside the same client's latency
with no abuse, measured first in the same run, and RSS before, during and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.asyncio.client import connect as raw_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from benchmarks._common import med, p90, quiet_logs, rss_mb, scripted_job_runner
from reson8_voice import ApiKey, Secret, TurnEnd, TurnsParams, connect_turns
from reson8_voice.server import Reson8Server, ServerConfig
from tests.audio_fixtures import load_fixture

KEY = "r8_bench_abuse_key_0001"
TURNS = "/v1/speech-to-text/turns?encoding=mulaw&sample_rate=8000"


async def good_call(url: str) -> list[float]:
    fx = load_fixture("short_answers")
    latencies: list[float] = []
    conn = await connect_turns(url, TurnsParams(encoding="mulaw", sample_rate=8000),
                               ApiKey.of(KEY))
    async with conn:
        t0 = time.monotonic()

        async def read() -> None:
            for turn in fx.turns:
                while not isinstance(await conn.recv(), TurnEnd):
                    pass
                latencies.append(time.monotonic() - t0 - turn.end_ms / 1000)

        reader = asyncio.create_task(read())
        for i, chunk in enumerate(fx.chunks(20)):
            await conn.send_audio(chunk)
            await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.monotonic()))
        await asyncio.wait_for(reader, 30)
    return latencies


async def bad_keys(url: str, n: int) -> int:
    sem = asyncio.Semaphore(50)
    refused = 0

    async def one(i: int) -> None:
        nonlocal refused
        async with sem:
            try:
                async with raw_connect(url + TURNS, open_timeout=10,
                                       additional_headers={"Authorization": f"ApiKey x{i}"}):
                    pass
            except InvalidStatus as exc:
                refused += exc.response.status_code == 401
            except (OSError, TimeoutError):
                pass

    await asyncio.gather(*(one(i) for i in range(n)))
    return refused


async def garbage(url: str, n: int, rng: random.Random) -> None:
    for _ in range(n):
        try:
            async with raw_connect(url + TURNS, max_size=None, additional_headers={
                    "Authorization": f"ApiKey {KEY}"}) as ws:
                await ws.send(rng.randbytes(rng.randint(1, 8000)))
                await ws.send(json.dumps({"type": rng.random(), "x": [1] * 100}))
                if rng.random() < 0.2:
                    await ws.send(b"\x00" * ((1 << 20) + 1))
        except ConnectionClosed:
            pass


async def run(attempts: int, rounds: int) -> None:
    async with Reson8Server(ServerConfig(port=0, api_key=Secret(KEY)),
                            scripted_job_runner()) as server:
        rss0 = rss_mb()
        calm = [x for _ in range(rounds) for x in await good_call(server.url)]
        half = []
        for _ in range(200):
            _, w = await asyncio.open_connection("127.0.0.1", server.port)
            w.write(b"GET /v1/speech-to-text/turns HTTP/1.1\r\nHost: x\r\n")
            half.append(w)
        t0 = time.monotonic()
        abuse = asyncio.gather(bad_keys(server.url, attempts),
                               garbage(server.url, attempts // 50, random.Random(7)))
        stressed: list[float] = []
        while not abuse.done():
            stressed += await good_call(server.url)
        refused, _ = await abuse
        rss1 = rss_mb()
        elapsed = time.monotonic() - t0
        for w in half:
            w.close()
        await asyncio.sleep(0.5)
        rss2 = rss_mb()
    print(f"{attempts} bad-key upgrades ({refused} answered 401), {attempts // 50} garbage "
          f"sessions, 200 half-open handshakes, in {elapsed:.1f} s")
    print(f"good caller turn_end latency   calm: median {med(calm):.3f} s  p90 {p90(calm):.3f} s")
    print(f"                     under abuse: median {med(stressed):.3f} s  "
          f"p90 {p90(stressed):.3f} s  ({len(stressed)} turns; ratio p90 "
          f"{p90(stressed) / p90(calm):.2f}x)")
    print(f"RSS  before {rss0:.0f} MB  after abuse {rss1:.0f} MB  after cleanup {rss2:.0f} MB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=10000)
    parser.add_argument("--quick", action="store_true", help="1,000 attempts")
    args = parser.parse_args(argv)
    quiet_logs("ERROR")
    asyncio.run(run(1000 if args.quick else args.attempts, 1 if args.quick else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
