"""The fault matrix: the pipecat service through a fault-injecting proxy to the server.

For every fault the call must keep proposing turn starts and stops (the local VAD takes
over where needed), every turn started is ended, each spoken turn's transcript arrives
exactly once with the text the server gives that audio without a fault (replayed after an
outage; only the turns a fault itself destroys are missing, and they are named), the fault
really happened and was handled (the proxy's and the service's counters say so), no frame
is emitted twice, and after EndFrame or CancelFrame no task, socket, file descriptor or
thread is left and the server has freed the session. The table is in docs/fault-matrix.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    TranscriptionFrame,
)

from reson8_voice.engine.turn_engine import EngineConfig, TurnEngine, run_to_completion
from reson8_voice.events import TurnEnd, TurnEndCandidate
from reson8_voice.pipecat import Reson8TurnsSTTService, turns_service
from reson8_voice.server import Reson8Server

from .audio_fixtures import load_fixture
from .conftest import scripted_runner
from .fault_proxy import FaultProxy
from .pipeline_harness import Harness

FIXTURE = "call_delivery"
SPEED = 4.0
SECRET = "sk-test-SECRET123"
Fault = Callable[[FaultProxy], object]
PROPOSALS = (ProposedUserStartedSpeakingFrame, ProposedUserStoppedSpeakingFrame)
#: the service's counters of what it skipped or refused, exact per case (default 0)
SKIP_COUNTERS = ("malformed", "unknown", "violations")
#: the proxy's counters of what it did, exact per case (default 0)
PROXY_FAULTS = ("garbled", "truncated", "injected", "dropped")


class UnbalancedTurns(AssertionError):
    """The turn proposals the service emitted do not pair up."""


class LeftBehind(AssertionError):
    """The service still held a connection after the pipeline had stopped."""


class HandedBack(AssertionError):
    """The service gave turn detection back to a server that had not said a word."""


@functools.cache
def ground_truth(from_ms: int = 0) -> tuple[str, ...]:
    """The server's text for each turn of the fixture's audio from ``from_ms`` on, with no
    fault: its engine with the scripted recogniser ("w0 w1 ..." by the audio's length), run
    offline. The server decides on stream time, so this is what it says at any speed."""
    pcm = load_fixture(FIXTURE).pcm16()[from_ms * 16:]
    chunks = (pcm[i:i + 320] for i in range(0, len(pcm), 320))
    texts: list[str] = []
    last = ""
    for _, event in run_to_completion(TurnEngine(EngineConfig(), sample_rate=8000), chunks,
                                      scripted_runner(), end=False):
        if isinstance(event, TurnEndCandidate):
            last = event.text
        elif isinstance(event, TurnEnd):
            texts.append(last)
    return tuple(texts)


def test_ground_truth_tells_the_turns_apart() -> None:
    """One text per spoken turn, all different: a duplicated, missing or swapped transcript
    cannot pass for the right one."""
    truth = ground_truth()
    assert len(truth) == len(load_fixture(FIXTURE).turns)
    assert len(set(truth)) == len(truth) and all(truth)


@dataclass(frozen=True)
class Case:
    """A fault applied at ``at`` (``mid_turn`` or ``between_turns``) of turn 2."""

    name: str
    fault: Fault
    at: str = "mid_turn"
    fallback: bool = True  # the local VAD must take over at some point
    reason: str | None = None  # how the fallback's reason starts (None: unchecked)
    lost: tuple[int, ...] = ()  # fixture turns whose text the fault itself destroys
    heal: Fault | None = None  # undo the fault this long after it (None: never)
    heal_after_s: float = 2.0
    speed_after: float = SPEED  # how fast the audio after the fault is fed
    #: exact service counters (SKIP_COUNTERS not named here must stay 0)
    stats: dict[str, int] = field(default_factory=dict)
    #: exact proxy counters (PROXY_FAULTS not named here must stay 0)
    proxy_stats: dict[str, int] = field(default_factory=dict)
    max_connections: int | None = None  # sessions the fault may cost (no reconnect churn)
    #: no server message reaches the client from the fault to the heal; these fixture
    #: turns, spoken in that window, are proposed (start and stop) by the local VAD in it
    silent_turns: tuple[int, ...] | None = None


def _slow(proxy: FaultProxy) -> None:
    # the server reads (so hears, so answers) the 8 kHz mu-law uplink at a tenth of real
    # time; TCP back-pressure reaches the service once the buffers fill
    proxy.throttle_up(8000 / 10)


CASES = [
    Case("drop mid-turn", lambda p: p.drop(), reason="dropped", proxy_stats={"dropped": 1}),
    Case("drop between turns", lambda p: p.drop(), at="between_turns", reason="dropped",
         proxy_stats={"dropped": 1}),
    Case("stall 2 s", lambda p: p.stall(2.0), reason="silent for"),
    # a stall that outlasts the rest of the call: the audio after it is fed in real time
    # (16.6 s of it, turns 3 and 4), and the server is heard again only after 20 s
    Case("stall 20 s", lambda p: p.stall(), heal=lambda p: p.resume(), heal_after_s=20.0,
         speed_after=1.0, silent_turns=(3, 4), reason="silent for"),
    Case("half-open", lambda p: p.half_open(), heal=lambda p: p.resume_client(),
         reason="silent for"),
    # the lost candidate makes the turn_end behind it illegal: one violation, resynchronised
    Case("garbled JSON", lambda p: p.garble_next(match="turn_end_candidate"), fallback=False,
         lost=(2,), stats={"malformed": 1, "violations": 1}, proxy_stats={"garbled": 1}),
    Case("truncated JSON", lambda p: p.truncate_next(match="turn_end_candidate"),
         fallback=False, lost=(2,), stats={"malformed": 1, "violations": 1},
         proxy_stats={"truncated": 1}),
    Case("unknown event", lambda p: p.inject('{"type":"speech_detected","at_ms":1}'),
         fallback=False, stats={"unknown": 1}, proxy_stats={"injected": 1}),
    Case("illegal sequence", lambda p: p.inject('{"type":"turn_end"}',
                                                '{"type":"turn_continuation"}'),
         at="between_turns", fallback=False, stats={"violations": 2},
         proxy_stats={"injected": 2}),
    Case("flood of events", lambda p: p.inject('{"type":"stats","n":1}', repeat=2000),
         fallback=False, stats={"unknown": 2000}, proxy_stats={"injected": 2000}),
    Case("10x slower than real time", _slow, heal=lambda p: p.throttle_up(None),
         heal_after_s=6.0, max_connections=2),
]
REJECTIONS = [(401, "UNAUTHORIZED"), (400, "INVALID_REQUEST"), (500, "INTERNAL_ERROR")]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _sockets_to(port: int) -> list[str]:
    """This process's TCP sockets whose peer is ``port`` on loopback (the service's
    connections to the proxy; the proxy's own sockets have ``port`` as their local end)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    found = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == port:
                    found.append(f"{local} -> {remote} (state {state})")
    return found


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` (every 20 ms) until it holds; fail naming ``what`` after ``timeout``.

    For what has no event to wait on: /proc, the service's mode and counters."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 (bounded polling, nothing to await)
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"not within {timeout} s: {what}")


@dataclass
class Call:
    """One call through the proxy, and everything observed of it."""

    proxy: FaultProxy
    stt: Reson8TurnsSTTService
    h: Harness
    #: turn proposals in the order the service emitted them (one per broadcast pair)
    emitted: list[Frame] = field(default_factory=list)
    audio_bytes: int = 0  # PCM the service has processed (pushed on after run_stt)
    fallbacks: list[tuple[float, str, Any]] = field(default_factory=list)  # (t, kind, arg)
    connected: list[float] = field(default_factory=list)  # when each session opened
    errors: list[ErrorFrame] = field(default_factory=list)  # reached the worker upstream
    connection_errors: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)  # loguru, DEBUG and up
    marks: dict[str, Any] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        return [arg for _, kind, arg in self.fallbacks if kind == "started"]

    def proposals(self, kind: type, since: float = 0.0, until: float = float("inf")
                  ) -> list[float]:
        """When ``kind`` proposals reached the end of the pipeline, within [since, until)."""
        return [t for t, f in self.h.recorder.frames
                if isinstance(f, kind) and since <= t < until]


def _observe(c: Call) -> None:
    stt = c.stt

    @stt.event_handler("on_before_push_frame")
    def _on_push(service: Any, frame: Any) -> None:
        # A start is a system frame and overtakes queued frames, so the order in which
        # frames reach the end of the pipeline is not the order they were decided in.
        sibling = getattr(frame, "broadcast_sibling_id", None)
        if isinstance(frame, PROPOSALS) and (sibling is None or frame.id < sibling):
            c.emitted.append(frame)
        elif isinstance(frame, InputAudioRawFrame):
            c.audio_bytes += len(frame.audio)

    @stt.event_handler("on_fallback_started")
    async def _started(service: Any, reason: str) -> None:
        c.fallbacks.append((time.monotonic(), "started", reason))

    @stt.event_handler("on_fallback_ended")
    async def _ended(service: Any, outage_s: float) -> None:
        c.fallbacks.append((time.monotonic(), "ended", outage_s))

    @stt.event_handler("on_connected")
    async def _connected(service: Any) -> None:
        c.connected.append(time.monotonic())

    @stt.event_handler("on_connection_error")
    async def _conn_error(service: Any, message: str) -> None:
        c.connection_errors.append(message)

    @c.h.worker.event_handler("on_pipeline_error")
    async def _error(worker: Any, frame: ErrorFrame) -> None:
        c.errors.append(frame)


@contextlib.asynccontextmanager
async def observed_call(server: Reson8Server, setup: Fault | None = None, **stt_args: Any
                        ) -> AsyncIterator[Call]:
    """A running pipeline with the service behind a fresh proxy (``setup`` applied to the
    proxy before the pipeline starts). The body stops it (EndFrame if it does not); then
    nothing of the call may be left: within 1 s the service holds no socket to the proxy
    (else :class:`LeftBehind`), the proxy, its faults cleared, relays no connection, the
    process holds no more file descriptors than before, and the server has freed the
    session."""
    fds = _open_fds()  # the server (and its pool) exist already
    logs: list[str] = []
    sink = logger.add(lambda m: logs.append(str(m)), level="DEBUG", format="{level} {message}")
    try:
        async with FaultProxy("127.0.0.1", server.port) as proxy:
            args: dict[str, Any] = {"reconnect_delay_s": (0.05, 0.3), "watchdog_s": 1.0,
                                    "rejected_retry_s": 0.5, **stt_args}
            stt = Reson8TurnsSTTService(url=proxy.url, **args)
            c = Call(proxy, stt, Harness([stt]), logs=logs)
            _observe(c)
            if setup is not None:
                setup(proxy)
            async with c.h:
                yield c
            await c.h.stop()  # a no-op if the body stopped it
            # the service's own sockets first: the proxy may hold its side of a link open
            # (a stall holds the server's close), which says nothing about the service's
            left = _sockets_to(proxy.port)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    while left:
                        await asyncio.sleep(0.02)
                        left = _sockets_to(proxy.port)
            proxy.reset()  # let the held frames through: every link must wind down
            try:
                await proxy.wait_until(lambda s: proxy.open_connections == 0, 5)
            except TimeoutError:
                what = f"the proxy still relays {proxy.open_connections} connection(s)"
                if left:
                    raise LeftBehind(f"{what}; the service's: {left}") from None
                pytest.fail(what)
        await _until(lambda: _open_fds() <= fds, 5,
                     f"file descriptors back to {fds} (now {_open_fds()})")
        await asyncio.wait_for(server.wait_idle(), 5)
        if left:
            raise LeftBehind(f"open 1 s after the pipeline stopped: {left}")
    finally:
        logger.remove(sink)


async def _run_case(server: Reson8Server, case: Case, **stt_args: Any) -> Call:
    fx = load_fixture(FIXTURE)
    pcm = fx.pcm16()
    turn = fx.turns[2]
    cut_ms = (turn.start_ms + turn.end_ms) // 2 if case.at == "mid_turn" \
        else fx.turns[1].end_ms + 700
    want = [t for i, t in enumerate(ground_truth()) if i not in case.lost]
    async with observed_call(server, **stt_args) as c:
        h, proxy = c.h, c.proxy
        await h.feed(pcm[: cut_ms * 16], speed=SPEED)
        c.marks["before"] = dataclasses.replace(proxy.stats)
        c.marks["fault"] = time.monotonic()
        case.fault(proxy)
        healer = None
        if case.heal is not None:
            heal = case.heal

            async def _heal() -> None:
                await asyncio.sleep(case.heal_after_s)  # the fault's duration, on purpose
                c.marks["heal"] = time.monotonic()
                c.marks["at_heal"] = (dataclasses.replace(proxy.stats), proxy.stalled,
                                      c.stt.in_fallback)
                heal(proxy)

            healer = asyncio.create_task(_heal())
        await h.feed(pcm[cut_ms * 16:], speed=case.speed_after)
        if healer is not None:
            await healer
        proxy.reset()
        await _settle(c, len(want))
        # the server has answered for everything replayed (turn detection handed back)
        await _until(lambda: not c.stt.in_fallback, 15, "the service back from fallback")
        if not case.fallback:  # one connection throughout: nothing may be lost in transit
            await proxy.wait_until(
                lambda s: s.messages_delivered == s.messages_down + s.injected, 5)
        await h.stop(EndFrame())
    c.marks["want"] = want
    return c


def _check_proposals(c: Call, *, delivered: bool = True) -> int:
    """Each start followed by exactly one stop, in the order the service emitted them, each
    emitted once (and ``delivered``); returns how many turns were proposed."""
    depth = starts = 0
    for frame in c.emitted:
        if isinstance(frame, ProposedUserStartedSpeakingFrame):
            depth, starts = depth + 1, starts + 1
        else:
            depth -= 1
        if depth not in (0, 1):
            raise UnbalancedTurns(f"a stop without a start, or two starts in a row: "
                                  f"{[type(f).__name__ for f in c.emitted]}")
    if depth:
        raise UnbalancedTurns("a turn started was never ended")
    assert len({f.id for f in c.emitted}) == len(c.emitted), "a proposal emitted twice"
    if delivered:
        assert len(c.h.of_type(ProposedUserStartedSpeakingFrame)) == starts
        assert len(c.h.of_type(ProposedUserStoppedSpeakingFrame)) == starts
    return starts


async def _settle(c: Call, transcripts: int) -> None:
    """Wait until ``transcripts`` transcripts and as many stops as starts have arrived (the
    checks after it say whether they are the right ones)."""
    try:
        await c.h.wait_for(lambda h: len(h.of_type(TranscriptionFrame)) >= transcripts, 20)
        await c.h.wait_for(lambda h: len(h.of_type(ProposedUserStoppedSpeakingFrame))
                           >= len(h.of_type(ProposedUserStartedSpeakingFrame)), 15)
    except TimeoutError:
        texts = [f.text for f in c.h.of_type(TranscriptionFrame)]  # type: ignore[attr-defined]
        pytest.fail(f"the call did not settle: {len(texts)} of {transcripts} transcripts "
                    f"{texts}, proposals {c.h.timeline(PROPOSALS)}")


def _check_turns(c: Call, want: list[str] | tuple[str, ...], n_turns: int) -> None:
    """Turn proposals balanced and unique; the transcripts exactly ``want``, once each."""
    starts = _check_proposals(c)
    assert n_turns <= starts <= n_turns + 2
    frames = [f for _, f in c.h.recorder.frames]
    assert len({f.id for f in frames}) == len(frames), "a frame emitted twice"
    texts = [f.text for f in c.h.of_type(TranscriptionFrame)]  # type: ignore[attr-defined]
    assert texts == list(want), "each spoken turn's transcript, exactly once, in order"


def _owned_elsewhere(server: Reson8Server) -> set[threading.Thread]:
    """Threads that may outlive a call: the server fixture's inference pool, and the event
    loop's default executor (getaddrinfo for each connect), both shut down by their owners.
    By object, not by name: a leaked thread named like them must still fail the check."""
    owned: set[threading.Thread] = set()
    pool = server._pool
    if pool is not None:
        owned |= set(pool._threads)
    default = getattr(asyncio.get_running_loop(), "_default_executor", None)
    if default is not None:
        owned |= set(default._threads)
    return owned


@pytest.fixture
async def leak_check(scripted_server: Reson8Server) -> Any:
    before = set(threading.enumerate())
    yield
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert [t for t in others if "reson8" in repr(t).lower()] == []
    owned = _owned_elsewhere(scripted_server)
    left = [t.name for t in threading.enumerate() if t not in before and t not in owned]
    assert left == [], f"threads left behind: {left}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_fault(case: Case, scripted_server: Reson8Server, leak_check: Any) -> None:
    c = await _run_case(scripted_server, case)
    _check_turns(c, c.marks["want"], len(load_fixture(FIXTURE).turns))
    if case.fallback:
        assert c.reasons, "the local VAD never took over"
        if case.reason is not None:
            assert c.reasons[0].startswith(case.reason), c.reasons
    else:
        assert not c.reasons, f"unexpected fallback: {c.reasons}"
    assert not c.stt.in_fallback
    # the fault happened, and the service counted what it skipped
    assert {k: getattr(c.proxy.stats, k) for k in PROXY_FAULTS} == \
        {k: case.proxy_stats.get(k, 0) for k in PROXY_FAULTS}
    assert {k: c.stt.stats[k] for k in SKIP_COUNTERS} == \
        {k: case.stats.get(k, 0) for k in SKIP_COUNTERS}
    assert not c.errors, [e.error for e in c.errors]
    if case.max_connections is not None:
        assert c.proxy.stats.connections <= case.max_connections
    if case.silent_turns is not None:
        _check_silent_window(c, case)


def _check_silent_window(c: Call, case: Case) -> None:
    """The fault lasted its full span and the local VAD ran the call meanwhile."""
    fault, heal = c.marks["fault"], c.marks["heal"]
    at_heal, stalled, in_fallback = c.marks["at_heal"]
    assert heal - fault >= case.heal_after_s
    assert stalled, "the stall ended before the heal"
    assert at_heal.messages_delivered == c.marks["before"].messages_delivered, \
        "a server message reached the service during the stall"
    assert at_heal.messages_down > c.marks["before"].messages_down  # the server did answer
    assert at_heal.connections > c.marks["before"].connections  # and it reconnected
    fx = load_fixture(FIXTURE)
    last_end = max(fx.turns[i].end_ms for i in case.silent_turns or ())
    cut = (fx.turns[2].start_ms + fx.turns[2].end_ms) // 2
    assert fault + (last_end - cut) / 1000 / case.speed_after + 1.5 < heal  # all spoken in it
    starts = c.proposals(ProposedUserStartedSpeakingFrame, fault, heal)
    stops = c.proposals(ProposedUserStoppedSpeakingFrame, fault, heal)
    assert len(starts) >= len(case.silent_turns or ())
    assert len(stops) >= len(starts)  # each start in the window was ended in it
    assert c.reasons and c.fallbacks[0][0] < heal
    changes = [kind for t, kind, _ in c.fallbacks if fault < t < heal]
    if changes != ["started"] or not in_fallback:
        raise HandedBack(f"fallback {changes} during the stall, in fallback at its end: "
                         f"{in_fallback}")


REJECTION_MESSAGE = "test {code}: key " + SECRET + " refused"
EXPECTED_REPORT = {
    401: "Reson8 rejected the credentials (401 UNAUTHORIZED); continuing with local turn "
         "detection",
    400: "Reson8 rejected the session (400 INVALID_REQUEST) for parameter 'language': "
         "test INVALID_REQUEST: key *** refused",
    500: "Reson8 rejected the session (500 INTERNAL_ERROR): test INTERNAL_ERROR: key *** "
         "refused",
}


@pytest.mark.parametrize(("status", "code"), REJECTIONS)
async def test_rejected_upgrade(status: int, code: str, scripted_server: Reson8Server,
                                leak_check: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Each rejected upgrade is one ErrorFrame (upstream, to the worker) and one
    on_connection_error naming the status and code (and the parameter, for 400), with the
    API key, which the server's body echoes, redacted: it appears in no report and no log."""
    caplog.set_level(logging.DEBUG)

    def fault(proxy: FaultProxy) -> None:
        proxy.drop()
        message = REJECTION_MESSAGE.format(code=code)
        if status == 400:
            proxy.reject_upgrade(status, code, message, parameter="language")
        else:
            proxy.reject_upgrade(status, code, message)

    case = Case(f"{status} at upgrade", fault, at="between_turns",
                heal=lambda p: p.clear_rejection(), heal_after_s=1.5)
    c = await _run_case(scripted_server, case, api_key=SECRET)
    _check_turns(c, c.marks["want"], len(load_fixture(FIXTURE).turns))
    assert len(c.reasons) == 1 and c.reasons[0].startswith("dropped"), c.reasons
    rejected = c.proxy.stats.upgrades_rejected
    assert rejected >= 1
    report = EXPECTED_REPORT[status]
    assert [e.error for e in c.errors] == [report] * rejected, "one report per rejection"
    assert all(e.processor is c.stt and not e.fatal for e in c.errors)
    assert [m for m in c.connection_errors if "rejected" in m] == [report] * rejected
    assert any(report in line for line in c.logs)  # the capture sees the reports
    seen = [*c.logs, caplog.text, *c.connection_errors, *c.reasons]
    assert not [s for s in seen if SECRET in s], "the API key was printed"
    assert c.stt.is_usable  # the fallback keeps the service usable


async def test_connection_refused_at_start(scripted_server: Reson8Server,
                                           leak_check: Any) -> None:
    fx = load_fixture(FIXTURE)
    async with observed_call(scripted_server, FaultProxy.refuse) as c:
        ended = asyncio.Event()

        @c.stt.event_handler("on_fallback_ended")
        async def _back(service: Any, outage: float) -> None:
            ended.set()

        cut = (fx.turns[1].end_ms + 1200) * 16  # in the silence after turn 2
        await c.h.feed(fx.pcm16()[:cut], speed=SPEED)
        assert c.proxy.stats.connections == 0 and c.connection_errors  # it was refused
        c.proxy.accept()
        await asyncio.wait_for(ended.wait(), 15)
        await c.h.feed(fx.pcm16()[cut:], speed=SPEED)
        await _settle(c, len(fx.turns))
    _check_turns(c, ground_truth(), len(fx.turns))
    assert c.reasons and c.stt.stats["dropped_bytes"] == 0


async def test_cancel_frame_mid_turn_leaves_nothing_behind(scripted_server: Reson8Server,
                                                            leak_check: Any) -> None:
    fx = load_fixture(FIXTURE)
    async with observed_call(scripted_server) as c:
        await c.h.feed(fx.pcm16()[: (fx.turns[0].start_ms + 1000) * 16], speed=SPEED)
        await c.h.wait_for(lambda h: bool(h.of_type(ProposedUserStartedSpeakingFrame)), 10)
        assert c.proxy.open_connections == 1
        await c.h.stop(CancelFrame())


@pytest.mark.parametrize("stop", [CancelFrame, EndFrame])
async def test_stop_during_stall_in_fallback(stop: type, scripted_server: Reson8Server,
                                             leak_check: Any) -> None:
    """The server has gone silent and the local VAD has proposed a turn when the pipeline
    ends: no close handshake can finish through the stall, yet nothing may be left."""
    fx = load_fixture(FIXTURE)
    pcm = fx.pcm16()
    cut = (fx.turns[2].start_ms + fx.turns[2].end_ms) // 2 * 16
    async with observed_call(scripted_server) as c:
        await c.h.feed(pcm[:cut], speed=SPEED)
        c.proxy.stall()
        feeder = asyncio.create_task(c.h.feed(pcm[cut:], speed=SPEED))
        try:
            await _until(lambda: bool(c.reasons) and bool(c.proposals(
                ProposedUserStartedSpeakingFrame, since=c.fallbacks[0][0]))
                and c.connected[-1] > c.fallbacks[0][0] and bool(_sockets_to(c.proxy.port)),
                15, "a turn proposed by the local VAD after the fallback, and a new session")
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        assert c.stt.in_fallback and c.proxy.stalled
        assert isinstance(c.emitted[-1], ProposedUserStartedSpeakingFrame)  # a turn is open
        t0 = time.monotonic()
        await c.h.stop(stop())
        assert time.monotonic() - t0 < 5
        # the open turn was ended (a CancelFrame may drop the queued stop on its way)
        _check_proposals(c, delivered=stop is EndFrame)
        assert c.proxy.stalled  # (so the LeftBehind below is the stall's doing)


async def test_end_frame_right_after_a_fallback_start(scripted_server: Reson8Server,
                                                      leak_check: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The watchdog's fallback ends the stalled turn and starts the caller's next one at
    once (a stop, then a start held _MIN_TURN_GAP_S behind it); EndFrame arrives between
    the two. The gap (100 ms) is widened to 2 s once the fault begins, so that EndFrame
    lands in it on a busy machine too."""
    fx = load_fixture(FIXTURE)
    pcm = fx.pcm16()
    cut = (fx.turns[2].start_ms + fx.turns[2].end_ms) // 2 * 16
    async with observed_call(scripted_server) as c:
        await c.h.feed(pcm[:cut], speed=SPEED)
        c.proxy.stall()
        monkeypatch.setattr(turns_service, "_MIN_TURN_GAP_S", 2.0)
        feeder = asyncio.create_task(c.h.feed(pcm[cut:], speed=SPEED))
        try:
            await _until(lambda: bool(c.reasons), 15, "the fallback")
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        # the stalled turn's stop is out; the next turn's start waits out its gap
        assert isinstance(c.emitted[-1], ProposedUserStoppedSpeakingFrame)
        c.proxy.resume()  # the close handshake can finish: only the turns are under test
        await c.h.stop(EndFrame())
        _check_proposals(c)


async def test_cancel_during_reconnect_backoff(scripted_server: Reson8Server,
                                               leak_check: Any) -> None:
    """Dropped, the port closed, the service waiting out a 5 s backoff: CancelFrame ends
    it at once, and nothing is left."""
    fx = load_fixture(FIXTURE)
    async with observed_call(scripted_server, reconnect_delay_s=(5.0, 10.0)) as c:
        await c.h.feed(fx.pcm16()[: (fx.turns[1].start_ms + 1000) * 16], speed=SPEED)
        await c.h.wait_for(lambda h: bool(h.of_type(ProposedUserStartedSpeakingFrame)), 10)
        c.proxy.refuse()
        assert c.proxy.drop() == 1
        await _until(lambda: bool(c.connection_errors), 5, "a refused reconnect")
        assert c.reasons  # in fallback, and now in the backoff
        t0 = time.monotonic()
        await c.h.stop(CancelFrame())
        assert time.monotonic() - t0 < 2, "CancelFrame waited out the backoff"
    assert len(c.connection_errors) == 1  # no reconnect after the cancel


async def test_outage_longer_than_the_replay_buffer(scripted_server: Reson8Server,
                                                     leak_check: Any) -> None:
    """Refused for 17.5 s of speech with a 3 s replay buffer: the oldest audio is dropped,
    counted and warned about once; the turns are still proposed and ended; the speech in
    the last 3 s (turn 2, "no") and everything after is transcribed, exactly."""
    fx = load_fixture(FIXTURE)
    cut_ms = 17500  # after turn 2 ("no", 15.6-16.0 s), before turn 3 (18.1 s)
    bound = 3 * 8000  # 3 s of the 8 kHz mu-law uplink
    async with observed_call(scripted_server, FaultProxy.refuse, replay_buffer_s=3.0) as c:
        await c.h.feed(fx.pcm16()[: cut_ms * 16], speed=SPEED)
        await _until(lambda: c.audio_bytes == cut_ms * 16, 5, "the service took all audio")
        assert c.stt.stats["dropped_bytes"] == cut_ms * 8 - bound
        c.proxy.accept()
        # the server answers for the replay (turn 2) and is handed the turns back
        await _until(lambda: [k for _, k, _ in c.fallbacks] == ["started", "ended"], 15,
                     "the replay answered for")
        await c.h.feed(fx.pcm16()[cut_ms * 16:], speed=SPEED)
        await _settle(c, 3)
        await _until(lambda: not c.stt.in_fallback, 15, "the service back from fallback")
    assert 0 < c.stt.stats["replayed_bytes"] <= bound
    assert c.stt.stats["dropped_bytes"] == cut_ms * 8 - bound  # none once connected
    warnings = [line for line in c.logs if "replay buffer" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING"), warnings
    # turns 0 and 1 are gone with the dropped audio; the rest is what the server says for
    # the audio from where the buffer begins
    assert ground_truth(cut_ms - 3000) == ground_truth()[2:]
    _check_turns(c, ground_truth()[2:], len(fx.turns))
    assert not c.errors
