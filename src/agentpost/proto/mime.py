"""Received message bytes -> ParsedMessage: headers, bodies, attachments and defects, under hard caps.

A single-pass parser over the raw bytes (RFC 5322 header blocks, RFC 2045-2047 MIME,
RFC 2231 parameters, RFC 3676 format=flowed). It does not use the stdlib email parser:
that parser costs more than this whole module on a typical message, has quadratic
corners on hostile headers, and its re-serialisation carries CVE-2024-6923. Every loop
here is bounded by MimeLimits, so hostile input costs time linear in its size.
"""

from __future__ import annotations

import binascii
import codecs
import re
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from functools import lru_cache

from agentpost.proto.address import Address, AddressError, parse_address, split_address_list
from agentpost.proto.threads import msgids_in, normalise_msgid

__all__ = [
    "MimeLimits",
    "ParsedAttachment",
    "ParsedMessage",
    "decode_header_value",
    "parse",
]


@dataclass(frozen=True, slots=True)
class MimeLimits:
    max_size: int = 25 * 1024 * 1024  # bytes of the whole message
    max_headers: int = 1000  # header fields in any one header block
    max_header_length: int = 64 * 1024  # one header field incl. folded lines
    max_depth: int = 20  # MIME nesting depth
    max_parts: int = 500
    time_budget: float = 2.0  # seconds of parsing; past it stop and record a defect


@dataclass(frozen=True, slots=True)
class ParsedAttachment:
    attachment_id: str  # "att_" + MIME part path, "1.2" -> "att_1_2"; unique in the message
    filename: str | None
    content_type: str  # lowercased "type/subtype"
    size: int  # decoded bytes
    content_id: str | None  # without angle brackets
    disposition: str  # "attachment" | "inline"
    content: bytes  # decoded payload


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    message_id: str | None
    in_reply_to: str | None
    references: list[str]
    subject: str | None
    header_from: str
    from_address: str
    to: list[str]
    cc: list[str]
    reply_to: list[str]
    date: datetime | None
    headers: dict[str, str]
    text: str | None
    html: str | None
    attachments: list[ParsedAttachment]
    defects: list[str]
    auto_submitted: str | None
    size: int


_DEFAULT_LIMITS = MimeLimits()


def parse(raw: bytes, limits: MimeLimits = _DEFAULT_LIMITS) -> ParsedMessage:
    """Parse one message; never raises, records what was wrong in ``defects``."""
    if not isinstance(raw, bytes):
        if not isinstance(raw, (bytearray, memoryview)):
            return _empty(0, [f"parser error: {type(raw).__name__} is not bytes"])
        raw = bytes(raw)
    try:
        return _parse(raw, limits)
    except Exception as exc:  # the last line of defence: a parser bug must not drop mail
        return _empty(len(raw), [f"parser error: {type(exc).__name__}"])


# --------------------------------------------------------------------------- header blocks

# RFC 5322 §2.2: field-name = 1*ftext (printable US-ASCII except ":"), and §4.5 lets
# obsolete syntax put whitespace before the colon.
_FIELD_NAME = re.compile(rb"[!-9;-~]+[ \t]*")
# "." (anything but LF) runs faster in the regex engine than a negated class; a CR it
# takes in is the CR of a CRLF, since blocks with a bare CR never reach this pattern.
_FIELD_TEXT = re.compile(r"^([!-9;-~]+):[ \t]*(.*(?:\n[ \t].*)*)", re.MULTILINE)
_BLANK_LINE = re.compile(rb"\n\r?\n")
_NOT_CONTINUATION = re.compile(rb"\n(?![ \t])")
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class _Context:
    """Per-message state: limits, the deadline, part count and the defects found so far."""

    __slots__ = ("limits", "deadline", "defects", "parts", "stopped", "depth_reported", "bounce", "feedback")

    def __init__(self, limits: MimeLimits) -> None:
        self.limits = limits
        self.deadline = time.perf_counter() + limits.time_budget
        self.defects: list[str] = []
        self.parts = 0
        self.stopped = False
        self.depth_reported = False
        self.bounce = False
        self.feedback = False

    def defect(self, text: str) -> None:
        if len(self.defects) < 100 and text not in self.defects:
            self.defects.append(text)

    def out_of_time(self) -> bool:
        if self.stopped:
            return True
        if time.perf_counter() > self.deadline:
            self.stopped = True
            self.defect("time budget exceeded")
        return self.stopped


def _read_headers(raw: bytes, start: int, end: int, ctx: _Context, top: bool) -> tuple[list[tuple[str, str]], int]:
    """Read one header block from raw[start:end]; return its fields and where its body starts.

    RFC 5322 §2.1: the header block ends at the first empty line. Like the stdlib parser,
    a line that is neither a field nor a continuation also ends it (no separator).
    """
    if start >= end:
        return [], end
    if raw.startswith(b"\n", start):
        return [], start + 1
    if raw.startswith(b"\r\n", start):
        return [], start + 2
    blank = _BLANK_LINE.search(raw, start, end)
    if blank is None:
        block_end = body_start = end
    else:
        block_end, body_start = blank.start() + 1, blank.end()

    limits = ctx.limits
    if block_end - start <= limits.max_header_length:
        fast = _read_regular_block(raw[start:block_end], limits.max_headers)
        if fast is not None:
            return fast, body_start

    fields: list[tuple[str, str]] = []
    name = ""
    chunks: list[bytes] = []
    length = 0
    count = 0
    pos = start
    while pos < block_end:
        newline = raw.find(b"\n", pos, block_end)
        line_end = block_end if newline < 0 else newline
        next_pos = line_end + 1
        if line_end > pos and raw[line_end - 1] == 0x0D:
            line_end -= 1
        first_byte = raw[pos]
        if first_byte == 0x20 or first_byte == 0x09:  # RFC 5322 §2.2.3 folded continuation
            if not name:
                if not fields:
                    ctx.defect("FirstHeaderLineIsContinuationDefect")
                pos = next_pos
                continue
            length += line_end - pos + 2
            if length <= limits.max_header_length:
                chunks.append(raw[pos:line_end])
                pos = next_pos
            else:
                # Over the cap already: jump to the next line that is not a continuation.
                field_end = _NOT_CONTINUATION.search(raw, line_end, block_end)
                pos = block_end if field_end is None else field_end.start() + 1
                length += pos - next_pos
            continue
        if name:
            _finish_field(name, chunks, length, fields, ctx)
            name = ""
        colon = raw.find(b":", pos, line_end)
        if colon <= pos or not _FIELD_NAME.fullmatch(raw, pos, colon):
            if pos == 0 and top and raw.startswith(b"From ", 0, line_end):
                pos = next_pos  # an mbox "From " envelope line, not a header
                continue
            # RFC 5322 §2.2: not a field, so the body starts here.
            ctx.defect("MissingHeaderBodySeparatorDefect")
            return fields, pos
        count += 1
        if count > limits.max_headers:
            rest = raw.count(b"\n", pos, block_end) + (raw[block_end - 1] != 0x0A)
            folded = raw.count(b"\n ", pos, block_end) + raw.count(b"\n\t", pos, block_end)
            ctx.defect(f"header count {count - 1 + rest - folded} > {limits.max_headers}")
            return fields, body_start  # the rest of this block is not read
        name = raw[pos:colon].rstrip(b" \t").decode("ascii")
        length = line_end - pos
        chunks = [raw[colon + 1 : line_end]] if length <= limits.max_header_length else []
        pos = next_pos
    if name:
        _finish_field(name, chunks, length, fields, ctx)
    return fields, body_start


def _finish_field(name: str, chunks: list[bytes], length: int, fields: list[tuple[str, str]], ctx: _Context) -> None:
    if length > ctx.limits.max_header_length:
        ctx.defect(f"header field {name} length {length} > {ctx.limits.max_header_length}")
        return
    # RFC 5322 §2.2.3: unfolding removes the CRLF before each continuation's whitespace.
    value = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    fields.append((name, _header_text(value.strip(b" \t"), name, ctx)))


def _read_regular_block(block: bytes, max_headers: int) -> list[tuple[str, str]] | None:
    """Fast path for the usual header block: ASCII or UTF-8, every line a field or a fold.

    One decode and one regex pass. Each match starts at a line start (RFC 5322 §2.2
    field) and runs through its folded continuation lines, so the fields tile the block
    exactly when there are as many matches as unfolded lines. Anything irregular (no
    match for some line, NUL, bare CR, too many fields) returns None: the careful loop.
    """
    if block.isascii():
        text = block.decode("ascii")
    else:
        try:
            text = block.decode("utf-8")  # RFC 6532
        except UnicodeDecodeError:
            return None
    if text[:1] in (" ", "\t") or "\x00" in text or text.count("\r") != text.count("\r\n"):
        return None
    folds = text.count("\n ") + text.count("\n\t")
    lines = text.count("\n") + (not text.endswith("\n"))
    if lines - folds > max_headers:
        return None
    found: list[tuple[str, str]] = _FIELD_TEXT.findall(text)
    if len(found) != lines - folds:
        return None
    # RFC 5322 §2.2.3: unfolding removes each CRLF that precedes whitespace.
    return [
        (name, (value.replace("\r\n", "").replace("\n", "") if "\n" in value else value).strip(" \t\r"))
        for name, value in found
    ]


def _header_text(value: bytes, name: str, ctx: _Context) -> str:
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        try:
            text = value.decode("utf-8")  # RFC 6532 allows UTF-8 in header fields
        except UnicodeDecodeError:
            ctx.defect(f"non-UTF-8 8-bit data in header {name}")
            text = value.decode("cp1252", "replace")
    if "\r" in text or "\x00" in text:
        text = text.replace("\r", " ").replace("\x00", " ")
    return text


# --------------------------------------------------------------------------- RFC 2047

_ENCODED_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")


def decode_header_value(value: str) -> str:
    """Decode RFC 2047 encoded-words; control characters (CR, LF, ...) become spaces.

    RFC 2047 §6.2: whitespace between adjacent encoded-words is not displayed. Adjacent
    words in one charset are joined before decoding, as clients split multi-byte
    characters across words. CVE-2024-6923: an encoded CR or LF never survives.
    """
    if "=?" in value:
        out: list[str] = []
        pos = 0
        pending_charset = ""
        pending = b""
        for match in _ENCODED_WORD.finditer(value):
            between = value[pos : match.start()]
            if pending and not between.strip():
                pass
            else:
                if pending:
                    out.append(_decode_charset(pending, pending_charset))
                    pending = b""
                out.append(between)
            charset, encoding, payload = match.group(1), match.group(2), match.group(3)
            data = _decode_word(encoding, payload)
            if pending and charset.lower() != pending_charset.lower():
                out.append(_decode_charset(pending, pending_charset))
                pending = b""
            pending += data
            pending_charset = charset
            pos = match.end()
        if pending:
            out.append(_decode_charset(pending, pending_charset))
        out.append(value[pos:])
        value = "".join(out)
    if _CTL.search(value):
        value = _CTL.sub(" ", value)
    return value


def _decode_word(encoding: str, payload: str) -> bytes:
    data = payload.encode("ascii", "replace")
    try:
        if encoding in "bB":
            return _b64decode(data)[0]
        return binascii.a2b_qp(data, header=True)
    except (binascii.Error, ValueError):
        return data


def _decode_charset(data: bytes, charset: str) -> str:
    codec = _codec(charset)
    if codec is not None:
        return data.decode(codec, "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


# Labels that name no real charset, or that senders misuse: guess instead.
_GUESS = frozenset({"unknown-8bit", "x-unknown", "unknown", "default", "x-user-defined", "charset", "8bit", ""})
# WHATWG Encoding §4.2 maps these labels to supersets; mail follows browsers here.
_ALIASES = {
    "us-ascii": "utf-8",
    "ascii": "utf-8",
    "ansi_x3.4-1968": "utf-8",
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "l1": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "iso-8859-9": "cp1254",
    "tis-620": "cp874",
    "shift_jis": "cp932",
    "x-sjis": "cp932",
    "utf8": "utf-8",
}


@lru_cache(maxsize=256)
def _codec(charset: str) -> str | None:
    name = charset.strip().strip("\"'").lower()
    if name in _GUESS or len(name) > 40:
        return None
    name = _ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
        b"a".decode(info.name, "replace")  # refuses non-text codecs such as "base64" or "zlib"
    except (LookupError, ValueError):
        return None
    return info.name


def _decode_text(data: bytes, charset: str | None, ctx: _Context) -> str:
    codec = _codec(charset) if charset else None
    if charset and codec is None and charset.strip().lower() not in _GUESS:
        ctx.defect(f"unknown charset {charset[:40]!r}")
    if codec is not None:
        return data.decode(codec, "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


# --------------------------------------------------------------------------- parameters

_TOKEN_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+/[!#$%&'*+.^_`|~0-9a-z-]+")
_PARAM = re.compile(r';\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_MAX_PARAMS = 64


def _parse_params(value: str) -> tuple[str, dict[str, str]]:
    """Split "type/subtype; a=b; c*=utf-8''x" (RFC 2045 §5.1, RFC 2231) into value and params.

    The result is shared between callers (cached): never mutate the dict.
    """
    if len(value) <= 128:
        return _parse_params_cached(value)
    return _parse_params_uncached(value)


@lru_cache(maxsize=1024)
def _parse_params_cached(value: str) -> tuple[str, dict[str, str]]:
    # The same few Content-Type values arrive over and over.
    return _parse_params_uncached(value)


def _parse_params_uncached(value: str) -> tuple[str, dict[str, str]]:
    semi = value.find(";")
    main = (value if semi < 0 else value[:semi]).strip().lower()
    params: dict[str, str] = {}
    if semi < 0:
        return main, params
    pieces: dict[str, dict[int, tuple[str, bool]]] = {}
    for count, match in enumerate(_PARAM.finditer(value, semi)):
        if count >= _MAX_PARAMS:
            break
        name = match.group(1).lower()
        raw = match.group(2)
        if raw.startswith('"'):
            raw = raw[1:-1] if raw.endswith('"') and len(raw) > 1 else raw[1:]
            if "\\" in raw:
                raw = _QUOTED_PAIR.sub(r"\1", raw)
        else:
            raw = raw.strip()
        if "*" not in name:
            params.setdefault(name, raw)
            continue
        # RFC 2231 §3-4: name*=charset'lang'pct-encoded, name*0=, name*1*=...
        base, _, rest = name.partition("*")
        encoded = rest.endswith("*") or rest == ""
        index_text = rest.rstrip("*")
        index = int(index_text) if index_text.isdigit() and len(index_text) < 4 else 0
        pieces.setdefault(base, {})[index] = (raw, encoded)
    for base, parts in pieces.items():
        params[base] = _join_rfc2231(parts)
    return main, params


def _join_rfc2231(parts: dict[int, tuple[str, bool]]) -> str:
    charset = ""
    data = bytearray()
    for index in sorted(parts):
        raw, encoded = parts[index]
        if encoded:
            if index == 0 and raw.count("'") >= 2:
                charset, _, raw = raw.split("'", 2)
            data += _PCT.sub(lambda m: chr(int(m.group(1), 16)), raw).encode("latin-1", "replace")
        else:
            data += raw.encode("utf-8", "replace")
    return _decode_charset(bytes(data), charset or "utf-8")


# --------------------------------------------------------------------------- transfer encodings

_NOT_B64 = re.compile(rb"[^A-Za-z0-9+/]")


def _b64decode(data: bytes) -> tuple[bytes, str | None]:
    try:
        return binascii.a2b_base64(data), None
    except binascii.Error:
        pass
    clean = _NOT_B64.sub(b"", data)
    extra = len(clean) % 4
    if extra == 1:  # a lone trailing sextet carries no whole byte
        clean = clean[:-1]
        defect = "InvalidBase64LengthDefect"
    else:
        defect = "InvalidBase64PaddingDefect"
    clean += b"=" * (-len(clean) % 4)
    try:
        return binascii.a2b_base64(clean), defect
    except binascii.Error:
        return b"", "InvalidBase64CharactersDefect"


def _decode_transfer(data: bytes, cte: str, ctx: _Context) -> bytes:
    # RFC 2045 §6: 7bit, 8bit and binary are identity encodings.
    if cte == "base64":
        decoded, defect = _b64decode(data)
        if defect:
            ctx.defect(defect)
        return decoded
    if cte == "quoted-printable":
        try:
            return binascii.a2b_qp(data)
        except (binascii.Error, ValueError):
            ctx.defect("invalid quoted-printable")
            return data
    if cte and cte not in ("7bit", "8bit", "binary"):
        ctx.defect(f"unknown Content-Transfer-Encoding {cte[:40]!r}")
    return data


# --------------------------------------------------------------------------- MIME tree


class _Collector:
    """What the walk finds: body texts and attachments."""

    __slots__ = ("texts", "htmls", "attachments")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.htmls: list[str] = []
        self.attachments: list[ParsedAttachment] = []


def _fields_map(fields: list[tuple[str, str]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in fields:
        lower = name.lower()
        if lower.startswith("content-") and lower not in found:
            found[lower] = value
    return found


def _walk(
    raw: bytes,
    body_start: int,
    end: int,
    part_fields: dict[str, str],
    path: str,
    depth: int,
    default_type: str,
    in_alternative: list[bool] | None,
    ctx: _Context,
    out: _Collector,
) -> None:
    """Handle one MIME entity whose headers are read and whose body is raw[body_start:end]."""
    ctx.parts += 1
    if ctx.parts > ctx.limits.max_parts:
        ctx.defect(f"mime parts > {ctx.limits.max_parts}")
        return
    if ctx.out_of_time():
        return
    ctype_value = part_fields.get("content-type")
    params: dict[str, str]
    if ctype_value is None:
        ctype, params = default_type, {}
    else:
        ctype, params = _parse_params(ctype_value)
        if not _TOKEN_TYPE.fullmatch(ctype):
            # RFC 2045 §5.2: an invalid Content-Type means text/plain; charset=us-ascii.
            ctx.defect("InvalidContentTypeDefect")
            ctype, params = "text/plain", {}

    if ctype.startswith("multipart/"):
        boundary = params.get("boundary", "")
        if not boundary:
            ctx.defect("NoBoundaryInMultipartDefect")
            ctype = "text/plain"
        elif depth >= ctx.limits.max_depth:
            if not ctx.depth_reported:
                ctx.depth_reported = True
                ctx.defect(f"mime depth > {ctx.limits.max_depth}")
            return
        else:
            _walk_multipart(raw, body_start, end, ctype, boundary, path, depth, ctx, out)
            return

    disposition_value = part_fields.get("content-disposition")
    disposition, dparams = _parse_params(disposition_value) if disposition_value else ("", {})
    filename = dparams.get("filename") or params.get("name")
    cte = part_fields.get("content-transfer-encoding", "").strip().lower()
    if ctype in ("message/delivery-status", "message/global-delivery-status"):
        ctx.bounce = True
    elif ctype == "message/feedback-report":
        ctx.feedback = True

    is_body = ctype in ("text/plain", "text/html") and disposition != "attachment" and not filename
    if is_body and in_alternative is not None:
        slot = 0 if ctype == "text/plain" else 1
        if in_alternative[slot]:
            return  # RFC 2046 §5.1.4: a later alternative of the same type adds nothing
        in_alternative[slot] = True
    content = _decode_transfer(raw[body_start:end], cte, ctx)
    if is_body:
        charset = params.get("charset")
        if ctype == "text/plain":
            text = _decode_text(content, charset, ctx)
            if "\r" in text:
                text = text.replace("\r\n", "\n")
            if params.get("format", "").lower() == "flowed" and len(text) <= _MAX_UNFLOW:
                text = _unflow(text, params.get("delsp", "").lower() == "yes")
            out.texts.append(text)
        else:
            if not charset:
                charset = _html_charset(content)
            html = _decode_text(content, charset, ctx)
            if "\r" in html:
                html = html.replace("\r\n", "\n")
            out.htmls.append(html)
        return
    content_id = part_fields.get("content-id", "").strip().strip("<>").strip() or None
    if disposition == "inline" or (disposition != "attachment" and content_id is not None):
        kind = "inline"
    else:
        kind = "attachment"
    out.attachments.append(
        ParsedAttachment(
            attachment_id="att_" + path.replace(".", "_"),
            filename=_clean_filename(filename),
            content_type=ctype,
            size=len(content),
            content_id=decode_header_value(content_id) if content_id else None,
            disposition=kind,
            content=content,
        )
    )


def _walk_multipart(
    raw: bytes,
    start: int,
    end: int,
    ctype: str,
    boundary: str,
    path: str,
    depth: int,
    ctx: _Context,
    out: _Collector,
) -> None:
    regions = _split_multipart(raw, start, end, boundary.encode("utf-8", "replace"), ctx)
    if regions is None:
        # RFC 2046 §5.1.1: no delimiter at all; keep the body as text rather than lose it.
        _walk(raw, start, end, {}, path, depth + 1, "text/plain", None, ctx, out)
        return
    default_type = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
    alternative: list[bool] | None = [False, False] if ctype == "multipart/alternative" else None
    prefix = "" if depth == 0 else path + "."
    for number, (part_start, part_end) in enumerate(regions, 1):
        if ctx.stopped or ctx.parts >= ctx.limits.max_parts:
            if not ctx.stopped:
                ctx.defect(f"mime parts > {ctx.limits.max_parts}")
            return
        fields, body_start = _read_headers(raw, part_start, part_end, ctx, top=False)
        _walk(
            raw,
            min(body_start, part_end),
            part_end,
            _fields_map(fields),
            f"{prefix}{number}",
            depth + 1,
            default_type,
            alternative,
            ctx,
            out,
        )


def _split_multipart(raw: bytes, start: int, end: int, boundary: bytes, ctx: _Context) -> list[tuple[int, int]] | None:
    """Body part regions between RFC 2046 §5.1.1 delimiter lines ("--" boundary at a line start).

    The line break before a delimiter belongs to the delimiter, not to the part.
    """
    delimiter = b"--" + boundary
    size = len(delimiter)
    regions: list[tuple[int, int]] = []
    part_start = -1
    pos = start
    misses = 0
    line_regex: re.Pattern[bytes] | None = None
    while True:
        if line_regex is None:
            found = raw.find(delimiter, pos, end)
        else:
            match = line_regex.search(raw, pos, end)
            found = -1 if match is None else match.start()
        if found < 0:
            break
        pos = found + 1
        after = found + size
        closing = raw.startswith(b"--", after)
        line_end = raw.find(b"\n", after, end)
        if line_end < 0:
            line_end = end
        if (found != start and raw[found - 1] != 0x0A) or (not closing and raw[after:line_end].strip()):
            # Not a delimiter line (a longer boundary that starts with ours, or text that
            # quotes it). Many of them is an attack on this loop: let the regex engine
            # skip to real delimiter lines instead.
            misses += 1
            if misses == 64:
                line_regex = re.compile(rb"^" + re.escape(delimiter) + rb"(?:--|[ \t\r\x0b\x0c]*(?:\n|\Z))", re.M)
            continue
        if part_start >= 0:
            part_end = found
            if part_end > part_start and raw[part_end - 1] == 0x0A:
                part_end -= 2 if part_end - 2 >= part_start and raw[part_end - 2] == 0x0D else 1
            regions.append((part_start, max(part_start, part_end)))
        if closing:
            return regions
        part_start = min(line_end + 1, end)
        pos = part_start
        if len(regions) > ctx.limits.max_parts:
            return regions
    if part_start < 0:
        ctx.defect("StartBoundaryNotFoundDefect")
        return None
    ctx.defect("CloseBoundaryNotFoundDefect")
    regions.append((part_start, end))
    return regions


_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?([A-Za-z0-9_.:-]{1,40})""", re.IGNORECASE)


def _html_charset(content: bytes) -> str | None:
    # HTML §4.2.5.5: a <meta charset> in the first 1024 bytes declares the encoding.
    match = _META_CHARSET.search(content, 0, 1024)
    return match.group(1).decode("ascii") if match else None


# Unwrapping is a per-line Python loop; past this size the text stays as sent.
_MAX_UNFLOW = 1024 * 1024


def _unflow(text: str, delsp: bool) -> str:
    """RFC 3676 §4.2: join flowed lines (ending in a space) of the same quote depth."""
    out: list[str] = []
    paragraph: list[str] = []
    depth_now = -1
    for line in text.split("\n"):
        stripped = line.lstrip(">")
        depth = len(line) - len(stripped)
        if stripped.startswith(" "):
            stripped = stripped[1:]  # §4.4 space-stuffing
        flowed = stripped.endswith(" ") and stripped != "-- "  # §4.3 the signature line is fixed
        if flowed and delsp:
            stripped = stripped[:-1]
        if paragraph and depth != depth_now:  # §4.5 a change of quote depth ends a paragraph
            out.append(_quoted(depth_now, "".join(paragraph)))
            paragraph = []
        depth_now = depth
        paragraph.append(stripped)
        if not flowed:
            out.append(_quoted(depth, "".join(paragraph)))
            paragraph = []
    if paragraph:
        out.append(_quoted(depth_now, "".join(paragraph)))
    return "\n".join(out)


def _quoted(depth: int, line: str) -> str:
    return (">" * depth + " " + line) if depth else line


_UNSAFE_FILENAME = re.compile(r"[\x00-\x1f\x7f]")


def _clean_filename(filename: str | None) -> str | None:
    if not filename:
        return None
    name = decode_header_value(filename) if "=?" in filename else filename
    name = _UNSAFE_FILENAME.sub("", name)
    # Keep the last path component only: a filename is not a path (RFC 2183 §2.3).
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:255] or None


# --------------------------------------------------------------------------- the message


def _parse(raw: bytes, limits: MimeLimits) -> ParsedMessage:
    ctx = _Context(limits)
    size = len(raw)
    end = size
    if size > limits.max_size:
        ctx.defect(f"size {size} > {limits.max_size}")
        end = limits.max_size
    if size == 0:
        return _empty(0, ["empty message"])

    fields, body_start = _read_headers(raw, 0, end, ctx, top=True)
    if not fields:
        ctx.defect("no header fields")

    # headers: every field, decoded, repeats joined; top: the first raw value per
    # lowercased name, which is what single-valued fields and the MIME walk read.
    headers: dict[str, str] = {}
    top: dict[str, str] = {}
    first_name: dict[str, str] = {}
    for name, value in fields:
        lower = name.lower()
        decoded = decode_header_value(value) if "=?" in value else value
        if lower in top:
            known = first_name[lower]
            headers[known] = f"{headers[known]}, {decoded}"
        else:
            top[lower] = value
            first_name[lower] = name
            headers[name] = decoded

    out = _Collector()
    _walk(raw, min(body_start, end), end, top, "1", 0, "text/plain", None, ctx, out)

    from_list = top.get("from")
    header_from = from_address = ""
    if from_list is not None:
        mailboxes = _mailboxes(from_list, "From", ctx)
        if mailboxes:
            header_from, from_address = mailboxes[0].display, mailboxes[0].addr_spec
        else:
            header_from = " ".join(decode_header_value(from_list).split())[:998]
    else:
        ctx.defect("no From header")

    message_id = normalise_msgid(top["message-id"]) if "message-id" in top else None
    in_reply_to = normalise_msgid(top["in-reply-to"]) if "in-reply-to" in top else None
    subject = top.get("subject")
    if subject is not None:
        subject = decode_header_value(subject).strip()

    report_type: str | None = None  # None: not multipart/report at all
    ctype_value = top.get("content-type", "")
    if ctype_value[:16].lower().startswith("multipart/report"):
        report_type = _parse_params(ctype_value)[1].get("report-type", "").strip().lower()

    return ParsedMessage(
        message_id=message_id,
        in_reply_to=in_reply_to,
        references=msgids_in(top.get("references")),
        subject=subject,
        header_from=header_from,
        from_address=from_address,
        to=[a.display for a in _mailboxes(top.get("to"), "To", ctx)],
        cc=[a.display for a in _mailboxes(top.get("cc"), "Cc", ctx)],
        reply_to=[a.display for a in _mailboxes(top.get("reply-to"), "Reply-To", ctx)],
        date=_date(top.get("date"), ctx),
        headers=headers,
        text="\n".join(out.texts) if out.texts else None,
        html="\n".join(out.htmls) if out.htmls else None,
        attachments=out.attachments,
        defects=ctx.defects,
        auto_submitted=_auto_submitted(top, report_type, from_address, subject, ctx),
        size=size,
    )


def _empty(size: int, defects: list[str]) -> ParsedMessage:
    return ParsedMessage(
        message_id=None,
        in_reply_to=None,
        references=[],
        subject=None,
        header_from="",
        from_address="",
        to=[],
        cc=[],
        reply_to=[],
        date=None,
        headers={},
        text=None,
        html=None,
        attachments=[],
        defects=defects,
        auto_submitted=None,
        size=size,
    )


_MAX_ADDRESSES = 1000


def _mailboxes(value: str | None, name: str, ctx: _Context) -> list[Address]:
    """Mailboxes of an address-list header, parsed on the raw value.

    RFC 2047 §5: encoded-words are decoded only inside a display name, after parsing, so
    a decoded "," or "<" cannot change the structure of the list.
    """
    if not value:
        return []
    found: list[Address] = []
    for item in split_address_list(value)[:_MAX_ADDRESSES]:
        address = _mailbox(item)
        if address is None:
            ctx.defect(f"invalid address in {name}")
        else:
            found.append(address)
    return found


@lru_cache(maxsize=4096)
def _mailbox(item: str) -> Address | None:
    # Senders and our own inboxes repeat from message to message: cache the parse.
    try:
        address = parse_address(item)
    except AddressError:
        return None
    name = address.display_name
    if name and ("=?" in name or _CTL.search(name)):
        address = replace(address, display_name=" ".join(decode_header_value(name).split()) or None)
    return address


_MONTHS = {
    m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)
}
# RFC 5322 §3.3 date-time in its usual shape; anything else goes to the stdlib parser.
_DATE = re.compile(
    r"\s*(?:[A-Za-z]{3},\s*)?(\d{1,2})\s+([A-Za-z]{3})\s+(\d{4})\s+(\d{1,2}):(\d{2})(?::(\d{2}))?\s+([+-])(\d{2})(\d{2})\b"
)


@lru_cache(maxsize=64)
def _zone(sign: str, hours: int, minutes: int) -> timezone:
    offset = timedelta(hours=hours, minutes=minutes)
    return UTC if not offset else timezone(-offset if sign == "-" else offset)


def _date(value: str | None, ctx: _Context) -> datetime | None:
    if not value:
        return None
    match = _DATE.match(value)
    if match is not None:
        day, month, year, hour, minute, second, sign, zh, zm = match.groups()
        month_number = _MONTHS.get(month.lower())
        if month_number is not None:
            try:
                zone = _zone(sign, int(zh), int(zm))
                return datetime(
                    int(year), month_number, int(day), int(hour), int(minute), int(second or 0), tzinfo=zone
                )
            except ValueError:
                pass
    try:
        parsed = parsedate_to_datetime(value[:200])
    except Exception:  # the stdlib date parser raises several types on hostile input
        ctx.defect("invalid Date header")
        return None
    if parsed.tzinfo is None:
        # RFC 5322 §3.3: "-0000" means UTC with no information about the local zone.
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


_AUTO_REPLY_HEADERS = ("x-autoreply", "x-autorespond")
_BULK_PRECEDENCE = frozenset({"bulk", "junk", "list"})
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery (?:status|fail|notification|report)|returned mail|failure notice|mail delivery|"
    r"non[- ]?delivery|nondeliverable|could not be delivered|delivery has failed|rejected",
    re.IGNORECASE,
)


def _auto_submitted(
    top: dict[str, str], report_type: str | None, from_address: str, subject: str | None, ctx: _Context
) -> str | None:
    """Classify machine-sent mail so an agent never answers it (RFC 3834 §2, RFC 3464, RFC 5965)."""
    if report_type == "feedback-report" or (ctx.feedback and report_type != "delivery-status"):
        return "feedback-report"
    # RFC 6522 §3: a multipart/report without report-type is almost always a DSN from an
    # old MTA; delivery-status parts anywhere in the structure say the same.
    if report_type == "delivery-status" or report_type == "" or ctx.bounce:
        return "bounce"
    local = from_address.rpartition("@")[0].lower()
    if local in ("mailer-daemon", "mail-daemon", "mailerdaemon"):
        return "bounce"
    if local == "postmaster" and subject and _BOUNCE_SUBJECT.search(subject):
        return "bounce"
    if report_type is not None:
        return "auto-replied"  # e.g. RFC 8098 disposition notifications
    auto = top.get("auto-submitted", "").split(";", 1)[0].strip().lower()
    if auto and auto != "no":
        return "auto-replied"
    precedence = top.get("precedence", "").strip().lower()
    if precedence == "auto_reply" or any(h in top for h in _AUTO_REPLY_HEADERS):
        return "auto-replied"
    if precedence in _BULK_PRECEDENCE or "list-id" in top:
        return "bulk"
    return None
