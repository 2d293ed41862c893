#!/usr/bin/env python3
"""Inbound benchmark: messages/s into agentpost's MX against a private Postfix delivering to Maildir."""

# What is measured
# ----------------
# Load: Postfix's smtp-source, the same command against both servers:
#     smtp-source -s 20 -m 5000 -l 2000 -f sender@bench.test -t user@bench.test IP:PORT
# From smtp-source(1) (Postfix 3.7): -s = parallel SMTP sessions, -m = total messages,
# -l = payload bytes (headers not counted), -f/-t = envelope sender/recipient (one recipient per
# transaction, -r defaults to 1). Without -d each session disconnects after every message and
# reconnects, so this is 5000 connections with one message each, 20 at a time: the MX pattern
# of real inbound mail. smtp-source does not pipeline commands. It exits when every message has
# been answered 250 after DATA (it aborts on any other reply, as -A is not given).
#
# Postfix: accepts into its queue (fsync on, the default) and then delivers to a Maildir; a
# message is "done" when its file is in Maildir new/. Elapsed = from starting smtp-source until
# all 5000 files are there (polled; capped at --timeout).
#
# agentpost: says 250 only after the message is committed to its store, so elapsed = the wall
# time of smtp-source. Afterwards the stored message count must equal the number sent.
#
# Sender authentication (issue 4): agentpost checks SPF, DKIM and DMARC on every message, as it
# would for a remote MTA: AGENTPOST_MX_TRUSTED_NETWORKS="" takes loopback out of the trusted
# networks, and [dns] servers is a private NSD serving bench.test: SPF authorising exactly the
# address smtp-source connects from (127.0.0.6), DMARC p=reject, and two DKIM keys. smtp-source
# writes "From: <sender@bench.test>", so DMARC is evaluated on bench.test and passes through the
# aligned SPF pass. With --signed, both servers get the same pre-built message instead (smtp-source
# -F): the same payload, DKIM-signed with an RSA-2048 and an Ed25519 key, so agentpost verifies
# two signatures per message too (the file has no Message-ID: smtp-source sends it verbatim).
# Before timing, a few messages warm agentpost's DNS cache; afterwards every stored message must
# have auth.verdict "pass". Postfix checks nothing. --no-auth runs agentpost as in the
# foundation issue (loopback trusted: no checks).
#
# Rounds alternate (postfix, agentpost, postfix, agentpost, ...) so slow drifts of the machine
# hit both sides alike; the ratio is taken per round and its median reported. Each round also
# prints the whole machine's CPU over it from /proc/stat (busy, of which kernel, and steal: time
# the hypervisor gave to other guests) and, for agentpost, the CPU its processes used per message.
#
# Exit status: 0 = ran (targets are reported, not enforced); 1 = something crashed or messages
# were lost; 2 = the agentpost half could not run (e.g. no CLI yet) while the Postfix half did.

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from postfixpeer import PrivatePostfix, ensure_loopback_address  # noqa: E402

DOMAIN = "bench.test"
SENDER = f"sender@{DOMAIN}"
RECIPIENT = f"user@{DOMAIN}"
POSTFIX_IP = "127.0.0.5"
AGENTPOST_IP = "127.0.0.6"
DNS_IP = "127.0.0.1"
SMTP_SOURCE = shutil.which("smtp-source", path="/usr/sbin:/usr/bin") or "/usr/sbin/smtp-source"
# Overridable with --agentpost (e.g. an installed build elsewhere).
AGENTPOST = REPO / ".venv" / "bin" / "agentpost"
MB = 1024 * 1024


class BenchError(Exception):
    """Something crashed or lost messages: the run is invalid (exit 1)."""


class AgentpostUnavailable(Exception):
    """The agentpost CLI cannot run yet (exit 2 unless --postfix-only)."""


@dataclass
class Round:
    server: str
    rate: float  # messages per second
    elapsed: float
    rss_mb: float | None = None
    note: str = ""
    machine: str = ""  # the whole machine's CPU over the round (MachineCpu.since)


def port_on(ip: str, preferred: int) -> int:
    """``preferred`` if it is free on ``ip``, else any free port there."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((ip, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise BenchError(f"no free port on {ip}")


def smtp_source_cmd(
    args: argparse.Namespace, ip: str, port: int, messages: int | None = None, sessions: int | None = None
) -> list[str]:
    body = ["-F", str(args.message_file)] if args.message_file else ["-l", str(args.size)]
    return [
        SMTP_SOURCE,
        "-s",
        str(sessions or args.sessions),
        "-m",
        str(messages or args.messages),
        *body,
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
        f"{ip}:{port}",
    ]


# -- DKIM ----------------------------------------------------------------------------------------


def dkim_keys() -> list[object]:
    from agentpost.mailauth.dkim import ED25519_SHA256, RSA_SHA256, generate_key

    return [generate_key(DOMAIN, "benchr", RSA_SHA256), generate_key(DOMAIN, "benche", ED25519_SHA256)]


def zone_txt(value: str) -> str:
    """A TXT value as quoted strings of at most 255 octets (an RSA-2048 key needs two)."""
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))


def write_signed_message(path: Path, keys: list[object], size: int) -> None:
    """smtp-source's message (From, To, Date, a payload of `size` bytes of "X" lines), signed with
    every key; LF line ends, as smtp-source -F sends each line followed by CRLF."""
    from agentpost.mailauth.dkim import DkimSigner

    line = "X" * 78
    payload = [line] * (size // 80) + (["X" * (size % 80)] if size % 80 else [])
    raw = (
        "\r\n".join(
            [
                f"From: <{SENDER}>",
                f"To: <{RECIPIENT}>",
                f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}",
                "Subject: bench",
                "",
                *payload,
            ]
        )
        + "\r\n"
    ).encode()
    signed = DkimSigner(keys).sign(raw) + raw  # type: ignore[arg-type]
    path.write_bytes(signed.replace(b"\r\n", b"\n"))


# -- DNS -----------------------------------------------------------------------------------------


class Nsd:
    """NSD serving bench.test on a loopback port, so agentpost's SPF/DKIM/DMARC lookups get fast
    real answers (SPF pass for smtp-source's address only, DMARC p=reject, the DKIM keys) instead
    of timing out against an unreachable resolver. Postfix does no such checks here."""

    def __init__(self, keys: list[object]) -> None:
        self.port = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.keys = keys

    def start(self) -> Nsd:
        nsd = shutil.which("nsd", path="/usr/sbin:/usr/bin")
        if not nsd:
            raise RuntimeError("nsd not installed (scripts/install-test-deps.sh)")
        self.dir = d = Path(tempfile.mkdtemp(prefix="agentpost-bench-nsd-"))
        self.port = port_on(DNS_IP, 0)
        dkim = "".join(
            f"{k.dns_name}. IN TXT {zone_txt(k.dns_txt())}\n"  # type: ignore[attr-defined]
            for k in self.keys
        )
        (d / "bench.test.zone").write_text(
            "$ORIGIN bench.test.\n$TTL 3600\n"
            "@ IN SOA ns.bench.test. hostmaster.bench.test. 1 3600 600 86400 60\n"
            "@ IN NS ns.bench.test.\n"
            "ns IN A 127.0.0.1\n"
            f"mx IN A {AGENTPOST_IP}\n"
            "@ IN MX 10 mx.bench.test.\n"
            f'@ IN TXT "v=spf1 ip4:{AGENTPOST_IP} -all"\n'  # the client address smtp-source gets
            '_dmarc IN TXT "v=DMARC1; p=reject"\n' + dkim
        )
        # Reverse names for the loopback client addresses smtp-source connects from.
        (d / "127.zone").write_text(
            "$ORIGIN 127.in-addr.arpa.\n$TTL 3600\n"
            "@ IN SOA ns.bench.test. hostmaster.bench.test. 1 3600 600 86400 60\n"
            "@ IN NS ns.bench.test.\n"
            "1.0.0 IN PTR localhost.\n"
            f"5.0.0 IN PTR mx.{DOMAIN}.\n"
            f"6.0.0 IN PTR mx.{DOMAIN}.\n"
        )
        (d / "nsd.conf").write_text(f"""\
server:
    ip-address: {DNS_IP}@{self.port}
    port: {self.port}
    username: ""
    chroot: ""
    zonesdir: "{d}"
    zonelistfile: "{d}/zone.list"
    database: ""
    pidfile: "{d}/nsd.pid"
    xfrdfile: "{d}/xfrd.state"
    xfrdir: "{d}"
    logfile: "{d}/nsd.log"
    server-count: 1
    verbosity: 1
    hide-version: yes
remote-control:
    control-enable: no
zone:
    name: "bench.test"
    zonefile: "bench.test.zone"
zone:
    name: "127.in-addr.arpa"
    zonefile: "127.zone"
""")
        # -d: foreground, so we own the process and can stop it by PID.
        self.proc = subprocess.Popen(
            [nsd, "-d", "-c", str(d / "nsd.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while "nsd started" not in self._log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self._log()
                self.stop()
                raise RuntimeError(f"nsd did not start: {log[-2000:]}")
            time.sleep(0.05)
        return self

    def _log(self) -> str:
        try:
            return (self.dir / "nsd.log").read_text(errors="replace")  # type: ignore[operator]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


# -- Postfix -------------------------------------------------------------------------------------


def settle() -> None:
    """Flush dirty pages before a timed run, so neither peer pays for the other's writeback
    (Postfix leaves 5,000 Maildir files behind; agentpost its database)."""
    os.sync()
    time.sleep(1.0)


def postfix_round(args: argparse.Namespace) -> Round:
    ensure_loopback_address(POSTFIX_IP)
    port = port_on(POSTFIX_IP, 2526)
    # A fresh instance per round: empty queue and Maildir, same state as agentpost's fresh dir.
    with PrivatePostfix(POSTFIX_IP, port, domain=DOMAIN) as pf:
        cmd = smtp_source_cmd(args, *pf.address)
        settle()
        machine = MachineCpu()
        t0 = time.monotonic()
        src = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        n = 0
        done_at = None
        while time.monotonic() - t0 < args.timeout:
            n = pf.count_delivered()
            if n >= args.messages:
                done_at = time.monotonic()
                break
            if src.poll() not in (None, 0):
                break  # smtp-source failed: no point waiting for the cap
            time.sleep(0.025)  # coarse enough not to steal CPU from Postfix on 2 cores
        try:
            out, err = src.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            src.kill()
            out, err = src.communicate()
        if src.returncode != 0:
            raise BenchError(
                f"smtp-source against Postfix exited {src.returncode}: {(out + err).decode(errors='replace')[-1000:]}"
            )
        if done_at is None:
            raise BenchError(
                f"Postfix delivered {n}/{args.messages} messages within "
                f"{args.timeout:.0f} s\n--- maillog tail ---\n"
                f"{pf.log_text()[-3000:]}"
            )
        elapsed = done_at - t0
        return Round("postfix", args.messages / elapsed, elapsed, machine=machine.since())


# -- agentpost -----------------------------------------------------------------------------------


def check_agentpost_cli() -> None:
    if not AGENTPOST.exists():
        raise AgentpostUnavailable(f"{AGENTPOST} does not exist (pip install -e '.[dev]')")
    r = subprocess.run([str(AGENTPOST), "--help"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        last = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise AgentpostUnavailable(f"`agentpost --help` exited {r.returncode}: {last[0]}")


class MachineCpu:
    """The whole machine's CPU over an interval, from /proc/stat: how busy both cores were and how
    much time the hypervisor gave to others (steal). Rounds of one run differ by 20-30%; this
    shows whether a slow round had less machine to use or used more of it per message."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> list[int]:
        with open("/proc/stat") as f:
            # cpu user nice system idle iowait irq softirq steal ...
            return [int(v) for v in f.readline().split()[1:9]]

    def since(self) -> str:
        now = self._read()
        d = [b - a for a, b in zip(self.start, now, strict=True)]
        total = sum(d) or 1
        kernel = d[2] + d[5] + d[6]
        busy, steal = d[0] + d[1] + kernel, d[7]
        return (
            f"machine busy {100 * busy / total:.0f}% (kernel {100 * kernel / total:.0f}%), "
            f"steal {100 * steal / total:.0f}%"
        )


class RssSampler(threading.Thread):
    """Peak RSS of a process and its children, sampled every 50 ms with psutil."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil  # only the agentpost half needs it (dev extra)

        self.proc = psutil.Process(pid)
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        import psutil

        while not self._done.is_set():
            try:
                total = self.proc.memory_info().rss
                for child in self.proc.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                return
            self._done.wait(0.05)

    def finish(self) -> int:
        """Stop sampling; return the peak in bytes, at least the kernel's VmHWM of the server."""
        self._done.set()
        self.join(2)
        hwm = 0
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm = int(line.split()[1]) * 1024  # kB
        except OSError:
            pass
        return max(self.peak, hwm)


def run_cli(env: dict[str, str], *argv: str) -> str:
    r = subprocess.run(
        [str(AGENTPOST), *argv], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    if r.returncode != 0:
        raise BenchError(f"`agentpost {' '.join(argv)}` exited {r.returncode}:\n{r.stdout[-1500:]}{r.stderr[-1500:]}")
    return r.stdout


def wait_smtp_banner(ip: str, port: int, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise BenchError(
                f"agentpost serve exited {proc.returncode} before listening:\n{log.read_text(errors='replace')[-3000:]}"
            )
        try:
            with socket.create_connection((ip, port), timeout=2) as s:
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(
                f"agentpost MX did not answer on {ip}:{port} in {timeout:.0f} s:\n"
                f"{log.read_text(errors='replace')[-3000:]}"
            )
        time.sleep(0.1)


def auth_verdicts(datadir: Path) -> dict[str, int]:
    """Stored messages per auth.verdict (SQLite default store); {} when there is no SQLite file."""
    db = datadir / "agentpost.db"
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute(
            "SELECT coalesce(json_extract(auth, '$.verdict'), 'none'), count(*) FROM messages GROUP BY 1"
        ).fetchall()
    finally:
        con.close()
    return {str(v): int(n) for v, n in rows}


def stored_messages(datadir: Path, env: dict[str, str]) -> int:
    """Row count of the messages table (SQLite default store), else parsed `agentpost status`."""
    db = datadir / "agentpost.db"
    if db.exists():
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return int(con.execute("SELECT count(*) FROM messages").fetchone()[0])
        finally:
            con.close()
    out = run_cli(env, "status")
    m = re.search(r"messages\W+(\d+)", out, re.IGNORECASE)
    if not m:
        raise BenchError(f"cannot find a message count in `agentpost status`:\n{out[-1500:]}")
    return int(m.group(1))


def stop_server(proc: subprocess.Popen[bytes], log: Path) -> None:
    if proc.poll() is not None:
        raise BenchError(
            f"agentpost serve died during the round (exit {proc.returncode}):\n"
            f"{log.read_text(errors='replace')[-3000:]}"
        )
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise BenchError("agentpost serve did not stop within 30 s of SIGTERM") from None


def agentpost_round(args: argparse.Namespace, dns_port: int | None) -> Round:
    datadir = Path(tempfile.mkdtemp(prefix="agentpost-bench-"))
    proc: subprocess.Popen[bytes] | None = None
    log = datadir / "serve.log"
    try:
        env = {**os.environ, "AGENTPOST_DATA_DIR": str(datadir)}
        run_cli(env, "init")
        run_cli(env, "domain", "add", DOMAIN)
        run_cli(env, "inbox", "create", RECIPIENT)

        ensure_loopback_address(AGENTPOST_IP)
        mx_port = port_on(AGENTPOST_IP, 2525)
        http_port = port_on("127.0.0.1", 0)
        serve_env = {
            **env,
            "AGENTPOST_MX_LISTEN": f"{AGENTPOST_IP}:{mx_port}",
            "AGENTPOST_HTTP_LISTEN": f"127.0.0.1:{http_port}",
        }
        if dns_port:
            serve_env["AGENTPOST_DNS_SERVERS"] = f"{DNS_IP}:{dns_port}"
        if args.auth:
            # Check smtp-source's loopback address like a remote MTA (loopback is trusted by default).
            serve_env["AGENTPOST_MX_AUTHENTICATE"] = "true"
            serve_env["AGENTPOST_MX_TRUSTED_NETWORKS"] = ""
        with open(log, "wb") as logf:
            # Own session: a Ctrl-C at the terminal goes to us, and we stop the server cleanly.
            proc = subprocess.Popen(
                [str(AGENTPOST), "serve"],
                env=serve_env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_smtp_banner(AGENTPOST_IP, mx_port, proc, 60, log)
        warm = 0
        if args.auth and args.warm:
            # Warm the DNS cache (SPF, DMARC, DKIM keys) before timing, as a running MX would be.
            warm = args.warm
            w = subprocess.run(
                smtp_source_cmd(args, AGENTPOST_IP, mx_port, messages=warm, sessions=2),
                capture_output=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
            if w.returncode != 0:
                raise BenchError(
                    f"warm-up smtp-source exited {w.returncode}: "
                    f"{(w.stdout + w.stderr).decode(errors='replace')[-1000:]}\n"
                    f"--- serve log tail ---\n{log.read_text(errors='replace')[-2000:]}"
                )

        sampler = RssSampler(proc.pid)
        sampler.start()
        settle()
        tree = [sampler.proc, *sampler.proc.children(recursive=True)]  # serve, MX workers, write process
        cpu0 = sum(sum(p.cpu_times()[:2]) for p in tree)
        machine = MachineCpu()
        t0 = time.monotonic()
        try:
            src = subprocess.run(
                smtp_source_cmd(args, AGENTPOST_IP, mx_port),
                capture_output=True,
                timeout=args.timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"smtp-source against agentpost took over {args.timeout:.0f} s") from None
        elapsed = time.monotonic() - t0
        used = machine.since()
        cpu = sum(sum(p.cpu_times()[:2]) for p in tree) - cpu0
        peak = sampler.finish()
        if src.returncode != 0:
            raise BenchError(
                f"smtp-source against agentpost exited {src.returncode}: "
                f"{(src.stdout + src.stderr).decode(errors='replace')[-1000:]}\n"
                f"--- serve log tail ---\n{log.read_text(errors='replace')[-2000:]}"
            )
        # Count while the server still runs: 250 must mean committed, not "flushed at exit".
        stored = stored_messages(datadir, env)
        stop_server(proc, log)
        proc = None
        if stored != args.messages + warm:
            raise BenchError(f"agentpost acknowledged {args.messages + warm} messages but stored {stored}")
        verdicts = auth_verdicts(datadir)
        note = ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items()))
        if args.auth and verdicts and set(verdicts) != {"pass"}:
            raise BenchError(f"expected every message to pass SPF/DMARC, got verdicts: {note}")
        note = f"auth: {note}; server CPU {cpu / args.messages * 1000:.2f} ms/msg"
        return Round("agentpost", args.messages / elapsed, elapsed, peak / MB, note=note, machine=used)
    finally:
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        if args.keep:
            print(f"  (kept {datadir})")
        else:
            shutil.rmtree(datadir, ignore_errors=True)


# -- main ----------------------------------------------------------------------------------------


def summary(pf: list[Round], ap: list[Round], auth: bool) -> str:
    pf_rate = statistics.median(r.rate for r in pf) if pf else float("nan")
    if not ap:
        return f"inbound: agentpost not run, postfix {pf_rate:.1f} msg/s"
    ap_rate = statistics.median(r.rate for r in ap)
    # Pair each agentpost round with the Postfix round just before it.
    ratio = statistics.median(a.rate / p.rate for a, p in zip(ap, pf, strict=False))
    rss = max(r.rss_mb or 0.0 for r in ap)
    checks = "SPF+DKIM+DMARC checked" if auth else "no sender checks"
    return (
        f"inbound ({checks}): agentpost {ap_rate:.1f} msg/s, postfix {pf_rate:.1f} msg/s, "
        f"median ratio {ratio:.2f}x (target >= {1.2 if auth else 1.5}x), "
        f"agentpost peak RSS {rss:.0f} MB (target < 300 MB)"
    )


def main() -> int:
    global AGENTPOST
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=2000, help="payload bytes per message")
    ap.add_argument("--timeout", type=float, default=120.0, help="cap per round, seconds")
    ap.add_argument("--postfix-only", action="store_true", help="skip agentpost, exit 0")
    ap.add_argument("--no-dns", action="store_true", help="do not start NSD for agentpost")
    ap.add_argument(
        "--no-auth",
        dest="auth",
        action="store_false",
        help="trust loopback: agentpost checks no sender (the foundation bench)",
    )
    ap.add_argument(
        "--signed", action="store_true", help="send one DKIM-signed (RSA + Ed25519) message file to both servers"
    )
    ap.add_argument("--warm", type=int, default=20, help="untimed messages that warm agentpost's DNS cache first")
    ap.add_argument("--keep", action="store_true", help="keep agentpost data dirs")
    ap.add_argument("--agentpost", type=Path, default=AGENTPOST, help="agentpost executable")
    args = ap.parse_args()
    AGENTPOST = args.agentpost
    args.message_file = None
    if args.auth and args.no_dns:
        print("bench/inbound: sender checks need the bench's DNS server: drop --no-dns or add --no-auth")
        return 1

    if os.geteuid() != 0:
        print("bench/inbound: must run as root (private Postfix, loopback aliases)")
        return 1
    if not os.path.exists(SMTP_SOURCE):
        print("bench/inbound: smtp-source missing: run scripts/install-test-deps.sh")
        return 1

    unavailable = None
    if not args.postfix_only:
        try:
            check_agentpost_cli()
        except AgentpostUnavailable as exc:
            unavailable = str(exc)
            print(f"bench/inbound: agentpost half skipped: {unavailable}")

    keys = dkim_keys() if args.signed or (args.auth and not args.postfix_only) else []
    if args.signed:
        args.message_file = Path(tempfile.mkdtemp(prefix="agentpost-bench-msg-")) / "signed.eml"
        write_signed_message(args.message_file, keys, args.size)
    nsd = None
    if not args.postfix_only and unavailable is None and not args.no_dns:
        try:
            nsd = Nsd(keys).start()
        except RuntimeError as exc:
            if args.auth:
                print(f"bench/inbound: NSD not started ({exc}): sender checks cannot run")
                return 1
            print(f"bench/inbound: NSD not started ({exc}); agentpost uses its default DNS")

    pf_rounds: list[Round] = []
    ap_rounds: list[Round] = []
    failed = False
    print(
        f"smtp-source: {args.sessions} sessions, {args.messages} messages of "
        f"{args.size} bytes{' (DKIM-signed file)' if args.signed else ''}, "
        f"one message per connection; agentpost "
        f"{'checks SPF, DKIM and DMARC (DNS: NSD)' if args.auth else 'trusts loopback'}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start"
    )
    try:
        for i in range(1, args.rounds + 1):
            r = postfix_round(args)
            pf_rounds.append(r)
            print(
                f"round {i} postfix:   {r.rate:8.1f} msg/s  ({r.elapsed:.2f} s until all {args.messages} in Maildir; "
                f"{r.machine})",
                flush=True,
            )
            if args.postfix_only or unavailable:
                continue
            r = agentpost_round(args, nsd.port if nsd else None)
            ap_rounds.append(r)
            print(
                f"round {i} agentpost: {r.rate:8.1f} msg/s  ({r.elapsed:.2f} s, peak RSS {r.rss_mb:.0f} MB; {r.note}; "
                f"{r.machine})",
                flush=True,
            )
    except BenchError as exc:
        print(f"bench/inbound: FAILED: {exc}", flush=True)
        failed = True
    finally:
        if nsd:
            nsd.stop()
        if args.message_file:
            shutil.rmtree(args.message_file.parent, ignore_errors=True)

    if pf_rounds:
        print(summary(pf_rounds, ap_rounds, args.auth))
    if failed:
        return 1
    if unavailable and not args.postfix_only:
        print(f"bench/inbound: agentpost not measured: {unavailable}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
