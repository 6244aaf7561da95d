"""The ``reson8-voice`` command: help, exit codes, one-line errors, ``transcribe`` end to end."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import sys
import wave
from pathlib import Path
from typing import Any

import pytest

from reson8_voice.auth import Secret
from reson8_voice.cli import (
    EXIT_CONNECTION,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    build_parser,
    main,
)
from reson8_voice.demo.transcribe import (
    TranscribeOptions,
    UnreadableAudio,
    read_audio_file,
    transcribe_file,
)
from reson8_voice.server import Reson8Server, ServerConfig

from .audio_fixtures import FIXTURES_DIR, load_fixture
from .conftest import scripted_runner

SHORT = FIXTURES_DIR / "short_answers.ulaw"


@pytest.mark.parametrize("command, needles", [
    ([], ["serve", "demo", "transcribe", "exit codes"]),
    (["serve"], ["--host", "--port", "--api-key"]),
    (["demo"], ["--url", "--api-key", "--speed", "--report-dir", "OPENAI_API_KEY"]),
    (["transcribe"], ["--endpoint", "--json", "--encoding", "--progress"]),
])
def test_every_command_has_help(command: list[str], needles: list[str],
                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for needle in needles:
        assert needle in text


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["transcribe"])  # FILE missing
    assert exc.value.code == EXIT_USAGE
    assert "the following arguments are required: file" in capsys.readouterr().err
    assert main(["transcribe", "/no/such/file.wav"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["reson8-voice: error: cannot read /no/such/file.wav: No such file or "
                   "directory"]


def test_unreachable_server_exits_4_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["transcribe", str(SHORT), "--url", "ws://127.0.0.1:9"]) == EXIT_CONNECTION
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reson8-voice: error: ") and "connect" in err[0]


def test_wav_and_raw_files_are_read_with_their_format(tmp_path: Path) -> None:
    pcm = load_fixture("short_answers").pcm16()
    path = tmp_path / "pcm.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm)
    audio = read_audio_file(path)
    assert (audio.encoding, audio.sample_rate, audio.channels, audio.data) == (
        "pcm_s16le", 8000, 1, pcm)
    # a mu-law WAV (format 7), which the stdlib wave module cannot read
    mu = SHORT.read_bytes()
    fmt = struct.pack("<HHIIHH", 7, 1, 8000, 8000, 1, 8)
    blob = (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(mu)) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data"
            + struct.pack("<I", len(mu)) + mu)
    (tmp_path / "mu.wav").write_bytes(blob)
    audio = read_audio_file(tmp_path / "mu.wav")
    assert (audio.encoding, audio.sample_rate, audio.data) == ("mulaw", 8000, mu)
    assert read_audio_file(SHORT).encoding == "mulaw"
    assert read_audio_file(SHORT).duration_s == pytest.approx(len(mu) / 8000)
    with pytest.raises(UnreadableAudio, match="--encoding"):
        read_audio_file(FIXTURES_DIR / "manifest.json")


async def test_transcribe_end_to_end_prints_one_json_turn_per_answer() -> None:
    fx = load_fixture("short_answers")
    async with Reson8Server(ServerConfig(port=0), scripted_runner()) as server:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "reson8_voice", "transcribe", str(SHORT), "--url",
            server.url, "--json", "--progress", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == EXIT_OK, err.decode()
    turns = [json.loads(line) for line in out.decode().splitlines()]
    assert [t["type"] for t in turns] == ["turn"] * len(fx.turns)
    for got, truth in zip(turns, fx.turns, strict=True):
        assert got["text"].startswith("w0")
        # the turn's timing is the ground truth's, within the VAD's pre-roll and hangover
        assert abs(got["start_ms"] - truth.start_ms) <= 400
        assert got["words"] and got["words"][0]["text"] == "w0"
    assert b"[" in err and b"100%" in err  # the progress bar went to stderr


async def test_transcribe_realtime_endpoint_decodes_g711_and_flushes() -> None:
    fx = load_fixture("short_answers")
    out = io.StringIO()
    async with Reson8Server(ServerConfig(port=0), scripted_runner()) as server:
        count = await transcribe_file(read_audio_file(SHORT), TranscribeOptions(
            url=server.url, endpoint="realtime", json_output=True), out, io.StringIO())
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert count == len(lines) == len(fx.turns)
    assert all(line["type"] == "transcript" and line["text"].startswith("w0")
               for line in lines)
    for line, truth in zip(lines, fx.turns, strict=True):
        assert abs(line["start_ms"] - truth.start_ms) <= 400


async def _transcribe_with(server: Reson8Server, *key_args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reson8_voice", "transcribe", str(SHORT), "--url",
        server.url, *key_args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_wrong_api_key_exits_4_and_names_the_key(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("wrong-key-0042\n")
    async with Reson8Server(ServerConfig(port=0, api_key=Secret("right")),
                            scripted_runner()) as server:
        code, err = await _transcribe_with(server, "--api-key-file", str(key_file))
    assert code == EXIT_CONNECTION
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "401" in lines[0] and "API key" in lines[0]
    assert "wrong-key" not in err


async def test_a_key_file_is_read_and_a_key_on_the_command_line_is_warned_about(
    tmp_path: Path,
) -> None:
    key = "right-key-7d1e"
    key_file = tmp_path / "key"
    key_file.write_text(f"{key}\n")
    async with Reson8Server(ServerConfig(port=0, api_key=Secret(key)),
                            scripted_runner()) as server:
        from_file = await _transcribe_with(server, "--api-key-file", str(key_file))
        inline = await _transcribe_with(server, "--api-key", key)
    assert from_file[0] == EXIT_OK and "warning" not in from_file[1]
    assert inline[0] == EXIT_OK and "visible to other users" in inline[1]
    assert key not in from_file[1] + inline[1]


@pytest.mark.parametrize(("content", "needle"), [
    (None, "--api-key-file: cannot read"), ("", "is empty"), ("\n  \n", "is empty"),
])
def test_an_unusable_key_file_is_a_usage_error(
    content: str | None, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    key_file = tmp_path / "key"
    if content is not None:
        key_file.write_text(content)
    assert main(["transcribe", str(SHORT), "--api-key-file", str(key_file)]) == EXIT_USAGE
    assert needle in capsys.readouterr().err


def test_a_key_and_a_key_file_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--api-key", "k", "--api-key-file", "/dev/null"])
    assert exc.value.code == EXIT_USAGE and "not allowed with" in capsys.readouterr().err


def test_parser_knows_the_three_commands() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"serve", "demo", "transcribe"}  # type: ignore[arg-type]


@pytest.mark.parametrize(("argv", "needle"), [
    (["--port", "70000"], "--port: must be within 0..65535, got 70000"),
    (["--port", "-1"], "--port: must be within 0..65535"),
    (["--port", "http"], "--port: not a port number"),
    (["--workers", "0"], "--workers: must be at least 1, got 0"),
    (["--workers", "-3"], "--workers: must be at least 1, got -3"),
    (["--max-session-s", "0"], "--max-session-s: must be a positive number"),
])
def test_serve_rejects_bad_numbers_at_the_command_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reson8_voice.engine import models

    monkeypatch.setattr(models.LocalModels, "load", _no_model_load)
    with pytest.raises(SystemExit) as exc:
        main(["serve", *argv])
    assert exc.value.code == EXIT_USAGE
    assert needle in capsys.readouterr().err


def _no_model_load(*args: object, **kwargs: object) -> None:
    raise AssertionError("the models must not be loaded")


def test_serve_refuses_a_public_bind_before_loading_the_models(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ServerConfig refuses it (one rule for library and CLI); the CLI builds the config
    before the ~10 s model load and says how to fix it."""
    from reson8_voice.engine import models

    monkeypatch.delenv("RESON8_API_KEY", raising=False)
    monkeypatch.setattr(models.LocalModels, "load", _no_model_load)
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == EXIT_REFUSED
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["reson8-voice: error: refusing to serve on 0.0.0.0 without an API key: "
                   "pass --api-key-file or set RESON8_API_KEY (or bind 127.0.0.1)"]


def test_serve_takes_its_key_from_a_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The file's first line is the server's key: a public bind is allowed with it, and
    nothing about it (nor a warning) is printed."""
    from reson8_voice.engine import models
    from reson8_voice.server import app

    key_file = tmp_path / "key"
    key_file.write_text("serve-key-51c0\n")
    monkeypatch.delenv("RESON8_API_KEY", raising=False)
    configs: list[ServerConfig] = []
    real_config = app.ServerConfig

    def recording_config(**kwargs: Any) -> ServerConfig:
        configs.append(real_config(**kwargs))
        return configs[-1]

    def stop_before_the_models(*args: object, **kwargs: object) -> None:
        raise ImportError("stop here")

    monkeypatch.setattr(app, "ServerConfig", recording_config)
    monkeypatch.setattr(models.LocalModels, "load", stop_before_the_models)
    assert main(["serve", "--host", "0.0.0.0", "--port", "0",
                 "--api-key-file", str(key_file)]) == EXIT_FAILURE  # the stub's ImportError
    assert len(configs) == 1 and configs[0].api_key is not None
    assert configs[0].api_key.reveal() == "serve-key-51c0"
    err = capsys.readouterr().err
    assert "stop here" in err and "serve-key" not in err and "warning" not in err


def test_serve_workers_reach_whisper(monkeypatch: pytest.MonkeyPatch) -> None:
    """--workers sizes the inference pool and the Whisper replicas (num_workers): with one
    replica, concurrent recognitions would queue inside CTranslate2 whatever the pool."""
    from reson8_voice.engine import asr, eot

    seen: dict[str, object] = {}

    class FakeWhisper:
        def __init__(self, model_path: object = None, **kwargs: object) -> None:
            seen.update(kwargs, model_path=model_path)
            raise ImportError("stop here")

    monkeypatch.setattr(asr, "WhisperRecognizer", FakeWhisper)
    monkeypatch.setattr(eot, "SmartTurnModel", lambda: None)
    assert main(["serve", "--port", "0", "--workers", "3"]) == EXIT_FAILURE
    assert seen["num_workers"] == 3
