"""The turn state machine: every legal and illegal transition, and turn assembly."""

from __future__ import annotations

import itertools

import pytest

from reson8_voice import (
    CompletedTurn,
    IllegalTransition,
    LocalProtocolError,
    RemoteProtocolError,
    TurnContinuation,
    TurnEnd,
    TurnEndCandidate,
    TurnStart,
    TurnState,
    TurnStateMachine,
    Word,
)
from reson8_voice.events import TurnEvent

IDLE, IN_TURN, CANDIDATE = TurnState.IDLE, TurnState.IN_TURN, TurnState.CANDIDATE
EVENTS: dict[str, TurnEvent] = {
    "turn_start": TurnStart(),
    "turn_end_candidate": TurnEndCandidate("hello"),
    "turn_continuation": TurnContinuation(),
    "turn_end": TurnEnd(),
}
LEGAL = {
    (IDLE, "turn_start"): IN_TURN,
    (IN_TURN, "turn_end_candidate"): CANDIDATE,
    (CANDIDATE, "turn_continuation"): IN_TURN,
    (CANDIDATE, "turn_end"): IDLE,
}
# How to reach each state from a fresh machine.
PATHS = {IDLE: [], IN_TURN: ["turn_start"], CANDIDATE: ["turn_start", "turn_end_candidate"]}


def machine_in(state: TurnState, *, peer: bool = True) -> TurnStateMachine:
    m = TurnStateMachine(peer=peer)
    for name in PATHS[state]:
        m.process(EVENTS[name])
    assert m.state is state
    return m


ALL = list(itertools.product([IDLE, IN_TURN, CANDIDATE], EVENTS))


@pytest.mark.parametrize(("state", "name"), ALL, ids=[f"{s.value}+{n}" for s, n in ALL])
@pytest.mark.parametrize("peer", [True, False], ids=["client", "server"])
def test_transition_table(state: TurnState, name: str, peer: bool) -> None:
    m = machine_in(state, peer=peer)
    event = EVENTS[name]
    assert m.allows(event) == ((state, name) in LEGAL)
    if (state, name) in LEGAL:
        m.process(event)
        assert m.state is LEGAL[(state, name)]
        return
    expected = RemoteProtocolError if peer else LocalProtocolError
    with pytest.raises(expected) as info:
        m.process(event)
    assert isinstance(info.value, IllegalTransition)
    assert info.value.state is state and info.value.event_type == name
    assert m.state is state  # an illegal event changes nothing


def test_turn_text_is_the_last_candidates() -> None:
    m = TurnStateMachine()
    words = (Word("book", 0, 300), Word("a", 310, 90), Word("table", 400, 400))
    assert m.process(TurnStart()) is None
    assert m.process(TurnEndCandidate("book a")) is None
    assert m.process(TurnContinuation()) is None
    assert m.text_so_far == "book a"
    assert m.candidate is None
    assert m.process(TurnEndCandidate("book a table", "en", 0, 800, words)) is None
    turn = m.process(TurnEnd())
    assert turn == CompletedTurn(1, "book a table", "en", 0, 800, words, continuations=1)
    assert not m.in_turn and m.text_so_far == ""


def test_turn_index_counts_turns() -> None:
    m = TurnStateMachine()
    for expected in (1, 2, 3):
        m.process(TurnStart())
        m.process(TurnEndCandidate(f"t{expected}"))
        turn = m.process(TurnEnd())
        assert turn is not None and turn.index == expected and turn.text == f"t{expected}"


@pytest.mark.parametrize(("path", "text"), [
    (["turn_start"], ""),
    (["turn_start", "turn_end_candidate"], "hello"),
    (["turn_start", "turn_end_candidate", "turn_continuation"], "hello"),
])
def test_close_cuts_an_open_turn_short_with_its_text_so_far(path: list[str], text: str) -> None:
    m = TurnStateMachine()
    for name in path:
        m.process(EVENTS[name])
    turn = m.close()
    assert turn is not None and turn.cut_short and turn.text == text and turn.index == 1
    assert m.state is IDLE
    assert m.close() is None


def test_resync_after_turn_start_in_a_turn_closes_the_old_turn() -> None:
    m = machine_in(CANDIDATE)
    with pytest.raises(RemoteProtocolError):
        m.process(TurnStart())
    closed = m.resync(TurnStart())
    assert closed is not None and closed.cut_short and closed.text == "hello"
    assert m.state is IN_TURN and m.turn_index == 2


@pytest.mark.parametrize(("state", "name"), [k for k in ALL if k not in LEGAL])
def test_resync_reaches_the_state_the_event_implies(state: TurnState, name: str) -> None:
    m = machine_in(state)
    m.resync(EVENTS[name])
    implied = {"turn_start": IN_TURN, "turn_end_candidate": CANDIDATE,
               "turn_continuation": IN_TURN, "turn_end": IDLE}
    assert m.state is implied[name]
    # and the machine goes on accepting a legal sequence from there
    for follow in {IN_TURN: ["turn_end_candidate", "turn_end"], CANDIDATE: ["turn_end"],
                   IDLE: ["turn_start"]}[m.state]:
        m.process(EVENTS[follow])


def test_resync_with_a_legal_event_is_process() -> None:
    m = machine_in(CANDIDATE)
    turn = m.resync(TurnEnd())
    assert turn is not None and turn.text == "hello" and not turn.cut_short
