"""The gateway's JSON framing of Reson8 realtime (spec 002), as sans-I/O messages.

A speech gateway in front of Reson8 wraps the realtime endpoint (spec 000) in JSON: the
client opens with ``init`` (its ``config`` is the provider's recognition configuration),
waits for ``ready`` (a ``session_id``), then streams base64 ``audio`` messages, asks for
``finalize`` (the gateway's name for a flush), sends ``keepalive`` during silence and
``close`` at the end. The server answers ``partial_transcript`` (with ``enable_partials``),
``final_transcript`` (confidence, language, duration in seconds), ``flush_confirmation``
and ``error`` (``code``, ``message``).

Auth is ``Authorization: Bearer <key>`` on the upgrade; the region ("world part") is
chosen with the ``X-World-Part-Override`` header, auto-selected when absent (spec 002
lists ``eu``). The endpoint path is not in spec 002's text: :data:`GATEWAY_PATH` follows
the gateway's ``/v1/stt/<provider>/<model>:<variant>`` scheme.

Rules (as in :mod:`reson8_voice.wire`): unknown extra fields are tolerated, an unknown
``type`` parses to :class:`~reson8_voice.events.UnknownEvent`, malformed input raises
:class:`~reson8_voice.errors.RemoteProtocolError`, and optional fields absent on the wire
stay absent when serialized, so every spec example round-trips to the same JSON value.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

from .._fields import FieldError as _FieldError
from .._fields import decode_tagged as _decode_tagged
from .._fields import opt_bool as _opt_bool
from .._fields import opt_int as _opt_int
from .._fields import opt_num as _opt_num
from .._fields import opt_str as _opt_str
from .._fields import req_str as _str
from ..errors import InvalidRequest, LocalProtocolError, RemoteProtocolError, ServiceError
from ..events import UnknownEvent
from ..params import RealtimeParams

__all__ = [
    "GATEWAY_PATH",
    "HOSTED_GATEWAY_URL",
    "WORLD_PARTS",
    "WORLD_PART_HEADER",
    "GatewayAudio",
    "GatewayAuthError",
    "GatewayClientMessage",
    "GatewayClose",
    "GatewayConfig",
    "GatewayErrorEvent",
    "GatewayFinalTranscript",
    "GatewayFinalize",
    "GatewayFlushConfirmation",
    "GatewayInit",
    "GatewayKeepalive",
    "GatewayMessage",
    "GatewayPartialTranscript",
    "GatewayReady",
    "GatewayRequestError",
    "GatewayServerMessage",
    "GatewayServiceError",
    "gateway_error",
    "gateway_to_dict",
    "parse_gateway",
    "serialize_gateway",
]

#: The hosted gateway (spec 002's provider).
HOSTED_GATEWAY_URL = "wss://api.slng.ai"
#: Reson8 realtime behind the gateway (the gateway's ``/v1/stt/<provider>/<model>`` scheme).
GATEWAY_PATH = "/v1/stt/reson8/reson8stt:v1"
#: The upgrade header that pins the region; auto-selected when absent (spec 002).
WORLD_PART_HEADER = "X-World-Part-Override"
#: The world parts spec 002 lists for Reson8.
WORLD_PARTS: tuple[str, ...] = ("eu",)

_CONFIG_FIELDS = ("encoding", "sample_rate", "channels", "enable_partials", "language",
                  "custom_model_id", "include_timestamps", "include_words",
                  "include_confidence")


# -- errors --------------------------------------------------------------------------------


class GatewayServiceError(ServiceError):
    """An ``error`` message of the gateway (spec 002), as a typed exception.

    The flags say what a client should do, independent of pipecat: ``retryable`` (open a
    new session after a backoff), ``fatal`` (retrying cannot help until something changes,
    e.g. the credentials), and ``category``, the kind of failure spelled as pipecat's
    ``ErrorCategory`` values.
    """

    retryable: ClassVar[bool] = True
    fatal: ClassVar[bool] = False
    category: ClassVar[str] = "server"


class GatewayAuthError(GatewayServiceError):
    """``auth_error``: the key is invalid or expired (the spec's example)."""

    retryable = False
    fatal = True
    category = "authentication"


class GatewayRequestError(GatewayServiceError):
    """The session's request was refused: a bad ``init`` config, region or message."""

    retryable = False
    fatal = True
    category = "invalid_request"


_ERROR_CLASSES: dict[str, type[GatewayServiceError]] = {
    "auth_error": GatewayAuthError,
    "unauthorized": GatewayAuthError,
    "invalid_config": GatewayRequestError,
    "invalid_request": GatewayRequestError,
    "invalid_world_part": GatewayRequestError,
    "not_initialized": GatewayRequestError,
}


def gateway_error(code: str, message: str) -> GatewayServiceError:
    """The typed exception for an ``error`` message's ``code``.

    Only ``auth_error`` is documented (spec 002); the request errors are the codes the
    embedded server sends; any other code is a retryable :class:`GatewayServiceError`.
    """
    return _ERROR_CLASSES.get(code, GatewayServiceError)(code, message)


# -- messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The ``config`` of ``init``: Reson8's recognition configuration.

    Spec 002 shows ``encoding``, ``sample_rate``, ``channels`` and ``enable_partials``;
    the rest are the realtime endpoint's own parameters (spec 000), which a provider-
    specific config may carry. ``None`` means absent on the wire; unknown keys are kept in
    ``extra`` so a config round-trips unchanged.
    """

    encoding: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    enable_partials: bool | None = None
    language: str | None = None
    custom_model_id: str | None = None
    include_timestamps: bool | None = None
    include_words: bool | None = None
    include_confidence: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_realtime_params(self) -> RealtimeParams:
        """The realtime parameters this config asks for (the defaults of spec 000 where
        absent, except ``encoding``, which defaults to ``pcm_s16le`` as in spec 002).

        Raises:
            InvalidRequest: a value is out of range or malformed (names the field).
        """
        for name in ("sample_rate", "channels"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InvalidRequest(name, f"must be an integer, got {value!r}")
        return RealtimeParams(
            encoding=self.encoding or "pcm_s16le",
            sample_rate=16000 if self.sample_rate is None else self.sample_rate,
            channels=1 if self.channels is None else self.channels,
            language=self.language,
            custom_model_id=self.custom_model_id,
            include_timestamps=bool(self.include_timestamps),
            include_words=bool(self.include_words),
            include_confidence=bool(self.include_confidence),
            include_interim=bool(self.enable_partials),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, with absent fields left out."""
        out: dict[str, Any] = {}
        for name in _CONFIG_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> GatewayConfig:
        """Parse a ``config`` object (field types checked, values not range-checked)."""
        extra = {k: v for k, v in obj.items() if k not in _CONFIG_FIELDS}
        return cls(
            _opt_str(obj, "encoding"), _opt_int(obj, "sample_rate"), _opt_int(obj, "channels"),
            _opt_bool(obj, "enable_partials"), _opt_str(obj, "language"),
            _opt_str(obj, "custom_model_id"), _opt_bool(obj, "include_timestamps"),
            _opt_bool(obj, "include_words"), _opt_bool(obj, "include_confidence"), extra,
        )


@dataclass(frozen=True, slots=True)
class GatewayInit:
    """Client -> server, first: open the session with a recognition ``config``."""

    type: ClassVar[str] = "init"
    config: GatewayConfig = field(default_factory=GatewayConfig)


@dataclass(frozen=True, slots=True)
class GatewayAudio:
    """Client -> server: one audio frame, base64 in ``data`` (kept as sent; see decode)."""

    type: ClassVar[str] = "audio"
    data: str

    @classmethod
    def of(cls, audio: bytes) -> GatewayAudio:
        """Wrap raw audio bytes."""
        return cls(base64.b64encode(audio).decode("ascii"))

    def decode(self) -> bytes:
        """The audio bytes.

        Raises:
            RemoteProtocolError: ``data`` is not valid base64.
        """
        try:
            return base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError):
            raise RemoteProtocolError("audio 'data' is not valid base64", self.data) from None


@dataclass(frozen=True, slots=True)
class GatewayFinalize:
    """Client -> server: finalise buffered audio, keep the connection (a flush)."""

    type: ClassVar[str] = "finalize"


@dataclass(frozen=True, slots=True)
class GatewayClose:
    """Client -> server: end of the audio stream; the server finishes and closes."""

    type: ClassVar[str] = "close"


@dataclass(frozen=True, slots=True)
class GatewayKeepalive:
    """Client -> server: keep the connection alive during silence."""

    type: ClassVar[str] = "keepalive"


@dataclass(frozen=True, slots=True)
class GatewayReady:
    """Server -> client: the session is ready for audio."""

    type: ClassVar[str] = "ready"
    session_id: str


@dataclass(frozen=True, slots=True)
class GatewayPartialTranscript:
    """Server -> client: an interim result (with ``enable_partials``)."""

    type: ClassVar[str] = "partial_transcript"
    transcript: str
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class GatewayFinalTranscript:
    """Server -> client: a final result; ``duration`` is in seconds."""

    type: ClassVar[str] = "final_transcript"
    transcript: str
    confidence: float | None = None
    language: str | None = None
    duration: float | None = None


@dataclass(frozen=True, slots=True)
class GatewayFlushConfirmation:
    """Server -> client: a ``finalize`` is done (finals for its audio came first)."""

    type: ClassVar[str] = "flush_confirmation"
    id: str | None = None


@dataclass(frozen=True, slots=True)
class GatewayErrorEvent:
    """Server -> client: an error; see :meth:`exception` for the typed error."""

    type: ClassVar[str] = "error"
    code: str
    message: str

    def exception(self) -> GatewayServiceError:
        """The typed exception for this error (see :func:`gateway_error`)."""
        return gateway_error(self.code, self.message)


GatewayClientMessage: TypeAlias = (
    GatewayInit | GatewayAudio | GatewayFinalize | GatewayClose | GatewayKeepalive
)
GatewayServerMessage: TypeAlias = (
    GatewayReady | GatewayPartialTranscript | GatewayFinalTranscript
    | GatewayFlushConfirmation | GatewayErrorEvent
)
GatewayMessage: TypeAlias = GatewayClientMessage | GatewayServerMessage | UnknownEvent

_FINALIZE, _CLOSE, _KEEPALIVE = GatewayFinalize(), GatewayClose(), GatewayKeepalive()


def _init(obj: Mapping[str, Any]) -> GatewayInit:
    config = obj.get("config", {})
    if not isinstance(config, dict):
        raise _FieldError(f"field 'config' must be an object, got {type(config).__name__}")
    return GatewayInit(GatewayConfig.from_dict(config))


_PARSERS: dict[str, Callable[[Mapping[str, Any]], GatewayMessage]] = {
    "init": _init,
    "audio": lambda o: GatewayAudio(_str(o, "data")),
    "finalize": lambda _: _FINALIZE,
    "close": lambda _: _CLOSE,
    "keepalive": lambda _: _KEEPALIVE,
    "ready": lambda o: GatewayReady(_str(o, "session_id")),
    "partial_transcript": lambda o: GatewayPartialTranscript(
        _str(o, "transcript"), _opt_num(o, "confidence")),
    "final_transcript": lambda o: GatewayFinalTranscript(
        _str(o, "transcript"), _opt_num(o, "confidence"), _opt_str(o, "language"),
        _opt_num(o, "duration")),
    "flush_confirmation": lambda o: GatewayFlushConfirmation(_opt_str(o, "id")),
    "error": lambda o: GatewayErrorEvent(_str(o, "code"), _str(o, "message")),
}


def parse_gateway(text: str | bytes) -> GatewayMessage:
    """Parse one JSON text frame of the gateway framing (either direction).

    Raises:
        RemoteProtocolError: not a JSON object with a string ``type``, or a known field of
            the wrong type.
    """
    obj, kind = _decode_tagged(text)
    parser = _PARSERS.get(kind)
    if parser is None:
        return UnknownEvent(kind, obj)
    try:
        return parser(obj)
    except _FieldError as exc:
        raise RemoteProtocolError(f"bad {kind!r} message: {exc}", text) from None


def gateway_to_dict(message: GatewayMessage) -> dict[str, Any]:
    """The JSON object of ``message``, with absent optional fields left out."""
    if isinstance(message, UnknownEvent):
        return dict(message.data)
    out: dict[str, Any] = {"type": message.type}
    if isinstance(message, GatewayInit):
        out["config"] = message.config.to_dict()
    elif isinstance(message, GatewayAudio):
        out["data"] = message.data
    elif isinstance(message, GatewayReady):
        out["session_id"] = message.session_id
    elif isinstance(message, GatewayPartialTranscript | GatewayFinalTranscript):
        out["transcript"] = message.transcript
        if message.confidence is not None:
            out["confidence"] = message.confidence
        if isinstance(message, GatewayFinalTranscript):
            if message.language is not None:
                out["language"] = message.language
            if message.duration is not None:
                out["duration"] = message.duration
    elif isinstance(message, GatewayFlushConfirmation):
        out["id"] = message.id
    elif isinstance(message, GatewayErrorEvent):
        out["code"] = message.code
        out["message"] = message.message
    elif not isinstance(message, GatewayFinalize | GatewayClose | GatewayKeepalive):
        raise LocalProtocolError(f"not a gateway message: {message!r}")
    return out


def serialize_gateway(message: GatewayMessage) -> str:
    """Serialize ``message`` to one compact JSON text frame."""
    return json.dumps(gateway_to_dict(message), separators=(",", ":"), ensure_ascii=False)
