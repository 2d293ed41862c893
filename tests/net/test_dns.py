"""DNS lookups against a real (in-process dnslib) authoritative server, and the fake's parity with it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from agentpost.net.dns import DnsError, DnspythonResolver, FakeResolver, MxTarget, NullMx, Resolver, resolve_mx
from dnsserver import DnsServer

BIG_TXT = "v=DKIM1; k=rsa; p=" + "A" * 2000  # far beyond 512 octets: the UDP answer is truncated

ZONE: dict[str, dict[str, list[Any]]] = {
    "example.test": {
        "MX": [(10, "mx1.example.test"), (10, "mx2.example.test"), (20, "mx3.example.test")],
        "TXT": ["v=spf1 ip4:127.0.0.0/8 -all", ["first half ", "second half"]],
    },
    "mx1.example.test": {"A": ["127.0.0.11"], "AAAA": ["::1"]},
    "mx2.example.test": {"A": ["127.0.0.12"]},
    "mx3.example.test": {"A": ["127.0.0.13"]},
    "null.test": {"MX": [(0, ".")]},
    "implicit.test": {"A": ["127.0.0.20"], "AAAA": ["::1"]},
    "nothing.test": {"TXT": ["no mail here"]},
    "dangling.test": {"MX": [(10, "missing.test")]},
    "partial.test": {"MX": [(10, "broken.test"), (20, "mx3.example.test")]},
    "lame.test": {"MX": [(10, "broken.test")]},
    "big.test": {"TXT": [BIG_TXT]},
    "xn--bcher-kva.test": {"MX": [(5, "mx2.example.test")]},
    "127.0.0.11": {"PTR": ["mx1.example.test"]},
}
SERVFAIL = {"broken.test"}


@pytest.fixture(scope="module")
def server() -> Iterator[DnsServer]:
    with DnsServer(ZONE, servfail=SERVFAIL) as dns_server:
        yield dns_server


@pytest.fixture
def real(server: DnsServer) -> DnspythonResolver:
    return DnspythonResolver([server.address], timeout=1.0, lifetime=3.0)


@pytest.fixture(params=["dnspython", "fake"])
def resolver(request: pytest.FixtureRequest, server: DnsServer) -> Resolver:
    if request.param == "fake":
        return FakeResolver(ZONE, servfail=SERVFAIL)
    return DnspythonResolver([server.address], timeout=1.0, lifetime=3.0)


async def test_mx_records_sorted_by_preference(resolver: Resolver) -> None:
    assert await resolver.mx("example.test") == [
        (10, "mx1.example.test"),
        (10, "mx2.example.test"),
        (20, "mx3.example.test"),
    ]


async def test_a_returns_ipv4_before_ipv6(resolver: Resolver) -> None:
    assert await resolver.a("mx1.example.test") == ["127.0.0.11", "::1"]


async def test_txt_joins_character_strings_per_record(resolver: Resolver) -> None:
    assert sorted(await resolver.txt("example.test")) == ["first half second half", "v=spf1 ip4:127.0.0.0/8 -all"]


async def test_ptr(resolver: Resolver) -> None:
    assert await resolver.ptr("127.0.0.11") == ["mx1.example.test"]


async def test_nxdomain_and_nodata_are_empty_not_errors(resolver: Resolver) -> None:
    assert await resolver.mx("no-such-domain.test") == []
    assert await resolver.a("no-such-domain.test") == []
    assert await resolver.mx("implicit.test") == []  # NODATA
    assert await resolver.txt("mx2.example.test") == []


async def test_servfail_is_a_temporary_error(resolver: Resolver) -> None:
    with pytest.raises(DnsError) as caught:
        await resolver.mx("broken.test")
    assert caught.value.temporary


async def test_resolve_mx_orders_hosts_and_resolves_addresses(resolver: Resolver) -> None:
    targets = await resolve_mx(resolver, "example.test")
    assert sorted(targets[:2], key=lambda t: t.host) == [
        MxTarget("mx1.example.test", 10, ["127.0.0.11", "::1"], implicit=False),
        MxTarget("mx2.example.test", 10, ["127.0.0.12"], implicit=False),
    ]
    assert targets[2] == MxTarget("mx3.example.test", 20, ["127.0.0.13"], implicit=False)


async def test_equal_preferences_are_tried_in_random_order(resolver: Resolver) -> None:
    orders = set()
    for _ in range(60):
        targets = await resolve_mx(resolver, "example.test")
        orders.add(tuple(t.host for t in targets[:2]))
        assert targets[2].host == "mx3.example.test"
    assert orders == {("mx1.example.test", "mx2.example.test"), ("mx2.example.test", "mx1.example.test")}


async def test_no_mx_means_implicit_mx_on_the_domain_itself(resolver: Resolver) -> None:
    assert await resolve_mx(resolver, "implicit.test") == [
        MxTarget("implicit.test", 0, ["127.0.0.20", "::1"], implicit=True)
    ]


async def test_null_mx_raises(resolver: Resolver) -> None:
    with pytest.raises(NullMx):
        await resolve_mx(resolver, "null.test")


async def test_nothing_resolvable_is_empty(resolver: Resolver) -> None:
    assert await resolve_mx(resolver, "nothing.test") == []
    assert await resolve_mx(resolver, "dangling.test") == []
    assert await resolve_mx(resolver, "no-such-domain.test") == []


async def test_servfail_on_mx_query_is_temporary(resolver: Resolver) -> None:
    with pytest.raises(DnsError) as caught:
        await resolve_mx(resolver, "broken.test")
    assert caught.value.temporary


async def test_mx_host_that_servfails_is_skipped_when_another_resolves(resolver: Resolver) -> None:
    assert [t.host for t in await resolve_mx(resolver, "partial.test")] == ["mx3.example.test"]
    with pytest.raises(DnsError) as caught:  # only unresolvable-for-now hosts: try again later
        await resolve_mx(resolver, "lame.test")
    assert caught.value.temporary


async def test_idn_domain_is_looked_up_as_a_labels(resolver: Resolver) -> None:
    assert [t.host for t in await resolve_mx(resolver, "bücher.test")] == ["mx2.example.test"]


async def test_null_mx_beside_real_mx_is_ignored() -> None:
    fake = FakeResolver(
        {"mixed.test": {"MX": [(0, "."), (10, "mx.mixed.test")]}, "mx.mixed.test": {"A": ["127.0.0.9"]}}
    )
    assert await resolve_mx(fake, "mixed.test") == [MxTarget("mx.mixed.test", 10, ["127.0.0.9"], implicit=False)]


async def test_big_answer_falls_back_to_tcp(server: DnsServer, real: DnspythonResolver) -> None:
    assert await real.txt("big.test") == [BIG_TXT]
    asked = [protocol for name, rtype, protocol in server.queries if (name, rtype) == ("big.test", "TXT")]
    assert "udp" in asked and "tcp" in asked


async def test_bind_style_zone_and_bracketed_server_address() -> None:
    zone = "zone.test. 300 IN MX 10 mx.zone.test.\nmx.zone.test. 300 IN A 127.0.0.30\n"
    with DnsServer(zone) as dns_server:
        resolver = DnspythonResolver([f"[127.0.0.1]:{dns_server.port}"], timeout=1.0, lifetime=3.0)
        assert await resolve_mx(resolver, "zone.test") == [MxTarget("mx.zone.test", 10, ["127.0.0.30"], False)]


async def test_server_that_never_answers_times_out_as_temporary() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        resolver = DnspythonResolver([f"127.0.0.1:{silent.getsockname()[1]}"], timeout=0.2, lifetime=0.5)
        with pytest.raises(DnsError) as caught:
            await resolver.mx("example.test")
    assert caught.value.temporary


async def test_fake_records_its_queries() -> None:
    fake = FakeResolver(ZONE)
    await resolve_mx(fake, "implicit.test")
    assert fake.queries == [("implicit.test", "MX"), ("implicit.test", "A"), ("implicit.test", "AAAA")]
