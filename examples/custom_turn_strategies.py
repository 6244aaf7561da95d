"""Pinning your own turn strategies: eager end of turn, and a longer silent-turn watchdog.

By default the user aggregator takes the strategies ``Reson8TurnsSTTService`` recommends
(external start/stop). Here we pin them instead: with eager end of turn on, the service
turns each ``turn_end_candidate`` into an ``EagerTranscriptionFrame``; pipecat's
``EagerUserTurnStrategies`` starts the LLM on it at once, holds the reply until
``turn_end`` confirms it, and drops it if ``turn_continuation`` says the caller went on.
"""

from __future__ import annotations

from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.turns.user_turn_strategies import EagerUserTurnStrategies

from reson8_voice.pipecat import Reson8TurnsSTTService


def build() -> tuple[Reson8TurnsSTTService, LLMContextAggregatorPair]:
    stt = Reson8TurnsSTTService(
        enable_eager_end_of_turn=True,  # candidates become speculative replies
        barge_in="first",  # interrupt on the local VAD or the server, whichever is first
        should_interrupt=True,
    )
    strategies = EagerUserTurnStrategies(
        speculation_timeout=3.0,  # give up a speculation the server never confirms
        enable_interruptions=True,
    )
    pair = LLMContextAggregatorPair(
        LLMContext(),
        user_params=LLMUserAggregatorParams(
            user_turn_strategies=strategies,
            user_turn_stop_timeout=8.0,  # a turn the service never closes ends after 8 s
        ),
    )
    return stt, pair


if __name__ == "__main__":
    stt, pair = build()
    print(stt, pair.user().__class__.__name__, "ready: put them in your pipeline")
