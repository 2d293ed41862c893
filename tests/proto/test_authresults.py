"""Authentication-Results (RFC 8601): the field we build, and forged ones claiming our authserv-id removed."""

from __future__ import annotations

import pytest

from agentpost.proto.authresults import ResInfo, authserv_id_of, build, remove_ours


def test_build_folds_one_result_per_line_and_quotes_what_is_not_a_token() -> None:
    field = build(
        "mx.example",
        [
            ResInfo("spf", "pass", [("smtp.mailfrom", "example.com")]),
            ResInfo(
                "dkim", "fail", [("header.d", "example.com"), ("header.b", "ab/c+d==")], "body hash (mismatch)\r\nX: y"
            ),
            ResInfo("dmarc", "none", [("header.from", 'we"ird; x')]),
        ],
    )
    assert field == (
        b"Authentication-Results: mx.example;\r\n"
        b"\tspf=pass smtp.mailfrom=example.com;\r\n"
        b'\tdkim=fail (body hash ?mismatch? X: y) header.d=example.com header.b="ab/c+d==";\r\n'
        b'\tdmarc=none header.from="we?ird; x"\r\n'
    )
    assert build("mx.example", []) == b"Authentication-Results: mx.example;\r\n\tnone\r\n"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (" mx.example; spf=pass", "mx.example"),
        ("(comment) MX.Example. 1; none", "mx.example"),
        ("\r\n\tmx.example;\r\n\tdkim=pass", "mx.example"),
        ("mx.example", "mx.example"),
        ("", ""),
    ],
)
def test_authserv_id_of(value: str, expected: str) -> None:
    assert authserv_id_of(value) == expected


def test_remove_ours_drops_only_our_fields_in_the_top_header_block() -> None:
    raw = (
        b"Authentication-Results: mx.example;\r\n\tdkim=pass header.d=bank.example\r\n"
        b"Subject: hi\r\n"
        b"authentication-results : other.example; spf=pass\r\n"
        b"Authentication-Results: (forged) MX.EXAMPLE; dmarc=pass\r\n"
        b"\r\n"
        b"Authentication-Results: mx.example; body text stays\r\n"
    )
    assert remove_ours(raw, "mx.example") == (
        b"Subject: hi\r\n"
        b"authentication-results : other.example; spf=pass\r\n"
        b"\r\n"
        b"Authentication-Results: mx.example; body text stays\r\n"
    )
    plain = b"Subject: hi\r\n\r\nbody\r\n"
    assert remove_ours(plain, "mx.example") is plain
    lf = b"Authentication-Results: mx.example; x\nSubject: hi\n\nbody\n"
    assert remove_ours(lf, "mx.example") == b"Subject: hi\n\nbody\n"
