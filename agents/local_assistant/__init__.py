"""A local voice assistant with Reson8 turn-taking (microphone or a file; see README.md)."""

from .assistant import (
    Assistant,
    AssistantConfig,
    build_assistant,
    file_transport,
    local_audio_transport,
    run_assistant,
)

__all__ = ["Assistant", "AssistantConfig", "build_assistant", "file_transport",
           "local_audio_transport", "run_assistant"]
