"""An HTTPS server for MTA-STS policies (RFC 8461 §3.3) on a loopback address, for tests.

    server = PolicyServer("127.0.0.22", port, ca.issue_cert("mta-sts.example.test"))
    server.policies["mta-sts.example.test"] = Answer(body="version: STSv1\\nmode: enforce\\n...")
    server.start()

Answers by the Host header (without the port); unknown hosts get 404. ``requests`` records
(SNI name, Host header, path) for every request.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trustme

__all__ = ["Answer", "PolicyServer", "policy_text"]


def policy_text(mode: str, mx: list[str], max_age: int = 86400) -> str:
    return "version: STSv1\r\n" + f"mode: {mode}\r\n" + "".join(f"mx: {m}\r\n" for m in mx) + f"max_age: {max_age}\r\n"


@dataclass
class Answer:
    body: str | bytes = ""
    status: int = 200
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].lower()
        sni = getattr(self.connection, "sni", None)
        with self.server.owner.lock:
            self.server.owner.requests.append((sni, host, self.path))
            answer = self.server.owner.policies.get(host)
        if answer is None or self.path != "/.well-known/mta-sts.txt":
            answer = Answer("not found", status=404)
        body = answer.body.encode() if isinstance(answer.body, str) else answer.body
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: PolicyServer


class PolicyServer:
    def __init__(self, ip: str, port: int, cert: trustme.LeafCert) -> None:
        self.ip = ip
        self.port = port
        self.policies: dict[str, Answer] = {}
        self.requests: list[tuple[str | None, str, str]] = []
        self.lock = threading.Lock()
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.context)
        self.context.sni_callback = self._remember_sni
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def _remember_sni(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> None:
        sock.sni = name  # type: ignore[union-attr]

    def start(self) -> None:
        server = _Server((self.ip, self.port), _Handler, bind_and_activate=False)
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        server.socket = self.context.wrap_socket(server.socket, server_side=True)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> PolicyServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
