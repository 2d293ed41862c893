"""Cursor pagination: opaque page tokens over time-ordered ids."""

from __future__ import annotations

import base64
import binascii

from agentpost.errors import BadRequest

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


def encode_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_token(token: str | None) -> str | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest("page_token is not valid", fix="Pass next_page_token from a previous response.") from None
    if not raw or len(raw) > 64 or not raw.isprintable():
        raise BadRequest("page_token is not valid", fix="Pass next_page_token from a previous response.")
    return raw


def clamp_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if limit < 1:
        raise BadRequest("limit must be at least 1")
    return min(limit, MAX_LIMIT)
