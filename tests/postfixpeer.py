"""A private, throwaway Postfix instance for tests and benchmarks (a real MTA peer on loopback)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PrivatePostfix", "ensure_loopback_address", "free_port"]

POSTFIX = shutil.which("postfix", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/postfix"

# Our own master.cf instead of a rewrite of the system one: on a fresh CI machine Postfix is
# installed with "No configuration", so /etc/postfix/master.cf may be absent or differ. Every
# chroot column is "n" (a chroot would need copies of /etc files inside the temp queue dir).
# The "smtp inet" line is filled in with IP:PORT so the instance never touches port 25.
_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def free_port(ip: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``ip`` right now (the kernel picks it for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def ensure_loopback_address(ip: str) -> None:
    """Add ``ip``/32 to ``lo`` unless present.

    Postfix checks that every inet_interfaces address is configured on an interface and exits 1
    without a word otherwise, although Linux routes all of 127/8 to lo anyway.
    """
    if ip == "127.0.0.1" or _has_address(ip):
        return
    r = subprocess.run(["ip", "addr", "add", f"{ip}/32", "dev", "lo"], capture_output=True, text=True)
    # A concurrent test may have added it between the check and the add: the kernel then says
    # "File exists" (or "Address already assigned" on some stacks), which is success for us.
    if r.returncode != 0 and not _has_address(ip):
        raise RuntimeError(f"cannot add {ip} to lo: {r.stderr.strip()}")


def _has_address(ip: str) -> bool:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True, check=True
    ).stdout
    return any(f"inet {ip}/" in line for line in out.splitlines())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except OSError:
        return False


class PrivatePostfix:
    """A Postfix instance in a temp dir: ``postfix -c DIR start`` with its own queue and log.

    Default (sink) mode: accepts mail for ``domain`` from 127.0.0.0/8 and delivers every
    recipient into one Maildir (``.maildir``), so ``count_delivered()`` measures end-to-end
    delivery. Relay mode (``relayhost=("127.0.0.6", 2525)``): everything accepted from loopback
    is relayed to that host, with outbound connections bound to ``ip`` (so SPF sees a distinct
    address). ``extra_main_cf`` overrides or adds main.cf settings (TLS, limits, ...).

    Must run as root (Postfix's master needs it). fsync stays on: Postfix's default durability.
    """

    def __init__(
        self,
        ip: str = "127.0.0.5",
        port: int | None = None,
        *,
        domain: str = "postfix.test",
        hostname: str | None = None,
        relayhost: tuple[str, int] | None = None,
        extra_main_cf: dict[str, str] | None = None,
        mail_user: str = "nobody",
        base_dir: str | None = None,
    ) -> None:
        self.ip = ip
        self.port = port
        self.domain = domain
        self.hostname = hostname or f"mx.{domain}"
        self.relayhost = relayhost
        self.extra_main_cf = dict(extra_main_cf or {})
        self.mail_user = mail_user
        self._base_dir = base_dir
        self.root: Path | None = None
        self._master_pid: int | None = None

    # -- paths -------------------------------------------------------------------------------
    @property
    def config_dir(self) -> Path:
        return self._path("etc")

    @property
    def queue_dir(self) -> Path:
        return self._path("spool")

    @property
    def log_path(self) -> Path:
        return self._path("maillog")

    @property
    def maildir(self) -> Path:
        """The one Maildir that receives every message in sink mode."""
        return self._path("mail") / "sink"

    @property
    def address(self) -> tuple[str, int]:
        assert self.port is not None
        return (self.ip, self.port)

    def _path(self, name: str) -> Path:
        if self.root is None:
            raise RuntimeError("PrivatePostfix is not started")
        return self.root / name

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> PrivatePostfix:
        if os.geteuid() != 0:
            raise RuntimeError("PrivatePostfix must run as root (Postfix master requires it)")
        ensure_loopback_address(self.ip)
        if self.port is None:
            self.port = free_port(self.ip)
        self.root = Path(tempfile.mkdtemp(prefix="agentpost-postfix-", dir=self._base_dir))
        # Postfix daemons run as the postfix user and look up paths below here: 0755, not 0700.
        self.root.chmod(0o755)
        for sub in ("etc", "spool", "data"):
            (self.root / sub).mkdir(mode=0o755)
        pw = pwd.getpwnam(self.mail_user)
        mail_root = self.root / "mail"
        mail_root.mkdir(mode=0o755)
        # virtual(8) creates sink/{tmp,new,cur} itself, as virtual_uid_maps' user.
        os.chown(mail_root, pw.pw_uid, pw.pw_gid)
        postfix_uid = pwd.getpwnam("postfix").pw_uid
        postfix_gid = grp.getgrnam("postfix").gr_gid
        os.chown(self.root / "data", postfix_uid, postfix_gid)

        (self.config_dir / "main.cf").write_text(self._main_cf(pw.pw_uid, pw.pw_gid))
        (self.config_dir / "master.cf").write_text(_MASTER_CF.format(listen=f"{self.ip}:{self.port}"))
        self.log_path.touch()

        r = self._postfix("start", timeout=timeout)
        if r.returncode != 0:
            log = self.log_text()
            self._cleanup_dir()
            raise RuntimeError(
                f"postfix start failed (rc={r.returncode}): {r.stdout}{r.stderr}\n--- maillog ---\n{log}"
            )
        self._master_pid = self._read_master_pid()
        self._wait_listening(timeout)
        return self

    def stop(self) -> None:
        if self.root is None:
            return
        pid = self._master_pid or self._read_master_pid()
        if pid and _pid_alive(pid):
            try:
                r = self._postfix("stop", timeout=15)
                if r.returncode != 0 and _pid_alive(pid):
                    self._postfix("abort", timeout=10)
            except subprocess.TimeoutExpired:
                self._postfix("abort", timeout=10)
            # Last resort: kill master's process group (the daemons are its children).
            deadline = time.monotonic() + 5
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive(pid):
                for target in (-pid, pid):
                    try:
                        os.kill(target, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self._master_pid = None
        self._cleanup_dir()

    def __enter__(self) -> PrivatePostfix:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation -------------------------------------------------------------------------
    def count_delivered(self) -> int:
        """Messages delivered into the sink Maildir (new/ plus cur/; tmp/ is in-progress)."""
        n = 0
        for sub in ("new", "cur"):
            try:
                n += sum(1 for _ in os.scandir(self.maildir / sub))
            except FileNotFoundError:
                pass  # virtual(8) creates the Maildir on first delivery
        return n

    def wait_delivered(self, count: int, timeout: float = 30.0, poll: float = 0.05) -> int:
        """Poll until at least ``count`` messages are delivered or ``timeout``; return the count."""
        deadline = time.monotonic() + timeout
        n = self.count_delivered()
        while n < count and time.monotonic() < deadline:
            time.sleep(poll)
            n = self.count_delivered()
        return n

    def delivered_messages(self) -> list[bytes]:
        """Raw bytes of every delivered message, oldest first (by file name = delivery time)."""
        files = [p for sub in ("new", "cur") if (self.maildir / sub).is_dir() for p in (self.maildir / sub).iterdir()]
        return [p.read_bytes() for p in sorted(files, key=lambda p: p.name)]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return ""

    def flush(self) -> None:
        """Ask the queue manager to retry deferred mail now (useful in relay mode)."""
        self._postfix("flush", timeout=15)

    # -- internals ---------------------------------------------------------------------------
    def _main_cf(self, uid: int, gid: int) -> str:
        root = self.root
        assert root is not None
        cf: dict[str, str] = {
            "compatibility_level": "3.6",
            # Private copies of everything that is per-instance: queue, data (master.lock, TLS
            # caches), log. meta/daemon/command dirs stay the system ones (read-only use).
            "queue_directory": str(self.queue_dir),
            "data_directory": str(root / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": f"postfix-{self.ip}-{self.port}",
            # Log to a file: CI machines have no syslog daemon, and tests read the log.
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(root),
            # Only what Postfix needs; LANG=C keeps daemon messages stable for log matching.
            "import_environment": "MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C POSTLOG_SERVICE POSTLOG_HOSTNAME",
            "inet_interfaces": self.ip,
            "inet_protocols": "ipv4",
            "myhostname": self.hostname,
            "mydomain": self.domain,
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "local_transport": "error:local delivery disabled",
            "alias_maps": "",
            "alias_database": "",
            "mynetworks": "127.0.0.0/8",
            "smtpd_banner": "$myhostname ESMTP Postfix (agentpost test peer)",
            "smtpd_recipient_restrictions": "permit",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "biff": "no",
            "append_dot_mydomain": "no",
            "readme_directory": "no",
            "default_process_limit": "100",
            # No DNS on test machines: never query it (native = /etc/hosts, for [IP] relayhost).
            "disable_dns_lookups": "yes",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "lmtp_host_lookup": "native",
            # Reverse lookups of loopback clients go to /etc/hosts and a dead resolver; skip them.
            "smtpd_peername_lookup": "no",
            "smtp_bind_address": self.ip,
            "smtputf8_enable": "yes",
            "message_size_limit": "52428800",
            # Both must be >= message_size_limit or virtual(8)/local(8) refuse to start.
            "virtual_mailbox_limit": "0",
            "mailbox_size_limit": "0",
            # Tests want failures fast, not hours of retries.
            "maximal_queue_lifetime": "1h",
            "bounce_queue_lifetime": "1h",
            "minimal_backoff_time": "2s",
            "maximal_backoff_time": "10s",
            "queue_run_delay": "2s",
        }
        if self.relayhost is None:
            # Sink mode: the domain is a virtual mailbox domain; every address goes to sink/.
            cf.update(
                {
                    "virtual_mailbox_domains": self.domain,
                    "virtual_mailbox_base": str(root / "mail"),
                    "virtual_mailbox_maps": "static:sink/",  # trailing slash = Maildir format
                    "virtual_uid_maps": f"static:{uid}",
                    "virtual_gid_maps": f"static:{gid}",
                    "virtual_minimum_uid": "1",
                    "relayhost": "",
                }
            )
        else:
            host, port = self.relayhost
            cf.update(
                {
                    "relayhost": f"[{host}]:{port}",
                    "virtual_mailbox_domains": "",
                }
            )
        cf.update(self.extra_main_cf)
        return "".join(f"{k} = {v}\n" for k, v in cf.items())

    def _postfix(self, action: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), action],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def _read_master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError, RuntimeError):
            return None

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(self.address, timeout=1) as s:
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                log = self.log_text()
                self.stop()
                raise RuntimeError(f"postfix did not listen on {self.ip}:{self.port}\n{log}")
            time.sleep(0.05)

    def _cleanup_dir(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


def main() -> None:
    """Start an instance, print where it listens, wait for Ctrl-C."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ip", default="127.0.0.5")
    ap.add_argument("--port", type=int)
    ap.add_argument("--domain", default="postfix.test")
    ns = ap.parse_args()
    with PrivatePostfix(ns.ip, ns.port, domain=ns.domain) as pf:
        print(
            f"postfix listening on {pf.ip}:{pf.port}, domain {pf.domain}, Maildir {pf.maildir}, log {pf.log_path}",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
