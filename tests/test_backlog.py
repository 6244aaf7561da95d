"""The outage backlog: positions, bounds, replay slices."""

from __future__ import annotations

from reson8_voice.backlog import AudioBacklog


def test_since_returns_exactly_the_audio_after_a_position() -> None:
    b = AudioBacklog(1000)
    for i in range(10):
        b.append(bytes([i]) * 50)
    assert b.position == 500 and len(b) == 500
    assert b.since(0) == b"".join(bytes([i]) * 50 for i in range(10))
    assert b.since(475) == bytes([9]) * 25
    assert b.since(125) == bytes([2]) * 25 + b"".join(bytes([i]) * 50 for i in range(3, 10))
    assert b.since(500) == b""


def test_bound_drops_the_oldest_and_counts_it() -> None:
    b = AudioBacklog(120)
    assert b.append(b"a" * 100) == 0
    assert b.append(b"b" * 50) == 30
    assert (b.start, len(b), b.dropped_bytes) == (30, 120, 30)
    assert b.since(0) == b"a" * 70 + b"b" * 50  # what was dropped cannot be replayed


def test_discard_before_keeps_only_unanswered_audio() -> None:
    b = AudioBacklog(1000)
    b.append(b"x" * 100)
    b.append(b"y" * 100)
    b.discard_before(150)
    assert b.start == 150 and b.since(0) == b"y" * 50
    b.discard_before(10)  # never un-discards
    assert b.start == 150
