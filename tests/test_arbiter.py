"""The turn arbiter: remote and local turn sources merged, fallback and hand-back."""

from __future__ import annotations

import pytest

from reson8_voice import TurnContinuation, TurnEnd, TurnEndCandidate, TurnStart
from reson8_voice.arbiter import (
    Candidate,
    Decision,
    FallbackEnded,
    FinalTranscript,
    Mode,
    ProposeStart,
    ProposeStop,
    ProtocolViolation,
    TurnArbiter,
    WatchdogExpired,
)


def kinds(decisions: list[Decision]) -> list[str]:
    return [type(d).__name__ for d in decisions]


def connected(**kwargs: object) -> TurnArbiter:
    a = TurnArbiter(**kwargs)  # type: ignore[arg-type]
    assert a.connection_ready(0.0) == []  # a first connection announces nothing
    assert a.mode is Mode.REMOTE
    return a


def test_server_turn_maps_to_start_candidate_final_stop() -> None:
    a = connected(barge_in="server", eager=True)
    assert kinds(a.server_event(1, TurnStart())) == ["ProposeStart"]
    [cand] = a.server_event(2, TurnEndCandidate("book a"))
    assert isinstance(cand, Candidate) and cand.eager
    assert kinds(a.server_event(2.1, TurnContinuation())) == ["CancelEager"]
    a.server_event(3, TurnEndCandidate("book a table"))
    out = a.server_event(3.2, TurnEnd())
    assert kinds(out) == ["FinalTranscript", "ProposeStop"]
    assert isinstance(out[0], FinalTranscript) and out[0].turn.text == "book a table"


@pytest.mark.parametrize(("policy", "local_opens"), [("server", False), ("local", True),
                                                      ("first", True)])
def test_barge_in_policy(policy: str, local_opens: bool) -> None:
    a = connected(barge_in=policy)
    out = a.local_speech_started(1.0)
    assert kinds(out) == (["ProposeStart"] if local_opens else [])
    out = a.server_event(1.1, TurnStart())
    assert kinds(out) == ([] if local_opens or policy == "local" else ["ProposeStart"])
    a.server_event(2, TurnEndCandidate("hi"))
    assert kinds(a.server_event(2.2, TurnEnd())) == ["FinalTranscript", "ProposeStop"]


def test_local_policy_still_completes_a_turn_the_vad_missed() -> None:
    a = connected(barge_in="local")
    assert a.server_event(1, TurnStart()) == []
    a.server_event(2, TurnEndCandidate("quiet words"))
    assert kinds(a.server_event(2.2, TurnEnd())) == ["ProposeStart", "FinalTranscript",
                                                     "ProposeStop"]


def test_a_short_local_start_the_server_ignores_is_withdrawn() -> None:
    a = connected(barge_in="first")
    assert kinds(a.local_speech_started(1.0)) == ["ProposeStart"]
    assert a.local_speech_stopped(1.2) == []  # a 200 ms cough
    assert a.check(1.5) == []
    assert kinds(a.check(1.2 + a.false_start_s)) == ["ProposeStop"]
    assert not a.turn_open


def test_watchdog_fires_when_the_server_owes_a_candidate() -> None:
    a = connected(watchdog_s=2.0)
    a.server_event(1, TurnStart())
    a.local_speech_started(1.0)
    a.local_speech_stopped(3.0)
    assert a.check(4.9) == []
    [expired] = a.check(5.0)
    assert isinstance(expired, WatchdogExpired) and expired.expecting == "turn_end_candidate"


def test_watchdog_fires_when_long_speech_gets_no_turn_start() -> None:
    a = connected(watchdog_s=2.0, barge_in="first")
    a.local_speech_started(1.0)
    a.local_speech_stopped(2.5)
    assert a.check(4.4) == []
    [expired] = a.check(4.5)
    assert isinstance(expired, WatchdogExpired) and expired.expecting == "turn_start"


def test_watchdog_fires_when_a_candidate_is_never_ended() -> None:
    a = connected(watchdog_s=2.0)
    a.server_event(1, TurnStart())
    a.server_event(2, TurnEndCandidate("hello"))
    a.local_speech_stopped(2.6)  # the server owes turn_end (or turn_continuation)
    [expired] = a.check(4.6)
    assert isinstance(expired, WatchdogExpired) and expired.expecting == "turn_end"


def test_no_watchdog_when_the_server_already_ended_the_turn() -> None:
    a = connected(watchdog_s=2.0, barge_in="first")
    a.local_speech_started(1.0)
    a.server_event(1.1, TurnStart())
    a.server_event(3.0, TurnEndCandidate("a long sentence"))
    a.server_event(3.6, TurnEnd())
    a.local_speech_stopped(3.8)  # the local VAD is slower to call the end
    assert a.check(10) == []


def test_any_server_event_feeds_the_watchdog() -> None:
    a = connected(watchdog_s=2.0)
    a.server_event(1, TurnStart())
    a.local_speech_stopped(3.0)
    a.server_event(3.3, TurnEndCandidate("ok"))
    assert a.check(10) == []


def test_drop_mid_turn_while_caller_speaks_hands_the_turn_to_local_vad() -> None:
    a = connected()
    a.local_speech_started(1)
    a.server_event(1.1, TurnStart())
    a.server_event(2, TurnEndCandidate("i would like"))
    a.server_event(2.2, TurnContinuation())
    out = a.connection_lost(2.5, "dropped")
    assert kinds(out) == ["FallbackStarted", "FinalTranscript"]
    assert isinstance(out[1], FinalTranscript) and out[1].turn.cut_short
    assert out[1].turn.text == "i would like"
    assert a.turn_open  # still speaking: the local VAD will close it
    assert kinds(a.local_speech_stopped(4)) == ["ProposeStop"]


def test_drop_mid_turn_in_silence_closes_the_turn_at_once() -> None:
    a = connected()
    a.server_event(1, TurnStart())
    a.server_event(2, TurnEndCandidate("yes"))
    out = a.connection_lost(2.5, "dropped")
    assert kinds(out) == ["FallbackStarted", "FinalTranscript", "ProposeStop"]


def test_fallback_turns_come_from_local_vad_and_replayed_text_is_recovered() -> None:
    a = connected()
    a.connection_lost(1, "dropped")
    assert kinds(a.local_speech_started(2)) == ["ProposeStart"]
    assert kinds(a.local_speech_stopped(3)) == ["ProposeStop"]
    # the connection comes back with the outage audio to replay
    assert a.connection_ready(4, replay_pending=True) == []
    assert a.server_event(4.1, TurnStart()) == []  # replayed: no proposals
    [cand] = a.server_event(4.2, TurnEndCandidate("my order number"))
    assert isinstance(cand, Candidate) and not cand.eager
    assert a.replay_done(4.25) == []  # a server turn is still open
    out = a.server_event(4.3, TurnEnd())
    assert kinds(out) == ["FinalTranscript", "FallbackEnded"]
    assert isinstance(out[0], FinalTranscript) and out[0].recovered
    assert isinstance(out[1], FallbackEnded) and out[1].outage_s == pytest.approx(3.3)
    assert a.mode is Mode.REMOTE


def _replaying(speech_s: float) -> TurnArbiter:
    """In fallback, a new session at t=10 replaying outage speech that ends ``speech_s``
    into the replay (watchdog 1 s, replay sent by t=10.1)."""
    a = connected(watchdog_s=1.0)
    a.connection_lost(1, "dropped")
    a.local_speech_started(2)
    a.local_speech_stopped(8)
    a.connection_ready(10, replay_pending=True, replay_has_speech=True,
                       replay_speech_s=speech_s)
    assert a.replay_done(10.1) == []
    return a


def _turn(a: TurnArbiter, t: float, start_ms: float, duration_ms: float) -> list[Decision]:
    a.server_event(t, TurnStart())
    a.server_event(t, TurnEndCandidate("w", start_ms=start_ms, duration_ms=duration_ms))
    return a.server_event(t, TurnEnd())


def test_a_replay_is_due_no_sooner_than_a_real_time_server_can_hear_it() -> None:
    a = _replaying(6.0)
    assert a.check(15.9) == []  # 10 + 6 s of speech + 2 x watchdog = 18
    [expired] = a.check(18.0)
    assert isinstance(expired, WatchdogExpired) and "replayed" in expired.expecting


def test_a_replay_deadline_waits_while_the_caller_speaks() -> None:
    a = _replaying(1.0)
    a.local_speech_started(11)
    assert a.check(30) == []  # the owed turn cannot end while the caller talks on
    assert kinds(a.local_speech_stopped(31)) == ["ProposeStop"]
    assert a.check(32.9) == []
    assert kinds(a.check(33.0)) == ["WatchdogExpired"]


def test_the_server_owes_turns_up_to_the_end_of_the_replayed_speech() -> None:
    a = _replaying(6.0)
    out = _turn(a, 11, 0, 2500)  # the first of two replayed turns
    assert kinds(out) == ["FinalTranscript"]  # no hand-back: its answers would read as new
    assert a.mode is Mode.FALLBACK
    out = _turn(a, 12, 3500, 2000)  # ends 0.5 s short of the local VAD's end: close enough
    assert kinds(out) == ["FinalTranscript", "FallbackEnded"]


def test_turns_answered_while_the_replay_goes_out_count() -> None:
    a = connected(watchdog_s=1.0)
    a.connection_lost(1, "dropped")
    a.connection_ready(10, replay_pending=True, replay_has_speech=True, replay_speech_s=3)
    assert kinds(_turn(a, 10.05, 0, 2800)) == ["FinalTranscript"]
    assert kinds(a.replay_done(10.1)) == ["FallbackEnded"]


def test_a_server_that_answered_then_went_quiet_gets_the_turns_back() -> None:
    a = _replaying(6.0)
    _turn(a, 11, 0, 1000)  # answered some of it (a cough the local VAD took for speech)
    assert a.check(17.9) == []  # each event pushes the deadline; 10 + 6 + 2 = 18
    assert kinds(a.check(18.0)) == ["FallbackEnded"]  # alive, said all it will: not dead
    assert a.mode is Mode.REMOTE


def test_a_server_that_has_the_replay_and_stays_quiet_gets_the_turns_back() -> None:
    a = _replaying(1.0)
    assert a.replay_heard(10.5) == []  # the pong behind the replay: it has all of it
    assert a.check(12.9) == []  # 10 + 1 s of speech + 2 x watchdog
    assert kinds(a.check(13.0)) == ["FallbackEnded"]  # a cough it did not call a turn


def test_hand_back_waits_for_the_caller_to_stop() -> None:
    a = connected()
    a.connection_lost(1, "dropped")
    a.local_speech_started(2)
    assert a.connection_ready(3) == []
    assert a.mode is Mode.FALLBACK
    assert kinds(a.local_speech_stopped(4)) == ["ProposeStop", "FallbackEnded"]


def test_unreachable_at_start_announces_fallback_once() -> None:
    a = TurnArbiter()
    assert kinds(a.connection_lost(0, "unreachable")) == ["FallbackStarted"]
    assert a.connection_lost(1, "unreachable") == []
    assert kinds(a.connection_ready(2)) == ["FallbackEnded"]


def test_protocol_violation_is_reported_and_resynchronised() -> None:
    a = connected()
    a.server_event(1, TurnStart())
    a.server_event(2, TurnEndCandidate("first"))
    out = a.server_event(3, TurnStart())  # no turn_end: the server abandoned the turn
    assert kinds(out) == ["ProtocolViolation", "FinalTranscript", "ProposeStop",
                          "ProposeStart"]
    assert isinstance(out[0], ProtocolViolation)
    stray = a.server_event(4, TurnContinuation())
    assert kinds(stray) == ["ProtocolViolation"]


def test_every_start_gets_exactly_one_stop_under_random_sequences() -> None:
    import random

    rng = random.Random(7)
    events = [TurnStart(), TurnEndCandidate("x"), TurnContinuation(), TurnEnd()]
    for _ in range(200):
        a = connected(barge_in=rng.choice(["server", "local", "first"]))
        depth = 0
        t = 0.0
        for _ in range(40):
            t += 0.3
            r = rng.random()
            if r < 0.5:
                out = a.server_event(t, rng.choice(events))
            elif r < 0.65:
                out = a.local_speech_started(t)
            elif r < 0.8:
                out = a.local_speech_stopped(t)
            elif r < 0.9:
                out = a.check(t + 5)
            elif r < 0.95:
                out = a.connection_lost(t, "x")
            else:
                out = a.connection_ready(t, replay_pending=rng.random() < 0.5)
            for d in out:
                if isinstance(d, ProposeStart):
                    depth += 1
                elif isinstance(d, ProposeStop):
                    depth -= 1
                assert depth in (0, 1)
        out = a.close(t)
        depth -= sum(isinstance(d, ProposeStop) for d in out)
        assert depth == 0



def test_short_speech_with_a_long_vad_hangover_is_a_false_start_not_a_dead_server() -> None:
    a = connected(watchdog_s=2.0, barge_in="first")
    assert kinds(a.local_speech_started(1.0)) == ["ProposeStart"]
    # the VAD reports the stop 800 ms after 150 ms of speech: 0.95 s later, 0.15 s of speech
    assert a.local_speech_stopped(1.95, speech_s=0.15) == []
    assert kinds(a.check(1.95 + a.false_start_s)) == ["ProposeStop"]
    assert a.check(10) == []  # and no watchdog: the server rightly ignored a blip


def guarded() -> TurnArbiter:
    a = connected(barge_in="first", min_barge_in_s=0.3)
    a.bot_speaking = True
    return a


def test_barge_in_guard_lets_the_bot_talk_through_a_cough() -> None:
    a = guarded()
    assert a.local_speech_started(1.0) == []  # held while the bot talks
    a.local_speech_stopped(1.2, speech_s=0.2)
    assert a.check(1.3) == [] and not a.turn_open  # the cough is over: nothing proposed
    assert a.check(5) == []


def test_barge_in_guard_releases_real_speech() -> None:
    a = guarded()
    assert a.local_speech_started(1.0) == []
    assert a.server_event(1.1, TurnStart()) == []  # held too
    assert a.check(1.25) == []
    assert kinds(a.check(1.3)) == ["ProposeStart"]  # still talking after 300 ms
    a.server_event(2, TurnEndCandidate("wait a moment"))
    assert kinds(a.server_event(2.8, TurnEnd())) == ["FinalTranscript", "ProposeStop"]


def test_barge_in_guard_releases_on_words() -> None:
    a = guarded()
    a.local_speech_started(1.0)
    assert a.server_event(1.1, TurnStart()) == []
    out = a.server_event(1.2, TurnEndCandidate("stop"))  # words before the guard ran out
    assert kinds(out) == ["ProposeStart", "Candidate"]


def test_no_guard_when_the_bot_is_silent() -> None:
    a = connected(barge_in="first", min_barge_in_s=0.3)
    assert kinds(a.local_speech_started(1.0)) == ["ProposeStart"]
