"""Nothing acknowledged is lost: SIGKILL the server mid-burst, restart, find every 250'd message."""

from __future__ import annotations

import smtplib
import subprocess
import threading
import time

from mailclient import setup_inbox, wait_list
from serverproc import AgentpostServer

SENDERS = 8


def _burst(server: AgentpostServer, inbox: str, worker: int, acked: list[str], stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP(server.mx_host, server.mx_port, timeout=10) as client:
                client.ehlo("load.remote.test")
                while not stop.is_set():
                    n += 1
                    message_id = f"<crash-{worker}-{n}@remote.test>"
                    raw = f"Message-ID: {message_id}\r\nSubject: load {n}\r\n\r\nbody {n}\r\n".encode()
                    client.mail("load@remote.test")
                    client.rcpt(inbox)
                    code, _ = client.data(raw)
                    if code == 250:
                        acked.append(message_id)  # recorded only after the 250 arrived
        except (OSError, smtplib.SMTPException):
            time.sleep(0.05)  # server killed or restarting: reconnect


def _workers_of(parent_pid: int) -> list[str]:
    found = subprocess.run(["pgrep", "-f", f"mx-worker --parent-pid {parent_pid}( |$)"], capture_output=True, text=True)
    return found.stdout.split()


def test_every_message_acknowledged_before_sigkill_is_in_the_store_after_restart(server: AgentpostServer) -> None:
    with server.client() as http:
        inbox = setup_inbox(http, "crash@crash.example.test")
    acked: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_burst, args=(server, inbox, i, acked, stop)) for i in range(SENDERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 300 and time.monotonic() < deadline:
        time.sleep(0.02)
    parent_pid = server.proc.pid if server.proc else 0
    server.kill()  # SIGKILL mid-burst: no shutdown code runs
    stop.set()
    for t in threads:
        t.join(15)
    # The MX worker processes die with their parent (PR_SET_PDEATHSIG): none is left accepting.
    deadline = time.monotonic() + 15
    while _workers_of(parent_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _workers_of(parent_pid), "an MX worker outlived its killed parent"
    acknowledged = set(acked)
    assert len(acknowledged) >= 300, f"only {len(acknowledged)} acknowledged before the kill"

    server.start()
    with server.client() as http:
        stored = wait_list(http, f"/v0/inboxes/{inbox}/messages", "messages", len(acknowledged), timeout=30, limit=1000)
        stored_ids: set[str] = set()
        token = None
        while True:
            params: dict[str, object] = {"limit": 1000}
            if token:
                params["page_token"] = token
            page = http.get(f"/v0/inboxes/{inbox}/messages", params=params).json()
            stored_ids.update(m["message_id"] for m in page["messages"])
            token = page.get("next_page_token")
            if not token:
                break
    missing = acknowledged - stored_ids
    print(f"acknowledged {len(acknowledged)}, stored {len(stored_ids)}, missing {len(missing)}")
    assert not missing, sorted(missing)[:10]
    assert stored
