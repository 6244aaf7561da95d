"""Cost of the wire format: parse + serialize of a turn_end_candidate with 20 words.

Run: ``python benchmarks/bench_wire.py``. Beside it, in the same run: the bare
``json.loads`` + ``json.dumps`` of the same text (what any client pays at least), so the
ratio is the price of typed, validated events. Also the turn state machine per event.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from reson8_voice import (
    TurnEnd,
    TurnEndCandidate,
    TurnStart,
    TurnStateMachine,
    Word,
    parse_event,
    serialize_event,
)

WORDS = tuple(Word(f"word{i}", 1200 + 210 * i, 200) for i in range(20))
CANDIDATE = TurnEndCandidate(" ".join(w.text for w in WORDS), "en", 1200, 4400, WORDS)
TEXT = serialize_event(CANDIDATE)


def per_call_us(fn: Callable[[], object], calls: int = 20000, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def main() -> None:
    ours = per_call_us(lambda: serialize_event(parse_event(TEXT)))
    bare = per_call_us(lambda: json.dumps(json.loads(TEXT), separators=(",", ":")))
    machine = TurnStateMachine()
    events = [TurnStart(), CANDIDATE, TurnEnd()]

    def turn() -> None:
        for e in events:
            machine.process(e)

    state = per_call_us(turn) / len(events)
    print(f"turn_end_candidate with 20 words ({len(TEXT)} bytes of JSON)")
    print(f"  parse + serialize (typed)   {ours:8.2f} us")
    print(f"  json.loads + json.dumps     {bare:8.2f} us   ratio {ours / bare:5.2f}x")
    print(f"  turn state machine / event  {state:8.2f} us")
    print(f"  share of a 20 ms frame      {ours / 20000:8.4%}")


if __name__ == "__main__":
    main()
