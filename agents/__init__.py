"""Runnable agents built on reson8-voice: a Twilio phone bot and a local voice assistant."""
