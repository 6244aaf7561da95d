"""The embedded Reson8-compatible server: the local engine behind the documented endpoints.

It serves ``/v1/speech-to-text/turns`` (spec 001) and ``/v1/speech-to-text/realtime``
(spec 000) with their query parameters, the three auth schemes and the error table:
rejections happen at the upgrade with a JSON body ``{"code", "message"}`` (400
INVALID_REQUEST naming the parameter, 401 UNAUTHORIZED, 500 INTERNAL_ERROR, 404 for other
paths). Inside a session, a fatal problem (a message over the size limit, a session over
its time limit, undecodable audio) is reported with an ``error`` message and a close. A
message over ``max_message_bytes`` (its bytes, text or binary) is refused from its frame
header, unread, with the endpoint's JSON error and close 1009 (:mod:`.connection`).

Each session reads a message, feeds the engine and runs the jobs it asks for in a thread
pool shared by all sessions, before it reads the next message: audio sent faster than the
engine can take it waits in the socket (back-pressure), and the events are the same as in
real time. Messages queue at most ``_MAX_QUEUE`` deep before reading stops, so a fast
client is held back by TCP. Pings are sent every ``ping_interval`` s; a client whose pong
does not come within ``ping_timeout`` is dropped unless its session is still making
progress (its pong may wait behind the audio the session has not read yet: see
:mod:`.connection`), and a vanished client frees its session at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit
from weakref import WeakKeyDictionary

from loguru import logger
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.exceptions import ConnectionClosedOK
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from ..auth import Secret, is_http_token, parse_auth, redact, redact_request, websocket_logger
from ..client import is_loopback
from ..engine.asr import check_language
from ..engine.turn_engine import (
    EndOfTurnJob,
    EngineConfig,
    Job,
    RecognizeJob,
    TranscriptEngine,
    TurnEngine,
)
from ..errors import InvalidRequest, RemoteProtocolError
from ..events import ErrorEvent, Event, FlushConfirmation, FlushRequest
from ..params import REALTIME_PATH, TURNS_PATH, RealtimeParams, TurnsParams
from ..wire import parse_event, serialize_event
from .audio_input import AudioInput, UnsupportedAudio
from .connection import SessionConnection, complain, complaints_summary
from .gateway_endpoint import GatewayEndpoint, GatewaySession
from .scribe_endpoint import SCRIBE_PREFIX, ScribeEndpoint, ScribeSession

__all__ = ["Reson8Server", "ServerConfig"]

JobRunner = Callable[[Job], Any]

#: messages (frames) websockets queues before it stops reading the socket; resumes at 1.
#: Its default, 16, held up to 16 x 4 MiB per session and, worse, up to 16 messages of
#: the client's audio ahead of its pong
_MAX_QUEUE = 4

#: the connection whose session runs in this task (inference marks its progress)
_session_connection: ContextVar[SessionConnection | None] = ContextVar(
    "reson8_session_connection", default=None)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Settings of the embedded server, checked when built.

    Raises:
        InvalidRequest: naming the setting: ``host`` off loopback without ``api_key`` (a
            public bind needs a key), ``port`` outside 0..65535, ``workers`` below 1, a
            limit or interval that is not positive.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    api_key: Secret | None = None
    #: the largest message (text or binary, in bytes); a larger one gets the endpoint's
    #: error and close 1009, refused from its frame header
    max_message_bytes: int = 1 << 20
    max_session_s: float = 3600.0
    ping_interval: float | None = 20.0
    #: a client is dropped when its pong is this late and its session made no progress
    #: in that time either (a pong may wait behind the client's unread audio)
    ping_timeout: float | None = 20.0
    #: inference threads shared by all sessions (and Whisper replicas when the server
    #: loads the models itself; pass the same to ``LocalModels.load(workers=...)``)
    workers: int = 2
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        if self.api_key is None and not is_loopback(self.host):
            raise InvalidRequest("host", f"refusing to serve on {self.host} without an API "
                                 "key: set ServerConfig.api_key (or bind 127.0.0.1)")
        if isinstance(self.port, bool) or not isinstance(self.port, int) \
                or not 0 <= self.port <= 65535:
            raise InvalidRequest("port", f"must be within 0..65535, got {self.port!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) \
                or self.workers < 1:
            raise InvalidRequest("workers", f"must be a whole number >= 1, got {self.workers!r}")
        if self.max_message_bytes < 1:
            raise InvalidRequest("max_message_bytes", "must be positive")
        for name in ("max_session_s", "ping_interval", "ping_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InvalidRequest(name, f"must be positive, got {value!r}")


def _languages_of(run_job: JobRunner | None) -> frozenset[str] | None:
    """The ``languages`` of a job runner, or of the object a bound-method runner is of."""
    for owner in (run_job, getattr(run_job, "__self__", None)):
        languages = getattr(owner, "languages", None)
        if languages is not None:
            return frozenset(languages)
    return None


def _message_type(text: str) -> object:
    """The ``type`` of a JSON text message, or None."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # "[" * 200000 exhausts the decoder's recursion
        return None
    return obj.get("type") if isinstance(obj, dict) else None


#: HTML-significant characters, escaped in error bodies (JSON allows ``\u003c``): a
#: rejected value is quoted back to the client, never as markup a browser would run
_HTML_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def _json_response(status: HTTPStatus, code: str, message: str, **extra: str) -> Response:
    text = json.dumps({"code": code, "message": message, **extra})
    body = text.translate(_HTML_ESCAPES).encode()
    headers = Headers([("Content-Type", "application/json"),
                       ("Content-Length", str(len(body))), ("Connection", "close")])
    return Response(status.value, status.phrase, headers, body)


class Reson8Server:
    """An embedded Reson8-compatible server on loopback (or anywhere, with an API key).

    ``run_job`` runs one engine job (recognition or end-of-turn judgement); by default the
    local models of the ``local`` extra are loaded on :meth:`start`.

    ``languages``: the codes the recogniser transcribes; a ``language`` (or a dialect's
    language setting) outside them is refused when the session opens (400 naming
    ``language`` at the upgrade), never mid-session. By default they come from the
    recogniser: ``run_job``'s ``languages`` attribute, or its owner's for a bound method
    such as ``LocalModels.run``; ``None`` (a bare function) accepts any well-formed code.
    """

    def __init__(self, config: ServerConfig | None = None,
                 run_job: JobRunner | None = None, *,
                 languages: frozenset[str] | None = None) -> None:
        """Create a server; nothing is bound until :meth:`start`."""
        self.config = config or ServerConfig()
        self._run_job = run_job
        self.languages = languages if languages is not None else _languages_of(run_job)
        self._server: Server | None = None
        self._pool: ThreadPoolExecutor | None = None
        #: what the upgrade decided, per connection (weakly held: a handshake that fails
        #: after process_request never reaches _handle, and its entry must go with it; an
        #: id() key was reused by later connections, which then ran a stale session)
        self._params: WeakKeyDictionary[ServerConnection, TurnsParams | RealtimeParams] = (
            WeakKeyDictionary())
        #: the other dialects of the spec folder (spec 002 and 004), on the same engine
        self.gateway = GatewayEndpoint(self.config, self._infer, self._check_language)
        self.scribe = ScribeEndpoint(self.config, self._infer, self._check_language)
        self._dialect_sessions: WeakKeyDictionary[
            ServerConnection, GatewaySession | ScribeSession] = WeakKeyDictionary()
        self.sessions_active = 0
        self.sessions_total = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __repr__(self) -> str:
        return f"<Reson8Server {self.url if self._server else 'stopped'}>"

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("server not started")
        sock = next(iter(self._server.sockets))
        return int(sock.getsockname()[1])

    @property
    def url(self) -> str:
        """``ws://host:port`` of the running server."""
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"ws://{host}:{self.port}"

    @property
    def gateway_url(self) -> str:
        """The gateway endpoint (spec 002) of the running server."""
        return self.url + self.gateway.path

    @property
    def scribe_url(self) -> str:
        """The base URL of the Scribe endpoint (spec 004): pass it to the Scribe client."""
        return self.url + SCRIBE_PREFIX

    async def start(self) -> None:
        """Load the models (if none were given) and start listening."""
        if self._run_job is None:
            from ..engine.models import LocalModels

            models = await asyncio.to_thread(LocalModels.load, workers=self.config.workers)
            self._run_job = models.run
            if self.languages is None:
                self.languages = models.languages
        self._pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="reson8-infer")
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            max_size=self.config.max_message_bytes,
            max_queue=_MAX_QUEUE,
            create_connection=SessionConnection,
            ping_interval=self.config.ping_interval,
            ping_timeout=self.config.ping_timeout,
            close_timeout=1.0,
            compression=None,
            logger=websocket_logger("server"),
        )
        logger.info(f"reson8 embedded server listening on {self.url}")

    async def close(self) -> None:
        """Stop accepting, close every session and wait for them."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def wait_idle(self) -> None:
        """Return once no session is open (every session's resources are released)."""
        await self._idle.wait()

    async def serve_forever(self) -> None:
        """Run until cancelled."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> Reson8Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the upgrade ---------------------------------------------------------------------
    def _select_subprotocol(
        self, connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        # echo the client's own spelling: RFC 6455 (4.2.2) lets the server select only a
        # subprotocol the client offered, and a browser fails the connection otherwise
        return offered[0] if offered and offered[0].lower() == "bearer" else None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            parts = urlsplit(request.path)
            params_cls: type[TurnsParams] | type[RealtimeParams]
            path = parts.path.rstrip("/")
            offered = [p.strip() for p in
                       ",".join(request.headers.get_all("Sec-WebSocket-Protocol")).split(",")
                       if p.strip()]
            if not all(map(is_http_token, offered)):
                # websockets would refuse it too, quoting the header (a bearer token) in its
                # reply and its debug log: refuse it here, without quoting it
                return _json_response(HTTPStatus.BAD_REQUEST, "INVALID_REQUEST",
                                      "Sec-WebSocket-Protocol: each subprotocol must be an "
                                      "RFC 7230 token (send a token with '/' or '=' in the "
                                      "Authorization header)", parameter="Sec-WebSocket-Protocol")
            if path in (self.gateway.path, self.scribe.path):
                # these dialects report auth and parameter errors inside the session
                endpoint = self.gateway if path == self.gateway.path else self.scribe
                self._dialect_sessions[connection] = endpoint.session_for(request)
                if isinstance(connection, SessionConnection):
                    connection.too_large = endpoint.too_large_message()
                return None
            if parts.path.rstrip("/") == TURNS_PATH:
                params_cls = TurnsParams
            elif parts.path.rstrip("/") == REALTIME_PATH:
                params_cls = RealtimeParams
            else:
                return _json_response(HTTPStatus.NOT_FOUND, "NOT_FOUND", "unknown endpoint")
            if self.config.api_key is not None:
                credentials = parse_auth(request.headers, offered)
                if credentials is None or not self.config.api_key.matches(credentials.secret):
                    return _json_response(HTTPStatus.UNAUTHORIZED, "UNAUTHORIZED",
                                          "invalid or expired credentials")
            try:
                params = params_cls.from_query(parts.query)
                self._check_language(params.language)
            except InvalidRequest as exc:
                return _json_response(HTTPStatus.BAD_REQUEST, "INVALID_REQUEST", str(exc),
                                      parameter=exc.parameter)
            self._params[connection] = params
            if isinstance(connection, SessionConnection):
                limit = self.config.max_message_bytes
                connection.too_large = serialize_event(ErrorEvent(
                    "MESSAGE_TOO_LARGE", f"messages are limited to {limit} bytes"))
            return None
        except Exception as exc:
            self._log_failure("unexpected failure during the upgrade", exc, request)
            return _json_response(HTTPStatus.INTERNAL_SERVER_ERROR, "INTERNAL_ERROR",
                                  "unexpected server error")

    def _log_failure(self, what: str, exc: BaseException, request: Request | None) -> None:
        """Log an unexpected failure with its traceback but without frame variables (a sink
        with loguru's ``diagnose=True`` prints them, and they hold the request and its
        credentials), masking every credential of the request and the server's key."""
        text = "".join(traceback.format_exception(exc))
        if request is not None:
            text = redact_request(text, request.path, request.headers.raw_items())
        logger.error(f"reson8 server: {what}: {redact(text, self.config.api_key)}")

    def _check_language(self, language: str | None) -> None:
        """Refuse a language the recogniser cannot do (``InvalidRequest`` naming it)."""
        if language is not None and self.languages is not None:
            check_language(language, self.languages)

    # -- a session -----------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        dialect = self._dialect_sessions.pop(ws, None)
        if dialect is not None:
            await self._handle_dialect(ws, dialect)
            return
        params = self._params.pop(ws, None)
        if params is None:  # pragma: no cover - process_request always stores them
            await ws.close(1011, "no parameters")
            return
        self.sessions_active += 1
        self.sessions_total += 1
        self._idle.clear()
        started = time.monotonic()
        if isinstance(ws, SessionConnection):
            _session_connection.set(ws)  # this task's: inference marks the session's progress
        try:
            async with asyncio.timeout(self.config.max_session_s):
                await self._session(ws, params)
        except TimeoutError:
            await self._fail(ws, "SESSION_TIME_LIMIT",
                             f"session exceeded {self.config.max_session_s:g} s", 1008)
        except WsConnectionClosed:
            pass  # the client vanished: its session is simply dropped
        except Exception as exc:
            self._log_failure("session failed", exc, ws.request)
            await self._fail(ws, "INTERNAL_ERROR", "unexpected server error", 1011)
        finally:
            self.sessions_active -= 1
            if not self.sessions_active:
                self._idle.set()
            complaints_summary(ws, "reson8 server")
            logger.debug(f"reson8 session ended after {time.monotonic() - started:.1f} s")

    async def _handle_dialect(self, ws: ServerConnection,
                              session: GatewaySession | ScribeSession) -> None:
        self.sessions_active += 1
        self.sessions_total += 1
        self._idle.clear()
        if isinstance(ws, SessionConnection):
            _session_connection.set(ws)
        try:
            async with asyncio.timeout(self.config.max_session_s):
                await session.run(ws)
        except TimeoutError:
            await session.fail(ws, "time_limit",
                               f"session exceeded {self.config.max_session_s:g} s")
        except WsConnectionClosed:
            pass
        except Exception as exc:
            self._log_failure("dialect session failed", exc, ws.request)
            await session.fail(ws, "internal", "unexpected server error")
        finally:
            self.sessions_active -= 1
            if not self.sessions_active:
                self._idle.set()
            complaints_summary(ws, "dialect session")

    async def _infer(self, job: Job) -> Any:
        """Run one engine job in the shared inference pool (progress for the keep-alive)."""
        assert self._run_job is not None and self._pool is not None
        result = await asyncio.get_running_loop().run_in_executor(self._pool, self._run_job, job)
        connection = _session_connection.get()
        if connection is not None:
            connection.note_progress()
        return result

    async def _fail(self, ws: ServerConnection, code: str, message: str, close: int) -> None:
        with contextlib.suppress(WsConnectionClosed):
            await ws.send(serialize_event(ErrorEvent(code, message)))
            await ws.close(close, message[:120])

    def _engine(self, params: TurnsParams | RealtimeParams, rate: int) -> TurnEngine | \
            TranscriptEngine:
        if isinstance(params, TurnsParams):
            return TurnEngine(self.config.engine, sample_rate=rate, language=params.language,
                              include_words=params.include_words,
                              include_timestamps=params.include_timestamps,
                              include_language=params.include_language)
        return TranscriptEngine(self.config.engine, sample_rate=rate, language=params.language,
                                include_interim=params.include_interim,
                                include_words=params.include_words,
                                include_timestamps=params.include_timestamps,
                                include_confidence=params.include_confidence)

    async def _session(self, ws: ServerConnection, params: TurnsParams | RealtimeParams) -> None:
        audio = AudioInput(params.encoding, params.sample_rate, params.channels,
                           params.raw_encodings())
        try:
            await self._session_audio(ws, params, audio)
        finally:
            audio.close()  # stops a container decoder's thread

    async def _session_audio(self, ws: ServerConnection, params: TurnsParams | RealtimeParams,
                             audio: AudioInput) -> None:
        engine: TurnEngine | TranscriptEngine | None = None
        if params.encoding != "auto":
            engine = self._engine(params, audio.output_rate)
        #: the container said the stream is complete (a WAV's data size, a FLAC's sample
        #: count): the engine has had all of it and its end, and has said all it will
        ended = False

        def take(pcm: bytes) -> None:
            nonlocal engine
            if pcm:
                if engine is None:
                    engine = self._engine(params, audio.output_rate)
                engine.feed(pcm)

        while True:
            message: str | bytes
            try:
                if audio.decoding_in_background:
                    # a container decoder delivers audio between messages too: poll it
                    message = await asyncio.wait_for(ws.recv(), 0.05)
                else:
                    message = await ws.recv()
            except TimeoutError:
                message = b""
            except ConnectionClosedOK:
                return
            if isinstance(message, bytes):
                if ended:
                    continue  # after the end (a WAV's trailing chunks): nothing to hear
                try:
                    take(audio.feed(message))
                    if audio.ended:
                        ended = True
                        take(audio.finish())  # the decoder's and resampler's tail
                        if engine is not None:
                            engine.end_of_stream()  # commits the open turn or segment
                except UnsupportedAudio as exc:
                    await self._fail(ws, exc.code, str(exc), 1003)
                    return
            else:
                try:
                    event = parse_event(message)
                except RemoteProtocolError as exc:
                    if isinstance(params, RealtimeParams) and _message_type(message) == \
                            "flush_request":
                        # a flush the client waits for, with an id that cannot be echoed
                        # (spec 000: a string, or none): say so rather than drop it
                        await self._fail(ws, "INVALID_REQUEST",
                                         f"flush_request: {str(exc).split(': ', 1)[-1]}",
                                         1008)
                        return
                    complain(ws, f"reson8 server: bad client message: {exc}")
                    continue
                if isinstance(event, FlushRequest) and isinstance(params, RealtimeParams):
                    if ended or (engine is None and not audio.format_known):
                        # nothing is buffered: after the end, or before the header (building
                        # the engine now would fix the rate before the header says it)
                        await self._send(ws, FlushConfirmation(event.id))
                        continue
                    if engine is None:
                        engine = self._engine(params, audio.output_rate)
                    take(audio.feed(b""))  # what a container decoder has ready
                    assert isinstance(engine, TranscriptEngine)
                    engine.flush(event.id)
                else:
                    complain(ws, f"reson8 server: ignored client message {event.type!r}")
                    continue
            if engine is not None:
                await self._drive(ws, engine)

    async def _drive(self, ws: ServerConnection, engine: TurnEngine | TranscriptEngine) -> None:
        while (item := engine.next()) is not None:
            if ws.state is not State.OPEN:
                return  # the client is closing: nothing more to say to it
            if isinstance(item, RecognizeJob | EndOfTurnJob):
                engine.resolve(item, await self._infer(item))
            else:
                await self._send(ws, item)

    async def _send(self, ws: ServerConnection, event: Event) -> None:
        await ws.send(serialize_event(event))
