"""The embedded Reson8-compatible server (the local engine behind the documented endpoints).

Also the users' test double: start one on port 0 in a test and point the client or the
pipecat service at ``server.url``, as httpx users do with ``MockTransport``.
"""

from .app import Reson8Server, ServerConfig
from .audio_input import AudioInput, UnsupportedAudio

__all__ = ["AudioInput", "Reson8Server", "ServerConfig", "UnsupportedAudio"]
