"""Secrets never leak, hostile input never crashes the parsers (property-based)."""

from __future__ import annotations

import asyncio
import html
import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger
from pipecat.frames.frames import ErrorFrame, ProposedUserStoppedSpeakingFrame

from reson8_voice import (
    ApiKey,
    BearerToken,
    InvalidRequest,
    RealtimeParams,
    RemoteProtocolError,
    Reson8Error,
    Secret,
    TurnsParams,
    Unauthorized,
    connect_turns,
    g711,
    parse_event,
    serialize_event,
)
from reson8_voice.auth import redact
from reson8_voice.pipecat import Reson8TurnsSTTService
from reson8_voice.server import Reson8Server, ServerConfig
from reson8_voice.vad import VoiceActivityDetector

from .audio_fixtures import load_fixture
from .conftest import scripted_runner
from .pipeline_harness import Harness, Recorder

KEY = "r8_live_TOPSECRET_9f8e7d6c5b4a"
WRONG = "r8_live_WRONGSECRET_0a1b2c3d"
TOKEN = "tok_SINGLEUSE_5e6f7a8b"
#: the logger of the stand-in servers below: what they log of the key is theirs, not ours
STAND_IN_LOG = logging.getLogger("tests.stand_in_server")
STAND_IN_LOG.propagate = False


class _Capture(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")
        if record.exc_info:  # a traceback quotes its exception's text
            self.lines.append(logging.Formatter().formatException(record.exc_info))


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every line logged through loguru (TRACE) and the stdlib (DEBUG: websockets logs each
    handshake header there, and pipecat apps often route it into loguru)."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="TRACE")
    root, handler = logging.getLogger(), _Capture(lines)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        logger.remove(sink)


async def test_no_credential_in_any_log_line_error_or_repr(log_lines: list[str]) -> None:
    """A full call with the right key, and one with a wrong key: every log line searched."""
    lines = log_lines
    async with Reson8Server(ServerConfig(port=0, api_key=Secret(KEY)),
                            scripted_runner()) as server:
        fx = load_fixture("short_answers")
        stt = Reson8TurnsSTTService(api_key=KEY, url=server.url)
        async with Harness([stt]) as h:
            await h.feed(fx.pcm16(), speed=8.0)
            await h.wait_for(lambda h: len(h.of_type(ProposedUserStoppedSpeakingFrame))
                             == len(fx.turns), 20)
        texts = [repr(stt), str(stt.url), repr(stt._credentials)]
        bad = Reson8TurnsSTTService(api_key=WRONG, url=server.url, rejected_retry_s=60)
        rejected = asyncio.Event()

        @bad.event_handler("on_connection_error")
        async def _on_error(service: Any, message: str) -> None:
            texts.append(message)
            rejected.set()

        async with Harness([bad]):
            await asyncio.wait_for(rejected.wait(), 10)
        with pytest.raises(Unauthorized) as info:
            await connect_turns(server.url, credentials=ApiKey.of(WRONG))
        texts += [str(info.value), repr(info.value)]
        # a bearer token in the subprotocol header, and one a user put in the URL
        conn = await connect_turns(f"{server.url}?token={TOKEN}",
                                   credentials=BearerToken.of(KEY, via="subprotocol"))
        texts.append(repr(conn))
        await conn.close()
    blob = "\n".join(lines + texts)
    assert "Authorization" not in blob or "ApiKey r8" not in blob
    for secret in (KEY, WRONG, TOKEN, KEY[8:], WRONG[8:]):
        assert secret not in blob
    assert len(lines) > 20  # the run was really logged
    assert any("websockets.client: > Authorization: ***" in line for line in lines)
    assert any("websockets.server: < Sec-WebSocket-Protocol: ***" in line for line in lines)


def test_plain_ws_to_a_remote_host_refuses_to_send_a_key() -> None:
    async def attempt() -> None:
        await connect_turns("ws://reson8.example.com", credentials=ApiKey.of(KEY))

    with pytest.raises(InvalidRequest) as info:
        asyncio.run(attempt())
    assert info.value.parameter == "url" and KEY not in str(info.value)


@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
@settings(max_examples=300, deadline=None)
def test_parse_event_any_text_is_typed_error_or_event(text: str) -> None:
    try:
        event = parse_event(text)
    except RemoteProtocolError:
        return
    json.loads(serialize_event(event))  # whatever parsed serializes back


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)


@given(st.sampled_from(["turn_start", "turn_end_candidate", "turn_continuation", "turn_end",
                        "transcript", "flush_request", "flush_confirmation", "error", "x"]),
       st.dictionaries(st.sampled_from(["text", "words", "start_ms", "duration_ms", "id",
                                        "is_final", "language", "code", "message"]), JSON))
@settings(max_examples=400, deadline=None)
def test_parse_event_any_json_object(kind: str, fields: dict[str, Any]) -> None:
    try:
        event = parse_event(json.dumps({"type": kind, **fields}))
    except RemoteProtocolError:
        return
    assert parse_event(serialize_event(event)) == event or kind == "x"


@given(st.lists(st.tuples(st.sampled_from(
    ["encoding", "sample_rate", "channels", "language", "custom_model_id", "include_words",
     "include_timestamps", "include_language", "include_interim", "patterns", "zzz"]),
    st.text(max_size=12)), max_size=6))
@settings(max_examples=300, deadline=None)
def test_params_from_any_query(pairs: list[tuple[str, str]]) -> None:
    for cls in (TurnsParams, RealtimeParams):
        try:
            params = cls.from_query(pairs)
        except InvalidRequest as exc:
            assert exc.parameter
            continue
        assert cls.from_query(params.to_query()) == params


#: what short random text never reaches: numbers past int()'s 4,300-digit limit, repeat
#: counts past the regex compiler's, nesting past its recursion (each was an untyped
#: exception, and a 500 at the server)
HOSTILE_VALUE = (st.integers(4000, 6000).map(lambda n: "7" * n)
                 | st.integers(2**31, 2**40).map(lambda n: f"a{{{n}}}")
                 | st.integers(500, 3000).map(lambda n: "(" * n + ")" * n)
                 | st.text(alphabet="()[]{}*+?|\\^$.a0", max_size=300))


@given(st.sampled_from(["sample_rate", "channels", "patterns"]), HOSTILE_VALUE)
@settings(max_examples=200, deadline=None)
def test_params_from_a_hostile_value(name: str, value: str) -> None:
    for cls in (TurnsParams, RealtimeParams):
        try:
            params = cls.from_query([(name, value)])
        except InvalidRequest as exc:
            assert exc.parameter == name
            continue
        assert cls.from_query(params.to_query()) == params


@given(st.binary(max_size=2000), st.sampled_from(["mulaw", "alaw"]))
@settings(max_examples=200, deadline=None)
def test_g711_any_bytes(data: bytes, law: str) -> None:
    try:
        pcm = g711.decode(law, data)  # type: ignore[arg-type]
        g711.encode(law, pcm)  # type: ignore[arg-type]
        g711.encode(law, data)  # type: ignore[arg-type]
    except Reson8Error:
        assert len(data) % 2 == 1


@given(st.binary(max_size=5000), st.sampled_from([8000, 16000]),
       st.sampled_from(["pcm_s16le", "mulaw", "alaw"]))
@settings(max_examples=150, deadline=None)
def test_vad_any_bytes(data: bytes, rate: int, encoding: str) -> None:
    vad = VoiceActivityDetector(sample_rate=rate, encoding=encoding)  # type: ignore[arg-type]
    for i in range(0, len(data), 333):
        vad.process(data[i:i + 333])
    vad.flush()


@pytest.fixture
def self_signed(tmp_path: Any) -> tuple[str, str]:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


async def test_wss_verifies_certificates_by_default(self_signed: tuple[str, str]) -> None:
    import ssl

    from websockets.asyncio.server import serve

    from reson8_voice import ConnectionClosed

    cert, key = self_signed
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    async def handler(ws: Any) -> None:
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, ssl=server_ctx) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        url = f"wss://127.0.0.1:{port}"
        with pytest.raises(ConnectionClosed) as info:  # self-signed: refused by default
            await connect_turns(url, credentials=ApiKey.of(KEY))
        assert "CERTIFICATE_VERIFY_FAILED" in str(info.value) and KEY not in str(info.value)
        trusting = ssl.create_default_context(cafile=cert)
        conn = await connect_turns(url, credentials=ApiKey.of(KEY), ssl_context=trusting)
        await conn.close()


async def _http_server(status: int, body: str, headers: dict[str, str] | None = None) -> Any:
    """A websockets server that refuses every upgrade with ``status`` and ``body``."""
    from websockets.asyncio.server import serve

    def refuse(connection: Any, request: Any) -> Any:
        response = connection.respond(status, body)
        for name, value in (headers or {}).items():
            response.headers[name] = value
        return response

    async def never(ws: Any) -> None:  # pragma: no cover - every upgrade is refused
        await ws.close()

    return await serve(never, "127.0.0.1", 0, process_request=refuse, logger=_SILENT)


#: the test's own stand-in servers log what they are sent; only the client's lines count
_SILENT = logging.getLogger("tests.stand_in_server")
_SILENT.propagate = False


def _port(server: Any) -> int:
    return int(next(iter(server.sockets)).getsockname()[1])


async def test_a_credentialed_client_refuses_redirects() -> None:
    """websockets strips Authorization on a cross-origin redirect but not the bearer
    subprotocol or xi-api-key: a request carrying a credential follows no redirect."""
    from websockets.asyncio.server import serve

    from reson8_voice import HandshakeError
    from reson8_voice.dialects.scribe_client import connect_scribe

    seen: list[str] = []

    def record(connection: Any, request: Any) -> None:
        seen.append(str(request.headers))

    async def echo(ws: Any) -> None:
        await ws.wait_closed()

    async with serve(echo, "127.0.0.1", 0, process_request=record, logger=_SILENT) as target:
        location = f"ws://localhost:{_port(target)}/v1/speech-to-text/turns"
        redirector = await _http_server(302, "", {"Location": location})
        try:
            url = f"ws://127.0.0.1:{_port(redirector)}"
            for attempt in (
                connect_turns(url, credentials=BearerToken.of(KEY, via="subprotocol")),
                connect_turns(url, credentials=ApiKey.of(KEY)),
                connect_scribe(url, api_key=KEY),
            ):
                with pytest.raises(HandshakeError) as info:
                    await attempt
                assert info.value.status == 302 and "redirect" in str(info.value)
                assert KEY not in str(info.value)
            assert seen == []  # the credential never reached the other origin
            conn = await connect_turns(url)  # nothing to leak: an anonymous client follows
            await conn.close()
            assert len(seen) == 1
        finally:
            redirector.close()
            await redirector.wait_closed()


async def _service_errors(url: str) -> list[str]:
    """What a turns service with :data:`KEY` reports of a refusal at ``url``: its first
    ``on_connection_error`` message and every ErrorFrame (pushed upstream)."""
    stt = Reson8TurnsSTTService(api_key=KEY, url=url, rejected_retry_s=60,
                                reconnect_delay_s=(60.0, 60.0))
    messages: list[str] = []
    reported = asyncio.Event()

    @stt.event_handler("on_connection_error")
    async def _on_error(service: Any, message: str) -> None:
        messages.append(message)
        reported.set()

    upstream = Recorder()
    async with Harness([upstream, stt]) as h:
        await asyncio.wait_for(reported.wait(), 10)
        await h.wait_for(lambda h: any(isinstance(f, ErrorFrame) for _, f in upstream.frames),
                         5)
    return [f.error for _, f in upstream.frames if isinstance(f, ErrorFrame)] + messages


@pytest.mark.parametrize("spelling", ["plain", "json-escaped"])
async def test_a_rejection_body_that_echoes_the_key_is_redacted(
        spelling: str, log_lines: list[str]) -> None:
    """A server (or a proxy in front of it) that quotes the request back in its refusal:
    the key reaches no exception, ErrorFrame, event handler or log line. A 500 reports an
    ErrorFrame too, like 400 and 401. Also when the JSON body spells the key with escapes
    (``\\uXXXX``, ``\\/``): the body was redacted as text, then decoded, key and all."""
    from reson8_voice.dialects.scribe_client import connect_scribe

    echoed = KEY if spelling == "plain" else _json_escaped(KEY)
    texts: list[str] = []
    for status in (400, 401, 403, 500):
        body = ('{"code": "X", "message": "bad header: Authorization: ApiKey '
                f'{echoed}"}}')
        server = await _http_server(status, body)
        url = f"ws://127.0.0.1:{_port(server)}"
        try:
            with pytest.raises(Reson8Error) as info:
                await connect_turns(url, credentials=ApiKey.of(KEY))
            texts += [str(info.value), repr(info.value), getattr(info.value, "message", "")]
            with pytest.raises(Reson8Error) as info:
                await connect_scribe(url, api_key=KEY)
            texts += [str(info.value), repr(info.value)]
            if status in (401, 500):
                errors = await _service_errors(url)
                assert f"{status} X" in errors[0]
                texts += errors
        finally:
            server.close()
            await server.wait_closed()
    blob = "\n".join(texts + log_lines)
    assert "bad header: Authorization: ApiKey ***" in blob  # the body did come through
    assert KEY not in blob and KEY[8:] not in blob and _json_escaped(KEY)[-48:] not in blob


def test_services_refuse_a_key_over_plain_ws_when_built() -> None:
    """Refused in ``__init__``, not later in a background task where nobody sees it."""
    from reson8_voice.pipecat import (
        Reson8GatewaySTTService,
        Reson8RealtimeSTTService,
        ScribeRealtimeSTTService,
    )

    remote = "ws://reson8.example.com"
    for cls in (Reson8TurnsSTTService, Reson8RealtimeSTTService, ScribeRealtimeSTTService,
                Reson8GatewaySTTService):
        with pytest.raises(InvalidRequest) as info:
            cls(api_key=KEY, url=remote)
        assert info.value.parameter == "url" and KEY not in str(info.value)
        cls(api_key=KEY, url=remote, allow_insecure=True)  # explicitly allowed
        cls(url=remote)  # nothing to leak
        cls(api_key=KEY, url="ws://127.0.0.1:1")  # loopback


@pytest.mark.parametrize("token", ["tok-QUERY-5512", "tok+QUERY/5512=="])
async def test_an_unexpected_server_failure_is_logged_without_the_request_credentials(
    token: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """loguru's ``diagnose=True`` (its default for ``logger.add``) prints every frame's
    variables in a traceback: the server's request handler holds the request, with its
    ``Authorization`` header and query. The failure must be logged, its credentials not.
    A base64-style token is percent-encoded in the query the failure quotes: only its
    decoded value was masked."""
    from websockets.asyncio.client import connect as raw_connect
    from websockets.exceptions import InvalidStatus

    from reson8_voice import TurnsParams

    key = "sk-server-KEY-7731"

    def broken(query: str) -> TurnsParams:
        raise RuntimeError(f"cannot parse {query}")  # an unexpected bug quoting its input

    monkeypatch.setattr(TurnsParams, "from_query", staticmethod(broken))
    out: list[str] = []
    sink = logger.add(out.append, level="DEBUG", diagnose=True, backtrace=True)
    try:
        async with Reson8Server(ServerConfig(port=0, api_key=Secret(key)),
                                scripted_runner()) as srv:
            url = f"{srv.url}/v1/speech-to-text/turns?encoding=mulaw&sample_rate=8000" \
                  f"&token={quote(token, safe='')}"
            with pytest.raises(InvalidStatus) as info:
                async with raw_connect(url, additional_headers={
                        "Authorization": f"ApiKey {key}"}):
                    pass
            assert info.value.response.status_code == 500
    finally:
        logger.remove(sink)
    text = "".join(out)
    assert "session failed" in text or "during the upgrade" in text
    assert "RuntimeError: cannot parse" in text  # the failure is there, with its traceback
    assert key not in text and token not in text and quote(token, safe="") not in text
    assert "QUERY" not in text


async def test_a_failed_session_is_logged_without_the_request_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same inside an open session: ``diagnose=True`` prints the value of every name on
    each frame's failing line, and session code may well have the request's credentials
    there (here the failing line does)."""
    from urllib.parse import parse_qsl, urlsplit

    from websockets.asyncio.client import connect as raw_connect
    from websockets.asyncio.server import ServerConnection

    key, token = "sk-server-KEY-4410", "tok-QUERY-8823"

    async def broken(self: Reson8Server, ws: ServerConnection, params: Any) -> None:
        assert ws.request is not None  # session code looking at its request's credentials
        authorization = ws.request.headers["Authorization"]
        query_token = dict(parse_qsl(urlsplit(ws.request.path).query))["token"]
        raise RuntimeError("session broke: " + str(len(authorization) + len(query_token)))

    monkeypatch.setattr(Reson8Server, "_session", broken)
    out: list[str] = []
    sink = logger.add(out.append, level="DEBUG", diagnose=True, backtrace=True)
    try:
        async with Reson8Server(ServerConfig(port=0, api_key=Secret(key)),
                                scripted_runner()) as srv:
            url = f"{srv.url}/v1/speech-to-text/turns?encoding=mulaw&sample_rate=8000" \
                  f"&token={token}"
            async with raw_connect(url, additional_headers={
                    "Authorization": f"ApiKey {key}"}) as ws:
                error = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert error["code"] == "INTERNAL_ERROR"  # logged before it was sent
    finally:
        logger.remove(sink)
    text = "".join(out)
    assert "session failed" in text
    assert "RuntimeError: session broke: " in text
    assert key not in text and token not in text


@pytest.mark.parametrize("spelling", ["plain", "json-escaped"])
@pytest.mark.parametrize("service", ["turns", "realtime"])
async def test_what_a_server_echoes_inside_a_session_is_redacted(
    service: str, spelling: str, log_lines: list[str]
) -> None:
    """Upgrade rejections were redacted, but not what a server says once the session is
    open: an error event, a message that is not JSON, an unknown event and a close reason
    that quote the request's Authorization header reached ErrorFrames, pipecat's error
    log and the service's warnings with the key in them. A JSON event spelling the key
    with escapes got past the text redaction and was decoded into the event."""
    from websockets.asyncio.server import ServerConnection, serve

    from reson8_voice.pipecat import Reson8RealtimeSTTService

    def spell(text: str) -> str:  # a JSON string's body
        return json.dumps(text)[1:-1] if spelling == "plain" else _json_escaped(text)

    async def echo(ws: ServerConnection) -> None:
        assert ws.request is not None
        auth = ws.request.headers["Authorization"]
        await ws.send(f'{{"type": "error", "code": "X", "message": "bad {spell(auth)}"}}')
        await ws.send(f"garbage quoting {auth}")
        await ws.send(f'{{"type": "weird", "echo": "{spell(auth)}"}}')
        await ws.send(b"\0" * 41 + auth.encode())  # cut at 64 bytes, mid-key
        await ws.close(1011, f"closing on {auth}"[:120])

    async with serve(echo, "127.0.0.1", 0, logger=STAND_IN_LOG) as server:
        url = f"ws://127.0.0.1:{_port(server)}"
        stt = (Reson8TurnsSTTService(api_key=KEY, url=url, reconnect_delay_s=(30, 30))
               if service == "turns" else
               Reson8RealtimeSTTService(api_key=KEY, url=url, reconnect_delay_s=(30, 30)))
        closed: list[str] = []

        @stt.event_handler("on_disconnected")
        async def _on_disconnected(service: Any) -> None:
            closed.append("closed")

        upstream = Recorder()
        async with Harness([upstream, stt]) as h:
            await h.wait_for(lambda h: bool(closed), 10)
    errors = [f.error for _, f in upstream.frames if isinstance(f, ErrorFrame)]
    blob = "\n".join(errors + log_lines)
    assert "bad ApiKey ***" in blob  # the server's error did come through, masked
    assert KEY not in blob and _json_escaped(KEY)[-48:] not in blob
    # nor a part of it: a binary message was cut for its error, and websockets' log of a
    # frame elides the middle of a long one, after the mask or before
    assert not [KEY[i:i + 8] for i in range(8, len(KEY) - 7) if KEY[i:i + 8] in blob]


async def test_a_token_in_the_url_is_a_credential() -> None:
    """``?token=`` is masked by redact_url, so it is a secret: not in the service's url or
    repr, nor in the demo's and agents' config reprs, and not sent over plain ws:// to a
    remote host; a server echoing it back is masked like a key."""
    from websockets.asyncio.server import ServerConnection, serve

    from agents.local_assistant.assistant import AssistantConfig
    from agents.twilio_bot.bot import BotConfig
    from reson8_voice.demo.runner import DemoOptions
    from reson8_voice.demo.transcribe import TranscribeOptions

    url = f"ws://127.0.0.1:9/?token={TOKEN}"
    shown = [repr(BotConfig(reson8_url=url)), repr(AssistantConfig(reson8_url=url)),
             repr(DemoOptions(url=url)), repr(TranscribeOptions(url=url))]
    stt = Reson8TurnsSTTService(url=url)
    shown += [stt.url, repr(stt)]
    assert all("token=***" in text for text in shown), shown
    assert not any(TOKEN in text for text in shown)
    with pytest.raises(InvalidRequest) as info:
        Reson8TurnsSTTService(url=f"ws://reson8.example.com/?token={TOKEN}")
    assert info.value.parameter == "url" and TOKEN not in str(info.value)
    with pytest.raises(InvalidRequest):
        await connect_turns(f"ws://reson8.example.com/?token={TOKEN}")

    async def echo(ws: ServerConnection) -> None:
        assert ws.request is not None
        await ws.send(json.dumps({"type": "error", "code": "X", "message": ws.request.path}))

    async with serve(echo, "127.0.0.1", 0) as server:
        conn = await connect_turns(f"ws://127.0.0.1:{_port(server)}/?token={TOKEN}")
        async with conn:
            event = await asyncio.wait_for(conn.recv(), 10)
    assert "token=***" in str(event) and TOKEN not in str(event)


async def test_a_password_in_the_url_is_a_credential(log_lines: list[str]) -> None:
    """Found by the audit of issue 7: ``ws://user:password@host`` (websockets sends it as
    Basic authorization) was shown whole by redact_url, so in every service's url and
    repr, the agents' config reprs and a connection's url, and went over plain ws://."""
    import base64

    from websockets.asyncio.server import ServerConnection, serve

    from agents.twilio_bot.bot import BotConfig
    from reson8_voice.demo.runner import DemoOptions

    url = f"ws://reson8:{TOKEN}@127.0.0.1:9/"
    stt = Reson8TurnsSTTService(url=url)
    shown = [repr(BotConfig(reson8_url=url)), repr(DemoOptions(url=url)), stt.url, repr(stt)]
    with pytest.raises(InvalidRequest) as info:
        Reson8TurnsSTTService(url=f"ws://reson8:{TOKEN}@reson8.example.com/")
    assert info.value.parameter == "url"

    async def hello(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "error", "code": "X", "message": "hello"}))

    async with serve(hello, "127.0.0.1", 0, logger=STAND_IN_LOG) as server:
        conn = await connect_turns(f"ws://reson8:{TOKEN}@127.0.0.1:{_port(server)}/")
        async with conn:
            await asyncio.wait_for(conn.recv(), 10)
        shown += [conn.url, repr(conn)]
    assert all("ws://***@127.0.0.1:" in text for text in shown), shown
    basic = base64.b64encode(f"reson8:{TOKEN}".encode()).decode()
    blob = "\n".join([*shown, str(info.value), *log_lines])
    assert TOKEN not in blob and basic not in blob


@pytest.fixture
def compared(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every ``hmac.compare_digest`` call of the key checks, as its two byte strings."""
    import hmac

    from reson8_voice import auth

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    return calls


async def test_the_server_compares_keys_in_constant_time(
    compared: list[tuple[bytes, bytes]],
) -> None:
    """Every key check of a real handshake goes through ``hmac.compare_digest`` (a plain
    ``==`` gives the same answers, so only the call itself tells them apart): a wrong key
    of another length, the right key, over the header and the bearer subprotocol."""
    async with Reson8Server(ServerConfig(port=0, api_key=Secret(KEY)), scripted_runner()) as srv:
        with pytest.raises(Unauthorized):
            await connect_turns(srv.url, credentials=ApiKey.of(KEY[:-3]))
        assert compared == [(KEY.encode(), KEY[:-3].encode())]
        async with await connect_turns(srv.url, credentials=ApiKey.of(KEY)):
            pass
        async with await connect_turns(srv.url, credentials=BearerToken.of(KEY, via="subprotocol")):
            pass
    assert compared[1:] == [(KEY.encode(), KEY.encode())] * 2


async def test_the_other_dialects_compare_keys_in_constant_time(
    compared: list[tuple[bytes, bytes]],
) -> None:
    """The gateway and Scribe endpoints check their keys through ``hmac.compare_digest``
    too: a wrong key, a wrong Scribe ``token``, then the right key, each compared once."""
    from reson8_voice.dialects import (
        GatewayAuthError,
        GatewayConfig,
        ScribeAuthError,
        ScribeParams,
    )
    from reson8_voice.dialects.gateway_client import connect_gateway
    from reson8_voice.dialects.scribe_client import connect_scribe

    key, wrong = KEY.encode(), b"wrong-" + KEY.encode()
    gateway = GatewayConfig(encoding="pcm_s16le", sample_rate=8000, channels=1)
    scribe = ScribeParams(audio_format="pcm_8000")
    async with Reson8Server(ServerConfig(port=0, api_key=Secret(KEY)), scripted_runner()) as srv:
        with pytest.raises(GatewayAuthError):
            await connect_gateway(srv.url, gateway, wrong.decode())
        async with await connect_gateway(srv.url, gateway, KEY):
            pass
        assert compared == [(key, wrong), (key, key)]
        compared.clear()
        with pytest.raises(ScribeAuthError):
            await connect_scribe(srv.scribe_url, scribe, wrong.decode())
        with pytest.raises(ScribeAuthError):
            await connect_scribe(srv.scribe_url, scribe, token=wrong.decode())
        async with await connect_scribe(srv.scribe_url, scribe, KEY):
            pass
        assert compared == [(key, wrong), (key, wrong), (key, key)]


async def test_a_base64_token_in_the_subprotocol_is_refused_without_being_quoted(
    log_lines: list[str],
) -> None:
    """``openssl rand -base64`` keys hold ``/``, ``+`` and ``=``; a subprotocol may not
    (RFC 7230 token). websockets refused such an offer with a 400 quoting the header and
    logged it in a DEBUG traceback. The server now refuses it itself, quoting nothing; the
    client will not offer it (the header works); the key in the header is accepted."""
    secret = "tok/SECRET+abc=="
    with pytest.raises(InvalidRequest) as info:
        BearerToken.of(secret, via="subprotocol")
    assert info.value.parameter == "credentials" and secret not in str(info.value)
    async with Reson8Server(ServerConfig(port=0, api_key=Secret(secret)),
                            scripted_runner()) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write((
            "GET /v1/speech-to-text/turns?encoding=mulaw&sample_rate=8000 HTTP/1.1\r\n"
            "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: bearer, {secret}\r\n\r\n").encode())
        reply = await asyncio.wait_for(reader.read(4096), 10)
        writer.close()
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400")
        error = json.loads(body)
        assert (error["code"], error["parameter"]) == ("INVALID_REQUEST",
                                                        "Sec-WebSocket-Protocol")
        async with await connect_turns(srv.url, credentials=BearerToken.of(secret)):
            pass
    assert "SECRET" not in reply.decode("latin-1")
    assert not any("SECRET" in line for line in log_lines)


async def test_every_connection_url_masks_a_query_token() -> None:
    """Found by the audit of issue 7: the connections' public ``url`` kept the credential.
    Scribe's held a single-use ``token`` percent-encoded (``+``, ``/`` and ``=`` slipped
    past ``redact``); the gateway's and Reson8's held a ``?token=`` put in the URL as is
    (and the gateway's repr showed it)."""
    from reson8_voice.dialects import GatewayConfig, ScribeParams
    from reson8_voice.dialects.gateway_client import connect_gateway
    from reson8_voice.dialects.scribe_client import connect_scribe

    token = "tok+SINGLE/USE=5e6f"  # base64-ish: url-encoding changes it
    async with Reson8Server(ServerConfig(port=0, api_key=Secret(token)), scripted_runner()) as srv:
        scribe = await connect_scribe(srv.scribe_url, ScribeParams(audio_format="pcm_8000"),
                                      token=token)
        gateway = await connect_gateway(
            f"{srv.url}?token={TOKEN}",
            GatewayConfig(encoding="pcm_s16le", sample_rate=8000, channels=1), token)
        turns = await connect_turns(f"{srv.url}?token={TOKEN}", credentials=ApiKey.of(token))
        async with scribe, gateway, turns:
            shown = [c.url for c in (scribe, gateway, turns)]
            shown += [repr(c) for c in (scribe, gateway, turns)]
    encoded = [quote(token, safe=""), quote_plus(token), quote(TOKEN, safe="")]
    assert all("token=***" in url for url in shown[:3]), shown
    assert not any(s in text for text in shown for s in (token, TOKEN, *encoded)), shown


async def test_scribe_messages_before_session_started_mask_the_key() -> None:
    """Found by the audit of issue 7: ``connect_scribe`` parsed the messages before
    ``session_started`` unredacted, so an ``auth_error`` (or a malformed message) echoing
    the key put it in the exception."""
    from websockets.asyncio.server import ServerConnection, serve

    from reson8_voice.dialects.scribe_client import connect_scribe

    texts: list[str] = []
    for payload in (json.dumps({"message_type": "auth_error", "error": f"bad key {KEY}"}),
                    f"not json: {KEY}"):
        async def echo(ws: ServerConnection, payload: str = payload) -> None:
            await ws.send(payload)
            await ws.wait_closed()

        async with serve(echo, "127.0.0.1", 0) as server:
            with pytest.raises(Reson8Error) as info:
                await connect_scribe(f"ws://127.0.0.1:{_port(server)}", api_key=KEY)
        texts += [str(info.value), repr(info.value), repr(info.value.args)]
    assert all("***" in text for text in texts[::3]), texts
    assert not any(KEY in text for text in texts), texts


@settings(max_examples=50, deadline=None)
@given(st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="*"),
               min_size=8, max_size=24))
def test_redact_masks_a_secret_as_a_url_carries_it(secret: str) -> None:
    """Found by the audit of issue 7: a server echoing the request path (``?token=`` is
    percent-encoded there) got a token with ``+``, ``/`` or ``=`` past ``redact``."""
    text = (f"path=/v1?token={quote(secret, safe='')} plus={quote_plus(secret)} "
            f"raw={secret}")
    masked = redact(text, secret)
    assert masked.count("***") >= 3
    assert all(form not in masked for form in (secret, quote(secret, safe=""),
                                                quote_plus(secret)))
    assert redact(f"?token={quote('tok+A/B=C', safe='')}", "tok+A/B=C") == "?token=***"


def test_redact_is_linear_in_a_run_of_backslashes() -> None:
    """A secret's escaped spellings start with backslashes; tried at every backslash of a
    long run, the pattern was quadratic: a server sending 300,000 of them would hold the
    client for minutes (32,000 took 3 s). Run apart, so a regression is killed, not waited
    for (the regex engine holds the GIL and ignores pytest's timeout)."""
    import subprocess
    import sys

    code = ("from reson8_voice.auth import redact; t = chr(92) * 300_000 + 'x'; "
            "print(redact(t, 'r8+KEY/SECRET=Ab9==') == t)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, check=True)
    assert done.stdout.strip() == "True"


def _json_escaped(secret: str) -> str:
    """``secret`` as a JSON string's body that spells every character as ``\\uXXXX`` (as
    valid as the plain spelling, and what an ``ensure_ascii`` or slash-escaping encoder
    does to some of them)."""
    return "".join(f"\\u{ord(c):04x}" for c in secret)


@settings(max_examples=50, deadline=None)
@given(st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="*"),
               min_size=8, max_size=24))
def test_redact_masks_a_secret_as_json_a_repr_or_html_spell_it(secret: str) -> None:
    """Found by the audit of issue 7: ``redact`` replaced the plain text only, so a server
    quoting a key in JSON as ``r8\\/KEY`` or ``\\u002b`` got past it, and the message, once
    decoded, carried the key itself into an exception or an event."""
    spellings = [json.dumps(secret), json.dumps(secret).replace("/", "\\/"),
                 f'"{_json_escaped(secret)}"', repr(json.dumps(secret).replace("/", "\\/")),
                 html.escape(secret), "".join(f"&#x{ord(c):x};" for c in secret)]
    for text in spellings:
        masked = redact(f" {text} ", secret)
        assert masked.startswith(" ") and masked.endswith(" ") and "***" in masked, text
        assert secret not in masked and text not in masked
    for document in spellings[:3]:
        assert json.loads(redact(document, secret)) == "***"
