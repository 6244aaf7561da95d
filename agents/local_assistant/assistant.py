"""A local voice assistant: your microphone and speaker, Reson8 turn-taking, at 16 kHz.

    mic -> Reson8TurnsSTTService -> user aggregator (recommended external strategies)
        -> LLM -> TTS -> speaker -> assistant aggregator

The microphone and speaker come from pipecat's ``LocalAudioTransport`` (PyAudio: the
``local-audio`` extra). Building the pipeline never needs it: :func:`build_assistant`
takes any transport, and ``--file`` uses :class:`FileAudioTransport` instead. LLM and TTS
are chosen as in the Twilio bot: offline (scripted replies, eSpeak NG) unless
``OPENAI_API_KEY`` / ``CARTESIA_API_KEY`` are set.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipecat.frames.frames import EndFrame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.workers.runner import WorkerRunner

from reson8_voice import CompletedTurn, redacted_repr
from reson8_voice.pipecat import Reson8TurnsSTTService

from .file_transport import FileAudioTransport

__all__ = ["Assistant", "AssistantConfig", "build_assistant", "local_audio_transport",
           "run_assistant"]

SAMPLE_RATE = 16000
SYSTEM_PROMPT = ("You are a helpful voice assistant. Your answers are spoken aloud: keep "
                 "them short, no lists or markdown.")


@dataclass
class AssistantConfig:
    """Service choices; ``None`` keys mean the offline defaults."""

    __repr__ = redacted_repr  # a ?token= in a URL field is a credential

    reson8_url: str | None = None
    reson8_api_key: str | None = field(default=None, repr=False)
    openai_api_key: str | None = field(default=None, repr=False)
    openai_model: str = "gpt-4o-mini"
    cartesia_api_key: str | None = field(default=None, repr=False)
    cartesia_voice: str = "71a7ad14-091c-4e8e-a314-022ece01c121"
    greeting: str | None = "Hello! I'm listening."
    enable_eager_end_of_turn: bool = False
    stt_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Assistant:
    """A built (not yet running) assistant: its pipeline, worker and services."""

    pipeline: Pipeline
    worker: PipelineWorker
    transport: BaseTransport
    stt: Reson8TurnsSTTService
    context: LLMContext
    turns: list[CompletedTurn] = field(default_factory=list)


def local_audio_transport() -> BaseTransport:
    """pipecat's microphone/speaker transport at 16 kHz.

    Raises:
        ImportError: PyAudio is missing (``pip install 'reson8-voice[local-audio]'``).
    """
    try:
        from pipecat.transports.local.audio import (
            LocalAudioTransport,
            LocalAudioTransportParams,
        )
    except ImportError as exc:
        raise ImportError("the microphone needs PyAudio: pip install "
                          "'reson8-voice[local-audio]' (Linux: apt install portaudio19-dev "
                          "first), or use --file") from exc
    return LocalAudioTransport(LocalAudioTransportParams(
        audio_in_enabled=True, audio_out_enabled=True, audio_in_sample_rate=SAMPLE_RATE,
        audio_out_sample_rate=SAMPLE_RATE))


def file_transport(path: Path, *, out_path: Path | None = None, speed: float = 1.0,
                   tail_s: float = 3.0) -> FileAudioTransport:
    """A transport playing ``path`` as the microphone (tests, machines without audio)."""
    params = TransportParams(audio_in_enabled=True, audio_out_enabled=True,
                             audio_in_sample_rate=SAMPLE_RATE,
                             audio_out_sample_rate=SAMPLE_RATE)
    return FileAudioTransport(path, params, out_path=out_path, speed=speed, tail_s=tail_s)


def _llm(config: AssistantConfig) -> FrameProcessor:
    if config.openai_api_key:
        from pipecat.services.openai.llm import OpenAILLMService

        return OpenAILLMService(api_key=config.openai_api_key,
                                settings=OpenAILLMService.Settings(
                                    model=config.openai_model,
                                    system_instruction=SYSTEM_PROMPT))
    from reson8_voice.demo.scripted_llm import ScriptedReplyLLM

    return ScriptedReplyLLM()


def _tts(config: AssistantConfig) -> FrameProcessor:
    if config.cartesia_api_key:
        from pipecat.services.cartesia.tts import CartesiaTTSService

        return CartesiaTTSService(api_key=config.cartesia_api_key,
                                  settings=CartesiaTTSService.Settings(
                                      voice=config.cartesia_voice))
    from reson8_voice.demo.espeak_tts import EspeakTTSService

    return EspeakTTSService()


def build_assistant(transport: BaseTransport, config: AssistantConfig | None = None
                    ) -> Assistant:
    """Wire the assistant's pipeline around ``transport`` (nothing runs yet)."""
    cfg = config or AssistantConfig()
    stt = Reson8TurnsSTTService(url=cfg.reson8_url, api_key=cfg.reson8_api_key,
                                enable_eager_end_of_turn=cfg.enable_eager_end_of_turn,
                                **cfg.stt_options)
    context = LLMContext(messages=[{"role": "system", "content": SYSTEM_PROMPT}])
    user_agg, assistant_agg = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(user_turn_strategies=None))
    pipeline = Pipeline([transport.input(), stt, user_agg, _llm(cfg), _tts(cfg),
                         transport.output(), assistant_agg])
    worker = PipelineWorker(pipeline, params=PipelineParams(
        audio_in_sample_rate=SAMPLE_RATE, audio_out_sample_rate=SAMPLE_RATE),
        idle_timeout_secs=None, enable_rtvi=False)
    assistant = Assistant(pipeline, worker, transport, stt, context)

    @stt.event_handler("on_turn_end")
    async def _on_turn_end(service: Any, turn: CompletedTurn) -> None:
        assistant.turns.append(turn)
        print(f"you: {turn.text}", flush=True)

    if cfg.greeting:
        greeting = cfg.greeting

        @worker.event_handler("on_pipeline_started")
        async def _greet(worker: Any, frame: Any) -> None:
            await worker.queue_frames([TTSSpeakFrame(greeting)])

    return assistant


async def run_assistant(assistant: Assistant, *, settle_s: float = 1.5) -> None:
    """Run until interrupted; with a file source, until the file and the replies are done."""
    runner = WorkerRunner(handle_sigint=not isinstance(assistant.transport,
                                                       FileAudioTransport))
    await runner.add_workers(assistant.worker)
    task = asyncio.create_task(runner.run())
    transport = assistant.transport
    if isinstance(transport, FileAudioTransport):
        done = asyncio.create_task(transport.input().done.wait())
        await asyncio.wait({task, done}, return_when=asyncio.FIRST_COMPLETED)
        output = transport.output()
        while not task.done() and time.monotonic() - output.last_played < settle_s:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # let the last reply finish playing
        if not task.done():
            await assistant.worker.queue_frame(EndFrame())
        done.cancel()
        output.save()
    await task
