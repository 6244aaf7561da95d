"""A bounded backlog of the audio sent upstream, for replay after an outage. Sans-I/O.

Every chunk the service sends (or would have sent, while disconnected) is appended with its
stream position. When a session dies, the audio since the last server event (which the
server provably had processed up to) plus whatever arrived during the outage is replayed on
the next session. The backlog keeps at most ``max_bytes``; the oldest audio is dropped
first and counted, so the caller can warn.
"""

from __future__ import annotations

from collections import deque

__all__ = ["AudioBacklog"]


class AudioBacklog:
    """Audio chunks by stream position (bytes of the uplink encoding since the call began)."""

    def __init__(self, max_bytes: int) -> None:
        """Keep at most ``max_bytes`` of audio (e.g. 30 s of 8 kHz mu-law = 240,000)."""
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._chunks: deque[tuple[int, bytes]] = deque()
        self._size = 0
        self.position = 0  # stream position after the last appended byte
        self.dropped_bytes = 0

    def __len__(self) -> int:
        return self._size

    @property
    def start(self) -> int:
        """Stream position of the oldest byte kept."""
        return self._chunks[0][0] if self._chunks else self.position

    def append(self, chunk: bytes) -> int:
        """Add ``chunk``; returns how many of the oldest bytes had to be dropped."""
        if not chunk:
            return 0
        self._chunks.append((self.position, chunk))
        self.position += len(chunk)
        self._size += len(chunk)
        dropped = 0
        while self._size > self.max_bytes:
            pos, old = self._chunks[0]
            excess = self._size - self.max_bytes
            if len(old) <= excess:
                self._chunks.popleft()
                self._size -= len(old)
                dropped += len(old)
            else:
                self._chunks[0] = (pos + excess, old[excess:])
                self._size -= excess
                dropped += excess
        self.dropped_bytes += dropped
        return dropped

    def since(self, position: int) -> bytes:
        """The audio from ``position`` (or the oldest kept, if later) to the end.

        Walks back from the newest chunk, so the common case (the last chunk or two, sent
        as it arrives) costs the same however much the backlog holds.
        """
        parts = []
        for pos, chunk in reversed(self._chunks):
            if pos + len(chunk) <= position:
                break
            parts.append(chunk[max(0, position - pos):])
        parts.reverse()
        return b"".join(parts)

    def discard_before(self, position: int) -> None:
        """Forget audio before ``position`` (the server has acknowledged it)."""
        while self._chunks:
            pos, chunk = self._chunks[0]
            end = pos + len(chunk)
            if end <= position:
                self._chunks.popleft()
                self._size -= len(chunk)
            elif pos < position:
                cut = position - pos
                self._chunks[0] = (position, chunk[cut:])
                self._size -= cut
                break
            else:
                break
