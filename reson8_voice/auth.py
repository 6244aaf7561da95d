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

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from .errors import InvalidRequest

__all__ = [
    "ApiKey",
    "BearerToken",
    "Credentials",
    "Secret",
    "auth_headers",
    "parse_auth",
    "redact",
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


@dataclass(frozen=True, slots=True)
class BearerToken:
    """An access token, sent as ``Authorization: Bearer <token>`` or as a subprotocol."""

    secret: Secret
    via: Literal["header", "subprotocol"] = "header"

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


def parse_auth(
    headers: Mapping[str, str], subprotocols: Sequence[str] = ()
) -> Credentials | None:
    """Read the credentials of an upgrade request; None when absent or malformed.

    ``headers`` must be case-insensitive (as websockets' ``Headers`` are) or use the
    canonical ``Authorization`` spelling. ``subprotocols`` are the offered ones, in order.
    """
    value = headers.get("Authorization") or headers.get("authorization")
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


def redact(text: str, *secrets: Secret | None) -> str:
    """``text`` with every occurrence of the given secrets replaced by ``***``."""
    for secret in secrets:
        if secret is not None:
            text = text.replace(secret.reveal(), _REDACTED)
    return text
