"""G.711 mu-law and A-law codecs over bytes (PCM s16le <-> one byte per sample).

The turns and realtime endpoints accept ``encoding=mulaw`` and ``encoding=alaw`` besides
``pcm_s16le`` (spec file 001, query parameters), and telephony carriers deliver 8 kHz G.711.
Tables are not hand-rolled here: the work is done by the C codec pipecat itself relies on, the
stdlib :mod:`audioop` on Python 3.11/3.12 and the ``audioop-lts`` package (same module name)
on 3.13+, so bytes produced here and by pipecat's serializers are identical.

The one-shot functions need whole samples. Pipecat frames and network chunks may split a
16-bit sample across two buffers, so :class:`G711Encoder` carries an odd trailing byte over to
the next call.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from typing import Final, Literal, TypeAlias, get_args

from reson8_voice.errors import AudioFormatError

if sys.version_info >= (3, 13):  # pragma: no cover - the audioop-lts package, no warning
    import audioop
else:
    # The stdlib module warns on import from 3.11 on (PEP 594). Silence exactly that warning,
    # for exactly this import, without touching the caller's filters.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*'audioop' is deprecated", category=DeprecationWarning
        )
        import audioop

__all__ = [
    "BytesLike",
    "G711Decoder",
    "G711Encoder",
    "LAWS",
    "Law",
    "alaw_decode",
    "alaw_encode",
    "decode",
    "encode",
    "pcm16_dbfs",
    "pcm16_rms",
    "ulaw_decode",
    "ulaw_encode",
]

#: A G.711 companding law, spelled as the ``encoding`` query parameter spells it (spec 001).
Law: TypeAlias = Literal["mulaw", "alaw"]
#: Every supported law.
LAWS: Final[tuple[Law, ...]] = get_args(Law)
#: What the codec functions accept: any contiguous bytes-like object.
BytesLike: TypeAlias = bytes | bytearray | memoryview

_Codec: TypeAlias = Callable[[BytesLike, int], bytes]

# Bound once: the per-frame path is a single C call plus a try block (free on 3.11+).
_rms: Final = audioop.rms
_lin2ulaw: Final[_Codec] = audioop.lin2ulaw
_ulaw2lin: Final[_Codec] = audioop.ulaw2lin
_lin2alaw: Final[_Codec] = audioop.lin2alaw
_alaw2lin: Final[_Codec] = audioop.alaw2lin
_AudioopError: Final[type[Exception]] = audioop.error


def _odd_length(pcm: BytesLike) -> AudioFormatError:
    return AudioFormatError(
        f"PCM s16le must hold whole 2-byte samples, got {len(pcm)} bytes (odd length); "
        "use G711Encoder to carry a split sample over to the next chunk"
    )


def ulaw_encode(pcm: BytesLike) -> bytes:
    """Encode PCM s16le to G.711 mu-law, one byte per sample.

    Raises:
        AudioFormatError: ``pcm`` has an odd number of bytes.
    """
    try:
        return _lin2ulaw(pcm, 2)
    except _AudioopError:
        raise _odd_length(pcm) from None


def ulaw_decode(data: BytesLike) -> bytes:
    """Decode G.711 mu-law to PCM s16le (two bytes per input byte)."""
    return _ulaw2lin(data, 2)


def alaw_encode(pcm: BytesLike) -> bytes:
    """Encode PCM s16le to G.711 A-law, one byte per sample.

    Raises:
        AudioFormatError: ``pcm`` has an odd number of bytes.
    """
    try:
        return _lin2alaw(pcm, 2)
    except _AudioopError:
        raise _odd_length(pcm) from None


def alaw_decode(data: BytesLike) -> bytes:
    """Decode G.711 A-law to PCM s16le (two bytes per input byte)."""
    return _alaw2lin(data, 2)


_ENCODERS: Final[dict[str, Callable[[BytesLike], bytes]]] = {
    "mulaw": ulaw_encode,
    "alaw": alaw_encode,
}
_DECODERS: Final[dict[str, Callable[[BytesLike], bytes]]] = {
    "mulaw": ulaw_decode,
    "alaw": alaw_decode,
}


def _check_law(law: str) -> Law:
    if law not in _ENCODERS:
        raise AudioFormatError(f"unknown G.711 law {law!r}; expected one of {list(LAWS)}")
    return law  # type: ignore[return-value]


def encode(law: Law, pcm: BytesLike) -> bytes:
    """Encode PCM s16le with the named law (``"mulaw"`` or ``"alaw"``).

    Raises:
        AudioFormatError: unknown ``law``, or ``pcm`` has an odd number of bytes.
    """
    return _ENCODERS[_check_law(law)](pcm)


def decode(law: Law, data: BytesLike) -> bytes:
    """Decode G.711 bytes of the named law to PCM s16le.

    Raises:
        AudioFormatError: unknown ``law``.
    """
    return _DECODERS[_check_law(law)](data)


class G711Encoder:
    """A streaming PCM s16le -> G.711 encoder that tolerates chunks splitting a sample.

    G.711 has no look-ahead, so every whole sample is encoded as soon as it arrives; only an
    odd trailing byte is held back and prepended to the next chunk.
    """

    __slots__ = ("_encode", "_law", "_pending")

    def __init__(self, law: Law = "mulaw") -> None:
        """Create an encoder for ``law``.

        Raises:
            AudioFormatError: unknown ``law``.
        """
        self._law: Law = _check_law(law)
        self._encode: _Codec = _lin2ulaw if self._law == "mulaw" else _lin2alaw
        self._pending = b""

    @property
    def law(self) -> Law:
        """The companding law this encoder produces."""
        return self._law

    @property
    def pending(self) -> int:
        """Bytes held back, waiting for the rest of their sample (0 or 1)."""
        return len(self._pending)

    def encode(self, pcm: BytesLike) -> bytes:
        """Encode every whole sample seen so far; keep an odd trailing byte for later."""
        if self._pending:
            pcm = self._pending + pcm
            self._pending = b""
        if len(pcm) & 1:
            self._pending = bytes(pcm[-1:])
            pcm = pcm[:-1]
        return self._encode(pcm, 2)

    def flush(self) -> bytes:
        """End the stream: return what is left to emit (always ``b""`` for G.711).

        Raises:
            AudioFormatError: the stream ended in the middle of a sample; the dangling byte is
                discarded so the encoder can be reused.
        """
        if self._pending:
            self._pending = b""
            raise AudioFormatError(
                "PCM s16le stream ended with half a sample (an odd total byte count)"
            )
        return b""

    def reset(self) -> None:
        """Drop any held-back byte, e.g. after a reconnect that restarts the stream."""
        self._pending = b""

    def __repr__(self) -> str:
        return f"G711Encoder(law={self._law!r}, pending={self.pending})"


class G711Decoder:
    """A streaming G.711 -> PCM s16le decoder, the counterpart of :class:`G711Encoder`.

    Every G.711 byte is a whole sample, so no state is carried; the class exists so both ends
    of a codec chain have the same ``encode``/``decode`` + ``flush`` shape.
    """

    __slots__ = ("_decode", "_law")

    def __init__(self, law: Law = "mulaw") -> None:
        """Create a decoder for ``law``.

        Raises:
            AudioFormatError: unknown ``law``.
        """
        self._law: Law = _check_law(law)
        self._decode: _Codec = _ulaw2lin if self._law == "mulaw" else _alaw2lin

    @property
    def law(self) -> Law:
        """The companding law this decoder reads."""
        return self._law

    def decode(self, data: BytesLike) -> bytes:
        """Decode G.711 bytes to PCM s16le."""
        return self._decode(data, 2)

    def flush(self) -> bytes:
        """End the stream: nothing is ever held back, so this returns ``b""``."""
        return b""

    def __repr__(self) -> str:
        return f"G711Decoder(law={self._law!r})"


def pcm16_rms(pcm: BytesLike) -> int:
    """Root mean square of s16le PCM samples, rounded down (audioop; well under 1 us per
    20 ms frame); 0 for no samples.

    Raises:
        AudioFormatError: ``pcm`` has an odd number of bytes.
    """
    try:
        return int(_rms(pcm, 2))
    except _AudioopError:
        raise _odd_length(pcm) from None


def pcm16_dbfs(pcm: BytesLike) -> float:
    """The level of s16le PCM samples in dBFS: :func:`pcm16_rms` against full scale (32768),
    ``-inf`` for digital silence or no samples. Rounding the RMS down moves a level by under
    0.25 dB above -60 dBFS.

    Raises:
        AudioFormatError: ``pcm`` has an odd number of bytes.
    """
    rms = pcm16_rms(pcm)
    return 20.0 * math.log10(rms / 32768.0) if rms > 0 else -math.inf
