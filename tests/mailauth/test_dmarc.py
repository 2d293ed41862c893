"""DMARC (RFC 9989): records, the DNS Tree Walk, policy discovery (p / sp / np / psd), alignment and results."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from agentpost.mailauth.dkim_verify import DkimResult, DkimStatus
from agentpost.mailauth.dmarc import (
    DmarcRecord,
    DmarcResult,
    evaluate,
    organizational_domain,
    parse_record,
    tree_walk_targets,
)
from agentpost.net.dns import FakeResolver

REJECT = "v=DMARC1; p=reject; rua=mailto:dmarc@example.com"


def dkim(domain: str, result: DkimStatus = "pass") -> DkimResult:
    return DkimResult(result, domain, "s1", "rsa-sha256", f"@{domain}", "AAAAAAAA", "")


def zone(records: dict[str, str | list[str]], **others: dict[str, list[object]]) -> FakeResolver:
    """_dmarc TXT records by domain (a list for several records at one name), plus other names' records."""
    data: dict[str, dict[str, list[object]]] = {}
    for domain, value in records.items():
        data[f"_dmarc.{domain}"] = {"TXT": list(value) if isinstance(value, list) else [value]}
    for name, rrsets in others.items():
        data[name.replace("__", ".")] = rrsets
    return FakeResolver(data)


def run(
    resolver: FakeResolver,
    header_from: str | Sequence[str] | None,
    spf: tuple[str, str | None] = ("none", None),
    dkim_results: Sequence[DkimResult] = (),
    exists: bool | None = None,
) -> DmarcResult:
    return asyncio.run(evaluate(resolver, header_from, spf[0], spf[1], dkim_results, author_domain_exists=exists))


def dmarc_queries(resolver: FakeResolver) -> list[str]:
    return [name.removeprefix("_dmarc.") for name, rtype in resolver.queries if name.startswith("_dmarc.")]


# --------------------------------------------------------------------------- records


def test_full_record_is_parsed() -> None:
    record = parse_record(
        "v=DMARC1; p=quarantine; sp=reject; np=none; adkim=s; aspf=s; psd=n; t=y; fo=1:d;"
        " rua=mailto:agg@example.com!10m, https://reports.example/dmarc ; ruf=mailto:fail@example.com"
    )
    assert record == DmarcRecord(
        p="quarantine", sp="reject", np="none", adkim="s", aspf="s", psd="n", testing=True,
        rua=("mailto:agg@example.com", "https://reports.example/dmarc"), ruf=("mailto:fail@example.com",), fo="1:d",
    )  # fmt: skip


def test_a_record_parses_the_same_when_read_again_and_when_too_long_to_be_kept() -> None:
    short = "v=DMARC1; p=reject; rua=mailto:agg@example.com"
    assert parse_record(short) is parse_record(short)  # kept: the same immutable record
    uris = ", ".join(f"mailto:agg{i}@example.com" for i in range(60))
    long = f"v=DMARC1; p=quarantine; rua={uris}"
    assert len(long) > 1024
    record = parse_record(long)
    assert record is not None and record.p == "quarantine" and len(record.rua) == 60
    assert parse_record(long) == record and parse_record(long) is not record  # parsed anew each time


@pytest.mark.parametrize(
    "text",
    [
        "p=reject; v=DMARC1",  # RFC 9989 §4.7: v= must come first
        "v=dmarc1; p=reject",  # and its value is case-sensitive
        "v=DMARC2; p=reject",
        "v=spf1 -all",
        "",
        "v DMARC1; p=reject",
    ],
)
def test_text_that_is_not_a_dmarc_record(text: str) -> None:
    assert parse_record(text) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("v=DMARC1", DmarcRecord()),  # no p=: read as none (§4.7)
        ("V = DMARC1 ;P=Reject;ADKIM=S", DmarcRecord(p="reject", adkim="s")),  # tag names and values: any case
        ("v=DMARC1; p=reject; pct=10; rf=afrf; ri=3600; future=1", DmarcRecord(p="reject")),  # removed, unknown
        ("v=DMARC1; p=reject;;", DmarcRecord(p="reject")),
        ("v=DMARC1; p=reject; adkim=x", DmarcRecord(p="reject", errors=("invalid adkim=x",))),
        ("v=DMARC1; p=reject; psd=maybe", DmarcRecord(p="reject", errors=("invalid psd=maybe",))),
        ("v=DMARC1; p=reject; p=none", DmarcRecord(p="reject", errors=("repeated p=",))),
        ("v=DMARC1; p=reject; junk", DmarcRecord(p="reject", errors=("malformed tag 'junk'",))),
        ("v=DMARC1; p=reject; rua=not a uri, mailto:a@b.example", DmarcRecord(p="reject", rua=("mailto:a@b.example",))),
        ("v=DMARC1; p=block", DmarcRecord(invalid_policy=True, errors=("invalid p=block",))),
        ("v=DMARC1; p=none; np=drop", DmarcRecord(p="none", invalid_policy=True, errors=("invalid np=drop",))),
    ],
)
def test_record_values_and_syntax_errors(text: str, expected: DmarcRecord) -> None:
    assert parse_record(text) == expected


# --------------------------------------------------------------------------- the DNS Tree Walk


def test_tree_walk_of_the_rfc_example_makes_eight_queries() -> None:
    # RFC 9989 §4.10, the example for "a.b.c.d.e.f.g.h.i.j.mail.example.com".
    assert tree_walk_targets("a.b.c.d.e.f.g.h.i.j.mail.example.com") == [
        "a.b.c.d.e.f.g.h.i.j.mail.example.com",
        "g.h.i.j.mail.example.com",
        "h.i.j.mail.example.com",
        "i.j.mail.example.com",
        "j.mail.example.com",
        "mail.example.com",
        "example.com",
        "com",
    ]


@pytest.mark.parametrize(
    "domain, count",
    [("example.com", 2), ("a.mail.example.com", 4), ("1.2.3.4.5.6.7.example", 8), ("1.2.3.4.5.6.example", 7)],
)
def test_tree_walk_length(domain: str, count: int) -> None:
    targets = tree_walk_targets(domain)
    assert len(targets) == count and targets[0] == domain and targets[-1] == domain.rsplit(".", 1)[1]


R = DmarcRecord
START = "a.mail.example.com"


@pytest.mark.parametrize(
    "found, org",
    [
        ([], START),  # nothing found: the start is its own Organizational Domain
        ([("mail.example.com", R()), ("example.com", R())], "example.com"),  # the fewest labels
        ([("mail.example.com", R(psd="n"))], "mail.example.com"),
        ([("com", R(psd="y"))], "example.com"),  # one label below the public suffix domain
        ([("example.com", R(psd="y"))], "mail.example.com"),  # the RFC's psd=y example
        ([(START, R(psd="y"))], START),  # psd=y at the start itself does not move it
        ([(START, R()), ("example.com", R(psd="n"))], "example.com"),
    ],
)
def test_organizational_domain_selection(found: list[tuple[str, DmarcRecord]], org: str) -> None:
    # RFC 9989 §4.10.2 and its three examples.
    assert organizational_domain(START, found) == org


# --------------------------------------------------------------------------- alignment


@pytest.mark.parametrize(
    "record, spf, dkim_domains, result, spf_aligned, dkim_aligned",
    [
        (REJECT, ("pass", "example.com"), [], "pass", "example.com", ()),
        (REJECT, ("pass", "bounce.example.com"), [], "pass", "bounce.example.com", ()),
        (REJECT + "; aspf=s", ("pass", "bounce.example.com"), [], "fail", "", ()),
        (REJECT + "; aspf=s", ("pass", "EXAMPLE.com."), [], "pass", "example.com", ()),
        (REJECT, ("softfail", "example.com"), [], "fail", "", ()),
        (REJECT, ("pass", "example.net"), [], "fail", "", ()),
        (REJECT, ("pass", "notexample.com"), [], "fail", "", ()),
        (REJECT, ("none", None), ["mail.example.com"], "pass", "", ("mail.example.com",)),
        (REJECT + "; adkim=s", ("none", None), ["mail.example.com"], "fail", "", ()),
        (REJECT + "; adkim=s", ("none", None), ["Example.COM"], "pass", "", ("example.com",)),
        (REJECT, ("none", None), ["example.net", "example.com"], "pass", "", ("example.com",)),
        (REJECT, ("pass", "example.net"), ["esp.example"], "fail", "", ()),
        (REJECT + "; aspf=s", ("pass", "bounce.example.com"), ["example.com"], "pass", "", ("example.com",)),
    ],
)
def test_alignment_relaxed_and_strict(
    record: str,
    spf: tuple[str, str | None],
    dkim_domains: list[str],
    result: str,
    spf_aligned: str,
    dkim_aligned: tuple[str, ...],
) -> None:
    outcome = run(zone({"example.com": record}), "example.com", spf, [dkim(d) for d in dkim_domains])
    assert (outcome.result, outcome.spf_aligned, outcome.dkim_aligned) == (result, spf_aligned, dkim_aligned)
    assert outcome.policy == "reject" and outcome.disposition == ("reject" if result == "fail" else "none")


def test_only_passing_dkim_signatures_count() -> None:
    results = [dkim("example.com", "fail"), dkim("example.com", "policy"), dkim("example.com", "neutral")]
    outcome = run(zone({"example.com": REJECT}), "example.com", dkim_results=results)
    assert outcome.result == "fail"
    assert outcome.reason == "no aligned identifier: SPF none, no DKIM pass"


def test_strict_alignment_needs_no_tree_walk() -> None:
    resolver = zone({"example.com": REJECT + "; adkim=s; aspf=s"})
    outcome = run(resolver, "example.com", ("pass", "mail.example.com"), [dkim("mail.example.com")])
    assert outcome.result == "fail"
    assert dmarc_queries(resolver) == ["example.com"]


def test_relaxed_alignment_walks_the_identifier_to_the_shared_organizational_domain() -> None:
    resolver = zone({"example.com": REJECT})
    outcome = run(resolver, "news.example.com", ("pass", "bounce.mail.example.com"), exists=True)
    assert (outcome.result, outcome.spf_aligned, outcome.org_domain) == (
        "pass",
        "bounce.mail.example.com",
        "example.com",
    )
    # Each name is asked once, however many walks pass through it.
    assert dmarc_queries(resolver) == ["news.example.com", "example.com", "com", "bounce.mail.example.com",
                                       "mail.example.com"]  # fmt: skip


def test_identifier_outside_the_organizational_domain_is_not_walked() -> None:
    resolver = zone({"example.com": REJECT})
    assert run(resolver, "example.com", ("pass", "a.b.example.net")).result == "fail"
    assert "a.b.example.net" not in dmarc_queries(resolver)


def test_subdomain_with_its_own_psd_n_record_is_its_own_organizational_domain() -> None:
    resolver = zone({"dept.example.com": "v=DMARC1; p=quarantine; psd=n", "example.com": REJECT})
    author = "a.dept.example.com"
    outcome = run(resolver, author, dkim_results=[dkim("example.com"), dkim("x.dept.example.com")], exists=True)
    assert (outcome.result, outcome.dkim_aligned) == ("pass", ("x.dept.example.com",))
    assert (outcome.policy, outcome.policy_domain, outcome.org_domain) == ("quarantine", "dept.example.com",
                                                                         "dept.example.com")  # fmt: skip
    assert run(resolver, author, dkim_results=[dkim("example.com")], exists=True).result == "fail"


# --------------------------------------------------------------------------- policy discovery


def test_no_record_anywhere_is_none_after_the_walk() -> None:
    resolver = zone({})
    outcome = run(resolver, "a.b.example.org", ("pass", "a.b.example.org"))
    assert (outcome.result, outcome.policy, outcome.disposition) == ("none", "none", "none")
    assert dmarc_queries(resolver) == ["a.b.example.org", "b.example.org", "example.org", "org"]


def test_tree_walk_finds_the_organizational_domain_record() -> None:
    resolver = zone({"example.com": REJECT}, a__b__c__example__com={"A": ["192.0.2.1"]})
    outcome = run(resolver, "a.b.c.example.com", exists=None)
    assert (outcome.result, outcome.policy, outcome.policy_tag) == ("fail", "reject", "p")
    assert (outcome.policy_domain, outcome.org_domain) == ("example.com", "example.com")
    assert dmarc_queries(resolver) == ["a.b.c.example.com", "b.c.example.com", "c.example.com", "example.com", "com"]


def test_long_author_domain_makes_at_most_eight_queries() -> None:
    resolver = zone({"example.com": REJECT})
    author = "a.b.c.d.e.f.g.h.i.j.mail.example.com"
    outcome = run(resolver, author, exists=True)
    assert (outcome.result, outcome.policy_domain) == ("fail", "example.com")
    assert dmarc_queries(resolver) == tree_walk_targets(author)


def test_author_domain_record_wins_over_the_organizational_domain() -> None:
    resolver = zone({"news.example.com": "v=DMARC1; p=none", "example.com": REJECT})
    outcome = run(resolver, "news.example.com")
    assert (outcome.result, outcome.policy, outcome.policy_tag, outcome.policy_domain) == (
        "fail", "none", "p", "news.example.com",
    )  # fmt: skip
    assert outcome.disposition == "none"


def test_intermediate_record_without_psd_is_not_the_policy() -> None:
    # RFC 9989 §4.10.1: the Author Domain, its Organizational Domain or its PSD; §4.10.2's first example.
    resolver = zone({"mail.example.com": "v=DMARC1; p=none", "example.com": REJECT})
    outcome = run(resolver, "a.mail.example.com", exists=True)
    assert (outcome.policy, outcome.policy_domain, outcome.org_domain) == ("reject", "example.com", "example.com")


@pytest.mark.parametrize(
    "record, exists, policy, tag",
    [
        ("v=DMARC1; p=reject; sp=quarantine", True, "quarantine", "sp"),
        ("v=DMARC1; p=reject; sp=quarantine", False, "quarantine", "sp"),  # no np=: sp= for non-existent too
        ("v=DMARC1; p=none; sp=quarantine; np=reject", True, "quarantine", "sp"),
        ("v=DMARC1; p=none; sp=quarantine; np=reject", False, "reject", "np"),
        ("v=DMARC1; p=none; np=reject", True, "none", "p"),  # no sp=: p= for existing subdomains
        ("v=DMARC1; p=none; np=reject", False, "reject", "np"),
        ("v=DMARC1; p=quarantine", False, "quarantine", "p"),
    ],
)
def test_subdomain_policy_sp_and_non_existent_subdomain_policy_np(
    record: str, exists: bool, policy: str, tag: str
) -> None:
    outcome = run(zone({"example.com": record}), "sub.example.com", exists=exists)
    assert (outcome.result, outcome.policy, outcome.policy_tag) == ("fail", policy, tag)


def test_sp_and_np_do_not_apply_to_the_organizational_domain_itself() -> None:
    outcome = run(zone({"example.com": "v=DMARC1; p=none; sp=reject; np=reject"}), "example.com", exists=False)
    assert (outcome.policy, outcome.policy_tag) == ("none", "p")


def test_existence_is_looked_up_only_when_np_changes_the_policy() -> None:
    ghost = zone({"example.com": "v=DMARC1; p=none; np=reject"})
    assert run(ghost, "ghost.example.com").policy == "reject"
    assert [rtype for name, rtype in ghost.queries if name == "ghost.example.com"] == ["A", "AAAA", "MX", "TXT"]
    real = zone({"example.com": "v=DMARC1; p=none; np=reject"}, www__example__com={"AAAA": ["2001:db8::1"]})
    assert run(real, "www.example.com").policy == "none"
    with_spf = zone({"example.com": "v=DMARC1; p=none; np=reject"}, mail__example__com={"TXT": ["v=spf1 -all"]})
    assert run(with_spf, "mail.example.com").policy == "none"
    plain = zone({"example.com": "v=DMARC1; p=none; sp=reject"})
    assert run(plain, "ghost.example.com").policy == "reject"
    assert all(name.startswith("_dmarc.") for name, _rtype in plain.queries)


def test_psd_record_applies_when_the_organizational_domain_publishes_none() -> None:
    resolver = zone({"psd.example": "v=DMARC1; p=reject; sp=quarantine; psd=y"})
    outcome = run(resolver, "mail.shop.psd.example", dkim_results=[dkim("shop.psd.example")], exists=True)
    assert (outcome.result, outcome.dkim_aligned) == ("pass", ("shop.psd.example",))
    assert (outcome.policy, outcome.policy_tag, outcome.policy_domain) == ("quarantine", "sp", "psd.example")
    assert outcome.org_domain == "shop.psd.example"
    # A sibling under the same public suffix is another organisation: not aligned.
    other = run(resolver, "shop.psd.example", ("pass", "evil.psd.example"), exists=True)
    assert (other.result, other.policy) == ("fail", "quarantine")


def test_psd_policy_is_not_used_when_the_organizational_domain_has_a_record() -> None:
    resolver = zone({"psd.example": "v=DMARC1; p=reject; psd=y", "shop.psd.example": "v=DMARC1; p=none"})
    outcome = run(resolver, "mail.shop.psd.example", exists=True)
    assert (outcome.result, outcome.policy, outcome.policy_domain) == ("fail", "none", "shop.psd.example")


def test_testing_flag_lowers_the_policy_one_step() -> None:
    # RFC 9989 §4.7 t=y: reject -> quarantine, quarantine -> none.
    reject = run(zone({"example.com": "v=DMARC1; p=reject; t=y"}), "example.com")
    assert (reject.result, reject.policy, reject.testing) == ("fail", "quarantine", True)
    assert "t=y: reject lowered to quarantine" in reject.reason
    quarantine = run(zone({"example.com": "v=DMARC1; p=quarantine; t=y"}), "example.com")
    assert (quarantine.policy, quarantine.disposition) == ("none", "none")


# --------------------------------------------------------------------------- malformed and multiple records


def test_invalid_policy_without_rua_is_permerror() -> None:
    outcome = run(zone({"example.com": "v=DMARC1; p=block"}), "example.com", ("pass", "example.com"))
    assert (outcome.result, outcome.policy) == ("permerror", "none")
    assert "malformed DMARC record at _dmarc.example.com: invalid p=block" in outcome.reason


def test_invalid_policy_with_rua_is_read_as_p_none() -> None:
    # RFC 9989 §4.10.1: with a usable rua=, act as if p=none was published.
    record = "v=DMARC1; p=reject; sp=bogus; rua=mailto:dmarc@example.com"
    outcome = run(zone({"example.com": record}), "sub.example.com", exists=True)
    assert (outcome.result, outcome.policy) == ("fail", "none")
    passed = run(zone({"example.com": record}), "example.com", ("pass", "example.com"))
    assert (passed.result, passed.policy) == ("pass", "none")


def test_several_records_at_one_name_are_all_discarded() -> None:
    # RFC 9989 §4.10 step 2. With nothing above, DMARC does not apply.
    two = zone({"example.com": [REJECT, "v=DMARC1; p=none"]})
    outcome = run(two, "example.com")
    assert outcome.result == "none" and "2 DMARC records at _dmarc.example.com, all ignored" in outcome.reason
    # With a record above, the walk goes on to it.
    above = zone({"mail.example.com": [REJECT, "v=DMARC1; p=none"], "example.com": "v=DMARC1; p=quarantine"})
    outcome = run(above, "mail.example.com", exists=True)
    assert (outcome.result, outcome.policy, outcome.policy_domain) == ("fail", "quarantine", "example.com")
    assert "2 DMARC records at _dmarc.mail.example.com, all ignored" in outcome.reason


def test_other_txt_records_beside_the_dmarc_record_are_ignored() -> None:
    resolver = zone({"example.com": ["some-verification=abc", REJECT, "v=spf1 -all"]})
    assert run(resolver, "example.com").policy == "reject"


# --------------------------------------------------------------------------- DNS errors


def test_servfail_during_policy_discovery_is_temperror() -> None:
    resolver = FakeResolver({"_dmarc.example.com": {"TXT": [REJECT]}}, servfail=["_dmarc.example.com"])
    outcome = run(resolver, "example.com", ("pass", "example.com"))
    assert (outcome.result, outcome.policy, outcome.disposition) == ("temperror", "none", "none")
    assert "SERVFAIL" in outcome.reason


def test_servfail_up_the_walk_is_temperror() -> None:
    resolver = FakeResolver({"_dmarc.example.com": {"TXT": [REJECT]}}, servfail=["_dmarc.com"])
    assert run(resolver, "mail.example.com", exists=True).result == "temperror"


def test_servfail_in_one_alignment_walk_does_not_hide_another_pass() -> None:
    data = {"_dmarc.example.com": {"TXT": [REJECT]}}
    broken = FakeResolver(data, servfail=["_dmarc.bounce.example.com"])
    alone = run(broken, "example.com", ("pass", "bounce.example.com"))
    assert alone.result == "temperror" and "SPF alignment of bounce.example.com" in alone.reason
    with_dkim = run(FakeResolver(data, servfail=["_dmarc.bounce.example.com"]), "example.com",
                    ("pass", "bounce.example.com"), [dkim("example.com")])  # fmt: skip
    assert (with_dkim.result, with_dkim.dkim_aligned) == ("pass", ("example.com",))


def test_servfail_in_the_existence_check_is_temperror() -> None:
    resolver = FakeResolver({"_dmarc.example.com": {"TXT": ["v=DMARC1; p=none; np=reject"]}},
                            servfail=["ghost.example.com"])  # fmt: skip
    assert run(resolver, "ghost.example.com").result == "temperror"


# --------------------------------------------------------------------------- From domains


@pytest.mark.parametrize("header_from", [None, [], ""])
def test_no_from_domain_is_permerror(header_from: str | list[str] | None) -> None:
    outcome = run(zone({}), header_from)
    assert (outcome.result, outcome.header_from) == ("permerror", "")


def test_invalid_from_domain_is_permerror() -> None:
    assert run(zone({}), "bad..example").result == "permerror"


def test_second_from_domain_cannot_turn_a_fail_into_a_pass() -> None:
    resolver = zone({"victim.example": REJECT, "attacker.example": REJECT})
    outcome = run(resolver, ["attacker.example", "victim.example"], ("pass", "attacker.example"))
    assert (outcome.result, outcome.header_from, outcome.disposition) == ("fail", "victim.example", "reject")
    assert outcome.reason.startswith("2 From domains (RFC 9989 §5.3.1); weakest victim.example")


def test_several_from_addresses_in_one_domain_are_one_author_domain() -> None:
    outcome = run(zone({"example.com": REJECT}), ["example.com", "EXAMPLE.COM."], ("pass", "example.com"))
    assert (outcome.result, outcome.reason) == ("pass", "SPF example.com aligned")


def test_too_many_from_domains_is_permerror() -> None:
    assert run(zone({}), [f"d{i}.example" for i in range(5)]).result == "permerror"


def test_unicode_author_domain_is_looked_up_as_its_a_label() -> None:
    # RFC 9989 §5.3.1: a U-label is converted to an A-label.
    resolver = zone({"xn--bcher-kva.example": REJECT})
    outcome = run(resolver, "bücher.example", dkim_results=[dkim("xn--bcher-kva.example")])
    assert (outcome.result, outcome.header_from) == ("pass", "xn--bcher-kva.example")
