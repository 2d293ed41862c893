"""Bounces: the RFC 3464 parser and heuristics on the bounce corpus, classification, and DSNs we build."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agentpost.proto.dsn import BouncedRecipient, build_dsn, classify, parse_bounce
from agentpost.proto.mime import parse

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata"
BOUNCES = sorted((TESTDATA / "bounces").glob("*.eml"))

# The corpus rule for "is a bounce", decided without the parser under test: not one of the
# rfc3834-* auto-replies, and either a DSN / mailer-daemon message by mime.parse's own
# auto_submitted classification, or a From naming a mail system, or a bounce-like Subject.
_CORPUS_SENDER = re.compile(r"mailer-daemon|postmaster|mail delivery", re.IGNORECASE)
_CORPUS_SUBJECT = re.compile(
    r"undeliver|deliver(?:y|ed)|returned mail|failure|failed|could not be delivered|delayed|non remis|"
    r"error sending|配信できません|не доставлено|Недоставленное",
    re.IGNORECASE,
)
_STATUS_FIELD = re.compile(rb"^Status[ \t]*:[ \t]*([245])\.\d{1,3}\.\d{1,3}", re.IGNORECASE | re.MULTILINE)


def _is_bounce(path: Path, raw: bytes) -> bool:
    if path.name.startswith("rfc3834-"):
        return False
    parsed = parse(raw)
    if parsed.auto_submitted == "bounce":
        return True
    sender = next((v for k, v in parsed.headers.items() if k.lower() == "from"), "")
    return bool(_CORPUS_SENDER.search(sender) or (parsed.subject and _CORPUS_SUBJECT.search(parsed.subject)))


def test_bounce_corpus_names_recipients_and_agrees_with_status_class() -> None:
    assert BOUNCES, "the bounce corpus is missing"
    bounces = found = with_status = agreeing = 0
    excluded: list[str] = []
    missed: list[str] = []
    disagreed: list[str] = []
    for path in BOUNCES:
        raw = path.read_bytes()
        if not _is_bounce(path, raw):
            excluded.append(path.name)
            continue
        bounces += 1
        report = parse_bounce(raw)
        bounce_to = {a.lower() for a in parse(raw).to}
        # Found: a recipient that is an address and not the bounce's own addressee (our sender).
        if report is not None and any(
            "@" in r.address and r.address.lower() not in bounce_to and f"<{r.address.lower()}>" not in bounce_to
            for r in report.recipients
        ):
            found += 1
        else:
            missed.append(path.name)
        classes = set(_STATUS_FIELD.findall(raw))
        if classes:
            with_status += 1
            expected = "Permanent" if b"5" in classes else "Transient"
            if report is not None and report.bounce_type == expected:
                agreeing += 1
            else:
                disagreed.append(f"{path.name}: {report.bounce_type if report else None} != {expected}")

    print(f"\nbounce corpus: {len(BOUNCES)} files, {bounces} bounces, excluded {len(excluded)}: {', '.join(excluded)}")
    print(
        f"bounce corpus: recipient found {found}/{bounces} ({100 * found / bounces:.1f}%), "
        f"Status class agreement {agreeing}/{with_status} ({100 * agreeing / with_status:.1f}%)"
    )
    if missed:
        print(f"bounce corpus: no recipient in {', '.join(missed)}")
    assert found / bounces >= 0.95, missed
    assert agreeing == with_status, disagreed


def test_non_bounces_in_the_corpus_are_not_reported() -> None:
    for name in ("rfc3834-01.eml", "rfc3834-03.eml", "rfc3834-05.eml"):
        assert parse_bounce((TESTDATA / "bounces" / name).read_bytes()) is None


@pytest.mark.parametrize(
    "status, diagnostic, reply_code, expected",
    [
        ("5.1.1", None, None, ("Permanent", "MailboxDoesNotExist")),
        ("5.1.0", None, None, ("Permanent", "MailboxDoesNotExist")),
        ("5.1.10", None, None, ("Permanent", "MailboxDoesNotExist")),
        ("5.1.2", None, None, ("Permanent", "DomainNotFound")),
        ("5.2.1", None, None, ("Permanent", "MailboxDisabled")),
        ("5.2.2", None, None, ("Permanent", "MailboxFull")),
        ("4.2.2", None, None, ("Transient", "MailboxFull")),
        ("5.3.4", None, None, ("Permanent", "MessageTooLarge")),
        ("5.2.3", None, None, ("Permanent", "MessageTooLarge")),
        ("5.7.1", "smtp; 550 5.7.1 Relaying denied", None, ("Permanent", "PolicyRejected")),
        ("5.7.1", "smtp; 554 5.7.1 Message rejected as spam", None, ("Permanent", "ContentRejected")),
        ("5.7.26", None, None, ("Permanent", "PolicyRejected")),
        ("4.4.4", None, None, ("Transient", "DomainNotFound")),
        ("4.4.1", None, None, ("Transient", "NetworkError")),
        ("4.4.7", None, None, ("Transient", "NetworkError")),
        ("5.0.0", "smtp; 550 User unknown", None, ("Permanent", "MailboxDoesNotExist")),
        ("4.0.0", "smtp; 550 5.1.1 User unknown", None, ("Transient", "MailboxDoesNotExist")),  # Status class wins
        ("5.1.1 (user unknown)", None, None, ("Permanent", "MailboxDoesNotExist")),
        (None, "smtp; 550 5.1.1 <a@b.example>: User unknown", None, ("Permanent", "MailboxDoesNotExist")),
        (None, None, 550, ("Permanent", "General")),
        (None, None, 551, ("Permanent", "General")),
        (None, None, 553, ("Permanent", "General")),
        (None, "mailbox unavailable", 450, ("Transient", "MailboxDoesNotExist")),
        (None, None, 421, ("Transient", "General")),
        (None, None, 451, ("Transient", "General")),
        (None, None, 452, ("Transient", "General")),
        (None, "550 quota exceeded", None, ("Permanent", "MailboxFull")),
        (None, "mailbox full", None, ("Transient", "MailboxFull")),
        (None, "over quota", None, ("Transient", "MailboxFull")),
        (None, "user unknown", None, ("Permanent", "MailboxDoesNotExist")),
        (None, "the address does not exist", None, ("Permanent", "MailboxDoesNotExist")),
        (None, None, None, ("Permanent", "General")),
    ],
)
def test_classify(
    status: str | None, diagnostic: str | None, reply_code: int | None, expected: tuple[str, str]
) -> None:
    assert classify(status, diagnostic, reply_code) == expected


_ORIGINAL = (
    b"From: Agent <agent@agents.example>\r\nTo: nobody@remote.example\r\nSubject: hi\r\n"
    b"Message-ID: <orig.1@agents.example>\r\nDate: Thu, 1 May 2025 10:00:00 +0000\r\n\r\nbody text\r\n"
)
_RECIPIENTS = [
    BouncedRecipient("nobody@remote.example", "5.1.1", "failed", "smtp; 550 5.1.1 User unknown", "mx.remote.example"),
    BouncedRecipient("full@Remote.Example", "4.2.2", "delayed", "smtp; 452 4.2.2 Mailbox full", None),
]


def _dsn(**overrides: object) -> bytes:
    args: dict[str, object] = {
        "reporting_mta": "mx.agents.example",
        "original_message_id": "<orig.1@agents.example>",
        "original_headers": _ORIGINAL,
        "recipients": _RECIPIENTS,
        "arrival_date": datetime(2025, 5, 1, 10, 0, tzinfo=UTC),
        "from_address": "MAILER-DAEMON@agents.example",
        "to_address": "agent@agents.example",
        "message_id": "<dsn.1@agents.example>",
        "human_text": "Your message could not be delivered.\nSee below.",
    }
    args.update(overrides)
    return build_dsn(**args)  # type: ignore[arg-type]


def test_build_dsn_round_trips_through_parse_bounce() -> None:
    raw = _dsn()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"report-type=delivery-status" in raw and b"Auto-Submitted: auto-replied\r\n" in raw
    assert b"Content-Type: text/rfc822-headers" in raw and b"body text" not in raw
    report = parse_bounce(raw)
    assert report is not None and report.kind == "dsn"
    assert [(r.address, r.status, r.action) for r in report.recipients] == [
        ("nobody@remote.example", "5.1.1", "failed"),
        ("full@remote.example", "4.2.2", "delayed"),
    ]
    assert report.recipients[0].diagnostic == "smtp; 550 5.1.1 User unknown"
    assert report.recipients[0].remote_mta == "mx.remote.example"
    assert report.original_message_id == "<orig.1@agents.example>"
    assert (report.bounce_type, report.sub_type) == ("Permanent", "MailboxDoesNotExist")
    parsed = parse(raw)
    assert parsed.auto_submitted == "bounce" and parsed.message_id == "<dsn.1@agents.example>"


def test_build_dsn_non_ascii_text_is_quoted_printable() -> None:
    raw = _dsn(human_text="Nachricht unzustellbar: Empfänger unbekannt")
    assert b"Content-Transfer-Encoding: quoted-printable" in raw
    assert parse(raw).text is not None and "Empfänger" in (parse(raw).text or "")


@pytest.mark.parametrize(
    "field, value",
    [
        ("reporting_mta", "mx.agents.example\r\nBcc: x@y.example"),
        ("from_address", "a@b.example\nX: y"),
        ("to_address", "a@b.example\r"),
        ("message_id", "<a@b>\r\nX: y"),
        ("original_message_id", "<a@b>\nX: y"),
        ("to_address", "=?utf-8?q?a=0D=0AX:_y?= <a@b.example>"),
        ("from_address", "=?utf-8?b?YQ0KWDogeQ==?= <a@b.example>"),
    ],
)
def test_build_dsn_rejects_cr_lf_in_header_values(field: str, value: str) -> None:
    with pytest.raises(ValueError):
        _dsn(**{field: value})


def test_build_dsn_rejects_cr_lf_in_recipient_fields() -> None:
    with pytest.raises(ValueError):
        _dsn(recipients=[BouncedRecipient("a@b.example", "5.1.1", "failed", "smtp; 550\r\nX: y", None)])
    with pytest.raises(ValueError):
        _dsn(recipients=[BouncedRecipient("a@b.example\nX: y", "5.1.1", "failed", None, None)])


def _report(status_fields: str, top: str = "") -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example\r\nTo: agent@agents.example\r\nSubject: Delivery Status Notification\r\n"
        f"{top}MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nReport.\r\n"
        "--b\r\nContent-Type: multipart/mixed; boundary=inner\r\n\r\n"
        f"--inner\r\nContent-Type: message/delivery-status\r\n\r\n{status_fields}\r\n--inner--\r\n--b--\r\n"
    ).encode()


def test_nested_delivery_status_with_case_insensitive_fields_and_comments() -> None:
    raw = _report(
        "reporting-mta: dns; mx.example\r\noriginal-envelope-id: env-42\r\n\r\n"
        "ORIGINAL-RECIPIENT: rfc822;Orig@Example.COM\r\nfinal-recipient: RFC822; <User@Example.COM>\r\n"
        "ACTION: Failed\r\nstatus: 5.2.2 (mailbox full)\r\nDiagnostic-Code: smtp; 552 5.2.2\r\n  over quota\r\n",
        top="In-Reply-To: <o@agents.example>\r\n",
    )
    report = parse_bounce(raw)
    assert report is not None
    assert report.recipients == [
        BouncedRecipient("User@example.com", "5.2.2", "failed", "smtp; 552 5.2.2 over quota", None)
    ]
    assert report.original_envelope_id == "env-42"
    assert report.original_message_id == "<o@agents.example>"
    assert (report.bounce_type, report.sub_type) == ("Permanent", "MailboxFull")


def test_delivered_only_dsn_is_not_a_bounce() -> None:
    raw = _report("Reporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; a@b.example\r\nAction: delivered\r\n")
    assert parse_bounce(raw) is None


def test_ordinary_message_is_not_a_bounce() -> None:
    raw = b"From: a@b.example\r\nTo: c@d.example\r\nSubject: lunch\r\n\r\nuser@x.example: 550 is a fun number\r\n"
    assert parse_bounce(raw) is None
    assert parse_bounce(b"") is None
    assert parse_bounce(b"\xff\x00garbage") is None


def test_exim_x_failed_recipients_is_used() -> None:
    raw = (
        b"From: Mail Delivery System <Mailer-Daemon@mx.example>\r\nTo: agent@agents.example\r\n"
        b"Subject: Mail delivery failed: returning message to sender\r\n"
        b"X-Failed-Recipients: gone@remote.example\r\n\r\n"
        b"This message was created automatically by mail delivery software.\r\n\r\n"
        b"  gone@remote.example\r\n    host mx.remote.example [192.0.2.1]\r\n"
        b"    SMTP error from remote mail server after RCPT TO:<gone@remote.example>:\r\n"
        b"    550 5.1.1 User unknown\r\n"
    )
    report = parse_bounce(raw)
    assert report is not None and report.kind == "heuristic"
    assert [r.address for r in report.recipients] == ["gone@remote.example"]
    assert report.recipients[0].status == "5.1.1"
    assert (report.bounce_type, report.sub_type) == ("Permanent", "MailboxDoesNotExist")


def test_only_the_first_2_mb_are_looked_at() -> None:
    raw = _dsn() + b"x" * (3 * 1024 * 1024)
    assert parse_bounce(raw) is not None


def test_parse_bounce_of_a_typical_dsn_takes_under_1_ms() -> None:
    raw = _dsn()
    raw = raw.replace(b"See below.", b"See below.\r\n" + b"More explanation text here. " * 120)
    assert 4_000 <= len(raw) <= 7_000
    parse_bounce(raw)
    runs = 200
    start = time.process_time()  # CPU time: a busy machine's other processes don't count
    for _ in range(runs):
        parse_bounce(raw)
    per_call = (time.process_time() - start) / runs
    print(f"\nparse_bounce: {per_call * 1e6:.0f} us for a {len(raw)} byte DSN")
    assert per_call < 0.001
