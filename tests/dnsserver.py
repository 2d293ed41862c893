"""An in-process authoritative DNS server for tests: dnslib over UDP and TCP on a loopback port.

    with DnsServer({"example.test": {"MX": [(10, "mx.example.test")]},
                    "mx.example.test": {"A": ["127.0.0.5"]}}, servfail={"broken.test"}) as server:
        resolver = DnspythonResolver([server.address])      # "127.0.0.1:PORT"

The zone is the same dict FakeResolver takes (record types MX, A, AAAA, TXT, PTR, CNAME, NS; PTR
keyed by the IP address), or BIND-like text ("example.test. 300 IN MX 10 mx.example.test.").
Names not in the zone get NXDOMAIN; names present without the asked type get NODATA. UDP answers
bigger than 512 octets (or the client's EDNS payload size) are sent truncated, so clients must
retry over TCP; `queries` records (name, type, protocol) for every question.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from dnslib import AAAA, CNAME, MX, NS, PTR, QTYPE, RCODE, RR, TXT, A, DNSLabel, DNSRecord  # type: ignore[import-untyped]
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer  # type: ignore[import-untyped]

__all__ = ["DnsServer"]

ZoneDict = Mapping[str, Mapping[str, Sequence[Any]]]


def _key(name: str | DNSLabel) -> str:
    return str(name).rstrip(".").lower() or "."


def _fqdn(name: str) -> str:
    return "." if name in (".", "") else name.rstrip(".") + "."


def _txt_chunks(value: Any) -> list[bytes]:
    if isinstance(value, list | tuple):
        return [part.encode() if isinstance(part, str) else bytes(part) for part in value]
    data = value.encode() if isinstance(value, str) else bytes(value)
    return [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]


def _rrs_from_dict(zone: ZoneDict, ttl: int) -> list[RR]:
    rrs: list[RR] = []
    for owner, records in zone.items():
        name = owner
        try:
            name = ipaddress.ip_address(owner).reverse_pointer  # PTR keyed by the address
        except ValueError:
            pass
        for rtype, values in records.items():
            rtype = rtype.upper()
            for value in values:
                rdata: Any
                if rtype == "A":
                    rdata = A(value)
                elif rtype == "AAAA":
                    rdata = AAAA(value)
                elif rtype == "MX":
                    rdata = MX(_fqdn(value[1]), value[0])
                elif rtype == "TXT":
                    rdata = TXT(_txt_chunks(value))
                elif rtype == "PTR":
                    rdata = PTR(_fqdn(value))
                elif rtype == "CNAME":
                    rdata = CNAME(_fqdn(value))
                elif rtype == "NS":
                    rdata = NS(_fqdn(value))
                else:
                    raise ValueError(f"unsupported record type {rtype}")
                rrs.append(RR(_fqdn(name), getattr(QTYPE, rtype), rdata=rdata, ttl=ttl))
    return rrs


class _ZoneResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, rrs: list[RR], servfail: set[str]) -> None:
        self.rrs = rrs
        self.servfail = servfail
        self.queries: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()  # authoritative answer, RA off
        qname = request.q.qname
        qtype = QTYPE[request.q.qtype]
        with self.lock:
            self.queries.append((_key(qname), qtype, handler.protocol))
            rrs = list(self.rrs)
        if _key(qname) in self.servfail:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        owned = [rr for rr in rrs if _key(rr.rname) == _key(qname)]
        if not owned:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for rr in owned:
            if QTYPE[rr.rtype] == qtype or qtype == "ANY" or (QTYPE[rr.rtype] == "CNAME" and qtype != "CNAME"):
                reply.add_answer(rr)
        if handler.protocol == "udp":
            limit = 512
            for rr in request.ar:
                if rr.rtype == QTYPE.OPT:
                    limit = max(512, int(rr.rclass))
            if len(reply.pack()) > limit:
                # TC=1 and the question kept (dnslib's truncate() drops it, which dnspython refuses).
                reply = request.reply()
                reply.header.tc = 1
        return reply


class DnsServer:
    """Authoritative dnslib server on 127.0.0.1, UDP and TCP on the same random free port."""

    def __init__(
        self,
        zone: ZoneDict | str | None = None,
        *,
        servfail: Iterable[str] = (),
        host: str = "127.0.0.1",
        ttl: int = 300,
    ) -> None:
        if isinstance(zone, str):
            rrs = list(RR.fromZone(zone))
        else:
            rrs = _rrs_from_dict(zone or {}, ttl)
        self.host = host
        self.port = 0
        self._ttl = ttl
        self._resolver = _ZoneResolver(rrs, {_key(name) for name in servfail})
        self._servers: list[DNSServer] = []

    @property
    def address(self) -> str:
        """The server as a "host:port" string for DnspythonResolver."""
        return f"{self.host}:{self.port}"

    @property
    def queries(self) -> list[tuple[str, str, str]]:
        with self._resolver.lock:
            return list(self._resolver.queries)

    def set_zone(self, zone: ZoneDict | str) -> None:
        """Replace the records served while running (a zone change, as a DNS host publishes one)."""
        rrs = list(RR.fromZone(zone)) if isinstance(zone, str) else _rrs_from_dict(zone, self._ttl)
        with self._resolver.lock:
            self._resolver.rrs = rrs

    def set_servfail(self, names: Iterable[str]) -> None:
        with self._resolver.lock:
            self._resolver.servfail = {_key(name) for name in names}

    def start(self) -> None:
        logger = DNSLogger(log="-request,-reply,-truncated,-error", prefix=False)
        last_error: OSError | None = None
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((self.host, 0))
                port = int(probe.getsockname()[1])
            servers: list[DNSServer] = []
            try:
                for tcp in (False, True):
                    servers.append(DNSServer(self._resolver, address=self.host, port=port, tcp=tcp, logger=logger))
            except OSError as exc:  # the TCP port was taken: pick another
                last_error = exc
                for server in servers:
                    server.server.server_close()
                continue
            self.port = port
            self._servers = servers
            for server in servers:
                server.server.daemon_threads = True
                server.start_thread()
            return
        raise RuntimeError(f"no free port for the test DNS server: {last_error}")

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()
        self._servers = []

    def __enter__(self) -> DnsServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
