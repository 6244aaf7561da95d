"""Transcripts during an outage from the embedded engine, run in-process.

While the service is in fallback, :class:`LocalTranscriber` feeds the caller's audio to a
:class:`~reson8_voice.engine.turn_engine.TurnEngine` (the embedded server's engine) and
reports each turn the engine completes, with the stream position its audio ended at. The
turn frames still come from the local VAD; this only supplies their text at once, instead
of waiting for the outage audio to be replayed. Model calls run in a one-thread pool, off
the event loop; one driver task owns the engine, so its jobs run in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from loguru import logger

from ..engine.turn_engine import EndOfTurnJob, Job, RecognizeJob, TurnEngine
from ..events import TurnContinuation, TurnEnd, TurnEndCandidate, TurnStart
from ..turns import CompletedTurn, TurnStateMachine

__all__ = ["LocalTranscriber"]

OnTurn = Callable[[CompletedTurn, float], Awaitable[None]]


class LocalTranscriber:
    """Runs the local turn engine on fallback audio; ``on_turn(turn, end_ms)`` per turn."""

    def __init__(self, run_job: Callable[[Job], Any], sample_rate: int, on_turn: OnTurn) -> None:
        """Prepare (nothing runs until :meth:`start`)."""
        self._run_job = run_job
        self._rate = sample_rate
        self._on_turn = on_turn
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="reson8-local-asr")
        self._engine: TurnEngine | None = None
        self._machine = TurnStateMachine(peer=False)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        """Whether audio is being transcribed."""
        return self._task is not None

    def start(self) -> None:
        """Begin a fresh engine on the audio fed from now on."""
        if self._task is not None:
            return
        self._engine = TurnEngine(sample_rate=self._rate)
        self._machine = TurnStateMachine(peer=False)
        self._task = asyncio.create_task(self._drive(self._engine), name="reson8-local-asr")

    def feed(self, pcm: bytes) -> None:
        """Audio at the engine's rate (the local VAD's)."""
        if self._engine is not None:
            self._engine.feed(pcm)
            self._wake.set()

    async def stop(self) -> None:
        """Stop transcribing; a turn the engine had not finished is dropped (replay has it)."""
        task, self._task, self._engine = self._task, None, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        """Stop and release the model thread."""
        await self.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _drive(self, engine: TurnEngine) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (item := engine.next()) is not None:
                if isinstance(item, RecognizeJob | EndOfTurnJob):
                    try:
                        result = await loop.run_in_executor(self._pool, self._run_job, item)
                    except Exception as exc:
                        logger.warning(f"reson8: local transcription failed: {exc!r}")
                        return
                    engine.resolve(item, result)
                elif isinstance(item, TurnStart | TurnEndCandidate | TurnContinuation |
                                TurnEnd):
                    turn = self._machine.process(item)
                    if turn is not None and turn.text:
                        await self._on_turn(turn, engine.stream_ms)
