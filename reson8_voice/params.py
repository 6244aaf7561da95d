"""Connection parameters of the turns and realtime endpoints, as validated value objects.

The query parameters of spec 001 (turns) and spec 000 (realtime), to and from a URL query
string. Every check happens here, before any connection is tried, and raises
:class:`InvalidRequest` naming the parameter; the embedded server uses the same parsing,
so what the client refuses the server refuses too (400 INVALID_REQUEST).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Literal, TypeAlias
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import InvalidRequest

__all__ = [
    "HOSTED_URL",
    "REALTIME_PATH",
    "TURNS_PATH",
    "Encoding",
    "RealtimeParams",
    "TurnsParams",
    "endpoint_url",
    "split_ws_url",
]

#: The hosted Reson8 API (specs 000 and 001).
HOSTED_URL = "wss://api.reson8.dev"
TURNS_PATH = "/v1/speech-to-text/turns"
REALTIME_PATH = "/v1/speech-to-text/realtime"

Encoding: TypeAlias = Literal["auto", "pcm_s16le", "mulaw", "alaw"]

_MIN_RATE, _MAX_RATE = 8000, 48000
_MAX_CHANNELS = 8
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
_MODEL_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TRUE, _FALSE = ("true", "1"), ("false", "0")
#: no integer parameter needs more digits (int() of a 4,300-digit string raises ValueError)
_MAX_INT_DIGITS = 9
#: the spec's patterns are for short alphanumeric tokens (order codes, licence plates)
_MAX_PATTERN_CHARS = 256
_MAX_PATTERNS = 32


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(name, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequest(name, f"must be between {low} and {high}, got {value}")
    return value


def _parse_int(name: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()):  # "²".isdigit() is True, int("²") fails
        raise InvalidRequest(name, f"must be a whole number, got {text[:40]!r}")
    if len(text.lstrip("0")) > _MAX_INT_DIGITS:
        raise InvalidRequest(name, f"is out of range: {len(text)} digits")
    return int(text)


def _parse_bool(name: str, text: str) -> bool:
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise InvalidRequest(name, f"must be true or false, got {text[:40]!r}")


@dataclass(frozen=True, slots=True)
class _Params:
    """Fields shared by both endpoints; subclasses add their own."""

    ENCODINGS: ClassVar[tuple[str, ...]] = ()
    PATH: ClassVar[str] = ""

    encoding: str = "auto"
    sample_rate: int = 16000
    channels: int = 1
    language: str | None = None
    custom_model_id: str | None = None
    include_timestamps: bool = False
    include_words: bool = False

    def __post_init__(self) -> None:
        if self.encoding not in self.ENCODINGS:
            allowed = ", ".join(self.ENCODINGS)
            raise InvalidRequest("encoding",
                                 f"must be one of {allowed}, got {self.encoding[:40]!r}")
        _check_int("sample_rate", self.sample_rate, _MIN_RATE, _MAX_RATE)
        _check_int("channels", self.channels, 1, _MAX_CHANNELS)
        if self.language is not None and not _LANGUAGE.match(self.language):
            raise InvalidRequest("language", f"not a language code: {self.language[:40]!r}")
        if self.custom_model_id is not None and not _MODEL_ID.match(self.custom_model_id):
            raise InvalidRequest("custom_model_id", "must be 1-128 of [A-Za-z0-9._:-]")
        for f in fields(self):
            if f.name.startswith("include_") and not isinstance(getattr(self, f.name), bool):
                raise InvalidRequest(f.name, "must be a boolean")

    @classmethod
    def raw_encodings(cls) -> tuple[str, ...]:
        """The endpoint's explicit encodings (all but ``auto``), for raw audio."""
        return tuple(e for e in cls.ENCODINGS if e != "auto")

    @property
    def is_g711(self) -> bool:
        """Whether the audio is G.711 (mu-law or A-law), one byte per sample."""
        return self.encoding in ("mulaw", "alaw")

    @property
    def bytes_per_second(self) -> int | None:
        """Bytes of raw audio per second, or None for ``auto`` (a container)."""
        if self.encoding == "auto":
            return None
        width = 1 if self.is_g711 else 2
        return self.sample_rate * self.channels * width

    def to_query_dict(self) -> dict[str, str]:
        """The query parameters; encoding, rate and channels always, the rest when set."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("encoding", "sample_rate", "channels"):
                out[f.name] = str(value)
            elif isinstance(value, bool):
                if value:
                    out[f.name] = "true"
            elif isinstance(value, tuple):
                if value:
                    out[f.name] = ",".join(value)
            elif value is not None:
                out[f.name] = str(value)
        return out

    def to_query(self) -> str:
        """The URL query string (without ``?``)."""
        return urlencode(self.to_query_dict())

    def replace(self, **changes: Any) -> _Params:
        """A copy with ``changes`` applied and validated."""
        return replace(self, **changes)

    @classmethod
    def from_query(
        cls, query: str | Mapping[str, str] | Iterable[tuple[str, str]]
    ) -> Any:
        """Parse a query string (or its pairs); unknown parameters are ignored.

        Raises:
            InvalidRequest: a value is malformed, out of range, or given twice with
                different values.
        """
        if isinstance(query, str):
            pairs: Iterable[tuple[str, str]] = parse_qsl(query.lstrip("?"),
                                                        keep_blank_values=True)
        elif isinstance(query, Mapping):
            pairs = query.items()
        else:
            pairs = query
        known = {f.name: f for f in fields(cls)}
        seen: dict[str, str] = {}
        kwargs: dict[str, Any] = {}
        for name, text in pairs:
            if name not in known:
                continue
            if name in seen and seen[name] != text:
                raise InvalidRequest(name, "given twice with different values")
            seen[name] = text
            kwargs[name] = cls._parse_value(name, text)
        return cls(**kwargs)

    @classmethod
    def _parse_value(cls, name: str, text: str) -> Any:
        if name in ("sample_rate", "channels"):
            return _parse_int(name, text)
        if name.startswith("include_"):
            return _parse_bool(name, text)
        if name == "patterns":
            return tuple(p for p in text.split(",") if p)
        if not text:
            raise InvalidRequest(name, "must not be empty")
        return text


@dataclass(frozen=True, slots=True)
class TurnsParams(_Params):
    """Query parameters of the turns endpoint (spec 001).

    ``patterns`` is a list of regex-style patterns for short alphanumeric tokens, sent
    comma-separated (so a pattern cannot itself contain a comma).
    """

    ENCODINGS: ClassVar[tuple[str, ...]] = ("auto", "pcm_s16le", "mulaw", "alaw")
    PATH: ClassVar[str] = TURNS_PATH

    include_language: bool = False
    patterns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _Params.__post_init__(self)
        if isinstance(self.patterns, str) or not isinstance(self.patterns, Sequence):
            raise InvalidRequest("patterns", "must be a list of strings")
        if len(self.patterns) > _MAX_PATTERNS:
            raise InvalidRequest("patterns", f"at most {_MAX_PATTERNS} patterns, got "
                                 f"{len(self.patterns)}")
        if not isinstance(self.patterns, tuple):
            object.__setattr__(self, "patterns", tuple(self.patterns))
        for pattern in self.patterns:
            if not isinstance(pattern, str) or not pattern:
                raise InvalidRequest("patterns", "each pattern must be a non-empty string")
            if "," in pattern:
                raise InvalidRequest("patterns", f"a pattern cannot contain ',': {pattern[:40]!r}")
            if len(pattern) > _MAX_PATTERN_CHARS:
                raise InvalidRequest("patterns", f"a pattern is at most {_MAX_PATTERN_CHARS} "
                                     f"characters, got {len(pattern)}")
            try:
                re.compile(pattern)
            # a{4294967296} overflows the compiler's repeat count; deep nesting its recursion
            except (re.error, OverflowError, RecursionError) as exc:
                raise InvalidRequest("patterns", f"{pattern[:40]!r} is not a regex: "
                                     f"{exc.__class__.__name__}: {str(exc)[:80]}") from None


@dataclass(frozen=True, slots=True)
class RealtimeParams(_Params):
    """Query parameters of the realtime endpoint (spec 000; ``language`` from spec 003)."""

    ENCODINGS: ClassVar[tuple[str, ...]] = ("auto", "pcm_s16le")
    PATH: ClassVar[str] = REALTIME_PATH

    include_confidence: bool = False
    include_interim: bool = False


def split_ws_url(url: str) -> SplitResult:
    """``url`` split, once it is known to be a ``ws``/``wss`` URL with a host and a valid
    port (urlsplit's ValueError for ``ws://[::1`` becomes the typed error too).

    Raises:
        InvalidRequest: naming ``url``.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError as exc:
        raise InvalidRequest("url", f"is not a valid URL: {exc}") from None
    if parts.scheme not in ("ws", "wss"):
        raise InvalidRequest("url", f"scheme must be ws or wss, got {parts.scheme[:20]!r}")
    if not parts.hostname:
        raise InvalidRequest("url", "has no host")
    return parts


def endpoint_url(base_url: str, params: TurnsParams | RealtimeParams) -> str:
    """Join a server URL (``ws``/``wss``, with or without the endpoint path) and params.

    ``base_url`` may be a bare origin (``ws://127.0.0.1:8765``) or a full endpoint URL;
    query parameters already in it are kept unless ``params`` sets them.
    """
    parts = split_ws_url(base_url)
    path = parts.path.rstrip("/")
    if not path.endswith(params.PATH):
        path = path + params.PATH
    query = dict(parse_qsl(parts.query))
    query.update(params.to_query_dict())
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))
