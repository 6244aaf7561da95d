"""Reson8TurnsSTTService in real pipecat pipelines against the embedded server."""

from __future__ import annotations

import asyncio
from typing import Any

from pipecat.frames.frames import (
    InterimTranscriptionFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    TranscriptionFrame,
)

from reson8_voice.pipecat import Reson8TurnsSTTService
from reson8_voice.server import Reson8Server

from .audio_fixtures import load_fixture
from .pipeline_harness import Harness


def watch(service: Any, event: str) -> asyncio.Event:
    """An asyncio.Event set when ``service`` fires the pipecat event handler ``event``."""
    fired = asyncio.Event()

    @service.event_handler(event)
    async def _on_event(*args: Any) -> None:
        fired.set()

    return fired


TURN_FRAMES = (ProposedUserStartedSpeakingFrame, InterimTranscriptionFrame, TranscriptionFrame,
               ProposedUserStoppedSpeakingFrame)


async def test_frames_come_out_in_the_documented_order(scripted_server: Reson8Server) -> None:
    fx = load_fixture("call_delivery")
    stt = Reson8TurnsSTTService(url=scripted_server.url)
    connected = watch(stt, "on_connected")
    reasons: list[str] = []

    @stt.event_handler("on_fallback_started")
    async def _fallback(service: Any, reason: str) -> None:
        reasons.append(reason)

    async with Harness([stt]) as h:
        await asyncio.wait_for(connected.wait(), 10)
        await h.feed(fx.pcm16(), speed=4.0)
        await h.wait_for(lambda h: len(h.of_type(ProposedUserStoppedSpeakingFrame))
                         == len(fx.turns), 30)
    names = h.timeline(TURN_FRAMES)
    # per turn: start, one or more interims, the final transcript, then the stop
    turns, current = [], []
    for name in names:
        current.append(name)
        if name == "ProposedUserStoppedSpeakingFrame":
            turns.append(current)
            current = []
    assert len(turns) == len(fx.turns) and not current
    for turn in turns:
        assert turn[0] == "ProposedUserStartedSpeakingFrame"
        assert turn[-2:] == ["TranscriptionFrame", "ProposedUserStoppedSpeakingFrame"]
        assert set(turn[1:-2]) == {"InterimTranscriptionFrame"}
    finals = h.of_type(TranscriptionFrame)
    assert all(f.finalized and f.text for f in finals)  # type: ignore[attr-defined]
    assert not stt.in_fallback and reasons == []


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_at_start_falls_back_then_replays_the_outage() -> None:
    from reson8_voice.server import ServerConfig

    from .conftest import scripted_runner

    fx = load_fixture("call_delivery")
    port = _free_port()
    stt = Reson8TurnsSTTService(url=f"ws://127.0.0.1:{port}", reconnect_delay_s=(0.05, 0.2))
    fell_back, came_back = watch(stt, "on_fallback_started"), watch(stt, "on_fallback_ended")
    pcm = fx.pcm16()
    split = (fx.turns[1].end_ms + 1000) * 16  # after the second turn, in silence
    async with Harness([stt]) as h:
        await asyncio.wait_for(fell_back.wait(), 10)
        await h.feed(pcm[:split], speed=8.0)
        # the outage: the local VAD alone proposed both turns
        await h.wait_for(lambda h: len(h.of_type(ProposedUserStoppedSpeakingFrame)) == 2, 10)
        assert h.of_type(TranscriptionFrame) == []
        async with Reson8Server(ServerConfig(port=port), scripted_runner()):
            await asyncio.wait_for(came_back.wait(), 15)
            # the two outage turns were replayed and transcribed
            await h.wait_for(lambda h: len(h.of_type(TranscriptionFrame)) == 2, 15)
            await h.feed(pcm[split:], speed=8.0)
            await h.wait_for(lambda h: len(h.of_type(TranscriptionFrame)) == len(fx.turns), 30)
            await h.wait_for(lambda h: len(h.of_type(ProposedUserStoppedSpeakingFrame))
                             == len(fx.turns), 10)
            await h.stop()
    starts = h.of_type(ProposedUserStartedSpeakingFrame)
    assert len(starts) == len(fx.turns)
    assert stt.stats["replayed_bytes"] > 0 and stt.stats["fallbacks"] == 1
    recovered, live = h.of_type(TranscriptionFrame)[:2], h.of_type(TranscriptionFrame)[2:]
    assert all(f.text for f in recovered + live)  # type: ignore[attr-defined]


async def test_8khz_uplink_is_the_carriers_mulaw_byte_for_byte() -> None:
    """Twilio's mu-law, decoded by pipecat's own serializer, goes up as the same bytes."""
    import base64
    import json

    from pipecat.processors.frame_processor import FrameProcessorSetup
    from pipecat.serializers.twilio import TwilioFrameSerializer
    from pipecat.utils.asyncio.task_manager import TaskManager
    from websockets.asyncio.server import serve

    received = bytearray()
    query: list[str] = []
    got_all = asyncio.Event()
    carrier = load_fixture("short_answers").data[:16000]  # 2 s as the carrier sent it

    async def peer(ws: Any) -> None:  # a turns server reduced to recording the uplink
        query.append(ws.request.path)
        async for message in ws:
            received.extend(message)
            if len(received) >= len(carrier):
                got_all.set()

    serializer = TwilioFrameSerializer("MZ00", params=TwilioFrameSerializer.InputParams(
        auto_hang_up=False))
    await serializer.setup(FrameProcessorSetup(  # type: ignore[arg-type]
        clock=None, task_manager=TaskManager(), pipeline_worker=None,
        audio_in_sample_rate=8000))
    frames = []
    for i in range(0, len(carrier), 160):
        media = {"event": "media", "media": {
            "payload": base64.b64encode(carrier[i:i + 160]).decode()}}
        frames.append(await serializer.deserialize(json.dumps(media)))
    async with serve(peer, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        stt = Reson8TurnsSTTService(url=f"ws://127.0.0.1:{port}")
        connected = watch(stt, "on_connected")
        async with Harness([stt]) as h:
            await asyncio.wait_for(connected.wait(), 10)
            for frame in frames:
                await h.send(frame)
            await asyncio.wait_for(got_all.wait(), 10)
    assert "encoding=mulaw" in query[0] and "sample_rate=8000" in query[0]
    # every byte identical, but for mu-law's negative zero (0x7F), which decodes to 0
    # like positive zero (0xFF) and is re-encoded as such
    expected = carrier.replace(b"\x7f", b"\xff")
    assert bytes(received[: len(carrier)]) == expected


async def test_user_aggregator_resolves_every_turn_with_barge_in(
    scripted_server: Reson8Server,
) -> None:
    """The recommended strategies turn proposals into user turns and interruptions."""
    from pipecat.frames.frames import (
        BotStartedSpeakingFrame,
        InterruptionFrame,
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
    )
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
    from pipecat.processors.frame_processor import FrameDirection

    fx = load_fixture("call_delivery")
    stt = Reson8TurnsSTTService(url=scripted_server.url)
    finals: list[str] = []

    @stt.event_handler("on_turn_end")
    async def _on_end(service: Any, turn: Any) -> None:
        finals.append(turn.text)

    context = LLMContext()
    user = LLMContextAggregatorPair(context).user()
    async with Harness([stt, user]) as h:
        await h.send(BotStartedSpeakingFrame(), FrameDirection.UPSTREAM)  # the bot is talking
        await h.feed(fx.pcm16(), speed=4.0)
        await h.wait_for(lambda h: len(h.of_type(UserStoppedSpeakingFrame)) == len(fx.turns), 30)
    assert len(h.of_type(UserStartedSpeakingFrame)) == len(fx.turns)
    names = [type(f).__name__ for _, f in h.recorder.frames]
    first_start = names.index("UserStartedSpeakingFrame")
    assert "InterruptionFrame" in names[first_start:first_start + 3]  # barge-in
    assert len(h.of_type(InterruptionFrame)) == len(fx.turns)
    messages = [m["content"] for m in context.get_messages()]  # type: ignore[index]
    assert messages == finals and len(messages) == len(fx.turns)


async def test_eager_reply_is_cancelled_by_continuation_and_final_is_whole_turn(
    scripted_server: Reson8Server,
) -> None:
    from pipecat.frames.frames import (
        EagerEndOfTurnCancelFrame,
        LLMContextFrame,
        UserStoppedSpeakingFrame,
    )
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair

    fx = load_fixture("call_delivery")
    first = fx.turns[0]
    assert len(first.segments) > 1  # a turn with pauses: candidates, then continuations
    stt = Reson8TurnsSTTService(url=scripted_server.url, enable_eager_end_of_turn=True)
    candidates: list[str] = []

    @stt.event_handler("on_turn_end_candidate")
    async def _on_candidate(service: Any, text: str) -> None:
        candidates.append(text)

    context = LLMContext()
    async with Harness([stt, LLMContextAggregatorPair(context).user()]) as h:
        await h.feed(fx.pcm16()[: (first.end_ms + 1500) * 16], speed=4.0)
        await h.wait_for(lambda h: len(h.of_type(UserStoppedSpeakingFrame)) == 1, 20)
    names = [type(f).__name__ for _, f in h.recorder.frames]
    # a speculative reply was started from the first candidate, then withdrawn
    assert names.index("LLMContextFrame") < names.index("EagerEndOfTurnCancelFrame")
    assert len(h.of_type(EagerEndOfTurnCancelFrame)) >= 1
    assert len(h.of_type(LLMContextFrame)) >= 2
    [message] = context.get_messages()
    assert message["content"] == candidates[-1]  # type: ignore[index]
    assert len(candidates[-1]) > len(candidates[0])  # the final is the whole turn


async def test_settings_change_reconnects_only_once_the_turn_is_over(
    scripted_server: Reson8Server,
) -> None:
    from pipecat.frames.frames import STTUpdateSettingsFrame

    from reson8_voice.pipecat import Reson8TurnsSTTSettings

    fx = load_fixture("call_delivery")
    first = fx.turns[0]
    stt = Reson8TurnsSTTService(url=scripted_server.url)
    connected = watch(stt, "on_connected")
    log: list[str] = []

    @stt.event_handler("on_connected")
    async def _on_connected(service: Any) -> None:
        log.append("connected")

    @stt.event_handler("on_turn_end")
    async def _on_end(service: Any, turn: Any) -> None:
        log.append("turn_end")

    async with Harness([stt]) as h:
        await asyncio.wait_for(connected.wait(), 10)
        pcm = fx.pcm16()
        mid = (first.start_ms + 1500) * 16
        await h.feed(pcm[:mid], speed=4.0)
        await h.wait_for(lambda h: bool(h.of_type(ProposedUserStartedSpeakingFrame)), 10)
        await h.send(STTUpdateSettingsFrame(delta=Reson8TurnsSTTSettings(language="en")))
        await h.feed(pcm[mid:(fx.turns[1].end_ms + 1500) * 16], speed=4.0)
        await h.wait_for(lambda h: len(h.of_type(TranscriptionFrame)) == 2, 20)
    # the new connection came after the turn that was open at the change had ended
    assert log[:3] == ["connected", "turn_end", "connected"], log
    assert stt.stats["fallbacks"] == 0 and not stt.in_fallback


async def test_local_fallback_transcripts_arrive_during_the_outage_and_only_once() -> None:
    """With fallback_transcripts="local" the embedded engine transcribes in-process."""
    from reson8_voice.server import ServerConfig

    from .conftest import scripted_runner

    fx = load_fixture("call_delivery")
    port = _free_port()
    stt = Reson8TurnsSTTService(url=f"ws://127.0.0.1:{port}", reconnect_delay_s=(0.05, 0.2),
                                fallback_transcripts="local", local_run_job=scripted_runner())
    came_back = watch(stt, "on_fallback_ended")
    pcm = fx.pcm16()
    split = (fx.turns[1].end_ms + 1200) * 16
    async with Harness([stt]) as h:
        await h.feed(pcm[:split], speed=4.0)
        # no server anywhere, yet both turns have their text
        await h.wait_for(lambda h: len(h.of_type(TranscriptionFrame)) == 2, 15)
        async with Reson8Server(ServerConfig(port=port), scripted_runner()):
            await asyncio.wait_for(came_back.wait(), 15)
            await h.feed(pcm[split:], speed=4.0)
            await h.wait_for(lambda h: len(h.of_type(TranscriptionFrame)) >= len(fx.turns), 30)
            await h.wait_for(lambda h: len(h.of_type(ProposedUserStoppedSpeakingFrame))
                             == len(fx.turns), 10)
            await h.stop()
    # the replay started after the locally transcribed turns: nothing transcribed twice
    assert len(h.of_type(TranscriptionFrame)) == len(fx.turns)
    assert len(h.of_type(ProposedUserStartedSpeakingFrame)) == len(fx.turns)


async def test_barge_in_guard_holds_the_start_while_the_bot_talks(
    scripted_server: Reson8Server,
) -> None:
    from pipecat.frames.frames import BotStartedSpeakingFrame
    from pipecat.processors.frame_processor import FrameDirection

    fx = load_fixture("short_answers")
    first = fx.turns[0]
    stt = Reson8TurnsSTTService(url=scripted_server.url, min_barge_in_ms=300)
    connected = watch(stt, "on_connected")
    async with Harness([stt]) as h:
        await asyncio.wait_for(connected.wait(), 10)
        await h.send(BotStartedSpeakingFrame(), FrameDirection.UPSTREAM)
        await h.feed(fx.pcm16()[: (first.end_ms + 300) * 16], speed=1.0)
        await h.wait_for(lambda h: bool(h.of_type(ProposedUserStartedSpeakingFrame)), 10)
    [(at, _)] = [(t, f) for t, f in h.recorder.frames
                 if isinstance(f, ProposedUserStartedSpeakingFrame)]
    onset_s = first.start_ms / 1000
    assert at - h.stream_t0 >= onset_s + 0.3  # held for the guard, then released


async def test_a_send_on_a_session_that_died_is_absorbed(scripted_server: Reson8Server) -> None:
    # The session's socket is gone but the connection task has not noticed yet: the send
    # fails with the typed ConnectionClosed, which must not escape run_stt. The audio stays
    # in the backlog (the replay sends it) and direct sends stop until a new connection.
    from reson8_voice import connect_turns
    from reson8_voice.backlog import AudioBacklog
    from reson8_voice.params import TurnsParams

    stt = Reson8TurnsSTTService(url=scripted_server.url)
    conn = await connect_turns(scripted_server.url,
                               TurnsParams(encoding="mulaw", sample_rate=8000))
    await conn.close()
    stt._conn = conn
    stt._backlog = AudioBacklog(8000)
    stt._backlog.append(b"\xff" * 160)
    stt._healthy.set()
    await stt._pump()
    assert not stt._healthy.is_set()
    assert stt._sent == 0 and stt._backlog.since(0) == b"\xff" * 160


async def _transcripts(server: Reson8Server, pcm: bytes, speed: float, n: int,
                       outage: tuple[int, float] | None = None) -> tuple[list[str], Any]:
    """The call's final transcripts, fed at ``speed`` x real time through a proxy that lets
    the server read only 1.5 x as fast; ``outage``: (byte offset, seconds) refused."""
    from .fault_proxy import FaultProxy

    async with FaultProxy("127.0.0.1", server.port) as proxy:
        proxy.throttle_up(1.5 * 8000 * speed)  # the uplink is 8 kHz mu-law
        stt = Reson8TurnsSTTService(url=proxy.url, reconnect_delay_s=(0.05, 0.3),
                                    watchdog_s=1.0)
        async with Harness([stt]) as h:
            cut = outage[0] if outage else len(pcm)
            await h.feed(pcm[:cut], speed=speed)
            if outage:
                proxy.refuse()
                proxy.drop()
                heal = asyncio.get_running_loop().call_later(outage[1], proxy.accept)
                await h.feed(pcm[cut:], speed=speed)
                await asyncio.sleep(0)
                heal.cancel()
                proxy.accept()
            await h.wait_for(lambda h: len(h.of_type(TranscriptionFrame)) >= n, 30)
            await h.wait_for(lambda h: not stt.in_fallback, 15)
    return [f.text for f in h.of_type(TranscriptionFrame)], stt  # type: ignore[attr-defined]


async def test_a_server_slow_to_work_through_a_replay_is_not_declared_dead(
    scripted_server: Reson8Server,
) -> None:
    """After an outage the backlog is replayed at once; a server that reads only a little
    faster than real time answers for it late. It must not be declared dead for that (each
    reconnect would replay it all again), and a replay must start after the speech the
    server answered for, not after everything sent (it had not heard that yet)."""
    fx = load_fixture("call_delivery")
    turns = fx.turns[:3]
    pcm = fx.pcm16()[: (turns[-1].end_ms + 1500) * 16]
    speed = 2.0
    baseline, _ = await _transcripts(scripted_server, pcm, 8.0, len(turns))  # no outage
    cut = (turns[0].start_ms + 500) * 16  # in the first turn, refused for 3 s
    texts, stt = await _transcripts(scripted_server, pcm, speed, len(turns), (cut, 3.0))
    assert len(baseline) == len(texts) == len(turns)
    for got, want in zip(texts, baseline, strict=True):
        assert abs(len(got.split()) - len(want.split())) <= 2, (texts, baseline)
    assert stt.stats["fallbacks"] == 1  # the outage only: no replay declared dead
    assert stt.stats["dropped_bytes"] == 0
