"""Acceptance 4, rotation under load: messages sent continuously across a full DKIM rotation all verify.

A real `agentpost serve` and a real DNS server on loopback. While one thread sends without pause,
the test rotates (POST /v0/domains/{id}/rotate-dkim), publishes the new selectors in the zone, lets
the server's own re-check task notice them and switch signing, and waits out a short grace period
until the old selectors are flagged for removal. Every sent copy (the bytes that went on the wire)
is then verified against the DNS: the old selectors are still published, as they are during grace.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from agentpost.mailauth import dkim_verify
from agentpost.net.dns import DnspythonResolver
from dnsserver import DnsServer
from serverproc import AgentpostServer

DOMAIN = "rotate.example.test"
SENDER = f"alice@{DOMAIN}"
RECIPIENT = f"bob@{DOMAIN}"
GRACE = 3.0  # seconds the old selectors stay published after signing switched away from them


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer({}) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer, postgres: Any) -> Iterator[AgentpostServer]:
    url = str(postgres.create_database("r" + uuid.uuid4().hex[:12])) if postgres is not None else ""
    srv = AgentpostServer(
        tmp_path_factory.mktemp("rotation") / "data",
        database_url=url,
        extra_env={
            "AGENTPOST_DNS_SERVERS": dns.address,
            "AGENTPOST_DNS_TIMEOUT": "3",
            "AGENTPOST_DOMAINS_RECHECK_INTERVAL": "0.3",  # the re-check task also advances rotations
            "AGENTPOST_DOMAINS_DKIM_GRACE_PERIOD": str(GRACE),
            "AGENTPOST_DOMAINS_DKIM_ROTATION_INTERVAL": "0",  # only the rotation this test asks for
        },
    )
    with srv.running():
        yield srv


def _dkim_records(http: httpx.Client, domain_id: str) -> dict[str, dict[str, Any]]:
    response = http.get(f"/v0/domains/{domain_id}")
    response.raise_for_status()
    return {r["name"]: r for r in response.json()["records"] if "._domainkey." in r["name"]}


def _publish(dns: DnsServer, records: dict[str, dict[str, Any]]) -> None:
    """Serve every DKIM record listed (pending, active and retiring keys alike)."""
    dns.set_zone({name: {"TXT": [r["value"]]} for name, r in records.items()})


def _wait(what: str, condition: Any, server: AgentpostServer, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} never happened:\n{server.log()[-3000:]}"
        time.sleep(0.1)


class Sender(threading.Thread):
    """Sends one message after another until stopped; keeps each message's id."""

    def __init__(self, server: AgentpostServer) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.sent: list[str] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with self.server.client() as http:
            while not self.stopping.is_set():
                n = len(self.sent)
                response = http.post(
                    f"/v0/inboxes/{SENDER}/messages/send",
                    json={"to": [RECIPIENT], "subject": f"load {n}", "text": f"message {n} of the rotation"},
                )
                if response.status_code != 200:
                    self.errors.append(response.text)
                    return
                self.sent.append(response.json()["message_id"])

    def count(self) -> int:
        return len(self.sent)

    def wait_for(self, more: int) -> None:
        target = self.count() + more
        _wait(f"{more} more sends", lambda: self.count() >= target or bool(self.errors), self.server)
        assert not self.errors, self.errors


def test_messages_sent_across_a_full_dkim_rotation_all_verify(server: AgentpostServer, dns: DnsServer) -> None:
    with server.client() as http:
        domain = http.post("/v0/domains", json={"domain": DOMAIN}).json()
        for name in ("alice", "bob"):
            http.post("/v0/inboxes", json={"username": name, "domain": DOMAIN}).raise_for_status()
        before = _dkim_records(http, domain["domain_id"])
        _publish(dns, before)
        old = sorted(name.split(".")[0] for name in before)

        sender = Sender(server)
        sender.start()
        try:
            sender.wait_for(20)
            rotated = http.post(f"/v0/domains/{domain['domain_id']}/rotate-dkim")
            rotated.raise_for_status()
            listed = {r["name"]: r for r in rotated.json()["records"] if "._domainkey." in r["name"]}
            new = sorted(name.split(".")[0] for name in listed if name not in before)
            assert len(new) == 2, listed

            sender.wait_for(20)  # pending, not yet in DNS: still signed with the old selectors
            _publish(dns, listed)
            records = lambda: _dkim_records(http, domain["domain_id"])  # noqa: E731
            old_name = f"{old[0]}._domainkey.{DOMAIN}"
            _wait("the switch", lambda: "previous key" in (records()[old_name]["reason"] or ""), server)
            sender.wait_for(20)
            _wait("the old selectors' retirement", lambda: records()[old_name]["status"] == "REMOVE", server)
            sender.wait_for(20)
        finally:
            sender.stopping.set()
            sender.join(30)
        assert not sender.errors, sender.errors

        raws = []
        for message_id in sender.sent:
            raw = http.get(f"/v0/inboxes/{SENDER}/messages/{quote(message_id, safe='')}/raw")
            raw.raise_for_status()
            raws.append(httpx.get(raw.json()["download_url"], timeout=30).content)

    async def verify_all() -> list[list[dkim_verify.DkimResult]]:
        resolver = DnspythonResolver([dns.address], timeout=3)
        return [await dkim_verify.verify(resolver, raw) for raw in raws]

    results = asyncio.run(verify_all())
    failed = [
        (i, [(r.selector, r.result, r.reason) for r in found])
        for i, found in enumerate(results)
        if len(found) != 2 or any(r.result != "pass" for r in found)
    ]
    by_selectors: dict[tuple[str, ...], int] = {}
    for found in results:
        key = tuple(sorted(r.selector for r in found))
        by_selectors[key] = by_selectors.get(key, 0) + 1
    verified = len(results) - len(failed)
    spread = ", ".join(f"{n} signed by {'+'.join(k)}" for k, n in by_selectors.items())
    print(
        f"rotation under load: {verified}/{len(results)} messages verify, selectors {'+'.join(old)} -> "
        f"{'+'.join(new)} ({spread})"
    )
    assert not failed, failed[:5]
    # The load spanned the rotation: messages signed by each generation, and nothing else.
    assert set(by_selectors) == {tuple(old), tuple(new)}
    assert sorted(r.selector for r in results[0]) == old and sorted(r.selector for r in results[-1]) == new
