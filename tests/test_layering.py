"""Imports flow one way: the core knows nothing of asyncio, websockets or pipecat."""

from __future__ import annotations

import subprocess
import sys

import pytest

import reson8_voice

CORE = ["errors", "events", "wire", "turns", "params", "auth", "g711", "vad", "arbiter",
        "backlog", "_fields", "dialects.gateway", "dialects.scribe"]
FORBIDDEN = ("asyncio", "websockets", "pipecat")


def _modules_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_io_or_pipecat(module: str) -> None:
    loaded = _modules_after(f"import reson8_voice.{module}")
    bad = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN)
    assert not bad, f"reson8_voice.{module} pulls in {bad[:5]}"


def test_package_import_is_core_only() -> None:
    loaded = _modules_after("import reson8_voice")
    assert not any(m.split(".")[0] in FORBIDDEN for m in loaded)


def test_client_is_loaded_lazily_and_never_pulls_pipecat() -> None:
    loaded = _modules_after("import reson8_voice; reson8_voice.connect_turns")
    assert "websockets" in loaded and "reson8_voice.client" in loaded
    assert not any(m.split(".")[0] == "pipecat" for m in loaded)


def test_all_is_sorted_unique_and_resolvable() -> None:
    names = reson8_voice.__all__
    assert len(names) == len(set(names))
    # constants first, then classes, then functions, each alphabetical (ruff's RUF022 order)
    assert names == sorted(names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper()
                                                 else 2, n))
    for name in names:
        assert getattr(reson8_voice, name) is not None


def test_py_typed_is_shipped() -> None:
    from importlib.resources import files

    assert files("reson8_voice").joinpath("py.typed").is_file()
