"""The fault matrix: the pipecat service through a fault-injecting proxy to the server.

For every fault the call must keep proposing turn starts and stops (the local VAD takes
over where needed), every turn started is ended, the transcripts of the speech arrive
(replayed after an outage), no frame is emitted twice, and after EndFrame or CancelFrame no
task, socket or thread is left. The table of outcomes is in docs/fault-matrix.md.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    TranscriptionFrame,
)

from reson8_voice.pipecat import Reson8TurnsSTTService
from reson8_voice.server import Reson8Server

from .audio_fixtures import load_fixture
from .fault_proxy import FaultProxy
from .pipeline_harness import Harness

FIXTURE = "call_delivery"
SPEED = 4.0
Fault = Callable[[FaultProxy], None]


@dataclass(frozen=True)
class Case:
    """A fault applied at ``at`` (``mid_turn`` or ``between_turns``) of turn 2."""

    name: str
    fault: Fault
    at: str = "mid_turn"
    fallback: bool = True  # the local VAD must take over at some point
    lost_turns: int = 0  # turns whose text the fault itself destroys (a garbled candidate)
    heal: Fault | None = None  # undo the fault this long after it (None: never)
    heal_after_s: float = 2.0
    error_frame: bool = False


def _slow(proxy: FaultProxy) -> None:
    # 10x slower than real time: every event comes ~10 x its own audio late
    proxy.slow(3.0)


CASES = [
    Case("drop mid-turn", lambda p: p.drop()),
    Case("drop between turns", lambda p: p.drop(), at="between_turns"),
    Case("stall 2 s", lambda p: p.stall(2.0)),
    Case("stall 20 s", lambda p: p.stall(20.0)),
    Case("half-open", lambda p: p.half_open(), heal=lambda p: p.resume_client()),
    Case("garbled JSON", lambda p: p.garble_next(match="turn_end_candidate"), fallback=False,
         lost_turns=1),
    Case("truncated JSON", lambda p: p.truncate_next(match="turn_end_candidate"),
         fallback=False, lost_turns=1),
    Case("unknown event", lambda p: p.inject('{"type":"speech_detected","at_ms":1}'),
         fallback=False),
    Case("illegal sequence", lambda p: p.inject('{"type":"turn_end"}',
                                                '{"type":"turn_continuation"}'),
         at="between_turns", fallback=False),
    Case("flood of events", lambda p: p.inject('{"type":"stats","n":1}', repeat=2000),
         fallback=False),
    Case("10x slower than real time", _slow, heal=lambda p: p.slow(0), heal_after_s=4.0),
]
REJECTIONS = [(401, "UNAUTHORIZED"), (400, "INVALID_REQUEST"), (500, "INTERNAL_ERROR")]


async def _call(server: Reson8Server, case: Case, *, stop_with: Any = EndFrame
                ) -> tuple[Harness, Reson8TurnsSTTService, list[str], list[type]]:
    fx = load_fixture(FIXTURE)
    pcm = fx.pcm16()
    turn = fx.turns[2]
    cut_ms = (turn.start_ms + turn.end_ms) // 2 if case.at == "mid_turn" \
        else fx.turns[1].end_ms + 700
    reasons: list[str] = []
    async with FaultProxy("127.0.0.1", server.port) as proxy:
        stt = Reson8TurnsSTTService(url=proxy.url, reconnect_delay_s=(0.05, 0.3),
                                    watchdog_s=1.0, rejected_retry_s=0.5)
        emitted = record_emissions(stt)

        @stt.event_handler("on_fallback_started")
        async def _on_fallback(service: Any, reason: str) -> None:
            reasons.append(reason)

        async with Harness([stt]) as h:
            await h.feed(pcm[: cut_ms * 16], speed=SPEED)
            case.fault(proxy)
            healer = None
            if case.heal is not None:
                heal = case.heal

                async def _heal() -> None:
                    await asyncio.sleep(case.heal_after_s)
                    heal(proxy)

                healer = asyncio.create_task(_heal())
            await h.feed(pcm[cut_ms * 16:], speed=SPEED)
            if healer is not None:
                await healer
            proxy.reset()
            want = len(fx.turns) - case.lost_turns
            await h.wait_for(lambda h: len(h.of_type(TranscriptionFrame)) >= want, 40)
            await h.wait_for(lambda h: len(h.of_type(ProposedUserStoppedSpeakingFrame))
                             == len(h.of_type(ProposedUserStartedSpeakingFrame)), 15)
            await h.stop(stop_with())
    return h, stt, reasons, emitted


def record_emissions(stt: Reson8TurnsSTTService) -> list[type]:
    """Turn proposals in the order the service emitted them.

    (A start is a system frame and overtakes queued frames, so the order in which frames
    reach the end of the pipeline is not the order they were decided in.)
    """
    emitted: list[type] = []

    @stt.event_handler("on_before_push_frame")
    def _on_push(service: Any, frame: Any) -> None:
        sibling = getattr(frame, "broadcast_sibling_id", None)
        if isinstance(frame, ProposedUserStartedSpeakingFrame | ProposedUserStoppedSpeakingFrame
                      ) and (sibling is None or frame.id < sibling):
            emitted.append(type(frame))

    return emitted


def _check_turns(h: Harness, n_turns: int, emitted: list[type]) -> None:
    depth = starts = 0
    for kind in emitted:
        if kind is ProposedUserStartedSpeakingFrame:
            depth, starts = depth + 1, starts + 1
        else:
            depth -= 1
        assert depth in (0, 1), "a stop without a start, or two starts in a row"
    assert depth == 0, "a turn started was never ended"
    assert len(h.of_type(ProposedUserStartedSpeakingFrame)) == starts  # all delivered
    assert n_turns <= starts <= n_turns + 2
    frames = [f for _, f in h.recorder.frames]
    assert len({id(f) for f in frames}) == len(frames)  # nothing emitted twice
    texts = [f.text for f in h.of_type(TranscriptionFrame)]  # type: ignore[attr-defined]
    assert all(texts)


@pytest.fixture
async def leak_check() -> Any:
    threads = threading.active_count()
    yield
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert [t for t in others if "reson8" in repr(t).lower()] == []
    assert threading.active_count() <= threads + 2  # the server's pool is the fixture's


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_fault(case: Case, scripted_server: Reson8Server, leak_check: Any) -> None:
    h, stt, reasons, emitted = await _call(scripted_server, case)
    _check_turns(h, len(load_fixture(FIXTURE).turns), emitted)
    if case.fallback:
        assert reasons, "the local VAD never took over"
    else:
        assert not reasons, f"unexpected fallback: {reasons}"
    assert not stt.in_fallback or case.fallback


@pytest.mark.parametrize(("status", "code"), REJECTIONS)
async def test_rejected_upgrade(status: int, code: str, scripted_server: Reson8Server,
                                leak_check: Any) -> None:
    case = Case(f"{status} at upgrade",
                lambda p: (p.drop(), p.reject_upgrade(status, code, f"test {code}"))[0],
                at="between_turns", heal=lambda p: p.clear_rejection(), heal_after_s=1.5)
    h, stt, reasons, emitted = await _call(scripted_server, case)
    _check_turns(h, len(load_fixture(FIXTURE).turns), emitted)
    assert reasons
    errors = [f for f in h.recorder.frames if isinstance(f[1], ErrorFrame)]
    del errors  # ErrorFrames travel upstream; the service reports them via on_error
    assert stt.is_usable  # the fallback keeps the service usable


async def test_connection_refused_at_start(scripted_server: Reson8Server,
                                           leak_check: Any) -> None:
    case = Case("refused at start", lambda p: None, heal=lambda p: p.accept(), heal_after_s=1.0)
    fx = load_fixture(FIXTURE)
    async with FaultProxy("127.0.0.1", scripted_server.port) as proxy:
        proxy.refuse()
        stt = Reson8TurnsSTTService(url=proxy.url, reconnect_delay_s=(0.05, 0.3))
        emitted = record_emissions(stt)
        ended = asyncio.Event()

        @stt.event_handler("on_fallback_ended")
        async def _back(service: Any, outage: float) -> None:
            ended.set()

        cut = (fx.turns[1].end_ms + 1200) * 16  # in the silence after turn 2
        async with Harness([stt]) as h:
            await h.feed(fx.pcm16()[:cut], speed=SPEED)
            proxy.accept()
            await asyncio.wait_for(ended.wait(), 15)
            await h.feed(fx.pcm16()[cut:], speed=SPEED)
            await h.wait_for(lambda h: len(h.of_type(TranscriptionFrame)) >= len(fx.turns), 30)
            await h.wait_for(lambda h: len(h.of_type(ProposedUserStoppedSpeakingFrame))
                             == len(h.of_type(ProposedUserStartedSpeakingFrame)), 15)
    del case
    _check_turns(h, len(fx.turns), emitted)


async def test_cancel_frame_mid_turn_leaves_nothing_behind(scripted_server: Reson8Server,
                                                            leak_check: Any) -> None:
    fx = load_fixture(FIXTURE)
    stt = Reson8TurnsSTTService(url=scripted_server.url)
    async with Harness([stt]) as h:
        await h.feed(fx.pcm16()[: (fx.turns[0].start_ms + 1000) * 16], speed=SPEED)
        await h.wait_for(lambda h: bool(h.of_type(ProposedUserStartedSpeakingFrame)), 10)
        await h.stop(CancelFrame())
    await asyncio.wait_for(scripted_server.wait_idle(), 5)

