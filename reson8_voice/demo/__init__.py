"""The newcomer's path: a simulated Twilio call through the real phone bot, with a report.

:func:`run_demo` is what ``reson8-voice demo`` runs. The pieces are reusable: the call
script cut from a speech fixture (:class:`CallScript`), the simulated Twilio caller
(:class:`SimulatedTwilioCaller`), the call timeline and its summary, and the report writer.
The offline pipeline stand-ins live in :mod:`reson8_voice.demo.scripted_llm` (a keyword
reply agent) and :mod:`reson8_voice.demo.espeak_tts` (eSpeak NG from ``espeakng-loader``);
they import pipecat, so they are not imported here.
"""

from .caller import CallerOptions, SimulatedTwilioCaller, fetch_twiml
from .report import write_report
from .runner import DemoOptions, DemoResult, run_demo
from .script import CallerTurn, CallScript
from .timeline import CallSummary, CallTimeline, TerminalPrinter, TurnResult, summarize

__all__ = [
    "CallScript",
    "CallSummary",
    "CallTimeline",
    "CallerOptions",
    "CallerTurn",
    "DemoOptions",
    "DemoResult",
    "SimulatedTwilioCaller",
    "TerminalPrinter",
    "TurnResult",
    "fetch_twiml",
    "run_demo",
    "summarize",
    "write_report",
]
