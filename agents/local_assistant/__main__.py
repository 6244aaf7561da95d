"""``python -m agents.local_assistant``: talk to the assistant (or play it a file).

With no ``--url`` and no ``RESON8_URL``/``RESON8_API_KEY``, an embedded turns server with
the local models is started in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from reson8_voice.eventloop import EVENT_LOOPS, run

from .assistant import (
    AssistantConfig,
    build_assistant,
    file_transport,
    local_audio_transport,
    run_assistant,
)


async def main(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("RESON8_URL") or None
    key = os.environ.get("RESON8_API_KEY") or None
    server = None
    if url is None and key is None:
        from reson8_voice.engine.models import LocalModels
        from reson8_voice.server import Reson8Server, ServerConfig

        print("starting the embedded turns server (local models)...", file=sys.stderr)
        models = await asyncio.to_thread(LocalModels.load)
        server = Reson8Server(ServerConfig(port=0), models.run)
        await server.start()
        url = server.url
    config = AssistantConfig(reson8_url=url, reson8_api_key=key,
                             openai_api_key=os.environ.get("OPENAI_API_KEY") or None,
                             cartesia_api_key=os.environ.get("CARTESIA_API_KEY") or None,
                             enable_eager_end_of_turn=args.eager)
    try:
        if args.file:
            transport = file_transport(args.file, out_path=args.out, speed=args.speed)
        else:
            transport = local_audio_transport()
    except ImportError as exc:
        print(f"local_assistant: error: {exc}", file=sys.stderr)
        return 1
    try:
        assistant = build_assistant(transport, config)
        print("speak now (Ctrl-C to stop)" if not args.file else f"playing {args.file}",
              file=sys.stderr)
        await run_assistant(assistant)
    finally:
        if server is not None:
            await server.close()
    if args.out:
        print(f"bot audio written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m agents.local_assistant",
                                     description="A local voice assistant with Reson8 "
                                     "turn-taking.")
    parser.add_argument("--file", type=Path, default=None,
                        help="play this WAV/.ulaw file as the microphone (no sound card)")
    parser.add_argument("--out", type=Path, default=None,
                        help="with --file: write the bot's audio to this WAV")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="with --file: play it this many times faster")
    parser.add_argument("--url", default=None, help="turns server (default: embedded)")
    parser.add_argument("--eager", action="store_true", help="eager end of turn")
    parser.add_argument("--loop", choices=EVENT_LOOPS, default="auto",
                        help="event loop (default auto: uvloop when installed)")
    try:
        cli_args = parser.parse_args()
        sys.exit(run(main(cli_args), cli_args.loop))
    except KeyboardInterrupt:
        sys.exit(0)
