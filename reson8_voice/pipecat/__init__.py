"""The pipecat adapter: services and analyzers that plug reson8-voice into pipecat 1.14.

Importing this module imports pipecat; importing :mod:`reson8_voice` never does.
"""

from ._vad_analyzer import WebRTCVADAnalyzer, phone_vad_params
from ._vad_stt import VADTurnSTTService
from .gateway_service import Reson8GatewaySTTService
from .realtime_service import Reson8RealtimeSTTService
from .scribe_service import ScribeRealtimeSTTService
from .turns_service import DEFAULT_LOCAL_URL, Reson8TurnsSTTService, Reson8TurnsSTTSettings

__all__ = [
    "DEFAULT_LOCAL_URL",
    "Reson8GatewaySTTService",
    "Reson8RealtimeSTTService",
    "Reson8TurnsSTTService",
    "Reson8TurnsSTTSettings",
    "ScribeRealtimeSTTService",
    "VADTurnSTTService",
    "WebRTCVADAnalyzer",
    "phone_vad_params",
]
