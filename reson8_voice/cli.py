"""The ``reson8-voice`` command: ``serve`` (the embedded server), ``demo``, ``transcribe``.

Exit codes: 0 success, 1 runtime failure, 2 bad usage (argparse), 3 refused configuration
(e.g. a public bind without an API key), 4 connection or authentication failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .auth import Secret
from .errors import ConnectionClosed, HandshakeError, InvalidRequest, Reson8Error, Unauthorized
from .eventloop import EVENT_LOOPS, freeze_startup_objects, resolve_event_loop, run

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_REFUSED, EXIT_CONNECTION = 0, 1, 2, 3, 4


def _err(message: str) -> None:
    print(f"reson8-voice: error: {message}", file=sys.stderr)


def _add_key_options(p: argparse.ArgumentParser, help: str) -> None:
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--api-key", default=None,
                      help=f"{help}; other users can read it in the process list: prefer "
                      "--api-key-file or the variable")
    keys.add_argument("--api-key-file", type=Path, default=None, metavar="PATH",
                      help="read the API key from this file (its first line)")


def _resolve_key_file(args: argparse.Namespace) -> str | None:
    """Put the key of ``--api-key-file`` into ``args.api_key``; returns an error, if any.
    Warns when the key was given on the command line itself."""
    path: Path | None = getattr(args, "api_key_file", None)
    if path is None:
        if getattr(args, "api_key", None):
            print("reson8-voice: warning: --api-key is visible to other users in the process "
                  "list; use --api-key-file or RESON8_API_KEY", file=sys.stderr)
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return f"--api-key-file: cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
    key = lines[0].strip() if lines else ""
    if not key:
        return f"--api-key-file: {path} is empty"
    args.api_key = key
    return None


def _add_loop_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loop", choices=EVENT_LOOPS, default="auto",
                   help="event loop (default auto: uvloop when installed, else asyncio)")


def _whole_number(low: int, high: int | None = None,
                  noun: str = "a whole number") -> Callable[[str], int]:
    """argparse type: an int within ``low..high`` (no upper bound when ``high`` is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"within {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


_port = _whole_number(0, 65535, "a port number")
_positive_int = _whole_number(1)


def _positive_float(text: str) -> float:
    """argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the embedded Reson8-compatible server",
                       description="Serve the turns and realtime endpoints from the local "
                       "engine (webrtcvad + smart-turn v3 + Whisper tiny.en), offline.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8765,
                   help="port (default 8765; 0 picks a free one and prints it)")
    _add_key_options(p, "require this API key (default: $RESON8_API_KEY; required off "
                     "loopback)")
    p.add_argument("--asr-model", default=None, metavar="PATH",
                   help="a CTranslate2 Whisper model directory (default: the bundled tiny.en)")
    p.add_argument("--workers", type=_positive_int, default=2,
                   help="recognitions run in parallel: inference threads and Whisper "
                   "replicas (default 2; about one per core)")
    p.add_argument("--max-session-s", type=_positive_float, default=3600.0,
                   help="longest session in seconds (default 3600)")
    _add_loop_option(p)


def _running_loop_name() -> str:
    """``asyncio`` or ``uvloop``: the loop actually running (what the log line reports)."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


async def _serve(args: argparse.Namespace) -> int:
    key = args.api_key or os.environ.get("RESON8_API_KEY") or None
    from .server.app import Reson8Server, ServerConfig

    try:  # the configuration is checked before the models take their ~10 s to load
        config = ServerConfig(host=args.host, port=args.port,
                              api_key=Secret(key) if key else None, workers=args.workers,
                              max_session_s=args.max_session_s)
    except InvalidRequest as exc:
        if exc.parameter == "host":
            _err(f"refusing to serve on {args.host} without an API key: pass --api-key-file or "
                 "set RESON8_API_KEY (or bind 127.0.0.1)")
        else:
            _err(f"--{exc.parameter.replace('_', '-')}: {exc}")
        return EXIT_REFUSED
    from .engine.models import LocalModels

    models = await asyncio.to_thread(LocalModels.load, args.asr_model, workers=args.workers)
    server = Reson8Server(config, models.run)
    await server.start()
    from loguru import logger

    frozen = freeze_startup_objects()  # a full collection over the models stalls every session
    logger.info(f"{frozen} startup objects frozen out of the garbage collector")
    print(f"reson8-voice: serving {server.url}/v1/speech-to-text/turns and /realtime"
          f"{' (API key required)' if key else ''} on {_running_loop_name()}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    return EXIT_OK


def _demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="a simulated phone call through the Twilio bot, with a timeline report",
        description="Run a simulated Twilio call (committed speech with pauses, a "
        "hesitation and a barge-in) through agents/twilio_bot on loopback, print the turn "
        "timeline live, a summary table, and write reports/<time>/ (events.json, "
        "timeline.html). Offline by default: embedded server with the local models, a "
        "scripted reply agent (OPENAI_API_KEY switches to OpenAI) and eSpeak NG "
        "(CARTESIA_API_KEY switches to Cartesia).")
    p.add_argument("--url", default=None,
                   help="turns server to use instead of the embedded one (default: "
                   "$RESON8_URL; with an API key and no URL: the hosted service)")
    _add_key_options(p, "Reson8 API key (default: $RESON8_API_KEY); selects the hosted service")
    p.add_argument("--fixture", default="demo_call",
                   help="caller audio from tests/fixtures (default demo_call)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="caller pace as a multiple of real time (default 1)")
    p.add_argument("--report-dir", type=Path, default=Path("reports"),
                   help="where the report folder goes (default ./reports)")
    p.add_argument("--no-report", action="store_true", help="write no report folder")
    p.add_argument("--eager", action="store_true",
                   help="answer turn_end_candidate speculatively (eager end of turn)")
    p.add_argument("--no-greeting", action="store_true", help="the bot does not greet")
    p.add_argument("--dtmf", default=None, metavar="DIGITS",
                   help="the caller also presses these keys at the end (e.g. 42#)")
    p.add_argument("--asr-model", default=None, metavar="PATH",
                   help="a CTranslate2 Whisper model directory for the embedded server")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also print marks and library logs")
    _add_loop_option(p)


def _transcribe_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "transcribe", help="stream an audio file to a turns or realtime endpoint",
        description="Stream a WAV (16-bit PCM, A-law, mu-law) or raw G.711/PCM file to a "
        "Reson8 turns or realtime endpoint and print its turns (or transcripts).")
    p.add_argument("file", type=Path, help="the audio file (.wav, .ulaw, .alaw, .pcm, ...)")
    p.add_argument("--url", default=None,
                   help="server URL (default: $RESON8_URL, else the hosted service with an "
                   "API key, else an embedded server started here with the local models)")
    _add_key_options(p, "Reson8 API key (default: $RESON8_API_KEY)")
    p.add_argument("--endpoint", choices=("turns", "realtime"), default="turns",
                   help="which endpoint (default turns)")
    p.add_argument("--encoding", choices=("mulaw", "alaw", "pcm_s16le"), default=None,
                   help="encoding of a raw (headerless) file; default from its extension")
    p.add_argument("--sample-rate", type=int, default=None,
                   help="sample rate of a raw file (default 8000 for G.711, else 16000)")
    p.add_argument("--channels", type=int, default=None, help="channels of a raw file")
    p.add_argument("--language", default=None, help="language code, e.g. en")
    p.add_argument("--speed", type=float, default=0.0,
                   help="pace as a multiple of real time (default 0: as fast as the server "
                   "takes it)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--events", action="store_true",
                   help="print every event (turn_start, candidates, ...) too")
    progress = p.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="always draw the progress bar (on stderr)")
    progress.add_argument("--no-progress", dest="progress", action="store_false",
                          help="never draw it (default: on a terminal, for files over 15 s)")
    _add_loop_option(p)


def _configure_logging(verbose: bool, log_file: Path | None = None,
                       quiet_level: str = "ERROR") -> None:
    from loguru import logger

    logger.remove()
    # diagnose=False: loguru would print every frame's local values in a traceback (the
    # parsed arguments with --api-key, a request's headers)
    logger.add(sys.stderr, level="DEBUG" if verbose else quiet_level, diagnose=False)
    if log_file is not None:
        logger.add(log_file, level="DEBUG", diagnose=False)


async def _demo(args: argparse.Namespace) -> int:
    try:
        from .demo.runner import DemoOptions, find_repo_root, run_demo
        from .demo.script import find_fixtures_dir
        from .demo.timeline import TerminalPrinter

        find_repo_root()
        find_fixtures_dir()
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except FileNotFoundError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except ImportError as exc:
        _err(f"the demo needs the agents extra ({exc.name or exc}): "
             "pip install -e '.[local,agents]' (or run make demo)")
        return EXIT_FAILURE
    url = args.url or os.environ.get("RESON8_URL") or None
    key = args.api_key or os.environ.get("RESON8_API_KEY") or None
    if key and not url:
        from .params import HOSTED_URL

        url = HOSTED_URL
    folder: Path | None = None
    if not args.no_report:
        from .demo.runner import new_report_folder

        folder = new_report_folder(args.report_dir)
    _configure_logging(args.verbose, folder / "bot.log" if folder else None)
    printer = TerminalPrinter(verbose=args.verbose)
    options = DemoOptions(url=url, api_key=key, fixture=args.fixture, speed=args.speed,
                          report_dir=args.report_dir, report_folder=folder,
                          greeting=not args.no_greeting, dtmf=args.dtmf, eager=args.eager,
                          asr_model=args.asr_model, verbose=args.verbose)
    try:
        result = await run_demo(options, printer)
    except KeyError:
        _err(f"no fixture {args.fixture!r} in tests/fixtures/manifest.json")
        return EXIT_USAGE
    except ImportError as exc:
        _err(f"missing dependency ({exc}): pip install -e '.[local,agents]'")
        return EXIT_FAILURE
    if result.report is not None:
        printer.line()
        printer.line(f"report: {result.report}  (raw events: "
                     f"{result.report.parent / 'events.json'})")
    spoken = [t for t in result.summary.turns if not t.dtmf]
    if spoken and result.summary.detected == 0:
        _err("the bot detected no turn: is the turns server working? (see bot.log)")
        return EXIT_FAILURE
    return EXIT_OK


async def _start_embedded() -> Any:
    from .engine.models import LocalModels
    from .server.app import Reson8Server, ServerConfig

    config = ServerConfig(port=0)
    models = await asyncio.to_thread(LocalModels.load, workers=config.workers)
    server = Reson8Server(config, models.run)
    await server.start()
    return server


async def _transcribe(args: argparse.Namespace) -> int:
    from .demo.transcribe import (
        TranscribeOptions,
        UnreadableAudio,
        read_audio_file,
        transcribe_file,
    )

    try:
        audio = read_audio_file(args.file, args.encoding, args.sample_rate, args.channels)
    except UnreadableAudio as exc:
        _err(str(exc))
        return EXIT_USAGE
    url = args.url or os.environ.get("RESON8_URL") or None
    key = args.api_key or os.environ.get("RESON8_API_KEY") or None
    server = None
    if url is None:
        if key:
            from .params import HOSTED_URL

            url = HOSTED_URL
        else:
            print("reson8-voice: no --url: starting the embedded server with the local "
                  "models", file=sys.stderr)
            server = await _start_embedded()
            url = server.url
    options = TranscribeOptions(url=url, endpoint=args.endpoint, api_key=key,
                                language=args.language, speed=args.speed,
                                json_output=args.json, events=args.events,
                                progress=args.progress)
    try:
        count = await transcribe_file(audio, options)
    finally:
        if server is not None:
            await server.close()
    if count == 0:
        print(f"reson8-voice: no speech found in {args.file.name}", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``reson8-voice`` command."""
    parser = argparse.ArgumentParser(
        prog="reson8-voice", description="Turn-taking for pipecat voice agents.",
        epilog="exit codes: 0 ok, 1 failure, 2 bad usage or input, 3 refused configuration, "
        "4 connection or authentication failure")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _demo_parser(sub)
    _transcribe_parser(sub)
    return parser


_COMMANDS = {"serve": _serve, "demo": _demo, "transcribe": _transcribe}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    if (problem := _resolve_key_file(args)) is not None:
        _err(problem)
        return EXIT_USAGE
    if args.command != "demo":  # the demo logs to its report folder
        _configure_logging(False, quiet_level="INFO" if args.command == "serve" else "ERROR")
    try:
        loop = resolve_event_loop(args.loop)  # before the coroutine exists
        return run(_COMMANDS[args.command](args), loop)
    except KeyboardInterrupt:
        return EXIT_OK
    except Unauthorized as exc:
        _err(f"{exc} (check the API key)")
        return EXIT_CONNECTION
    except (HandshakeError, ConnectionClosed) as exc:
        _err(str(exc))
        return EXIT_CONNECTION
    except Reson8Error as exc:
        _err(str(exc))
        return EXIT_FAILURE
    except ImportError as exc:
        _err(f"missing dependency: {exc} (pip install -e '.[local,agents]')")
        return EXIT_FAILURE
    except OSError as exc:
        _err(f"{exc.__class__.__name__}: {exc}")
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
