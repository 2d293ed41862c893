"""MTA-STS (RFC 8461) for mail we send, with real parts on loopback: an HTTPS policy server with a test CA
(trustme), the test DNS server, aiosmtpd peers with and without STARTTLS, and a real `agentpost serve`.

The fetch (§3.3) and the cache (§5.1) are tested in-process first; then end to end: enforce delivers only
to a listed MX over verified TLS and otherwise defers 4.7.5, testing delivers and records the failure, a
policy fetched once is still enforced after a restart while the policy host is down, and a domain without
a policy is delivered to as before.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from aiosmtpd.controller import Controller

from agentpost.net.dns import FakeResolver
from agentpost.net.mtasts import CachedPolicy, Policy, PolicyCache, PolicyFetcher, PolicyFetchError, tls_context
from agentpost.store.db import Database
from agentpost.store.mta_sts import PolicyTable
from dnsserver import DnsServer
from mailclient import setup_inbox
from policyserver import Answer, PolicyServer, policy_text
from serverproc import AgentpostServer, free_port_on_all

POLICY_IP = "127.0.0.22"  # mta-sts.<domain> of every test domain but cached.test
CACHED_POLICY_IP = "127.0.0.25"  # mta-sts.cached.test: stopped in the middle of its test
TRUSTED_IP = "127.0.0.21"  # STARTTLS, certificate from the test CA for its MX names
PLAIN_IP = "127.0.0.23"  # no STARTTLS
UNTRUSTED_IP = "127.0.0.24"  # STARTTLS, certificate from a CA nobody trusts
UNIT_POLICY_IP = "127.0.0.26"  # the in-process fetch and cache tests


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


# -- fetch (RFC 8461 §3.3) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unit_server(ca: trustme.CA) -> Iterator[PolicyServer]:
    names = [f"mta-sts.{d}.test" for d in ("good", "redirect", "html", "big", "broken", "other")]
    server = PolicyServer(UNIT_POLICY_IP, free_port_on_all((UNIT_POLICY_IP,)), ca.issue_cert(*names))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _unit_resolver(*domains: str, txt: dict[str, list[str]] | None = None) -> FakeResolver:
    zone: dict[str, dict[str, list[Any]]] = {f"mta-sts.{d}": {"A": [UNIT_POLICY_IP]} for d in domains}
    for domain, records in (txt or {}).items():
        zone[f"_mta-sts.{domain}"] = {"TXT": records}
    return FakeResolver(zone)


def _fetcher(resolver: FakeResolver, server: PolicyServer, ca: trustme.CA, tmp_path: Path) -> PolicyFetcher:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return PolicyFetcher(resolver, context=tls_context(str(ca_file)), port=server.port, timeout=5.0)


async def test_policy_is_fetched_from_the_resolved_address_with_sni_and_host_of_the_policy_host(
    unit_server: PolicyServer, ca: trustme.CA, tmp_path: Path
) -> None:
    unit_server.policies["mta-sts.good.test"] = Answer(policy_text("enforce", ["mx.good.test", "*.good.test"]))
    resolver = _unit_resolver("good.test")
    policy = await _fetcher(resolver, unit_server, ca, tmp_path).fetch("good.test")
    assert policy == Policy("enforce", ("mx.good.test", "*.good.test"), 86400)
    assert ("mta-sts.good.test", "A") in resolver.queries  # resolved through our resolver, not the system's
    assert ("mta-sts.good.test", "mta-sts.good.test", "/.well-known/mta-sts.txt") in unit_server.requests


@pytest.mark.parametrize(
    "domain, answer, reason",
    [
        ("redirect.test", Answer("", status=301, headers={"Location": "https://mta-sts.good.test/"}), "HTTP 301"),
        ("html.test", Answer(policy_text("enforce", ["mx.html.test"]), content_type="text/html"), "text/html"),
        ("big.test", Answer(policy_text("enforce", ["mx.big.test"]) + "x: " + "y" * 70000 + "\n"), "larger"),
        ("broken.test", Answer("version: STSv1\nmode: enforce\n"), "not a valid STSv1 policy"),
        ("good.test", Answer("missing", status=404), "HTTP 404"),
    ],
)
async def test_a_policy_that_cannot_be_used_is_a_fetch_error(
    unit_server: PolicyServer, ca: trustme.CA, tmp_path: Path, domain: str, answer: Answer, reason: str
) -> None:
    host = f"mta-sts.{domain}"
    unit_server.policies[host] = answer
    try:
        with pytest.raises(PolicyFetchError, match=reason):
            await _fetcher(_unit_resolver(domain), unit_server, ca, tmp_path).fetch(domain)
    finally:
        del unit_server.policies[host]
    # RFC 8461 §3.3: redirects are not followed.
    assert [r for r in unit_server.requests if r[1] == host] and not any(
        r[2] != "/.well-known/mta-sts.txt" for r in unit_server.requests
    )


async def test_a_certificate_not_valid_for_the_policy_host_is_a_fetch_error(
    unit_server: PolicyServer, ca: trustme.CA, tmp_path: Path
) -> None:
    unit_server.policies["mta-sts.unnamed.test"] = Answer(policy_text("enforce", ["mx.unnamed.test"]))
    # The server's certificate does not name mta-sts.unnamed.test.
    with pytest.raises(PolicyFetchError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
        await _fetcher(_unit_resolver("unnamed.test"), unit_server, ca, tmp_path).fetch("unnamed.test")
    # And a CA we do not trust (the system store only) fails the same way.
    unit_server.policies["mta-sts.good.test"] = Answer(policy_text("enforce", ["mx.good.test"]))
    untrusting = PolicyFetcher(_unit_resolver("good.test"), port=unit_server.port, timeout=5.0)
    with pytest.raises(PolicyFetchError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
        await untrusting.fetch("good.test")


async def test_a_policy_host_without_address_or_listener_is_a_fetch_error(
    unit_server: PolicyServer, ca: trustme.CA, tmp_path: Path
) -> None:
    with pytest.raises(PolicyFetchError, match="no address"):
        await _fetcher(FakeResolver({}), unit_server, ca, tmp_path).fetch("nowhere.test")
    closed = PolicyFetcher(_unit_resolver("good.test"), port=free_port_on_all((UNIT_POLICY_IP,)), timeout=5.0)
    with pytest.raises(PolicyFetchError, match="ConnectError"):
        await closed.fetch("good.test")


# -- cache (RFC 8461 §5.1) ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def policy_table(db: Database) -> AsyncIterator[PolicyTable]:
    yield PolicyTable(db)


def _fetches(server: PolicyServer, host: str) -> int:
    return sum(1 for r in server.requests if r[1] == host)


async def test_cache_follows_the_txt_id_keeps_a_policy_when_refetch_fails_and_survives_a_restart(
    unit_server: PolicyServer, ca: trustme.CA, tmp_path: Path, policy_table: PolicyTable
) -> None:
    host = "mta-sts.good.test"
    unit_server.policies[host] = Answer(policy_text("enforce", ["mx.good.test"], max_age=3600))
    resolver = _unit_resolver("good.test", txt={"good.test": ["v=STSv1; id=one;"]})
    clock = Clock()
    fetcher = _fetcher(resolver, unit_server, ca, tmp_path)
    cache = PolicyCache(resolver, fetcher, store=policy_table, recheck=0, now=clock)
    before = _fetches(unit_server, host)

    first = await cache.policy("good.test")
    assert first is not None and (first.id, first.mode, first.policy.mx) == ("one", "enforce", ("mx.good.test",))
    assert await cache.policy("Good.Test") == first  # same id: no fetch
    assert _fetches(unit_server, host) == before + 1
    assert await policy_table.load("good.test") == first  # persisted

    # A new id: fetched again.
    unit_server.policies[host] = Answer(policy_text("testing", ["mx.good.test"], max_age=3600))
    resolver.zone["_mta-sts.good.test"]["TXT"] = ["v=STSv1; id=two;"]
    second = await cache.policy("good.test")
    assert second is not None and (second.id, second.mode) == ("two", "testing")

    # A new id, but the policy host fails: the cached, unexpired policy still applies.
    unit_server.policies[host] = Answer("gone", status=500)
    resolver.zone["_mta-sts.good.test"]["TXT"] = ["v=STSv1; id=three;"]
    assert await cache.policy("good.test") == second
    # The TXT record gone, or its lookup failing: the cached policy still applies (§3.1).
    resolver.zone["_mta-sts.good.test"]["TXT"] = []
    assert await cache.policy("good.test") == second
    resolver.servfail.add("_mta-sts.good.test")
    assert await cache.policy("good.test") == second
    resolver.servfail.clear()
    resolver.zone["_mta-sts.good.test"]["TXT"] = ["v=STSv1; id=three;"]

    # A restart: a new cache on the same database applies the stored policy though the host still fails.
    restarted = PolicyCache(resolver, fetcher, store=PolicyTable(policy_table.db), recheck=0, now=clock)
    assert await restarted.policy("good.test") == second

    # Once max_age has passed and nothing can be fetched, there is no policy (§5.1).
    clock.now += timedelta(seconds=3600)
    assert await restarted.policy("good.test") is None
    assert await cache.policy("good.test") is None
    del unit_server.policies[host]


async def test_no_txt_record_means_no_policy_and_no_fetch(
    unit_server: PolicyServer, ca: trustme.CA, tmp_path: Path
) -> None:
    resolver = _unit_resolver("other.test", txt={"other.test": ["v=STSv1; id=a;", "v=STSv1; id=b;"]})
    cache = PolicyCache(resolver, _fetcher(resolver, unit_server, ca, tmp_path), recheck=0)
    before = _fetches(unit_server, "mta-sts.other.test")
    assert await cache.policy("other.test") is None  # two records: no policy
    assert await cache.policy("nothing.test") is None
    assert _fetches(unit_server, "mta-sts.other.test") == before


async def test_concurrent_lookups_share_one_fetch(unit_server: PolicyServer, ca: trustme.CA, tmp_path: Path) -> None:
    host = "mta-sts.other.test"
    unit_server.policies[host] = Answer(policy_text("enforce", ["mx.other.test"]))
    resolver = _unit_resolver("other.test", txt={"other.test": ["v=STSv1; id=c;"]})
    cache = PolicyCache(resolver, _fetcher(resolver, unit_server, ca, tmp_path))
    before = _fetches(unit_server, host)
    found = await asyncio.gather(*(cache.policy("other.test") for _ in range(20)))
    assert all(p is not None and p.id == "c" for p in found)
    assert _fetches(unit_server, host) == before + 1
    del unit_server.policies[host]


async def test_policy_table_replaces_the_row_of_a_domain(policy_table: PolicyTable) -> None:
    fetched = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    first = CachedPolicy("example.test", "a1", Policy("testing", ("mx.example.test",), 600), fetched)
    await policy_table.save(first)
    second = CachedPolicy("example.test", "a2", Policy("enforce", ("*.example.test", "mx2.x.test"), 60), fetched)
    await policy_table.save(second)
    assert await policy_table.load("example.test") == second
    assert await policy_table.load("other.test") is None


# -- end to end -----------------------------------------------------------------------------------


class Peer:
    """Accepts every message; remembers recipients and whether the session was encrypted."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bool]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), session.ssl is not None))
        return "250 2.0.0 OK queued"

    def got(self, rcpt: str) -> list[bool]:
        """For each message that reached ``rcpt``: was it over TLS."""
        with self.lock:
            return [tls for rcpts, tls in self.messages if rcpt in rcpts]


def _server_tls(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


@dataclass
class World:
    server: AgentpostServer
    dns: DnsServer
    trusted: Peer
    plain: Peer
    untrusted: Peer
    cached_policy: PolicyServer
    zone: dict[str, dict[str, list[Any]]]


ENFORCED = {
    # domain: (mode, mx patterns, MX records (preference, host, ip))
    "enforce.test": ("enforce", ["*.enforce.test"], [(10, "mx1.enforce.test", TRUSTED_IP)]),
    "nostarttls.test": ("enforce", ["mx.nostarttls.test"], [(10, "mx.nostarttls.test", PLAIN_IP)]),
    "badcert.test": ("enforce", ["mx.badcert.test"], [(10, "mx.badcert.test", UNTRUSTED_IP)]),
    "mismatch.test": ("enforce", ["mx.mismatch.test"], [(10, "mx.mismatch.test", TRUSTED_IP)]),
    "unlisted.test": ("enforce", ["mx.elsewhere.test"], [(10, "mx.unlisted.test", PLAIN_IP)]),
    "mixed.test": (
        "enforce",
        ["mx.mixed.test"],
        [(10, "rogue.mixed.test", PLAIN_IP), (20, "mx.mixed.test", TRUSTED_IP)],
    ),
    "testing.test": ("testing", ["mx.testing.test"], [(10, "mx.testing.test", UNTRUSTED_IP)]),
    "none.test": ("none", [], [(10, "mx.none.test", PLAIN_IP)]),
    "cached.test": (
        "enforce",
        ["mx.cached.test"],
        [(10, "rogue.cached.test", PLAIN_IP), (20, "mx.cached.test", TRUSTED_IP)],
    ),
}


def _zone(cached_id: str) -> dict[str, dict[str, list[Any]]]:
    zone: dict[str, dict[str, list[Any]]] = {}
    for domain, (_, _, mxs) in ENFORCED.items():
        zone[domain] = {"MX": [(pref, host) for pref, host, _ in mxs]}
        for _, host, ip in mxs:
            zone[host] = {"A": [ip]}
        zone[f"_mta-sts.{domain}"] = {"TXT": [f"v=STSv1; id={cached_id if domain == 'cached.test' else 'v1'};"]}
        zone[f"mta-sts.{domain}"] = {"A": [CACHED_POLICY_IP if domain == "cached.test" else POLICY_IP]}
    zone["plain.test"] = {"MX": [(10, "mx.plain.test")]}
    zone["mx.plain.test"] = {"A": [PLAIN_IP]}
    return zone


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, postgres: Any, ca: trustme.CA) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mta-sts")
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    smtp_port = free_port_on_all((TRUSTED_IP, PLAIN_IP, UNTRUSTED_IP))
    https_port = free_port_on_all((POLICY_IP, CACHED_POLICY_IP))
    trusted, plain, untrusted = Peer(), Peer(), Peer()
    trusted_cert = ca.issue_cert("mx1.enforce.test", "mx.mixed.test", "mx.cached.test")
    untrusted_cert = trustme.CA().issue_cert("mx.badcert.test", "mx.testing.test")
    controllers = [
        Controller(trusted, hostname=TRUSTED_IP, port=smtp_port, tls_context=_server_tls(trusted_cert)),
        Controller(plain, hostname=PLAIN_IP, port=smtp_port),
        Controller(untrusted, hostname=UNTRUSTED_IP, port=smtp_port, tls_context=_server_tls(untrusted_cert)),
    ]
    policy_hosts = [f"mta-sts.{d}" for d in ENFORCED if d != "cached.test"]
    policies = PolicyServer(POLICY_IP, https_port, ca.issue_cert(*policy_hosts))
    cached_policy = PolicyServer(CACHED_POLICY_IP, https_port, ca.issue_cert("mta-sts.cached.test"))
    for domain, (mode, mx, _) in ENFORCED.items():
        target = cached_policy if domain == "cached.test" else policies
        target.policies[f"mta-sts.{domain}"] = Answer(policy_text(mode, mx))
    zone = _zone("c1")
    dns = DnsServer(zone)
    url = str(postgres.create_database("sts" + str(smtp_port))) if postgres is not None else ""
    server = AgentpostServer(
        tmp / "data",
        database_url=url,
        extra_env={
            "AGENTPOST_DNS_SERVERS": "",  # replaced below once the DNS server has its port
            "AGENTPOST_OUTBOUND_PORT": str(smtp_port),
            "AGENTPOST_OUTBOUND_RETRY_SCHEDULE": "[1]",
            "AGENTPOST_OUTBOUND_MTA_STS_CA_FILE": str(ca_file),
            "AGENTPOST_OUTBOUND_MTA_STS_PORT": str(https_port),
        },
    )
    started: list[Any] = []
    try:
        for controller in controllers:
            controller.start()
            started.append(controller)
        policies.start()
        started.append(policies)
        cached_policy.start()
        started.append(cached_policy)
        dns.start()
        started.append(dns)
        server.env["AGENTPOST_DNS_SERVERS"] = dns.address
        server.setup()
        server.start()
        yield World(server, dns, trusted, plain, untrusted, cached_policy, zone)
    finally:
        server.stop()
        for part in reversed(started):
            part.stop()


def _send(http: httpx.Client, inbox: str, to: str) -> str:
    response = http.post(f"/v0/inboxes/{inbox}/messages/send", json={"to": to, "subject": "sts", "text": "hello"})
    assert response.status_code == 200, response.text
    return str(response.json()["message_id"])


def _attempts(http: httpx.Client, inbox: str, message_id: str, until: str, timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = http.get(f"/v0/inboxes/{inbox}/messages/{message_id}/deliveries").json()["deliveries"]
        if any(d["outcome"] == until for d in found):
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {until} attempt: {found}")


def test_enforce_delivers_over_verified_tls_to_a_listed_mx(world: World) -> None:
    with world.server.client() as http:
        inbox = setup_inbox(http, "sender@enforce-out.example.test")
        attempt = _attempts(http, inbox, _send(http, inbox, "rcpt@enforce.test"), "delivered")[-1]
    assert (attempt["remote_host"], attempt["tls_verified"]) == ("mx1.enforce.test", True)
    assert attempt["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert attempt["details"]["mta_sts"] == {"mode": "enforce", "policy_id": "v1", "result": "success"}
    assert world.trusted.got("rcpt@enforce.test") == [True]


@pytest.mark.parametrize(
    "rcpt, peer, reason",
    [
        ("rcpt@nostarttls.test", "plain", "does not offer STARTTLS"),
        ("rcpt@badcert.test", "untrusted", "CERTIFICATE_VERIFY_FAILED"),
        ("rcpt@mismatch.test", "trusted", "CERTIFICATE_VERIFY_FAILED"),
    ],
)
def test_enforce_defers_4_7_5_without_verified_tls_and_delivers_nothing(
    world: World, rcpt: str, peer: str, reason: str
) -> None:
    with world.server.client() as http:
        inbox = setup_inbox(http, f"sender@{rcpt.partition('@')[2].split('.')[0]}-out.example.test")
        message_id = _send(http, inbox, rcpt)
        attempts = _attempts(http, inbox, message_id, "deferred")
        time.sleep(1.5)  # a retry comes and fails the same way
        attempts = _attempts(http, inbox, message_id, "deferred")
    assert all(a["outcome"] == "deferred" for a in attempts)
    first = attempts[0]
    assert (first["code"], first["enhanced"]) == (451, "4.7.5")
    assert "MTA-STS" in first["reply"] and reason in first["reply"]
    assert first["details"]["mta_sts"]["result"] == "failure"
    assert getattr(world, peer).got(rcpt) == []  # never delivered, not even in clear


def test_enforce_never_tries_an_mx_the_policy_does_not_list(world: World) -> None:
    with world.server.client() as http:
        inbox = setup_inbox(http, "sender@unlisted-out.example.test")
        attempt = _attempts(http, inbox, _send(http, inbox, "rcpt@unlisted.test"), "deferred")[0]
        assert (attempt["code"], attempt["enhanced"], attempt["remote_host"]) == (451, "4.7.5", None)
        assert "mx.unlisted.test" in attempt["reply"] and "mx.elsewhere.test" in attempt["reply"]
        # Of two MX hosts, the preferred one is not listed: it is skipped, the listed one gets the mail.
        mixed = _attempts(http, inbox, _send(http, inbox, "rcpt@mixed.test"), "delivered")[-1]
    assert (mixed["remote_host"], mixed["tls_verified"]) == ("mx.mixed.test", True)
    assert world.plain.got("rcpt@unlisted.test") == [] and world.plain.got("rcpt@mixed.test") == []
    assert world.trusted.got("rcpt@mixed.test") == [True]


def test_testing_mode_delivers_and_records_the_failure(world: World) -> None:
    with world.server.client() as http:
        inbox = setup_inbox(http, "sender@testing-out.example.test")
        attempt = _attempts(http, inbox, _send(http, inbox, "rcpt@testing.test"), "delivered")[-1]
    assert (attempt["code"], attempt["remote_host"], attempt["tls_verified"]) == (250, "mx.testing.test", False)
    sts = attempt["details"]["mta_sts"]
    assert (sts["mode"], sts["result"]) == ("testing", "failure")
    assert "not verified" in sts["failure"] and "CERTIFICATE_VERIFY_FAILED" in sts["failure"]
    assert world.untrusted.got("rcpt@testing.test") == [True]  # encrypted, not authenticated


def test_no_policy_or_mode_none_delivers_as_before(world: World) -> None:
    with world.server.client() as http:
        inbox = setup_inbox(http, "sender@plain-out.example.test")
        plain = _attempts(http, inbox, _send(http, inbox, "rcpt@plain.test"), "delivered")[-1]
        none = _attempts(http, inbox, _send(http, inbox, "rcpt@none.test"), "delivered")[-1]
    for attempt in (plain, none):
        assert attempt["code"] == 250 and attempt["tls_version"] is None  # in clear, as without MTA-STS
        assert attempt["details"] is None or "mta_sts" not in attempt["details"]
    assert world.plain.got("rcpt@plain.test") == [False] and world.plain.got("rcpt@none.test") == [False]


def test_a_cached_policy_is_still_enforced_after_a_restart_with_the_policy_host_down(world: World) -> None:
    with world.server.client() as http:
        inbox = setup_inbox(http, "sender@cached-out.example.test")
        first = _attempts(http, inbox, _send(http, inbox, "one@cached.test"), "delivered")[-1]
        assert (first["remote_host"], first["details"]["mta_sts"]["policy_id"]) == ("mx.cached.test", "c1")
    # The policy host goes away and the TXT id changes: the refetch fails, the stored policy applies.
    world.cached_policy.stop()
    world.dns.set_zone(_zone("c2"))
    world.server.stop()
    world.server.start()
    with world.server.client() as http:
        second = _attempts(http, inbox, _send(http, inbox, "two@cached.test"), "delivered")[-1]
    assert (second["remote_host"], second["tls_verified"]) == ("mx.cached.test", True)
    assert second["details"]["mta_sts"] == {"mode": "enforce", "policy_id": "c1", "result": "success"}
    # Without the policy the preferred MX (rogue, no STARTTLS) would have taken both in clear.
    assert world.plain.got("one@cached.test") == [] and world.plain.got("two@cached.test") == []
    assert world.trusted.got("two@cached.test") == [True]
