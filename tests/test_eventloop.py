"""Event loops: ``auto`` picks uvloop when installed, and the server ends a real turn on it."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import signal
import sys
from typing import Any

import pytest

from reson8_voice import TurnEnd, TurnEndCandidate, TurnsParams, connect_turns
from reson8_voice.eventloop import resolve_event_loop, run

from .audio_fixtures import load_fixture

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
needs_uvloop = pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


@needs_uvloop
def test_auto_and_uvloop_run_on_uvloop_and_asyncio_on_the_standard_loop() -> None:
    assert resolve_event_loop("auto") == "uvloop"
    assert run(_loop_module(), "auto").startswith("uvloop")
    assert run(_loop_module(), "uvloop").startswith("uvloop")
    assert run(_loop_module(), "asyncio").startswith("asyncio")


def test_without_uvloop_auto_falls_back_and_an_explicit_ask_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "uvloop" else real(name, *a))
    assert resolve_event_loop("auto") == "asyncio"
    with pytest.raises(ImportError, match="uvloop is not installed"):
        resolve_event_loop("uvloop")
    with pytest.raises(ValueError, match="unknown event loop 'trio'"):
        resolve_event_loop("trio")


@needs_uvloop
async def test_serve_on_uvloop_ends_a_real_turn() -> None:
    """``reson8-voice serve --loop uvloop`` with the local models answers a real call."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reson8_voice", "serve", "--port", "0", "--loop", "uvloop",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
        assert "on uvloop" in line, line
        url = line.split("serving ", 1)[1].split("/v1/", 1)[0]
        fx = load_fixture("short_answers")
        first = fx.turns[0]
        audio = fx.data[: (first.end_ms + 1500) * 8]  # "yes" and 1.5 s of line noise
        events: list[Any] = []
        async with await connect_turns(url, TurnsParams(encoding="mulaw",
                                                        sample_rate=8000)) as conn:
            for i in range(0, len(audio), 160):
                await conn.send_audio(audio[i:i + 160])

            async def until_end() -> None:
                async for event in conn:
                    events.append(event)
                    if isinstance(event, TurnEnd):
                        return

            await asyncio.wait_for(until_end(), 60)
        texts = [e.text.lower() for e in events if isinstance(e, TurnEndCandidate)]
        assert texts and "yes" in texts[-1]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0
    assert proc.stderr is not None
    log = (await proc.stderr.read()).decode()
    # what startup loaded (modules, models) is out of every full collection
    frozen = re.search(r"(\d+) startup objects frozen out of the garbage collector", log)
    assert frozen and int(frozen.group(1)) > 10_000, log
