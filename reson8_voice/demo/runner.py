"""``reson8-voice demo``: one simulated phone call through the real Twilio bot, end to end.

    embedded Reson8 server (real local models)  <--  Reson8TurnsSTTService
                                                         |  (in agents/twilio_bot, under
    simulated Twilio caller  --TwiML + media WS-->  FastAPI bot on uvicorn, 127.0.0.1)

Everything runs in this process on loopback. ``--url``/``RESON8_URL`` with
``RESON8_API_KEY`` points the same call at the hosted service instead.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..auth import redact_url, redacted_repr
from .caller import CallerOptions, SimulatedTwilioCaller
from .report import write_report
from .script import CallScript
from .timeline import CallSummary, CallTimeline, TerminalPrinter, summarize

__all__ = ["BotServer", "DemoOptions", "DemoResult", "find_repo_root", "load_bot_module",
           "new_report_folder", "run_demo"]


@dataclass
class DemoOptions:
    """What to run. Defaults: the demo call, real time, the embedded server."""

    __repr__ = redacted_repr  # a ?token= in a URL field is a credential

    url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    fixture: str = "demo_call"
    turns: tuple[int, ...] | None = None
    speed: float = 1.0
    report_dir: Path | None = Path("reports")
    #: the exact report folder (default: a new timestamped one under ``report_dir``)
    report_folder: Path | None = None
    greeting: bool = True
    dtmf: str | None = None
    caller_hangs_up: bool = False
    eager: bool = False
    #: engine job runner for the embedded server (None: load the real local models)
    run_job: Callable[[Any], Any] | None = None
    asr_model: str | None = None
    #: extra keyword arguments for the bot's Reson8TurnsSTTService
    stt_options: dict[str, Any] = field(default_factory=dict)
    #: the bot's LLM, built from the call's LLMContext (default: scripted or OpenAI)
    llm_factory: Callable[[Any], Any] | None = None
    #: the bot's TTS (default: eSpeak NG or Cartesia)
    tts_factory: Callable[[], Any] | None = None
    #: caller behaviour beyond speed and hang-up (see CallerOptions)
    caller_options: dict[str, Any] = field(default_factory=dict)
    print_live: bool = True
    verbose: bool = False


@dataclass
class DemoResult:
    """What the call produced."""

    timeline: CallTimeline
    summary: CallSummary
    report: Path | None
    caller: SimulatedTwilioCaller
    services: dict[str, str]
    sessions: list[Any]


def new_report_folder(parent: Path) -> Path:
    """A new ``parent/<YYYYmmdd-HHMMSS>`` folder (suffixed if taken), created."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder, suffix = parent / stamp, 1
    while folder.exists():
        suffix += 1
        folder = parent / f"{stamp}-{suffix}"
    folder.mkdir(parents=True)
    return folder


def find_repo_root() -> Path:
    """The checkout holding ``agents/twilio_bot`` (this package's parent, or the cwd).

    Raises:
        FileNotFoundError: not running from a checkout.
    """
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "agents" / "twilio_bot" / "app.py").is_file():
            return root
    raise FileNotFoundError("agents/twilio_bot not found: run the demo from a reson8-voice "
                            "checkout (make demo)")


def load_bot_module() -> Any:
    """Import ``agents.twilio_bot.app`` from the checkout."""
    root = str(find_repo_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("agents.twilio_bot.app")


class BotServer:
    """The bot app under uvicorn on 127.0.0.1, in its own thread and event loop.

    Like Twilio and the bot on separate machines: a stall in the bot's loop (imports at the
    first call, a slow processor) cannot hold up the caller's clock.
    """

    def __init__(self, app: Any) -> None:
        """Serve ``app`` once :meth:`start` is called."""
        self.app = app
        self.port = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _run(self, ready: threading.Event) -> None:
        import uvicorn

        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning",
                                lifespan="off", ws_max_size=1 << 22)
        self._server = uvicorn.Server(config)

        async def serve() -> None:
            task = asyncio.create_task(self._server.serve())
            while not self._server.started and not task.done():  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # uvicorn offers a flag, not an event
            if self._server.started:
                self.port = int(self._server.servers[0].sockets[0].getsockname()[1])
            ready.set()
            await task

        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported by start()
            self._error = exc
        finally:
            ready.set()

    async def start(self) -> int:
        """Start serving; returns the port."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="twilio-bot",
                                        daemon=True)
        self._thread.start()
        await asyncio.to_thread(ready.wait, 20)
        if not self.port:
            raise RuntimeError(f"the bot server did not start: {self._error!r}")
        return self.port

    async def stop(self) -> None:
        """Stop serving and wait for the thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 15)
            self._thread = None


async def run_demo(options: DemoOptions, printer: TerminalPrinter | None = None) -> DemoResult:
    """Run one call; print it live (``printer``) and write the report folder.

    Raises:
        FileNotFoundError: not in a checkout (fixtures or agents missing).
        ImportError: an optional extra is missing (the message names it).
    """
    bot_app = load_bot_module()
    bot_mod = importlib.import_module("agents.twilio_bot.bot")
    script = CallScript.from_fixture(options.fixture, turns=options.turns)
    if options.dtmf:
        script = script.with_dtmf(options.dtmf)
    timeline = CallTimeline(speed=options.speed, listener=printer)
    if printer is not None:
        printer.turns = timeline.turns  # shared: the printer reads ground truth live

    server = None
    url = options.url
    if url is None:
        from ..server.app import Reson8Server, ServerConfig

        run_job = options.run_job
        if run_job is None:
            from ..engine.models import LocalModels

            if printer is not None:
                printer.line("loading the local models (Whisper tiny.en + smart-turn v3)...")
            started = time.monotonic()
            models = await asyncio.to_thread(LocalModels.load, options.asr_model)
            run_job = models.run
            if printer is not None:
                printer.line(f"models loaded in {time.monotonic() - started:.1f} s")
        server = Reson8Server(ServerConfig(port=0), run_job)
        await server.start()
        url = server.url
    config = bot_mod.BotConfig.from_env()
    config.reson8_url = url
    config.reson8_api_key = options.api_key
    config.enable_eager_end_of_turn = options.eager
    config.stt_options = dict(options.stt_options)
    if options.llm_factory is not None:
        config.llm_factory = options.llm_factory
    if options.tts_factory is not None:
        config.tts_factory = options.tts_factory
    config.public_url = None
    config.twilio_account_sid = config.twilio_auth_token = None  # no real call to hang up
    if not options.greeting:
        config.greeting = None
    services: dict[str, str] = config.describe()
    if printer is not None:
        printer.line("offline defaults in use:" if not (config.openai_api_key or
                                                        config.cartesia_api_key
                                                        or options.api_key)
                     else "services in use:")
        for role, what in services.items():
            printer.line(f"  {role:<12} {what}")
        printer.line(f"caller: fixture {script.name!r} ({len(script.turns)} turns), "
                     f"{'real time' if options.speed == 1 else f'{options.speed:g}x speed'}")
        printer.line()
    loop = asyncio.get_running_loop()

    call_ended = asyncio.Event()

    def observer(kind: str, data: dict[str, Any]) -> None:  # called in the bot's thread
        loop.call_soon_threadsafe(timeline.bot_observer, kind, data)
        if kind == "call_ended":
            loop.call_soon_threadsafe(call_ended.set)

    app = bot_app.create_app(config, observer=observer)
    bot_server = BotServer(app)
    port = await bot_server.start()
    caller = SimulatedTwilioCaller(
        f"http://127.0.0.1:{port}/twiml", script, timeline,
        CallerOptions(speed=options.speed, caller_hangs_up=options.caller_hangs_up,
                      **options.caller_options))
    try:
        await caller.run()
        await asyncio.wait_for(call_ended.wait(), 20)
    finally:
        await bot_server.stop()
        if server is not None:
            await server.close()
    summary = summarize(timeline)
    if printer is not None:
        printer.summary(summary)
    report: Path | None = None
    folder = options.report_folder
    if folder is None and options.report_dir is not None:
        folder = new_report_folder(options.report_dir)
    if folder is not None:
        report = write_report(folder, timeline, summary, {
            "started_at": dt.datetime.now().isoformat(timespec="seconds"),
            "services": services, "fixture": script.name,
            "speed": options.speed, "reson8_url": redact_url(url) if options.url else "embedded",
            "caller": {"call_sid": caller.call_sid, "stream_sid": caller.stream_sid,
                       "ended_by": caller.ended_by}})
    return DemoResult(timeline, summary, report, caller, services, list(app.state.sessions))
