"""Transcribe an audio file turn by turn with the project client (no pipecat involved).

    python examples/transcribe_file.py tests/fixtures/call_restaurant.ulaw [ws://127.0.0.1:8765]

The file here is 8 kHz mu-law (what phones send); the session says so with
``encoding="mulaw"``. The turns endpoint has no flush: a little trailing silence lets the
last turn end. ``TurnStateMachine`` assembles each turn from its last candidate (spec 001).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from reson8_voice import CompletedTurn, TurnsParams, TurnStateMachine, connect_turns
from reson8_voice.events import TurnContinuation, TurnEnd, TurnEndCandidate, TurnStart

CHUNK = 1600  # 200 ms of 8 kHz mu-law


async def transcribe(path: Path, url: str = "ws://127.0.0.1:8765") -> list[CompletedTurn]:
    audio = await asyncio.to_thread(path.read_bytes)
    audio += b"\xff" * 16000  # + 2 s of mu-law silence
    params = TurnsParams(encoding="mulaw", sample_rate=8000, include_timestamps=True)
    turns: list[CompletedTurn] = []
    machine = TurnStateMachine()
    async with await connect_turns(url, params) as conn:

        async def send() -> None:
            for i in range(0, len(audio), CHUNK):
                await conn.send_audio(audio[i:i + CHUNK])
                await asyncio.sleep(0)  # as fast as the server takes it

        sender = asyncio.create_task(send())
        while True:
            try:
                event = await asyncio.wait_for(conn.recv(), 0.5)  # recv is cancel-safe
            except TimeoutError:
                if sender.done() and not machine.in_turn:
                    break  # all audio out, no turn open, nothing more coming
                continue
            if isinstance(event, TurnStart | TurnEndCandidate | TurnContinuation | TurnEnd):
                turn = machine.process(event)
                if turn is not None:
                    turns.append(turn)
                    print(f"{(turn.start_ms or 0) / 1000:6.2f}s  {turn.text}")
        await sender
    return turns


if __name__ == "__main__":
    asyncio.run(transcribe(Path(sys.argv[1]), *sys.argv[2:3]))
