"""ARC chain validation: dkimpy's one- and two-hop chains pass as dkimpy says; every break in the chain fails.

The chains are sealed with ``dkim.arc_sign`` (dkimpy, a second implementation); keys are served by
``FakeResolver`` and, for ``dkim.arc_verify``, by a ``dnsfunc`` over the same zone.
"""

from __future__ import annotations

import asyncio
import re

import dkim  # type: ignore[import-untyped]  # dkimpy: the sealer and a second opinion
import pytest
from cryptography.hazmat.primitives import serialization

from agentpost.mailauth.arc import ArcResult, verify
from agentpost.mailauth.dkim import RSA_SHA256, DkimKey, generate_key
from agentpost.net.dns import FakeResolver

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z

ORIGINAL = (
    b"From: Bob <bob@origin.example>\r\n"
    b"To: agent@agents.example\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Message-ID: <m1@origin.example>\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"The numbers are in.\r\n"
)


def pkcs1(key: DkimKey) -> bytes:
    private = serialization.load_pem_private_key(key.private_pem, None)
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def keys() -> list[DkimKey]:
    return [generate_key("forwarder.example", "arc1", RSA_SHA256), generate_key("list.example", "arc2", RSA_SHA256)]


@pytest.fixture
def resolver(keys: list[DkimKey]) -> FakeResolver:
    txt = {key.dns_name: key.dns_txt() for key in keys}
    return FakeResolver(
        {name: {"TXT": [[value[i : i + 255] for i in range(0, len(value), 255)]]} for name, value in txt.items()}
    )


def seal(message: bytes, key: DkimKey, results: str) -> bytes:
    """One hop: the hop's Authentication-Results, then the ARC set dkimpy seals over it, on top."""
    received = f"Authentication-Results: {key.domain}; {results}\r\n".encode() + message
    arc_set = dkim.arc_sign(
        received, key.selector.encode(), key.domain.encode(), pkcs1(key), key.domain.encode(), timestamp=NOW
    )
    assert len(arc_set) == 3
    return b"".join(arc_set) + received


@pytest.fixture
def one_hop(keys: list[DkimKey]) -> bytes:
    return seal(ORIGINAL, keys[0], "spf=pass smtp.mailfrom=origin.example; dmarc=pass header.from=origin.example")


@pytest.fixture
def two_hops(keys: list[DkimKey], one_hop: bytes) -> bytes:
    # The list rewrites the subject and appends a footer: the first AMS no longer verifies.
    changed = one_hop.replace(b"Subject: quarterly", b"Subject: [list] quarterly") + b"--\r\nlist footer\r\n"
    return seal(changed, keys[1], "arc=pass; dmarc=fail header.from=origin.example")


def run(resolver: FakeResolver, message: bytes) -> ArcResult:
    return asyncio.run(verify(resolver, message))


def dkimpy_says(message: bytes, resolver: FakeResolver) -> str:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        values = asyncio.run(resolver.txt(name.decode().rstrip(".")))
        return values[0].encode() if values else None

    cv, _results, _reason = dkim.arc_verify(message, dnsfunc=dnsfunc)
    return {dkim.CV_Pass: "pass", dkim.CV_Fail: "fail", dkim.CV_None: "none"}.get(cv, "fail")


def test_one_hop_chain_passes_as_dkimpy_says(one_hop: bytes, resolver: FakeResolver) -> None:
    result = run(resolver, one_hop)
    assert result == ArcResult(
        "pass", "", instances=1, oldest_pass=0, sealers=("forwarder.example",), cv=("none",), sealed_dmarc="pass"
    )
    assert dkimpy_says(one_hop, resolver) == "pass"


def test_two_hop_chain_passes_and_oldest_pass_is_the_hop_after_the_change(
    two_hops: bytes, resolver: FakeResolver
) -> None:
    result = run(resolver, two_hops)
    assert (result.result, result.instances, result.oldest_pass) == ("pass", 2, 2)
    assert result.sealers == ("forwarder.example", "list.example") and result.newest_sealer == "list.example"
    assert result.cv == ("none", "pass") and result.sealed_dmarc == "fail"
    assert dkimpy_says(two_hops, resolver) == "pass"


def test_two_hop_chain_without_changes_has_oldest_pass_zero(
    keys: list[DkimKey], one_hop: bytes, resolver: FakeResolver
) -> None:
    message = seal(one_hop, keys[1], "arc=pass; dmarc=pass header.from=origin.example")
    assert (run(resolver, message).result, run(resolver, message).oldest_pass) == ("pass", 0)


def test_bare_lf_line_ends_still_pass(two_hops: bytes, resolver: FakeResolver) -> None:
    assert run(resolver, two_hops.replace(b"\r\n", b"\n")).result == "pass"


def test_message_without_arc_fields_is_none(resolver: FakeResolver) -> None:
    assert run(resolver, ORIGINAL) == ArcResult("none")
    assert resolver.queries == []


def _field(message: bytes, name: bytes, instance: int) -> bytes:
    """The raw field (folded, with its CRLF) of kind ``name`` and instance ``instance``."""
    pattern = rb"^" + re.escape(name) + rb":[ \t]*i=" + str(instance).encode() + rb";.*?\r\n(?![ \t])"
    match = re.search(pattern, message, re.MULTILINE | re.DOTALL | re.IGNORECASE)
    assert match is not None, (name, instance)
    return match.group(0)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param(
            lambda m: m.replace(b"list footer", b"list f00ter"), "body hash", id="body changed after the last AMS"
        ),
        pytest.param(
            lambda m: m.replace(b"Subject: [list]", b"Subject: [LIST]"),
            "ARC-Message-Signature i=2",
            id="signed header changed",
        ),
        pytest.param(
            lambda m: m.replace(
                _field(m, b"ARC-Authentication-Results", 1),
                _field(m, b"ARC-Authentication-Results", 1).replace(b"dmarc=pass", b"dmarc=fail"),
            ),
            "ARC-Seal i=",
            id="first AAR tampered",
        ),
        pytest.param(
            lambda m: m.replace(_field(m, b"ARC-Seal", 1), _field(m, b"ARC-Seal", 1).replace(b"t=", b"t=1")),
            "ARC-Seal i=2",
            id="first AS tampered",
        ),
        pytest.param(
            lambda m: m.replace(
                _field(m, b"ARC-Seal", 2),
                _field(m, b"ARC-Seal", 2)
                .replace(b"d=list.example", b"d=forwarder.example; s=arc1")
                .replace(b"s=arc2;", b""),
            ),
            "ARC-Seal i=2",
            id="newest AS claims another sealer",
        ),
        pytest.param(
            lambda m: m.replace(_field(m, b"ARC-Seal", 1), b""), "instance 1 has no ARC-Seal", id="AS missing"
        ),
        pytest.param(
            lambda m: m.replace(_field(m, b"ARC-Message-Signature", 1), b""),
            "instance 1 has no ARC-Message-Signature",
            id="AMS missing",
        ),
        pytest.param(
            lambda m: _field(m, b"ARC-Authentication-Results", 1) + m,
            "instance 1 has 2 ARC-Authentication-Results",
            id="AAR duplicated",
        ),
        pytest.param(
            lambda m: re.sub(rb"^(ARC-[A-Za-z-]+:[ \t]*)i=1;", rb"\1i=3;", m, flags=re.MULTILINE),
            "instance 1 has no",
            id="instance 1 renumbered: a gap",
        ),
        pytest.param(
            lambda m: (
                b"".join(
                    _field(m, name, 1)
                    for name in (b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results")
                )
                + m
            ),
            "instance 1 has 2",
            id="whole set 1 duplicated",
        ),
        pytest.param(lambda m: m.replace(b"cv=pass", b"cv=fail"), "cv=fail", id="newest AS says cv=fail"),
        pytest.param(lambda m: m.replace(b"cv=none", b"cv=pass"), "i=1 has cv=pass", id="cv=pass at i=1"),
        pytest.param(lambda m: m.replace(b"cv=pass", b"cv=none"), "i=2 has cv=none", id="cv=none above i=1"),
        pytest.param(lambda m: re.sub(rb"(ARC-Seal:[ \t]*)i=2;", rb"\1i=51;", m), "1 to 50", id="instance above 50"),
        pytest.param(
            lambda m: m.replace(b"h=from :", b"h=arc-seal : from :"), "includes ARC-Seal", id="AMS signs ARC-Seal"
        ),
    ],
)
def test_every_break_in_the_chain_fails(two_hops: bytes, resolver: FakeResolver, change: object, reason: str) -> None:
    assert callable(change)
    message = change(two_hops)
    assert message != two_hops
    result = run(resolver, message)
    assert result.result == "fail" and reason in result.reason, result
    assert result.oldest_pass is None
    assert dkimpy_says(message, resolver) == "fail"


def test_a_one_hop_chain_with_a_changed_body_fails(one_hop: bytes, resolver: FakeResolver) -> None:
    message = one_hop.replace(b"numbers are in", b"numbers are out")
    result = run(resolver, message)
    assert result.result == "fail" and "ARC-Message-Signature i=1: body hash" in result.reason
    assert dkimpy_says(message, resolver) == "fail"


def test_missing_key_fails(two_hops: bytes, keys: list[DkimKey]) -> None:
    resolver = FakeResolver({keys[0].dns_name: {"TXT": [keys[0].dns_txt()]}})
    result = run(resolver, two_hops)
    assert result.result == "fail" and "no key at arc2._domainkey.list.example" in result.reason


def test_key_lookup_servfail_is_temperror_not_a_verdict(two_hops: bytes, keys: list[DkimKey]) -> None:
    resolver = FakeResolver({keys[0].dns_name: {"TXT": [keys[0].dns_txt()]}}, servfail=[keys[1].dns_name])
    result = run(resolver, two_hops)
    assert result.result == "temperror" and "SERVFAIL" in result.reason
    assert result.sealers == ("forwarder.example", "list.example")


def test_a_failure_stays_a_failure_when_another_lookup_fails_temporarily(two_hops: bytes, keys: list[DkimKey]) -> None:
    resolver = FakeResolver({keys[1].dns_name: {"TXT": [keys[1].dns_txt()]}}, servfail=[keys[0].dns_name])
    message = two_hops.replace(b"list footer", b"list f00ter")
    assert run(resolver, message).result == "fail"


def test_key_lookups_run_once_per_key_name(two_hops: bytes, resolver: FakeResolver) -> None:
    run(resolver, two_hops)
    assert sorted(resolver.queries) == [
        ("arc1._domainkey.forwarder.example", "TXT"),
        ("arc2._domainkey.list.example", "TXT"),
    ]


def test_more_than_150_arc_fields_fail_without_dns(resolver: FakeResolver) -> None:
    fields = b"".join(b"ARC-Authentication-Results: i=%d; x.example; none\r\n" % (i % 50 + 1) for i in range(151))
    result = run(resolver, fields + ORIGINAL)
    assert result.result == "fail" and resolver.queries == []
