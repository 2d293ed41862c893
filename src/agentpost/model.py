"""Core values shared by every layer: ids, clock, the SMTP envelope, label names."""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final


def new_id(prefix: str = "") -> str:
    """A time-ordered, 128-bit random id (ULID layout: 48-bit ms time + 80 random bits).

    Ordering ids orders rows by creation time, so cursor pagination can key on the id alone.
    Base32hex keeps that order in the text: its alphabet (0-9, a-v) sorts like the numbers.
    """
    return prefix + _base32hex(int(time.time() * 1000) << 80 | int.from_bytes(os.urandom(10), "big"))


# Base32hex digit pairs for every 10-bit value. base64.b32hexencode is pure Python and was most
# of new_id's cost, and a stored message makes several ids (message, blob, thread, event, queue
# items, attempts).
_PAIRS: Final = [a + b for a in "0123456789abcdefghijklmnopqrstuv" for b in "0123456789abcdefghijklmnopqrstuv"]


def _base32hex(value: int) -> str:
    """The 26 lower-case base32hex digits of a 128-bit value, as b32hexencode of its 16 bytes
    gives them (RFC 4648 §7: the last digit holds 3 bits and 2 zero bits)."""
    n = value << 2
    p = _PAIRS
    return (
        p[n >> 120] + p[n >> 110 & 1023] + p[n >> 100 & 1023] + p[n >> 90 & 1023] + p[n >> 80 & 1023]
        + p[n >> 70 & 1023] + p[n >> 60 & 1023] + p[n >> 50 & 1023] + p[n >> 40 & 1023] + p[n >> 30 & 1023]
        + p[n >> 20 & 1023] + p[n >> 10 & 1023] + p[n & 1023]
    )  # fmt: skip


def id_floor(prefix: str, unix_ms: int) -> str:
    """The smallest ``new_id(prefix)`` made at or after ``unix_ms``: a time window as an id range."""
    return prefix + base64.b32hexencode(unix_ms.to_bytes(6, "big") + bytes(10))[:26].decode().lower()


def id_time_ms(value: str, prefix: str = "") -> int:
    """When ``new_id(prefix)`` made ``value``, in Unix milliseconds."""
    body = value[len(prefix) :].upper()
    return int.from_bytes(base64.b32hexdecode(body + "======")[:6], "big")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Envelope:
    """The SMTP envelope of one received message (RFC 5321 §2.3.1)."""

    mail_from: str  # "" for the null reverse-path
    rcpt_to: list[str]
    helo: str = ""
    client_ip: str = ""
    client_port: int = 0
    tls: str = ""  # negotiated TLS version, "" when plaintext
    received_at: datetime = field(default_factory=utcnow)


# System labels (AgentMail semantics); "spam", "blocked", "unauthenticated" and "trash" are hidden
# from default listings unless the caller asks for them.
LABEL_RECEIVED = "received"
LABEL_SENT = "sent"
LABEL_UNREAD = "unread"
LABEL_SPAM = "spam"
LABEL_BLOCKED = "blocked"
LABEL_UNAUTHENTICATED = "unauthenticated"
LABEL_TRASH = "trash"
LABEL_AUTO_REPLY = "auto-reply"
LABEL_BOUNCE = "bounce"
LABEL_REPORT = "report"
LABEL_BULK = "bulk"
HIDDEN_LABELS = (LABEL_SPAM, LABEL_BLOCKED, LABEL_UNAUTHENTICATED, LABEL_TRASH)
SYSTEM_LABELS = frozenset({LABEL_RECEIVED, LABEL_SENT, LABEL_AUTO_REPLY, LABEL_BOUNCE, LABEL_REPORT, LABEL_BULK})
# Labels no API call may add or remove: they record what the pipelines saw (direction, the
# sender's authentication, an allow/block list hit). "spam", "trash" and "unread" stay the
# caller's to change.
PROTECTED_LABELS = SYSTEM_LABELS | {LABEL_UNAUTHENTICATED, LABEL_BLOCKED}
