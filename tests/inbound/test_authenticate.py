"""Inbound authentication and the verdict on it: SPF + DKIM + ARC + DMARC on a zone in a dict, then decide()."""

from __future__ import annotations

import re

import dkim  # type: ignore[import-untyped]  # dkimpy seals the ARC chains
import pytest
from cryptography.hazmat.primitives import serialization

from agentpost import model
from agentpost.inbound.authenticate import Authenticator, header_from_domains
from agentpost.inbound.verdict import DEFAULT_POLICY, InboxPolicy, decide
from agentpost.mailauth.dkim import RSA_SHA256, DkimKey, DkimSigner, generate_key
from agentpost.model import Envelope
from agentpost.net.dns import CachingResolver, FakeResolver
from agentpost.proto import codes

HOST = "mx.agentpost.test"
SENDER_IP = "192.0.2.25"
OTHER_IP = "198.51.100.7"


def message(from_domain: str) -> bytes:
    return (
        f"From: Bob <bob@{from_domain}>\r\n"
        f"To: agent@agents.example\r\n"
        f"Subject: hello\r\n"
        f"Message-ID: <m1@{from_domain}>\r\n"
        f"\r\n"
        f"Hello there.\r\n"
    ).encode()


@pytest.fixture(scope="module")
def key() -> DkimKey:
    return generate_key("signed.example", "s1", RSA_SHA256)


def zone(key: DkimKey) -> dict[str, dict[str, list[str]]]:
    return {
        # p=reject, SPF authorises SENDER_IP, DKIM key published
        "signed.example": {"TXT": [f"v=spf1 ip4:{SENDER_IP} -all"]},
        "_dmarc.signed.example": {"TXT": ["v=DMARC1; p=reject"]},
        key.dns_name: {"TXT": [key.dns_txt()]},
        "reject.example": {"TXT": [f"v=spf1 ip4:{SENDER_IP} -all"]},
        "_dmarc.reject.example": {"TXT": ["v=DMARC1; p=reject"]},
        "quarantine.example": {"TXT": ["v=spf1 -all"]},
        "_dmarc.quarantine.example": {"TXT": ["v=DMARC1; p=quarantine"]},
        "testing.example": {"TXT": ["v=spf1 -all"]},
        "_dmarc.testing.example": {"TXT": ["v=DMARC1; p=reject; t=y"]},
        "none.example": {"TXT": ["v=spf1 -all"]},
        "_dmarc.none.example": {"TXT": ["v=DMARC1; p=none"]},
        "nodmarc.example": {"TXT": [f"v=spf1 ip4:{SENDER_IP} -all"]},
        "broken.example": {"TXT": [f"v=spf1 ip4:{SENDER_IP} -all"]},
        "helo.example": {"TXT": [f"v=spf1 ip4:{SENDER_IP} -all"]},
    }


def envelope(mail_from: str, ip: str = SENDER_IP, helo: str = "helo.example") -> Envelope:
    return Envelope(mail_from, ["agent@agents.example"], helo=helo, client_ip=ip)


async def check(
    resolver: FakeResolver,
    env: Envelope,
    raw: bytes,
    *,
    internal: bool = False,
    trusted: tuple[str, ...] = (),
    sealers: tuple[str, ...] = (),
    policy: InboxPolicy = DEFAULT_POLICY,
) -> tuple[str, dict[str, object], bytes, tuple[str, ...], codes.Reply | None]:
    auth = await Authenticator(resolver, HOST, trusted, sealers).authenticate(env, raw, internal=internal)
    verdict = decide(auth, policy)
    return verdict.verdict, auth.as_dict(verdict.verdict, verdict.reasons), auth.header(), verdict.labels, verdict.reply


async def test_aligned_dkim_and_spf_pass_dmarc(key: DkimKey) -> None:
    raw = message("signed.example")
    signed = DkimSigner([key]).sign(raw) + raw
    verdict, auth, header, labels, reply = await check(FakeResolver(zone(key)), envelope("bob@signed.example"), signed)
    assert (verdict, labels, reply) == ("pass", (), None)
    assert auth["spf"]["result"] == "pass" and auth["spf"]["domain"] == "signed.example"  # type: ignore[index]
    assert auth["spf"]["helo"] == {"result": "pass", "domain": "helo.example"}  # type: ignore[index]
    assert [(d["result"], d["domain"], d["selector"]) for d in auth["dkim"]] == [  # type: ignore[attr-defined]
        ("pass", "signed.example", "s1")
    ]
    assert auth["dmarc"]["result"] == "pass" and auth["dmarc"]["policy"] == "reject"  # type: ignore[index]
    assert auth["aligned"] == {"spf": "signed.example", "dkim": ["signed.example"]}
    text = header.decode()
    assert text.startswith(f"Authentication-Results: {HOST};\r\n\t")
    assert re.search(r"spf=pass \([^)]*\) smtp.mailfrom=signed.example;", text)
    assert "spf=pass smtp.helo=helo.example" in text
    assert "dkim=pass header.d=signed.example header.s=s1 header.a=rsa-sha256 header.b=" in text
    assert "dmarc=pass (p=reject dis=none) header.from=signed.example" in text
    assert text.endswith("\r\n") and all(len(line) < 998 for line in text.split("\r\n"))


@pytest.mark.parametrize("from_domain", ["signed.example", "reject.example", "none.example"])
async def test_a_warm_cache_gives_the_verdicts_of_a_cold_one(key: DkimKey, from_domain: str) -> None:
    # Cold: the checks run concurrently; warm (every first question cached): one after the other.
    fake = FakeResolver(zone(key))
    authenticator = Authenticator(CachingResolver(fake), HOST, ())
    raw = message(from_domain)
    signed = DkimSigner([key]).sign(raw) + raw
    env = envelope(f"bob@{from_domain}")
    cold = await authenticator.authenticate(env, signed)
    asked = len(fake.queries)
    warm = await authenticator.authenticate(env, signed)
    assert len(fake.queries) == asked  # nothing asked again
    assert warm.header() == cold.header()
    assert warm.as_dict("pass", ()) == cold.as_dict("pass", ())


@pytest.mark.parametrize(
    ("from_domain", "expected", "labels", "reply"),
    [
        ("reject.example", "reject", (), codes.R550_DMARC_REJECT),
        ("quarantine.example", "quarantine", (model.LABEL_SPAM, model.LABEL_UNAUTHENTICATED), None),
        ("testing.example", "quarantine", (model.LABEL_SPAM, model.LABEL_UNAUTHENTICATED), None),  # t=y
        ("none.example", "unauthenticated", (model.LABEL_UNAUTHENTICATED,), None),
        ("nodmarc.example", "unauthenticated", (model.LABEL_UNAUTHENTICATED,), None),
    ],
)
async def test_forged_from_from_an_unauthorised_ip(
    key: DkimKey, from_domain: str, expected: str, labels: tuple[str, ...], reply: codes.Reply | None
) -> None:
    verdict, auth, header, got_labels, got_reply = await check(
        FakeResolver(zone(key)),
        envelope(f"bob@{from_domain}", ip=OTHER_IP, helo="unknown.invalid"),
        message(from_domain),
    )
    assert (verdict, got_labels, got_reply) == (expected, labels, reply)
    assert auth["verdict"] == expected and auth["reasons"]
    assert b"dkim=none" in header


async def test_spf_pass_without_dmarc_record_is_neutral_not_hidden(key: DkimKey) -> None:
    verdict, auth, _, labels, reply = await check(
        FakeResolver(zone(key)), envelope("bob@nodmarc.example"), message("other.example")
    )
    assert (verdict, labels, reply) == ("neutral", (), None)
    assert auth["dmarc"]["result"] == "none"  # type: ignore[index]


async def test_dmarc_lookup_servfail_defers_451(key: DkimKey) -> None:
    resolver = FakeResolver(zone(key), servfail_types=[("_dmarc.reject.example", "TXT")])
    verdict, _, _, _, reply = await check(
        resolver, envelope("bob@reject.example", ip=OTHER_IP), message("reject.example")
    )
    assert verdict == "temperror" and reply == codes.R451_AUTH_TEMPFAIL


async def test_dmarc_fail_after_an_spf_dns_failure_defers_instead_of_rejecting(key: DkimKey) -> None:
    resolver = FakeResolver(zone(key), servfail_types=[("reject.example", "TXT")])
    verdict, auth, _, _, reply = await check(resolver, envelope("bob@reject.example"), message("reject.example"))
    assert auth["spf"]["result"] == "temperror"  # type: ignore[index]
    assert verdict == "temperror" and reply == codes.R451_AUTH_TEMPFAIL


@pytest.mark.parametrize(
    ("internal", "ip", "note"),
    [(True, OTHER_IP, "local delivery"), (False, "127.0.0.1", "trusted"), (False, "::ffff:127.0.0.2", "trusted")],
)
async def test_internal_and_trusted_mail_is_not_checked(key: DkimKey, internal: bool, ip: str, note: str) -> None:
    resolver = FakeResolver(zone(key))
    verdict, auth, header, labels, reply = await check(
        resolver,
        envelope("bob@reject.example", ip=ip),
        message("reject.example"),
        internal=internal,
        trusted=("127.0.0.0/8",),
    )
    assert (verdict, labels, reply) == ("internal", (), None)
    assert auth["internal"] is True and note in str(auth["note"])
    assert header == f"Authentication-Results: {HOST};\r\n\tnone\r\n".encode()
    assert resolver.queries == []


def test_header_from_domains() -> None:
    raw = (
        b'Subject: x\r\nFROM: "A, B" <a@One.Example>,\r\n c@two.example\r\nFrom: d@one.example\r\n'
        b"\r\nFrom: e@body.example\r\n"
    )
    assert header_from_domains(raw) == ["one.example", "two.example"]
    assert header_from_domains(b"Subject: none\r\n\r\n") == []


def test_header_from_is_found_after_text_whose_lower_case_is_longer() -> None:
    # "\u0130".lower() is two characters: offsets taken from a lower-cased copy of the decoded
    # header would point past the From field, and DMARC would never see the forged domain.
    raw = ("Subject: " + "\u0130" * 5 + "\r\nFrom: <ceo@victim.example>\r\n\r\nbody").encode()
    assert header_from_domains(raw) == ["victim.example"]
    raw = 'From: "J\u00fcrgen \u0130" <j@b\u00fccher.example>\r\n\r\n'.encode()
    assert header_from_domains(raw) == ["xn--bcher-kva.example"]


SPAM_UNAUTH = (model.LABEL_SPAM, model.LABEL_UNAUTHENTICATED)
UNAUTH = (model.LABEL_UNAUTHENTICATED,)


@pytest.mark.parametrize(
    ("from_domain", "policy", "expected", "labels", "reply"),
    [
        ("reject.example", InboxPolicy(), "reject", (), codes.R550_DMARC_REJECT),
        ("reject.example", InboxPolicy(dmarc_reject="quarantine"), "quarantine", SPAM_UNAUTH, None),
        ("reject.example", InboxPolicy(unauthenticated="accept"), "reject", (), codes.R550_DMARC_REJECT),
        ("quarantine.example", InboxPolicy(unauthenticated="accept"), "quarantine", SPAM_UNAUTH, None),
        ("none.example", InboxPolicy(), "unauthenticated", UNAUTH, None),
        ("none.example", InboxPolicy(unauthenticated="spam"), "unauthenticated", SPAM_UNAUTH, None),
        ("none.example", InboxPolicy(unauthenticated="accept"), "unauthenticated", (), None),
        ("nodmarc.example", InboxPolicy(unauthenticated="accept"), "unauthenticated", (), None),
        ("nodmarc.example", InboxPolicy(dmarc_reject="quarantine"), "unauthenticated", UNAUTH, None),
    ],
)
async def test_inbox_auth_policy_changes_only_what_it_names(
    key: DkimKey, from_domain: str, policy: InboxPolicy, expected: str, labels: tuple[str, ...], reply: object
) -> None:
    verdict, _, _, got_labels, got_reply = await check(
        FakeResolver(zone(key)),
        envelope(f"bob@{from_domain}", ip=OTHER_IP, helo="unknown.invalid"),
        message(from_domain),
        policy=policy,
    )
    assert (verdict, got_labels, got_reply) == (expected, labels, reply)


def test_stored_policy_falls_back_to_the_default_for_unknown_values() -> None:
    assert InboxPolicy.of(None) == DEFAULT_POLICY == InboxPolicy("refuse", "label")
    assert InboxPolicy.of({"dmarc_reject": "quarantine", "unauthenticated": "bogus"}) == InboxPolicy(
        "quarantine", "label"
    )


# --------------------------------------------------------------------------- ARC (RFC 8617)


@pytest.fixture(scope="module")
def sealer() -> DkimKey:
    return generate_key("forwarder.example", "arc", RSA_SHA256)


def arc_zone(key: DkimKey, sealer: DkimKey) -> dict[str, dict[str, list[str]]]:
    return {**zone(key), sealer.dns_name: {"TXT": [sealer.dns_txt()]}}


def sealed(sealer: DkimKey, raw: bytes, recorded: str) -> bytes:
    """``raw`` as forwarded by ``sealer``: its Authentication-Results and the ARC set dkimpy seals over it."""
    received = f"Authentication-Results: {sealer.domain}; {recorded}\r\n".encode() + raw
    private = serialization.load_pem_private_key(sealer.private_pem, None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    domain = sealer.domain.encode()
    return b"".join(dkim.arc_sign(received, sealer.selector.encode(), domain, private, domain)) + received


async def test_message_without_arc_records_arc_none(key: DkimKey) -> None:
    _, auth, header, _, _ = await check(FakeResolver(zone(key)), envelope("bob@nodmarc.example"), message("x.example"))
    assert auth["arc"] == {"result": "none", "reason": "", "instances": 0, "sealers": [], "oldest_pass": None}
    assert header.decode().rstrip().endswith("arc=none")


@pytest.mark.parametrize(
    ("sealers", "recorded", "expected", "reply"),
    [
        pytest.param((), "dmarc=pass", "reject", codes.R550_DMARC_REJECT, id="no trusted sealers: unchanged"),
        pytest.param(("other.example",), "dmarc=pass", "reject", codes.R550_DMARC_REJECT, id="sealer not trusted"),
        pytest.param(("forwarder.example",), "dmarc=fail", "reject", codes.R550_DMARC_REJECT, id="sealer saw a fail"),
        pytest.param(("forwarder.example",), "dmarc=pass", "arc", None, id="trusted sealer saw a pass"),
        pytest.param(("Forwarder.Example.",), "spf=pass; dmarc=pass (p=reject)", "arc", None, id="names normalised"),
    ],
)
async def test_dmarc_reject_is_overridden_only_by_a_trusted_sealer_that_saw_a_pass(
    key: DkimKey, sealer: DkimKey, sealers: tuple[str, ...], recorded: str, expected: str, reply: codes.Reply | None
) -> None:
    raw = sealed(sealer, message("reject.example"), recorded)
    verdict, auth, header, labels, got_reply = await check(
        FakeResolver(arc_zone(key, sealer)),
        envelope("fwd@forwarder.example", ip=OTHER_IP),
        raw,
        sealers=sealers,
    )
    assert (verdict, labels, got_reply) == (expected, (), reply)
    assert auth["dmarc"]["result"] == "fail"  # type: ignore[index]
    assert auth["arc"] == {
        "result": "pass",
        "reason": "",
        "instances": 1,
        "sealers": ["forwarder.example"],
        "oldest_pass": 0,
    }
    assert f"arc=pass (sealed by forwarder.example) header.oldest-pass=0 smtp.remote-ip={OTHER_IP}" in header.decode()


async def test_broken_arc_chain_is_recorded_as_fail_and_overrides_nothing(key: DkimKey, sealer: DkimKey) -> None:
    raw = sealed(sealer, message("reject.example"), "dmarc=pass").replace(b"Hello there.", b"Hello, changed.")
    verdict, auth, header, _, reply = await check(
        FakeResolver(arc_zone(key, sealer)),
        envelope("fwd@forwarder.example", ip=OTHER_IP),
        raw,
        sealers=("forwarder.example",),
    )
    assert (verdict, reply) == ("reject", codes.R550_DMARC_REJECT)
    assert auth["arc"]["result"] == "fail" and "body hash" in auth["arc"]["reason"]  # type: ignore[index]
    assert "arc=fail (ARC-Message-Signature i=1: body hash" in header.decode()


@pytest.mark.parametrize(
    ("sealers", "expected", "reply"),
    [
        pytest.param((), "reject", codes.R550_DMARC_REJECT, id="untrusted sealer: ARC cannot matter"),
        pytest.param(("forwarder.example",), "temperror", codes.R451_AUTH_TEMPFAIL, id="trusted sealer: retry"),
    ],
)
async def test_arc_key_servfail_is_temperror_never_a_verdict(
    key: DkimKey, sealer: DkimKey, sealers: tuple[str, ...], expected: str, reply: codes.Reply
) -> None:
    raw = sealed(sealer, message("reject.example"), "dmarc=pass")
    resolver = FakeResolver(arc_zone(key, sealer), servfail=[sealer.dns_name])
    verdict, auth, header, _, got_reply = await check(
        resolver, envelope("fwd@forwarder.example", ip=OTHER_IP), raw, sealers=sealers
    )
    assert (verdict, got_reply) == (expected, reply)
    assert auth["arc"]["result"] == "temperror"  # type: ignore[index]
    assert "arc=temperror" in header.decode()
