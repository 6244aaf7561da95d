"""G.711 codecs checked against an independent, from-scratch model of the G.711 quantizer.

The reference below is written from the segment formulas of ITU-T G.711 (8 segments of 16
steps, step doubling per segment; mu-law with a bias of 33 in the 14-bit domain, A-law
linear in its first two segments in the 13-bit domain). It uses bit arithmetic, never
``audioop``, so a wrong table, wrong law or wrong sign convention in the wrapper shows up.

G.711 quantizes sign-magnitude values; how a 16-bit two's-complement sample is reduced to
14 (mu-law) or 13 (A-law) bits is left to the implementation. The C codec pipecat uses
(Sun's reference ``g711.c``) shifts arithmetically and then takes the magnitude of a
negative value as ``-v`` for mu-law and ``-v - 1`` (one's complement) for A-law; the model
spells that out, and the exhaustive tests hold it to every one of the 65,536 inputs.
"""

from __future__ import annotations

import math
import random
import struct
import subprocess
import sys

import pytest

from reson8_voice import g711
from reson8_voice.errors import AudioFormatError

ALL_PCM = list(range(-32768, 32768))
ALL_PCM_BYTES = struct.pack(f"<{len(ALL_PCM)}h", *ALL_PCM)
ALL_CODES = bytes(range(256))


# --- the reference model ---------------------------------------------------------------


def ref_ulaw_encode(x: int) -> int:
    v = x >> 2  # 14-bit two's complement
    negative = v < 0
    mag = min(-v if negative else v, 8159) + 33  # biased magnitude, 33..8192
    exponent = mag.bit_length() - 6  # segment: 64 << e <= mag < 128 << e, after bias
    if exponent < 0:
        exponent = 0
    if exponent > 7:  # only the clipped maximum 8192 lands here
        code = 0x7F
    else:
        code = (exponent << 4) | ((mag >> (exponent + 1)) & 0x0F)
    return code ^ (0x7F if negative else 0xFF)  # mu-law transmits every bit inverted


def ref_ulaw_decode(code: int) -> int:
    u = ~code & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    mag14 = ((2 * mantissa + 33) << exponent) - 33  # midpoint of the step, 14-bit units
    return -4 * mag14 if u & 0x80 else 4 * mag14


def ref_alaw_encode(x: int) -> int:
    v = x >> 3  # 13-bit two's complement
    if v >= 0:
        mag, mask = v, 0xD5  # sign bit 1 for positive, then even bits inverted (0x55)
    else:
        mag, mask = -v - 1, 0x55
    segment = max(mag.bit_length() - 5, 0)  # 0 and 1 share a step of 2
    shift = 1 if segment == 0 else segment
    code = (segment << 4) | ((mag >> shift) & 0x0F)
    return code ^ mask


def ref_alaw_decode(code: int) -> int:
    a = code ^ 0x55
    segment = (a >> 4) & 0x07
    mantissa = a & 0x0F
    mag13 = 2 * mantissa + 1 if segment == 0 else (2 * mantissa + 33) << (segment - 1)
    return 8 * mag13 if a & 0x80 else -8 * mag13


def pcm(samples: list[int]) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def samples(data: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(data) // 2}h", data))


ENCODE = {"mulaw": g711.ulaw_encode, "alaw": g711.alaw_encode}
DECODE = {"mulaw": g711.ulaw_decode, "alaw": g711.alaw_decode}
REF_ENCODE = {"mulaw": ref_ulaw_encode, "alaw": ref_alaw_encode}
REF_DECODE = {"mulaw": ref_ulaw_decode, "alaw": ref_alaw_decode}


def test_reference_model_sanity() -> None:
    # Anchor the model itself on values every G.711 table agrees on.
    assert ref_ulaw_encode(0) == 0xFF and ref_ulaw_decode(0xFF) == 0
    assert ref_ulaw_encode(32767) == 0x80 and ref_ulaw_encode(-32768) == 0x00
    assert ref_ulaw_decode(0x80) == 32124 and ref_ulaw_decode(0x00) == -32124
    assert ref_alaw_encode(0) == 0xD5 and ref_alaw_decode(0xD5) == 8
    assert ref_alaw_encode(32767) == 0xAA and ref_alaw_encode(-32768) == 0x2A
    assert ref_alaw_decode(0xAA) == 32256 and ref_alaw_decode(0x2A) == -32256


# --- exhaustive agreement --------------------------------------------------------------


@pytest.mark.parametrize("law", g711.LAWS)
def test_encode_matches_reference_for_every_pcm_value(law: g711.Law) -> None:
    got = ENCODE[law](ALL_PCM_BYTES)
    ref = REF_ENCODE[law]
    expected = bytes(ref(x) for x in ALL_PCM)
    assert len(got) == 65536
    mismatches = [(x, got[i], expected[i]) for i, x in enumerate(ALL_PCM) if got[i] != expected[i]]
    assert mismatches == []
    assert g711.encode(law, ALL_PCM_BYTES) == got


@pytest.mark.parametrize("law", g711.LAWS)
def test_decode_matches_reference_for_every_code(law: g711.Law) -> None:
    got = samples(DECODE[law](ALL_CODES))
    assert got == [REF_DECODE[law](c) for c in ALL_CODES]
    assert g711.decode(law, ALL_CODES) == DECODE[law](ALL_CODES)


def half_step(law: g711.Law, code: int) -> int:
    """Half the quantizer step of ``code``'s segment, in 16-bit units."""
    if law == "mulaw":
        return 4 << ((~code >> 4) & 0x07)  # 14-bit step 2 << e
    segment = ((code ^ 0x55) >> 4) & 0x07
    return 8 << max(segment - 1, 0)  # 13-bit step 2 in segments 0 and 1, then doubling


@pytest.mark.parametrize("law", g711.LAWS)
def test_round_trip_error_is_within_half_a_step(law: g711.Law) -> None:
    # A sane quantizer reconstructs the middle of each decision interval: the round-trip
    # error is at most half the segment's step, plus what the 16 -> 14/13-bit shift drops.
    # This holds the model (and so the codec it matches) to G.711's step structure.
    codes = ENCODE[law](ALL_PCM_BYTES)
    decoded = samples(DECODE[law](codes))
    shift_loss = 4 if law == "mulaw" else 8
    top = 32124 if law == "mulaw" else 32256  # the largest reconstruction level
    for x, code, y in zip(ALL_PCM, codes, decoded, strict=True):
        if abs(x) <= top:
            assert abs(x - y) <= half_step(law, code) + shift_loss, (x, hex(code), y)
        else:  # beyond the last level the codec clips to it
            assert abs(y) == top and (y > 0) == (x > 0)


# --- carrier round trips ---------------------------------------------------------------


@pytest.mark.parametrize(("law", "unstable"), [("mulaw", {0x7F}), ("alaw", set())])
def test_carrier_bytes_survive_decode_then_reencode(law: g711.Law, unstable: set[int]) -> None:
    # One second of an 8 kHz carrier stream holding every code many times in random order:
    # a gateway that decodes to PCM and re-encodes must hand the carrier back its bytes.
    rng = random.Random(711)
    carrier = bytes(rng.randrange(256) for _ in range(8000)) + ALL_CODES
    again = ENCODE[law](DECODE[law](carrier))
    changed = {c for c, d in zip(carrier, again, strict=True) if c != d}
    assert changed == unstable
    if law == "mulaw":
        # mu-law has two zeros (+0 = 0xFF, -0 = 0x7F); PCM has one, which encodes as +0.
        assert DECODE[law](b"\x7f\xff") == b"\x00\x00\x00\x00"
        assert again[carrier.index(0x7F)] == 0xFF


@pytest.mark.parametrize("law", g711.LAWS)
def test_pcm_to_g711_to_pcm_to_g711_is_stable(law: g711.Law) -> None:
    once = ENCODE[law](ALL_PCM_BYTES)
    twice = ENCODE[law](DECODE[law](once))
    assert twice == once


# --- errors and types ------------------------------------------------------------------


@pytest.mark.parametrize("law", g711.LAWS)
@pytest.mark.parametrize("length", [1, 3, 321])
def test_odd_pcm_length_raises_audio_format_error(law: g711.Law, length: int) -> None:
    with pytest.raises(AudioFormatError, match=rf"got {length} bytes \(odd length\)"):
        ENCODE[law](bytes(length))
    with pytest.raises(AudioFormatError):
        g711.encode(law, bytes(length))
    assert isinstance(AudioFormatError("x"), ValueError)


def test_unknown_law_is_rejected() -> None:
    with pytest.raises(AudioFormatError, match=r"unknown G\.711 law 'ulaw'"):
        g711.encode("ulaw", b"")  # type: ignore[arg-type]
    with pytest.raises(AudioFormatError):
        g711.decode("pcm_s16le", b"")  # type: ignore[arg-type]
    with pytest.raises(AudioFormatError):
        g711.G711Encoder("g722")  # type: ignore[arg-type]
    with pytest.raises(AudioFormatError):
        g711.G711Decoder("g722")  # type: ignore[arg-type]


@pytest.mark.parametrize("law", g711.LAWS)
def test_empty_and_bytes_like_inputs(law: g711.Law) -> None:
    data = ALL_PCM_BYTES[:4000]
    expected = ENCODE[law](data)
    assert ENCODE[law](b"") == b"" and DECODE[law](b"") == b""
    assert ENCODE[law](bytearray(data)) == expected
    assert ENCODE[law](memoryview(data)) == expected
    assert DECODE[law](memoryview(expected)) == DECODE[law](expected)


def test_import_leaks_no_deprecation_warning_and_keeps_caller_filters() -> None:
    code = (
        "import warnings\n"
        "warnings.simplefilter('error')\n"
        "before = list(warnings.filters)\n"
        "import reson8_voice.g711 as g\n"
        "assert warnings.filters == before, 'import changed the warning filters'\n"
        "assert g.ulaw_encode(b'\\x00\\x00') == b'\\xff'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


# --- streaming -------------------------------------------------------------------------


@pytest.mark.parametrize("law", g711.LAWS)
def test_encoder_split_at_every_offset_matches_one_shot(law: g711.Law) -> None:
    data = ALL_PCM_BYTES[::97][:300] + pcm([1000, -1000, 32767, -32768, 0])
    expected = ENCODE[law](data)
    for cut in range(len(data) + 1):
        enc = g711.G711Encoder(law)
        first = enc.encode(data[:cut])
        assert len(first) == cut // 2 and enc.pending == cut % 2
        out = first + enc.encode(data[cut:]) + enc.flush()
        assert out == expected, f"split at byte {cut}"
        assert enc.pending == 0


@pytest.mark.parametrize("law", g711.LAWS)
def test_encoder_random_chunking_matches_one_shot(law: g711.Law) -> None:
    rng = random.Random(law)
    data = ALL_PCM_BYTES[1000:5000]
    expected = ENCODE[law](data)
    for _ in range(50):
        enc = g711.G711Encoder(law)
        out, i = [], 0
        while i < len(data):
            n = rng.choice([0, 1, 1, 3, 5, 160, 321])
            out.append(enc.encode(memoryview(data)[i : i + n]))
            i += n
        out.append(enc.flush())
        assert b"".join(out) == expected


def test_encoder_flush_with_half_a_sample_raises_then_recovers() -> None:
    enc = g711.G711Encoder("alaw")
    assert enc.law == "alaw"
    assert enc.encode(b"\x00\x10\x00") == g711.alaw_encode(b"\x00\x10")
    with pytest.raises(AudioFormatError, match="half a sample"):
        enc.flush()
    assert enc.pending == 0
    assert enc.encode(b"\x34\x12") == g711.alaw_encode(b"\x34\x12")
    enc.encode(b"\x01")
    enc.reset()
    assert enc.flush() == b""
    assert "alaw" in repr(enc)


@pytest.mark.parametrize("law", g711.LAWS)
def test_decoder_matches_function(law: g711.Law) -> None:
    dec = g711.G711Decoder(law)
    assert dec.law == law
    assert dec.decode(ALL_CODES) == DECODE[law](ALL_CODES)
    assert dec.flush() == b""
    assert law in repr(dec)


def test_pcm16_level_helpers_match_a_float_reference() -> None:
    rng = random.Random(7)
    for amplitude in (1, 30, 100, 1000, 10000, 32767):
        samples = [rng.randint(-amplitude, amplitude) for _ in range(160)]
        pcm = struct.pack(f"<{len(samples)}h", *samples)
        exact = math.sqrt(sum(x * x for x in samples) / len(samples))
        assert g711.pcm16_rms(pcm) == int(exact)  # rounded down, never up
        if int(exact) > 0:
            assert g711.pcm16_dbfs(pcm) == pytest.approx(20 * math.log10(int(exact) / 32768))
    full_scale = struct.pack("<4h", 32767, -32768, 32767, -32768)
    assert g711.pcm16_dbfs(full_scale) == pytest.approx(0.0, abs=1e-3)
    assert g711.pcm16_dbfs(b"\x00\x00" * 160) == g711.pcm16_dbfs(b"") == -math.inf
    for helper in (g711.pcm16_rms, g711.pcm16_dbfs):
        with pytest.raises(AudioFormatError, match="odd length"):
            helper(b"\x00" * 321)
