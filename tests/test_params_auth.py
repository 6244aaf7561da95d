"""Connection parameters and credentials: validation, query strings, headers, redaction."""

from __future__ import annotations

import pickle
from urllib.parse import parse_qs, urlsplit

import pytest

from reson8_voice import (
    ApiKey,
    BearerToken,
    InvalidRequest,
    RealtimeParams,
    Secret,
    TurnsParams,
    auth_headers,
    endpoint_url,
    parse_auth,
)
from reson8_voice.auth import redact


def test_turns_defaults_are_the_spec_defaults() -> None:
    p = TurnsParams()
    assert (p.encoding, p.sample_rate, p.channels) == ("auto", 16000, 1)
    assert not (p.include_timestamps or p.include_words or p.include_language)
    assert p.to_query_dict() == {"encoding": "auto", "sample_rate": "16000", "channels": "1"}


def test_turns_query_round_trip_with_every_field() -> None:
    p = TurnsParams(encoding="mulaw", sample_rate=8000, channels=1, language="en",
                    custom_model_id="cm_42", include_timestamps=True, include_words=True,
                    include_language=True, patterns=("[A-Z]{3}[0-9]{3}", "ORD-[0-9]+"))
    query = p.to_query()
    assert parse_qs(query)["patterns"] == ["[A-Z]{3}[0-9]{3},ORD-[0-9]+"]
    assert TurnsParams.from_query(query) == p
    assert TurnsParams.from_query("?" + query) == p


def test_realtime_query_round_trip() -> None:
    p = RealtimeParams(encoding="pcm_s16le", sample_rate=8000, include_interim=True,
                       include_confidence=True, include_words=True)
    assert RealtimeParams.from_query(p.to_query()) == p


def test_patterns_accept_a_list() -> None:
    assert TurnsParams(patterns=["AB[0-9]"]).patterns == ("AB[0-9]",)  # type: ignore[arg-type]


@pytest.mark.parametrize(("cls", "query", "parameter"), [
    (TurnsParams, "encoding=opus", "encoding"),
    (RealtimeParams, "encoding=mulaw", "encoding"),
    (RealtimeParams, "encoding=alaw", "encoding"),
    (TurnsParams, "sample_rate=abc", "sample_rate"),
    (TurnsParams, "sample_rate=%C2%B2", "sample_rate"),  # a Unicode digit that int() refuses
    (TurnsParams, "sample_rate=-8000", "sample_rate"),
    (TurnsParams, "sample_rate=7999", "sample_rate"),
    (TurnsParams, "sample_rate=96000", "sample_rate"),
    (TurnsParams, "channels=0", "channels"),
    (TurnsParams, "channels=99", "channels"),
    (TurnsParams, "include_words=maybe", "include_words"),
    (RealtimeParams, "include_interim=yes", "include_interim"),
    (TurnsParams, "language=english!", "language"),
    (TurnsParams, "language=", "language"),
    (TurnsParams, "custom_model_id=a%20b", "custom_model_id"),
    (TurnsParams, "patterns=[unclosed", "patterns"),
    (TurnsParams, "encoding=mulaw&encoding=alaw", "encoding"),
])
def test_invalid_values_name_the_parameter(cls: type, query: str, parameter: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        cls.from_query(query)  # type: ignore[attr-defined]
    assert info.value.parameter == parameter
    assert parameter in str(info.value)


def test_constructor_validates_too() -> None:
    with pytest.raises(InvalidRequest, match="sample_rate"):
        TurnsParams(sample_rate=True)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="patterns"):
        TurnsParams(patterns=("a,b",))
    with pytest.raises(InvalidRequest, match="patterns"):
        TurnsParams(patterns="abc")  # type: ignore[arg-type]


def test_repeated_identical_values_and_unknown_parameters_are_fine() -> None:
    p = TurnsParams.from_query("encoding=alaw&encoding=alaw&sample_rate=8000&future_flag=1")
    assert p.encoding == "alaw" and p.sample_rate == 8000


def test_bytes_per_second() -> None:
    assert TurnsParams(encoding="mulaw", sample_rate=8000).bytes_per_second == 8000
    assert TurnsParams(encoding="pcm_s16le", sample_rate=16000, channels=2)\
        .bytes_per_second == 64000
    assert TurnsParams().bytes_per_second is None


@pytest.mark.parametrize(("base", "path"), [
    ("ws://127.0.0.1:8765", "/v1/speech-to-text/turns"),
    ("ws://127.0.0.1:8765/", "/v1/speech-to-text/turns"),
    ("wss://api.reson8.dev/v1/speech-to-text/turns", "/v1/speech-to-text/turns"),
    ("ws://proxy.local/reson8", "/reson8/v1/speech-to-text/turns"),
])
def test_endpoint_url(base: str, path: str) -> None:
    url = endpoint_url(base, TurnsParams(encoding="mulaw", sample_rate=8000))
    parts = urlsplit(url)
    assert parts.path == path
    assert parse_qs(parts.query)["encoding"] == ["mulaw"]


@pytest.mark.parametrize("url", ["https://api.reson8.dev", "ws://[::1:8765", "ws://host:99999",
                                 "ws:///path", "127.0.0.1:8765"])
def test_a_bad_url_is_refused_by_every_client_and_service(url: str) -> None:
    """The typed error, naming ``url``, wherever a URL is taken (urlsplit's bare ValueError
    for a broken IPv6 host or a port out of range escaped before)."""
    from reson8_voice.dialects.gateway_client import gateway_url
    from reson8_voice.dialects.scribe import ScribeParams
    from reson8_voice.dialects.scribe_client import scribe_url
    from reson8_voice.pipecat import Reson8RealtimeSTTService, Reson8TurnsSTTService

    for build in (lambda: endpoint_url(url, TurnsParams()), lambda: gateway_url(url),
                  lambda: scribe_url(url, ScribeParams()),
                  lambda: Reson8TurnsSTTService(url=url),
                  lambda: Reson8RealtimeSTTService(url=url)):
        with pytest.raises(InvalidRequest) as info:
            build()
        assert info.value.parameter == "url"


KEY = "r8_live_SECRETKEY_0123456789"


def test_auth_headers_for_each_scheme() -> None:
    assert auth_headers(ApiKey.of(KEY)) == ({"Authorization": f"ApiKey {KEY}"}, [])
    assert auth_headers(BearerToken.of(KEY)) == ({"Authorization": f"Bearer {KEY}"}, [])
    assert auth_headers(BearerToken.of(KEY, via="subprotocol")) == ({}, ["bearer", KEY])
    assert auth_headers(None) == ({}, [])


@pytest.mark.parametrize("credentials", [
    ApiKey.of(KEY), BearerToken.of(KEY), BearerToken.of(KEY, via="subprotocol"),
])
def test_parse_auth_round_trips(credentials: ApiKey | BearerToken) -> None:
    headers, subprotocols = auth_headers(credentials)
    assert parse_auth(headers, subprotocols) == credentials


@pytest.mark.parametrize(("headers", "subprotocols"), [
    ({}, []), ({"Authorization": "Basic abc"}, []), ({"Authorization": "ApiKey"}, []),
    ({"Authorization": "ApiKey   "}, []), ({}, ["bearer"]), ({}, ["chat", KEY]),
    ({"Authorization": "Bearer a\x00b"}, []),
])
def test_parse_auth_rejects_absent_or_malformed(headers: dict[str, str],
                                                subprotocols: list[str]) -> None:
    assert parse_auth(headers, subprotocols) is None


def test_parse_auth_is_case_insensitive_on_scheme() -> None:
    assert parse_auth({"authorization": f"apikey {KEY}"}) == ApiKey.of(KEY)


def test_secrets_never_print() -> None:
    cred = ApiKey.of(KEY)
    for text in (str(cred), repr(cred), f"{cred}", repr(cred.secret), str(cred.secret),
                 repr(BearerToken.of(KEY)), repr([cred])):
        assert KEY not in text
    with pytest.raises(TypeError):
        pickle.dumps(cred.secret)


def test_secret_matches_in_constant_time_semantics() -> None:
    s = Secret(KEY)
    assert s.matches(KEY) and s.matches(Secret(KEY))
    assert not s.matches(KEY + "x") and not s.matches("")


def test_secret_refuses_unprintable_values_without_echoing_them() -> None:
    with pytest.raises(InvalidRequest) as info:
        Secret("abc def SECRETPART")
    assert "SECRETPART" not in str(info.value)


def test_redact() -> None:
    assert redact(f"GET /?token={KEY} failed", Secret(KEY), None) == "GET /?token=*** failed"
