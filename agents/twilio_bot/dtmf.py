"""Key presses (DTMF) as a user turn, on the same turn frames the speech service uses."""

from __future__ import annotations

import asyncio
from typing import Any

from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputDTMFFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    TranscriptionFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.time import time_now_iso8601

__all__ = ["DTMFTurns"]


class DTMFTurns(FrameProcessor):
    """Collects digits until ``#`` or a pause, then makes them one user turn.

    The turn is proposed exactly as ``Reson8TurnsSTTService`` proposes a spoken one
    (start, final transcript ``"DTMF: 123#"``, stop), so the user aggregator's external
    strategies open it, interrupt the bot (a key press barges in) and answer it. Place it
    after the STT service and before the user aggregator.
    """

    def __init__(self, *, timeout_s: float = 1.5, terminator: str = "#",
                 prefix: str = "DTMF: ", **kwargs: Any) -> None:
        """Create the processor; digits flush after ``timeout_s`` without a press."""
        super().__init__(**kwargs)
        self._timeout_s = timeout_s
        self._terminator = terminator
        self._prefix = prefix
        self._digits = ""
        self._timer: asyncio.TimerHandle | None = None
        self._flush_task: asyncio.Task[None] | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Collect ``InputDTMFFrame`` digits; pass everything on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, EndFrame | CancelFrame):
            self._cancel_timer()
        await self.push_frame(frame, direction)
        if isinstance(frame, InputDTMFFrame):
            button = frame.button
            digit = button.value if isinstance(button, KeypadEntry) else str(button)
            self._digits += digit
            self._cancel_timer()
            if digit == self._terminator:
                await self.flush()
            else:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self._timeout_s, self._schedule_flush)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule_flush(self) -> None:
        self._timer = None
        self._flush_task = self.create_task(self.flush(), "dtmf-flush")

    async def flush(self) -> None:
        """Propose the collected digits as one user turn now."""
        digits, self._digits = self._digits, ""
        if not digits:
            return
        await self.broadcast_frame(ProposedUserStartedSpeakingFrame)
        await self.push_frame(TranscriptionFrame(f"{self._prefix}{digits}", "",
                                                 time_now_iso8601(), finalized=True))
        await self.broadcast_frame(ProposedUserStoppedSpeakingFrame)
