"""Outbound message composition: a validated Draft -> RFC 5322 / MIME bytes with CRLF, no I/O.

Serialisation is our own code on str and bytes. The stdlib email generator is not used:
it re-folds headers and, on CPython 3.11.7, turns an RFC 2047-encoded newline into a new
header line (CVE-2024-6923). Every caller-supplied header text is refused when it holds a
CR or LF, raw or inside an encoded-word.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import mimetypes
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache

from agentpost.proto.address import Address, AddressError, normalise_domain, parse_address

__all__ = [
    "MAX_RECIPIENTS",
    "MAX_SIZE",
    "ComposeError",
    "Composed",
    "Draft",
    "OutgoingAttachment",
    "compose",
    "new_message_id",
]

MAX_RECIPIENTS = 100  # To + Cc + Bcc of one message
MAX_SIZE = 30 * 1024 * 1024  # octets of the composed message
MAX_SUBJECT = 998  # characters, before encoding
MAX_CUSTOM_HEADERS = 100
MAX_HEADER_VALUE = 8192  # characters of one caller-supplied header value
MAX_HEADER_NAME = 76
MAX_FILENAME = 255
MAX_MSGID = 250
MAX_REFERENCES = 500
MAX_URI = 900
# RFC 5322 §2.1.1: lines SHOULD be at most 78 characters and MUST be at most 998 octets.
FOLD_AT = 78
MAX_LINE = 998

# Fields the composer owns: a caller setting one would forge routing, identity or structure.
STRUCTURAL_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "dkim-signature",
        "return-path",
        "received",
        "arc-seal",
        "arc-message-signature",
        "arc-authentication-results",
        "authentication-results",
    }
)


class ComposeError(ValueError):
    """A draft that cannot be sent as given; .field names the offending input ("to[1]", "headers.X-Foo")."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class OutgoingAttachment:
    content: bytes
    filename: str | None = None
    content_type: str | None = None  # guessed from filename when None, else application/octet-stream
    disposition: str = "attachment"  # "attachment" | "inline"
    content_id: str | None = None  # with or without angle brackets


@dataclass(frozen=True, slots=True)
class Draft:
    header_from: str  # "Name <addr>" or addr
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    reply_to: list[str] = field(default_factory=list)
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    attachments: list[OutgoingAttachment] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # caller-supplied extra headers
    in_reply_to: str | None = None  # "<...>"
    references: Sequence[str] = ()  # msg-ids, oldest first
    list_unsubscribe_mailto: str | None = None  # "mailto:unsubscribe+TOKEN@agents.example.com"
    list_unsubscribe_url: str | None = None  # https one-click URL (RFC 8058)


@dataclass(frozen=True, slots=True)
class Composed:
    raw: bytes  # CRLF line ends, ready to sign and send; no Bcc field
    message_id: str  # "<...>"
    envelope_rcpt: list[str]  # addr-specs of to + cc + bcc, de-duplicated, in order
    smtputf8: bool = False  # RFC 6531/6532: an address has a non-ASCII local part


# --------------------------------------------------------------------------- validation

_CR_LF = re.compile(r"[\r\n]")
# C0 controls except TAB, DEL, and the Unicode line breaks that str.splitlines() honours.
_BAD_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
# Wider than RFC 2047 §2 (whitespace and "?"-free payload): decoders differ, so anything a
# lenient decoder might take for an encoded-word is checked.
_ENCODED_WORD = re.compile(r"=\?([^?]*)\?([bBqQ])\?(.*?)\?=", re.DOTALL)
# RFC 5322 §2.2 field-name: printable US-ASCII except ":".
_FIELD_NAME = re.compile(r"[!-9;-~]+")
# RFC 5322 §3.6.4 msg-id, kept to printable ASCII without "<", ">" or whitespace.
_MSGID = re.compile(r"<[!-;=?-~]+>")
_MSGID_STRICT = re.compile(r"<[!-;=?-~]+@[!-;=?-~]+>")
_CONTENT_ID = re.compile(r"[!-;=?-~]+")
# RFC 2045 §5.1 type "/" subtype, tokens only.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")
_MAILTO = re.compile(r"mailto:[!#-+\--;=?-~]+", re.IGNORECASE)
_HTTP_URL = re.compile(r"https?://[!#-+\--;=?-~]+", re.IGNORECASE)
_SEED = re.compile(r"[A-Za-z0-9]{1,40}")


def _check_text(value: str, where: str, what: str = "value") -> None:
    """Refuse CR/LF (raw or RFC 2047-encoded) and other control characters: CVE-2024-6923."""
    if _CR_LF.search(value):
        raise ComposeError(where, f"{what} contains CR or LF")
    if _BAD_CHARS.search(value):
        raise ComposeError(where, f"{what} contains a control character or line separator")
    if "=?" in value:
        for match in _ENCODED_WORD.finditer(value):
            if _encoded_word_breaks_line(match.group(1), match.group(2), match.group(3)):
                raise ComposeError(where, f"{what} holds an RFC 2047 encoded-word with CR, LF or a control character")


def _encoded_word_breaks_line(charset: str, encoding: str, payload: str) -> bool:
    data = payload.encode("ascii", "replace")
    try:
        if encoding in "bB":
            clean = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
            if len(clean) % 4 == 1:
                clean = clean[:-1]  # a lone trailing sextet carries no whole byte
            decoded = binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))
        else:
            decoded = binascii.a2b_qp(data, header=True)
    except (binascii.Error, ValueError):
        return False  # undecodable: every decoder shows it as the literal text
    if b"\r" in decoded or b"\n" in decoded:
        return True
    name = charset.split("*", 1)[0].strip() or "utf-8"
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        codec = "latin-1"
    text = decoded.decode(codec, "replace")
    return _BAD_CHARS.search(text) is not None


def _check_address(value: str, where: str) -> Address:
    if not isinstance(value, str):
        raise ComposeError(where, "address must be a string")
    try:
        return _valid_address(value)
    except ComposeError as exc:
        raise ComposeError(where, exc.message) from exc
    except AddressError as exc:
        raise ComposeError(where, str(exc)) from exc


@lru_cache(maxsize=4096)
def _valid_address(value: str) -> Address:
    # Senders and recipients repeat from message to message; Address is immutable.
    _check_text(value, "address", "address")
    return parse_address(value)


def _check_msgid(value: str, where: str, strict: bool = False) -> str:
    if not isinstance(value, str):
        raise ComposeError(where, "msg-id must be a string")
    _check_text(value, where, "msg-id")
    text = value.strip()
    if not text.startswith("<"):
        text = f"<{text}>"
    pattern = _MSGID_STRICT if strict else _MSGID
    if len(text) > MAX_MSGID or not pattern.fullmatch(text):
        raise ComposeError(where, f"not a msg-id: {value[:80]!r}")
    return text


def _safe_name(name: str) -> str:
    return name.encode("unicode_escape").decode("ascii")[:100]


# --------------------------------------------------------------------------- header text


def _encoded_words(text: str, limit: int = 39) -> list[str]:
    """RFC 2047 §4.1 B-encoded words of UTF-8 text; each at most 64 characters, whole characters only."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return [f"=?utf-8?b?{base64.b64encode(data).decode('ascii')}?="]
    words: list[str] = []
    chunk = bytearray()
    for ch in text:
        encoded = ch.encode("utf-8")
        if len(chunk) + len(encoded) > limit:
            words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode('ascii')}?=")
            chunk = bytearray()
        chunk += encoded
    if chunk:
        words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode('ascii')}?=")
    return words


def _fold(name: str, value: str, where: str) -> str:
    """One header field, folded at spaces to FOLD_AT characters where possible, CRLF-terminated.

    RFC 5322 §2.2.3: folding inserts CRLF before existing whitespace, so unfolding restores
    the value exactly. Never folds before an empty word: no line is whitespace only.
    """
    line = f"{name}: {value}"
    if len(line) <= FOLD_AT:
        return line + "\r\n"
    lines: list[str] = []
    current = f"{name}:"
    has_word = False
    for word in value.split(" "):
        if has_word and word and len(current) + 1 + len(word) > FOLD_AT:
            lines.append(current)
            current = " " + word
        else:
            current = f"{current} {word}"
        has_word = has_word or bool(word)
    lines.append(current)
    for text in lines:
        if len(text) > MAX_LINE or (not text.isascii() and len(text.encode("utf-8")) > MAX_LINE):
            raise ComposeError(where, f"a header line would be longer than {MAX_LINE} octets")
    return "\r\n".join(lines) + "\r\n"


def _unstructured(value: str) -> str:
    """Header text as sent: as is when ASCII with foldable words, else RFC 2047 encoded-words."""
    if value.isascii() and max(map(len, value.split(" "))) <= MAX_LINE - 100:
        return value
    return " ".join(_encoded_words(value))


def _mailbox(address: Address) -> str:
    name = address.display_name
    if not name:
        return address.addr_spec
    if name.isascii():
        return address.display
    return f"{' '.join(_encoded_words(name))} <{address.addr_spec}>"


# --------------------------------------------------------------------------- MIME parts

_Part = tuple[str, bytes]  # (header lines, each ending CRLF; body without the final CRLF)


class _Boundaries:
    """Multipart boundaries: "=_" never occurs in quoted-printable or base64 output."""

    __slots__ = ("stem", "count")

    def __init__(self, seed: str | None) -> None:
        self.stem = seed if seed is not None else secrets.token_hex(12)
        self.count = 0

    def multipart(self, subtype: str, parts: list[_Part]) -> _Part:
        while True:
            self.count += 1
            boundary = f"=_{self.stem}_{self.count}"
            delimiter = b"--" + boundary.encode("ascii")
            # RFC 2046 §5.1.1: the boundary must not appear inside any enclosed part.
            if not any(delimiter in body or delimiter.decode("ascii") in head for head, body in parts):
                break
        out = bytearray()
        for head, body in parts:
            out += delimiter + b"\r\n" + head.encode("ascii") + b"\r\n" + body + b"\r\n"
        out += delimiter + b"--"
        return f'Content-Type: multipart/{subtype};\r\n boundary="{boundary}"\r\n', bytes(out)


def _text_part(subtype: str, text: str) -> _Part:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.isascii() and "\x00" not in text and max(map(len, text.split("\n"))) <= MAX_LINE:
        cte = "7bit"
        body = text.replace("\n", "\r\n").encode("ascii")
    else:
        # RFC 2045 §6.7: quoted-printable lines are at most 76 characters.
        cte = "quoted-printable"
        body = binascii.b2a_qp(text.encode("utf-8"), quotetabs=False, istext=True).replace(b"\n", b"\r\n")
    return f"Content-Type: text/{subtype}; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n", body


_ATTR_CHAR = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~")


def _param(name: str, value: str) -> list[str]:
    """One MIME parameter: quoted when plain ASCII and short, else RFC 2231 (charset, continuations)."""
    if value.isascii() and '"' not in value and "\\" not in value and len(value) <= 60:
        return [f'{name}="{value}"']
    encoded = "".join(chr(b) if b in _ATTR_CHAR else f"%{b:02X}" for b in value.encode("utf-8"))
    if len(encoded) <= 60:
        return [f"{name}*=utf-8''{encoded}"]
    pieces: list[str] = []
    start = 0
    while start < len(encoded):
        end = min(start + 60, len(encoded))
        # Do not split a %XX escape between two sections (RFC 2231 §4.1).
        if "%" in encoded[end - 2 : end]:
            end = encoded.rindex("%", end - 2, end)
        pieces.append(encoded[start:end])
        start = end
    return [
        f"{name}*{index}*=utf-8''{piece}" if index == 0 else f"{name}*{index}*={piece}"
        for index, piece in enumerate(pieces)
    ]


def _params_field(name: str, value: str, params: list[str]) -> str:
    line = "; ".join([value, *params])
    if len(name) + 2 + len(line) <= FOLD_AT:
        return f"{name}: {line}\r\n"
    return f"{name}: " + ";\r\n ".join([value, *params]) + "\r\n"


_COMPRESSION_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz"}


def _guess_type(filename: str | None) -> str:
    if not filename:
        return "application/octet-stream"
    guessed, encoding = mimetypes.guess_type(filename, strict=False)
    if encoding is not None:
        return _COMPRESSION_TYPES.get(encoding, "application/octet-stream")
    return guessed or "application/octet-stream"


def _is_7bit_message(content: bytes) -> bool:
    if not content.isascii() or b"\x00" in content:
        return False
    lines = content.count(b"\n")
    if content.count(b"\r\n") != lines or content.count(b"\r") != lines:
        return False
    return max(map(len, content.split(b"\r\n"))) <= MAX_LINE


def _attachment_part(attachment: OutgoingAttachment, where: str) -> tuple[_Part, str | None]:
    if not isinstance(attachment, OutgoingAttachment):
        raise ComposeError(where, "not an OutgoingAttachment")
    content = attachment.content
    if not isinstance(content, bytes):
        if not isinstance(content, (bytearray, memoryview)):
            raise ComposeError(f"{where}.content", "content must be bytes")
        content = bytes(content)
    filename = attachment.filename or None
    if filename is not None:
        if not isinstance(filename, str):
            raise ComposeError(f"{where}.filename", "filename must be a string")
        _check_text(filename, f"{where}.filename", "filename")
        if len(filename) > MAX_FILENAME:
            raise ComposeError(f"{where}.filename", f"filename longer than {MAX_FILENAME} characters")
    disposition = attachment.disposition
    if disposition not in ("attachment", "inline"):
        raise ComposeError(f"{where}.disposition", "disposition must be 'attachment' or 'inline'")
    if attachment.content_type is None:
        content_type = _guess_type(filename)
    else:
        content_type = attachment.content_type
        if not isinstance(content_type, str):
            raise ComposeError(f"{where}.content_type", "content_type must be a string")
        _check_text(content_type, f"{where}.content_type", "content type")
        content_type = content_type.strip().lower()
        if not _MEDIA_TYPE.fullmatch(content_type):
            raise ComposeError(f"{where}.content_type", f"not a media type: {content_type[:80]!r}")
    content_id: str | None = None
    if attachment.content_id:
        if not isinstance(attachment.content_id, str):
            raise ComposeError(f"{where}.content_id", "content_id must be a string")
        _check_text(attachment.content_id, f"{where}.content_id", "content id")
        content_id = attachment.content_id.strip()
        if content_id.startswith("<") and content_id.endswith(">"):
            content_id = content_id[1:-1]
        if len(content_id) > MAX_MSGID or not _CONTENT_ID.fullmatch(content_id):
            raise ComposeError(f"{where}.content_id", f"not a content id: {content_id[:80]!r}")

    # RFC 2046 §5.1 and §5.2.1: multipart and message entities allow only 7bit, 8bit or binary.
    if content_type.startswith("multipart/"):
        raise ComposeError(f"{where}.content_type", "a multipart type cannot be an attachment")
    if content_type.startswith("message/"):
        if not _is_7bit_message(content):
            raise ComposeError(
                f"{where}.content_type", "a message/* attachment must be 7-bit with CRLF lines; use application/*"
            )
        cte = "7bit"
        body = content
    else:
        cte = "base64"
        body = base64.encodebytes(content).replace(b"\n", b"\r\n")[:-2]  # RFC 2045 §6.8: 76-char lines

    name_params = _param("name", filename) if filename else []
    file_params = _param("filename", filename) if filename else []
    head = _params_field("Content-Type", content_type, name_params)
    head += _params_field("Content-Disposition", disposition, file_params)
    head += f"Content-Transfer-Encoding: {cte}\r\n"
    if content_id is not None:
        head += f"Content-ID: <{content_id}>\r\n"
    return (head, body), content_id


# --------------------------------------------------------------------------- composition


def new_message_id(domain: str) -> str:
    """A fresh "<time-random@domain>" msg-id (RFC 5322 §3.6.4): milliseconds plus 96 random bits."""
    try:
        ascii_domain = normalise_domain(domain)[0]
    except AddressError as exc:
        raise ComposeError("domain", str(exc)) from exc
    return f"<{time.time_ns() // 1_000_000:x}.{secrets.token_urlsafe(12)}@{ascii_domain}>"


def _addresses(values: Sequence[str], name: str) -> list[Address]:
    if isinstance(values, str):
        raise ComposeError(name, "must be a list of addresses")
    return [_check_address(value, f"{name}[{index}]") for index, value in enumerate(values)]


def _address_field(name: str, addresses: list[Address], where: str) -> str:
    return _fold(name, ", ".join(_mailbox(a) for a in addresses), where)


def _custom_headers(headers: dict[str, str], generated: set[str]) -> str:
    if len(headers) > MAX_CUSTOM_HEADERS:
        raise ComposeError("headers", f"more than {MAX_CUSTOM_HEADERS} headers")
    out: list[str] = []
    for name, value in headers.items():
        if not isinstance(name, str) or not name:
            raise ComposeError("headers", "header name must be a non-empty string")
        where = f"headers.{_safe_name(name)}"
        if _CR_LF.search(name):
            raise ComposeError(where, "header name contains CR or LF")
        if len(name) > MAX_HEADER_NAME or not _FIELD_NAME.fullmatch(name):
            raise ComposeError(where, "not an RFC 5322 field name (printable ASCII except ':')")
        lower = name.lower()
        if lower in STRUCTURAL_HEADERS or lower.startswith("content-"):
            raise ComposeError(where, f"{name} is set by the composer and cannot be supplied")
        if lower in generated:
            raise ComposeError(where, f"{name} is already set from the draft")
        if not isinstance(value, str):
            raise ComposeError(where, "header value must be a string")
        if len(value) > MAX_HEADER_VALUE:
            raise ComposeError(where, f"value longer than {MAX_HEADER_VALUE} characters")
        _check_text(value, where)
        value = value.strip(" \t")
        text = value if value.isascii() else " ".join(_encoded_words(value))
        out.append(_fold(name, text, where))
    return "".join(out)


def compose(
    draft: Draft,
    *,
    domain: str,
    now: datetime | None = None,
    message_id: str | None = None,
    boundary_seed: str | None = None,
    max_size: int = MAX_SIZE,
) -> Composed:
    """Validate a draft and serialise it; raise ComposeError naming the first bad field."""
    # ---- addresses
    # Counted before parsing: a huge list must not cost a parse per entry.
    if len(draft.to) + len(draft.cc) + len(draft.bcc) > MAX_RECIPIENTS:
        raise ComposeError("recipients", f"more than {MAX_RECIPIENTS} recipients")
    sender = _check_address(draft.header_from, "header_from")
    to = _addresses(draft.to, "to")
    cc = _addresses(draft.cc, "cc")
    bcc = _addresses(draft.bcc, "bcc")
    reply_to = _addresses(draft.reply_to, "reply_to")
    if not (to or cc or bcc):
        raise ComposeError("to", "at least one recipient is required")
    if len(reply_to) > MAX_RECIPIENTS:
        raise ComposeError("reply_to", f"more than {MAX_RECIPIENTS} addresses")
    envelope: list[str] = []
    seen: set[str] = set()
    for address in (*to, *cc, *bcc):
        if address.key not in seen:
            seen.add(address.key)
            envelope.append(address.addr_spec)
    smtputf8 = not all(a.local_part.isascii() for a in (sender, *to, *cc, *bcc, *reply_to))

    # ---- identifiers and dates
    if message_id is None:
        message_id = new_message_id(domain)
    else:
        message_id = _check_msgid(message_id, "message_id", strict=True)
    in_reply_to = _check_msgid(draft.in_reply_to, "in_reply_to") if draft.in_reply_to else None
    if isinstance(draft.references, str):
        raise ComposeError("references", "must be a list of msg-ids")
    if len(draft.references) > MAX_REFERENCES:
        raise ComposeError("references", f"more than {MAX_REFERENCES} msg-ids")
    references = [_check_msgid(ref, f"references[{i}]") for i, ref in enumerate(draft.references)]
    date = _date(now if now is not None else datetime.now(UTC))

    # ---- subject
    subject = draft.subject
    if subject is not None:
        if not isinstance(subject, str):
            raise ComposeError("subject", "subject must be a string")
        _check_text(subject, "subject", "subject")
        if len(subject) > MAX_SUBJECT:
            raise ComposeError("subject", f"subject longer than {MAX_SUBJECT} characters")

    # ---- List-Unsubscribe (RFC 2369, RFC 8058)
    unsubscribe: list[str] = []
    one_click = False
    if draft.list_unsubscribe_mailto:
        mailto = draft.list_unsubscribe_mailto
        _check_text(mailto, "list_unsubscribe_mailto", "URI")
        if len(mailto) > MAX_URI or not _MAILTO.fullmatch(mailto):
            raise ComposeError("list_unsubscribe_mailto", "must be a mailto: URI without spaces, '<', '>' or ','")
        unsubscribe.append(f"<{mailto}>")
    if draft.list_unsubscribe_url:
        url = draft.list_unsubscribe_url
        _check_text(url, "list_unsubscribe_url", "URI")
        if len(url) > MAX_URI or not _HTTP_URL.fullmatch(url):
            raise ComposeError("list_unsubscribe_url", "must be an http(s) URI without spaces, '<', '>' or ','")
        unsubscribe.append(f"<{url}>")
        # RFC 8058 §3.1: one-click needs an HTTPS URI in List-Unsubscribe.
        one_click = url[:8].lower() == "https://"

    # ---- header block
    generated: set[str] = set()
    head = [f"Date: {date}\r\n", _address_field("From", [sender], "header_from")]
    if to:
        head.append(_address_field("To", to, "to"))
    if cc:
        head.append(_address_field("Cc", cc, "cc"))
    if reply_to:
        head.append(_address_field("Reply-To", reply_to, "reply_to"))
        generated.add("reply-to")
    if subject is not None:
        # Surrounding whitespace is not part of the subject (RFC 5322 §3.2.2 FWS) and readers drop it.
        head.append(_fold("Subject", _unstructured(subject.strip(" \t")), "subject"))
        generated.add("subject")
    head.append(f"Message-ID: {message_id}\r\n")
    if in_reply_to is not None:
        head.append(f"In-Reply-To: {in_reply_to}\r\n")
        generated.add("in-reply-to")
    if references:
        head.append(_fold("References", " ".join(references), "references"))
        generated.add("references")
    head.append("MIME-Version: 1.0\r\n")
    if unsubscribe:
        head.append(_fold("List-Unsubscribe", ", ".join(unsubscribe), "list_unsubscribe_url"))
        generated.add("list-unsubscribe")
        if one_click:
            head.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
            generated.add("list-unsubscribe-post")
    head.append(_custom_headers(draft.headers, generated))

    # ---- body
    text = draft.text or None
    html = draft.html or None
    if text is not None and not isinstance(text, str):
        raise ComposeError("text", "text must be a string")
    if html is not None and not isinstance(html, str):
        raise ComposeError("html", "html must be a string")
    estimate = len(text or "") + len(html or "")
    for attachment in draft.attachments:
        estimate += len(getattr(attachment, "content", b"")) * 4 // 3
    if estimate > max_size:
        raise ComposeError("size", f"message would be larger than {max_size} octets")

    related: list[_Part] = []
    mixed: list[_Part] = []
    for index, attachment in enumerate(draft.attachments):
        part, content_id = _attachment_part(attachment, f"attachments[{index}]")
        if html is not None and content_id is not None and attachment.disposition == "inline":
            related.append(part)  # RFC 2387: shown by the html part through cid: URLs
        else:
            mixed.append(part)

    boundaries = _Boundaries(_seed(boundary_seed))
    body: _Part | None = None
    html_part = _text_part("html", html) if html is not None else None
    if html_part is not None and related:
        html_part = boundaries.multipart("related", [html_part, *related])
    if text is not None:
        body = _text_part("plain", text)
        if html_part is not None:
            body = boundaries.multipart("alternative", [body, html_part])  # RFC 2046 §5.1.4: plainest first
    else:
        body = html_part
    if mixed:
        body = boundaries.multipart("mixed", [body, *mixed] if body is not None else mixed)
    if body is None:
        body = _text_part("plain", "")

    content_head, content = body
    raw = "".join(head).encode("utf-8") + content_head.encode("ascii") + b"\r\n" + content
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    if len(raw) > max_size:
        raise ComposeError("size", f"message is {len(raw)} octets, larger than {max_size}")
    return Composed(raw=raw, message_id=message_id, envelope_rcpt=envelope, smtputf8=smtputf8)


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _date(when: datetime) -> str:
    """RFC 5322 §3.3 date-time, "Tue, 04 Mar 2025 05:06:07 +0000"; a naive time is taken as UTC."""
    offset = when.utcoffset()
    minutes = 0 if offset is None else int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return (
        f"{_DAYS[when.weekday()]}, {when.day:02d} {_MONTHS[when.month - 1]} {when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} {sign}{hours:02d}{mins:02d}"
    )


def _seed(boundary_seed: str | None) -> str | None:
    if boundary_seed is None:
        return None
    if not _SEED.fullmatch(boundary_seed):
        raise ComposeError("boundary_seed", "must be 1-40 ASCII letters or digits")
    return boundary_seed
