"""A thin async client for the turns and realtime endpoints, on ``websockets``.

Policy-free on purpose: it connects, sends audio and flush requests, yields typed events
and closes. Reconnection, buffering and failover belong to the pipecat service.

    async with await connect_turns("ws://127.0.0.1:8765", TurnsParams(...)) as conn:
        await conn.send_audio(chunk)
        async for event in conn:
            ...

Upgrade rejections become :class:`BadRequest` / :class:`Unauthorized` /
:class:`InternalServerError` carrying the server's code and message. A credential is sent
only over ``wss`` or to a loopback host, unless ``allow_insecure=True``.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.exceptions import InvalidStatus, InvalidURI
from websockets.typing import Subprotocol

from ._keepalive import ProgressKeepalive
from .auth import (
    Credentials,
    Secret,
    auth_headers,
    redact,
    redact_url,
    url_credentials,
    websocket_logger,
)
from .errors import (
    BadRequest,
    ConnectionClosed,
    InvalidRequest,
    RemoteProtocolError,
    Reson8Error,
    handshake_error,
)
from .events import Event, FlushRequest
from .params import RealtimeParams, TurnsParams, endpoint_url, split_ws_url
from .wire import parse_event, serialize_event

__all__ = ["MessageStream", "Reson8Connection", "check_transport", "connect",
           "connect_realtime", "connect_turns", "is_loopback"]

#: The largest message either side accepts (the embedded server's limit too).
MAX_MESSAGE_BYTES = 1 << 20

P = TypeVar("P", TurnsParams, RealtimeParams)


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is this machine (``localhost`` or a loopback address)."""
    if not host:
        return False
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


M = TypeVar("M")


class MessageStream(Generic[M]):
    """``recv`` and async iteration over one connection's JSON text messages.

    Shared by the clients of every dialect: a subclass sets ``_ws`` and ``_peer`` and says
    how to parse a message. ``recv`` raises :class:`RemoteProtocolError` for a malformed
    message and the connection stays usable; iteration ends at a normal close.
    """

    _ws: ClientConnection
    _peer: str = "the server"

    def _parse(self, text: str) -> M:
        raise NotImplementedError

    @property
    def websocket(self) -> ClientConnection:
        """The underlying websockets connection (for pings, state, addresses)."""
        return self._ws

    async def _send(self, data: str | bytes) -> None:
        """Send one message; a closed connection raises the typed ConnectionClosed."""
        try:
            await self._ws.send(data)
        except WsConnectionClosed as exc:
            raise _closed(exc, self._redact) from None

    def _redact(self, text: str) -> str:
        """``text`` from the server with the connection's credentials masked: whatever a
        server says (an error quoting the request's headers, a malformed message) may end
        up in an exception, an ErrorFrame or a log line."""
        secrets = self._ws.secrets if isinstance(self._ws, _ClientConnection) else ()
        return redact(text, *secrets)

    async def recv(self) -> M:
        """The next message. Raises ConnectionClosed at the end, RemoteProtocolError if bad."""
        try:
            message = await self._ws.recv()
        except WsConnectionClosed as exc:
            raise _closed(exc, self._redact) from None
        if isinstance(message, bytes):
            raise RemoteProtocolError(f"unexpected binary message from {self._peer}",
                                      self._redact(message.decode("latin-1"))[:64])
        return self._parse(self._redact(message))

    def __aiter__(self) -> MessageStream[M]:
        return self

    async def __anext__(self) -> M:
        try:
            return await self.recv()
        except ConnectionClosed as exc:
            if exc.code in (1000, 1001):
                raise StopAsyncIteration from None
            raise


class Reson8Connection(MessageStream[Event], Generic[P]):
    """One open session. Iterate it for events; ``send_audio`` to stream audio.

    ``recv`` raises :class:`RemoteProtocolError` for a malformed message and the connection
    stays usable, so a caller may log, count and go on.
    """

    def __init__(self, ws: ClientConnection, params: P, url: str) -> None:
        self._ws = ws
        self.params: P = params
        self.url = redact_url(url)  # public: a ?token= in it is a credential

    def __repr__(self) -> str:
        return f"<Reson8Connection {self.url}>"

    async def send_audio(self, audio: bytes) -> None:
        """Send one binary audio frame (encoded as the connection's ``encoding`` says)."""
        if len(audio) > MAX_MESSAGE_BYTES:
            raise InvalidRequest("audio", f"a frame may hold at most {MAX_MESSAGE_BYTES} bytes")
        await self._send(audio)

    async def send_event(self, event: Event) -> None:
        """Send a client message (a :class:`FlushRequest` on the realtime endpoint)."""
        await self._send(serialize_event(event))

    async def flush(self, request_id: str | None = None) -> None:
        """Ask the realtime server to finalise buffered audio (spec 000)."""
        await self.send_event(FlushRequest(request_id))

    def _parse(self, text: str) -> Event:
        return parse_event(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the session (the server flushes nothing further on the turns endpoint)."""
        await self._ws.close(code, reason)

    async def __aenter__(self) -> Reson8Connection[P]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


_REDIRECTS = frozenset({300, 301, 302, 303, 307, 308})


class _CredentialedConnect(ws_connect):
    """``websockets.connect`` that never follows a redirect.

    websockets strips ``Authorization`` on a cross-origin redirect but keeps the other places
    a credential travels (the ``bearer`` subprotocol, ``xi-api-key``, the URL's query), so
    a request that carries one refuses every redirect instead.
    """

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


class _ClientConnection(ProgressKeepalive, ClientConnection):
    """websockets' client connection whose keep-alive waits for a late pong while the
    connection makes progress: a file streamed at full speed has the pong queued behind
    the audio the server has not read yet (:mod:`reson8_voice._keepalive`).

    ``secrets``: the credentials the upgrade carried, masked in whatever the server sends.
    """

    secrets: tuple[Secret | str, ...] = ()


def _closed(exc: WsConnectionClosed,
            redact_reason: Callable[[str], str] = lambda r: r) -> ConnectionClosed:
    frame = exc.rcvd or exc.sent
    if frame is None:
        return ConnectionClosed(None, "")
    return ConnectionClosed(frame.code, redact_reason(frame.reason))


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _rejection(exc: InvalidStatus) -> Reson8Error:
    status = exc.response.status_code
    code: str | None = None
    message = ""
    parameter: str | None = None
    body = exc.response.body or b""
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            code = _opt_str(data.get("code"))
            message = _opt_str(data.get("message")) or ""
            parameter = _opt_str(data.get("parameter"))
    except (ValueError, RecursionError):  # not JSON, or nested too deep to decode
        message = body.decode("utf-8", "replace")[:200]
    err = handshake_error(status, code, message)
    if isinstance(err, BadRequest):
        err.parameter = parameter
    return err


def check_transport(url: str, *, carries_secret: bool, allow_insecure: bool = False) -> None:
    """Refuse a credential over plain ``ws://`` to a non-loopback host (unless allowed).

    Raises:
        InvalidRequest: naming ``url``.
    """
    parts = split_ws_url(url)
    carries_secret = carries_secret or bool(url_credentials(url))
    if (carries_secret and parts.scheme == "ws" and not is_loopback(parts.hostname)
            and not allow_insecure):
        raise InvalidRequest(
            "url", "refusing to send credentials over plain ws:// to a non-loopback host; "
            "use wss:// or pass allow_insecure=True")


async def open_websocket(
    url: str,
    headers: dict[str, str],
    secrets: Sequence[Secret | None] = (),
    *,
    subprotocols: Sequence[str] = (),
    rejection: Callable[[InvalidStatus], Reson8Error] = _rejection,
    allow_insecure: bool = False,
    open_timeout: float = 10.0,
    ping_interval: float | None = 20.0,
    ping_timeout: float | None = 20.0,
    ssl_context: ssl.SSLContext | None = None,
    **ws_options: Any,
) -> ClientConnection:
    """The WebSocket upgrade every client (turns, realtime, gateway, Scribe) shares.

    Refuses to send any of ``secrets`` (the credentials in ``headers``, ``subprotocols`` or
    the URL) over plain ``ws://`` to a non-loopback host unless ``allow_insecure``,
    verifies TLS, caps messages at :data:`MAX_MESSAGE_BYTES`, and turns every failure
    into a typed error with the secrets redacted: an HTTP refusal goes to ``rejection``.

    Raises:
        InvalidRequest: bad URL, or a credential over plain ``ws`` to a remote host.
        Reson8Error: whatever ``rejection`` makes of a refused upgrade.
        ConnectionClosed: the server could not be reached or hung up during the handshake.
    """
    parts = urlsplit(url)
    creds: tuple[Secret | str, ...] = (*(s for s in secrets if s is not None),
                                        *url_credentials(url))
    carries_secret = bool(creds)
    check_transport(url, carries_secret=carries_secret, allow_insecure=allow_insecure)
    options: dict[str, Any] = {
        "additional_headers": headers,
        "subprotocols": [Subprotocol(p) for p in subprotocols] or None,
        "open_timeout": open_timeout,
        "ping_interval": ping_interval,
        "ping_timeout": ping_timeout,
        "max_size": MAX_MESSAGE_BYTES,
        "proxy": None,
        "logger": websocket_logger("client", creds),
        "create_connection": _ClientConnection,
        **ws_options,
    }
    if parts.scheme == "wss":
        options["ssl"] = ssl_context or ssl.create_default_context()
    try:
        ws = await (_CredentialedConnect if carries_secret else ws_connect)(url, **options)
        if isinstance(ws, _ClientConnection):
            ws.secrets = creds
        return ws
    except InvalidStatus as exc:
        if exc.response.body:  # the body becomes an error message: no secret may ride in it
            body = exc.response.body.decode("utf-8", "replace")
            exc.response.body = redact(body, *creds).encode()
        if carries_secret and exc.response.status_code in _REDIRECTS:
            status = exc.response.status_code
            location = redact_url(redact(exc.response.headers.get("Location", "?"), *creds))
            raise handshake_error(status, None, (
                f"the server redirected to {location}; a request carrying credentials does "
                "not follow redirects: connect to that URL directly")) from None
        raise rejection(exc) from None
    except InvalidURI as exc:
        raise InvalidRequest("url", redact(str(exc), *creds)) from None
    except (OSError, TimeoutError) as exc:
        raise ConnectionClosed(None, redact(f"cannot connect: {exc}", *creds)) from None
    except WsConnectionClosed as exc:
        raise _closed(exc) from None
    except Exception as exc:  # websockets' InvalidHandshake family and friends
        raise ConnectionClosed(None, redact(f"handshake failed: {exc}", *creds)) from None


async def connect(
    url: str,
    params: P,
    credentials: Credentials | None = None,
    *,
    allow_insecure: bool = False,
    open_timeout: float = 10.0,
    ping_interval: float | None = 20.0,
    ping_timeout: float | None = 20.0,
    ssl_context: ssl.SSLContext | None = None,
    **ws_options: Any,
) -> Reson8Connection[P]:
    """Open a session on the endpoint ``params`` belongs to.

    Raises:
        InvalidRequest: bad URL, or a credential over plain ``ws`` to a remote host.
        BadRequest | Unauthorized | InternalServerError | HandshakeError: the server
            refused the upgrade.
        ConnectionClosed: the server could not be reached or hung up during the handshake.
    """
    full_url = endpoint_url(url, params)
    headers, subprotocols = auth_headers(credentials)
    ws = await open_websocket(
        full_url, headers, (credentials.secret if credentials is not None else None,),
        subprotocols=subprotocols, allow_insecure=allow_insecure, open_timeout=open_timeout,
        ping_interval=ping_interval, ping_timeout=ping_timeout, ssl_context=ssl_context,
        **ws_options)
    return Reson8Connection(ws, params, full_url)


async def connect_turns(
    url: str, params: TurnsParams | None = None, credentials: Credentials | None = None,
    **options: Any,
) -> Reson8Connection[TurnsParams]:
    """Open a turns session (spec 001). See :func:`connect` for options and errors."""
    return await connect(url, params or TurnsParams(), credentials, **options)


async def connect_realtime(
    url: str, params: RealtimeParams | None = None, credentials: Credentials | None = None,
    **options: Any,
) -> Reson8Connection[RealtimeParams]:
    """Open a realtime session (spec 000). See :func:`connect` for options and errors."""
    return await connect(url, params or RealtimeParams(), credentials, **options)
