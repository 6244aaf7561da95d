"""A real pipecat pipeline for tests: frames in at the front, every frame out recorded.

Like ``pipecat.tests.utils.run_test`` (same ``PipelineWorker``/``WorkerRunner``), but it
stays open while the test feeds audio and waits on frames with timeouts, instead of sending
``EndFrame`` as soon as the input is queued.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from pipecat.frames.frames import EndFrame, Frame, InputAudioRawFrame, StartFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import WorkerRunner
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor


class Recorder(FrameProcessor):
    """The pipeline's last processor: records every frame that reaches it, with a time."""

    def __init__(self, keep: bool = True) -> None:
        super().__init__()
        self.frames: list[tuple[float, Frame]] = []
        self.changed = asyncio.Event()
        self._keep = keep

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if self._keep and not isinstance(frame, StartFrame | InputAudioRawFrame):
            self.frames.append((time.monotonic(), frame))
            self.changed.set()
        await self.push_frame(frame, direction)


class Harness:
    """Run ``processors`` in a pipeline at ``sample_rate`` until :meth:`stop`."""

    def __init__(self, processors: list[FrameProcessor], sample_rate: int = 8000, *,
                 lean: bool = False, record: bool = True) -> None:
        """``lean`` drops the worker's default observers (RTVI, turn tracking, idle
        detection), which copy every frame to a queue each: a dense deployment's choice,
        and the load benchmark's, so it measures the service rather than pipecat's
        observers. ``record=False`` keeps no frames (a long run that records what it needs
        itself: every kept transcript frame is heap the collector walks on a full pass)."""
        self.recorder = Recorder(keep=record)
        self.pipeline = Pipeline([*processors, self.recorder])
        extra: dict[str, Any] = ({"enable_rtvi": False, "enable_turn_tracking": False,
                                  "idle_timeout_secs": None} if lean else {})
        self.worker = PipelineWorker(
            self.pipeline, cancel_on_idle_timeout=False,
            params=PipelineParams(audio_in_sample_rate=sample_rate,
                                  audio_out_sample_rate=sample_rate), **extra)
        self.runner = WorkerRunner(handle_sigint=False)
        self._task: asyncio.Task[None] | None = None
        self.sample_rate = sample_rate
        self.stream_t0 = 0.0

    async def __aenter__(self) -> Harness:
        started = asyncio.Event()

        @self.worker.event_handler("on_pipeline_started")
        async def _started(worker: Any, frame: Any) -> None:
            started.set()

        await self.runner.add_workers(self.worker)
        self._task = asyncio.create_task(self.runner.run())
        await asyncio.wait_for(started.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self, frame: Frame | None = None) -> None:
        """End the pipeline (EndFrame by default) and wait for it."""
        if self._task is None:
            return
        await self.worker.queue_frame(frame or EndFrame())
        await asyncio.wait_for(self._task, 30)
        self._task = None

    async def send(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM
                   ) -> None:
        await self.worker.queue_frame(frame, direction)

    async def feed(self, pcm: bytes, *, chunk_ms: int = 20, speed: float = 1.0) -> None:
        """Queue PCM as 20 ms input frames, paced at ``speed`` x real time (inf = no pacing)."""
        step = self.sample_rate * chunk_ms // 1000 * 2
        t0 = time.monotonic()
        self.stream_t0 = t0
        for i, start in enumerate(range(0, len(pcm), step)):
            frame = InputAudioRawFrame(pcm[start:start + step], self.sample_rate, 1)
            await self.worker.queue_frame(frame)
            if speed != float("inf"):
                due = t0 + (i + 1) * chunk_ms / 1000 / speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            elif i % 25 == 0:
                await asyncio.sleep(0)

    def of_type(self, *types: type) -> list[Frame]:
        return [f for _, f in self.recorder.frames if isinstance(f, types)]

    async def wait_for(self, predicate: Callable[[Harness], bool], timeout: float = 30.0) -> None:
        """Wait until ``predicate(self)`` holds (re-checked on every recorded frame)."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self.recorder.changed.clear()
                await self.recorder.changed.wait()

    def timeline(self, types: Iterable[type]) -> list[str]:
        wanted = tuple(types)
        return [type(f).__name__ for _, f in self.recorder.frames if isinstance(f, wanted)]
