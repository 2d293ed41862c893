"""Parsing received messages: the bounce and ARF corpora, hostile input, bodies and attachments."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest

from agentpost.proto.mime import MimeLimits, ParsedMessage, decode_header_value, parse

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata"
BOUNCES = sorted((TESTDATA / "bounces").glob("*.eml"))
ARF = sorted((TESTDATA / "arf").glob("*.eml"))


def _crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def _timed(raw: bytes, limits: MimeLimits = MimeLimits()) -> ParsedMessage:
    started = time.perf_counter()
    parsed = parse(raw, limits)
    assert time.perf_counter() - started < 1.0
    return parsed


# --------------------------------------------------------------------------- corpora


def test_corpora_are_present() -> None:
    assert len(BOUNCES) > 250
    assert ARF


@pytest.mark.parametrize("path", BOUNCES + ARF, ids=lambda p: p.name)
def test_corpus_message_parses(path: Path) -> None:
    raw = path.read_bytes()
    parsed = _timed(raw)
    assert parsed.size == len(raw)
    assert parsed.header_from or parsed.defects
    assert not any(d.startswith("parser error") for d in parsed.defects)
    lowered = raw.lower()
    if b"multipart/report" in lowered and b"report-type=feedback-report" not in lowered.replace(b'"', b""):
        if path.parent.name == "bounces":
            assert parsed.auto_submitted == "bounce"


@pytest.mark.parametrize("path", [p for p in BOUNCES if p.name.startswith("rfc3834")], ids=lambda p: p.name)
def test_rfc3834_auto_replies(path: Path) -> None:
    raw = path.read_bytes()
    parsed = parse(raw)
    if b"\nauto-submitted:" in raw.lower():
        assert parsed.auto_submitted == "auto-replied"


@pytest.mark.parametrize("path", ARF, ids=lambda p: p.name)
def test_arf_feedback_reports(path: Path) -> None:
    raw = path.read_bytes()
    if b"report-type=feedback-report" in raw.lower().replace(b'"', b""):
        assert parse(raw).auto_submitted == "feedback-report"


def test_dsn_fields() -> None:
    parsed = parse((TESTDATA / "bounces" / "rfc3464-01.eml").read_bytes())
    assert parsed.auto_submitted == "bounce"
    assert any(a.content_type in ("message/delivery-status", "message/rfc822", "text/rfc822-headers")
               for a in parsed.attachments)  # fmt: skip


# --------------------------------------------------------------------------- hostile input


def test_five_thousand_headers() -> None:
    raw = b"".join(b"X-H%d: v\r\n" % i for i in range(5000)) + b"From: a@example.com\r\n\r\nbody\r\n"
    parsed = _timed(raw)
    assert "header count 5001 > 1000" in parsed.defects
    assert len(parsed.headers) <= 1000


def test_two_hundred_kilobyte_header_line() -> None:
    raw = b"From: a@example.com\r\nSubject: " + b"x" * 200_000 + b"\r\nTo: b@example.com\r\n\r\nbody\r\n"
    parsed = _timed(raw)
    assert parsed.subject is None
    assert any(d.startswith("header field Subject length") for d in parsed.defects)
    assert parsed.to == ["b@example.com"]
    assert parsed.text == "body\r\n".replace("\r\n", "\n")


def test_long_folded_header_counts_every_line() -> None:
    folded = b"\r\n ".join([b"y" * 70] * 2000)
    raw = b"From: a@example.com\r\nX-Long: " + folded + b"\r\n\r\nbody"
    parsed = _timed(raw)
    assert "X-Long" not in parsed.headers
    assert any(d.startswith("header field X-Long length") for d in parsed.defects)


def test_mime_nesting_one_hundred_deep() -> None:
    head = b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n"
    opening = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1) for i in range(100))
    inner = b"--b100\r\nContent-Type: text/plain\r\n\r\ndeep\r\n--b100--\r\n"
    closing = b"".join(b"--b%d--\r\n" % i for i in reversed(range(100)))
    parsed = _timed(head + opening + inner + closing)
    assert "mime depth > 20" in parsed.defects
    assert parsed.text is None


def test_too_many_parts() -> None:
    parts = b"".join(b"--b\r\nContent-Type: application/octet-stream\r\n\r\nx\r\n" for _ in range(2000))
    raw = b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + parts + b"--b--\r\n"
    parsed = _timed(raw)
    assert "mime parts > 500" in parsed.defects
    assert len(parsed.attachments) < 500


def test_encoded_newline_in_subject_cannot_inject_a_header() -> None:
    raw = b"From: a@example.com\r\nSubject: =?utf-8?q?a=0D=0AInjected:_x?=\r\n\r\nbody"
    parsed = _timed(raw)
    assert parsed.subject is not None
    assert "\r" not in parsed.subject and "\n" not in parsed.subject
    assert parsed.subject == "a  Injected: x"
    assert "Injected" not in parsed.headers
    assert "\n" not in parsed.headers["Subject"]


def test_encoded_newline_in_display_name_is_flattened() -> None:
    raw = b"From: =?utf-8?q?Eve=0D=0ABcc:_x?= <eve@example.com>\r\n\r\nhi"
    parsed = parse(raw)
    assert parsed.header_from == '"Eve Bcc: x" <eve@example.com>'
    assert parsed.from_address == "eve@example.com"


def test_truncated_base64() -> None:
    payload = base64.b64encode(b"hello attachment world")[:-3]
    raw = (
        b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--b\r\nContent-Type: application/pdf; name=x.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n" + payload
    )
    parsed = _timed(raw)
    assert parsed.text == "see attached"
    assert parsed.attachments[0].content.startswith(b"hello attachment")
    assert "CloseBoundaryNotFoundDefect" in parsed.defects
    assert any("Base64" in d for d in parsed.defects)


def test_empty_bytes() -> None:
    parsed = _timed(b"")
    assert parsed.defects == ["empty message"]
    assert parsed.size == 0 and parsed.header_from == "" and parsed.text is None


def test_random_bytes() -> None:
    for seed in range(20):
        raw = os.urandom(5000 + seed)
        parsed = _timed(raw)
        assert parsed.defects
        assert parsed.size == len(raw)


def test_no_separator_and_binary_header() -> None:
    parsed = _timed(b"From: a@example.com\r\nSubject: \xff\xfe\x00bad\r\nthis line is body\r\n")
    assert parsed.from_address == "a@example.com"
    assert "MissingHeaderBodySeparatorDefect" in parsed.defects
    assert parsed.text == "this line is body\n"


def test_missing_boundary_and_missing_start_boundary() -> None:
    no_param = _timed(b"From: a@example.com\r\nContent-Type: multipart/mixed\r\n\r\nhello")
    assert "NoBoundaryInMultipartDefect" in no_param.defects
    assert no_param.text == "hello"
    no_start = _timed(b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\nhello")
    assert "StartBoundaryNotFoundDefect" in no_start.defects
    assert no_start.text == "hello"


def test_oversize_message_is_cut_and_flagged() -> None:
    raw = b"From: a@example.com\r\nSubject: big\r\n\r\n" + b"a" * 5000
    parsed = _timed(raw, MimeLimits(max_size=1000))
    assert f"size {len(raw)} > 1000" in parsed.defects
    assert parsed.subject == "big"
    assert parsed.text is not None and len(parsed.text) < 1000
    assert parsed.size == len(raw)


def test_time_budget_stops_parsing() -> None:
    parts = b"".join(
        b"--b\r\nContent-Type: application/octet-stream\r\n\r\n" + b"x" * 1000 + b"\r\n" for _ in range(400)
    )
    raw = b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + parts + b"--b--\r\n"
    parsed = parse(raw, MimeLimits(time_budget=0.0))
    assert "time budget exceeded" in parsed.defects


def test_parse_of_non_bytes_does_not_raise() -> None:
    parsed = parse("not bytes")  # type: ignore[arg-type]
    assert parsed.defects and parsed.defects[0].startswith("parser error")


# --------------------------------------------------------------------------- structure and fields

ALTERNATIVE_WITH_ATTACHMENTS = _crlf(
    """Return-Path: <alice@example.com>
From: =?utf-8?q?Al=C3=AFce?= Example <alice@Example.com>
To: "Bot, Agent" <bot@agents.example>, other@agents.example
Cc: undisclosed-recipients:;
Reply-To: Replies <replies@example.com>
Subject: =?utf-8?b?UmU6IHF1YXJ0ZXJseSDwn5OI?=
Date: Mon, 1 Jan 2024 10:00:00 +0100
Message-ID: <CAF=abc123@Mail.Example.com>
In-Reply-To: <prev@agents.example>
References: <first@agents.example>
 <prev@agents.example>
MIME-Version: 1.0
Received: from a by b; Mon, 1 Jan 2024 10:00:00 +0100
Received: from c by d; Mon, 1 Jan 2024 09:59:00 +0100
Content-Type: multipart/mixed; boundary="MIXED"

preamble is ignored
--MIXED
Content-Type: multipart/related; boundary="REL"

--REL
Content-Type: multipart/alternative; boundary="ALT"

--ALT
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Hello caf=C3=A9 numbers attached.=
 More.
--ALT
Content-Type: text/html; charset=utf-8

<p>Hello caf\u00e9 <img src=3D"cid:logo@example.com"></p>
--ALT--
--REL
Content-Type: image/png
Content-ID: <logo@example.com>
Content-Transfer-Encoding: base64

iVBORw0KGgo=
--REL--
--MIXED
Content-Type: application/pdf; name="ignored.pdf"
Content-Disposition: attachment; filename*=utf-8''r%C3%A9port%20Q1.pdf
Content-Transfer-Encoding: base64

JVBERi0xLjQK
--MIXED--
epilogue is ignored
"""
)


def test_alternative_with_attachment_and_inline_cid_image() -> None:
    parsed = parse(ALTERNATIVE_WITH_ATTACHMENTS)
    assert parsed.defects == []
    assert parsed.text == "Hello café numbers attached. More."
    assert parsed.html is not None and "cid:logo@example.com" in parsed.html.replace("3D", "")
    inline, attachment = parsed.attachments
    assert inline.attachment_id == "att_1_2"
    assert (inline.content_type, inline.disposition, inline.content_id) == ("image/png", "inline", "logo@example.com")
    assert inline.content == b"\x89PNG\r\n\x1a\n" and inline.size == 8
    assert inline.filename is None
    assert attachment.attachment_id == "att_2"
    assert (attachment.filename, attachment.content_type, attachment.disposition) == (
        "réport Q1.pdf",
        "application/pdf",
        "attachment",
    )
    assert attachment.content == b"%PDF-1.4\n" and attachment.size == 9
    assert attachment.content_id is None


def test_header_fields() -> None:
    parsed = parse(ALTERNATIVE_WITH_ATTACHMENTS)
    assert parsed.header_from == "Alïce Example <alice@example.com>"
    assert parsed.from_address == "alice@example.com"
    assert parsed.to == ['"Bot, Agent" <bot@agents.example>', "other@agents.example"]
    assert parsed.cc == []
    assert parsed.reply_to == ["Replies <replies@example.com>"]
    assert parsed.subject == "Re: quarterly 📈"
    assert parsed.date is not None and parsed.date.isoformat() == "2024-01-01T10:00:00+01:00"
    assert parsed.message_id == "<CAF=abc123@mail.example.com>"
    assert parsed.in_reply_to == "<prev@agents.example>"
    assert parsed.references == ["<first@agents.example>", "<prev@agents.example>"]
    assert parsed.headers["Subject"] == "Re: quarterly 📈"
    assert parsed.headers["Received"].count("from") == 2
    assert parsed.headers["References"] == "<first@agents.example> <prev@agents.example>"
    assert parsed.auto_submitted is None
    assert parsed.size == len(ALTERNATIVE_WITH_ATTACHMENTS)


def test_attachment_ids_are_stable() -> None:
    first = [a.attachment_id for a in parse(ALTERNATIVE_WITH_ATTACHMENTS).attachments]
    again = [a.attachment_id for a in parse(ALTERNATIVE_WITH_ATTACHMENTS).attachments]
    assert first == again and len(set(first)) == len(first)


def test_html_only_message_has_no_text() -> None:
    raw = b"From: a@example.com\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>only html</p>"
    parsed = parse(raw)
    assert parsed.text is None and parsed.html == "<p>only html</p>"


def test_single_part_attachment_message() -> None:
    raw = (
        b"From: a@example.com\r\nContent-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="../../etc/passwd"\r\n\r\nDATA'
    )
    parsed = parse(raw)
    assert parsed.text is None
    (attachment,) = parsed.attachments
    assert (attachment.attachment_id, attachment.filename, attachment.content) == ("att_1", "passwd", b"DATA")


@pytest.mark.parametrize(
    "content_type, body, expected",
    [
        (b"text/plain; charset=iso-8859-1", b"caf\xe9", "café"),
        (b"text/plain; charset=ISO-8859-1", b"\xa3 price", "£ price"),
        (b"text/plain; charset=utf-8", "naïve ☃".encode(), "naïve ☃"),
        (b"text/plain; charset=windows-1252", b"\x93quoted\x94", "\u201cquoted\u201d"),
        (b"text/plain; charset=unknown-8bit", "déjà".encode(), "déjà"),
        (b"text/plain; charset=x-unknown", b"d\xe9j\xe0", "déjà"),
        (b"text/plain; charset=no-such-charset", b"plain", "plain"),
        (b"text/plain; charset=base64", b"aGk=", "aGk="),
        (b"text/plain; charset=us-ascii", "utf8 in ascii ✓".encode(), "utf8 in ascii ✓"),
        (b"text/plain", "no charset ü".encode(), "no charset ü"),
        (b"text/plain; charset=utf-8", b"bad \xff utf8", "bad \ufffd utf8"),
        (b"text/plain; charset=shift_jis", "日本語".encode("shift_jis"), "日本語"),
        (b'text/plain; charset="koi8-r"', "привет".encode("koi8-r"), "привет"),
    ],
)
def test_charset_decoding(content_type: bytes, body: bytes, expected: str) -> None:
    raw = (
        b"From: a@example.com\r\nContent-Type: " + content_type + b"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + body
    )
    assert parse(raw).text == expected


def test_unknown_charset_is_a_defect() -> None:
    raw = b"From: a@example.com\r\nContent-Type: text/plain; charset=no-such-charset\r\n\r\nx"
    assert "unknown charset 'no-such-charset'" in parse(raw).defects


def test_eight_bit_headers() -> None:
    raw = "From: Jörg <jörg@bücher.example>\r\nSubject: Grüße\r\n\r\nhi".encode()
    parsed = parse(raw)
    assert parsed.subject == "Grüße"
    assert parsed.header_from == "Jörg <jörg@xn--bcher-kva.example>"
    latin1 = parse(b"From: a@example.com\r\nSubject: Gr\xfc\xdfe\r\n\r\nhi")
    assert latin1.subject == "Grüße"
    assert "non-UTF-8 8-bit data in header Subject" in latin1.defects


def test_html_charset_from_meta() -> None:
    raw = (
        b"From: a@example.com\r\nContent-Type: text/html\r\n\r\n"
        b'<html><head><meta charset="iso-8859-1"></head><body>caf\xe9</body></html>'
    )
    assert "café" in (parse(raw).html or "")


def test_format_flowed_is_unwrapped() -> None:
    raw = (
        b"From: a@example.com\r\nContent-Type: text/plain; charset=utf-8; format=flowed; delsp=no\r\n\r\n"
        b"This is a long \r\nparagraph.\r\n> quoted \r\n> more\r\n-- \r\nsig"
    )
    assert parse(raw).text == "This is a long paragraph.\n> quoted more\n-- \nsig"


def test_lf_only_message_and_mbox_from_line() -> None:
    raw = b"From MAILER-DAEMON Mon Sep 20 19:29:27 2021\nFrom: a@example.com\nSubject: lf\n\nline1\nline2\n"
    parsed = parse(raw)
    assert parsed.subject == "lf" and parsed.text == "line1\nline2\n"
    assert parsed.defects == []


def test_rfc2231_continuations_and_encoded_filename() -> None:
    raw = _crlf(
        """From: a@example.com
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: application/octet-stream
Content-Disposition: attachment; filename*0*=utf-8''long%20na; filename*1="me.txt"

x
--b
Content-Type: application/octet-stream; name="=?utf-8?q?gr=C3=BC=C3=9Fe.txt?="

y
--b--
"""
    )
    first, second = parse(raw).attachments
    assert first.filename == "long name.txt"
    assert second.filename == "grüße.txt"


@pytest.mark.parametrize(
    "headers, expected",
    [
        (b"Auto-Submitted: auto-replied\r\n", "auto-replied"),
        (b"Auto-Submitted: auto-generated; owner-email=x@example.com\r\n", "auto-replied"),
        (b"Auto-Submitted: no\r\n", None),
        (b"X-Autoreply: yes\r\n", "auto-replied"),
        (b"X-Autorespond: yes\r\n", "auto-replied"),
        (b"Precedence: auto_reply\r\n", "auto-replied"),
        (b"Precedence: bulk\r\n", "bulk"),
        (b"Precedence: list\r\n", "bulk"),
        (b"List-Id: <announce.example.com>\r\n", "bulk"),
        (b"Subject: Out of Office\r\n", None),
        (b"Subject: Auto: away\r\n", None),
        (b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n", "bounce"),
        (b"Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n", "feedback-report"),
        (b"Content-Type: multipart/report; report-type=disposition-notification; boundary=b\r\n", "auto-replied"),
    ],
)
def test_auto_submitted(headers: bytes, expected: str | None) -> None:
    raw = b"From: someone@example.com\r\n" + headers + b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n"
    assert parse(raw).auto_submitted == expected


@pytest.mark.parametrize(
    "sender, subject, expected",
    [
        (b"MAILER-DAEMON@mx.example.com", b"Undelivered Mail Returned to Sender", "bounce"),
        (b"Mail Delivery System <mailer-daemon@mx.example.com>", b"anything", "bounce"),
        (b"postmaster@example.com", b"Delivery Status Notification (Failure)", "bounce"),
        (b"postmaster@example.com", b"Question about your DNS", None),
        (b"alice@example.com", b"Undeliverable: hello", None),
    ],
)
def test_bounce_by_sender(sender: bytes, subject: bytes, expected: str | None) -> None:
    raw = b"From: " + sender + b"\r\nSubject: " + subject + b"\r\n\r\nx"
    assert parse(raw).auto_submitted == expected


def test_delivery_status_part_means_bounce() -> None:
    raw = _crlf(
        """From: someone@example.com
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.com
--b--
"""
    )
    parsed = parse(raw)
    assert parsed.auto_submitted == "bounce"
    assert parsed.attachments[0].content_type == "message/delivery-status"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("plain", "plain"),
        ("=?utf-8?q?caf=C3=A9?=", "café"),
        ("=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),
        ("=?utf-8?q?a?= x =?utf-8?q?b?=", "a x b"),
        ("=?UTF-8?B?8J+Y?= =?UTF-8?B?gA==?=", "😀"),
        ("=?iso-8859-1?q?caf=E9?=", "café"),
        ("=?bogus?q?abc?=", "abc"),
        ("=?utf-8*en?q?lang?=", "lang"),
        ("=?utf-8?b?not base64?=", "=?utf-8?b?not base64?="),
        ("a\tb", "a\tb"),
        ("=?utf-8?q?x=00y?=", "x y"),
    ],
)
def test_decode_header_value(value: str, expected: str) -> None:
    assert decode_header_value(value) == expected


# --------------------------------------------------------------------------- property

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a test extra
    pass
else:
    _FRAGMENTS = st.sampled_from(
        [
            b"From: a@example.com\r\n",
            b"Content-Type: multipart/mixed; boundary=b\r\n",
            b'Content-Type: multipart/alternative; boundary="b"\r\n',
            b"Content-Transfer-Encoding: base64\r\n",
            b"Content-Transfer-Encoding: quoted-printable\r\n",
            b"Content-Type: text/plain; charset=unknown-8bit\r\n",
            b"Subject: =?utf-8?q?=0D=0A?=\r\n",
            b"\r\n",
            b"\n",
            b"--b\r\n",
            b"--b--\r\n",
            b" folded\r\n",
            b"=?utf-8?b?",
            b"\xff\xfe",
            b'To: "a, b" <x@y>, (c) <@z>\r\n',
        ]
    )

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=4096))
    def test_parse_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
        parsed = parse(raw)
        assert parsed.size == len(raw)
        assert not any(d.startswith("parser error") for d in parsed.defects)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.one_of(_FRAGMENTS, st.binary(max_size=40)), max_size=40))
    def test_parse_never_raises_on_mime_like_bytes(pieces: list[bytes]) -> None:
        raw = b"".join(pieces)
        parsed = parse(raw)
        assert not any(d.startswith("parser error") for d in parsed.defects)
        assert parsed.subject is None or ("\r" not in parsed.subject and "\n" not in parsed.subject)
