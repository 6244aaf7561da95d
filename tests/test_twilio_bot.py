"""The Twilio bot (agents/twilio_bot) called by the simulated Twilio caller.

Real sockets all the way: the bot's FastAPI app under uvicorn on 127.0.0.1 (its own thread),
the caller speaking Twilio's media-stream protocol over a WebSocket, the bot's
Reson8TurnsSTTService talking to the embedded server (real VAD, scripted recognition). Two
calls are placed once for the module and the tests read what happened.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import pytest

from agents.twilio_bot.app import create_app, twilio_signature
from agents.twilio_bot.bot import BotConfig
from reson8_voice.demo.caller import CallerOptions, SimulatedTwilioCaller
from reson8_voice.demo.espeak_tts import EspeakTTSService
from reson8_voice.demo.runner import BotServer
from reson8_voice.demo.script import CallScript
from reson8_voice.demo.scripted_llm import ReplyRule, ScriptedReplyLLM
from reson8_voice.demo.timeline import CallTimeline, summarize
from reson8_voice.server import Reson8Server, ServerConfig

from .conftest import scripted_runner

SPEED = 2.0
REPLY = "Right, got it. Let me check that for you, it will only take a moment."


@dataclass
class Call:
    caller: SimulatedTwilioCaller
    timeline: CallTimeline
    app: Any
    script: CallScript


async def _place_call(script: CallScript, rules: tuple[ReplyRule, ...], *,
                      caller_hangs_up: bool) -> Call:
    async with Reson8Server(ServerConfig(port=0), scripted_runner()) as server:
        timeline = CallTimeline(speed=SPEED)
        loop = asyncio.get_running_loop()
        ended = asyncio.Event()

        def observer(kind: str, data: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(timeline.bot_observer, kind, data)
            if kind == "call_ended":
                loop.call_soon_threadsafe(ended.set)

        # the service's liveness watchdog runs on the wall clock: give it room, since the
        # caller streams SPEED times faster than real time
        config = BotConfig(reson8_url=server.url, greeting=None,
                           stt_options={"watchdog_s": 2.0 * SPEED + 2.0},
                           llm_factory=lambda ctx: ScriptedReplyLLM(rules, fallback=REPLY),
                           tts_factory=lambda: EspeakTTSService(rate_wpm=400))
        app = create_app(config, observer=observer)
        bot = BotServer(app)
        port = await bot.start()
        caller = SimulatedTwilioCaller(
            f"http://127.0.0.1:{port}/twiml", script, timeline,
            CallerOptions(speed=SPEED, greeting_wait_s=0.5, caller_hangs_up=caller_hangs_up,
                          barge_in_after_s=0.8 * SPEED))
        try:
            await asyncio.wait_for(caller.run(), 60)
            await asyncio.wait_for(ended.wait(), 15)
        finally:
            await bot.stop()
    return Call(caller, timeline, app, script)


@pytest.fixture(scope="module")
def calls() -> dict[str, Call]:
    """Call 1: two turns, a barge-in over the second reply, keypad digits; the caller hangs
    up. Call 2: one turn answered by a farewell; the bot hangs up."""
    conversation = CallScript.from_fixture("demo_call", turns=(0, 2, 3)).with_dtmf("42#")
    farewell = CallScript.from_fixture("demo_call", turns=(4,))

    async def both() -> dict[str, Call]:
        first = await _place_call(conversation, (), caller_hangs_up=True)
        second = await _place_call(farewell, (ReplyRule(r"\w", "Thank you, goodbye!",
                                                        end_call=True),),
                                   caller_hangs_up=False)
        return {"conversation": first, "farewell": second}

    return asyncio.run(both())


def _events(call: Call, *kinds: str) -> list[Any]:
    return call.timeline.of(*kinds)


def test_every_spoken_turn_is_transcribed_once_after_its_end(calls: dict[str, Call]) -> None:
    call = calls["conversation"]
    spoken = [t for t in call.timeline.turns if not t.dtmf]
    assert len(spoken) == 3
    summary = summarize(call.timeline)
    assert summary.detected == 3
    for row in summary.turns:
        if row.dtmf:
            continue
        # scripted recognition: one word per 250 ms of the turn's audio
        assert row.heard and row.heard.startswith("w0")
        assert row.end_latency_s is not None and row.end_latency_s > 0
        assert row.early_ends == 0
    # every turn was committed by the server, none by the watchdog's local fallback
    assert summary.fallbacks == 0


def test_a_finished_call_releases_its_pipeline_and_is_counted(calls: dict[str, Call]) -> None:
    from fastapi.testclient import TestClient

    call = calls["conversation"]
    session = call.app.state.sessions[-1]
    # the pipeline (services, buffers) is dropped when the call ends; the context stays
    assert session.worker is None and session.context is not None
    assert call.app.state.sessions.maxlen == 16  # a long-running bot keeps only recent calls
    health = TestClient(call.app).get("/health").json()
    assert health["status"] == "ok" and health["calls"] == 1 and health["active_calls"] == 0


def test_barge_in_sends_twilio_clear_while_the_bot_speaks(calls: dict[str, Call]) -> None:
    call = calls["conversation"]
    barge = next(t for t in call.timeline.turns if "barge_in" in t.tags)
    clears = [e for e in _events(call, "clear_received") if e.data["during_speech"]]
    assert clears, "no clear arrived while bot audio was playing"
    clear = clears[0]
    assert barge.start_s <= clear.t < barge.start_s + 1.0  # soon after the caller's onset
    assert {"event": "clear", "streamSid": call.caller.stream_sid} in call.caller.received
    # the bot knew it was cut off, and what the caller had heard of the reply by then
    interrupted = _events(call, "bot_interrupted")
    assert interrupted and interrupted[-1].data["unheard"]
    heard = interrupted[-1].data["heard"]
    assert heard and REPLY.startswith(heard) and heard != REPLY
    # the LLM context keeps only what the caller heard of the interrupted reply
    context = call.app.state.sessions[-1].context
    said = [m["content"] for m in context.get_messages() if m["role"] == "assistant"]
    assert said.count(heard) == 1 and said.count(REPLY) == len(said) - 1
    assert any(e.data.get("cleared") for e in _events(call, "bot_speech_stop"))


def test_marks_are_sent_after_bot_audio_and_echoes_tell_heard_from_flushed(
        calls: dict[str, Call]) -> None:
    call = calls["conversation"]
    sent = [m for m in call.caller.received if m.get("event") == "mark"]
    echoed = [m["mark"]["name"] for m in call.caller.sent if m.get("event") == "mark"]
    assert sent and sorted(echoed) == sorted(m["mark"]["name"] for m in sent)
    # a mark never arrives before the audio it follows
    first_mark = next(i for i, m in enumerate(call.caller.received) if m.get("event") == "mark")
    assert any(m.get("event") == "media" for m in call.caller.received[:first_mark])
    session = call.app.state.sessions[-1]
    marks = list(session.ledger.marks.values())
    assert any(m.heard for m in marks), "no mark was echoed as played"
    # the interrupted reply: its first sentence was heard, the rest never was
    interrupted = _events(call, "bot_interrupted")[-1].data["reply"]
    of_reply = [m for m in marks if m.reply == interrupted]
    assert any(m.heard for m in of_reply) and any(not m.heard for m in of_reply)
    assert of_reply[-1].final and not of_reply[-1].heard
    # replies that were not interrupted were heard to their final mark
    complete = [m for m in marks if m.final and m.reply != interrupted]
    assert complete and all(m.heard for m in complete)


def test_dtmf_digits_are_a_user_turn(calls: dict[str, Call]) -> None:
    call = calls["conversation"]
    dtmf = [m for m in call.caller.sent if m.get("event") == "dtmf"]
    assert [m["dtmf"]["digit"] for m in dtmf] == ["4", "2", "#"]
    replies = [e for e in _events(call, "bot_reply") if "DTMF" in e.data["user_text"]]
    assert replies and replies[0].data["user_text"].endswith("DTMF: 42#")


def test_caller_hang_up_ends_the_call_cleanly(calls: dict[str, Call]) -> None:
    call = calls["conversation"]
    assert call.caller.ended_by == "caller"
    assert call.caller.sent[-1]["event"] == "stop" or any(
        m["event"] == "stop" for m in call.caller.sent)
    session = call.app.state.sessions[-1]
    assert session.ended_by == "caller"
    assert call.app.state.active_calls == 0
    assert _events(call, "call_ended")[-1].data["ended_by"] == "caller"


def test_bot_hangs_up_after_the_farewell_was_heard(calls: dict[str, Call]) -> None:
    call = calls["farewell"]
    hangup = _events(call, "hangup")
    assert hangup and hangup[0].data["farewell_heard"] is True
    assert call.caller.ended_by == "bot"
    closed = _events(call, "socket_closed")
    assert closed and closed[0].data["code"] == 1000
    # the farewell was played to its end before the stream closed
    last_audio = _events(call, "bot_speech_stop")[-1]
    assert last_audio.t <= closed[0].t + 0.05
    assert not any(m.get("event") == "stop" for m in call.caller.sent)
    assert call.app.state.sessions[-1].ended_by == "bot"


def test_startup_freezes_what_is_loaded_out_of_the_collector() -> None:
    import gc

    from fastapi.testclient import TestClient

    gc.unfreeze()
    try:
        with TestClient(create_app(BotConfig(greeting=None), freeze_gc=False)):
            assert gc.get_freeze_count() == 0
        with TestClient(create_app(BotConfig(greeting=None))):  # runs the lifespan
            frozen = gc.get_freeze_count()
    finally:
        gc.unfreeze()  # the rest of the suite keeps a normal collector
    assert frozen > 10_000  # pipecat, fastapi and the app, out of every full collection


async def test_twiml_connects_the_call_to_the_media_stream() -> None:
    from fastapi.testclient import TestClient

    client = TestClient(create_app(BotConfig(greeting=None)))
    reply = client.post("/twiml", data={"CallSid": "CA1", "From": "+1555", "To": "+1666"})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith(
        "application/xml")
    assert '<Stream url="ws://testserver/ws">' in reply.text
    assert '<Parameter name="from_number" value="+1555"/>' in reply.text
    forwarded = client.get("/twiml", headers={"x-forwarded-proto": "https",
                                              "host": "bot.example.com"})
    assert 'url="wss://bot.example.com/ws"' in forwarded.text


async def test_twiml_checks_twilio_signature_when_a_token_is_set() -> None:
    from fastapi.testclient import TestClient

    config = BotConfig(greeting=None, twilio_account_sid="AC1", twilio_auth_token="secret",
                       public_url="https://bot.example.com")
    client = TestClient(create_app(config))
    form = {"CallSid": "CA9", "From": "+1555"}
    bad = client.post("/twiml", data=form, headers={"x-twilio-signature": "nope"})
    assert bad.status_code == 403
    good_sig = twilio_signature("secret", "https://bot.example.com/twiml", form)
    good = client.post("/twiml", data=form, headers={"x-twilio-signature": good_sig})
    assert good.status_code == 200
    assert 'url="wss://bot.example.com/ws"' in good.text
    assert '<Parameter name="token"' in good.text  # the stream carries a per-call token
    assert "secret" not in good.text and "secret" not in repr(config)


def _start_message(call_sid: str, token: str) -> str:
    """Twilio's ``start`` (its media-streams docs), with the TwiML's custom parameters."""
    return json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
        "start": {"accountSid": "AC1", "streamSid": "MZ1", "callSid": call_sid,
                  "tracks": ["inbound"], "customParameters": {"token": token},
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                  "channels": 1}}})


def test_the_stream_token_is_checked_and_never_logged() -> None:
    """pipecat's parse_telephony_websocket logged the start message (TRACE) and the parsed
    call data (DEBUG), the per-call token in them; the bot reads Twilio's start itself, checks
    the token and drops it. A wrong token closes the stream (1008) before any call runs."""
    import logging

    from fastapi.testclient import TestClient
    from loguru import logger
    from starlette.websockets import WebSocketDisconnect

    from agents.twilio_bot.app import _stream_token

    auth = "twilio_AUTHTOKEN_abcdef123456"
    good = _stream_token(auth, "CA123")
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="TRACE")
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    connected = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    stop = json.dumps({"event": "stop", "sequenceNumber": "2", "streamSid": "MZ1",
                       "stop": {"accountSid": "AC1", "callSid": "CA123"}})
    try:
        app = create_app(BotConfig(greeting=None, reson8_url="ws://127.0.0.1:9",
                                   twilio_account_sid="AC1", twilio_auth_token=auth))
        with TestClient(app) as client:
            with client.websocket_connect("/ws") as ws:
                ws.send_text(connected)
                ws.send_text(_start_message("CA123", "f" * 32))
                with pytest.raises(WebSocketDisconnect) as info:
                    ws.receive_text()
                assert info.value.code == 1008
            assert app.state.finished_calls == 0
            with client.websocket_connect("/ws") as ws:
                ws.send_text(connected)
                ws.send_text(_start_message("CA123", good))
                ws.send_text(stop)
                # leave only once the call has ended: on exit the test client cancels the
                # app's task, and a cancel landing inside the running pipeline surfaced as
                # a bare CancelledError from the client (once, under load)
                deadline = time.monotonic() + 20
                while app.state.finished_calls == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
    finally:
        logging.getLogger().removeHandler(handler)
        logger.remove(sink)
    assert app.state.finished_calls == 1  # the good stream was a call (ended by its stop)
    blob = "\n".join(lines)
    assert "media stream without a valid token" in blob
    assert good not in blob and auth not in blob
