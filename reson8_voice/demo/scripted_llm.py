"""A scripted reply agent as a pipecat ``LLMService``: the demo's LLM when no key is set.

It answers the last user message by keyword rules, streaming the reply word by word like
a real LLM (``LLMFullResponseStartFrame``, ``LLMTextFrame``..., ``LLMFullResponseEndFrame``),
so everything downstream (speculation gate, TTS sentence aggregation, interruption) behaves
as with a hosted model. A rule may end the call: the service fires ``on_end_call`` once the
farewell is pushed, and the app hangs up after the caller has heard it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipecat.frames.frames import (
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings

__all__ = ["DEMO_RULES", "ReplyRule", "ScriptedReplyLLM", "last_user_text"]


@dataclass(frozen=True, slots=True)
class ReplyRule:
    """Reply ``reply`` when ``pattern`` (a regex, case-insensitive) matches the user text.

    ``{text}`` in the reply is replaced by what the user said, ``{digits}`` by the digits
    in it; ``end_call`` hangs up after the reply has been heard.
    """

    pattern: str
    reply: str
    end_call: bool = False


#: The restaurant scenario of the demo call (tests/fixtures demo_call), plus generic rules.
DEMO_RULES: tuple[ReplyRule, ...] = (
    ReplyRule(r"\b(good ?bye|bye)\b",
              "You're welcome. Thank you for calling the Riverside Bistro. Goodbye!",
              end_call=True),
    ReplyRule(r"dtmf|pressed|keypad",
              "Thank you, I received the digits {digits} on the keypad."),
    ReplyRule(r"\b(six|6|people|guests|party)\b",
              "No problem at all. I have changed the booking to six people. "
              "Is there anything else I can do for you?"),
    ReplyRule(r"\b(name|under)\b",
              "Thank you. I found the booking under that name. It was for two people "
              "tonight at seven thirty, and I am moving it to next Saturday at the same "
              "time. We have a lovely table by the window that evening, and I will send "
              "you a text message to confirm the new date. Is there anything else you "
              "would like to change?"),
    ReplyRule(r"\b(change|move|reschedul\w*|saturday)\b",
              "Of course, I can change that booking for you. "
              "Could you tell me the name the booking is under?"),
    ReplyRule(r"\b(reservation|booking|book|table)\b",
              "Hello, and thanks for calling the Riverside Bistro. "
              "I can help you with your reservation. What would you like to do?"),
    ReplyRule(r"\b(hello|hi|hey)\b", "Hello! How can I help you today?"),
)

_FALLBACK = "Sorry, I only caught: {text}. Could you say that again?"


def last_user_text(context: LLMContext) -> str:
    """The text of the last user message in ``context`` ("" if there is none)."""
    for message in reversed(context.get_messages()):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(str(part.get("text", "")) for part in content
                            if isinstance(part, dict) and part.get("type") == "text")
    return ""


class ScriptedReplyLLM(LLMService):
    """Keyword rules in place of a model; streams its replies like one.

    Event handlers: ``on_reply(service, user_text, reply)`` for each reply and
    ``on_end_call(service)`` after a rule with ``end_call`` replied.
    """

    def __init__(self, rules: Sequence[ReplyRule] = DEMO_RULES, *,
                 fallback: str = _FALLBACK, token_delay_s: float = 0.0,
                 **kwargs: Any) -> None:
        """Create the agent.

        Args:
            rules: tried in order; the first match replies.
            fallback: the reply when no rule matches (``{text}`` is what was said).
            token_delay_s: pause between streamed words (0 = as fast as possible).
            **kwargs: passed to pipecat's ``LLMService``.
        """
        super().__init__(settings=LLMSettings(model="scripted", system_instruction=None,
                                              temperature=None, max_tokens=None, top_p=None,
                                              top_k=None, frequency_penalty=None,
                                              presence_penalty=None, seed=None,
                                              filter_incomplete_user_turns=False,
                                              user_turn_completion_config=None),
                         **kwargs)
        self._rules = [(re.compile(r.pattern, re.IGNORECASE), r) for r in rules]
        self._fallback = fallback
        self._token_delay_s = token_delay_s
        self._register_event_handler("on_reply")
        self._register_event_handler("on_end_call")

    def reply_for(self, text: str) -> ReplyRule:
        """The rule that answers ``text`` (a fallback rule when none matches)."""
        for pattern, rule in self._rules:
            if pattern.search(text):
                return rule
        return ReplyRule("", self._fallback)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Answer each ``LLMContextFrame``; pass everything else on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            await self._respond(frame.context)
        else:
            await self.push_frame(frame, direction)

    async def _respond(self, context: LLMContext) -> None:
        text = last_user_text(context).strip()
        rule = self.reply_for(text)
        digits = " ".join(re.findall(r"[0-9*#]", text)) or "none"
        reply = rule.reply.format(text=text or "nothing", digits=digits)
        await self.push_frame(LLMFullResponseStartFrame())
        await self.start_processing_metrics()
        await self.start_ttfb_metrics()
        for i, word in enumerate(reply.split(" ")):
            if i == 0:
                await self.stop_ttfb_metrics()
            await self._push_llm_text(word if i == 0 else " " + word)
            if self._token_delay_s:
                await asyncio.sleep(self._token_delay_s)
        await self.stop_processing_metrics()
        await self.push_frame(LLMFullResponseEndFrame())
        await self._call_event_handler("on_reply", text, reply)
        if rule.end_call:
            await self._call_event_handler("on_end_call")
