"""One pipeline, three places to get turns from: embedded server, your own, or hosted.

    reson8-voice serve                      # embedded, offline: the default URL
    RESON8_URL=ws://10.0.0.5:8765 ...       # a server of your own
    RESON8_API_KEY=... ...                  # the hosted service (wss://api.reson8.dev)

``Reson8TurnsSTTService`` picks the URL in that order: ``url=`` if given, the hosted
service when a key or token is given, else ``$RESON8_URL``, else ``ws://127.0.0.1:8765``.
Credentials go only over ``wss://`` (or to loopback) and never appear in logs or reprs.
"""

from __future__ import annotations

import os

from reson8_voice.pipecat import Reson8TurnsSTTService


def make_stt() -> Reson8TurnsSTTService:
    key = os.environ.get("RESON8_API_KEY")
    if key:  # hosted: wss://api.reson8.dev/v1/speech-to-text/turns
        return Reson8TurnsSTTService(api_key=key)
    token = os.environ.get("RESON8_TOKEN")
    if token:  # a short-lived access token minted by your backend
        return Reson8TurnsSTTService(token=token)
    return Reson8TurnsSTTService()  # $RESON8_URL or the embedded server


if __name__ == "__main__":
    stt = make_stt()
    print(f"turns from {stt.url}")  # the URL, never the key
