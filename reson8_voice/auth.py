"""Credentials of the Reson8 endpoints, built and parsed, never printed.

Three ways to authenticate an upgrade (specs 000 and 001, and the spec README):

- ``Authorization: ApiKey <api_key>``
- ``Authorization: Bearer <access_token>``
- ``Sec-WebSocket-Protocol: bearer, <access_token>`` where headers can't be set (browsers);
  the server then selects the ``bearer`` subprotocol.

A credential's value is held in a :class:`Secret`: its ``str`` and ``repr`` are redacted, so
an f-string, a log line or a traceback cannot leak it. Use :meth:`Secret.reveal` only where
the value must go on the wire, and :meth:`Secret.matches` (constant time) to compare.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import logging
import re
import sys
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .errors import InvalidRequest

__all__ = [
    "ApiKey",
    "BearerToken",
    "Credentials",
    "Secret",
    "auth_headers",
    "is_http_token",
    "parse_auth",
    "redact",
    "redact_request",
    "redact_url",
    "redacted_repr",
    "url_credentials",
    "single_header",
    "websocket_logger",
]

BEARER_SUBPROTOCOL = "bearer"
_REDACTED = "***"


class Secret:
    """A string that refuses to be printed. Compare with :meth:`matches`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        """Wrap ``value``; it must be non-empty printable ASCII without spaces or commas."""
        if not isinstance(value, str) or not value:
            raise InvalidRequest("credentials", "must be a non-empty string")
        if not value.isascii() or not value.isprintable() or any(c in value for c in " ,"):
            raise InvalidRequest("credentials", "must be printable ASCII without spaces")
        self._value = value

    def reveal(self) -> str:
        """The secret value, for the wire only."""
        return self._value

    def matches(self, candidate: str | Secret) -> bool:
        """Constant-time comparison with ``candidate``."""
        other = candidate.reveal() if isinstance(candidate, Secret) else candidate
        return hmac.compare_digest(self._value.encode(), other.encode())

    def __repr__(self) -> str:
        return f"Secret('{_REDACTED}')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and self.matches(other)

    def __hash__(self) -> int:
        return hash(Secret)

    def __reduce__(self) -> str:
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key, sent as ``Authorization: ApiKey <key>``."""

    secret: Secret

    @classmethod
    def of(cls, value: str) -> ApiKey:
        """Wrap a plain key."""
        return cls(Secret(value))


_HTTP_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def is_http_token(value: str) -> bool:
    """Whether ``value`` is an RFC 7230 token (what a ``Sec-WebSocket-Protocol`` may list)."""
    return _HTTP_TOKEN.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class BearerToken:
    """An access token, sent as ``Authorization: Bearer <token>`` or as a subprotocol."""

    secret: Secret
    via: Literal["header", "subprotocol"] = "header"

    def __post_init__(self) -> None:
        """A subprotocol is an RFC 7230 token: a token with ``/`` or ``=`` (base64) can only
        go in the header; the error does not quote it."""
        if self.via == "subprotocol" and not is_http_token(self.secret.reveal()):
            raise InvalidRequest("credentials", "a bearer token sent as a subprotocol may "
                                 "hold only letters, digits and !#$%&'*+-.^_`|~; send this "
                                 "one in the Authorization header (via='header')")

    @classmethod
    def of(cls, value: str, via: Literal["header", "subprotocol"] = "header") -> BearerToken:
        """Wrap a plain token."""
        return cls(Secret(value), via)


Credentials: TypeAlias = ApiKey | BearerToken


def auth_headers(credentials: Credentials | None) -> tuple[dict[str, str], list[str]]:
    """The upgrade request's extra headers and subprotocols for ``credentials``."""
    if credentials is None:
        return {}, []
    if isinstance(credentials, ApiKey):
        return {"Authorization": f"ApiKey {credentials.secret.reveal()}"}, []
    if credentials.via == "subprotocol":
        return {}, [BEARER_SUBPROTOCOL, credentials.secret.reveal()]
    return {"Authorization": f"Bearer {credentials.secret.reveal()}"}, []


def single_header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name``; None when it is absent or repeated (a repeated
    credential is none: websockets' ``Headers`` raise ``MultipleValuesError``, a
    ``LookupError``, where a plain mapping would pick one)."""
    try:
        value = headers.get(name)
    except LookupError:
        return None
    return value if isinstance(value, str) else None


def parse_auth(
    headers: Mapping[str, str], subprotocols: Sequence[str] = ()
) -> Credentials | None:
    """Read the credentials of an upgrade request; None when absent, malformed or repeated.

    ``headers`` must be case-insensitive (as websockets' ``Headers`` are) or use the
    canonical ``Authorization`` spelling. ``subprotocols`` are the offered ones, in order.
    """
    value = single_header(headers, "Authorization") or single_header(headers, "authorization")
    if value:
        scheme, _, rest = value.strip().partition(" ")
        rest = rest.strip()
        if not rest:
            return None
        try:
            if scheme.lower() == "apikey":
                return ApiKey(Secret(rest))
            if scheme.lower() == "bearer":
                return BearerToken(Secret(rest))
        except InvalidRequest:
            return None
        return None
    offered = [p.strip() for p in subprotocols]
    if len(offered) >= 2 and offered[0].lower() == BEARER_SUBPROTOCOL:
        try:
            return BearerToken(Secret(offered[1]), via="subprotocol")
        except InvalidRequest:
            return None
    return None


#: the named HTML references of the characters a secret may hold (``html.escape`` and
#: HTML5's names for URL and base64 punctuation)
_HTML_NAMES = {"&": "amp", "<": "lt", ">": "gt", '"': "quot", "'": "apos", "/": "sol",
               "+": "plus", "=": "equals", "%": "percnt", "#": "num", "?": "quest"}


def _char_forms(c: str, first: bool = False) -> str:
    """A regex for one character of a secret in any of the encodings that carry text: as
    itself, percent-encoded (``%2F``), a JSON or Python escape (``\\u002f``, ``\\/``,
    with the backslash itself escaped any number of times, as a repr of JSON has it), or an
    HTML character reference (``&#x2F;``, ``&#47;``, ``&sol;``)."""
    code = ord(c)
    # a secret's first character spelled with backslashes starts only where a run of them
    # starts: tried at every backslash of a long run, the match would be quadratic
    start = r"(?<!\\)" if first else ""
    forms = [f"(?i:%{code:02x})", rf"(?i:{start}\\+u0*{code:x})", f"(?i:&#x0*{code:x};?)",
             f"&#0*{code};?"]
    if not c.isalnum():  # first: the escape's backslashes are part of the secret's spelling
        forms.insert(0, rf"{start}\\+{re.escape(c)}")  # JSON's \/ and \", repr's \' and \\
    if c in _HTML_NAMES:
        forms.append(f"&{_HTML_NAMES[c]};")
    if c == " ":  # a space (a query value's '+', decoded) as the query carries it
        forms.append(r"\+")
    return "(?:" + "|".join([*forms, re.escape(c)]) + ")"


@functools.lru_cache(maxsize=32)
def _spellings(value: str) -> re.Pattern[str]:
    """``value`` in every spelling :func:`_char_forms` knows, compiled once per secret
    (:func:`redact` runs on every message a connection receives)."""
    return re.compile(_char_forms(value[0], first=True) + "".join(map(_char_forms, value[1:])))


def redact(text: str, *secrets: Secret | str | None) -> str:
    """``text`` with every occurrence of the given secrets replaced by ``***``: as they are,
    and as a URL, a JSON document, a repr or an HTML page would spell them (a server may
    echo the request's query, or quote a key in a JSON error with ``\\/`` for ``/``; a
    JSON message is redacted before it is decoded)."""
    for secret in secrets:
        value = secret.reveal() if isinstance(secret, Secret) else secret
        if value and any(c in text for c in "%\\&+"):  # an encoded form is possible
            text = _spellings(value).sub(_REDACTED, text)
        elif value:
            text = text.replace(value, _REDACTED)
    return text


#: headers and query parameters that carry a credential in one of the supported dialects
#: (Reson8: ``Authorization`` or the ``bearer`` subprotocol; ElevenLabs: ``xi-api-key`` or
#: a single-use ``token`` in the query)
_SECRET_HEADERS = frozenset({"authorization", "sec-websocket-protocol", "xi-api-key", "cookie"})
_SECRET_PARAMS = frozenset({"token", "access_token", "api_key", "key", "xi-api-key"})
_SCHEMES = frozenset({"apikey", "bearer", "basic", "token"})  # not secrets themselves


def url_credentials(url: str) -> tuple[str, ...]:
    """The values of ``url``'s credential query parameters and its user info (what
    :func:`redact_url` masks): a ``?token=`` or ``user:password@`` (websockets sends it as
    Basic authorization) is as secret as a header."""
    parts = urlsplit(url)
    found: list[str] = []
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at:  # the password; a lone user name too (a token put there), not one beside it
        user, colon, password = userinfo.partition(":")
        secret = password if colon else user
        if secret:
            found.append(unquote(secret))
    if parts.query:
        found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True)
                  if k.lower() in _SECRET_PARAMS and v]
    return tuple(found)


def redacted_repr(obj: Any) -> str:
    """A dataclass's repr with the credentials in its URL fields masked (assign it as the
    class's ``__repr__``; fields with ``repr=False`` stay out as usual)."""
    shown = []
    for f in dataclasses.fields(obj):
        if f.repr:
            value = getattr(obj, f.name)
            shown.append(f"{f.name}={(redact_url(value) if isinstance(value, str) else value)!r}")
    return f"{type(obj).__qualname__}({', '.join(shown)})"


def redact_url(url: str) -> str:
    """``url`` (or a request path) with the values of credential query parameters and its
    user info (``user:password@``) masked."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        parts = parts._replace(netloc=f"{_REDACTED}@{parts.netloc.rpartition('@')[2]}")
        url = urlunsplit(parts)
    if not parts.query:
        return url
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if not any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
        return url
    masked = [(k, _REDACTED if k.lower() in _SECRET_PARAMS else v) for k, v in pairs]
    return urlunsplit(parts._replace(query=urlencode(masked, safe="*")))


def redact_request(text: str, path: str, headers: Iterable[tuple[str, str]]) -> str:
    """``text`` with every credential an upgrade request carried masked: the values of its
    credential headers (and each word of them: the token of ``Bearer <token>``, each item of
    a subprotocol list) and of its credential query parameters."""
    found: set[str] = set()
    for name, value in headers:
        if name.lower() in _SECRET_HEADERS:
            found.add(value)
            found.update(w for w in value.replace(",", " ").split()
                         if w.lower() not in _SCHEMES)
    query = urlsplit(path).query
    found.update(v for k, v in parse_qsl(query, keep_blank_values=True)
                 if k.lower() in _SECRET_PARAMS and v)
    # the whole value before its parts
    return redact(text, *sorted(found, key=len, reverse=True))


class _HandshakeRedactor(logging.Filter):
    """Masks credentials in websockets' debug log of the handshake: header lines
    (``%s: %s``) and any argument with a query string (the request line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            if (isinstance(record.msg, str) and record.msg.endswith("%s: %s")
                    and str(args[0]).lower() in _SECRET_HEADERS):
                args = (args[0], _REDACTED, *args[2:])
            record.args = tuple(redact_url(a) if isinstance(a, str) and "?" in a else a
                                for a in args)
        return True


class _ConnectionRedactor(logging.LoggerAdapter[logging.Logger]):
    """One connection's view of :func:`websocket_logger`: its own credentials are masked in
    every line too, wherever they appear (a frame a server sent quoting them back, a close
    reason, a traceback)."""

    def __init__(self, log: logging.Logger, secrets: Sequence[Secret | str]) -> None:
        super().__init__(log, {})
        self.secrets = tuple(secrets)

    def _mask(self, value: object) -> object:
        if isinstance(value, int | float):
            return value
        if (dataclasses.is_dataclass(value) and not isinstance(value, type)
                and hasattr(value, "opcode")
                and isinstance(getattr(value, "data", None), bytes | bytearray | memoryview)):
            # a websockets Frame: printed, it elides a long payload's middle, and a secret
            # cut there would keep its other half; mask the whole payload first
            payload = bytes(value.data).decode("latin-1")  # type: ignore[attr-defined]
            value = dataclasses.replace(
                value, data=redact(payload, *self.secrets).encode("latin-1"))
        return redact(str(value), *self.secrets)

    def log(self, level: int, msg: object, *args: object, exc_info: Any = None,
            **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        if exc_info:  # the traceback's text, masked, instead of the exception itself
            if exc_info is True:
                exc_info = sys.exc_info()
            if isinstance(exc_info, BaseException):
                exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
            msg = f"{msg}\n%s"
            args = (*args, "".join(traceback.format_exception(*exc_info)).rstrip())
        kwargs.setdefault("stacklevel", 2)
        self.logger.log(level, self._mask(msg), *(self._mask(a) for a in args), **kwargs)


def websocket_logger(
    side: Literal["client", "server"], secrets: Sequence[Secret | str] = (),
) -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The stdlib logger every reson8 WebSocket logs to (``reson8_voice.websockets.client``
    or ``.server``): websockets' own, with credentials masked in its DEBUG handshake lines,
    which would otherwise print the ``Authorization`` header and the query string. With
    ``secrets`` (one connection's credentials), those are masked in every line as well."""
    log = logging.getLogger(f"reson8_voice.websockets.{side}")
    if not any(isinstance(f, _HandshakeRedactor) for f in log.filters):
        log.addFilter(_HandshakeRedactor())
    return _ConnectionRedactor(log, secrets) if secrets else log
