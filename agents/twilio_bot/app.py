"""The Twilio phone bot as a FastAPI app: TwiML webhook + media-stream WebSocket.

Run it::

    reson8-voice serve &                       # the embedded turns server (or set RESON8_API_KEY)
    uvicorn agents.twilio_bot.app:app --port 8000
    # point your Twilio number's "A call comes in" webhook at https://<public host>/twiml

Endpoints:

- ``GET|POST /twiml`` (also ``/``): TwiML that connects the call to ``wss://<host>/ws``
  (``<Connect><Stream>``). With ``TWILIO_AUTH_TOKEN`` set, Twilio's ``X-Twilio-Signature``
  is checked and the stream gets a per-call token that ``/ws`` verifies.
- ``WS /ws``: one call: reads Twilio's ``connected``/``start`` messages, then runs the
  pipeline of :mod:`agents.twilio_bot.bot` until either side hangs up.
- ``GET /health``: liveness and the services in use.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import quoteattr

from fastapi import FastAPI, Request, Response, WebSocket, WebSocketDisconnect
from loguru import logger
from pipecat.runner.types import CallData

from reson8_voice.eventloop import freeze_startup_objects

from .bot import BotConfig, CallSession, Observer, run_call

__all__ = ["app", "create_app", "twilio_signature"]


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's request signature: base64(HMAC-SHA1(token, url + sorted key+value pairs))."""
    payload = url + "".join(k + params[k] for k in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _stream_token(auth_token: str, call_sid: str) -> str:
    return hmac.new(auth_token.encode(), f"stream:{call_sid}".encode(),
                    hashlib.sha256).hexdigest()[:32]


async def read_twilio_start(websocket: WebSocket, max_messages: int = 3) -> CallData | None:
    """Twilio's ``start`` message (after its ``connected``), as pipecat's call data.

    Read here rather than by pipecat's ``parse_telephony_websocket``, which logs both
    messages whole (TRACE) and the parsed data (DEBUG): ``start`` carries the stream's
    token in its ``customParameters``. None if no ``start`` comes within ``max_messages``.
    """
    for _ in range(max_messages):
        try:
            message = json.loads(await websocket.receive_text())
        except (ValueError, RecursionError):
            continue
        if isinstance(message, dict) and message.get("event") == "start":
            start = message.get("start")
            start = start if isinstance(start, dict) else {}
            body = start.get("customParameters")
            body = dict(body) if isinstance(body, dict) else {}
            return CallData.model_validate({
                "stream_id": start.get("streamSid") or message.get("streamSid"),
                "call_id": start.get("callSid"), "body": body,
                "from": body.get("from_number"), "to": body.get("to_number")})
    return None


def _ws_url(config: BotConfig, request: Request) -> str:
    if config.public_url:
        parts = urlsplit(config.public_url)
        scheme = "ws" if parts.scheme in ("http", "ws") else "wss"
        return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/ws"
    proto = request.headers.get("x-forwarded-proto", request.url.scheme)
    host = request.headers.get("x-forwarded-host") or request.headers.get("host") or "localhost"
    scheme = "wss" if proto in ("https", "wss") else "ws"
    return f"{scheme}://{host}/ws"


def create_app(config: BotConfig | None = None, *, observer: Observer | None = None,
               recent_calls: int = 16, freeze_gc: bool = True) -> FastAPI:
    """Build the app. ``observer(kind, data)`` receives every call event (the demo uses it).

    ``app.state.sessions`` keeps the last ``recent_calls`` finished :class:`CallSession`
    objects, newest last (their pipelines released; each keeps its LLM context, so the
    conversation, until it is pushed out): a bot that runs for weeks holds no more.

    ``freeze_gc``: at startup, move everything loaded so far (modules, models) out of the
    garbage collector's reach (``gc.freeze()``). A full collection over it stalls every
    call in the process for tens of milliseconds (about 65 ms measured with this app loaded);
    after the freeze it walks only what the calls allocate.
    """
    cfg = config or BotConfig.from_env()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if freeze_gc:
            freeze_startup_objects()
        yield

    app = FastAPI(title="reson8-voice Twilio bot", docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    app.state.config = cfg
    app.state.sessions = deque(maxlen=recent_calls)
    app.state.active_calls = 0
    app.state.finished_calls = 0

    async def twiml(request: Request) -> Response:
        params: dict[str, str] = {}
        if request.method == "POST":  # Twilio posts application/x-www-form-urlencoded
            params = dict(parse_qsl((await request.body()).decode("utf-8", "replace"),
                                    keep_blank_values=True))
        if cfg.twilio_auth_token:
            url = (cfg.public_url.rstrip("/") + request.url.path) if cfg.public_url \
                else str(request.url)
            expected = twilio_signature(cfg.twilio_auth_token, url, params)
            given = request.headers.get("x-twilio-signature", "")
            if not hmac.compare_digest(expected, given):
                logger.warning("twiml: rejected a request with a bad X-Twilio-Signature")
                return Response("invalid signature", status_code=403)
        call_sid = params.get("CallSid", "")
        extra = {"from_number": params.get("From", ""), "to_number": params.get("To", "")}
        if cfg.twilio_auth_token and call_sid:
            extra["token"] = _stream_token(cfg.twilio_auth_token, call_sid)
        parameters = "".join(f"<Parameter name={quoteattr(k)} value={quoteattr(v)}/>"
                             for k, v in extra.items() if v)
        xml = ('<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
               f"<Stream url={quoteattr(_ws_url(cfg, request))}>{parameters}</Stream>"
               "</Connect></Response>")
        return Response(xml, media_type="application/xml")

    app.add_api_route("/twiml", twiml, methods=["GET", "POST"])
    app.add_api_route("/", twiml, methods=["GET", "POST"], include_in_schema=False)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "active_calls": app.state.active_calls,
                "calls": app.state.finished_calls, "services": cfg.describe()}

    @app.websocket("/ws")
    async def media_stream(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            call_data = await read_twilio_start(websocket)
        except WebSocketDisconnect:
            logger.warning("media stream closed before Twilio's start message")
            return
        if call_data is None or not call_data.get("stream_id"):
            logger.warning("not a Twilio media stream (no start message); closing")
            await websocket.close(code=1008)
            return
        token = call_data.body.pop("token", "")  # checked here, then forgotten
        if cfg.twilio_auth_token:
            expected = _stream_token(cfg.twilio_auth_token, str(call_data.get("call_id")))
            if not hmac.compare_digest(str(token), expected):
                logger.warning("media stream without a valid token; closing")
                await websocket.close(code=1008)
                return
        app.state.active_calls += 1
        try:
            session: CallSession = await run_call(websocket, call_data, cfg, observer)
            app.state.sessions.append(session)
        finally:
            app.state.active_calls -= 1
            app.state.finished_calls += 1

    return app


app = create_app()
