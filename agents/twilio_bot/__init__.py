"""A Twilio phone bot with Reson8 turn-taking (see README.md beside this file)."""

from .app import create_app
from .bot import BotConfig, CallSession, run_call

__all__ = ["BotConfig", "CallSession", "create_app", "run_call"]
