"""Conversation threading: msg-id normalisation, thread keys (RFC 5322 §3.6.4) and base subject (RFC 5256 §2.1)."""

from __future__ import annotations

import re

__all__ = ["base_subject", "msgids_in", "normalise_msgid", "thread_keys"]

# RFC 5322 §3.6.4: msg-id = "<" id-left "@" id-right ">". The line limit of §2.1.1 bounds it.
MAX_MSGID = 998
# Keep threading work bounded on hostile References headers; the newest ids matter most.
MAX_REFERENCES = 200

_BRACKETED = re.compile(r"<([^<>]*)>")
_WS = re.compile(r"\s+")
_COMMENT = re.compile(r"\([^()]*\)")


def normalise_msgid(value: str) -> str | None:
    """Canonical "<id-left@id-right>": whitespace and comments removed, id-right lowercased.

    id-left keeps its case (it is opaque); id-right is usually a domain name, and
    RFC 5322 §3.6.4 allows none of "<", ">" or whitespace inside. Returns None when the
    value holds no usable msg-id.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.startswith("<"):
        close = text.find(">")
        if close < 0:
            return None
        return _canonical(text[1:close], bracketed=True)
    match = _BRACKETED.search(text)
    if match is not None:
        return _canonical(match.group(1), bracketed=True)
    if "@" in text and "(" not in text:
        return _canonical(text, bracketed=False)  # a bare id, seen from broken clients
    return None


def _canonical(inner: str, bracketed: bool) -> str | None:
    if " " in inner or "\t" in inner or "\n" in inner or "\r" in inner:
        inner = _WS.sub("", inner)  # folded long ids
    if not inner or len(inner) > MAX_MSGID or "<" in inner or not inner.isprintable():
        return None
    left, at, right = inner.rpartition("@")
    if not at:
        # RFC 5322 requires "@"; some old clients omit it. Keep bracketed ids whole.
        return f"<{inner}>" if bracketed else None
    if not left or not right:
        return None
    return f"<{left}@{right.lower()}>"


def msgids_in(value: str | None, limit: int = MAX_REFERENCES) -> list[str]:
    """All msg-ids in a References/In-Reply-To value, in order, normalised, duplicates removed."""
    if not value:
        return []
    text = _COMMENT.sub(" ", value) if "(" in value else value
    found = _BRACKETED.findall(text)
    ids: list[str] = []
    if found:
        candidates = [_canonical(inner, bracketed=True) for inner in found[-limit * 2 :]]
    else:
        candidates = [normalise_msgid(token) for token in _WS.split(text.replace(",", " "))[-limit * 2 :]]
    seen: set[str] = set()
    for msgid in candidates:
        if msgid is not None and msgid not in seen:
            seen.add(msgid)
            ids.append(msgid)
    return ids[-limit:]


def thread_keys(message_id: str | None, in_reply_to: str | None, references: list[str]) -> list[str]:
    """The msg-ids this message refers to, most specific first, without its own id.

    RFC 5322 §3.6.4: In-Reply-To names the parent; References lists the ancestry oldest
    first, so its last entry is the parent too and the rest are reversed after it.
    """
    own = normalise_msgid(message_id) if message_id else None
    keys: list[str] = []
    seen: set[str] = {own} if own else set()
    candidates = [in_reply_to] if in_reply_to else []
    candidates.extend(reversed(references[-MAX_REFERENCES:]))
    for candidate in candidates:
        msgid = normalise_msgid(candidate)
        if msgid is not None and msgid not in seen:
            seen.add(msgid)
            keys.append(msgid)
    return keys


# RFC 5256 §2.1 subj-refwd, widened with the reply and forward prefixes of common clients
# in other languages: German AW/WG, Scandinavian SV/VS/VB, Dutch Antw/Doorst, French
# RE/TR/Réf, Italian R/RIF/I, Spanish/Portuguese RE/RV/ENC/RES, Polish Odp/PD,
# Turkish YNT/ILT, Greek ΑΠ/ΣΧΕΤ/ΠΡΘ, Hebrew השב/הועבר, Chinese 回复/答复/转发/回覆/轉寄.
_PREFIXES = (
    "re|fwd|fw|aw|wg|sv|vs|vb|antw|antwort|doorst|tr|réf|ref|rif|r|i|rv|enc|res|odp|pd|ynt|ilt"
    "|απ|σχετ|πρθ|השב|הועבר|回复|答复|转发|回覆|轉寄|答覆"
)
_BLOB = r"\[[^\[\]]*\]"
# subj-leader: (subj-blob)* subj-refwd, where subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
_LEADER = re.compile(
    rf"^(?:{_BLOB}\s*)*(?:{_PREFIXES})\s*(?:{_BLOB}|\^\d+|\(\d+\))?\s*[:：]\s*",
    re.IGNORECASE,
)
_LEADING_BLOB = re.compile(rf"^{_BLOB}\s*")
_TRAILER = re.compile(r"\s*\(fwd\)\s*$", re.IGNORECASE)
_FWD_WRAPPER = re.compile(r"^\[fwd:\s*(.*)\]$", re.IGNORECASE | re.DOTALL)


def base_subject(subject: str | None) -> str:
    """RFC 5256 §2.1 base subject, lowercased; for display and search, never for merging threads."""
    if not subject:
        return ""
    # (1) collapse whitespace, (2)-(5) strip trailers, leaders and blobs until stable,
    # (6) unwrap "[fwd: ...]" and start over.
    text = " ".join(subject[:4096].split())
    while True:
        while True:
            stripped = _TRAILER.sub("", text)
            if stripped == text:
                break
            text = stripped
        while True:
            before = text
            text = _LEADER.sub("", text, count=1)
            blob = _LEADING_BLOB.match(text)
            if blob is not None and text[blob.end() :].strip():
                text = text[blob.end() :]
            if text == before:
                break
        wrapped = _FWD_WRAPPER.match(text)
        if wrapped is None:
            break
        text = wrapped.group(1).strip()
    return text.lower()
