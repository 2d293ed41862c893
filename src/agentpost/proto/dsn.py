"""Bounces: read RFC 3464 DSNs and non-standard bounces, classify them (RFC 3463), and build our own DSNs."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import quopri
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from agentpost.proto import mime
from agentpost.proto.threads import normalise_msgid

__all__ = [
    "MAX_BOUNCE_SIZE",
    "BounceReport",
    "BouncedRecipient",
    "build_dsn",
    "classify",
    "parse_bounce",
]

# Bounces that quote a whole large original carry everything we need near the top.
MAX_BOUNCE_SIZE = 2 * 1024 * 1024

PERMANENT = "Permanent"
TRANSIENT = "Transient"


@dataclass(frozen=True, slots=True)
class BouncedRecipient:
    address: str  # addr-spec, lowercased domain
    status: str | None  # RFC 3463 enhanced code "5.1.1" if known
    action: str | None  # RFC 3464 Action: failed|delayed|delivered|relayed|expanded
    diagnostic: str | None  # Diagnostic-Code text, e.g. "smtp; 550 5.1.1 User unknown"
    remote_mta: str | None


@dataclass(frozen=True, slots=True)
class BounceReport:
    recipients: list[BouncedRecipient]
    original_message_id: str | None  # Message-ID of the bounced message, if found
    original_envelope_id: str | None  # RFC 3461 ENVID echoed as Original-Envelope-Id
    kind: str  # "dsn" (RFC 3464 report) | "heuristic" (flufl.bounce / text)
    bounce_type: str  # "Permanent" | "Transient"
    sub_type: str  # "MailboxDoesNotExist", "MailboxFull", ..., "General"


# --------------------------------------------------------------------------- classification

_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
_REPLY_CODE = re.compile(r"(?<![\d.])([245][0-5]\d)(?:[ \-]|$)")

# RFC 3463 §3: subject.detail -> our sub_type; "x" means any detail of that subject.
_SUB_TYPES: dict[str, str] = {
    "1.0": "MailboxDoesNotExist",
    "1.1": "MailboxDoesNotExist",
    "1.6": "MailboxDoesNotExist",  # destination mailbox has moved, no forwarding address
    "1.10": "MailboxDoesNotExist",  # RFC 7505: recipient address has null MX
    "1.2": "DomainNotFound",
    "2.1": "MailboxDisabled",
    "2.2": "MailboxFull",
    "2.3": "MessageTooLarge",
    "3.4": "MessageTooLarge",
    "4.4": "DomainNotFound",
    "4.x": "NetworkError",
    "6.x": "ContentRejected",
    "7.x": "PolicyRejected",
}

# Checked in order; the first that matches names the sub_type.
_KEYWORDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "MailboxFull",
        re.compile(
            r"mailbox (?:is )?full|over ?quota|quota|insufficient (?:system )?storage|mailbox size limit|"
            r"exceeded storage|storage allocation|mail ?box.{0,20}full",
            re.IGNORECASE,
        ),
    ),
    (
        "MessageTooLarge",
        re.compile(r"too (?:large|big)|message size|size limit|exceeds? .{0,30}size|message length", re.IGNORECASE),
    ),
    (
        "MailboxDisabled",
        re.compile(r"disabled|deactivated|inactive|suspended|account (?:has been )?(?:closed|locked)", re.IGNORECASE),
    ),
    (
        "MailboxDoesNotExist",
        re.compile(
            r"user unknown|unknown user|no such (?:user|mailbox|recipient|account|address)|does not exist|"
            r"doesn'?t exist|not exist|unknown (?:recipient|address|mailbox|local)|recipient (?:unknown|not found)|"
            r"invalid (?:recipient|mailbox|address)|user not found|mailbox not found|address not found|"
            r"no mailbox|not a valid (?:mailbox|recipient)|unrouteable address|not our customer|"
            r"no longer (?:valid|available)|account .{0,20}(?:not|doesn'?t) exist|mailbox unavailable|"
            r"recipient address rejected",
            re.IGNORECASE,
        ),
    ),
    (
        "DomainNotFound",
        re.compile(
            r"host (?:not found|unknown)|domain (?:not found|does not exist)|no mx|name lookup|nxdomain|"
            r"unknown host|host or domain name not found|name service error|domain name not found|no such domain",
            re.IGNORECASE,
        ),
    ),
    (
        "ContentRejected",
        re.compile(r"spam|virus|malware|phish|content (?:rejected|filter)|message content|bulk mail", re.IGNORECASE),
    ),
    (
        "PolicyRejected",
        re.compile(
            r"blacklist|blocklist|block ?list|black ?list|blocked|dmarc|\bspf\b|dkim|policy|relay(?:ing)? "
            r"(?:denied|not permitted)|access denied|not authori[sz]ed|reputation|rbl|spamhaus",
            re.IGNORECASE,
        ),
    ),
    (
        "NetworkError",
        re.compile(
            r"timed? ?out|connection (?:refused|reset|closed|lost)|could not connect|unable to connect|"
            r"network|unreachable|mail loop|hop count|too many hops",
            re.IGNORECASE,
        ),
    ),
)
_SPAM_WORDS = re.compile(r"spam|virus|malware|phish|content|bulk", re.IGNORECASE)


def classify(status: str | None, diagnostic: str | None = None, reply_code: int | None = None) -> tuple[str, str]:
    """(bounce_type, sub_type) from an enhanced code, else a basic reply code, else diagnostic words.

    RFC 3463 §3.1: class 5 is a permanent failure, class 4 a persistent transient one; the
    class of the code always wins over the words of the diagnostic.
    """
    return _classify(status, diagnostic, reply_code, None)


def _classify(
    status: str | None, diagnostic: str | None, reply_code: int | None, default_type: str | None
) -> tuple[str, str]:
    text = diagnostic or ""
    enhanced = _ENHANCED.search(status) if status else None
    if enhanced is None or enhanced.group(1) == "2":
        enhanced = _ENHANCED.search(text) if text else None
        if enhanced is not None and enhanced.group(1) == "2":
            enhanced = None
    if enhanced is not None:
        cls, subject, detail = enhanced.groups()
        bounce_type = PERMANENT if cls == "5" else TRANSIENT
        sub_type = _SUB_TYPES.get(f"{int(subject)}.{int(detail)}") or _SUB_TYPES.get(f"{int(subject)}.x", "General")
        if sub_type == "PolicyRejected" and _SPAM_WORDS.search(text):
            sub_type = "ContentRejected"
        if sub_type == "General" or (subject == "0" and detail == "0"):
            sub_type = _keyword_sub_type(text) or sub_type
        return bounce_type, sub_type

    code = reply_code
    if code is None and text:
        match = _REPLY_CODE.search(text[:200])
        if match is not None:
            code = int(match.group(1))
    words = _keyword_sub_type(text)
    if code is not None and 400 <= code < 600:
        # RFC 5321 §4.2.1: 5yz is a permanent negative completion, 4yz a transient one.
        bounce_type = PERMANENT if code >= 500 else TRANSIENT
        if words is None and code == 552:
            words = "MailboxFull"  # RFC 5321 §4.2.3: "exceeded storage allocation"
        return bounce_type, words or "General"
    if words == "MailboxFull":
        return TRANSIENT, words  # a full mailbox usually empties: retry
    if words is not None:
        return default_type or PERMANENT, words
    return default_type or PERMANENT, "General"


def _keyword_sub_type(text: str) -> str | None:
    if not text:
        return None
    for sub_type, pattern in _KEYWORDS:
        if pattern.search(text):
            return sub_type
    return None


# --------------------------------------------------------------------------- parsing

_DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_HEADER_TYPES = frozenset({"message/rfc822", "text/rfc822-headers", "message/global", "message/global-headers"})
_DSN_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*)$")
# Where a DSN body starts when a broken MIME structure hid the delivery-status part.
_DSN_START = re.compile(
    r"^(?:Reporting-MTA|Original-Envelope-Id|Arrival-Date|Received-From-MTA|Final-Recipient|Original-Recipient)"
    r"[ \t]*:",
    re.IGNORECASE | re.MULTILINE,
)
_RECIPIENT_FIELD = re.compile(r"^(?:Final|Original)-Recipient[ \t]*:", re.IGNORECASE | re.MULTILINE)
_BOUNDARY_LINE = re.compile(r"^--\S", re.MULTILINE)
_MESSAGE_ID_LINE = re.compile(r"^Message-ID[ \t]*:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_BOUNCE_SENDER = re.compile(r"mailer-daemon|mail-daemon|postmaster|mail delivery (?:system|subsystem)", re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|not (?:be )?delivered|delivery (?:status|fail|notification|report|problem|error)|"
    r"returned mail|returning message|failure notice|mail delivery|non[- ]?delivery|nondeliverable|"
    r"delivery has failed|delivery failure|failed delivery|failure delivery|mail (?:system )?error|"
    r"delayed mail|message delayed|delivery delayed|error sending|could not send|non remis|unzustellbar",
    re.IGNORECASE,
)
_ACTIONS_BOUNCED = frozenset({"failed", "delayed"})


def parse_bounce(raw: bytes) -> BounceReport | None:
    """The bounce report in ``raw``, or None when it is not a bounce (or reports only deliveries); never raises."""
    try:
        if not isinstance(raw, bytes):
            raw = bytes(raw)
        return _parse_bounce(raw[:MAX_BOUNCE_SIZE])
    except Exception:  # hostile input must never break the receiving pipeline
        return None


def _parse_bounce(raw: bytes) -> BounceReport | None:
    parsed = mime.parse(raw)
    headers = {name.lower(): value for name, value in parsed.headers.items()}
    looks_like_bounce = _looks_like_bounce(parsed, headers)

    per_message: dict[str, str] = {}
    groups: list[dict[str, str]] = []
    for attachment in parsed.attachments:
        if attachment.content_type in _DSN_TYPES:
            _read_delivery_status(attachment.content.decode("utf-8", "replace"), per_message, groups)
    if not groups and looks_like_bounce:
        # A broken MIME structure (no boundary, a missing close) can hide the
        # delivery-status part; its fields are still there in the raw text.
        text = raw.decode("utf-8", "replace")
        if _RECIPIENT_FIELD.search(text):
            start = _DSN_START.search(text)
            if start is not None:
                line_start = start.start()
                end = _BOUNDARY_LINE.search(text, line_start)
                _read_delivery_status(text[line_start : end.start() if end else len(text)], per_message, groups)

    original_message_id = _original_message_id(parsed)
    envelope_id = per_message.get("original-envelope-id", "").strip() or None

    if groups:
        recipients = _dsn_recipients(groups)
        if recipients:
            bounce_type, sub_type = _report_class(recipients)
            return BounceReport(recipients, original_message_id, envelope_id, "dsn", bounce_type, sub_type)
        if all(_group_action(g) in ("delivered", "relayed", "expanded") for g in groups):
            return None  # RFC 3464 §2.3.3: only successes reported: not a bounce

    if not looks_like_bounce:
        return None
    found = _heuristic_recipients(raw, parsed, headers)
    if not found:
        return None
    bounce_type, sub_type = _report_class(found)
    return BounceReport(found, original_message_id, envelope_id, "heuristic", bounce_type, sub_type)


def _looks_like_bounce(parsed: mime.ParsedMessage, headers: dict[str, str]) -> bool:
    if parsed.auto_submitted == "bounce" or "x-failed-recipients" in headers:
        return True
    if _BOUNCE_SENDER.search(headers.get("from", "")[:300]):
        return True
    return bool(parsed.subject and _BOUNCE_SUBJECT.search(parsed.subject[:300]))


def _read_delivery_status(text: str, per_message: dict[str, str], groups: list[dict[str, str]]) -> None:
    """RFC 3464 §2.1: a per-message field group, then per-recipient groups, separated by blank lines.

    Field names are case-insensitive; continuation lines start with white space. A
    recipient field seen twice without a blank line also starts a new group, as some
    MTAs omit the separator.
    """
    group: dict[str, str] = {}
    last: str | None = None

    def flush() -> None:
        nonlocal group
        if "final-recipient" in group or "original-recipient" in group:
            groups.append(group)
        else:
            for name, value in group.items():
                per_message.setdefault(name, value)
        group = {}

    for line in text[: 256 * 1024].splitlines()[:5000]:
        if not line.strip():
            if group:
                flush()
            last = None
            continue
        if line[0] in " \t" and last is not None:
            group[last] = f"{group[last]} {line.strip()}"
            continue
        match = _DSN_FIELD.match(line)
        if match is None:
            last = None
            continue
        name = match.group(1).lower()
        if name in ("final-recipient", "original-recipient") and name in group:
            flush()
        if name in group:
            last = None  # a repeated field: keep the first
            continue
        group[name] = match.group(2).strip()
        last = name
    if group:
        flush()


def _group_action(group: dict[str, str]) -> str | None:
    action = group.get("action", "").strip().lower()
    return action.split()[0].rstrip(";") if action else None


def _dsn_recipients(groups: list[dict[str, str]]) -> list[BouncedRecipient]:
    found: list[BouncedRecipient] = []
    seen: set[str] = set()
    for group in groups:
        address = _typed_address(group.get("final-recipient") or "") or _typed_address(
            group.get("original-recipient") or ""
        )
        if address is None:
            continue
        status_match = _ENHANCED.search(group.get("status", ""))
        status = ".".join(str(int(part)) for part in status_match.groups()) if status_match else None
        diagnostic = " ".join(group.get("diagnostic-code", "").split()) or None
        if status is None and diagnostic:
            from_text = _ENHANCED.search(diagnostic)
            status = from_text.group(0) if from_text else None
        action = _group_action(group)
        if action is None:
            # Some MTAs leave Action out: take it from the Status class (RFC 3464 §2.3.3).
            action = {"5": "failed", "4": "delayed", "2": "delivered"}.get(status[0] if status else "", "failed")
        if action not in _ACTIONS_BOUNCED or address in seen:
            continue
        seen.add(address)
        remote_mta = _strip_type(group.get("remote-mta", "")) or None
        found.append(BouncedRecipient(address, status, action, diagnostic, remote_mta))
    return found


def _strip_type(value: str) -> str:
    """Drop the RFC 3464 address-type or mta-name-type ("rfc822;", "dns;") and any comment."""
    value = value.strip()
    kind, sep, rest = value.partition(";")
    if sep and " " not in kind.strip() and "@" not in kind:
        value = rest.strip()
    value = re.sub(r"\s*\([^()]*\)\s*$", "", value)
    return value.strip()


def _typed_address(value: str) -> str | None:
    return _normalise_address(_strip_type(value))


def _normalise_address(value: str) -> str | None:
    value = value.strip().strip("<>\"' \t,;:.").strip()
    if value.lower().startswith("mailto:"):
        value = value[7:]
    if not value or len(value) > 320 or any(c.isspace() for c in value):
        return None
    local, at, domain = value.rpartition("@")
    if at and local and domain:
        return f"{local}@{domain.lower()}"
    return value if not at else None


def _original_message_id(parsed: mime.ParsedMessage) -> str | None:
    for attachment in parsed.attachments:
        if attachment.content_type in _HEADER_TYPES:
            block = attachment.content[: 64 * 1024].decode("utf-8", "replace")
            header_end = re.search(r"\r?\n\r?\n", block)
            match = _MESSAGE_ID_LINE.search(block, 0, header_end.start() if header_end else len(block))
            if match is not None:
                found = normalise_msgid(match.group(1))
                if found is not None:
                    return found
    if parsed.in_reply_to:
        return parsed.in_reply_to
    if parsed.references:
        return parsed.references[-1]
    if parsed.text:
        # Non-MIME bounces quote the original headers inline after the explanation.
        match = _MESSAGE_ID_LINE.search(parsed.text[: 256 * 1024])
        if match is not None:
            return normalise_msgid(match.group(1))
    return None


def _report_class(recipients: list[BouncedRecipient]) -> tuple[str, str]:
    """The report's class: the first permanent recipient's, else the first recipient's."""
    classes = []
    for recipient in recipients:
        default = TRANSIENT if recipient.action == "delayed" else PERMANENT
        classes.append(_classify(recipient.status, recipient.diagnostic, None, default))
    for bounce_type, sub_type in classes:
        if bounce_type == PERMANENT:
            return bounce_type, sub_type
    return classes[0]


# --------------------------------------------------------------------------- heuristics

_ADDRESS = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
)
# Where the quoted original starts in a plain-text bounce: nothing below names a failed recipient.
_ORIGINAL_STARTS = re.compile(
    r"^[ \t>|-]*(?:-+ ?)?(?:this is a copy of|a copy of the original|-+ ?original message|"
    r"(?:the )?original message(?::| follows| headers? follows?| below| is attached| text)|"
    r"message headers follow|below this line is a copy|below is a copy|undelivered message headers|"
    r"headers of the original|returned message|unsent message below|content-type: (?:message/rfc822|"
    r"text/rfc822-headers)|received:|return-path:|the header of the original)",
    re.IGNORECASE | re.MULTILINE,
)
_ERROR_WORDS = re.compile(
    r"(?<![\d.])[45]\d\d(?![\d.])|[45]\.\d{1,3}\.\d{1,3}|unknown|not exist|failed|failure|rejected|refused|"
    r"denied|invalid|full|quota|unavailable|error|unable|could not|couldn't|blocked|timed? ?out|expired|"
    r"not found|no such|delayed|deferred|undeliver",
    re.IGNORECASE,
)
_DAEMON_LOCAL = re.compile(r"^(?:mailer-daemon|mail-daemon|mailerdaemon)$", re.IGNORECASE)
# Role addresses are rarely the failed recipient, but can be ("postmaster@<dead domain>").
_ROLE_LOCAL = re.compile(r"^(?:postmaster|no-?reply|abuse|hostmaster)$", re.IGNORECASE)
_MAX_HEURISTIC_RECIPIENTS = 50
_MSGID_VALUE = re.compile(
    r"^(?:Message-ID|In-Reply-To|References)[ \t]*:[ \t]*<([^<>\s]+)>", re.IGNORECASE | re.MULTILINE
)


def _heuristic_recipients(raw: bytes, parsed: mime.ParsedMessage, headers: dict[str, str]) -> list[BouncedRecipient]:
    text = parsed.text or ""
    cut = _ORIGINAL_STARTS.search(text)
    explanation = text[: cut.start()] if cut else text
    explanation = explanation[: 64 * 1024]

    temporary: set[str] = set()
    addresses: list[str] = []
    failed_header = headers.get("x-failed-recipients")  # Exim names them for us
    if failed_header:
        addresses = _unique(_ADDRESS.findall(failed_header))
    if not addresses:
        temporary, permanent = _flufl_failures(raw)
        addresses = _unique(sorted(temporary | permanent))
    if not addresses:
        addresses = _text_recipients(explanation, parsed, headers)
    if not addresses:
        addresses = _original_recipient(parsed, text[cut.start() :] if cut else "", headers)

    # Detectors sometimes take a quoted Message-ID for an address.
    message_ids = {m.lower() for m in _MSGID_VALUE.findall(raw[: 256 * 1024].decode("utf-8", "replace"))}
    found: list[BouncedRecipient] = []
    for address in addresses[:_MAX_HEURISTIC_RECIPIENTS]:
        normalised = _normalise_address(address)
        if normalised is None or address.lower() in message_ids:
            continue
        diagnostic, status = _near(explanation, address)
        if status is None and diagnostic is None:
            diagnostic, status = _first_code(explanation)
        delayed = address in temporary or (status is not None and status.startswith("4"))
        found.append(BouncedRecipient(normalised, status, "delayed" if delayed else "failed", diagnostic, None))
    return found


def _unique(items: list[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        key = item.lower()
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _flufl_failures(raw: bytes) -> tuple[set[str], set[str]]:
    """flufl.bounce's detectors for the non-standard formats (Exim, qmail, Yahoo, ...)."""
    # Imported on first use: ~5 MB every serve process would carry for the rare non-RFC 3464 bounce.
    import flufl.bounce

    try:
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        temporary, permanent = flufl.bounce.all_failures(message)
    except Exception:  # its detectors raise on malformed input; that only means "no answer"
        return set(), set()
    return (
        {a.decode("utf-8", "replace") for a in temporary if _VALID_FLUFL.match(a)},
        {a.decode("utf-8", "replace") for a in permanent if _VALID_FLUFL.match(a)},
    )


_VALID_FLUFL = re.compile(rb"[^@\s]+@[^@\s]+\Z")
_TO_LINE = re.compile(r"^To[ \t]*:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def _original_recipient(parsed: mime.ParsedMessage, quoted: str, headers: dict[str, str]) -> list[str]:
    """Last resort: the one To address of the returned original, when the bounce names nobody.

    Some MTAs send a report with no recipient at all ("Delivery report unavailable");
    a returned message with a single To recipient still says who it failed for.
    """
    sources = [
        a.content[: 64 * 1024].decode("utf-8", "replace") for a in parsed.attachments if a.content_type in _HEADER_TYPES
    ]
    sources.append(quoted[: 64 * 1024])
    bounce_to = {a.lower() for a in _ADDRESS.findall(headers.get("to", ""))}
    for source in sources:
        header_end = re.search(r"\r?\n\r?\n", source)
        match = _TO_LINE.search(source, 0, header_end.start() if header_end else len(source))
        if match is None:
            continue
        found = [a for a in _unique(_ADDRESS.findall(match.group(1))) if a.lower() not in bounce_to]
        if len(found) == 1:
            return found
    return []


def _text_recipients(explanation: str, parsed: mime.ParsedMessage, headers: dict[str, str]) -> list[str]:
    """Addresses in the explanation that sit on or just above an error line ("<addr>: 550 ...")."""
    excluded = {parsed.from_address.lower()}
    for name in ("to", "cc", "reply-to", "return-path", "delivered-to", "sender"):
        value = headers.get(name, "")
        excluded.update(a.lower() for a in _ADDRESS.findall(value))
    lines = explanation.splitlines()
    candidates: list[tuple[int, str]] = []
    for index, line in enumerate(lines[:2000]):
        if re.match(r"\s*(?:from|to|cc|sender|reply-to|message-id|date|subject)\s*:", line, re.IGNORECASE):
            continue
        for address in _ADDRESS.findall(line):
            local = address.rpartition("@")[0]
            if address.lower() in excluded or _DAEMON_LOCAL.match(local):
                continue
            near = " ".join(lines[index : index + 4])
            score = (0 if _ERROR_WORDS.search(near) else 1) + (2 if _ROLE_LOCAL.match(local) else 0)
            candidates.append((score, address))
    if not candidates:
        return []
    best = min(score for score, _ in candidates)
    return _unique([address for score, address in candidates if score == best])


def _near(explanation: str, address: str) -> tuple[str | None, str | None]:
    """The diagnostic and enhanced status on the address's line or the few lines after it."""
    index = explanation.find(address)
    if index < 0:
        index = explanation.lower().find(address.lower())
    if index < 0:
        return None, None
    line_start = explanation.rfind("\n", 0, index) + 1
    window = explanation[line_start : line_start + 600].splitlines()[:5]
    for line in window:
        if _REPLY_CODE.search(line) or _ENHANCED.search(line):
            diagnostic = " ".join(line.split())[:500]
            status = _ENHANCED.search(line)
            return diagnostic, status.group(0) if status else None
    return None, None


def _first_code(explanation: str) -> tuple[str | None, str | None]:
    for line in explanation.splitlines()[:500]:
        status = _ENHANCED.search(line)
        if status is not None or _REPLY_CODE.search(line):
            return " ".join(line.split())[:500], status.group(0) if status else None
    return None, None


# --------------------------------------------------------------------------- building

_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?([bBqQ])\?([^?\s]*)\?=")


def _check_header_value(name: str, value: str) -> str:
    """CVE-2024-6923: refuse CR or LF in a header value, raw or inside an RFC 2047 encoded-word."""
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError(f"{name} contains CR, LF or NUL")
    for encoding, payload in _ENCODED_WORD.findall(value):
        try:
            if encoding in "bB":
                data = base64.b64decode(payload + "=" * (-len(payload) % 4))
            else:
                data = quopri.decodestring(payload.replace("_", " ").encode("ascii", "replace"), header=True)
        except (binascii.Error, ValueError):
            continue
        if b"\r" in data or b"\n" in data:
            raise ValueError(f"{name} contains an encoded CR or LF")
    return value


def _crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n|\r", b"\r\n", data)


def build_dsn(
    *,
    reporting_mta: str,
    original_message_id: str | None,
    original_headers: bytes,
    recipients: list[BouncedRecipient],
    arrival_date: datetime,
    from_address: str,
    to_address: str,
    message_id: str,
    human_text: str,
) -> bytes:
    """An RFC 3464 multipart/report (RFC 6522) for ``recipients``, with CRLF line endings.

    Raises ValueError when a header or DSN field value holds CR or LF, or there is no recipient.
    """
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    reporting_mta = _check_header_value("Reporting-MTA", reporting_mta).strip()
    from_address = _check_header_value("From", from_address).strip()
    to_address = _check_header_value("To", to_address).strip()
    message_id = _check_header_value("Message-ID", message_id).strip()
    if original_message_id is not None:
        original_message_id = _check_header_value("In-Reply-To", original_message_id).strip() or None
    if arrival_date.tzinfo is None:
        arrival_date = arrival_date.replace(tzinfo=UTC)

    global_dsn = False
    recipient_groups: list[list[str]] = []
    for recipient in recipients:
        address = _check_header_value("Final-Recipient", recipient.address).strip()
        if not address:
            raise ValueError("recipient address is empty")
        status = _check_header_value("Status", recipient.status or "").strip()
        action = _check_header_value("Action", recipient.action or "").strip().lower()
        if not action:
            action = "delayed" if status.startswith("4") else "failed"
        if not status:
            status = "4.0.0" if action == "delayed" else "5.0.0"
        if not _ENHANCED.fullmatch(status):
            raise ValueError(f"Status {status!r} is not an RFC 3463 code")
        # RFC 6533 §3: a non-ASCII address needs the utf-8 address type and global-delivery-status.
        address_type = "rfc822"
        if not address.isascii():
            address_type, global_dsn = "utf-8", True
        fields = [f"Final-Recipient: {address_type}; {address}", f"Action: {action}", f"Status: {status}"]
        if recipient.remote_mta:
            remote = _check_header_value("Remote-MTA", recipient.remote_mta).strip()
            fields.append(f"Remote-MTA: {remote if ';' in remote else 'dns; ' + remote}")
        if recipient.diagnostic:
            diagnostic = _check_header_value("Diagnostic-Code", recipient.diagnostic).strip()
            typed = re.match(r"[A-Za-z][A-Za-z0-9-]*;", diagnostic)
            fields.append(f"Diagnostic-Code: {diagnostic if typed else 'smtp; ' + diagnostic}")
            if not diagnostic.isascii():
                global_dsn = True
        recipient_groups.append(fields)

    delayed_only = all(fields[1] == "Action: delayed" for fields in recipient_groups)
    subject = "Delivery Status Notification (Delay)" if delayed_only else "Undelivered Mail Returned to Sender"

    per_message = [f"Reporting-MTA: dns; {reporting_mta}", f"Arrival-Date: {format_datetime(arrival_date)}"]
    status_body = "\r\n\r\n".join("\r\n".join(group) for group in [per_message, *recipient_groups]) + "\r\n"
    status_type = "message/global-delivery-status" if global_dsn else "message/delivery-status"

    text_bytes = _crlf(human_text.encode("utf-8"))
    if text_bytes.isascii() and all(len(line) <= 998 for line in text_bytes.split(b"\r\n")):
        text_cte, text_body = "7bit", text_bytes
    else:
        text_cte, text_body = "quoted-printable", _crlf(quopri.encodestring(text_bytes.replace(b"\r\n", b"\n")))

    # text/rfc822-headers: the header block only (RFC 6522 §4), never the body.
    header_block = _crlf(original_headers)
    blank = header_block.find(b"\r\n\r\n")
    if blank >= 0:
        header_block = header_block[: blank + 2]
    elif header_block and not header_block.endswith(b"\r\n"):
        header_block += b"\r\n"
    headers_cte = "7bit" if header_block.isascii() else "8bit"

    parts = [
        (f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {text_cte}\r\n", text_body),
        (f"Content-Type: {status_type}\r\n", status_body.encode("utf-8")),
        (f"Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: {headers_cte}\r\n", header_block),
    ]
    boundary = f"=_dsn_{secrets.token_hex(12)}"
    while any(boundary.encode() in body for _, body in parts):
        boundary = f"=_dsn_{secrets.token_hex(12)}"

    head = [
        f"From: {from_address}",
        f"To: {to_address}",
        f"Subject: {subject}",
        f"Date: {format_datetime(datetime.now(UTC))}",
        f"Message-ID: {message_id if message_id.startswith('<') else '<' + message_id + '>'}",
    ]
    if original_message_id:
        msgid = original_message_id if original_message_id.startswith("<") else f"<{original_message_id}>"
        head += [f"In-Reply-To: {msgid}", f"References: {msgid}"]
    head += [
        "Auto-Submitted: auto-replied",  # RFC 3834 §5: never answer this automatically
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    out = bytearray("\r\n".join(head).encode("utf-8") + b"\r\n\r\nThis is a MIME-encapsulated message.\r\n")
    for part_headers, body in parts:
        out += f"\r\n--{boundary}\r\n{part_headers}\r\n".encode()
        out += body
        if not body.endswith(b"\r\n"):
            out += b"\r\n"
    out += f"\r\n--{boundary}--\r\n".encode()
    return bytes(out)
