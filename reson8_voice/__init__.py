"""reson8-voice: turn-taking for pipecat voice agents on the Reson8 turns API.

The core (events, wire format, turn state machine, parameters, credentials, errors, G.711,
VAD) is sans-I/O and imports neither asyncio, websockets nor pipecat. The async client lives
in :mod:`reson8_voice.client` (imported lazily here), the pipecat adapter in
:mod:`reson8_voice.pipecat`, the embedded server in :mod:`reson8_voice.server`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .auth import (
    ApiKey,
    BearerToken,
    Credentials,
    Secret,
    auth_headers,
    parse_auth,
    redact_url,
    redacted_repr,
    url_credentials,
    websocket_logger,
)
from .errors import (
    AudioFormatError,
    BadRequest,
    ConnectionClosed,
    HandshakeError,
    InternalServerError,
    InvalidRequest,
    LocalProtocolError,
    ModelUnavailableError,
    ProtocolError,
    RemoteProtocolError,
    Reson8Error,
    ServiceError,
    Unauthorized,
)
from .events import (
    ErrorEvent,
    Event,
    FlushConfirmation,
    FlushRequest,
    Transcript,
    TurnContinuation,
    TurnEnd,
    TurnEndCandidate,
    TurnEvent,
    TurnStart,
    UnknownEvent,
    Word,
)
from .params import HOSTED_URL, RealtimeParams, TurnsParams, endpoint_url
from .turns import CompletedTurn, IllegalTransition, TurnState, TurnStateMachine
from .wire import parse_event, serialize_event

if TYPE_CHECKING:
    from .client import Reson8Connection, connect, connect_realtime, connect_turns

__version__ = "0.1.0"

_LAZY = {"Reson8Connection", "connect", "connect_realtime", "connect_turns"}


def __getattr__(name: str) -> Any:
    # The client needs asyncio and websockets; import it only when asked for.
    if name in _LAZY:
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'reson8_voice' has no attribute {name!r}")


__all__ = [
    "HOSTED_URL",
    "ApiKey",
    "AudioFormatError",
    "BadRequest",
    "BearerToken",
    "CompletedTurn",
    "ConnectionClosed",
    "Credentials",
    "ErrorEvent",
    "Event",
    "FlushConfirmation",
    "FlushRequest",
    "HandshakeError",
    "IllegalTransition",
    "InternalServerError",
    "InvalidRequest",
    "LocalProtocolError",
    "ModelUnavailableError",
    "ProtocolError",
    "RealtimeParams",
    "RemoteProtocolError",
    "Reson8Connection",
    "Reson8Error",
    "Secret",
    "ServiceError",
    "Transcript",
    "TurnContinuation",
    "TurnEnd",
    "TurnEndCandidate",
    "TurnEvent",
    "TurnStart",
    "TurnState",
    "TurnStateMachine",
    "TurnsParams",
    "Unauthorized",
    "UnknownEvent",
    "Word",
    "auth_headers",
    "connect",
    "connect_realtime",
    "connect_turns",
    "endpoint_url",
    "parse_auth",
    "parse_event",
    "redact_url",
    "redacted_repr",
    "serialize_event",
    "url_credentials",
    "websocket_logger",
]
