"""Small helpers for tests that talk SMTP with the stdlib client and read mail over the API."""

from __future__ import annotations

import smtplib
import time
from typing import Any

import httpx


def smtp(host: str, port: int) -> smtplib.SMTP:
    client = smtplib.SMTP(host, port, timeout=30)
    client.ehlo("client.remote.test")
    return client


def send_raw(host: str, port: int, mail_from: str, rcpt: list[str], raw: bytes) -> tuple[int, bytes]:
    """One transaction; returns the final DATA reply."""
    with smtp(host, port) as client:
        client.mail(mail_from)
        for r in rcpt:
            code, msg = client.rcpt(r)
            assert code == 250, (code, msg)
        return client.data(raw)


def setup_inbox(http: httpx.Client, address: str) -> str:
    local, domain = address.split("@")
    http.post("/v0/domains", json={"domain": domain}).raise_for_status()
    response = http.post("/v0/inboxes", json={"username": local, "domain": domain})
    response.raise_for_status()
    return str(response.json()["inbox_id"])


def wait_list(http: httpx.Client, path: str, key: str, count: int, timeout: float = 15.0, **params: Any) -> list[Any]:
    deadline = time.monotonic() + timeout
    items: list[Any] = []
    while time.monotonic() < deadline:
        response = http.get(path, params={"limit": 1000, **params})
        response.raise_for_status()
        items = response.json()[key]
        if len(items) >= count:
            return items
        time.sleep(0.1)
    raise AssertionError(f"{path}: expected {count} {key}, found {len(items)}")
