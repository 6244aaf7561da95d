"""The smallest voice agent with Reson8 turn-taking: mic -> turns -> LLM -> TTS -> speaker.

Run `reson8-voice serve` first (or set RESON8_API_KEY for the hosted service), then
`python examples/minimal_pipeline.py` (needs the local-audio extra for the microphone).
"""

import asyncio

from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.transports.base_transport import BaseTransport
from pipecat.workers.runner import WorkerRunner

from reson8_voice.demo.espeak_tts import EspeakTTSService
from reson8_voice.demo.scripted_llm import ScriptedReplyLLM
from reson8_voice.pipecat import Reson8TurnsSTTService


def build(transport: BaseTransport) -> PipelineWorker:
    stt = Reson8TurnsSTTService()  # RESON8_URL, or the embedded server on 127.0.0.1:8765
    user, assistant = LLMContextAggregatorPair(LLMContext())  # takes the STT's strategies
    pipeline = Pipeline([transport.input(), stt, user, ScriptedReplyLLM(),
                         EspeakTTSService(), transport.output(), assistant])
    return PipelineWorker(pipeline, params=PipelineParams(audio_in_sample_rate=16000,
                                                          audio_out_sample_rate=16000))


async def main() -> None:
    from pipecat.transports.local.audio import LocalAudioTransport, LocalAudioTransportParams

    transport = LocalAudioTransport(LocalAudioTransportParams(audio_in_enabled=True,
                                                              audio_out_enabled=True))
    await WorkerRunner().run(build(transport))


if __name__ == "__main__":
    asyncio.run(main())
