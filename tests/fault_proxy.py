"""A fault-injecting WebSocket proxy on loopback, for the reliability tests.

Put it between a client and the embedded server and break the connection on purpose::

    async with FaultProxy("127.0.0.1", server.port) as proxy:
        service = Reson8TurnsSTTService(url=proxy.url, ...)
        ...
        proxy.stall()            # the server goes silent; the watchdog must notice
        proxy.drop()             # TCP RST on both sides, no close frame
        proxy.refuse()           # nothing listens on the port: ECONNREFUSED

Controls (all synchronous, callable at any moment): admission (:meth:`~FaultProxy.refuse`,
:meth:`~FaultProxy.blackhole`, :meth:`~FaultProxy.accept`, :meth:`~FaultProxy.reject_upgrade`,
:meth:`~FaultProxy.clear_rejection`), connections (:meth:`~FaultProxy.drop`,
:meth:`~FaultProxy.stall` / :meth:`~FaultProxy.resume`, :meth:`~FaultProxy.half_open` /
:meth:`~FaultProxy.resume_client`, :meth:`~FaultProxy.slow`), server messages
(:meth:`~FaultProxy.garble_next`, :meth:`~FaultProxy.truncate_next`,
:meth:`~FaultProxy.drop_after`, :meth:`~FaultProxy.inject`) and :meth:`~FaultProxy.reset`.
Observe with ``proxy.stats`` (:class:`ProxyStats`) and ``await proxy.wait_until(pred)``.

It relays bytes, not WebSocket messages, so the client and the server negotiate the
handshake, pings and closes between themselves. The upgrade request and response pass
through untouched; after a ``101`` the proxy parses RFC 6455 frames in both directions, to
count them and, on the server -> client direction, to act on whole messages (garble,
truncate, inject, drop after a match). Server frames are reassembled into messages, so an
injected or rewritten message never lands inside a fragmented one; control frames (ping,
pong, close) travel on their own, as RFC 6455 section 5.4 allows.

Faults are proxy-wide and apply to current and future connections until cleared (except
:meth:`drop`, which acts on the connections open at the call). Timings are stated in the
method docstrings; nothing here waits on a guess: waits are on events, bounded by the
``*_timeout`` settings, and :meth:`close` cancels and awaits every task it started.

Compression: the embedded server runs with ``compression=None``, so frames are plain. If a
``101`` response negotiates an extension (``Sec-WebSocket-Extensions``), the proxy still
relays and counts that connection but leaves its compressed messages (RSV1 set) alone:
:meth:`garble_next` / :meth:`truncate_next` skip them and ``stats.compressed`` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import struct
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal

__all__ = ["FaultProxy", "ProxyStats"]

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_EOF = -1  # the pseudo-opcode of "the server closed its side of the TCP connection"
_HEAD_END = b"\r\n\r\n"
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a RST

GarbleMode = Literal["json", "utf8"]


@dataclass
class ProxyStats:
    """Counters since the proxy started (``up`` = client -> server, ``down`` = back)."""

    #: TCP connections accepted (including those turned away by ``max_connections``)
    connections: int = 0
    #: connections reset at once because ``max_connections`` were open
    overflow: int = 0
    #: upgrade requests forwarded to the server
    upgrades_forwarded: int = 0
    #: ``101 Switching Protocols`` responses relayed to the client
    upgrades_completed: int = 0
    #: upgrades answered by the proxy itself (:meth:`FaultProxy.reject_upgrade`)
    upgrades_rejected: int = 0
    #: connections whose upstream connect failed (the client was reset)
    upstream_failures: int = 0
    #: bytes written to the server / to the client (handshakes included)
    bytes_up: int = 0
    bytes_down: int = 0
    #: complete data messages forwarded from the client, and their binary payload bytes
    messages_up: int = 0
    audio_bytes_up: int = 0
    #: complete data messages / control frames received from the server
    messages_down: int = 0
    control_down: int = 0
    #: data messages written to the client (server ones, rewritten or not, plus injected)
    messages_delivered: int = 0
    injected: int = 0
    garbled: int = 0
    truncated: int = 0
    #: server frames thrown away by ``stall(discard=True)``
    discarded: int = 0
    #: connections reset by :meth:`FaultProxy.drop` / :meth:`FaultProxy.drop_after`
    dropped: int = 0
    #: upgrades that negotiated an extension (their messages are never rewritten)
    compressed: int = 0


@dataclass(slots=True)
class _Frame:
    b0: int
    header: bytes  # the header as received: 2 bytes, extended length, masking key
    payload: bytes  # as received (still masked on client frames)

    @property
    def fin(self) -> bool:
        return bool(self.b0 & 0x80)

    @property
    def opcode(self) -> int:
        return self.b0 & 0x0F


@dataclass(slots=True)
class _Item:
    """One thing waiting to be written to the client: a whole message or a control frame."""

    raw: bytes
    opcode: int
    payload: bytes = b""
    compressed: bool = False
    injected: bool = False
    received_at: float = 0.0

    @property
    def control(self) -> bool:
        """Ping, pong or close: may pass a stall with ``control=False`` (EOF never does)."""
        return self.opcode >= OP_CLOSE


@dataclass(slots=True)
class _Rule:
    action: Literal["garble", "truncate", "drop_after"]
    match: bytes | None
    remaining: int
    mode: GarbleMode = "json"
    keep: int | None = None

    def matches(self, payload: bytes) -> bool:
        return self.match is None or self.match in payload


class _Broken(Exception):
    """A peer broke framing or a limit: the connection is reset."""


class _HangUp(_Broken):
    """The writer ends the link on purpose (:meth:`FaultProxy.drop_after`)."""


_EXPECTED = (OSError, EOFError, asyncio.LimitOverrunError, TimeoutError, _Broken)


class _Link:
    """One proxied connection: the client side, the upstream side, and the outgoing queue."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.client_w: asyncio.StreamWriter | None = None
        self.server_w: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.upgraded = False
        self.compressed = False
        self.reset = False
        self.pending: deque[_Item] = deque()
        self.pending_bytes = 0
        self.wake = asyncio.Event()  # something to write, or the proxy's faults changed
        self.space = asyncio.Event()  # pending_bytes went down
        self.next_free = 0.0  # bandwidth cap: when this link's "wire" is free again
        self.up_opcode = OP_TEXT  # opcode of the client message being continued
        self.pumps: list[asyncio.Task[None]] = []
        self.up_next_free = 0.0  # upstream throttle: when the next audio byte may pass
        self.up_wake = asyncio.Event()  # the throttle changed
        self.hangup = False  # end with a FIN to the client (no close frame), RST upstream

    def abort(self, rst: bool) -> None:
        """Close both sockets now; with ``rst`` the peers get a TCP RST, not a FIN."""
        for writer in (self.client_w, self.server_w):
            if writer is None:
                continue
            if rst:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            writer.transport.abort()
        if self.client_w is None:
            if rst:
                with contextlib.suppress(OSError):
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            self.sock.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """An unmasked (server -> client) RFC 6455 frame."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((b0, n))
    elif n < 1 << 16:
        head = bytes((b0, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, 127)) + n.to_bytes(8, "big")
    return head + payload


async def _read_frame(reader: asyncio.StreamReader, limit: int) -> _Frame | None:
    """The next frame, or None on a clean EOF between frames."""
    try:
        head = await reader.readexactly(2)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    b0, b1 = head
    n = b1 & 0x7F
    if n == 126:
        ext = await reader.readexactly(2)
        n = int.from_bytes(ext, "big")
        head += ext
    elif n == 127:
        ext = await reader.readexactly(8)
        n = int.from_bytes(ext, "big")
        head += ext
    if n > limit:
        raise _Broken(f"frame of {n} bytes over the {limit}-byte limit")
    if b1 & 0x80:
        head += await reader.readexactly(4)
    payload = await reader.readexactly(n) if n else b""
    return _Frame(b0, head, payload)


def _parse_response_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise _Broken(f"not an HTTP response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def _http_response(status: int, body: bytes) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    head = (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + body


def _garble(payload: bytes, mode: GarbleMode) -> bytes:
    """Same length; ``json``: still valid UTF-8 but never valid JSON; ``utf8``: invalid UTF-8."""
    if not payload:
        return b"\xff" if mode == "utf8" else b"#"
    if mode == "utf8":
        return b"\xff" + payload[1:]
    if payload[0] < 0x80:
        return b"#" + payload[1:]
    return b"#" * len(payload)


def _truncate(payload: bytes, keep: int | None) -> bytes:
    """The first ``keep`` bytes (default half), backed off to a UTF-8 character boundary."""
    k = len(payload) // 2 if keep is None else max(0, min(keep, len(payload) - 1))
    while 0 < k < len(payload) and 0x80 <= payload[k] < 0xC0:
        k -= 1
    return payload[:k]


class FaultProxy:
    """A loopback TCP proxy that speaks enough WebSocket to break it on purpose.

    Args:
        upstream_host: the real server's host (loopback only).
        upstream_port: the real server's port.
        host: where to listen (loopback only).
        port: where to listen; 0 picks a free port, kept across :meth:`refuse` /
            :meth:`accept`.
        max_connections: connections open at once; more are reset on arrival.
        max_buffer_bytes: server bytes queued per connection before the proxy stops reading
            the server (back-pressure: a long stall eventually blocks the server's sends).
        max_frame_bytes: the largest frame or message relayed; larger ones reset the link.
        connect_timeout: bound on the upstream TCP connect.
        handshake_timeout: bound on reading the upgrade request and the server's answer.
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1",
        port: int = 0, max_connections: int = 32, max_buffer_bytes: int = 8 << 20,
        max_frame_bytes: int = 16 << 20, connect_timeout: float = 5.0,
        handshake_timeout: float = 10.0,
    ) -> None:
        if not (_is_loopback(host) and _is_loopback(upstream_host)):
            raise ValueError("FaultProxy is for loopback only")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.max_connections = max_connections
        self.max_buffer_bytes = max_buffer_bytes
        self.max_frame_bytes = max_frame_bytes
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.stats = ProxyStats()
        #: unexpected exceptions inside the proxy (bugs); ``__aexit__`` raises if any
        self.errors: list[BaseException] = []
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: socket.socket | None = None
        self._links: set[_Link] = set()
        self._closing = False
        self._changed = asyncio.Event()
        # faults
        self._blackhole = False
        self._rejection: tuple[int, bytes] | None = None
        self._rejections_left: int | None = None
        self._stalled = False
        self._stall_discard = False
        self._stall_control = True
        self._stall_timer: asyncio.TimerHandle | None = None
        self._client_flowing = asyncio.Event()
        self._client_flowing.set()
        self._delay = 0.0
        self._bytes_per_s: float | None = None
        self._up_bytes_per_s: float | None = None
        self._rules: list[_Rule] = []

    def __repr__(self) -> str:
        state = "listening" if self._listener else "not listening"
        return f"<FaultProxy {self.url} -> {self.upstream_host}:{self.upstream_port} {state}>"

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The listening port (stable across refuse/accept)."""
        if not self._port:
            raise RuntimeError("proxy not started")
        return self._port

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:<port>``: give it to the client instead of the server's URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self._port}"

    @property
    def client_bytes(self) -> int:
        """Binary (audio) payload bytes forwarded from the client to the server."""
        return self.stats.audio_bytes_up

    @property
    def open_connections(self) -> int:
        """Connections currently relayed (or held) by the proxy."""
        return len(self._links)

    async def start(self) -> None:
        """Start listening."""
        self._loop = asyncio.get_running_loop()
        self._listen()

    async def close(self) -> None:
        """Stop listening, reset every connection, and await every task the proxy started."""
        self._closing = True
        self._unlisten()
        self.resume()
        links = list(self._links)
        for link in links:
            self._kill(link, rst=True)
        tasks = [link.task for link in links if link.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
        if exc is None and self.errors:
            raise RuntimeError(f"fault proxy internal errors: {self.errors!r}") from self.errors[0]

    async def wait_until(
        self, predicate: Callable[[ProxyStats], bool], timeout: float = 5.0,
    ) -> ProxyStats:
        """Wait until ``predicate(stats)`` holds (re-checked on every counter change).

        Raises:
            TimeoutError: not within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while not predicate(self.stats):
                await self._changed.wait()
        return self.stats

    # -- admission -----------------------------------------------------------------------
    def refuse(self) -> None:
        """Close the listening socket: connects fail with ECONNREFUSED until :meth:`accept`.

        Connections already open are not touched (see :meth:`drop`).
        """
        self._unlisten()

    def accept(self) -> None:
        """Listen again on the same port and stop black-holing new connections."""
        self._blackhole = False
        if self._listener is None and not self._closing:
            self._listen()

    def blackhole(self) -> None:
        """Accept new TCP connections but never answer their upgrade (until :meth:`accept`).

        The client's open timeout fires; a held connection lasts until the client gives
        up, :meth:`drop` or :meth:`close`.
        """
        self._blackhole = True

    def reject_upgrade(
        self, status: int = 401, code: str = "UNAUTHORIZED", message: str = "rejected by proxy",
        *, count: int | None = None, **extra: str,
    ) -> None:
        """Answer upgrades with HTTP ``status`` and ``{"code", "message", **extra}`` (spec 001
        error table: 400 INVALID_REQUEST, 401 UNAUTHORIZED, 500 INTERNAL_ERROR) instead of
        forwarding them; the server never sees them.

        Args:
            count: reject only the next ``count`` upgrades; None: all until
                :meth:`clear_rejection`.
        """
        if count is not None and count < 1:
            raise ValueError("count must be positive")
        body = json.dumps({"code": code, "message": message, **extra}).encode()
        self._rejection = (status, body)
        self._rejections_left = count

    def clear_rejection(self) -> None:
        """Forward upgrades again."""
        self._rejection = None
        self._rejections_left = None

    # -- connection faults ---------------------------------------------------------------
    def drop(self, *, rst: bool = True) -> int:
        """Cut every open connection at once, without a WebSocket close frame.

        Args:
            rst: reset both sides (TCP RST: like a crashed host or a middlebox; the client
                may lose server bytes its kernel had received but it had not read yet).
                False: the server is reset but the client gets a clean TCP FIN after every
                byte already written (like a server process that died); connections still
                in their handshake are reset either way.

        Returns:
            How many connections were dropped.
        """
        links = list(self._links)
        for link in links:
            if not rst and link.pumps:
                link.hangup = True
                for task in link.pumps:
                    task.cancel()
            else:
                self._kill(link, rst=True)
        self.stats.dropped += len(links)
        self._bump()
        return len(links)

    def stall(
        self, seconds: float | None = None, *, discard: bool = False, control: bool = True,
    ) -> None:
        """Stop writing server -> client frames after the handshake; the server keeps
        receiving audio and keeps working, its output queues in the proxy.

        Args:
            seconds: resume by itself after this long (None: until :meth:`resume`).
            discard: throw server frames away during the stall instead of delivering them
                on resume (injected messages and the server's TCP close are kept).
            control: also hold ping/pong/close frames (a dead path, which keep-alives
                detect); False lets them through (a live server that went quiet).
        """
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._stalled = True
        self._stall_discard = discard
        self._stall_control = control
        if seconds is not None:
            self._stall_timer = self._get_loop().call_later(seconds, self.resume)
        self._wake_all()

    def resume(self) -> None:
        """End a stall; held frames are written in order."""
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._stalled = False
        self._wake_all()

    @property
    def stalled(self) -> bool:
        """Whether server -> client frames are held."""
        return self._stalled

    def half_open(self) -> None:
        """Stop reading from clients (current and new, after their handshake): the server
        gets no more audio or pongs while every socket stays open. A frame already read is
        held, not forwarded. Undo with :meth:`resume_client`."""
        self._client_flowing.clear()

    def resume_client(self) -> None:
        """Read from clients again (held frames first)."""
        self._client_flowing.set()

    def slow(self, delay_s: float, *, bytes_per_s: float | None = None) -> None:
        """Add latency to the server -> client direction (``slow(0)`` clears it).

        Each frame (message or control frame) is written no earlier than ``delay_s`` after
        the proxy received it, in order; with ``bytes_per_s``, each connection is idle for
        ``len(frame) / bytes_per_s`` after writing a frame (a bandwidth cap).
        """
        if delay_s < 0 or (bytes_per_s is not None and bytes_per_s <= 0):
            raise ValueError("delay_s must be >= 0 and bytes_per_s > 0")
        self._delay = delay_s
        self._bytes_per_s = bytes_per_s
        self._wake_all()

    def throttle_up(self, bytes_per_s: float | None) -> None:
        """Pass client -> server audio at most ``bytes_per_s`` (None clears it): a server
        that reads, and so answers, slower than real time (TCP back-pressure reaches the
        client once the buffers fill). Binary payload bytes are paced per connection; text
        and control frames pass when their turn comes."""
        if bytes_per_s is not None and bytes_per_s <= 0:
            raise ValueError("bytes_per_s must be positive")
        self._up_bytes_per_s = bytes_per_s
        self._wake_all()

    # -- message faults (server -> client) -----------------------------------------------
    def garble_next(
        self, count: int = 1, *, match: str | None = None, mode: GarbleMode = "json",
    ) -> None:
        """Corrupt the next ``count`` server text messages (containing ``match``, if given)
        delivered to a client, keeping their length.

        ``mode="json"``: valid UTF-8 that is not JSON (the first byte becomes ``#``), so the
        client raises RemoteProtocolError and keeps the connection. ``mode="utf8"``: the
        first byte becomes 0xFF, invalid UTF-8, so the client's WebSocket fails with 1007.
        """
        self._add_rule(_Rule("garble", self._match(match), count, mode=mode))

    def truncate_next(
        self, count: int = 1, *, match: str | None = None, keep: int | None = None,
    ) -> None:
        """Cut the next ``count`` server text messages (containing ``match``) to ``keep``
        bytes (default half), at a UTF-8 boundary, re-framed as a shorter valid frame."""
        self._add_rule(_Rule("truncate", self._match(match), count, keep=keep))

    def drop_after(self, match: str | None = None, *, count: int = 1) -> None:
        """Cut a connection (as ``drop(rst=False)``: RST to the server, FIN to the client,
        no close frame) right after writing it the ``count``-th next server text message
        containing ``match`` (any, if None); the client reads that message, then the end."""
        self._add_rule(_Rule("drop_after", self._match(match), count))

    def inject(self, *texts: str, repeat: int = 1) -> int:
        """Queue extra text messages to every upgraded connection, behind what is already
        queued (so they obey stalls and latency): ``texts`` in order, ``repeat`` times.

        Returns:
            How many connections they were queued to.
        """
        total = len(texts) * repeat
        if not texts or repeat < 1 or total > 100_000:
            raise ValueError("inject between 1 and 100000 messages")
        frames = [(encode_frame(OP_TEXT, t.encode()), t.encode()) for t in texts]
        links = [link for link in self._links if link.upgraded]
        for link in links:
            for _ in range(repeat):
                for raw, payload in frames:
                    self._enqueue(link, _Item(raw, OP_TEXT, payload, injected=True))
        self.stats.injected += total * len(links)
        self._bump()
        return len(links)

    def reset(self) -> None:
        """Clear every fault: accept, no rejection, no stall, clients read, no latency, no
        pending message rule."""
        self.accept()
        self.clear_rejection()
        self.resume()
        self.resume_client()
        self._delay = 0.0
        self._bytes_per_s = None
        self._up_bytes_per_s = None
        self._rules.clear()
        self._wake_all()

    # -- internals -----------------------------------------------------------------------
    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("proxy not started")
        return self._loop

    @staticmethod
    def _match(match: str | None) -> bytes | None:
        return None if match is None else match.encode()

    def _add_rule(self, rule: _Rule) -> None:
        if rule.remaining < 1:
            raise ValueError("count must be positive")
        self._rules.append(rule)

    def _bump(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _wake_all(self) -> None:
        for link in self._links:
            link.wake.set()
            link.up_wake.set()

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        self._listener = sock
        self._get_loop().add_reader(sock.fileno(), self._on_acceptable)

    def _unlisten(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            self._get_loop().remove_reader(sock.fileno())
            sock.close()  # connections still in the backlog are reset by the kernel

    def _on_acceptable(self) -> None:
        for _ in range(64):
            if self._listener is None:
                return
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.stats.connections += 1
            if len(self._links) >= self.max_connections or self._closing:
                self.stats.overflow += 1
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
                conn.close()
                self._bump()
                continue
            link = _Link(conn)
            self._links.add(link)
            link.task = self._get_loop().create_task(self._serve(link))
            link.task.add_done_callback(self._task_done)
            self._bump()

    def _kill(self, link: _Link, rst: bool) -> None:
        link.reset = link.reset or rst
        if link.client_w is not None:
            link.abort(rst)
        if link.task is not None and link.task is not asyncio.current_task():
            link.task.cancel()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.errors.append(exc)  # _serve lets nothing escape unless the proxy is broken

    def _record(self, exc: BaseException) -> None:
        if not isinstance(exc, (*_EXPECTED, asyncio.CancelledError)):
            self.errors.append(exc)

    def _take_rejection(self) -> tuple[int, bytes] | None:
        rejection = self._rejection
        if rejection is not None and self._rejections_left is not None:
            self._rejections_left -= 1
            if self._rejections_left <= 0:
                self.clear_rejection()
        return rejection

    async def _serve(self, link: _Link) -> None:
        graceful = False
        try:
            reader, writer = await asyncio.open_connection(sock=link.sock, limit=64 << 10)
            link.client_w = writer
            if link.reset:  # dropped while the stream was being set up
                return
            if self._blackhole:
                while await reader.read(1 << 16):
                    pass
                return
            async with asyncio.timeout(self.handshake_timeout):
                request = await reader.readuntil(_HEAD_END)
            rejection = self._take_rejection()
            if rejection is not None:
                self.stats.upgrades_rejected += 1
                response = _http_response(*rejection)
                writer.write(response)
                self.stats.bytes_down += len(response)
                self._bump()
                await writer.drain()
                graceful = await self._close_gracefully(link)
                return
            try:
                async with asyncio.timeout(self.connect_timeout):
                    up_r, up_w = await asyncio.open_connection(
                        self.upstream_host, self.upstream_port, limit=64 << 10)
            except (OSError, TimeoutError):
                self.stats.upstream_failures += 1
                link.reset = True
                return
            link.server_w = up_w
            if link.reset:
                return
            up_w.write(request)
            self.stats.upgrades_forwarded += 1
            self.stats.bytes_up += len(request)
            self._bump()
            async with asyncio.timeout(self.handshake_timeout):
                response = await up_r.readuntil(_HEAD_END)
            status, headers = _parse_response_head(response)
            if status == 101:
                link.upgraded = True
                link.compressed = bool(headers.get("sec-websocket-extensions"))
                self.stats.upgrades_completed += 1
                self.stats.compressed += link.compressed
            writer.write(response)
            self.stats.bytes_down += len(response)
            self._bump()
            await writer.drain()
            pumps: tuple[Coroutine[Any, Any, None], ...]
            if status == 101:
                pumps = (self._pump_up(link, reader, up_w), self._read_down(link, up_r),
                         self._write_down(link, writer))
            else:
                pumps = (self._copy(reader, up_w, up=True), self._copy(up_r, writer, up=False))
            clean = await self._run_all(link, *pumps)
            if link.hangup:
                await self._hang_up(link, reader)
            elif clean:
                graceful = await self._close_gracefully(link)
        except Exception as exc:
            self._record(exc)
        finally:
            self._links.discard(link)
            link.abort(rst=not graceful or link.reset)  # a no-op on closed transports
            self._bump()

    async def _close_gracefully(self, link: _Link) -> bool:
        """FIN both sides and wait (bounded) until their sockets are closed."""
        writers = [w for w in (link.client_w, link.server_w) if w is not None]
        for w in writers:
            w.close()
        try:
            async with asyncio.timeout(self.handshake_timeout):
                for w in writers:
                    await w.wait_closed()
        except _EXPECTED:
            return False
        return not link.reset

    async def _hang_up(self, link: _Link, reader: asyncio.StreamReader) -> None:
        """RST the server; FIN the client after what was written, read it out until it
        closes (so our kernel never answers its late frames with a RST), then close."""
        if link.server_w is not None:
            sock = link.server_w.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            link.server_w.transport.abort()
        writer = link.client_w
        assert writer is not None
        with contextlib.suppress(*_EXPECTED):
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(self.handshake_timeout):
                while await reader.read(1 << 16):
                    pass
                writer.close()
                await writer.wait_closed()

    async def _run_all(self, link: _Link, *coros: Coroutine[Any, Any, None]) -> bool:
        """Run the pumps; True if all ended cleanly, False (the link is reset) otherwise."""
        tasks = link.pumps = [asyncio.ensure_future(c) for c in coros]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        clean = True
        for task in tasks:
            if task.cancelled():
                clean = False
            elif (exc := task.exception()) is not None:
                self._record(exc)
                clean = False
        return clean

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    *, up: bool) -> None:
        """Raw bytes (a non-101 response and whatever follows it)."""
        while data := await reader.read(1 << 16):
            writer.write(data)
            if up:
                self.stats.bytes_up += len(data)
            else:
                self.stats.bytes_down += len(data)
            self._bump()
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def _pump_up(self, link: _Link, reader: asyncio.StreamReader,
                       up_w: asyncio.StreamWriter) -> None:
        """Client -> server frames, passed through as read; paused by :meth:`half_open`."""
        while True:
            await self._client_flowing.wait()
            frame = await _read_frame(reader, self.max_frame_bytes)
            if frame is None:
                if up_w.can_write_eof():
                    up_w.write_eof()
                return
            await self._client_flowing.wait()
            opcode = frame.opcode
            if opcode in (OP_TEXT, OP_BINARY):
                link.up_opcode = opcode
            if opcode < OP_CLOSE:
                if (opcode or link.up_opcode) == OP_BINARY:
                    await self._pace_up(link, len(frame.payload))
                    self.stats.audio_bytes_up += len(frame.payload)
                self.stats.messages_up += frame.fin
            up_w.write(frame.header + frame.payload)
            self.stats.bytes_up += len(frame.header) + len(frame.payload)
            self._bump()
            await up_w.drain()

    async def _pace_up(self, link: _Link, n: int) -> None:
        """Hold ``n`` audio bytes until the upstream throttle lets them pass."""
        loop = self._get_loop()
        while (rate := self._up_bytes_per_s) is not None:
            now = loop.time()
            if link.up_next_free <= now:
                link.up_next_free = max(now, link.up_next_free) + n / rate
                return
            link.up_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(link.up_next_free - now):
                    await link.up_wake.wait()
        link.up_next_free = 0.0

    def _enqueue(self, link: _Link, item: _Item) -> None:
        item.received_at = self._get_loop().time()
        link.pending.append(item)
        link.pending_bytes += len(item.raw)
        link.wake.set()

    async def _read_down(self, link: _Link, up_r: asyncio.StreamReader) -> None:
        """Server -> client frames into the link's queue, as whole messages."""
        parts: list[_Frame] = []
        size = 0
        while True:
            frame = await _read_frame(up_r, self.max_frame_bytes)
            if frame is None:
                if parts:
                    raise _Broken("the server closed inside a fragmented message")
                self._enqueue(link, _Item(b"", _EOF))
                return
            if frame.opcode >= OP_CLOSE:
                self.stats.control_down += 1
                self._enqueue(link, _Item(frame.header + frame.payload, frame.opcode,
                                          frame.payload))
            else:
                parts.append(frame)
                size += len(frame.payload)
                if size > self.max_frame_bytes:
                    raise _Broken(f"message over {self.max_frame_bytes} bytes")
                if frame.fin:
                    first = parts[0]
                    raw = b"".join(f.header + f.payload for f in parts)
                    payload = b"".join(f.payload for f in parts)
                    self._enqueue(link, _Item(raw, first.opcode, payload,
                                              compressed=bool(first.b0 & 0x40)))
                    self.stats.messages_down += 1
                    parts, size = [], 0
            self._bump()
            while link.pending_bytes >= self.max_buffer_bytes:
                link.space.clear()
                await link.space.wait()

    def _next_deliverable(self, link: _Link) -> tuple[_Item | None, float]:
        """The next item the writer may send now or later (and when), discarding as told."""
        if not self._stalled:
            item = link.pending[0] if link.pending else None
        else:
            if self._stall_discard:
                kept: deque[_Item] = deque()
                for it in link.pending:
                    held = not it.control or self._stall_control
                    if held and not it.injected and it.opcode != _EOF:  # EOF is never lost
                        self.stats.discarded += 1
                        link.pending_bytes -= len(it.raw)
                    else:
                        kept.append(it)
                if len(kept) != len(link.pending):
                    link.pending = kept
                    link.space.set()
                    self._bump()
            item = None
            if not self._stall_control:
                item = next((it for it in link.pending if it.control), None)
        if item is None:
            return None, 0.0
        due = item.received_at + self._delay
        if self._bytes_per_s is not None:
            due = max(due, link.next_free)
        return item, due

    async def _write_down(self, link: _Link, writer: asyncio.StreamWriter) -> None:
        """The link's queue to the client, honouring stalls, latency and message rules."""
        loop = self._get_loop()
        while True:
            item, due = self._next_deliverable(link)
            if item is None:
                link.wake.clear()
                await link.wake.wait()
                continue
            now = loop.time()
            if due > now:
                link.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due - now):
                        await link.wake.wait()
                continue
            if link.pending[0] is item:
                link.pending.popleft()
            else:
                link.pending.remove(item)
            link.pending_bytes -= len(item.raw)
            link.space.set()
            if item.opcode == _EOF:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            data, drop = self._apply_rules(link, item)
            writer.write(data)
            if self._bytes_per_s is not None:
                link.next_free = max(now, link.next_free) + len(data) / self._bytes_per_s
            self.stats.bytes_down += len(data)
            self.stats.messages_delivered += not item.control
            self._bump()
            await writer.drain()
            if drop:
                self.stats.dropped += 1
                link.hangup = True
                raise _HangUp

    def _apply_rules(self, link: _Link, item: _Item) -> tuple[bytes, bool]:
        """The bytes to write for ``item`` and whether to drop the link after them."""
        if item.opcode != OP_TEXT or item.injected or item.compressed or not self._rules:
            return item.raw, False
        data, drop, rewritten = item.raw, False, False
        for rule in list(self._rules):
            if not rule.matches(item.payload):
                continue
            if rule.action == "drop_after":
                drop = rule.remaining == 1
            elif rewritten:
                continue
            elif rule.action == "garble":
                data = encode_frame(OP_TEXT, _garble(item.payload, rule.mode))
                self.stats.garbled += 1
                rewritten = True
            else:
                data = encode_frame(OP_TEXT, _truncate(item.payload, rule.keep))
                self.stats.truncated += 1
                rewritten = True
            rule.remaining -= 1
            if rule.remaining <= 0:
                self._rules.remove(rule)
        return data, drop

