"""Which asyncio event loop runs a reson8-voice process: ``auto``, ``asyncio`` or ``uvloop``.

uvloop takes about a fifth off the CPU of the server and of pipecat's per-frame plumbing,
and with it the event-loop stalls that make audio frames late under load (see
``benchmarks/bench_load.py --loop``). ``auto`` uses it when it is installed (the ``local``
and ``agents`` extras install it; uvicorn's ``--loop auto`` makes the same choice for the
Twilio bot) and the standard loop otherwise.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
from collections.abc import Coroutine
from typing import Any, Literal, TypeAlias, TypeVar

__all__ = ["EVENT_LOOPS", "EventLoopName", "freeze_startup_objects", "resolve_event_loop", "run"]

EventLoopName: TypeAlias = Literal["auto", "asyncio", "uvloop"]
#: The names :func:`run` accepts (the CLI's ``--loop`` choices).
EVENT_LOOPS: tuple[EventLoopName, ...] = ("auto", "asyncio", "uvloop")

T = TypeVar("T")


def resolve_event_loop(name: str = "auto") -> Literal["asyncio", "uvloop"]:
    """The loop ``name`` means here: ``auto`` is ``uvloop`` when it is importable.

    Raises:
        ValueError: an unknown name.
        ImportError: ``uvloop`` asked for explicitly but not installed.
    """
    if name not in EVENT_LOOPS:
        raise ValueError(f"unknown event loop {name!r}; choose one of {', '.join(EVENT_LOOPS)}")
    if name == "asyncio":
        return "asyncio"
    if importlib.util.find_spec("uvloop") is not None:
        return "uvloop"
    if name == "uvloop":
        raise ImportError("uvloop is not installed (pip install uvloop; not on Windows)")
    return "asyncio"


def run(main: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """``asyncio.run(main)`` on the event loop ``loop`` names (see :func:`resolve_event_loop`)."""
    if resolve_event_loop(loop) == "asyncio":
        return asyncio.run(main)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def freeze_startup_objects() -> int:
    """Collect, then move every object alive now (modules, models, pipelines built at
    startup) out of the garbage collector's reach (``gc.freeze()``); returns their count.

    Call it once a long-running process has loaded what it keeps for life: a full
    collection walks every tracked object, and over a loaded server or bot (25-65 ms
    measured) that pause makes every session's audio late at once. After the freeze the
    collector walks only what the sessions allocate.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
