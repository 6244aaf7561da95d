"""What every Reson8 pipecat STT service shares: one session at a time kept by a background
connection task (and a watchdog), the caller's audio kept in an outage backlog and pumped
into the open session, and a shutdown that leaves no task or socket behind."""

from __future__ import annotations

import asyncio
import time
from abc import abstractmethod
from typing import Any, Generic, TypeVar

from loguru import logger
from pipecat.frames.frames import CancelFrame, EndFrame
from pipecat.services.stt_service import STTService

from ..backlog import AudioBacklog
from ..errors import ConnectionClosed
from ._pipeline_vad import PipelineVad

__all__ = ["SessionSTTService"]

SessionT = TypeVar("SessionT")

#: how long closing a session may take before it is abandoned
_CLOSE_TIMEOUT_S = 2.0
#: a replay after an outage goes out in messages of this much audio
_REPLAY_CHUNK_S = 0.1


class SessionSTTService(STTService, Generic[SessionT]):
    """Base of the turns and transcript services (not public).

    Subclasses set ``_backlog`` and ``_vad`` in ``start`` and then call
    :meth:`_start_tasks`; they implement the connection loop, the watchdog, sending and
    closing a session, and :meth:`_finish` (close the open turn at shutdown).
    """

    def __init__(self, **kwargs: Any) -> None:
        """Pass ``kwargs`` to pipecat's ``STTService``."""
        super().__init__(**kwargs)
        self._conn: SessionT | None = None
        self._connection_task: asyncio.Task[None] | None = None
        self._watchdog_task: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._healthy = asyncio.Event()  # set while audio may go straight to the session
        self._stopping = False
        self._reconnect_requested = False
        self._backlog: AudioBacklog | None = None
        self._sent = 0  # backlog position sent on the current connection
        self._last_send = 0.0
        self._vad: PipelineVad | None = None

    # -- subclass hooks ----------------------------------------------------------------------
    @abstractmethod
    async def _connection_loop(self) -> None:
        """Connect, replay, receive; reconnect until stopped."""

    @abstractmethod
    async def _watchdog_loop(self) -> None:
        """Periodic liveness checks."""

    @abstractmethod
    async def _send(self, session: SessionT, data: bytes) -> None:
        """Send uplink audio on ``session``."""

    @abstractmethod
    async def _close_session(self, session: SessionT) -> None:
        """Close ``session``."""

    @abstractmethod
    async def _finish(self) -> None:
        """At shutdown, after the tasks and the session are gone: close the open turn."""

    def _uplink_width(self) -> int:
        """Bytes per sample of the uplink encoding (2: 16-bit PCM)."""
        return 2

    # -- lifecycle ---------------------------------------------------------------------------
    def _start_tasks(self, prefix: str) -> None:
        self._stopping = False
        self._connection_task = self.create_task(self._connection_loop(), f"{prefix}-connection")
        self._watchdog_task = self.create_task(self._watchdog_loop(), f"{prefix}-watchdog")

    async def stop(self, frame: EndFrame) -> None:
        """Close the open turn and the connection."""
        await super().stop(frame)
        await self._shutdown()

    async def cancel(self, frame: CancelFrame) -> None:
        """Close the connection at once."""
        await super().cancel(frame)
        await self._shutdown()

    async def cleanup(self) -> None:
        """Release every task and socket (also after an abrupt end)."""
        await self._shutdown()
        await super().cleanup()

    async def _shutdown(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        conn, self._conn = self._conn, None  # before the tasks that own it are cancelled
        for task in (self._watchdog_task, self._connection_task):
            if task is not None:
                await self.cancel_task(task)
        self._watchdog_task = self._connection_task = None
        if conn is not None:
            await self._close_quietly(conn)
        await self._finish()

    async def _close_quietly(self, session: SessionT) -> None:
        """Close ``session``; if that takes over ``_CLOSE_TIMEOUT_S`` (a server that stopped
        answering cannot finish the close handshake), drop its socket at once."""
        try:
            await asyncio.wait_for(self._close_session(session), _CLOSE_TIMEOUT_S)
        except Exception as exc:  # closing a dead socket can fail in many ways
            logger.debug(f"{self.name}: close: {exc.__class__.__name__}")
            websocket = getattr(session, "websocket", None)  # every session type has one
            if websocket is not None:
                websocket.transport.abort()

    # -- audio out ---------------------------------------------------------------------------
    async def _pump(self) -> None:
        """Send whatever of the backlog this connection has not had yet."""
        conn, backlog = self._conn, self._backlog
        if conn is None or backlog is None:
            return
        async with self._send_lock:
            if self._sent < backlog.start:
                self._sent = backlog.start
            data = backlog.since(self._sent)
            if not data:
                return
            try:
                await self._send(conn, data)
            except (ConnectionClosed, OSError) as exc:
                logger.debug(f"{self.name}: send failed: {exc}")
                self._healthy.clear()
                return
            self._sent += len(data)
            self._last_send = time.monotonic()

    async def _replay(self) -> None:
        """Send the backlog faster than real time, in 100 ms messages; a failed send raises
        (``ConnectionClosed`` or ``OSError``) and leaves the rest for the next connection."""
        assert self._backlog is not None
        step = max(1, int(_REPLAY_CHUNK_S * self.sample_rate * self._uplink_width()))
        while self._conn is not None and self._sent < self._backlog.position:
            async with self._send_lock:
                data = self._backlog.since(self._sent)[:step]
                await self._send(self._conn, data)
                self._sent += len(data)
                self._last_send = time.monotonic()
            await asyncio.sleep(0)
