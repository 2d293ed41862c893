"""Multi-node outbound: two `agentpost serve` processes on one PostgreSQL database share the queue.

A third process (the loader) fills the queue through the API while it cannot deliver (its only
DNS server never answers, and it delivers one message at a time), then stops. The two nodes
then deliver the backlog through a test DNS server's MX to Postfix's smtp-sink, which dumps
every transaction to its own file: counting Message-IDs there shows what arrived how often.
Each node binds its own source address, so the sink's X-Client-Addr tells which one delivered.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dnsserver import DnsServer
from mailclient import setup_inbox
from serverproc import AgentpostServer, free_port, wait_port

pytestmark = pytest.mark.postgresql

SINK_IP = "127.0.0.8"
NODE_IPS = ("127.0.0.11", "127.0.0.12")  # outbound source address of node 1 and node 2
SMTP_SINK = shutil.which("smtp-sink", path="/usr/sbin:/usr/bin:/sbin:/bin")
MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\s]+>)", re.IGNORECASE | re.MULTILINE)
CLIENT_ADDR = re.compile(rb"^X-Client-Addr: (\S+)", re.MULTILINE)
END = b"-- end of test message --"


class Sink:
    """smtp-sink on SINK_IP, one dump file per mail transaction (``-w``: seconds before the 354)."""

    def __init__(self, data_delay: int = 0) -> None:
        assert SMTP_SINK is not None, "postfix smtp-sink not installed: run scripts/install-test-deps.sh"
        # smtp-sink writes as the unprivileged user it switches to, who cannot enter pytest's
        # private (0700) tmp_path: a directory of its own under /tmp, removed by stop().
        self.root = Path(tempfile.mkdtemp(prefix="agentpost-sink-"))
        self.root.chmod(0o755)
        self.dump_dir = self.root / "dump"
        self.dump_dir.mkdir(mode=0o777)
        self.dump_dir.chmod(0o777)  # mkdir's mode is cut by the umask
        self.port = free_port(SINK_IP)
        command = [SMTP_SINK, "-h", "mx.remote.test", "-d", f"{self.dump_dir}/%H%M%S.", "-m", "512"]
        if data_delay:
            command += ["-w", str(data_delay)]
        if os.geteuid() == 0:
            command += ["-u", "nobody"]
        self.proc = subprocess.Popen(
            [*command, f"{SINK_IP}:{self.port}", "512"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(SINK_IP, self.port, timeout=10)

    def count(self) -> int:
        return sum(1 for _ in os.scandir(self.dump_dir))

    def wait(self, count: int, timeout: float) -> int:
        """Poll until ``count`` transactions have started (or ``timeout``); how many have."""
        deadline = time.monotonic() + timeout
        while (n := self.count()) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        return n

    def wait_for_all(self, expected: set[str], timeout: float, stall: float = 60.0) -> None:
        """Poll until every one of ``expected`` has arrived complete, or ``timeout``, or no new
        transaction for ``stall`` seconds."""
        deadline = time.monotonic() + timeout
        seen, progress_at = -1, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - progress_at < stall:
            n = self.count()
            if n != seen:
                seen, progress_at = n, time.monotonic()
            if n >= len(expected) and expected <= set(self.arrivals()[0]):
                return
            time.sleep(0.5)

    def arrivals(self) -> tuple[Counter[str], Counter[str], int]:
        """(Message-ID -> transactions, client address -> transactions, incomplete dumps)."""
        ids: Counter[str] = Counter()
        clients: Counter[str] = Counter()
        incomplete = 0
        for entry in os.scandir(self.dump_dir):
            data = Path(entry.path).read_bytes()
            found = MESSAGE_ID.search(data)
            if found is None or END not in data:
                incomplete += 1  # a transaction cut off mid-DATA: the sink never said 250
                continue
            ids[found.group(1).decode()] += 1
            client = CLIENT_ADDR.search(data)
            clients[client.group(1).decode() if client else "?"] += 1
        return ids, clients, incomplete

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


class Cluster:
    """A loader and two delivery nodes: three `agentpost serve` processes on one database."""

    def __init__(self, root: Path, postgres: Any, dns: DnsServer, sink: Sink, node_env: dict[str, str]) -> None:
        self.dbname = "mn" + uuid.uuid4().hex[:12]
        url = str(postgres.create_database(self.dbname))
        shared = {
            # One secret for all: DKIM keys are sealed with it by whichever process adds the domain.
            "AGENTPOST_SECRET_KEY": secrets.token_urlsafe(32),
            # One OS process per `agentpost serve` (no extra worker processes on the same ports),
            # so SIGKILL takes a whole node down at once.
            "AGENTPOST_MX_PROCESSES": "1",
        }
        # The loader's only DNS server is a UDP socket nobody reads: its one delivery slot waits
        # on a lookup for ten minutes, so everything it queues stays queued.
        self._black_hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._black_hole.bind(("127.0.0.1", 0))
        self.loader = AgentpostServer(
            root / "loader",
            database_url=url,
            extra_env={
                **shared,
                "AGENTPOST_DNS_SERVERS": f"127.0.0.1:{self._black_hole.getsockname()[1]}",
                "AGENTPOST_DNS_TIMEOUT": "600",
                "AGENTPOST_OUTBOUND_CONCURRENCY": "1",
                "AGENTPOST_OUTBOUND_LEASE": "1",  # its one claimed item is free soon after it stops
            },
        )
        self.nodes = [
            AgentpostServer(
                root / f"node{i + 1}",
                database_url=url,
                extra_env={
                    **shared,
                    **node_env,
                    "AGENTPOST_DNS_SERVERS": dns.address,
                    "AGENTPOST_OUTBOUND_PORT": str(sink.port),
                    "AGENTPOST_OUTBOUND_SOURCE": ip,
                    "AGENTPOST_HOSTNAME": f"node{i + 1}.agentpost.test",
                },
            )
            for i, ip in enumerate(NODE_IPS)
        ]

    def fill(self, count: int, tag: str) -> set[str]:
        """Queue ``count`` messages to remote.test through the loader's API; their Message-IDs."""
        self.loader.setup()
        self.loader.start()
        try:
            with self.loader.client() as http:
                inbox = setup_inbox(http, f"sender@{tag}.agentpost.test")

            def send(chunk: range) -> list[str]:
                ids = []
                with self.loader.client() as http:
                    for n in chunk:
                        body = {
                            "to": f"rcpt{n}@remote.test",
                            "subject": f"{tag} {n}",
                            "text": f"message {n} of {count}\n{END.decode()}\n",
                        }
                        response = http.post(f"/v0/inboxes/{inbox}/messages/send", json=body)
                        assert response.status_code == 200, response.text
                        ids.append(str(response.json()["message_id"]))
                return ids

            started = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                chunks = [range(i, count, 8) for i in range(8)]
                ids = {message_id for batch in pool.map(send, chunks) for message_id in batch}
            print(f"\n[{tag}] queued {len(ids)} messages through the API in {time.monotonic() - started:.1f}s")
        finally:
            self.loader.stop()
        assert len(ids) == count
        return ids

    def setup_nodes(self) -> None:
        for node in self.nodes:
            node.setup()  # its own data dir and config; the database is already migrated

    def start_nodes(self) -> None:
        with ThreadPoolExecutor(len(self.nodes)) as pool:  # together: neither gets a head start
            list(pool.map(AgentpostServer.start, self.nodes))

    def queue_states(self, postgres: Any) -> dict[str, int]:
        out = postgres.psql("SELECT status, count(*) FROM outbound_queue GROUP BY status", dbname=self.dbname)
        return {status: int(n) for status, n in (line.split("|") for line in out.split())}

    def reclaimed(self, postgres: Any) -> int:
        """Queue items claimed more than once: their first claimant's lease ran out."""
        out = postgres.psql("SELECT count(*) FROM outbound_queue WHERE attempts > 1", dbname=self.dbname)
        return int(out.strip())

    def stop(self) -> None:
        for server in (*self.nodes, self.loader):
            server.stop()
        self._black_hole.close()


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    zone: dict[str, dict[str, list[Any]]] = {
        "remote.test": {"MX": [(10, "mx.remote.test")]},
        "mx.remote.test": {"A": [SINK_IP]},
    }
    with DnsServer(zone) as server:
        yield server


def _assert_sources_usable() -> None:
    for ip in (SINK_IP, *NODE_IPS):  # Linux routes all of 127/8 to lo: binding needs no alias
        with socket.socket() as s:
            s.bind((ip, 0))


def test_two_nodes_on_one_database_deliver_2000_queued_messages_each_exactly_once(
    tmp_path: Path, postgres: Any, dns: DnsServer
) -> None:
    _assert_sources_usable()
    total = 2000
    sink = Sink()
    cluster = Cluster(tmp_path, postgres, dns, sink, {})
    try:
        expected = cluster.fill(total, "multinode")
        cluster.setup_nodes()
        started = time.monotonic()  # from launching both nodes: their start-up is included
        cluster.start_nodes()
        sink.wait_for_all(expected, timeout=300)
        elapsed = time.monotonic() - started
        time.sleep(1.0)  # anything delivered twice would show up now
        ids, clients, incomplete = sink.arrivals()
        arrived = sink.count()
        duplicates = sum(n - 1 for n in ids.values())
        per_node = {ip: clients[ip] for ip in NODE_IPS}
        print(
            f"[multinode] delivered {len(ids)}/{total} distinct ({arrived} transactions) in {elapsed:.1f}s "
            f"({total / elapsed:.0f}/s) from launching both nodes; duplicates {duplicates}; per node {per_node}; "
            f"incomplete dumps {incomplete}"
        )
        assert set(ids) == expected, f"missing {len(expected - set(ids))}, unexpected {len(set(ids) - expected)}"
        assert duplicates == 0, [m for m, n in ids.items() if n > 1][:10]
        assert sum(per_node.values()) == total and all(per_node.values()), per_node  # both nodes took a share
        assert cluster.queue_states(postgres) == {"delivered": total}
    finally:
        cluster.stop()
        sink.stop()


def test_sigkill_of_one_node_loses_nothing_the_other_delivers_its_leased_items(
    tmp_path: Path, postgres: Any, dns: DnsServer
) -> None:
    _assert_sources_usable()
    total = 400
    lease = 6.0
    # Every transaction takes over a second (the sink waits before its 354), so node 1 is killed
    # with transactions in flight and items leased. Each node claims no more than it can have in
    # flight at once (concurrency = per_host), so no item waits out its lease inside a live node.
    sink = Sink(data_delay=1)
    node_env = {
        "AGENTPOST_OUTBOUND_LEASE": str(lease),
        "AGENTPOST_OUTBOUND_CONCURRENCY": "20",
        "AGENTPOST_OUTBOUND_PER_HOST": "20",
    }
    cluster = Cluster(tmp_path, postgres, dns, sink, node_env)
    try:
        expected = cluster.fill(total, "sigkill")
        cluster.setup_nodes()
        started = time.monotonic()  # from launching both nodes: their start-up is included
        cluster.start_nodes()
        victim = cluster.nodes[0]
        assert sink.wait(total // 4, timeout=120) >= total // 4
        victim.kill()  # SIGKILL: no shutdown, its leases stay taken until they expire
        killed_at = time.monotonic()
        before_kill, clients_before, _ = sink.arrivals()
        sink.wait_for_all(expected, timeout=300)
        elapsed = time.monotonic() - started
        time.sleep(lease + 1.0)  # a re-delivery after a lease ran out would show up now
        ids, clients, incomplete = sink.arrivals()
        arrived = sink.count()
        duplicates = sum(n - 1 for n in ids.values())
        reclaimed = cluster.reclaimed(postgres)
        print(
            f"[sigkill] node 1 killed {killed_at - started:.1f}s after launch with "
            f"{sum(before_kill.values())} delivered ({clients_before[NODE_IPS[0]]} by node 1); "
            f"all {len(ids)}/{total} distinct delivered in {elapsed:.1f}s ({arrived} transactions); "
            f"duplicates {duplicates} (at-least-once after a crash); "
            f"per node {dict(clients)}; cut-off transactions {incomplete}; "
            f"items re-claimed after a lease ran out {reclaimed}"
        )
        assert set(ids) == expected, f"lost {len(expected - set(ids))}: {sorted(expected - set(ids))[:10]}"
        assert clients_before[NODE_IPS[0]] > 0  # node 1 was delivering when it died
        # The loader's one claimed item, and what node 1 held when it died, went to node 2.
        assert reclaimed > 1
        assert cluster.queue_states(postgres) == {"delivered": total}
    finally:
        cluster.stop()
        sink.stop()
