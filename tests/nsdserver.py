"""NSD (the Debian package's /usr/sbin/nsd) as an unprivileged authoritative DNS server on a loopback port.

    with NsdServer(tmp_path, {"agents.example.test": zone_text}) as nsd:
        resolver_setting = nsd.address          # "127.0.0.1:PORT", UDP and TCP

Zone texts are BIND master files; `$ORIGIN`, an SOA and an NS record are added when missing.
`reload(zones)` rewrites the files and restarts the server on the same port.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from serverproc import free_port

NSD = shutil.which("nsd") or "/usr/sbin/nsd"

__all__ = ["NSD", "NsdServer", "available"]


def available() -> bool:
    return Path(NSD).exists()


def _complete(origin: str, text: str) -> str:
    head = [f"$ORIGIN {origin}.", "$TTL 300"]
    if " SOA " not in text:
        head.append(f"@ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 300")
    if " NS " not in text:
        head += [f"@ IN NS ns.{origin}.", f"ns.{origin}. IN A 127.0.0.1"]
    return "\n".join(head) + "\n" + text + "\n"


class NsdServer:
    def __init__(self, workdir: Path, zones: Mapping[str, str], host: str = "127.0.0.1") -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None
        self.zones = dict(zones)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _write(self) -> Path:
        conf = [
            "server:",
            f"  ip-address: {self.host}",
            f"  port: {self.port}",
            '  username: ""',
            '  chroot: ""',
            f'  zonesdir: "{self.dir}"',
            '  database: ""',
            f'  pidfile: "{self.dir}/nsd.pid"',
            f'  xfrdfile: "{self.dir}/xfrd.state"',
            f'  zonelistfile: "{self.dir}/zone.list"',
            f'  xfrdir: "{self.dir}"',
            f'  logfile: "{self.dir}/nsd.log"',
            "  server-count: 1",
            "  verbosity: 1",
            "remote-control:",
            "  control-enable: no",
        ]
        for origin, text in self.zones.items():
            path = self.dir / f"{origin}.zone"
            path.write_text(_complete(origin, text))
            conf += ["zone:", f"  name: {origin}", f"  zonefile: {path.name}"]
        path = self.dir / "nsd.conf"
        path.write_text("\n".join(conf) + "\n")
        return path

    def start(self) -> None:
        conf = self._write()
        check = subprocess.run([NSD.replace("nsd", "nsd-checkconf"), str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nsd-checkconf: {check.stderr}")
        log = open(self.dir / "nsd.out", "ab")
        self.proc = subprocess.Popen([NSD, "-d", "-c", str(conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("nsd exited:\n" + self.log())
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            if "zone" in self.log() and "started" in self.log():
                return
            time.sleep(0.05)
        raise RuntimeError("nsd did not start:\n" + self.log())

    def log(self) -> str:
        parts = [p.read_text(errors="replace") for p in (self.dir / "nsd.out", self.dir / "nsd.log") if p.exists()]
        return "".join(parts)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def reload(self, zones: Mapping[str, str]) -> None:
        """Serve new zone texts (a restart on the same port: quick, and no control channel needed)."""
        self.stop()
        self.zones = dict(zones)
        (self.dir / "nsd.log").unlink(missing_ok=True)
        (self.dir / "nsd.out").unlink(missing_ok=True)
        self.start()

    def __enter__(self) -> NsdServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
