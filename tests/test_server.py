"""The embedded server over real sockets: the upgrade, the error table, limits, sessions.

Recognition here is scripted (the real models are tested in test_engine_quality.py), so
these tests check the server's protocol behaviour with the real VAD on real speech.
A raw ``websockets`` client written from the spec documents checks the server side, so
the project's own client and server cannot agree on a mistake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

import pytest
from loguru import logger
from websockets.asyncio.client import connect as raw_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from reson8_voice import (
    ApiKey,
    BadRequest,
    BearerToken,
    ErrorEvent,
    FlushConfirmation,
    InvalidRequest,
    RealtimeParams,
    Secret,
    Transcript,
    TurnEnd,
    TurnEndCandidate,
    TurnsParams,
    TurnStart,
    TurnStateMachine,
    Unauthorized,
    connect_realtime,
    connect_turns,
    parse_event,
)
from reson8_voice.engine.turn_engine import (
    EngineConfig,
    TurnEngine,
    run_to_completion,
)
from reson8_voice.server import Reson8Server, ServerConfig

from .audio_fixtures import load_fixture
from .conftest import scripted_runner

KEY = "r8_test_key_0123456789abcdef"


@pytest.fixture
async def server() -> AsyncIterator[Reson8Server]:
    async with Reson8Server(ServerConfig(port=0), scripted_runner()) as srv:
        yield srv


@pytest.fixture
async def keyed_server() -> AsyncIterator[Reson8Server]:
    async with Reson8Server(ServerConfig(port=0, api_key=Secret(KEY)), scripted_runner()) as s:
        yield s


TURNS = "/v1/speech-to-text/turns"
REALTIME = "/v1/speech-to-text/realtime"


async def _rejection(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as info:
        async with raw_connect(url, **kwargs):
            pass
    return info.value.response.status_code, json.loads(info.value.response.body or b"{}")


async def test_unknown_path_is_404(server: Reson8Server) -> None:
    status, body = await _rejection(server.url + "/v1/speech-to-text/nope")
    assert status == 404 and body["code"] == "NOT_FOUND"


@pytest.mark.parametrize(("query", "parameter"), [
    ("encoding=opus", "encoding"), ("sample_rate=12", "sample_rate"),
    ("include_words=perhaps", "include_words"), ("encoding=mulaw&encoding=alaw", "encoding"),
    # past int()'s 4,300-digit limit, a repeat count the regex compiler overflows on, and
    # nesting deeper than its recursion: each was a 500 and an ERROR traceback
    ("sample_rate=" + "9" * 4400, "sample_rate"), ("channels=" + "1" * 4400, "channels"),
    ("patterns=a%7B4294967296%7D", "patterns"), ("patterns=" + "(" * 3000 + ")" * 3000, "patterns"),
])
async def test_bad_parameters_are_400_naming_the_parameter(
    server: Reson8Server, query: str, parameter: str
) -> None:
    errors: list[str] = []
    sink = logger.add(errors.append, level="ERROR")
    try:
        status, body = await _rejection(f"{server.url}{TURNS}?{query}")
    finally:
        logger.remove(sink)
    assert status == 400 and body["code"] == "INVALID_REQUEST"
    assert parameter in body["message"] and body["parameter"] == parameter
    assert errors == []  # a client's mistake, not the server's failure


async def test_realtime_refuses_g711(server: Reson8Server) -> None:
    status, body = await _rejection(f"{server.url}{REALTIME}?encoding=mulaw")
    assert (status, body["parameter"]) == (400, "encoding")


@pytest.mark.parametrize("name", ["encoding", "language", "include_words"])
async def test_a_rejected_value_comes_back_quoted_not_as_markup(
    server: Reson8Server, name: str
) -> None:
    hostile = "<script>alert(1)</script>&" + "x" * 200
    with pytest.raises(InvalidStatus) as info:
        async with raw_connect(f"{server.url}{TURNS}?{urlencode({name: hostile})}"):
            pass
    raw = info.value.response.body or b""
    assert info.value.response.status_code == 400
    assert not {"<", ">", "&"} & set(raw.decode()), raw
    body = json.loads(raw)  # still JSON, and the value is quoted back in part, escaped
    assert body["parameter"] == name and "<script>" in body["message"]
    assert "x" * 100 not in body["message"]  # not the whole value

async def test_client_maps_400_to_bad_request(server: Reson8Server) -> None:
    with pytest.raises(BadRequest) as info:
        await connect_turns(server.url + "/?language=%21%21")
    assert info.value.status == 400 and info.value.code == "INVALID_REQUEST"
    assert info.value.parameter == "language"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "ApiKey wrong"},
                                     {"Authorization": f"Basic {KEY}"},
                                     {"Authorization": f"ApiKey {KEY}x"}])
async def test_missing_or_wrong_credentials_are_401(
    keyed_server: Reson8Server, headers: dict[str, str]
) -> None:
    status, body = await _rejection(keyed_server.url + TURNS, additional_headers=headers)
    assert status == 401 and body["code"] == "UNAUTHORIZED"
    assert KEY not in json.dumps(body)


async def test_auth_is_checked_before_parameters(keyed_server: Reson8Server) -> None:
    status, _ = await _rejection(f"{keyed_server.url}{TURNS}?encoding=opus")
    assert status == 401


@pytest.mark.parametrize("credentials", [
    ApiKey.of(KEY), BearerToken.of(KEY), BearerToken.of(KEY, via="subprotocol"),
])
async def test_each_auth_scheme_is_accepted(
    keyed_server: Reson8Server, credentials: ApiKey | BearerToken
) -> None:
    conn = await connect_turns(keyed_server.url, TurnsParams(encoding="mulaw", sample_rate=8000),
                               credentials)
    async with conn:
        if isinstance(credentials, BearerToken) and credentials.via == "subprotocol":
            assert conn.websocket.subprotocol == "bearer"
        await conn.send_audio(b"\xff" * 1600)


async def test_browser_style_subprotocol_auth_with_raw_client(keyed_server: Reson8Server) -> None:
    async with raw_connect(keyed_server.url + TURNS + "?encoding=pcm_s16le",
                           subprotocols=["bearer", KEY]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "bearer"


async def test_subprotocol_auth_echoes_the_offered_spelling(keyed_server: Reson8Server) -> None:
    # the server accepts the scheme in any case; selecting "bearer" when the client offered
    # "Bearer" broke the handshake (the client may only get back a subprotocol it offered)
    async with raw_connect(keyed_server.url + TURNS + "?encoding=pcm_s16le",
                           subprotocols=["Bearer", KEY]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "Bearer"


async def test_client_maps_401_to_unauthorized_without_leaking_the_key(
    keyed_server: Reson8Server
) -> None:
    with pytest.raises(Unauthorized) as info:
        await connect_turns(keyed_server.url, credentials=ApiKey.of("r8_wrong_SECRET123"))
    assert info.value.status == 401 and info.value.code == "UNAUTHORIZED"
    assert "SECRET123" not in str(info.value) and "SECRET123" not in repr(info.value)


async def _collect(conn: Any, until: Callable[[Any], bool], limit_s: float = 20.0) -> list[Any]:
    events: list[Any] = []

    async def read() -> None:
        async for event in conn:
            events.append(event)
            if until(event):
                return

    await asyncio.wait_for(read(), limit_s)
    return events


async def test_turns_session_on_real_speech_yields_one_legal_turn_per_spoken_turn(
    server: Reson8Server,
) -> None:
    fx = load_fixture("call_delivery")
    params = TurnsParams(encoding="mulaw", sample_rate=8000, include_words=True,
                         include_timestamps=True, include_language=True)
    async with await connect_turns(server.url, params) as conn:
        sender = asyncio.create_task(_send_all(conn, fx.chunks(20)))
        checker = TurnStateMachine()
        ended = 0

        def until(event: Any) -> bool:
            nonlocal ended
            turn = checker.process(event)  # raises on any illegal sequence
            if turn is not None:
                ended += 1
            return ended == len(fx.turns)

        events = await _collect(conn, until)
        await sender
    starts = [e for e in events if isinstance(e, TurnStart)]
    assert len(starts) == len(fx.turns)
    candidate = next(e for e in events if isinstance(e, TurnEndCandidate))
    assert candidate.language == "en" and candidate.words and candidate.start_ms is not None
    first = fx.turns[0]
    assert abs(candidate.start_ms - first.start_ms) < 200  # real VAD found the onset


async def _send_all(conn: Any, chunks: Any) -> None:
    for chunk in chunks:
        await conn.send_audio(chunk)


async def test_fast_streaming_gives_the_same_events_as_real_time(server: Reson8Server) -> None:
    fx = load_fixture("call_restaurant")
    reference = [e for _, e in run_to_completion(
        TurnEngine(EngineConfig(), sample_rate=8000), fx.chunks(20, pcm=True),
        scripted_runner(), end=False)]
    assert sum(isinstance(e, TurnEnd) for e in reference) == len(fx.turns)
    async with await connect_turns(server.url, TurnsParams(encoding="mulaw",
                                                           sample_rate=8000)) as conn:
        # the whole file in 4 KiB messages as fast as the socket takes them
        data = fx.data
        sender = asyncio.create_task(_send_all(conn, (data[i:i + 4096]
                                                      for i in range(0, len(data), 4096))))
        got: list[Any] = []

        async def read() -> None:
            async for event in conn:
                got.append(event)
                if len(got) == len(reference):
                    return

        await asyncio.wait_for(read(), 30)
        await sender
    assert got == reference


async def test_message_over_the_limit_gets_an_error_and_a_close(server: Reson8Server) -> None:
    async with raw_connect(server.url + TURNS + "?encoding=pcm_s16le",
                           max_size=None) as ws:
        await ws.send(b"\x00" * ((1 << 20) + 2))
        event = parse_event(await asyncio.wait_for(ws.recv(), 10))
        assert isinstance(event, ErrorEvent) and event.code == "MESSAGE_TOO_LARGE"
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_raw_audio_with_auto_encoding_is_refused_clearly(server: Reson8Server) -> None:
    async with raw_connect(server.url + TURNS) as ws:
        await ws.send(load_fixture("short_answers").data[:1600])
        event = parse_event(await asyncio.wait_for(ws.recv(), 10))
        assert isinstance(event, ErrorEvent) and event.code == "INVALID_AUDIO"
        assert "encoding" in event.message


async def test_raw_audio_with_auto_encoding_on_realtime_names_only_its_encodings(
        server: Reson8Server) -> None:
    # spec 000: the realtime endpoint's encoding is "auto or pcm_s16le"; the advice for raw
    # audio must not name mulaw/alaw, which the upgrade would refuse with a 400
    async with raw_connect(server.url + REALTIME) as ws:
        await ws.send(load_fixture("short_answers").data[:1600])
        event = parse_event(await asyncio.wait_for(ws.recv(), 10))
        assert isinstance(event, ErrorEvent) and event.code == "INVALID_AUDIO"
        assert "pcm_s16le" in event.message
        assert "mulaw" not in event.message and "alaw" not in event.message


async def test_container_without_pyav_on_realtime_names_only_its_encodings(
        server: Reson8Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from reson8_voice.server import audio_input

    monkeypatch.setattr(audio_input, "pyav_available", lambda: False)
    async with raw_connect(server.url + REALTIME) as ws:
        await ws.send(b"OggS" + b"\x00" * 60)
        event = parse_event(await asyncio.wait_for(ws.recv(), 10))
        assert isinstance(event, ErrorEvent) and "PyAV" in event.message
        assert "pcm_s16le" in event.message
        assert "mulaw" not in event.message and "alaw" not in event.message


def _streaming_wav_header(rate: int, fmt: int = 7, bits: int = 8) -> bytes:
    block = bits // 8
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, fmt, 1, rate, rate * block, block, bits) +
            b"data" + struct.pack("<I", 0xFFFFFFFF))


async def test_auto_encoding_reads_an_indefinite_length_streaming_wav(
    server: Reson8Server,
) -> None:
    fx = load_fixture("short_answers")
    async with await connect_turns(server.url, TurnsParams()) as conn:  # encoding=auto
        await conn.send_audio(_streaming_wav_header(8000)[:10])  # header split across frames
        await conn.send_audio(_streaming_wav_header(8000)[10:] + fx.data[:8000])
        sender = asyncio.create_task(_send_all(conn, (fx.data[i:i + 1600]
                                                      for i in range(8000, len(fx.data), 1600))))
        events = await _collect(conn, lambda e: isinstance(e, TurnEnd))
        await sender
    assert isinstance(events[0], TurnStart) and isinstance(events[-1], TurnEnd)


async def test_session_time_limit(server: Reson8Server) -> None:
    async with Reson8Server(ServerConfig(port=0, max_session_s=0.5), scripted_runner()) as srv:
        async with raw_connect(srv.url + TURNS + "?encoding=pcm_s16le") as ws:
            event = parse_event(await asyncio.wait_for(ws.recv(), 10))
            assert isinstance(event, ErrorEvent) and event.code == "SESSION_TIME_LIMIT"


async def test_realtime_flush_returns_final_transcript_then_confirmation(
    server: Reson8Server,
) -> None:
    fx = load_fixture("short_answers")
    params = RealtimeParams(encoding="pcm_s16le", sample_rate=8000)
    async with await connect_realtime(server.url, params) as conn:
        first = fx.turns[0]
        await conn.send_audio(fx.pcm16()[: (first.end_ms - 50) * 16])  # mid-word, no pause yet
        await conn.flush("abc123")
        events = await _collect(conn, lambda e: isinstance(e, FlushConfirmation))
        assert [type(e) for e in events] == [Transcript, FlushConfirmation]
        assert events[-1].id == "abc123" and events[0].final
        await conn.flush()
        events = await _collect(conn, lambda e: isinstance(e, FlushConfirmation))
        assert events == [FlushConfirmation(None)]


async def test_client_vanishing_mid_turn_frees_its_session(server: Reson8Server) -> None:
    fx = load_fixture("long_turn")
    ws = await raw_connect(server.url + TURNS + "?encoding=mulaw&sample_rate=8000")
    await ws.send(fx.data[: 3 * 8000])
    assert isinstance(parse_event(await asyncio.wait_for(ws.recv(), 10)), TurnStart)
    assert server.sessions_active == 1
    ws.transport.abort()  # no close frame: the client is simply gone
    await asyncio.wait_for(server.wait_idle(), 10)
    assert server.sessions_active == 0


async def test_non_loopback_bind_without_key_is_refused_by_the_cli() -> None:
    import subprocess
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reson8_voice", "serve", "--host", "0.0.0.0", "--port", "0",
        stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 3
    assert b"without an API key" in err



@pytest.mark.parametrize(("fmt", "codec"), [("flac", "flac"), ("ogg", "libopus"),
                                            ("webm", "libopus")])
async def test_auto_encoding_decodes_streamed_containers(
    server: Reson8Server, fmt: str, codec: str
) -> None:
    """OGG/FLAC/WebM streamed with encoding=auto are decoded as they arrive (PyAV)."""

    import numpy as np

    fx = load_fixture("short_answers")
    rate = 48000 if codec == "libopus" else 16000
    samples = np.frombuffer(fx.pcm16(), dtype=np.int16)
    samples = np.repeat(samples, rate // 8000)  # crude upsampling is fine for the VAD test
    data = _encode(samples, rate, fmt, codec)
    async with await connect_turns(server.url, TurnsParams()) as conn:  # encoding=auto
        sender = asyncio.create_task(_send_all(conn, (data[i:i + 2000]
                                                      for i in range(0, len(data), 2000))))
        ends = 0

        def until(event: Any) -> bool:
            nonlocal ends
            ends += isinstance(event, TurnEnd)
            return ends == len(fx.turns) - 1  # the last needs trailing audio to end

        events = await _collect(conn, until)
        await sender
    assert isinstance(events[0], TurnStart)
    assert sum(isinstance(e, TurnStart) for e in events) >= len(fx.turns) - 1


async def test_failed_handshakes_leave_no_state_behind(keyed_server: Reson8Server) -> None:
    """A request that passes process_request but fails the handshake (a plain GET) never
    reaches the handler: what the upgrade stored must go with the connection, or a later
    caller could be handed a stale session (state was once keyed by the reused id())."""
    import gc

    host, port = "127.0.0.1", keyed_server.port
    for path in (keyed_server.gateway.path, keyed_server.scribe.path,
                 f"{TURNS}?encoding=mulaw&sample_rate=8000"):
        for _ in range(20):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey {KEY}\r\n"
                         "\r\n".encode())
            status = await asyncio.wait_for(reader.readline(), 5)
            assert status.startswith(b"HTTP/1.1 426"), status  # Upgrade Required
            writer.close()
            await writer.wait_closed()
    for _ in range(50):  # the server side of each connection winds down on its own
        gc.collect()
        if not keyed_server._params and not keyed_server._dialect_sessions:
            break
        await asyncio.sleep(0.05)
    assert not keyed_server._params and not keyed_server._dialect_sessions
    for _ in range(10):  # and every real caller gets its own turns session
        conn = await connect_turns(keyed_server.url, TurnsParams(encoding="mulaw",
                                   sample_rate=8000), ApiKey.of(KEY))
        await conn.send_audio(b"\xff" * 1600)
        await conn.close()


async def test_repeated_authorization_headers_are_401_not_500(
    keyed_server: Reson8Server,
) -> None:
    headers = [("Authorization", f"ApiKey {KEY}"), ("Authorization", "Bearer other")]
    status, body = await _rejection(keyed_server.url + TURNS, additional_headers=headers)
    assert (status, body["code"]) == (401, "UNAUTHORIZED")


def test_the_library_refuses_a_public_bind_without_a_key() -> None:
    """The configuration itself refuses it, so no caller (CLI, library, replace()) can
    build a server that would listen publicly without a key."""
    import dataclasses

    with pytest.raises(InvalidRequest) as info:
        ServerConfig(host="0.0.0.0", port=0)
    assert info.value.parameter == "host" and "without an API key" in str(info.value)
    with pytest.raises(InvalidRequest):
        dataclasses.replace(ServerConfig(port=0), host="::")
    assert ServerConfig(host="0.0.0.0", api_key=Secret(KEY)).host == "0.0.0.0"
    assert ServerConfig(host="::1").host == "::1"  # loopback needs no key


@pytest.mark.parametrize(("changes", "parameter"), [
    ({"port": 70000}, "port"), ({"port": -1}, "port"), ({"workers": 0}, "workers"),
    ({"workers": -2}, "workers"), ({"max_message_bytes": 0}, "max_message_bytes"),
    ({"max_session_s": 0}, "max_session_s"), ({"ping_timeout": -1.0}, "ping_timeout"),
])
def test_server_config_names_a_bad_setting(changes: dict[str, Any], parameter: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        ServerConfig(**changes)
    assert info.value.parameter == parameter


def _english_models() -> Any:
    """LocalModels around an English-only scripted recogniser (what tiny.en is)."""
    from reson8_voice.engine.asr import ScriptedRecognizer
    from reson8_voice.engine.eot import ScriptedEndOfTurn
    from reson8_voice.engine.models import LocalModels

    return LocalModels(ScriptedRecognizer(["hello"], cycle=True), ScriptedEndOfTurn(0.0))


@pytest.mark.parametrize("path", [TURNS, REALTIME])
async def test_a_language_the_recogniser_cannot_do_is_refused_at_the_upgrade(
    path: str,
) -> None:
    """tiny.en is English only: language=fr used to be accepted and then fail the session
    at its first recognition (INTERNAL_ERROR, close 1011). The server learns the
    recogniser's languages from LocalModels.run (as the CLI passes it) and says 400."""
    models = _english_models()
    async with Reson8Server(ServerConfig(port=0), models.run) as srv:
        assert srv.languages == frozenset({"en"})
        for language in ("fr", "fr-FR", "de"):
            status, body = await _rejection(
                f"{srv.url}{path}?{urlencode({'encoding': 'pcm_s16le', 'language': language})}")
            assert (status, body["code"], body["parameter"]) == (400, "INVALID_REQUEST",
                                                                 "language")
            assert repr(language) in body["message"] and "supported: en" in body["message"]
        async with raw_connect(f"{srv.url}{path}?encoding=pcm_s16le&language=en-US") as ws:
            await ws.send(b"\x00" * 3200)
            await ws.ping()  # the session is open and well


async def test_languages_can_be_given_and_bare_runners_accept_any_code(
    server: Reson8Server,
) -> None:
    assert server.languages is None  # a bare function says nothing: any well-formed code
    async with raw_connect(f"{server.url}{TURNS}?encoding=pcm_s16le&language=fr"):
        pass
    async with Reson8Server(ServerConfig(port=0), scripted_runner(),
                            languages=frozenset({"en", "nl"})) as srv:
        async with raw_connect(f"{srv.url}{TURNS}?encoding=pcm_s16le&language=nl"):
            pass
        status, body = await _rejection(f"{srv.url}{TURNS}?encoding=pcm_s16le&language=fr")
        assert (status, body["parameter"]) == (400, "language")


async def test_the_dialects_refuse_an_unsupported_language_when_the_session_opens() -> None:
    """The gateway (init config) and Scribe (language_code) report it as their own
    parameter errors before any audio, not as a failed recognition later."""
    async with Reson8Server(ServerConfig(port=0), _english_models().run) as srv:
        async with raw_connect(srv.gateway_url) as ws:
            await ws.send(json.dumps({"type": "init", "config": {"language": "fr"}}))
            error = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert error["type"] == "error" and error["code"] == "invalid_config"
            assert "'language'" in error["message"] and "'fr'" in error["message"]
        async with raw_connect(f"{srv.scribe_url}/v1/speech-to-text/realtime"
                               "?model_id=scribe_v2_realtime&language_code=fr") as ws:
            error = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert error["message_type"] == "input_error" and "'fr'" in error["error"]


async def test_json_nested_too_deep_is_a_bad_message_not_a_failed_session(
    server: Reson8Server,
) -> None:
    """``"[" * 200000`` exhausts the JSON decoder's recursion. The realtime endpoint took
    that for its own failure (INTERNAL_ERROR, 1011, an ERROR traceback); it is a client's
    malformed message, skipped like any other, and the session goes on."""
    errors: list[str] = []
    sink = logger.add(errors.append, level="ERROR")
    try:
        async with raw_connect(f"{server.url}{REALTIME}?encoding=pcm_s16le") as ws:
            await ws.send("[" * 200_000)
            await ws.send(json.dumps({"type": "flush_request", "id": "after"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {
                "type": "flush_confirmation", "id": "after"}
    finally:
        logger.remove(sink)
    assert errors == []


async def test_a_flood_of_bad_messages_is_logged_in_a_few_lines_with_its_count(
    server: Reson8Server,
) -> None:
    """One warning per bad message let one client write 5,000 lines in half a second.
    The first 3 are logged, then the 10th, 100th and 1000th with the count so far, and
    the total when the session ends; the session itself goes on."""
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        async with raw_connect(f"{server.url}{REALTIME}?encoding=pcm_s16le") as ws:
            for _ in range(1000):
                await ws.send("not json")
            await ws.send(json.dumps({"type": "flush_request", "id": "sync"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["id"] == "sync"
        await asyncio.wait_for(server.wait_idle(), 10)
    finally:
        logger.remove(sink)
    bad = [w for w in warnings if "bad client message" in w]
    assert len(bad) == 6, bad
    assert all(w.endswith(f"({n} bad messages from this client so far; the others since the "
                       "first 3 were not logged)") for w, n in zip(bad[3:], (10, 100, 1000),
                                                                 strict=True))
    assert [w for w in warnings if "in all" in w] == [
        "reson8 server: the client sent 1000 bad messages in all"]


async def test_a_flush_before_the_header_does_not_fix_the_rate(server: Reson8Server) -> None:
    """encoding=auto: a flush_request before any audio used to build the engine at
    16 kHz, so the 8 kHz WAV that followed ran at double speed (times halved). It is
    confirmed at once, with nothing to transcribe, and the header still sets the rate."""
    fx = load_fixture("short_answers")
    async with raw_connect(f"{server.url}{REALTIME}?include_timestamps=true") as ws:
        await ws.send(json.dumps({"type": "flush_request", "id": "early"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {
            "type": "flush_confirmation", "id": "early"}
        pcm = fx.pcm16()
        await ws.send(_streaming_wav_header(8000, fmt=1, bits=16) + pcm[:16000])
        for i in range(16000, len(pcm), 16000):
            await ws.send(pcm[i:i + 16000])
        await ws.send(json.dumps({"type": "flush_request", "id": "late"}))
        finals: list[dict[str, Any]] = []
        while (message := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] \
                != "flush_confirmation":
            finals.append(message)
        assert message["id"] == "late"
    assert len(finals) == len(fx.turns)
    for final, truth in zip(finals, fx.turns, strict=True):
        assert abs(final["start_ms"] - truth.start_ms) <= 400, (final, truth)
        assert truth.duration_ms <= final["duration_ms"] <= truth.duration_ms + 1000


async def test_a_gateway_finalize_before_the_header_does_not_fix_the_rate(
    server: Reson8Server,
) -> None:
    import base64

    fx = load_fixture("short_answers")
    first = fx.turns[0]
    pcm = fx.pcm16()[: (first.end_ms + 1500) * 16]  # the first answer and 1.5 s of silence
    async with raw_connect(server.gateway_url) as ws:
        await ws.send(json.dumps({"type": "init", "config": {"encoding": "auto"}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"
        await ws.send(json.dumps({"type": "finalize"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == \
            "flush_confirmation"
        audio = _streaming_wav_header(8000, fmt=1, bits=16) + pcm
        await ws.send(json.dumps({"type": "audio",
                                  "data": base64.b64encode(audio).decode()}))
        final = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert final["type"] == "final_transcript"
    # the segment: the answer, the 300 ms pre-roll and the 300 ms of silence that end it
    assert first.duration_ms / 1000 + 0.4 <= final["duration"] <= first.duration_ms / 1000 + 1.0, \
        (final, first)


def _encode(samples: Any, rate: int, fmt: str, codec: str,
            options: dict[str, str] | None = None) -> bytes:
    """Mono int16 ``samples`` at ``rate`` encoded by PyAV into container ``fmt``."""
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono", options=options or {})
        for i in range(0, len(samples), rate // 50):
            frame = av.AudioFrame.from_ndarray(samples[None, i:i + rate // 50], format="s16",
                                               layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def _flac(pcm16: bytes, rate: int, *, live: bool = False) -> bytes:
    """FLAC of mono s16le audio with libFLAC's (and sox's) 4096-sample frames. ``live``
    zeroes the STREAMINFO sample count, as an encoder writing to a pipe leaves it."""
    import numpy as np

    samples = np.frombuffer(pcm16, dtype=np.int16)
    data = bytearray(_encode(samples, rate, "flac", "flac", {"frame_size": "4096"}))
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO at bytes 8..41
    total = ((data[21] & 0x0F) << 32) | int.from_bytes(data[22:26], "big")
    assert total == len(samples)
    if live:
        data[21] &= 0xF0
        data[22:26] = bytes(4)
    return bytes(data)


async def _send_for_turns(ws: Any, data: bytes, n: int) -> list[Any]:
    """Send ``data`` over a raw socket in 2000-byte messages, then read until ``n`` turns are
    complete; the turn state machine raises on any illegal sequence."""
    for i in range(0, len(data), 2000):
        await ws.send(data[i:i + 2000])
    checker = TurnStateMachine()
    turns = []
    while len(turns) < n:
        turn = checker.process(parse_event(await asyncio.wait_for(ws.recv(), 20)))
        if turn is not None:
            turns.append(turn)
    return turns


async def test_flac_is_not_held_back_while_the_stream_is_open(server: Reson8Server) -> None:
    """FFmpeg's FLAC demuxer looked ten frames ahead: 4.9 s of an 8 kHz stream with
    4096-sample frames stayed undecoded while the stream was open, longer than the
    fixture's 1.5 s of trailing silence, so the last turn never ended. Frames are now
    decoded as they complete: every turn ends, with the connection still open and the
    stream's length unknown (a live encoder's)."""
    fx = load_fixture("short_answers")
    data = _flac(fx.pcm16(), 8000, live=True)
    async with raw_connect(server.url + TURNS) as ws:  # encoding=auto
        turns = await _send_for_turns(ws, data, len(fx.turns))
        await ws.ping()  # still open: nothing ended the stream but its audio
    assert all(turn.text for turn in turns)  # each turn had its candidate


@pytest.mark.parametrize("container", ["flac", "wav"])
async def test_the_end_of_a_sized_stream_ends_the_last_turn(
    server: Reson8Server, container: str,
) -> None:
    """A FLAC with its sample count (or a WAV with its data size) is over once it has all
    arrived: the decoder's tail goes to the engine and its stream ends, so the last turn is
    committed although only 300 ms of silence follow it (turn_end needs 720-780 ms). Bytes
    after the end are ignored and the session stays open."""
    fx = load_fixture("short_answers")
    last = fx.turns[-1]
    pcm = fx.pcm16()[: (last.end_ms + 300) * 16]
    if container == "flac":
        data = _flac(pcm, 8000)
    else:
        data = (_streaming_wav_header(8000, fmt=1, bits=16)[:40] + struct.pack("<I", len(pcm))
                + pcm)
    async with raw_connect(server.url + TURNS) as ws:  # encoding=auto
        turns = await _send_for_turns(ws, data, len(fx.turns))
        await ws.send(b"LIST" + bytes(100))  # a trailing chunk: ignored
        await ws.ping()
    assert len(turns) == len(fx.turns) and all(t.text for t in turns)


async def test_the_end_of_a_sized_flac_gives_the_realtime_final(server: Reson8Server) -> None:
    fx = load_fixture("short_answers")
    last = fx.turns[-1]
    data = _flac(fx.pcm16()[: (last.end_ms + 100) * 16], 8000)  # too little silence to end it
    async with raw_connect(server.url + REALTIME + "?include_timestamps=true") as ws:
        for i in range(0, len(data), 2000):
            await ws.send(data[i:i + 2000])
        finals = [json.loads(await asyncio.wait_for(ws.recv(), 20)) for _ in fx.turns]
        await ws.send(json.dumps({"type": "flush_request", "id": "after"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {
            "type": "flush_confirmation", "id": "after"}
    assert [f["type"] for f in finals] == ["transcript"] * len(fx.turns)
    assert abs(finals[-1]["start_ms"] - last.start_ms) <= 400


def _slow_runner(seconds: float) -> Callable[[Any], Any]:
    """The scripted runner, each job taking ``seconds`` (inference that keeps a backlog)."""
    import time

    run = scripted_runner()

    def slow(job: Any) -> Any:
        time.sleep(seconds)
        return run(job)

    return slow


async def test_a_client_sending_big_messages_at_full_speed_keeps_its_session() -> None:
    """Audio in 256 KiB messages as fast as the socket takes it: the client's pong waits in
    the socket behind audio the server has not read yet (its own backlog), so it arrives
    late. That used to drop the client with "keepalive ping timeout" (1011) once the
    message queue filled; a session making progress is not a dead peer. (Ping every
    0.2 s, timeout 0.5 s, so the backlog outlasts the timeout many times over.)"""
    config = ServerConfig(port=0, ping_interval=0.2, ping_timeout=0.5)
    pcm = load_fixture("call_delivery").pcm16()
    message = (pcm * 3)[: 256 * 1024]
    count = 24  # 6 MiB, 6.5 minutes of 8 kHz audio
    async with Reson8Server(config, _slow_runner(0.03)) as srv:
        url = f"{srv.url}{REALTIME}?encoding=pcm_s16le&sample_rate=8000"
        async with raw_connect(url, max_size=None) as ws:
            got: list[dict[str, Any]] = []

            async def read() -> None:
                async for raw in ws:
                    got.append(json.loads(raw))
                    if got[-1]["type"] == "flush_confirmation":
                        return

            reader = asyncio.create_task(read())
            for _ in range(count):
                await ws.send(message)
            await ws.send(json.dumps({"type": "flush_request", "id": "end"}))
            await asyncio.wait_for(reader, 30)
            assert got[-1] == {"type": "flush_confirmation", "id": "end"}
            assert sum(g["type"] == "transcript" for g in got) >= count  # it all was heard
            assert srv.sessions_active == 1
            await ws.ping()  # and the connection is still well


async def test_a_client_that_stops_answering_is_still_dropped() -> None:
    """The keep-alive waits for a late pong only while the session makes progress: a
    client that neither sends nor reads (gone without a FIN) is dropped within about
    ping_interval + ping_timeout."""
    config = ServerConfig(port=0, ping_interval=0.2, ping_timeout=0.5)
    async with Reson8Server(config, scripted_runner()) as srv:
        async with raw_connect(f"{srv.url}{TURNS}?encoding=pcm_s16le") as ws:
            await ws.send(bytes(3200))
            await ws.ping()
            assert srv.sessions_active == 1
            ws.transport.pause_reading()  # pings go unanswered from now on
            await asyncio.wait_for(srv.wait_idle(), 5)
            assert srv.sessions_active == 0
            ws.transport.abort()


async def _expect_error_then_1009(ws: Any) -> dict[str, Any]:
    error = json.loads(await asyncio.wait_for(ws.recv(), 10))
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), 10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    return dict(error)


@pytest.mark.parametrize("size", [(1 << 20) + 1, 5 << 20])
async def test_every_oversized_binary_message_gets_the_json_error(
    server: Reson8Server, size: int,
) -> None:
    """websockets' own limit used to be 4 x the documented one: over 4 MiB the client got
    a bare 1009 and no error message. The limit is now the documented one, checked on the
    frame header, and the error message goes out before the close whatever the size."""
    ws = await raw_connect(server.url + TURNS + "?encoding=pcm_s16le", max_size=None)
    sender = asyncio.create_task(ws.send(bytes(size)))
    error = await _expect_error_then_1009(ws)
    with contextlib.suppress(ConnectionClosed):
        await sender
    # (no ws.close(): the connection is closed, and websockets' client then trips over
    # asyncio's closed transport when its own send was cut short)
    assert error == {"type": "error", "code": "MESSAGE_TOO_LARGE",
                     "message": "messages are limited to 1048576 bytes"}


async def test_a_text_message_is_measured_in_bytes(server: Reson8Server) -> None:
    """A text message was measured in characters: 600,000 'é' (1.2 MB of UTF-8) passed a
    1 MiB limit. Its UTF-8 bytes count now."""
    text = json.dumps({"type": "flush_request", "id": "é" * 600_000}, ensure_ascii=False)
    assert len(text) < 1 << 20 < len(text.encode())
    async with raw_connect(server.url + REALTIME + "?encoding=pcm_s16le") as ws:
        await ws.send(text)
        error = await _expect_error_then_1009(ws)
    assert error["code"] == "MESSAGE_TOO_LARGE"


async def test_a_frame_declaring_a_terabyte_is_refused_from_its_header(
    server: Reson8Server,
) -> None:
    """Nothing of an oversized payload is buffered: a frame header declaring 2**40 bytes,
    with no payload behind it, gets the error and the close at once."""
    async with raw_connect(server.url + TURNS + "?encoding=pcm_s16le") as ws:
        # FIN + binary, masked, 64-bit length 2**40, a mask key, and no payload at all
        ws.transport.write(b"\x82\xff" + (1 << 40).to_bytes(8, "big") + b"\x01\x02\x03\x04")
        error = await _expect_error_then_1009(ws)
    assert error["code"] == "MESSAGE_TOO_LARGE"


@pytest.mark.parametrize("dialect", ["gateway", "scribe"])
async def test_the_dialects_say_why_a_message_was_too_large(
    server: Reson8Server, dialect: str,
) -> None:
    if dialect == "gateway":
        url, expect = server.gateway_url, ("code", "message_too_large")
    else:
        url = f"{server.scribe_url}/v1/speech-to-text/realtime?model_id=scribe_v2_realtime"
        expect = ("message_type", "chunk_size_exceeded")
    ws = await raw_connect(url, max_size=None)
    if dialect == "gateway":
        await ws.send(json.dumps({"type": "init", "config": {}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"
    else:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["message_type"] == \
            "session_started"
    sender = asyncio.create_task(ws.send("x" * (5 << 20)))
    error = await _expect_error_then_1009(ws)
    with contextlib.suppress(ConnectionClosed):
        await sender
    assert error[expect[0]] == expect[1]


async def test_a_flush_request_with_a_non_string_id_is_an_error(server: Reson8Server) -> None:
    """spec 000: the id is a string (or absent) and comes back in the confirmation. A number
    used to be dropped silently, leaving the client waiting for a confirmation that never
    came; it is now an INVALID_REQUEST error naming the field, and a close (1008)."""
    async with raw_connect(server.url + REALTIME + "?encoding=pcm_s16le") as ws:
        await ws.send(bytes(3200))
        await ws.send(json.dumps({"type": "flush_request", "id": 42}))
        error = json.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 10)
    assert error["type"] == "error" and error["code"] == "INVALID_REQUEST"
    assert "'id' must be a string" in error["message"]
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008


async def test_realtime_interims_carry_words_and_times_when_asked(
    server: Reson8Server,
) -> None:
    """spec 000: start_ms/duration_ms with include_timestamps, words with include_words
    (their times and confidence as asked) on transcripts, interim ones included; interims
    used to carry the text alone."""
    fx = load_fixture("long_turn")
    query = urlencode({"encoding": "pcm_s16le", "sample_rate": 8000, "include_interim": "true",
                       "include_words": "true", "include_timestamps": "true",
                       "include_confidence": "true"})
    async with raw_connect(f"{server.url}{REALTIME}?{query}") as ws:
        pcm = fx.pcm16()
        for i in range(0, len(pcm), 16000):
            await ws.send(pcm[i:i + 16000])
        await ws.send(json.dumps({"type": "flush_request", "id": "end"}))
        got: list[dict[str, Any]] = []
        while (message := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] \
                != "flush_confirmation":
            got.append(message)
    interims = [m for m in got if m["is_final"] is False]
    assert interims and any(m["is_final"] for m in got)
    for m in interims:
        assert m["words"] and {"start_ms", "duration_ms"} <= m.keys()
        assert " ".join(w["text"] for w in m["words"]) == m["text"]
        for w in m["words"]:
            assert {"text", "start_ms", "duration_ms", "confidence"} == w.keys()
            assert m["start_ms"] <= w["start_ms"] <= m["start_ms"] + m["duration_ms"]


def _recording_runner(durations: list[tuple[bool, float]]) -> Callable[[Any], Any]:
    """The scripted runner, noting (want_words, seconds) for each recognition."""
    from reson8_voice.engine.turn_engine import RecognizeJob

    run = scripted_runner()

    def record(job: Any) -> Any:
        if isinstance(job, RecognizeJob):
            durations.append((job.want_words, len(job.pcm16) / 2 / job.sample_rate))
        return run(job)

    return record


async def test_interim_re_recognition_is_bounded_on_a_long_segment() -> None:
    """A segment of 139 s with no pause long enough to end it (segment_silence_ms 2 s):
    each interim used to recognise the whole segment so far (~70x the audio in all). Now
    an interim hears at most interim_window_ms plus an interval and keeps the words before
    from earlier interims, so its text still covers the whole segment; the final hears
    all of it."""
    from reson8_voice.engine.turn_engine import EngineConfig

    fx = load_fixture("long_turn")
    turn = fx.turns[0]
    one = fx.pcm16()[(turn.start_ms - 100) * 16:(turn.end_ms + 100) * 16]
    pcm = one * 8
    seconds = len(pcm) / 16000
    engine = EngineConfig(segment_silence_ms=2000)
    jobs: list[tuple[bool, float]] = []
    query = "encoding=pcm_s16le&sample_rate=8000&include_interim=true"
    async with Reson8Server(ServerConfig(port=0, engine=engine), _recording_runner(jobs)) as srv:
        async with raw_connect(f"{srv.url}{REALTIME}?{query}") as ws:
            for i in range(0, len(pcm), 32000):
                await ws.send(pcm[i:i + 32000])
            await ws.send(json.dumps({"type": "flush_request", "id": "end"}))
            got: list[dict[str, Any]] = []
            while (message := json.loads(await asyncio.wait_for(ws.recv(), 20)))["type"] \
                    != "flush_confirmation":
                got.append(message)
    interims = [m for m in got if m["is_final"] is False]
    finals = [m for m in got if m["is_final"]]
    assert len(finals) == 1 and len(interims) > 100
    *interim_jobs, final_job = jobs
    assert final_job[1] > seconds - 1  # the final heard the whole segment
    assert max(s for _, s in interim_jobs) <= engine.interim_window_ms / 1000 + 1.5
    total = sum(s for _, s in interim_jobs)
    assert total < 12 * seconds, f"{total / seconds:.1f}x the audio re-recognised"
    # the last interim's text still spans the segment: one scripted word per 250 ms
    words = len(interims[-1]["text"].split())
    assert words >= 0.9 * (seconds - 1.5) / 0.25, words


@pytest.mark.parametrize("chunk", [7, 333, 4096, 1 << 30])
def test_the_flac_decoder_matches_ffmpegs_demuxer_however_the_stream_is_cut(
    chunk: int,
) -> None:
    """Frames found by sync code and header CRC, confirmed by decoding: the same audio as
    FFmpeg's demuxer (through the same resampler), whatever the message boundaries, past a
    100 KB metadata block (dropped as it streams, not buffered)."""
    import io

    import av

    from reson8_voice.server.container import FlacDecoder

    pcm = load_fixture("short_answers").pcm16()
    data = _flac(pcm[: len(pcm) // 2] if chunk == 7 else pcm, 8000)
    assert data[4] & 0x80 == 0  # STREAMINFO is not the last block: a PADDING goes after it
    data = data[:42] + b"\x01" + (100_000).to_bytes(3, "big") + bytes(100_000) + data[42:]
    with av.open(io.BytesIO(data)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        frames = [out for frame in container.decode(audio=0)
                  for out in resampler.resample(frame)]
        frames += resampler.resample(None)
    reference = b"".join(f.to_ndarray().astype("<i2").tobytes() for f in frames)
    decoder = FlacDecoder()
    parts, most = [], 0
    for i in range(0, len(data), chunk):
        parts.append(decoder.feed(data[i:i + chunk]))
        most = max(most, len(decoder._buf))
    assert decoder.ended and decoder.close() == b""
    assert b"".join(parts) == reference
    if chunk < len(data):  # at most a frame and a message held, never the 100 KB block
        assert most <= max(chunk, 16_000), most
