"""Authentication-Results header fields (RFC 8601): build ours, remove ones that claim our authserv-id.

``build(authserv_id, results)`` gives one folded field, CRLF-terminated, ready to prepend to a
message. ``ResInfo`` is one ``method=result`` with its properties (``smtp.mailfrom``, ``header.d``,
...) and a comment; values and comments are reduced to what the grammar allows, so nothing a
peer controls (a domain, a DNS error text) can break the field or start a new one.

``remove_ours(raw, authserv_id)`` drops every top-level Authentication-Results field whose
authserv-id is ours (RFC 8601 §5: a border MTA MUST remove or rename such fields, since we did
not add them); everything else stays byte-exact.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from agentpost.proto.memo import short_text_cache

__all__ = ["FIELD_NAME", "ResInfo", "authserv_id_of", "build", "remove_ours"]

FIELD_NAME: Final = "Authentication-Results"
MAX_COMMENT: Final = 120
# RFC 2045 §5.1 token: printable US-ASCII except SPACE and tspecials; RFC 8601 §2.2 adds
# "[local-part] @ domain-name" for pvalue, so "@" is allowed in property values.
_NOT_TOKEN: Final = re.compile(r"[^!#$%&'*+\-.0-9A-Z^_`a-z{|}~]")
_NOT_PVALUE: Final = re.compile(r"[^!#$%&'*+\-.0-9@A-Z^_`a-z{|}~]")
_NOT_COMMENT: Final = re.compile(r"[^ -'*-\[\]-~]")  # printable ASCII without ( ) \
_SPACES: Final = re.compile(r"\s+")
_COMMENT_OR_SPACE: Final = re.compile(r"\s+|\((?:[^()\\]|\\.)*\)")
_FIELD: Final = re.compile(rb"authentication-results[ \t]*:", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ResInfo:
    """One result: ``method=result (comment) ptype.property=value ...`` (RFC 8601 §2.2)."""

    method: str  # "spf", "dkim", "dmarc"
    result: str  # "pass", "fail", "none", ...
    properties: Sequence[tuple[str, str]] = field(default=())  # ("smtp.mailfrom", "example.com")
    comment: str = ""


# The sanitisers below are cached: methods, results, property names and most values and comments
# repeat from message to message, and a regex substitution per token cost ~30 us a header.
_CACHED_TEXT: Final = 256


@short_text_cache(_CACHED_TEXT)
def _token(text: str) -> str:
    return _NOT_TOKEN.sub("", text)


@short_text_cache(_CACHED_TEXT)
def _comment(text: str) -> str:
    text = _NOT_COMMENT.sub("?", _SPACES.sub(" ", text)).strip()
    if len(text) > MAX_COMMENT:
        text = text[: MAX_COMMENT - 3] + "..."
    return f" ({text})" if text else ""


@short_text_cache(_CACHED_TEXT)
def _value(text: str) -> str:
    """A property value: a token (or local-part@domain) as is, anything else as a quoted-string."""
    if text and _NOT_PVALUE.search(text) is None and not text.startswith("@"):
        return text
    cleaned = _NOT_COMMENT.sub("?", text.replace("\\", "?").replace('"', "?"))[:255]
    return f'"{cleaned}"'


def build(authserv_id: str, results: Sequence[ResInfo]) -> bytes:
    """``Authentication-Results: <authserv-id>; <resinfo>; ...`` folded one result per line, or ``none``."""
    server = _token(authserv_id) or "localhost"
    lines = []
    for info in results:
        method = _token(info.method) or "x-unknown"
        result = _token(info.result) or "none"
        props = "".join(f" {_token(name)}={_value(value)}" for name, value in info.properties)
        lines.append(f"{method}={result}{_comment(info.comment)}{props}")
    # RFC 8601 §2.2: no-result = [CFWS] ";" [CFWS] "none": no method was applied.
    body = ";\r\n\t".join(lines) if lines else "none"
    return f"{FIELD_NAME}: {server};\r\n\t{body}\r\n".encode("ascii")


def authserv_id_of(value: str) -> str:
    """The authserv-id of a field value (comments and folding skipped), lower case; "" if none."""
    text = _COMMENT_OR_SPACE.sub(" ", value).strip()
    token = re.split(r"[\s;]", text, maxsplit=1)[0] if text else ""
    return token.strip('"').lower().rstrip(".")


def _header_end(raw: bytes) -> int:
    """Offset just past the top-level header block's last field (before the empty line)."""
    if raw.startswith((b"\r\n", b"\n")):
        return 0
    crlf = raw.find(b"\r\n\r\n")
    lf = raw.find(b"\n\n")
    ends = [i + 2 for i in (crlf,) if i >= 0] + [i + 1 for i in (lf,) if i >= 0]
    return min(ends) if ends else len(raw)


def remove_ours(raw: bytes, authserv_id: str) -> bytes:
    """``raw`` without the top-level Authentication-Results fields that claim ``authserv_id``."""
    end = _header_end(raw)
    head = raw[:end]
    # The usual case: nothing to scan. A plain search first: the case-insensitive pattern has no
    # literal prefix to skip ahead with, so it is tried at every offset.
    if b"authentication-results" not in head.lower() or _FIELD.search(head) is None:
        return raw
    ours = authserv_id.lower().rstrip(".")
    kept: list[bytes] = []
    removed = False
    for chunk in re.split(rb"(?<=\n)(?![ \t])", head):
        if not chunk:
            continue
        match = _FIELD.match(chunk)
        if match is not None:
            value = chunk[match.end() :].decode("utf-8", "replace")
            if authserv_id_of(value) == ours:
                removed = True
                continue
        kept.append(chunk)
    return b"".join(kept) + raw[end:] if removed else raw
