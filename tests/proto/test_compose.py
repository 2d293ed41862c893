"""Outbound composition: round trips through our parser and the stdlib's, header injection, limits."""

from __future__ import annotations

import email
import email.policy
import time
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from typing import Any

import pytest

from agentpost.proto.compose import (
    Composed,
    ComposeError,
    Draft,
    OutgoingAttachment,
    compose,
    new_message_id,
)
from agentpost.proto.mime import ParsedMessage, parse

DOMAIN = "agents.example.com"
NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
SENDER = "Support Agent <support@agents.example.com>"


def _draft(**changes: Any) -> Draft:
    values: dict[str, Any] = {
        "header_from": SENDER,
        "to": ["Bob <bob@example.org>"],
        "subject": "Hello",
        "text": "Hi Bob,\nsee you.",
    }
    values.update(changes)
    return Draft(**values)


def _compose(draft: Draft, **kwargs: Any) -> Composed:
    kwargs.setdefault("domain", DOMAIN)
    kwargs.setdefault("now", NOW)
    kwargs.setdefault("boundary_seed", "test")
    return compose(draft, **kwargs)


def _roundtrip(draft: Draft, **kwargs: Any) -> tuple[Composed, ParsedMessage]:
    composed = _compose(draft, **kwargs)
    _assert_wire_form(composed.raw)
    parsed = parse(composed.raw)
    assert parsed.defects == []
    _assert_stdlib_clean(composed.raw)
    return composed, parsed


def _assert_wire_form(raw: bytes) -> None:
    # RFC 5322 §2.1, §2.1.1 and §2.3: CRLF only, no line over 998 octets.
    assert raw.endswith(b"\r\n")
    assert raw.count(b"\n") == raw.count(b"\r\n") == raw.count(b"\r")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"\nbcc:" not in head.lower() and not head.lower().startswith(b"bcc:")


def _assert_stdlib_clean(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    for part in message.walk():
        assert list(part.defects) == [], part.get_content_type()
        for name, value in part.items():
            assert not getattr(value, "defects", ()), name
    return message


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "subject",
    [
        "Hello",
        "Ünïcödé subject – with dash and emoji 🎉",
        "Re: " + "long words " * 60,
        "x" * 990,  # one unbreakable word: sent as encoded-words
        "日本語の件名" * 30,
        "  padded  and  double  spaced",
    ],
    ids=["ascii", "non-ascii", "long-ascii", "unbreakable", "cjk-long", "spaces"],
)
def test_subject_round_trips(subject: str) -> None:
    composed, parsed = _roundtrip(_draft(subject=subject))
    assert parsed.subject == subject.strip()
    assert _assert_stdlib_clean(composed.raw)["subject"] == subject.strip()
    for line in composed.raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        assert len(line) <= 78 or line.startswith(b"Subject: x")


def test_non_ascii_subject_is_encoded_and_ascii_is_not() -> None:
    assert b"Subject: Hello\r\n" in _compose(_draft(subject="Hello")).raw
    raw = _compose(_draft(subject="Grüße")).raw
    assert b"Subject: =?utf-8?b?" in raw
    assert "Grüße".encode() not in raw


def test_addresses_round_trip_and_bcc_is_only_in_the_envelope() -> None:
    draft = _draft(
        header_from="Agënt Ünit <agent@agents.example.com>",
        to=["Bob <bob@example.org>", '"Smith, Jane" <jane@example.org>'],
        cc=["carol@example.net", "Zoë <zoe@bücher.example>"],
        bcc=["secret@hidden.example", "BOB@example.org"],
        reply_to=["Replies <replies@agents.example.com>"],
    )
    composed, parsed = _roundtrip(draft)
    assert parsed.header_from == "Agënt Ünit <agent@agents.example.com>"
    assert parsed.to == ["Bob <bob@example.org>", '"Smith, Jane" <jane@example.org>']
    assert parsed.cc == ["carol@example.net", "Zoë <zoe@xn--bcher-kva.example>"]
    assert parsed.reply_to == ["Replies <replies@agents.example.com>"]
    assert b"secret@hidden.example" not in composed.raw
    assert "bcc" not in {name.lower() for name in parsed.headers}
    assert composed.envelope_rcpt == [
        "bob@example.org",
        "jane@example.org",
        "carol@example.net",
        "zoe@xn--bcher-kva.example",
        "secret@hidden.example",
    ]
    assert composed.smtputf8 is False


def test_long_display_names_fold_and_round_trip() -> None:
    names = ["Very Long Display Name Of Somebody Important " * 3, "Ünïcödé Nàmé Wïth Mäny Wörds " * 4]
    to = [f'"{names[0].strip()}" <a@example.org>', f"{names[1].strip()} <b@example.org>"]
    composed, parsed = _roundtrip(_draft(to=to))
    assert [t.split(" <")[0].strip('"') for t in parsed.to] == [n.strip() for n in names]
    head = composed.raw.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78


def test_bcc_only_message_is_allowed() -> None:
    composed, parsed = _roundtrip(_draft(to=[], bcc=["hidden@example.org"]))
    assert parsed.to == [] and composed.envelope_rcpt == ["hidden@example.org"]


def test_non_ascii_local_part_needs_smtputf8_and_is_sent_as_utf8() -> None:
    # Not through the stdlib parser: it reports RFC 6532 UTF-8 local parts as defects.
    composed = _compose(_draft(to=["Jürgen <jürgen@example.de>"]))
    _assert_wire_form(composed.raw)
    parsed = parse(composed.raw)
    assert parsed.defects == []
    assert composed.smtputf8 is True
    assert "To: =?utf-8?b?SsO8cmdlbg==?= <jürgen@example.de>".encode() in composed.raw
    assert parsed.to == ["Jürgen <jürgen@example.de>"]
    assert composed.envelope_rcpt == ["jürgen@example.de"]


@pytest.mark.parametrize(
    "text, html",
    [
        ("plain only\nsecond line", None),
        (None, "<p>html only</p>"),
        ("both\nparts", "<p>both</p>\n<p>parts</p>"),
        ("naïve café ✓\n", "<p>naïve café ✓</p>"),
        ("trailing spaces   \n\ttab\n.dot line\nFrom start", "<b>x</b>"),
        ("a" * 5000, "<p>" + "b" * 5000 + "</p>"),
        ("é" * 5000, None),
        ("nul\x00char", "<p>ok</p>"),
        ("crlf\r\nand bare\rcr", "<p>x</p>"),
    ],
    ids=["text", "html", "both", "utf8", "whitespace", "long-ascii", "long-utf8", "nul", "line-ends"],
)
def test_bodies_round_trip(text: str | None, html: str | None) -> None:
    _, parsed = _roundtrip(_draft(text=text, html=html))
    single = text is None or html is None

    def expected(value: str | None) -> str | None:
        if value is None:
            return None
        value = value.replace("\r\n", "\n").replace("\r", "\n")
        # A single-part body is the whole rest of the message, which ends with a line break.
        return value + "\n" if single and not value.endswith("\n") else value

    assert parsed.text == expected(text)
    assert parsed.html == expected(html)


@pytest.mark.parametrize(
    "text, html, content_type",
    [
        ("t", None, b"text/plain; charset=utf-8"),
        (None, "<p>h</p>", b"text/html; charset=utf-8"),
        ("t", "<p>h</p>", b"multipart/alternative"),
        (None, None, b"text/plain; charset=utf-8"),
    ],
)
def test_body_structure(text: str | None, html: str | None, content_type: bytes) -> None:
    raw = _compose(_draft(text=text, html=html)).raw
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nContent-Type: " + content_type in head
    if text and html:
        assert raw.index(b"text/plain") < raw.index(b"text/html")  # RFC 2046 §5.1.4


@pytest.mark.parametrize(
    "text, cte",
    [
        ("plain ascii", b"7bit"),
        ("x" * 998, b"7bit"),
        ("x" * 999, b"quoted-printable"),
        ("café", b"quoted-printable"),
    ],
)
def test_transfer_encoding_choice(text: str, cte: bytes) -> None:
    raw = _compose(_draft(text=text)).raw
    assert b"Content-Transfer-Encoding: " + cte + b"\r\n" in raw


def test_5000_char_single_line_text_has_no_line_over_998_octets() -> None:
    for text in ("y" * 5000, "ÿ" * 5000, "word " * 1000):
        composed, parsed = _roundtrip(_draft(text=text, html=f"<p>{text}</p>"))
        assert max(len(line) for line in composed.raw.split(b"\r\n")) <= 998
        assert parsed.text == text


ATTACHMENT_CASES = [
    OutgoingAttachment(b"%PDF-1.4 binary \x00\xff" * 50, "report.pdf"),
    OutgoingAttachment(b"hello", "résumé été.txt"),
    OutgoingAttachment(b"x" * 10, "Übersicht " * 20 + ".csv"),
    OutgoingAttachment(b"", "empty.bin", content_type="application/x-custom"),
    OutgoingAttachment(b"data", 'say "hi"; ok.txt'),
    OutgoingAttachment(b"\x89PNG", "logo.png", disposition="inline", content_id="<logo@agents.example.com>"),
    OutgoingAttachment(b"no name", None),
]


@pytest.mark.parametrize("attachment", ATTACHMENT_CASES, ids=lambda a: repr(a.filename)[:30])
def test_attachment_round_trips(attachment: OutgoingAttachment) -> None:
    html = '<p><img src="cid:logo@agents.example.com"></p>'
    composed, parsed = _roundtrip(_draft(text="body", html=html, attachments=[attachment]))
    assert parsed.text == "body" and parsed.html == html
    [got] = parsed.attachments
    assert got.content == attachment.content
    assert got.filename == attachment.filename
    assert got.disposition == attachment.disposition
    assert got.content_id == (attachment.content_id.strip("<>") if attachment.content_id else None)
    if attachment.content_type:
        assert got.content_type == attachment.content_type
    stdlib = _assert_stdlib_clean(composed.raw)
    [part] = list(stdlib.iter_attachments()) or [p for p in stdlib.walk() if p.get("Content-ID")]
    assert part.get_filename() == attachment.filename
    assert part.get_payload(decode=True) == attachment.content


@pytest.mark.parametrize(
    "filename, content_type",
    [
        ("a.pdf", "application/pdf"),
        ("a.png", "image/png"),
        ("a.unknownext", "application/octet-stream"),
        (None, "application/octet-stream"),
        ("a.tar.gz", "application/gzip"),
    ],
)
def test_attachment_type_is_guessed_from_filename(filename: str | None, content_type: str) -> None:
    _, parsed = _roundtrip(_draft(attachments=[OutgoingAttachment(b"x", filename)]))
    assert parsed.attachments[0].content_type == content_type


def test_attachments_are_base64_in_76_char_lines() -> None:
    raw = _compose(_draft(attachments=[OutgoingAttachment(bytes(range(256)) * 40, "b.bin")])).raw
    body = raw.split(b"Content-Transfer-Encoding: base64\r\n\r\n", 1)[1].split(b"\r\n--", 1)[0]
    lines = body.split(b"\r\n")
    assert all(len(line) == 76 for line in lines[:-1]) and 0 < len(lines[-1]) <= 76


def test_inline_images_with_cid_sit_in_multipart_related_around_the_html() -> None:
    draft = _draft(
        text="t",
        html='<img src="cid:a@x">',
        attachments=[
            OutgoingAttachment(b"img", "a.png", disposition="inline", content_id="a@x"),
            OutgoingAttachment(b"doc", "d.txt"),
        ],
    )
    composed, parsed = _roundtrip(draft)
    raw = composed.raw
    assert raw.index(b"multipart/mixed") < raw.index(b"multipart/alternative") < raw.index(b"multipart/related")
    assert raw.index(b"multipart/related") < raw.index(b"text/html") < raw.index(b"Content-ID: <a@x>")
    assert [(a.filename, a.disposition, a.content_id) for a in parsed.attachments] == [
        ("a.png", "inline", "a@x"),
        ("d.txt", "attachment", None),
    ]


def test_threading_headers_and_message_id() -> None:
    refs = [f"<ref{i}.{'x' * 30}@mail.example.net>" for i in range(12)]
    composed, parsed = _roundtrip(_draft(in_reply_to=refs[-1], references=refs))
    assert parsed.in_reply_to == refs[-1]
    assert parsed.references == refs
    assert parsed.message_id == composed.message_id
    assert composed.message_id.endswith("@agents.example.com>")
    assert b"\r\nReferences: <ref0." in composed.raw and b">\r\n <ref" in composed.raw  # folded


def test_given_message_id_and_date_are_used() -> None:
    when = datetime(2024, 12, 31, 23, 59, 1, tzinfo=timezone(timedelta(hours=2)))
    composed, parsed = _roundtrip(_draft(), message_id="<fixed.1@agents.example.com>", now=when)
    assert composed.message_id == "<fixed.1@agents.example.com>"
    assert b"Date: Tue, 31 Dec 2024 23:59:01 +0200\r\n" in composed.raw
    assert parsed.date == when


def test_idn_domain_message_id_uses_the_a_label() -> None:
    composed = compose(_draft(), domain="bücher.example", now=NOW)
    assert composed.message_id.endswith("@xn--bcher-kva.example>")


def test_new_message_id_is_unique_and_well_formed() -> None:
    ids = {new_message_id(DOMAIN) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("<") and i.endswith("@agents.example.com>") and " " not in i for i in ids)


def test_boundaries_are_deterministic_with_a_seed_and_random_without() -> None:
    draft = _draft(html="<p>x</p>", attachments=[OutgoingAttachment(b"a", "a.txt")])
    assert _compose(draft, message_id="<m@x.example>").raw == _compose(draft, message_id="<m@x.example>").raw
    one = compose(draft, domain=DOMAIN, now=NOW, message_id="<m@x.example>")
    two = compose(draft, domain=DOMAIN, now=NOW, message_id="<m@x.example>")
    assert one.raw != two.raw


def test_boundary_never_occurs_inside_a_part() -> None:
    text = "--=_test_1\n--=_test_2\nbody"
    composed, parsed = _roundtrip(_draft(text=text, html="<p>x</p>"))
    assert parsed.text == text
    assert b'boundary="=_test_3"' in composed.raw


def test_custom_headers_are_emitted_encoded_and_folded() -> None:
    headers = {
        "X-Agent-Id": "agent-42",
        "X-Label": "préférence numéro un",
        "X-Long": " ".join(["token"] * 40),
        "Sender": "Desk <desk@agents.example.com>",
    }
    composed, parsed = _roundtrip(_draft(headers=headers))
    for name, value in headers.items():
        assert parsed.headers[name] == value
    assert b"X-Label: =?utf-8?b?" in composed.raw
    assert b"X-Agent-Id: agent-42\r\n" in composed.raw


# --------------------------------------------------------------------------- List-Unsubscribe


@pytest.mark.parametrize(
    "mailto, url, expected, post",
    [
        ("mailto:unsubscribe+T0K@agents.example.com", None, "<mailto:unsubscribe+T0K@agents.example.com>", False),
        (None, "https://agents.example.com/u/T0K", "<https://agents.example.com/u/T0K>", True),
        (
            "mailto:u+T@agents.example.com",
            "https://agents.example.com/u/T?x=1",
            "<mailto:u+T@agents.example.com>, <https://agents.example.com/u/T?x=1>",
            True,
        ),
        (
            "mailto:u@agents.example.com",
            "http://agents.example.com/u",
            "<mailto:u@agents.example.com>, <http://agents.example.com/u>",
            False,
        ),
        (None, None, None, False),
    ],
    ids=["mailto", "https", "both", "http-no-post", "none"],
)
def test_list_unsubscribe(mailto: str | None, url: str | None, expected: str | None, post: bool) -> None:
    composed, parsed = _roundtrip(_draft(list_unsubscribe_mailto=mailto, list_unsubscribe_url=url))
    assert parsed.headers.get("List-Unsubscribe") == expected
    assert ("List-Unsubscribe-Post" in parsed.headers) is post
    if post:
        assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in composed.raw


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"list_unsubscribe_mailto": "https://x.example"}, "list_unsubscribe_mailto"),
        ({"list_unsubscribe_mailto": "mailto:a@b.example>, <javascript:x"}, "list_unsubscribe_mailto"),
        ({"list_unsubscribe_url": "javascript:alert(1)"}, "list_unsubscribe_url"),
        ({"list_unsubscribe_url": "https://x.example/a b"}, "list_unsubscribe_url"),
        ({"list_unsubscribe_url": "https://x.example/\r\nBcc: a@b.example"}, "list_unsubscribe_url"),
    ],
)
def test_bad_list_unsubscribe_is_refused(changes: dict[str, str], field: str) -> None:
    with pytest.raises(ComposeError) as caught:
        _compose(_draft(**changes))
    assert caught.value.field == field


# --------------------------------------------------------------------------- injection and validation

INJECTION_CASES = [
    ({"subject": "hi\r\nBcc: victim@example.org"}, "subject"),
    ({"subject": "hi\rX: y"}, "subject"),
    ({"subject": "hi\nX: y"}, "subject"),
    ({"subject": "=?utf-8?q?a=0D=0AX:_y?="}, "subject"),
    ({"subject": "=?utf-8?Q?a=0AX:_y?="}, "subject"),
    ({"subject": "ok =?UTF-8?B?YQ0KWDogeQ==?= end"}, "subject"),  # base64 of "a\r\nX: y"
    ({"subject": "=?utf-8?b?YQpYOiB5?="}, "subject"),  # base64 of "a\nX: y"
    ({"subject": "=?utf-8?b?YQ0KWDogeQ?="}, "subject"),  # unpadded base64, decoders accept it
    ({"subject": "=?iso-8859-1?q?a=85b?="}, "subject"),  # NEL in latin-1 is U+0085
    ({"subject": "bell\x07"}, "subject"),
    ({"subject": "line\u2028separator"}, "subject"),
    ({"headers": {"X-Foo": "a\r\nBcc: victim@example.org"}}, "headers.X-Foo"),
    ({"headers": {"X-Foo": "a\nb"}}, "headers.X-Foo"),
    ({"headers": {"X-Foo": "=?utf-8?q?a=0D=0AX-Injected:_1?="}}, "headers.X-Foo"),
    ({"headers": {"X-Foo": "=?utf-8?b?YQ0KWC1JbmplY3RlZDogMQ==?="}}, "headers.X-Foo"),
    ({"headers": {"X-Foo\r\nBcc": "victim@example.org"}}, "headers.X-Foo\\r\\nBcc"),
    ({"headers": {"X-Foo\n": "v"}}, "headers.X-Foo\\n"),
    ({"header_from": "Evil\r\nBcc: victim@example.org <a@agents.example.com>"}, "header_from"),
    ({"to": ["ok@example.org", "Bob\nBcc: v@example.org <bob@example.org>"]}, "to[1]"),
    ({"cc": ["=?utf-8?q?Bob=0D=0ABcc:_v@example.org?= <bob@example.org>"]}, "cc[0]"),
    ({"reply_to": ["=?utf-8?b?Qm9iDQpCY2M6IHZAZXhhbXBsZS5vcmc=?= <bob@example.org>"]}, "reply_to[0]"),
    ({"bcc": ["a@example.org\r\n"]}, "bcc[0]"),
    ({"attachments": [OutgoingAttachment(b"x", "a.txt\r\nContent-Type: text/html")]}, "attachments[0].filename"),
    ({"attachments": [OutgoingAttachment(b"x", "=?utf-8?q?a=0D=0Ab.txt?=")]}, "attachments[0].filename"),
    (
        {"attachments": [OutgoingAttachment(b"x", "a.txt"), OutgoingAttachment(b"x", "b", content_id="a\r\nb@x")]},
        "attachments[1].content_id",
    ),
    (
        {"attachments": [OutgoingAttachment(b"x", "a", content_type="text/plain\r\nX: y")]},
        "attachments[0].content_type",
    ),
    ({"in_reply_to": "<a@b>\r\nBcc: v@example.org"}, "in_reply_to"),
    ({"references": ["<a@b>", "<c@d>\nX: y"]}, "references[1]"),
]


@pytest.mark.parametrize("changes, field", INJECTION_CASES)
def test_header_injection_is_refused(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ComposeError) as caught:
        _compose(_draft(**changes))
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "name",
    [
        "From",
        "to",
        "CC",
        "Bcc",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "content-transfer-encoding",
        "Content-Disposition",
        "DKIM-Signature",
        "Return-Path",
        "Received",
        "ARC-Seal",
        "Authentication-Results",
    ],
)
def test_structural_header_override_is_refused(name: str) -> None:
    with pytest.raises(ComposeError) as caught:
        _compose(_draft(headers={name: "x@example.org"}))
    assert caught.value.field == f"headers.{name}"


@pytest.mark.parametrize(
    "changes, name",
    [
        ({"subject": "s"}, "Subject"),
        ({"in_reply_to": "<a@b>"}, "In-Reply-To"),
        ({"list_unsubscribe_url": "https://x.example/u"}, "List-Unsubscribe"),
        ({"reply_to": ["r@example.org"]}, "reply-to"),
    ],
)
def test_caller_header_may_not_duplicate_a_generated_one(changes: dict[str, Any], name: str) -> None:
    with pytest.raises(ComposeError) as caught:
        _compose(_draft(headers={name: "x"}, **changes))
    assert caught.value.field == f"headers.{name}"


def test_caller_subject_header_is_allowed_without_a_draft_subject() -> None:
    _, parsed = _roundtrip(_draft(subject=None, headers={"Subject": "from headers"}))
    assert parsed.subject == "from headers"


@pytest.mark.parametrize(
    "name, field",
    [
        ("X Foo", "headers.X Foo"),
        ("X:Foo", "headers.X:Foo"),
        ("Xé", "headers.X\\xe9"),
        ("X-\x00", "headers.X-\\x00"),
        ("X-" + "a" * 100, "headers.X-" + "a" * 98),
    ],
)
def test_header_name_must_be_ftext(name: str, field: str) -> None:
    with pytest.raises(ComposeError) as caught:
        _compose(_draft(headers={name: "v"}))
    assert caught.value.field == field


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"to": []}, "to"),
        ({"header_from": "not an address"}, "header_from"),
        ({"to": ["ok@example.org", "bad@@example.org"]}, "to[1]"),
        ({"to": ["a@example.org, b@example.org"]}, "to[0]"),
        ({"cc": ["x@-bad-.example"]}, "cc[0]"),
        (
            {"to": [f"r{i}@example.org" for i in range(60)], "bcc": [f"b{i}@example.org" for i in range(41)]},
            "recipients",
        ),
        ({"subject": "s" * 999}, "subject"),
        ({"in_reply_to": "not a msg id"}, "in_reply_to"),
        ({"headers": {"X-Word": "w" * 991}}, "headers.X-Word"),
        ({"attachments": [OutgoingAttachment(b"x", "a", disposition="form-data")]}, "attachments[0].disposition"),
        ({"attachments": [OutgoingAttachment(b"x", "a", content_type="text")]}, "attachments[0].content_type"),
        (
            {"attachments": [OutgoingAttachment(b"x", "a", content_type="multipart/mixed")]},
            "attachments[0].content_type",
        ),
        ({"attachments": [OutgoingAttachment(b"x", "a", content_id="a b@x")]}, "attachments[0].content_id"),
        ({"attachments": [OutgoingAttachment(b"x", "f" * 256)]}, "attachments[0].filename"),
    ],
)
def test_invalid_drafts_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ComposeError) as caught:
        _compose(_draft(**changes))
    assert caught.value.field == field


def test_exactly_100_recipients_are_allowed() -> None:
    composed = _compose(_draft(to=[f"r{i}@example.org" for i in range(100)]))
    assert len(composed.envelope_rcpt) == 100
    _assert_wire_form(composed.raw)


@pytest.mark.parametrize("size, ok", [(40_000, True), (200_000, False)])
def test_size_cap(size: int, ok: bool) -> None:
    draft = _draft(attachments=[OutgoingAttachment(b"\x00" * size, "z.bin")])
    if ok:
        assert len(_compose(draft, max_size=100_000).raw) <= 100_000
    else:
        with pytest.raises(ComposeError) as caught:
            _compose(draft, max_size=100_000)
        assert caught.value.field == "size"


def test_message_rfc822_attachment_is_sent_7bit() -> None:
    inner = b"From: a@example.org\r\nSubject: fwd\r\n\r\nbody\r\n"
    composed, parsed = _roundtrip(_draft(attachments=[OutgoingAttachment(inner, "fwd.eml", "message/rfc822")]))
    assert b"Content-Type: message/rfc822" in composed.raw
    assert b"Content-Transfer-Encoding: 7bit\r\n\r\n" + inner in composed.raw


# --------------------------------------------------------------------------- speed


def test_compose_text_and_html_is_fast() -> None:
    paragraph = "The quick brown fox jumps over the lazy dog. " * 2
    text = "\n".join([paragraph] * 28)  # about 2.5 kB
    html = "<html><body>" + "".join(f"<p>{paragraph}</p>" for _ in range(26)) + "</body></html>"
    draft = _draft(
        to=["Bob <bob@example.org>", "carol@example.net"], text=text, html=html, references=["<a@b.example>"]
    )
    assert 4500 < len(text) + len(html) < 5500

    def stdlib() -> None:  # the peer: the same message through the standard library's composer
        message = EmailMessage(policy=email.policy.SMTP)
        message["From"] = draft.header_from
        message["To"] = ", ".join(draft.to)
        message["Subject"] = "Hi"
        message["References"] = "<a@b.example>"
        message["Message-ID"] = "<x@example.com>"
        message.set_content(text)
        message.add_alternative(html, subtype="html")
        message.as_bytes()

    # Best of 5 interleaved rounds of CPU time: both sides share whatever else the machine runs
    # (an absolute bound failed under a loaded CI at 155 us against 150).
    ours = peer = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(200):
            compose(draft, domain=DOMAIN, now=NOW)
        ours = min(ours, (time.process_time() - started) / 200)
        started = time.process_time()
        for _ in range(20):
            stdlib()
        peer = min(peer, (time.process_time() - started) / 20)
    print(
        f"\ncompose text+html ({len(text) + len(html)} chars): {ours * 1e6:.1f} µs per message; "
        f"email.message.EmailMessage: {peer * 1e6:.1f} µs; ratio {ours / peer:.3f}"
    )
    # Measured here: ~0.04 (130 us against 3 ms). A 2x slowdown of compose fails.
    assert ours < 0.08 * peer
