"""The gateway framing of Reson8 realtime (spec 002): wire format, client, embedded server.

Every JSON example of spec 002 is a parse and round-trip vector; the embedded server's
gateway endpoint is checked by a raw ``websockets`` client written from the document, and
the project's client against it.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect as raw_connect
from websockets.exceptions import ConnectionClosed as WsConnectionClosed

from reson8_voice import InvalidRequest, RemoteProtocolError, Secret, UnknownEvent
from reson8_voice.dialects import (
    GATEWAY_PATH,
    WORLD_PART_HEADER,
    GatewayAudio,
    GatewayAuthError,
    GatewayClose,
    GatewayConfig,
    GatewayErrorEvent,
    GatewayFinalize,
    GatewayFinalTranscript,
    GatewayFlushConfirmation,
    GatewayInit,
    GatewayKeepalive,
    GatewayPartialTranscript,
    GatewayReady,
    GatewayRequestError,
    GatewayServiceError,
    gateway_error,
    parse_gateway,
    serialize_gateway,
)
from reson8_voice.dialects.gateway import gateway_to_dict
from reson8_voice.dialects.gateway_client import connect_gateway, gateway_url
from reson8_voice.engine.turn_engine import EngineConfig
from reson8_voice.server import Reson8Server, ServerConfig

from .audio_fixtures import load_fixture
from .conftest import scripted_runner
from .spec_vectors import load

KEY = "slng_test_key_0123456789"
VECTORS = load("002")

#: spec 002's messages: type -> (class, {field: JSON type})
TABLE: dict[str, tuple[type, dict[str, type]]] = {
    "init": (GatewayInit, {"config": dict}),
    "audio": (GatewayAudio, {"data": str}),
    "finalize": (GatewayFinalize, {}),
    "close": (GatewayClose, {}),
    "keepalive": (GatewayKeepalive, {}),
    "ready": (GatewayReady, {"session_id": str}),
    "partial_transcript": (GatewayPartialTranscript, {"transcript": str, "confidence": float}),
    "final_transcript": (GatewayFinalTranscript, {"transcript": str, "confidence": float,
                                                  "language": str, "duration": float}),
    "flush_confirmation": (GatewayFlushConfirmation, {"id": str}),
    "error": (GatewayErrorEvent, {"code": str, "message": str}),
}


def test_vectors_cover_every_message_of_the_document() -> None:
    assert [v["type"] for v in VECTORS] == list(TABLE)


@pytest.mark.parametrize("vector", VECTORS, ids=[v["type"] for v in VECTORS])
def test_spec_example_parses_and_round_trips(vector: dict[str, Any]) -> None:
    message = parse_gateway(json.dumps(vector, indent=2))
    cls, fields = TABLE[vector["type"]]
    assert type(message) is cls
    assert json.loads(serialize_gateway(message)) == vector
    for name, value in vector.items():
        if name == "type":
            continue
        assert isinstance(value, fields[name])
        if name != "config":
            assert getattr(message, name) == value


def test_init_config_maps_to_realtime_parameters() -> None:
    init = parse_gateway(json.dumps(VECTORS[0]))
    assert isinstance(init, GatewayInit)
    params = init.config.to_realtime_params()
    assert (params.encoding, params.sample_rate, params.channels, params.include_interim) == \
        ("pcm_s16le", 16000, 1, True)
    config = GatewayConfig(sample_rate=8000, language="nl", include_words=True,
                           extra={"vendor_flag": 1})
    assert gateway_to_dict(GatewayInit(config))["config"] == \
        {"sample_rate": 8000, "language": "nl", "include_words": True, "vendor_flag": 1}
    assert parse_gateway(serialize_gateway(GatewayInit(config))) == GatewayInit(config)


@pytest.mark.parametrize(("config", "field"), [
    ({"encoding": "opus"}, "encoding"), ({"sample_rate": 12}, "sample_rate"),
    ({"channels": 0}, "channels"), ({"language": "!!"}, "language"),
])
def test_bad_configs_name_the_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        GatewayConfig.from_dict(config).to_realtime_params()
    assert info.value.parameter == field


@pytest.mark.parametrize("text", [
    "not json", "[]", '{"data": "x"}', '{"type": "audio"}', '{"type": "ready", "session_id": 5}',
    '{"type": "final_transcript", "transcript": "x", "confidence": "high"}',
    '{"type": "init", "config": []}', '{"type": "init", "config": {"sample_rate": "8k"}}',
])
def test_malformed_messages_raise_remote_protocol_error(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_gateway(text)


def test_unknown_types_and_extra_fields_are_tolerated() -> None:
    assert parse_gateway('{"type": "utterance_end", "last_word_end": 2.48}') == \
        UnknownEvent("utterance_end", {"type": "utterance_end", "last_word_end": 2.48})
    assert parse_gateway('{"type": "ready", "session_id": "s", "region": "eu"}') == \
        GatewayReady("s")


def test_audio_is_base64_and_the_spec_example_is_kept_as_sent() -> None:
    assert GatewayAudio.of(b"\x00\x01\xff").decode() == b"\x00\x01\xff"
    example = parse_gateway(json.dumps(VECTORS[1]))
    assert isinstance(example, GatewayAudio)
    with pytest.raises(RemoteProtocolError):  # the document's sample is truncated ("...")
        example.decode()


def test_error_codes_map_to_typed_errors() -> None:
    auth = parse_gateway(json.dumps(VECTORS[-1]))
    assert isinstance(auth, GatewayErrorEvent)
    err = auth.exception()
    assert isinstance(err, GatewayAuthError) and err.fatal and not err.retryable
    assert err.category == "authentication" and err.code == "auth_error"
    assert "Invalid or expired API key" in str(err)
    assert isinstance(gateway_error("invalid_config", "x"), GatewayRequestError)
    other = gateway_error("provider_error", "upstream unavailable")
    assert type(other) is GatewayServiceError and other.retryable and not other.fatal


# -- the embedded server, from the document --------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[Reson8Server]:
    async with Reson8Server(ServerConfig(port=0, api_key=Secret(KEY)), scripted_runner()) as s:
        yield s


def _audio(pcm: bytes, step: int = 3200) -> list[str]:
    return [json.dumps({"type": "audio", "data": base64.b64encode(pcm[i:i + step]).decode()})
            for i in range(0, len(pcm), step)]


async def _read_until_closed(ws: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(20):
            async for raw in ws:
                out.append(json.loads(raw))
    except WsConnectionClosed:
        pass
    return out


async def test_raw_client_session_from_the_document(server: Reson8Server) -> None:
    fx = load_fixture("short_answers")
    headers = {"Authorization": f"Bearer {KEY}", WORLD_PART_HEADER: "eu"}
    async with raw_connect(server.url + GATEWAY_PATH, additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "init", "config": {
            "encoding": "pcm_s16le", "sample_rate": 8000, "channels": 1,
            "enable_partials": True}}))
        ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ready["type"] == "ready" and ready["session_id"].startswith("sess_")
        first = fx.turns[0]
        cut = (first.end_ms + 100) * 16  # before the server's own end of segment
        for message in _audio(fx.pcm16()[:cut]):
            await ws.send(message)
        await ws.send(json.dumps({"type": "keepalive"}))
        await ws.send(json.dumps({"type": "finalize"}))
        got = []
        while not got or got[-1]["type"] != "flush_confirmation":
            got.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        assert [m["type"] for m in got] == ["final_transcript", "flush_confirmation"]
        final = got[0]
        assert set(final) == {"type", "transcript", "confidence", "language", "duration"}
        assert final["transcript"] and final["language"] == "en"
        assert 0 < final["confidence"] <= 1 and 0 < final["duration"] < 2
        assert got[1] == {"type": "flush_confirmation", "id": "flush-001"}
        for message in _audio(fx.pcm16()[cut:]):
            await ws.send(message)
        await ws.send(json.dumps({"type": "close"}))
        rest = await _read_until_closed(ws)
        assert ws.close_code == 1000
    finals = [m for m in rest if m["type"] == "final_transcript"]
    assert len(finals) == len(fx.turns) - 1  # the remaining answers, before the close
    assert server.gateway.stats["keepalives"] == 1 and server.gateway.stats["closes"] == 1


@pytest.mark.parametrize(("headers", "first", "code"), [
    ({}, None, "auth_error"),
    ({"Authorization": f"ApiKey {KEY}"}, None, "auth_error"),
    ({"Authorization": f"Bearer {KEY}", WORLD_PART_HEADER: "mars"}, None,
     "invalid_world_part"),
    ({"Authorization": f"Bearer {KEY}"}, {"type": "audio", "data": ""}, "not_initialized"),
    ({"Authorization": f"Bearer {KEY}"}, {"type": "init", "config": {"sample_rate": 12}},
     "invalid_config"),
    # an init was sent: a field of the wrong type is a bad config, not a missing init
    ({"Authorization": f"Bearer {KEY}"}, {"type": "init", "config": {"sample_rate": "8000"}},
     "invalid_config"),
])
async def test_refusals_are_error_messages_then_a_close(
    server: Reson8Server, headers: dict[str, str], first: dict[str, Any] | None, code: str,
) -> None:
    async with raw_connect(server.url + GATEWAY_PATH, additional_headers=headers) as ws:
        if first is not None:
            await ws.send(json.dumps(first))
        messages = await _read_until_closed(ws)
        assert ws.close_code == 1008
    assert messages[0]["type"] == "error" and messages[0]["code"] == code
    assert KEY not in json.dumps(messages)
    if code == "invalid_config":
        assert "sample_rate" in messages[0]["message"]


async def test_client_session_and_typed_auth_error(server: Reson8Server) -> None:
    fx = load_fixture("short_answers")
    config = GatewayConfig(encoding="pcm_s16le", sample_rate=8000, channels=1)
    async with await connect_gateway(server.url, config, KEY, world_part="eu") as conn:
        assert conn.session_id.startswith("sess_")
        await conn.send_audio(fx.pcm16()[: fx.turns[1].end_ms * 16])
        await conn.finalize()
        got: list[Any] = []
        async for message in conn:
            got.append(message)
            if isinstance(message, GatewayFlushConfirmation):
                break
    assert [type(m) for m in got] == [GatewayFinalTranscript] * 2 + [GatewayFlushConfirmation]
    with pytest.raises(GatewayAuthError) as info:
        await connect_gateway(server.url, config, "slng_wrong_SECRET99")
    assert "SECRET99" not in str(info.value)
    with pytest.raises(InvalidRequest):
        await connect_gateway(server.url, config, KEY, world_part="mars")
    with pytest.raises(InvalidRequest):  # never sends a key in clear to a remote host
        await connect_gateway("ws://example.com", config, KEY)
    assert gateway_url("wss://api.slng.ai") == "wss://api.slng.ai" + GATEWAY_PATH


async def test_raw_audio_under_auto_is_told_only_the_encodings_init_accepts(
    server: Reson8Server,
) -> None:
    # the config is realtime's (spec 000: auto or pcm_s16le): the error must not advise
    # mulaw or alaw, which an init then refuses as invalid_config
    headers = {"Authorization": f"Bearer {KEY}"}
    async with raw_connect(server.url + GATEWAY_PATH, additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "init", "config": {"encoding": "auto"}}))
        ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ready["type"] == "ready"
        await ws.send(_audio(bytes(3200))[0])
        messages = await _read_until_closed(ws)
        assert ws.close_code == 1003
    assert messages[0]["type"] == "error" and messages[0]["code"] == "invalid_audio"
    advice = messages[0]["message"]
    assert "encoding=pcm_s16le" in advice
    assert "mulaw" not in advice and "alaw" not in advice


async def test_partials_carry_a_confidence_like_the_documents_example() -> None:
    # spec 002: {"type": "partial_transcript", "transcript": "Hello wor", "confidence": 0.85}
    fx = load_fixture("short_answers")
    config = ServerConfig(port=0, engine=EngineConfig(interim_interval_ms=200))
    async with Reson8Server(config, scripted_runner()) as srv, \
            raw_connect(srv.url + GATEWAY_PATH) as ws:
        await ws.send(json.dumps({"type": "init", "config": {
            "encoding": "pcm_s16le", "sample_rate": 8000, "channels": 1,
            "enable_partials": True}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"
        for message in _audio(fx.pcm16()[: (fx.turns[0].end_ms + 100) * 16]):
            await ws.send(message)
        await ws.send(json.dumps({"type": "finalize"}))
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while not got or got[-1]["type"] != "flush_confirmation":
                got.append(json.loads(await ws.recv()))
    partials = [m for m in got if m["type"] == "partial_transcript"]
    assert partials
    for partial in partials:
        assert set(partial) == {"type", "transcript", "confidence"}
        assert isinstance(partial["confidence"], float) and 0 < partial["confidence"] <= 1
