"""MTA-STS (RFC 8461) pure parts: the _mta-sts TXT record (§3.1), the policy body (§3.2), MX patterns (§4.1)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agentpost.net.mtasts import MAX_AGE_CAP, CachedPolicy, Policy, mx_matches, parse_policy, parse_record


@pytest.mark.parametrize(
    "records, expected",
    [
        (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
        (["v=STSv1; id=abc"], "abc"),
        (["v=STSv1;id=abc;"], "abc"),
        (["v=STSv1; id=abc; ext=value;"], "abc"),  # unknown fields are ignored
        (["v=spf1 -all", "v=STSv1; id=abc;"], "abc"),  # records not starting "v=STSv1;" are discarded
        ([], None),
        (["v=spf1 -all"], None),
        (["v=STSv1; id=a;", "v=STSv1; id=b;"], None),  # §3.1: more than one: no policy
        (["v=STSv1;"], None),  # no id
        (["v=STSv1; id=;"], None),
        (["v=STSv1; id=" + "a" * 33 + ";"], None),  # id is 1*32(ALPHA / DIGIT)
        (["v=STSv1; id=not-alnum;"], None),
        (["v=STSv1; id=abc; junk"], None),  # a field without "="
        (["v=STSv2; id=abc;"], None),
        (["v=STSv1 id=abc;"], None),
        (["V=STSv1; id=abc;"], None),  # case-sensitive
    ],
)
def test_txt_record(records: list[str], expected: str | None) -> None:
    assert parse_record(records) == expected


GOOD = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\n"


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD, Policy("enforce", ("mail.example.com", "*.example.net"), 86400)),
        (GOOD.replace("\r\n", "\n"), Policy("enforce", ("mail.example.com", "*.example.net"), 86400)),
        ("version: STSv1\nmode: testing\nmx: MX.Example.COM.\nmax_age: 0", Policy("testing", ("mx.example.com",), 0)),
        ("version: STSv1\nmode: none\nmax_age: 60\n", Policy("none", (), 60)),  # mode none needs no mx
        ("version:STSv1\nmode:enforce\nmx:a.example\nmax_age:5\n", Policy("enforce", ("a.example",), 5)),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 99999999999\n", None),  # > 10 digits
        (
            "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 9999999999\n",
            Policy("enforce", ("a.example",), MAX_AGE_CAP),  # capped at 31557600
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 60\nfuture_key: x\n",
            Policy("enforce", ("a.example",), 60),
        ),
        (
            "version: STSv1\nmode: testing\nmode: enforce\nmx: a.example\nmax_age: 60\n",
            Policy("testing", ("a.example",), 60),
        ),
        ("version: STSv1\nmode: enforce\nmax_age: 60\n", None),  # enforce without mx
        ("mode: enforce\nmx: a.example\nmax_age: 60\n", None),  # no version
        ("version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 60\n", None),
        ("version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 60\n", None),
        ("version: STSv1\nmode: strict\nmx: a.example\nmax_age: 60\n", None),
        ("version: STSv1\nmode: enforce\nmx: a.example\n", None),  # no max_age
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", None),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1e5\n", None),
        ("version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 60\n", None),  # empty label
        ("version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 60\n", None),  # one wildcard, left-most only
        ("version: STSv1\nmode: enforce\nmx: mail.*.example\nmax_age: 60\n", None),
        ("version: STSv1\nmode: enforce\nmx: -bad.example\nmax_age: 60\n", None),
        ("version: STSv1\nmode enforce\nmx: a.example\nmax_age: 60\n", None),  # a line without ":"
        ("<html><body>Not found</body></html>", None),
        ("", None),
    ],
)
def test_policy_body(text: str, expected: Policy | None) -> None:
    assert parse_policy(text) == expected


@pytest.mark.parametrize(
    "pattern, host, matches",
    [
        ("mail.example.com", "mail.example.com", True),
        ("mail.example.com", "MAIL.Example.com.", True),  # case-insensitive, final dot ignored
        ("mail.example.com", "mail2.example.com", False),
        ("*.example.com", "mx1.example.com", True),
        ("*.example.com", "example.com", False),  # the wildcard stands for exactly one label...
        ("*.example.com", "a.b.example.com", False),  # ...never two
        ("*.example.com", "mx1.example.net", False),
        ("*.example.com", "mx1example.com", False),
        ("*.mail.example.com", "mx.mail.example.com", True),
        ("example.com", "mx.example.com", False),  # no implicit subdomains
    ],
)
def test_mx_pattern(pattern: str, host: str, matches: bool) -> None:
    assert mx_matches(pattern, host) is matches


def test_policy_allows_any_of_its_patterns() -> None:
    policy = Policy("enforce", ("mx.example.com", "*.backup.example.com"), 60)
    assert policy.allows("mx.example.com") and policy.allows("b1.backup.example.com")
    assert not policy.allows("evil.example.org")
    assert not Policy("none", (), 60).allows("mx.example.com")


def test_cached_policy_expires_max_age_seconds_after_the_fetch() -> None:
    fetched = datetime(2026, 1, 1, tzinfo=UTC)
    cached = CachedPolicy("example.com", "id1", Policy("enforce", ("mx.example.com",), 3600), fetched)
    assert cached.expires_at == fetched + timedelta(hours=1)
    assert cached.valid(fetched + timedelta(minutes=59)) and not cached.valid(fetched + timedelta(hours=1))
