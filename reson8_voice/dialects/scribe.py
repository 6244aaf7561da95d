"""ElevenLabs Scribe realtime (spec 004), as sans-I/O messages, parameters and errors.

The peer service of the Reson8 realtime endpoint. Its messages carry the discriminator
``message_type``. The client sends ``input_audio_chunk`` (base64 PCM in ``audio_base_64``,
``commit`` to commit the segment, the chunk's ``sample_rate``, and ``previous_text`` as
context on the first chunk); the server sends ``session_started`` (``session_id`` and the
session's ``config``), ``partial_transcript``, ``committed_transcript``, and
``committed_transcript_with_timestamps`` (with ``include_timestamps`` or
``include_language_detection``: ``language_code`` and ``words`` whose ``start``/``end``
are in seconds), or one of thirteen typed errors, each ``{"message_type", "error"}``.

Each error type maps to an exception class here, with pipecat-independent flags:
``retryable`` (throttled, rate limited, queue overflow, resource exhausted: open a new
session after a backoff), ``fatal`` (auth, quota, unaccepted terms, session time limit:
retrying cannot help until something changes) and ``category`` (the kind of failure,
spelled as pipecat's ``ErrorCategory`` values). The rest (a generic error, input, chunk
size, insufficient audio activity, transcriber) are neither: report them and carry on.

Spec 004 names the objects but shows no JSON; the field names follow the published
message schema, and the tests build their vectors from the spec's field descriptions.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias
from urllib.parse import parse_qsl, urlencode

from .._fields import FieldError as _FieldError
from .._fields import decode_tagged as _decode_tagged
from .._fields import opt_num as _opt_num
from .._fields import opt_str as _opt_str
from .._fields import req_str as _str
from ..errors import InvalidRequest, LocalProtocolError, RemoteProtocolError, ServiceError
from ..events import UnknownEvent

__all__ = [
    "AUDIO_FORMATS",
    "DEFAULT_MODEL_ID",
    "HOSTED_SCRIBE_URL",
    "SCRIBE_ERROR_TYPES",
    "SCRIBE_PATH",
    "CommitStrategy",
    "ScribeAudioChunk",
    "ScribeAuthError",
    "ScribeChunkSizeExceededError",
    "ScribeClientMessage",
    "ScribeCommittedTranscript",
    "ScribeCommittedTranscriptWithTimestamps",
    "ScribeError",
    "ScribeErrorEvent",
    "ScribeInputError",
    "ScribeInsufficientAudioActivityError",
    "ScribeMessage",
    "ScribeParams",
    "ScribePartialTranscript",
    "ScribeQueueOverflowError",
    "ScribeQuotaExceededError",
    "ScribeRateLimitedError",
    "ScribeResourceExhaustedError",
    "ScribeServerMessage",
    "ScribeSessionStarted",
    "ScribeSessionTimeLimitExceededError",
    "ScribeThrottledError",
    "ScribeTranscriberError",
    "ScribeUnacceptedTermsError",
    "ScribeWord",
    "parse_scribe",
    "scribe_error",
    "scribe_to_dict",
    "serialize_scribe",
]

HOSTED_SCRIBE_URL = "wss://api.elevenlabs.io"
SCRIBE_PATH = "/v1/speech-to-text/realtime"
DEFAULT_MODEL_ID = "scribe_v2_realtime"

#: ``audio_format`` values -> (encoding, sample rate).
AUDIO_FORMATS: dict[str, tuple[str, int]] = {
    "pcm_8000": ("pcm_s16le", 8000),
    "pcm_16000": ("pcm_s16le", 16000),
    "pcm_22050": ("pcm_s16le", 22050),
    "pcm_24000": ("pcm_s16le", 24000),
    "pcm_44100": ("pcm_s16le", 44100),
    "pcm_48000": ("pcm_s16le", 48000),
    "ulaw_8000": ("mulaw", 8000),
}

CommitStrategy: TypeAlias = Literal["manual", "vad"]

_MAX_KEYTERMS, _MAX_KEYTERM_CHARS = 50, 20

#: ISO 639-3 -> ISO 639-1 for the languages a Whisper recogniser knows (spec 004 takes
#: ``language_code`` in either form; the engine and its language checks use 639-1).
_ISO639_3_TO_1: dict[str, str] = dict(pair.split(":") for pair in (
    "afr:af amh:am ara:ar arb:ar asm:as aze:az bak:ba bel:be ben:bn bod:bo bos:bs bre:br "
    "bul:bg cat:ca ces:cs cmn:zh cym:cy dan:da deu:de ell:el eng:en est:et eus:eu fao:fo "
    "fas:fa fin:fi fra:fr glg:gl guj:gu hat:ht hau:ha heb:he hin:hi hrv:hr hun:hu hye:hy "
    "ind:id isl:is ita:it jpn:ja kan:kn kat:ka kaz:kk khm:km kor:ko lao:lo lat:la lav:lv "
    "lin:ln lit:lt ltz:lb mal:ml mar:mr mkd:mk mlg:mg mlt:mt mon:mn mri:mi msa:ms mya:my "
    "nep:ne nld:nl nno:nn nor:no oci:oc pan:pa pes:fa pol:pl por:pt pus:ps ron:ro rus:ru "
    "san:sa sin:si slk:sk slv:sl sna:sn snd:sd som:so spa:es sqi:sq srp:sr sun:su swa:sw "
    "swe:sv tam:ta tat:tt tel:te tgk:tg tgl:tl tha:th tuk:tk tur:tr ukr:uk urd:ur uzb:uz "
    "vie:vi yid:yi yor:yo zho:zh zsm:ms"
).split())
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
_MODEL_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


# -- errors --------------------------------------------------------------------------------


class ScribeError(ServiceError):
    """A Scribe error message (``error``, the generic type) as a typed exception.

    ``code`` is the wire ``message_type``; ``message`` its ``error`` text. Class flags:
    ``retryable``, ``fatal`` and ``category`` (see the module docstring).
    """

    message_type: ClassVar[str] = "error"
    retryable: ClassVar[bool] = False
    fatal: ClassVar[bool] = False
    category: ClassVar[str] = "unknown"

    def __init__(self, message: str = "", code: str | None = None) -> None:
        super().__init__(code or self.message_type, message)


class ScribeAuthError(ScribeError):
    """``auth_error``: missing, invalid or expired API key or token."""

    message_type = "auth_error"
    fatal = True
    category = "authentication"


class ScribeQuotaExceededError(ScribeError):
    """``quota_exceeded``: the account's credits are used up."""

    message_type = "quota_exceeded"
    fatal = True
    category = "quota"


class ScribeThrottledError(ScribeError):
    """``commit_throttled``: commits are coming too fast."""

    message_type = "commit_throttled"
    retryable = True
    category = "rate_limit"


class ScribeUnacceptedTermsError(ScribeError):
    """``unaccepted_terms``: the account has not accepted the terms of service."""

    message_type = "unaccepted_terms"
    fatal = True
    category = "authorization"


class ScribeRateLimitedError(ScribeError):
    """``rate_limited``: too many requests or sessions."""

    message_type = "rate_limited"
    retryable = True
    category = "rate_limit"


class ScribeQueueOverflowError(ScribeError):
    """``queue_overflow``: audio arrives faster than the server can take it."""

    message_type = "queue_overflow"
    retryable = True
    category = "rate_limit"


class ScribeResourceExhaustedError(ScribeError):
    """``resource_exhausted``: the service is out of capacity for now."""

    message_type = "resource_exhausted"
    retryable = True
    category = "server"


class ScribeSessionTimeLimitExceededError(ScribeError):
    """``session_time_limit_exceeded``: the session reached its maximum length."""

    message_type = "session_time_limit_exceeded"
    fatal = True
    category = "quota"


class ScribeInputError(ScribeError):
    """``input_error``: a message or its audio is malformed."""

    message_type = "input_error"
    category = "invalid_request"


class ScribeChunkSizeExceededError(ScribeError):
    """``chunk_size_exceeded``: one audio chunk is too large."""

    message_type = "chunk_size_exceeded"
    category = "invalid_request"


class ScribeInsufficientAudioActivityError(ScribeError):
    """``insufficient_audio_activity``: the session carried too little audio for too long."""

    message_type = "insufficient_audio_activity"
    category = "unknown"


class ScribeTranscriberError(ScribeError):
    """``transcriber_error``: the transcriber failed."""

    message_type = "transcriber_error"
    category = "server"


_ERROR_CLASSES: dict[str, type[ScribeError]] = {
    cls.message_type: cls
    for cls in (ScribeError, ScribeAuthError, ScribeQuotaExceededError, ScribeThrottledError,
                ScribeUnacceptedTermsError, ScribeRateLimitedError, ScribeQueueOverflowError,
                ScribeResourceExhaustedError, ScribeSessionTimeLimitExceededError,
                ScribeInputError, ScribeChunkSizeExceededError,
                ScribeInsufficientAudioActivityError, ScribeTranscriberError)
}

#: Every error ``message_type`` of spec 004, in the document's order.
SCRIBE_ERROR_TYPES: tuple[str, ...] = tuple(_ERROR_CLASSES)


def scribe_error(message_type: str, message: str) -> ScribeError:
    """The typed exception for an error ``message_type`` (unknown types: :class:`ScribeError`)."""
    cls = _ERROR_CLASSES.get(message_type, ScribeError)
    return cls(message, code=message_type)


# -- messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScribeAudioChunk:
    """Client -> server: base64 audio; ``commit`` ends the segment (manual strategy).

    ``sample_rate`` is the chunk's rate, ``previous_text`` context for the first chunk.
    """

    message_type: ClassVar[str] = "input_audio_chunk"
    audio_base_64: str
    commit: bool = False
    sample_rate: int | None = None
    previous_text: str | None = None

    @classmethod
    def of(cls, audio: bytes, *, commit: bool = False, sample_rate: int | None = None,
           previous_text: str | None = None) -> ScribeAudioChunk:
        """Wrap raw audio bytes (empty with ``commit=True`` is a bare commit)."""
        return cls(base64.b64encode(audio).decode("ascii"), commit, sample_rate,
                   previous_text)

    def decode(self) -> bytes:
        """The audio bytes.

        Raises:
            RemoteProtocolError: ``audio_base_64`` is not valid base64.
        """
        try:
            return base64.b64decode(self.audio_base_64, validate=True)
        except (binascii.Error, ValueError):
            raise RemoteProtocolError("'audio_base_64' is not valid base64",
                                      self.audio_base_64) from None


@dataclass(frozen=True, slots=True)
class ScribeSessionStarted:
    """Server -> client, first: the session is open; ``config`` echoes its settings."""

    message_type: ClassVar[str] = "session_started"
    session_id: str
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ScribePartialTranscript:
    """Server -> client: interim text of the uncommitted segment; it may change."""

    message_type: ClassVar[str] = "partial_transcript"
    text: str


@dataclass(frozen=True, slots=True)
class ScribeCommittedTranscript:
    """Server -> client: a committed segment's text; it will not change."""

    message_type: ClassVar[str] = "committed_transcript"
    text: str


@dataclass(frozen=True, slots=True)
class ScribeWord:
    """An item of ``words``: a word or the spacing between words; times in seconds."""

    text: str | None = None
    start: float | None = None
    end: float | None = None
    type: str | None = None
    speaker_id: str | None = None
    logprob: float | None = None
    characters: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ScribeCommittedTranscriptWithTimestamps:
    """Server -> client: the committed segment with ``language_code`` and ``words``."""

    message_type: ClassVar[str] = "committed_transcript_with_timestamps"
    text: str
    language_code: str | None = None
    words: tuple[ScribeWord, ...] | None = None

    @property
    def end_s(self) -> float | None:
        """Where the segment's last word ends (seconds of the session's audio)."""
        ends = [w.end for w in self.words or () if w.end is not None]
        return max(ends) if ends else None


@dataclass(frozen=True, slots=True)
class ScribeErrorEvent:
    """Server -> client: one of the typed errors; ``kind`` is its ``message_type``."""

    kind: str
    error: str

    @property
    def message_type(self) -> str:
        """The ``message_type`` as sent."""
        return self.kind

    def exception(self) -> ScribeError:
        """The typed exception for this error."""
        return scribe_error(self.kind, self.error)


ScribeClientMessage: TypeAlias = ScribeAudioChunk
ScribeServerMessage: TypeAlias = (
    ScribeSessionStarted | ScribePartialTranscript | ScribeCommittedTranscript
    | ScribeCommittedTranscriptWithTimestamps | ScribeErrorEvent
)
ScribeMessage: TypeAlias = ScribeClientMessage | ScribeServerMessage | UnknownEvent


def _chunk(obj: Mapping[str, Any]) -> ScribeAudioChunk:
    commit = obj.get("commit", False)
    if not isinstance(commit, bool):
        raise _FieldError(f"field 'commit' must be a boolean, got {type(commit).__name__}")
    rate = obj.get("sample_rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int)):
        raise _FieldError("field 'sample_rate' must be an integer")
    return ScribeAudioChunk(_str(obj, "audio_base_64"), commit, rate,
                            _opt_str(obj, "previous_text"))


def _session(obj: Mapping[str, Any]) -> ScribeSessionStarted:
    config = obj.get("config", {})
    if not isinstance(config, dict):
        raise _FieldError(f"field 'config' must be an object, got {type(config).__name__}")
    return ScribeSessionStarted(_str(obj, "session_id"), config)


def _word(item: Any) -> ScribeWord:
    if not isinstance(item, dict):
        raise _FieldError("each word must be an object")
    chars = item.get("characters")
    if chars is not None and (not isinstance(chars, list)
                              or not all(isinstance(c, str) for c in chars)):
        raise _FieldError("'characters' must be an array of strings")
    return ScribeWord(_opt_str(item, "text"), _opt_num(item, "start"), _opt_num(item, "end"),
                      _opt_str(item, "type"), _opt_str(item, "speaker_id"),
                      _opt_num(item, "logprob"), tuple(chars) if chars is not None else None)


def _with_timestamps(obj: Mapping[str, Any]) -> ScribeCommittedTranscriptWithTimestamps:
    raw = obj.get("words")
    if raw is not None and not isinstance(raw, list):
        raise _FieldError(f"field 'words' must be an array, got {type(raw).__name__}")
    words = tuple(_word(w) for w in raw) if raw is not None else None
    return ScribeCommittedTranscriptWithTimestamps(_str(obj, "text"),
                                                   _opt_str(obj, "language_code"), words)


_PARSERS: dict[str, Callable[[Mapping[str, Any]], ScribeMessage]] = {
    "input_audio_chunk": _chunk,
    "session_started": _session,
    "partial_transcript": lambda o: ScribePartialTranscript(_str(o, "text")),
    "committed_transcript": lambda o: ScribeCommittedTranscript(_str(o, "text")),
    "committed_transcript_with_timestamps": _with_timestamps,
}


def parse_scribe(text: str | bytes) -> ScribeMessage:
    """Parse one JSON text frame of Scribe realtime (either direction).

    A message whose unknown ``message_type`` carries a string ``error`` is treated as an
    error (a generic :class:`ScribeError`), so new error types are never silently lost.

    Raises:
        RemoteProtocolError: not a JSON object with a string ``message_type``, or a known
            field of the wrong type.
    """
    obj, kind = _decode_tagged(text, "message_type")
    try:
        parser = _PARSERS.get(kind)
        if parser is not None:
            return parser(obj)
        if kind in _ERROR_CLASSES or isinstance(obj.get("error"), str):
            return ScribeErrorEvent(kind, _str(obj, "error"))
    except _FieldError as exc:
        raise RemoteProtocolError(f"bad {kind!r} message: {exc}", text) from None
    return UnknownEvent(kind, obj)


def _word_dict(word: ScribeWord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("text", "start", "end", "type", "speaker_id", "logprob"):
        value = getattr(word, name)
        if value is not None:
            out[name] = value
    if word.characters is not None:
        out["characters"] = list(word.characters)
    return out


def scribe_to_dict(message: ScribeMessage) -> dict[str, Any]:
    """The JSON object of ``message``, with absent optional fields left out."""
    if isinstance(message, UnknownEvent):
        return dict(message.data)
    out: dict[str, Any] = {"message_type": message.message_type}
    if isinstance(message, ScribeAudioChunk):
        out["audio_base_64"] = message.audio_base_64
        out["commit"] = message.commit
        if message.sample_rate is not None:
            out["sample_rate"] = message.sample_rate
        if message.previous_text is not None:
            out["previous_text"] = message.previous_text
    elif isinstance(message, ScribeSessionStarted):
        out["session_id"] = message.session_id
        out["config"] = dict(message.config)
    elif isinstance(message, ScribePartialTranscript | ScribeCommittedTranscript):
        out["text"] = message.text
    elif isinstance(message, ScribeCommittedTranscriptWithTimestamps):
        out["text"] = message.text
        if message.language_code is not None:
            out["language_code"] = message.language_code
        if message.words is not None:
            out["words"] = [_word_dict(w) for w in message.words]
    elif isinstance(message, ScribeErrorEvent):
        out["error"] = message.error
    else:  # pragma: no cover - exhaustive above
        raise LocalProtocolError(f"not a Scribe message: {message!r}")
    return out


def serialize_scribe(message: ScribeMessage) -> str:
    """Serialize ``message`` to one compact JSON text frame."""
    return json.dumps(scribe_to_dict(message), separators=(",", ":"), ensure_ascii=False)


# -- query parameters ----------------------------------------------------------------------


def _check_range(name: str, value: float | int | None, low: float, high: float,
                 integer: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            integer and not isinstance(value, int)):
        raise InvalidRequest(name, f"must be {'an integer' if integer else 'a number'}")
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRequest(name, f"must be between {low:g} and {high:g}, got {value}")


def _parse_bool(name: str, text: str) -> bool:
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise InvalidRequest(name, f"must be true or false, got {text[:40]!r}")


def _parse_num(name: str, text: str, integer: bool) -> float | int:
    try:
        return int(text) if integer else float(text)
    except ValueError:
        raise InvalidRequest(name, f"must be a {'whole ' if integer else ''}number, "
                                   f"got {text[:40]!r}") from None


@dataclass(frozen=True, slots=True)
class ScribeParams:
    """The query parameters of the Scribe realtime handshake (spec 004), validated.

    ``None`` means "not sent" (the server's default applies). Ranges are the document's:
    ``vad_silence_threshold_secs`` 0.3-3 (default 1.5), ``vad_threshold`` 0.1-0.9 (0.4),
    ``min_speech_duration_ms`` and ``min_silence_duration_ms`` 50-2000 (100); at most 50
    ``keyterms`` of at most 20 characters each. The VAD parameters apply with
    ``commit_strategy="vad"``. The single-use ``token`` is a credential and lives with the
    client, not here.
    """

    model_id: str = DEFAULT_MODEL_ID
    audio_format: str = "pcm_16000"
    language_code: str | None = None
    commit_strategy: CommitStrategy = "manual"
    include_timestamps: bool = False
    include_language_detection: bool = False
    keyterms: tuple[str, ...] = ()
    no_verbatim: bool | None = None
    vad_silence_threshold_secs: float | None = None
    vad_threshold: float | None = None
    min_speech_duration_ms: int | None = None
    min_silence_duration_ms: int | None = None
    enable_logging: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model_id, str) or not _MODEL_ID.match(self.model_id):
            raise InvalidRequest("model_id", "is required: 1-128 of [A-Za-z0-9._:-]")
        if self.audio_format not in AUDIO_FORMATS:
            raise InvalidRequest("audio_format", f"must be one of {', '.join(AUDIO_FORMATS)}, "
                                                 f"got {self.audio_format!r}")
        if self.language_code is not None and not _LANGUAGE.match(self.language_code):
            raise InvalidRequest("language_code",
                                 f"not an ISO 639-1/639-3 code: {self.language_code[:40]!r}")
        if self.commit_strategy not in ("manual", "vad"):
            raise InvalidRequest("commit_strategy",
                                 f"must be manual or vad, got {self.commit_strategy!r}")
        for name in ("include_timestamps", "include_language_detection"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidRequest(name, "must be a boolean")
        for name in ("no_verbatim", "enable_logging"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise InvalidRequest(name, "must be a boolean")
        if isinstance(self.keyterms, str) or not isinstance(self.keyterms, Sequence):
            raise InvalidRequest("keyterms", "must be a list of strings")
        if not isinstance(self.keyterms, tuple):
            object.__setattr__(self, "keyterms", tuple(self.keyterms))
        if len(self.keyterms) > _MAX_KEYTERMS:
            raise InvalidRequest("keyterms", f"at most {_MAX_KEYTERMS} keyterms, "
                                             f"got {len(self.keyterms)}")
        for term in self.keyterms:
            if not isinstance(term, str) or not term.strip():
                raise InvalidRequest("keyterms", "each keyterm must be a non-empty string")
            if len(term) > _MAX_KEYTERM_CHARS:
                raise InvalidRequest("keyterms", f"{term[:40]!r} is longer than "
                                                 f"{_MAX_KEYTERM_CHARS} characters")
        _check_range("vad_silence_threshold_secs", self.vad_silence_threshold_secs, 0.3, 3.0)
        _check_range("vad_threshold", self.vad_threshold, 0.1, 0.9)
        _check_range("min_speech_duration_ms", self.min_speech_duration_ms, 50, 2000, True)
        _check_range("min_silence_duration_ms", self.min_silence_duration_ms, 50, 2000, True)

    @property
    def language(self) -> str | None:
        """``language_code`` for the recogniser: an ISO 639-3 code (``eng``) as its ISO
        639-1 form (``en``) where there is one, anything else as given."""
        if self.language_code is None:
            return None
        primary, sep, rest = self.language_code.replace("_", "-").partition("-")
        mapped = _ISO639_3_TO_1.get(primary.lower())
        return self.language_code if mapped is None else mapped + sep + rest

    @property
    def encoding(self) -> str:
        """The audio encoding of ``audio_format``: ``pcm_s16le`` or ``mulaw``."""
        return AUDIO_FORMATS[self.audio_format][0]

    @property
    def sample_rate(self) -> int:
        """The sample rate of ``audio_format``."""
        return AUDIO_FORMATS[self.audio_format][1]

    def to_query_pairs(self) -> list[tuple[str, str]]:
        """The query as (name, value) pairs; each keyterm is its own ``keyterms`` pair."""
        pairs: list[tuple[str, str]] = [("model_id", self.model_id),
                                        ("audio_format", self.audio_format),
                                        ("commit_strategy", self.commit_strategy)]
        if self.language_code is not None:
            pairs.append(("language_code", self.language_code))
        for name in ("include_timestamps", "include_language_detection"):
            if getattr(self, name):
                pairs.append((name, "true"))
        pairs.extend(("keyterms", term) for term in self.keyterms)
        for name in ("no_verbatim", "enable_logging", "vad_silence_threshold_secs",
                     "vad_threshold", "min_speech_duration_ms", "min_silence_duration_ms"):
            value = getattr(self, name)
            if isinstance(value, bool):
                pairs.append((name, "true" if value else "false"))
            elif value is not None:
                pairs.append((name, f"{value:g}" if isinstance(value, float) else str(value)))
        return pairs

    def to_query(self) -> str:
        """The URL query string (without ``?``)."""
        return urlencode(self.to_query_pairs())

    @classmethod
    def from_query(cls, query: str | Iterable[tuple[str, str]]) -> ScribeParams:
        """Parse a query string or its pairs; unknown parameters (``token``) are ignored.

        Raises:
            InvalidRequest: a value is malformed or out of range, or ``model_id`` is
                missing (it is required by spec 004).
        """
        pairs = parse_qsl(query.lstrip("?"), keep_blank_values=True) \
            if isinstance(query, str) else list(query)
        kwargs: dict[str, Any] = {}
        keyterms: list[str] = []
        for name, text in pairs:
            if name == "keyterms":
                keyterms.append(text)
            elif name in ("include_timestamps", "include_language_detection", "no_verbatim",
                          "enable_logging"):
                kwargs[name] = _parse_bool(name, text)
            elif name in ("vad_silence_threshold_secs", "vad_threshold"):
                kwargs[name] = _parse_num(name, text, False)
            elif name in ("min_speech_duration_ms", "min_silence_duration_ms"):
                kwargs[name] = _parse_num(name, text, True)
            elif name in ("model_id", "audio_format", "language_code", "commit_strategy"):
                kwargs[name] = text
        if "model_id" not in kwargs:
            raise InvalidRequest("model_id", "is required")
        return cls(keyterms=tuple(keyterms), **kwargs)
