"""A private, throwaway PostgreSQL cluster on 127.0.0.1 for tests (``python tests/pgserver.py`` runs one)."""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PrivatePostgres", "find_pg_bindir"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def find_pg_bindir(version: int | None = None) -> Path:
    """Directory holding initdb/pg_ctl/postgres: Debian keeps them out of PATH, per major version."""
    candidates = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        try:
            major = int(Path(d).parent.name)
        except ValueError:
            continue
        if (Path(d) / "initdb").exists() and (version is None or major == version):
            candidates.append((major, Path(d)))
    if not candidates:
        raise RuntimeError(
            "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (run scripts/install-test-deps.sh)"
        )
    return max(candidates)[1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """One PostgreSQL cluster in a temp dir, listening on 127.0.0.1:<free port> with trust auth.

    Runs as the ``postgres`` OS user when we are root (PostgreSQL refuses to run as root).
    ``durable=False`` (default) turns fsync and friends off: tests do not survive power loss
    anyway and it makes the cluster several times faster. ``durable=True`` keeps the server's
    crash-safe defaults (for benchmarks that must compare like with like).

    ``url`` is ``postgresql://postgres@127.0.0.1:PORT/<dbname>``; ``create_database(name)``
    returns the same kind of URL for a fresh database (per-test isolation).
    """

    def __init__(
        self,
        *,
        dbname: str = "agentpost",
        durable: bool = False,
        port: int | None = None,
        version: int | None = None,
        base_dir: str | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        _check_ident(dbname)
        self.dbname = dbname
        self.durable = durable
        self.host = "127.0.0.1"
        self.port = port
        self.user = "postgres"
        self.bindir = find_pg_bindir(version)
        self.settings = dict(settings or {})
        self._base_dir = base_dir
        self.root: Path | None = None
        self._run_as = "postgres" if os.geteuid() == 0 else None

    # -- paths and URLs ----------------------------------------------------------------------
    @property
    def datadir(self) -> Path:
        return self._root() / "data"

    @property
    def log_path(self) -> Path:
        return self._root() / "postgres.log"

    @property
    def url(self) -> str:
        return self.url_for(self.dbname)

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def _root(self) -> Path:
        if self.root is None:
            raise RuntimeError("PrivatePostgres is not started")
        return self.root

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> PrivatePostgres:
        if self.root is not None:
            return self
        self.root = Path(tempfile.mkdtemp(prefix="agentpost-pg-", dir=self._base_dir))
        try:
            if self._run_as:
                pw = pwd.getpwnam(self._run_as)
                os.chown(self.root, pw.pw_uid, pw.pw_gid)
            # --no-sync: initdb's own fsync of a throwaway cluster is wasted time even when
            # durable (the server's fsync setting is what a durable benchmark measures).
            self._run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    self.user,
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                timeout=120,
            )
            self._write_config()
            self._start_server(timeout)
            atexit.register(self.stop)
            self.psql(f'CREATE DATABASE "{self.dbname}"', dbname="postgres")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.root is None:
            return
        atexit.unregister(self.stop)
        pid = self._postmaster_pid()
        if pid is not None and (self.datadir / "postmaster.pid").exists():
            # fast = roll back open transactions and disconnect clients, no waiting for them.
            r = self._run(
                [self._bin("pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "-t", "15", "stop"],
                check=False,
                timeout=30,
            )
            if r.returncode != 0:
                self._run(
                    [self._bin("pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "-t", "10", "stop"],
                    check=False,
                    timeout=20,
                )
            _kill_if_alive(pid)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- databases ---------------------------------------------------------------------------
    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        _check_ident(name)
        self.psql(f'CREATE DATABASE "{name}"', dbname="postgres")
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        _check_ident(name)
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', dbname="postgres")

    def psql(self, sql: str, dbname: str | None = None) -> str:
        """Run SQL through psql over TCP (trust auth, so no runuser needed); return stdout."""
        r = subprocess.run(
            [
                self._bin("psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                dbname or self.dbname,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
        )
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {sql!r}: {r.stderr.strip()}")
        return r.stdout

    # -- internals ---------------------------------------------------------------------------
    def _bin(self, name: str) -> str:
        return str(self.bindir / name)

    def _write_config(self) -> None:
        conf: dict[str, str] = {
            "listen_addresses": "'127.0.0.1'",
            # Sockets in our temp dir: /var/run/postgresql may not exist or be writable.
            "unix_socket_directories": f"'{self._root()}'",
            "max_connections": "200",
            "shared_buffers": "64MB",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] '",
            "dynamic_shared_memory_type": "posix",
        }
        if not self.durable:
            conf.update({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
        conf.update(self.settings)
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n# agentpost test settings\n")
            f.writelines(f"{k} = {v}\n" for k, v in conf.items())
        # Only loopback TCP, no password: initdb -A trust already did this, but be explicit.
        (self.datadir / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")

    def _start_server(self, timeout: float) -> None:
        # A port picked by binding 0 can be taken by someone else before postgres binds it:
        # retry a few times with a fresh port unless the caller fixed the port.
        fixed = self.port is not None
        for attempt in range(5):
            if not fixed:
                self.port = _free_port()
            r = self._run(
                [
                    self._bin("pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-l",
                    str(self.log_path),
                    "-o",
                    f"-p {self.port}",
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "start",
                ],
                check=False,
                timeout=timeout + 10,
            )
            if r.returncode == 0:
                return
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            if fixed or "could not bind" not in log or attempt == 4:
                raise RuntimeError(
                    f"postgres did not start (rc={r.returncode}): {r.stdout}{r.stderr}\n--- log ---\n{log[-4000:]}"
                )
            self.log_path.unlink(missing_ok=True)

    def _run(self, argv: list[str], *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        if self._run_as:
            argv = ["runuser", "-u", self._run_as, "--", *argv]
        # cwd in our dir: the postgres user may not be allowed into the caller's cwd (/root).
        r = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, cwd=self._root(), stdin=subprocess.DEVNULL
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed (rc={r.returncode}): {r.stdout}{r.stderr}")
        return r

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


def _check_ident(name: str) -> None:
    # Database names are interpolated into SQL: allow plain identifiers only.
    if not _IDENT.match(name):
        raise ValueError(f"unsafe database name: {name!r}")


def _kill_if_alive(pid: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main() -> None:
    """Start a cluster, print its URL, and wait for Ctrl-C (or SIGTERM)."""
    import argparse

    ap = argparse.ArgumentParser(description="Run a throwaway PostgreSQL on 127.0.0.1.")
    ap.add_argument("--durable", action="store_true", help="keep fsync on")
    ap.add_argument("--port", type=int)
    ap.add_argument("--dbname", default="agentpost")
    ns = ap.parse_args()
    # SIGINT/SIGTERM -> KeyboardInterrupt so the cluster is cleaned up either way (SIGINT is
    # set explicitly because a shell's background job inherits it as ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with PrivatePostgres(dbname=ns.dbname, durable=ns.durable, port=ns.port) as pg:
        print(pg.url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
