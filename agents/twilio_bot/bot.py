"""One phone call: the pipecat pipeline behind a Twilio media stream, at 8 kHz.

    Twilio WS -> TwilioFrameSerializer (+ marks) -> MarkEchoReceiver -> Reson8TurnsSTTService
    -> DTMFTurns -> user aggregator (the STT's recommended external turn strategies)
    -> LLM -> TTS -> PlaybackMarker -> transport output (clear on barge-in) -> assistant aggregator

Offline defaults (no keys): the scripted reply agent and eSpeak NG from ``espeakng-loader``.
``OPENAI_API_KEY`` switches the LLM to pipecat's OpenAI service, ``CARTESIA_API_KEY`` the
TTS to Cartesia; ``RESON8_API_KEY`` (and ``RESON8_URL``) the turn-taking to the hosted
Reson8 service, otherwise the embedded server (``reson8-voice serve``) is used.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from pipecat.frames.frames import EndFrame, LLMRunFrame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    AssistantTurnStoppedMessage,
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.workers.runner import WorkerRunner
from starlette.websockets import WebSocket

from reson8_voice import CompletedTurn, redact_url, redacted_repr
from reson8_voice.pipecat import Reson8TurnsSTTService

from .dtmf import DTMFTurns
from .playback import (
    MarkAwareTwilioSerializer,
    MarkEchoReceiver,
    PlaybackLedger,
    PlaybackMarker,
)

__all__ = ["BotConfig", "CallSession", "Observer", "run_call"]

#: ``observer(kind, data)``: every call event, with ``data["t"]`` = time.monotonic().
Observer = Callable[[str, dict[str, Any]], None]

SYSTEM_PROMPT = (
    "You are the phone assistant of the Riverside Bistro. You take and change table "
    "reservations. Your replies are spoken on a phone line: short sentences, no lists, no "
    "markdown. When the caller says goodbye, say goodbye and call the end_call function."
)
GREETING = "Thanks for calling the Riverside Bistro. How can I help you?"
DEFAULT_CARTESIA_VOICE = "71a7ad14-091c-4e8e-a314-022ece01c121"


@dataclass
class BotConfig:
    """Everything a call needs; :meth:`from_env` reads it from the environment.

    Secrets are never logged or shown in :meth:`describe`.
    """

    __repr__ = redacted_repr  # a ?token= in a URL field is a credential

    reson8_url: str | None = None
    reson8_api_key: str | None = field(default=None, repr=False)
    openai_api_key: str | None = field(default=None, repr=False)
    openai_model: str = "gpt-4o-mini"
    cartesia_api_key: str | None = field(default=None, repr=False)
    cartesia_voice: str = DEFAULT_CARTESIA_VOICE
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = field(default=None, repr=False)
    public_url: str | None = None
    greeting: str | None = GREETING
    system_prompt: str = SYSTEM_PROMPT
    enable_eager_end_of_turn: bool = False
    #: longest wait for the farewell's mark echo before hanging up anyway
    hangup_grace_s: float = 8.0
    #: extra keyword arguments for Reson8TurnsSTTService (tests: reconnect delays, ...)
    stt_options: dict[str, Any] = field(default_factory=dict)
    #: build your own LLM service (given the call's context) instead of the defaults
    llm_factory: Callable[[LLMContext], FrameProcessor] | None = field(default=None,
                                                                       repr=False)
    #: build your own TTS service instead of the defaults
    tts_factory: Callable[[], FrameProcessor] | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BotConfig:
        """Read ``RESON8_URL``, ``RESON8_API_KEY``, ``OPENAI_API_KEY``, ``OPENAI_MODEL``,
        ``CARTESIA_API_KEY``, ``CARTESIA_VOICE_ID``, ``TWILIO_ACCOUNT_SID``,
        ``TWILIO_AUTH_TOKEN``, ``PUBLIC_URL`` and ``RESON8_EAGER`` (1/true)."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            return env.get(name) or None

        return cls(
            reson8_url=get("RESON8_URL"),
            reson8_api_key=get("RESON8_API_KEY"),
            openai_api_key=get("OPENAI_API_KEY"),
            openai_model=get("OPENAI_MODEL") or "gpt-4o-mini",
            cartesia_api_key=get("CARTESIA_API_KEY"),
            cartesia_voice=get("CARTESIA_VOICE_ID") or DEFAULT_CARTESIA_VOICE,
            twilio_account_sid=get("TWILIO_ACCOUNT_SID"),
            twilio_auth_token=get("TWILIO_AUTH_TOKEN"),
            public_url=get("PUBLIC_URL"),
            enable_eager_end_of_turn=(get("RESON8_EAGER") or "").lower() in ("1", "true"),
        )

    @property
    def can_hang_up(self) -> bool:
        """Whether Twilio's REST API can be asked to end the call (credentials set)."""
        return bool(self.twilio_account_sid and self.twilio_auth_token)

    def describe(self) -> dict[str, str]:
        """Which service does what, said plainly (no secrets)."""
        url = redact_url(self.reson8_url) if self.reson8_url else None
        if self.reson8_api_key:
            turns = f"hosted Reson8 ({url or 'wss://api.reson8.dev'})"
        else:
            turns = f"Reson8-compatible server at {url or 'ws://127.0.0.1:8765'}"
        llm = (f"OpenAI {self.openai_model} (OPENAI_API_KEY set)" if self.openai_api_key
               else "scripted reply agent, offline (set OPENAI_API_KEY for OpenAI)")
        tts = ("Cartesia (CARTESIA_API_KEY set)" if self.cartesia_api_key
               else "eSpeak NG from espeakng-loader, offline (set CARTESIA_API_KEY for "
                    "Cartesia)")
        hangup = ("Twilio REST API" if self.can_hang_up
                  else "close the media stream (set TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN "
                       "to end the call through Twilio's REST API)")
        return {"turn-taking": turns, "llm": llm, "tts": tts, "hang-up": hangup}


def _make_llm(config: BotConfig, context: LLMContext, session: CallSession) -> FrameProcessor:
    from reson8_voice.demo.scripted_llm import ScriptedReplyLLM

    if config.llm_factory is not None:
        llm = config.llm_factory(context)
        if isinstance(llm, ScriptedReplyLLM):
            _observe_scripted(llm, session)
        return llm
    if config.openai_api_key:
        from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
        from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
        from pipecat.frames.frames import FunctionCallResultProperties
        from pipecat.services.llm_service import FunctionCallParams
        from pipecat.services.openai.llm import OpenAILLMService

        llm = OpenAILLMService(api_key=config.openai_api_key,
                               settings=OpenAILLMService.Settings(
                                   model=config.openai_model,
                                   system_instruction=config.system_prompt))

        async def end_call(params: FunctionCallParams) -> None:
            await params.result_callback({"status": "hanging up"},
                                         properties=FunctionCallResultProperties(run_llm=False))
            session.schedule_hang_up("the agent ended the call")

        llm.register_function("end_call", end_call)
        context.set_tools(ToolsSchema(standard_tools=[FunctionSchema(
            name="end_call", description="Hang up the call after saying goodbye.",
            properties={}, required=[])]))
        return llm
    scripted = ScriptedReplyLLM()
    _observe_scripted(scripted, session)
    return scripted


def _observe_scripted(scripted: Any, session: CallSession) -> None:
    @scripted.event_handler("on_end_call")
    async def _on_end_call(service: Any) -> None:
        session.schedule_hang_up("the agent said goodbye")

    @scripted.event_handler("on_reply")
    async def _on_reply(service: Any, user_text: str, reply: str) -> None:
        session.emit("bot_reply", user_text=user_text, text=reply)


def _make_tts(config: BotConfig) -> FrameProcessor:
    if config.tts_factory is not None:
        return config.tts_factory()
    if config.cartesia_api_key:
        from pipecat.services.cartesia.tts import CartesiaTTSService

        return CartesiaTTSService(api_key=config.cartesia_api_key,
                                  settings=CartesiaTTSService.Settings(
                                      voice=config.cartesia_voice))
    from reson8_voice.demo.espeak_tts import EspeakTTSService

    return EspeakTTSService(voice="en-us", rate_wpm=170)


class CallSession:
    """The state of one call: its worker, its playback ledger, how it ends."""

    def __init__(self, config: BotConfig, observer: Observer | None,
                 call_data: Mapping[str, Any]) -> None:
        """Create the session for the call described by ``call_data`` (Twilio's start)."""
        self.config = config
        self.observer = observer
        self.stream_sid = str(call_data.get("stream_id") or "")
        self.call_sid = str(call_data.get("call_id") or "")
        self.ledger = PlaybackLedger(observer=self.emit)
        self.worker: PipelineWorker | None = None
        self.context: LLMContext | None = None
        self.ended_by: str | None = None
        self._hang_up_task: asyncio.Task[None] | None = None

    def emit(self, kind: str, data: dict[str, Any] | None = None, **fields: Any) -> None:
        """Report a call event to the observer (and to the debug log)."""
        payload = {"t": time.monotonic(), **(data or {}), **fields}
        logger.debug(f"call {self.call_sid or '?'}: {kind} {payload}")
        if self.observer is not None:
            try:
                self.observer(kind, payload)
            except Exception:  # an observer must never break a call
                logger.exception("call observer failed")

    def schedule_hang_up(self, reason: str) -> None:
        """Hang up once the caller has heard the reply now being spoken (the farewell)."""
        if self._hang_up_task is None:
            marks_now = len(self.ledger.marks)
            self._hang_up_task = asyncio.get_running_loop().create_task(
                self.hang_up(reason, after=marks_now))

    async def hang_up(self, reason: str, *, after: int | None = None) -> None:
        """End the call cleanly: wait for the farewell's last mark echo, then end the pipeline.

        The EndFrame makes the serializer ask Twilio's REST API to complete the call (with
        credentials) and the transport close the media stream. ``after`` is passed to
        :meth:`PlaybackLedger.wait_played`.
        """
        heard = await self.ledger.wait_played(self.config.hangup_grace_s, after=after)
        if self.worker is None or self.ended_by is not None:
            return
        self.ended_by = "bot"
        self.emit("hangup", reason=reason, farewell_heard=heard)
        await self.worker.queue_frame(EndFrame())

    async def caller_stopped(self, message: dict[str, Any]) -> None:
        """Twilio sent ``stop``: the caller hung up, so the call is over."""
        if self.ended_by is None:
            self.ended_by = "caller"
            self.emit("caller_hangup")
        if self.worker is not None:
            await self.worker.cancel(reason="the caller hung up")


async def run_call(websocket: WebSocket, call_data: Mapping[str, Any], config: BotConfig,
                   observer: Observer | None = None) -> CallSession:
    """Run the pipeline for one accepted Twilio media-stream WebSocket until the call ends."""
    session = CallSession(config, observer, call_data)
    serializer = MarkAwareTwilioSerializer(
        stream_sid=session.stream_sid, call_sid=session.call_sid or None,
        account_sid=config.twilio_account_sid, auth_token=config.twilio_auth_token,
        params=TwilioFrameSerializer.InputParams(auto_hang_up=config.can_hang_up))
    transport = FastAPIWebsocketTransport(websocket, FastAPIWebsocketParams(
        audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False,
        serializer=serializer, allowed_origins=[]))
    stt = Reson8TurnsSTTService(url=config.reson8_url, api_key=config.reson8_api_key,
                                enable_eager_end_of_turn=config.enable_eager_end_of_turn,
                                **config.stt_options)
    _observe_stt(stt, session)
    context = LLMContext(messages=[{"role": "system", "content": config.system_prompt}])
    session.context = context
    user_agg, assistant_agg = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(user_turn_strategies=None))
    llm = _make_llm(config, context, session)
    tts = _make_tts(config)
    pipeline = Pipeline([
        transport.input(),
        MarkEchoReceiver(session.ledger, session.caller_stopped),
        stt,
        DTMFTurns(),
        user_agg,
        llm,
        tts,
        PlaybackMarker(session.ledger, session.stream_sid),
        transport.output(),
        assistant_agg,
    ])
    worker = PipelineWorker(pipeline, params=PipelineParams(
        audio_in_sample_rate=8000, audio_out_sample_rate=8000, enable_metrics=True,
        enable_usage_metrics=True), idle_timeout_secs=None, enable_rtvi=False)
    session.worker = worker

    @assistant_agg.event_handler("on_assistant_turn_stopped")
    async def _on_assistant_stopped(aggregator: Any, message: AssistantTurnStoppedMessage
                                    ) -> None:
        if message.interrupted:
            _keep_only_heard(context, message.content, session.ledger.heard_text())

    @user_agg.event_handler("on_user_turn_started")
    async def _on_user_turn(aggregator: Any, strategy: Any) -> None:
        session.emit("user_turn_started")

    @transport.event_handler("on_client_connected")
    async def _on_connected(transport: Any, ws: Any) -> None:
        if config.greeting:
            await worker.queue_frames([TTSSpeakFrame(config.greeting)])
        elif config.openai_api_key:
            await worker.queue_frames([LLMRunFrame()])

    @transport.event_handler("on_client_disconnected")
    async def _on_disconnected(transport: Any, ws: Any) -> None:
        if session.ended_by is None:
            session.ended_by = "caller"
            session.emit("caller_hangup", reason="media stream closed")
        await worker.cancel(reason="the media stream closed")

    session.emit("call_started", stream_sid=session.stream_sid, call_sid=session.call_sid,
                 services=config.describe())
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    try:
        await runner.run()
    finally:
        session.worker = None  # the call is over: its pipeline (services, buffers) can go
    session.emit("call_ended", ended_by=session.ended_by or "unknown",
                 heard_marks=sum(1 for m in session.ledger.marks.values() if m.heard),
                 flushed_marks=sum(1 for m in session.ledger.marks.values()
                                   if m.heard is False))
    return session


def _observe_stt(stt: Reson8TurnsSTTService, session: CallSession) -> None:
    @stt.event_handler("on_turn_start")
    async def _start(service: Any) -> None:
        session.emit("turn_start")

    @stt.event_handler("on_turn_end_candidate")
    async def _candidate(service: Any, text: str) -> None:
        session.emit("candidate", text=text)

    @stt.event_handler("on_turn_continuation")
    async def _continuation(service: Any) -> None:
        session.emit("continuation")

    @stt.event_handler("on_turn_end")
    async def _end(service: Any, turn: CompletedTurn) -> None:
        session.emit("turn_end", text=turn.text, cut_short=turn.cut_short,
                     continuations=turn.continuations)

    @stt.event_handler("on_fallback_started")
    async def _fallback(service: Any, reason: str) -> None:
        session.emit("fallback_started", reason=reason)

    @stt.event_handler("on_fallback_ended")
    async def _recovered(service: Any, outage_s: float) -> None:
        session.emit("fallback_ended", outage_s=outage_s)


def _keep_only_heard(context: LLMContext, spoken: str, heard: str) -> None:
    """After a barge-in, make the assistant message say only what the caller heard.

    pipecat stores the text its local playback clock believes was spoken; the mark echoes
    know better. An assistant message nobody heard is dropped.
    """
    messages = context.get_messages()
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if isinstance(message, dict) and message.get("role") == "assistant" \
                and message.get("content") == spoken:
            if heard:
                messages[i] = {"role": "assistant", "content": heard}
            else:
                del messages[i]
            context.set_messages(list(messages))
            return
