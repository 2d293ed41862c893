#!/usr/bin/env python3
"""Real-time benchmark: from the MX's 250 to the message.received event on an open WebSocket."""

# What is measured
# ----------------
# A real `agentpost serve` on SQLite (its default: one MX/HTTP process per CPU up to 4, so mail
# committed in one process must wake a WebSocket served by another: the cross-process path).
# One WebSocket subscribes to message.received for the benchmark inbox. Mail is sent with
# smtplib at a fixed rate (--rate, default 50 messages/s, for --seconds, default 20), one
# message per connection, each started on schedule from a thread pool so a slow answer does not
# delay the next send. Each message has its own Message-ID.
#
# Latency of one message = time.monotonic() when its event arrived on the WebSocket minus
# time.monotonic() when smtplib returned the 250 after DATA. Both clocks are in this one process.
# agentpost says 250 only after the commit and publishes the event after the same commit, so an
# event can arrive a hair before the sender thread has read its 250: such latencies are
# negative and reported as they are.
#
# Reported: p50 / p99 / max over the timed messages, and how many events never arrived
# (within --grace seconds after the last send). Target: p99 < 100 ms.
#
# Exit status: 0 = ran (the target is reported, not enforced); 1 = something crashed or events
# were lost.

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import websockets

REPO = Path(__file__).resolve().parents[2]
AGENTPOST = REPO / ".venv" / "bin" / "agentpost"
DOMAIN = "realtime.bench.test"
RECIPIENT = f"agent@{DOMAIN}"


class BenchError(Exception):
    """Something crashed or lost events: the run is invalid (exit 1)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(env: dict[str, str], *argv: str) -> str:
    r = subprocess.run(
        [str(AGENTPOST), *argv], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    if r.returncode != 0:
        raise BenchError(f"`agentpost {' '.join(argv)}` exited {r.returncode}:\n{r.stdout[-1500:]}{r.stderr[-1500:]}")
    return r.stdout


def wait_http(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"agentpost serve exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                if b" 200 " in s.recv(256):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"agentpost HTTP did not answer in {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


def send_one(mx_port: int, n: int) -> tuple[str, float]:
    """One SMTP transaction; the Message-ID and the monotonic time its 250 arrived."""
    message_id = f"<rt-{n}-{os.getpid()}@bench.test>"
    raw = (
        f"Message-ID: {message_id}\r\nFrom: sender@remote.bench.test\r\nTo: {RECIPIENT}\r\n"
        f"Subject: realtime {n}\r\n\r\nmessage {n}\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", mx_port, timeout=30) as client:
        client.ehlo("client.bench.test")
        client.mail("sender@remote.bench.test")
        client.rcpt(RECIPIENT)
        code, reply = client.data(raw)
        acknowledged = time.monotonic()
    if code != 250:
        raise BenchError(f"message {n}: DATA answered {code} {reply!r}")
    return message_id, acknowledged


async def measure(args: argparse.Namespace, http_port: int, mx_port: int, key: str) -> list[float]:
    loop = asyncio.get_running_loop()
    arrived: dict[str, float] = {}
    url = f"ws://127.0.0.1:{http_port}/v0"
    async with websockets.connect(url, additional_headers={"authorization": f"Bearer {key}"}) as ws:
        await ws.send(json.dumps({"type": "subscribe", "event_types": ["message.received"], "inbox_ids": [RECIPIENT]}))
        reply = json.loads(await ws.recv())
        if reply.get("type") != "subscribed":
            raise BenchError(f"subscribe answered {reply}")

        async def listen() -> None:
            async for frame in ws:
                now = time.monotonic()
                event = json.loads(frame)
                if event.get("type") == "event":
                    arrived[event["message"]["message_id"]] = now

        listener = asyncio.create_task(listen())
        with ThreadPoolExecutor(max_workers=args.senders) as pool:
            warm = [loop.run_in_executor(pool, send_one, mx_port, -1 - i) for i in range(args.warm)]
            await asyncio.gather(*warm)
            await asyncio.sleep(0.5)
            total = int(args.rate * args.seconds)
            start = time.monotonic()
            sends = []
            for n in range(total):
                delay = start + n / args.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sends.append(loop.run_in_executor(pool, send_one, mx_port, n))
            acknowledged = dict(await asyncio.gather(*sends))
            sent_for = time.monotonic() - start
        deadline = time.monotonic() + args.grace
        while time.monotonic() < deadline and not all(m in arrived for m in acknowledged):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        listener.cancel()
    missing = [m for m in acknowledged if m not in arrived]
    print(f"sent {total} messages in {sent_for:.1f} s ({total / sent_for:.1f}/s); events missing: {len(missing)}")
    if missing:
        raise BenchError(f"{len(missing)} events never arrived, e.g. {missing[:3]}")
    return [arrived[m] - t for m, t in acknowledged.items()]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rate", type=float, default=50.0, help="messages per second")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--senders", type=int, default=16, help="sending threads")
    ap.add_argument("--warm", type=int, default=10, help="untimed messages first")
    ap.add_argument("--grace", type=float, default=10.0, help="seconds to wait for the last events")
    ap.add_argument("--processes", type=int, default=0, help="[mx] processes (0: the server's default)")
    ap.add_argument("--keep", action="store_true", help="keep the data dir")
    args = ap.parse_args()

    datadir = Path(tempfile.mkdtemp(prefix="agentpost-bench-rt-"))
    log = datadir / "serve.log"
    env = {**os.environ, "AGENTPOST_DATA_DIR": str(datadir)}
    proc: subprocess.Popen[bytes] | None = None
    try:
        run_cli(env, "init")
        run_cli(env, "domain", "add", DOMAIN)
        run_cli(env, "inbox", "create", RECIPIENT)
        key = run_cli(env, "key", "create").strip()
        http_port, mx_port = free_port(), free_port()
        serve_env = {
            **env,
            "AGENTPOST_MX_LISTEN": f"127.0.0.1:{mx_port}",
            "AGENTPOST_HTTP_LISTEN": f"127.0.0.1:{http_port}",
            "AGENTPOST_DNS_SERVERS": "127.0.0.1:9",  # nothing to look up: loopback is trusted
        }
        if args.processes:
            serve_env["AGENTPOST_MX_PROCESSES"] = str(args.processes)
        with open(log, "wb") as logf:
            proc = subprocess.Popen(
                [str(AGENTPOST), "serve"],
                env=serve_env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_http(http_port, proc, log)
        processes = args.processes or min(os.cpu_count() or 1, 4)
        print(
            f"realtime: agentpost serve on SQLite, {processes} processes; {args.rate:.0f} messages/s for "
            f"{args.seconds:.0f} s, one per SMTP connection; {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.2f} at start"
        )
        latencies = asyncio.run(measure(args, http_port, mx_port, key))
        ms = [v * 1000 for v in latencies]
        p99 = percentile(ms, 99)
        print(
            f"250 -> WebSocket event over {len(ms)} messages: p50 {statistics.median(ms):.1f} ms, "
            f"p99 {p99:.1f} ms, max {max(ms):.1f} ms, min {min(ms):.1f} ms (target p99 < 100 ms: "
            f"{'met' if p99 < 100 else 'NOT met'})"
        )
        bounds = [10, 25, 50, 100, 250, 500, 1000]
        counts = [sum(1 for v in ms if v < b) for b in bounds]
        print("cumulative: " + ", ".join(f"<{b} ms {c}" for b, c in zip(bounds, counts, strict=True)))
        if proc.poll() is not None:
            raise BenchError(f"agentpost serve died (exit {proc.returncode})")
        return 0
    except BenchError as exc:
        print(f"bench/realtime: {exc}")
        return 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if args.keep:
            print(f"data dir kept: {datadir}")
        else:
            subprocess.run(["rm", "-rf", str(datadir)], check=False)


if __name__ == "__main__":
    sys.exit(main())
