"""Typed field access for the JSON wire formats (shared by every dialect's parser).

Each helper reads one field of a decoded JSON object and raises :class:`FieldError` when
its type is wrong; the parsers turn that into a :class:`RemoteProtocolError` quoting the
message. ``bool`` is never accepted as a number, though JSON's ``true`` decodes to one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .errors import RemoteProtocolError

__all__ = ["FieldError", "decode_tagged", "opt_bool", "opt_int", "opt_num", "opt_str",
           "req_str"]


def decode_tagged(text: str | bytes, tag: str = "type") -> tuple[dict[str, Any], str]:
    """One JSON text frame as an object and its string ``tag`` (``type`` or the like).

    Raises:
        RemoteProtocolError: not JSON, not an object, or no string ``tag``; it quotes at
            most 200 characters of ``text``.
    """
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"malformed JSON ({exc.__class__.__name__})", text) from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("message is not a JSON object", text)
    kind = obj.get(tag)
    if not isinstance(kind, str):
        raise RemoteProtocolError(f"message has no string {tag!r}", text)
    return obj, kind


class FieldError(Exception):
    """A field of a wire message has the wrong type."""


def req_str(obj: Mapping[str, Any], name: str) -> str:
    """A required string field."""
    value = obj.get(name)
    if not isinstance(value, str):
        raise FieldError(f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def opt_str(obj: Mapping[str, Any], name: str) -> str | None:
    """An optional string field (absent or null: None)."""
    value = obj.get(name)
    if value is None or isinstance(value, str):
        return value
    raise FieldError(f"field {name!r} must be a string or null, got {type(value).__name__}")


def opt_num(obj: Mapping[str, Any], name: str) -> float | None:
    """An optional number field, kept as the int or float it was on the wire."""
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError(f"field {name!r} must be a number, got {type(value).__name__}")
    return value


def opt_int(obj: Mapping[str, Any], name: str) -> int | None:
    """An optional integer field."""
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(f"field {name!r} must be an integer, got {type(value).__name__}")
    return value


def opt_bool(obj: Mapping[str, Any], name: str) -> bool | None:
    """An optional boolean field."""
    value = obj.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise FieldError(f"field {name!r} must be a boolean, got {type(value).__name__}")
