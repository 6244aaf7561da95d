"""The fault-injecting proxy, between the project's client and the embedded server.

Each fault is checked from the client's side (the error the client raises, the events it
sees) and from the server's side (what reached it), on real speech (``short_answers``,
four turns) with the scripted recognizer. Waits are on the proxy's counters or on the
client's events; only the absence of traffic is checked over a short window.

Sessions that stop reading before the server is done end with a reset (``_session``): a
graceful close there keeps the embedded server's session alive for websockets'
``close_timeout`` (10 s), which would only slow these tests down.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable

import pytest
from websockets.asyncio.client import connect as raw_connect
from websockets.asyncio.server import ServerConnection, serve

from reson8_voice import (
    BadRequest,
    ConnectionClosed,
    Event,
    HandshakeError,
    InternalServerError,
    RemoteProtocolError,
    TurnEnd,
    TurnEndCandidate,
    TurnsParams,
    TurnStart,
    TurnStateMachine,
    Unauthorized,
    UnknownEvent,
    connect_turns,
)
from reson8_voice.client import Reson8Connection
from reson8_voice.params import TURNS_PATH
from reson8_voice.server import Reson8Server

from .audio_fixtures import load_fixture
from .fault_proxy import FaultProxy, ProxyStats

PARAMS = TurnsParams(encoding="mulaw", sample_rate=8000)
FX = load_fixture("short_answers")
Conn = Reson8Connection[TurnsParams]


@pytest.fixture
async def proxy(scripted_server: Reson8Server) -> AsyncIterator[FaultProxy]:
    # __aexit__ raises if the proxy hit an unexpected internal error
    async with FaultProxy("127.0.0.1", scripted_server.port) as p:
        yield p


@contextlib.asynccontextmanager
async def _session(proxy: FaultProxy) -> AsyncIterator[Conn]:
    conn = await connect_turns(proxy.url, PARAMS)
    try:
        yield conn
    finally:
        proxy.drop()
        await conn.close()


async def _send_all(conn: Conn) -> None:
    for chunk in FX.chunks(20):
        await conn.send_audio(chunk)


async def _recv(conn: Conn, n: int, timeout: float = 5.0) -> list[Event]:
    async with asyncio.timeout(timeout):
        return [await conn.recv() for _ in range(n)]


async def _whole_session(url: str) -> list[Event]:
    """Stream the fixture and read until its last turn ended."""
    events: list[Event] = []
    async with await connect_turns(url, PARAMS) as conn:
        sender = asyncio.create_task(_send_all(conn))
        async with asyncio.timeout(10):
            while sum(isinstance(e, TurnEnd) for e in events) < len(FX.turns):
                events.append(await conn.recv())
        await sender
    return events


async def _not_done_within(task: asyncio.Task[object], seconds: float) -> bool:
    done, _ = await asyncio.wait({task}, timeout=seconds)
    return not done


def _raw_upgrade() -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {TURNS_PATH}?encoding=mulaw&sample_rate=8000 HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def at_least(field: str, n: int) -> Callable[[ProxyStats], bool]:
    return lambda s: int(getattr(s, field)) >= n


# -- pass-through ----------------------------------------------------------------------
async def test_pass_through_gives_the_same_events_as_a_direct_connection(
    scripted_server: Reson8Server, proxy: FaultProxy,
) -> None:
    direct = await _whole_session(scripted_server.url)
    proxied = await _whole_session(proxy.url)
    assert proxied == direct
    checker = TurnStateMachine()
    turns = [t for e in proxied if (t := checker.process(e)) is not None]  # type: ignore[arg-type]
    assert len(turns) == len(FX.turns)
    assert {type(e) for e in proxied} >= {TurnStart, TurnEndCandidate, TurnEnd}
    stats = await proxy.wait_until(lambda s: s.audio_bytes_up == len(FX.data))
    assert proxy.client_bytes == len(FX.data)
    assert (stats.connections, stats.upgrades_forwarded, stats.upgrades_completed) == (1, 1, 1)
    assert stats.messages_down == stats.messages_delivered == len(proxied)
    assert stats.messages_up == len(list(FX.chunks(20)))
    assert stats.bytes_up > len(FX.data) and stats.bytes_down > 0


async def test_server_rejections_pass_through(proxy: FaultProxy) -> None:
    with pytest.raises(BadRequest) as info:
        await connect_turns(proxy.url + "/?language=%21%21")
    assert info.value.parameter == "language"
    assert proxy.stats.upgrades_forwarded == 1 and proxy.stats.upgrades_completed == 0


# -- admission -------------------------------------------------------------------------
async def test_refused_connections_are_really_refused_until_accept(proxy: FaultProxy) -> None:
    url = proxy.url
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", proxy.port)
    with pytest.raises(ConnectionClosed):
        await connect_turns(url, PARAMS)
    assert proxy.stats.connections == 0
    proxy.accept()
    assert proxy.url == url
    async with _session(proxy) as conn:
        await _send_all(conn)
        assert isinstance((await _recv(conn, 1))[0], TurnStart)


@pytest.mark.parametrize(("status", "code", "error", "extra"), [
    (400, "INVALID_REQUEST", BadRequest, {"parameter": "sample_rate"}),
    (401, "UNAUTHORIZED", Unauthorized, {}),
    (500, "INTERNAL_ERROR", InternalServerError, {}),
])
async def test_rejected_upgrade_becomes_the_typed_error(
    scripted_server: Reson8Server, proxy: FaultProxy, status: int, code: str,
    error: type[HandshakeError], extra: dict[str, str],
) -> None:
    proxy.reject_upgrade(status, code, "injected by the proxy", count=1, **extra)
    with pytest.raises(error) as info:
        await connect_turns(proxy.url, PARAMS)
    assert (info.value.status, info.value.code) == (status, code)
    assert info.value.message == "injected by the proxy"
    if isinstance(info.value, BadRequest):
        assert info.value.parameter == "sample_rate"
    assert proxy.stats.upgrades_rejected == 1 and proxy.stats.upgrades_forwarded == 0
    assert scripted_server.sessions_total == 0
    async with await connect_turns(proxy.url, PARAMS):  # count=1: the next one goes through
        assert proxy.stats.upgrades_completed == 1


async def test_rejection_without_count_lasts_until_cleared(proxy: FaultProxy) -> None:
    proxy.reject_upgrade(401, "UNAUTHORIZED", "expired")
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await connect_turns(proxy.url, PARAMS)
    proxy.clear_rejection()
    async with await connect_turns(proxy.url, PARAMS):
        pass
    assert (proxy.stats.upgrades_rejected, proxy.stats.upgrades_completed) == (2, 1)


async def test_blackholed_upgrade_times_out(proxy: FaultProxy) -> None:
    proxy.blackhole()
    with pytest.raises(ConnectionClosed):
        await connect_turns(proxy.url, PARAMS, open_timeout=0.3)
    assert proxy.stats.connections == 1 and proxy.stats.upgrades_forwarded == 0
    proxy.accept()
    async with await connect_turns(proxy.url, PARAMS):
        pass


async def test_connections_over_the_limit_are_reset(scripted_server: Reson8Server) -> None:
    async with FaultProxy("127.0.0.1", scripted_server.port, max_connections=1) as proxy:
        async with await connect_turns(proxy.url, PARAMS):
            with pytest.raises(ConnectionClosed):
                await connect_turns(proxy.url, PARAMS)
        assert proxy.stats.overflow == 1


# -- connection faults -----------------------------------------------------------------
async def test_drop_resets_both_sides_without_a_close_frame(
    scripted_server: Reson8Server, proxy: FaultProxy,
) -> None:
    conn = await connect_turns(proxy.url, PARAMS)
    sender = asyncio.create_task(_send_all(conn))
    assert isinstance((await _recv(conn, 1))[0], TurnStart)
    assert proxy.drop() == 1
    with pytest.raises(ConnectionClosed) as info:
        await _recv(conn, 100)
    assert info.value.code is None  # no close frame: an abnormal closure
    async with asyncio.timeout(5):
        await scripted_server.wait_idle()  # the server saw the reset and ended the session
    await proxy.wait_until(lambda _: proxy.open_connections == 0)
    with contextlib.suppress(ConnectionClosed):
        await sender
    assert proxy.stats.dropped == 1


async def test_drop_without_rst_delivers_what_was_written_then_ends(
    scripted_server: Reson8Server, proxy: FaultProxy,
) -> None:
    conn = await connect_turns(proxy.url, PARAMS)
    await _send_all(conn)
    await proxy.wait_until(at_least("messages_delivered", 4))
    assert proxy.drop(rst=False) == 1
    written = proxy.stats.messages_delivered
    events: list[Event] = []
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(5):
            while True:
                events.append(await conn.recv())
    assert info.value.code is None and len(events) == written
    async with asyncio.timeout(5):
        await scripted_server.wait_idle()


async def test_drop_is_a_tcp_reset(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(_raw_upgrade())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    await proxy.wait_until(at_least("upgrades_completed", 1))
    assert proxy.drop() == 1
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(), 5)
    writer.close()


async def test_drop_after_a_matching_message(proxy: FaultProxy) -> None:
    proxy.drop_after('"turn_end"')
    conn = await connect_turns(proxy.url, PARAMS)
    sender = asyncio.create_task(_send_all(conn))
    events = await _recv(conn, 3)
    assert [type(e) for e in events] == [TurnStart, TurnEndCandidate, TurnEnd]
    with pytest.raises(ConnectionClosed) as info:
        await _recv(conn, 1)
    assert info.value.code is None
    with contextlib.suppress(ConnectionClosed):
        await sender
    assert proxy.stats.dropped == 1 and proxy.stats.messages_delivered == 3


async def test_stall_holds_server_messages_while_the_server_keeps_working(
    proxy: FaultProxy,
) -> None:
    async with _session(proxy) as conn:
        proxy.stall()
        await _send_all(conn)
        first = asyncio.create_task(conn.recv())
        await proxy.wait_until(at_least("messages_down", 3))  # a whole turn, held
        assert await _not_done_within(first, 0.2)
        assert proxy.stats.messages_delivered == 0
        proxy.resume()
        events = [await asyncio.wait_for(first, 5), *await _recv(conn, 2)]
        assert [type(e) for e in events] == [TurnStart, TurnEndCandidate, TurnEnd]


async def test_timed_stall_resumes_by_itself(proxy: FaultProxy) -> None:
    async with _session(proxy) as conn:
        started = time.monotonic()
        proxy.stall(0.3)
        assert proxy.inject('{"type":"marker"}') == 1
        event = (await _recv(conn, 1))[0]
        assert isinstance(event, UnknownEvent) and event.type == "marker"
        assert time.monotonic() - started >= 0.3 and not proxy.stalled


async def test_discarding_stall_loses_what_the_server_said(
    scripted_server: Reson8Server, proxy: FaultProxy,
) -> None:
    total = len(await _whole_session(scripted_server.url))
    async with _session(proxy) as conn:
        proxy.stall(discard=True)
        await _send_all(conn)
        await proxy.wait_until(at_least("discarded", total))
        proxy.resume()
        proxy.inject('{"type":"marker"}')
        event = (await _recv(conn, 1))[0]
        assert isinstance(event, UnknownEvent) and event.type == "marker"
        assert proxy.stats.messages_delivered == 1


async def test_stall_holds_pongs_unless_control_frames_may_pass(proxy: FaultProxy) -> None:
    url = f"{proxy.url}{TURNS_PATH}?encoding=mulaw&sample_rate=8000"
    async with raw_connect(url, ping_interval=None) as ws:
        proxy.stall(control=False)
        await asyncio.wait_for(await ws.ping(), 5)  # a quiet but live server
        proxy.stall()
        pong = asyncio.ensure_future(await ws.ping())
        assert await _not_done_within(pong, 0.2)  # a dead path
        proxy.resume()
        await asyncio.wait_for(pong, 5)


async def test_half_open_starves_the_server_until_resumed(proxy: FaultProxy) -> None:
    async with _session(proxy) as conn:
        await proxy.wait_until(at_least("upgrades_completed", 1))
        proxy.half_open()
        before = proxy.stats.bytes_up
        sender = asyncio.create_task(_send_all(conn))
        first = asyncio.create_task(conn.recv())
        assert await _not_done_within(first, 0.3)
        assert proxy.stats.bytes_up == before and proxy.client_bytes == 0
        assert proxy.stats.messages_down == 0
        proxy.resume_client()
        assert isinstance(await asyncio.wait_for(first, 5), TurnStart)
        await asyncio.wait_for(sender, 5)
        await proxy.wait_until(lambda s: s.audio_bytes_up == len(FX.data))


async def test_slow_delays_each_message_and_caps_bandwidth(proxy: FaultProxy) -> None:
    async with _session(proxy) as conn:
        proxy.slow(0.25)
        started = time.monotonic()
        proxy.inject('{"type":"marker"}')
        await _recv(conn, 1)
        assert time.monotonic() - started >= 0.25
        proxy.slow(0, bytes_per_s=20_000)
        big = json.dumps({"type": "big", "pad": "x" * 5000})
        proxy.inject(big, big)
        await _recv(conn, 1)
        first_at = time.monotonic()
        await _recv(conn, 1)
        assert time.monotonic() - first_at >= 0.2  # ~5 kB at 20 kB/s


async def test_throttle_up_paces_the_audio_the_server_reads(proxy: FaultProxy) -> None:
    async with _session(proxy) as conn:
        await proxy.wait_until(at_least("upgrades_completed", 1))
        proxy.throttle_up(16_000)  # 2x real time for 8 kHz mu-law
        started = time.monotonic()
        sender = asyncio.create_task(_send_all(conn))
        await proxy.wait_until(lambda s: s.audio_bytes_up >= 8_000, 5)
        assert time.monotonic() - started >= 0.45  # ~8 kB at 16 kB/s, the first frame free
        proxy.throttle_up(None)  # cleared: the rest passes at once
        await proxy.wait_until(lambda s: s.audio_bytes_up == len(FX.data), 5)
        await asyncio.wait_for(sender, 5)
        assert time.monotonic() - started < len(FX.data) / 16_000


# -- message faults --------------------------------------------------------------------
async def test_garbled_message_is_a_remote_protocol_error_and_the_next_parses(
    proxy: FaultProxy,
) -> None:
    proxy.garble_next()
    async with _session(proxy) as conn:
        await _send_all(conn)
        with pytest.raises(RemoteProtocolError) as info:
            await _recv(conn, 1)
        raw = info.value.raw
        assert raw is not None and raw.startswith("#")
        assert json.loads("{" + raw[1:]) == {"type": "turn_start"}  # same length, one byte
        assert isinstance((await _recv(conn, 1))[0], TurnEndCandidate)
    assert proxy.stats.garbled == 1


async def test_garbled_utf8_fails_the_websocket(proxy: FaultProxy) -> None:
    proxy.garble_next(mode="utf8")
    conn = await connect_turns(proxy.url, PARAMS)
    # a few big frames: the server is not backlogged when the client fails the connection
    # (a backlogged server session would outlive it by websockets' close_timeout)
    for chunk in list(FX.chunks(500))[:4]:
        await conn.send_audio(chunk)
    with pytest.raises(ConnectionClosed) as info:
        await _recv(conn, 1)
    assert info.value.code == 1007


async def test_truncated_message_is_a_remote_protocol_error(proxy: FaultProxy) -> None:
    proxy.truncate_next(match="turn_end_candidate")
    async with _session(proxy) as conn:
        await _send_all(conn)
        assert isinstance((await _recv(conn, 1))[0], TurnStart)
        with pytest.raises(RemoteProtocolError) as info:
            await _recv(conn, 1)
        assert info.value.raw is not None and info.value.raw.startswith('{"type":"turn_end_c')
        assert isinstance((await _recv(conn, 1))[0], TurnEnd)
    assert proxy.stats.truncated == 1


async def test_injected_unknown_events_arrive_in_order_even_as_a_flood(
    proxy: FaultProxy,
) -> None:
    async with _session(proxy) as conn:
        await proxy.wait_until(at_least("upgrades_completed", 1))
        assert proxy.inject(*(json.dumps({"type": "flood", "i": i}) for i in range(1000))) == 1
        events = await _recv(conn, 1000)
        assert all(isinstance(e, UnknownEvent) and e.type == "flood" for e in events)
        assert [e.data["i"] for e in events if isinstance(e, UnknownEvent)] == list(range(1000))
        await _send_all(conn)  # the session still works
        assert isinstance((await _recv(conn, 1))[0], TurnStart)
    assert proxy.stats.injected == 1000


async def test_injected_turn_end_without_a_turn_is_illegal(proxy: FaultProxy) -> None:
    async with _session(proxy) as conn:
        await proxy.wait_until(at_least("upgrades_completed", 1))
        proxy.inject('{"type":"turn_end"}')
        event = (await _recv(conn, 1))[0]
        assert isinstance(event, TurnEnd)
        with pytest.raises(RemoteProtocolError):
            TurnStateMachine().process(event)


@contextlib.asynccontextmanager
async def _raw_server(compression: str | None) -> AsyncIterator[int]:
    """A plain websockets server sending a fragmented turn_start, then a turn_end."""

    async def handler(ws: ServerConnection) -> None:
        await ws.send(['{"type":', '"turn_start"}'])  # two frames: text + continuation
        await ws.send('{"type":"turn_end"}')
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=compression) as server:
        yield next(iter(server.sockets)).getsockname()[1]


async def test_fragmented_messages_are_reassembled_before_a_fault() -> None:
    async with _raw_server(None) as port, FaultProxy("127.0.0.1", port) as proxy:
        proxy.garble_next()
        async with await connect_turns(proxy.url, PARAMS) as conn:
            with pytest.raises(RemoteProtocolError) as info:
                await _recv(conn, 1)
            assert info.value.raw == '#"type":"turn_start"}'
            assert isinstance((await _recv(conn, 1))[0], TurnEnd)
        assert proxy.stats.messages_down == 2 and proxy.stats.garbled == 1


async def test_compressed_messages_are_relayed_but_never_rewritten() -> None:
    async with _raw_server("deflate") as port, FaultProxy("127.0.0.1", port) as proxy:
        proxy.garble_next()
        async with await connect_turns(proxy.url, PARAMS) as conn:
            assert [type(e) for e in await _recv(conn, 2)] == [TurnStart, TurnEnd]
        assert proxy.stats.compressed == 1 and proxy.stats.garbled == 0


# -- lifecycle -------------------------------------------------------------------------
async def test_close_resets_connections_and_leaves_no_task(
    scripted_server: Reson8Server,
) -> None:
    proxy = FaultProxy("127.0.0.1", scripted_server.port)
    await proxy.start()
    conn = await connect_turns(proxy.url, PARAMS)
    proxy.stall()
    proxy.blackhole()
    held = asyncio.create_task(connect_turns(proxy.url, PARAMS, open_timeout=5))
    await proxy.wait_until(at_least("connections", 2))
    await proxy.close()
    assert proxy.open_connections == 0 and proxy.errors == []
    names = [getattr(t.get_coro(), "__qualname__", "") for t in asyncio.all_tasks()]
    left = [name for name in names if name.startswith("FaultProxy.")]
    assert left == []
    with pytest.raises(ConnectionClosed):
        await _recv(conn, 1)
    with pytest.raises(ConnectionClosed):
        await held
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", proxy.port)
