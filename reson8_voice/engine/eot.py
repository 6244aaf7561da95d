"""End-of-turn prediction for the embedded turn engine: is the speaker done?

Silence alone cannot tell a finished sentence from a pause mid-thought ("I'd like to book
a table ... for four"). During each pause the engine asks an :class:`EndOfTurnModel` how
likely the turn is complete, and commits ``turn_end`` (spec 001) sooner when it is sure.

:class:`SmartTurnModel` runs smart-turn v3, the model pipecat ships for this
(``pipecat/audio/turn/smart_turn/data/smart-turn-v3.*.onnx``), exactly as pipecat's
``LocalSmartTurnAnalyzerV3`` does: the last 8 s of 16 kHz audio (zero-padded in front when
shorter), pipecat's numpy Whisper log-mel features, one ONNX Runtime call returning the
probability of completion. :class:`ScriptedEndOfTurn` returns scripted probabilities for
tests.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, runtime_checkable

import numpy as np

from .asr import SAMPLE_RATE, PcmInput, pcm16_to_float32

__all__ = [
    "WINDOW_SECONDS",
    "EndOfTurnModel",
    "ScriptedEndOfTurn",
    "SmartTurnModel",
]

#: How much trailing audio smart-turn v3 looks at.
WINDOW_SECONDS = 8


@runtime_checkable
class EndOfTurnModel(Protocol):
    """The probability that a speaker's turn is complete, synchronous and thread-safe."""

    def predict(self, pcm16_16k: PcmInput) -> float:
        """Probability in [0, 1] that the turn ending with this 16 kHz mono audio is done.

        Give it the turn so far, up to the pause being judged; only the last
        :data:`WINDOW_SECONDS` seconds matter.
        """
        ...


class SmartTurnModel:
    """smart-turn v3 on ONNX Runtime, computed the way pipecat computes it.

    Args:
        model_path: an ONNX file; by default the newest ``smart-turn-v3*.onnx`` in pipecat.
        cpu_threads: ONNX Runtime intra-op threads per call (sequential execution, one
            inter-op thread), 1 as in pipecat.
        warm_up: run one inference at load so the first real call is not slow.

    Thread safety: ONNX Runtime's ``InferenceSession.run`` may be called concurrently from
    several threads, and the feature code keeps no state; one instance can be shared.

    Raises:
        ModelUnavailableError: (an :class:`ImportError`) onnxruntime or the model file is
            missing.
    """

    def __init__(self, model_path: str | os.PathLike[str] | None = None, *,
                 cpu_threads: int = 1, warm_up: bool = True) -> None:
        from ._models import (
            LOCAL_EXTRA_HINT,
            ModelUnavailableError,
            default_smart_turn_path,
            load_smart_turn_features,
        )

        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - the extra is installed in CI
            raise ModelUnavailableError(f"onnxruntime is not installed; {LOCAL_EXTRA_HINT}"
                                        ) from exc
        path = default_smart_turn_path() if model_path is None else os.fspath(model_path)
        if not os.path.isfile(path):
            raise ModelUnavailableError(f"smart-turn model {str(path)!r} does not exist")
        self.model_path = str(path)
        self._features = load_smart_turn_features()
        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = cpu_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session: Any = ort.InferenceSession(self.model_path, sess_options=options,
                                                  providers=["CPUExecutionProvider"])
        self._input = str(self._session.get_inputs()[0].name)
        if warm_up:
            self.predict(np.zeros(SAMPLE_RATE, dtype=np.float32))

    def __repr__(self) -> str:
        return f"SmartTurnModel(model_path={self.model_path!r})"

    def predict(self, pcm16_16k: PcmInput) -> float:
        """Probability that the turn is complete (see :class:`EndOfTurnModel`)."""
        audio = pcm16_to_float32(pcm16_16k)
        window = WINDOW_SECONDS * SAMPLE_RATE
        if audio.size > window:
            audio = audio[-window:]
        elif audio.size < window:
            audio = np.pad(audio, (window - audio.size, 0))
        features = self._features(audio, do_normalize=True)[np.newaxis]
        output = self._session.run(None, {self._input: features})[0]
        return float(np.asarray(output).reshape(-1)[0])


Probabilities: TypeAlias = float | Sequence[float] | Callable[[float], float]


@dataclass(eq=False)
class ScriptedEndOfTurn:
    """A deterministic end-of-turn model for tests: no model, no cost.

    ``probability`` is a constant, a sequence handed out in call order (the last value
    repeats once it runs out), or a callable of the audio duration in seconds. Thread-safe;
    ``calls`` records each call's audio duration in seconds.
    """

    probability: Probabilities = 1.0
    calls: list[float] = field(default_factory=list, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def predict(self, pcm16_16k: PcmInput) -> float:
        """The next scripted probability (see the class docstring)."""
        seconds = pcm16_to_float32(pcm16_16k).size / SAMPLE_RATE
        with self._lock:
            index = len(self.calls)
            self.calls.append(seconds)
        p = self.probability
        if callable(p):
            return float(p(seconds))
        if isinstance(p, int | float):
            return float(p)
        if not p:
            raise ValueError("ScriptedEndOfTurn needs at least one probability")
        return float(p[min(index, len(p) - 1)])
