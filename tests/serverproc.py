"""Runs a real `agentpost serve` process for tests: init, an API key, start, stop, SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
AGENTPOST = [sys.executable, "-m", "agentpost"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_on_all(ips: tuple[str, ...]) -> int:
    """A TCP port number free on every one of ``ips`` (each peer binds its own address, and one
    outbound port setting applies to every host)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((ips[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for ip in ips[1:]:
                with socket.socket() as s:
                    s.bind((ip, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {ips}")


def wait_port(host: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not open within {timeout}s")


class AgentpostServer:
    def __init__(
        self,
        data_dir: Path,
        database_url: str = "",
        mx_host: str = "127.0.0.1",
        extra_env: dict[str, str] | None = None,
        mx_port: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.mx_host = mx_host
        # A fixed port lets a peer be reached as an MX (outbound.port applies to every MX host).
        self.mx_port = mx_port or free_port(mx_host)
        self.http_port = free_port()
        self.env = {
            **os.environ,
            "AGENTPOST_DATA_DIR": str(data_dir),
            "AGENTPOST_HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
            "AGENTPOST_MX_LISTEN": f"{mx_host}:{self.mx_port}",
            "AGENTPOST_HOSTNAME": "mx.agentpost.test",
            "AGENTPOST_LOG_LEVEL": "INFO",
            # Tests may only reach loopback: never let a server fall back to the system resolver.
            # Nothing listens on 127.0.0.1:9 (discard), so lookups fail as temporary errors.
            "AGENTPOST_DNS_SERVERS": "127.0.0.1:9",
            **(extra_env or {}),
        }
        if database_url:
            self.env["AGENTPOST_DATABASE_URL"] = database_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "serve.log"
        self.api_key = ""

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*AGENTPOST, *args], env=self.env, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"agentpost {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def setup(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.cli("init")
        self.api_key = self.cli("key", "create").stdout.strip()

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*AGENTPOST, "serve"], env=self.env, stdout=log, stderr=log)
        try:
            wait_port(self.mx_host, self.mx_port)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    if httpx.get(self.http_url + "/healthz", timeout=1).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
            raise RuntimeError("server did not become healthy:\n" + self.log())
        except Exception:
            self.kill()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    @contextlib.contextmanager
    def running(self) -> Iterator[AgentpostServer]:
        """Set up, started, and stopped again on leaving."""
        self.setup()
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.http_url, headers={"authorization": f"Bearer {self.api_key}"}, timeout=30)


@contextlib.contextmanager
def authenticating_server(
    data_dir: Path, dns_address: str, postgres: Any, extra_env: dict[str, str] | None = None
) -> Iterator[AgentpostServer]:
    """A started server whose MX checks SPF, DKIM and DMARC through the test DNS server at
    ``dns_address``, loopback clients included (they are trusted by default); on PostgreSQL
    when ``postgres`` (the fixture) is given."""
    url = str(postgres.create_database("a" + uuid.uuid4().hex[:12])) if postgres is not None else ""
    srv = AgentpostServer(
        data_dir,
        database_url=url,
        extra_env={
            "AGENTPOST_DNS_SERVERS": dns_address,
            "AGENTPOST_DNS_TIMEOUT": "3",
            "AGENTPOST_MX_AUTHENTICATE": "true",
            "AGENTPOST_MX_TRUSTED_NETWORKS": "",  # check this loopback client like any other
            "AGENTPOST_MX_PROCESSES": "1",
            **(extra_env or {}),
        },
    )
    with srv.running():
        yield srv
