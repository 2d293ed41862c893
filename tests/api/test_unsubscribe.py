"""List-Unsubscribe and one-click (RFC 2369, RFC 8058) and suppressed recipients, over real HTTP
against a real server: the headers are DKIM-signed, a POST unsubscribes, a GET never does, a
forged token is 404, and a later send drops the address with a message.rejected event."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import dkim  # dkimpy, the reference verifier
import httpx
import pytest

from serverproc import AgentpostServer
from webhookreceiver import WebhookReceiver

PUBLIC_URL = "https://mail.agentpost.test"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> Iterator[AgentpostServer]:
    url = str(postgres.create_database("unsub" + str(time.monotonic_ns())[-8:])) if postgres is not None else ""
    # RFC 8058 §3.1: one-click needs an HTTPS URI; the test reaches the same paths over plain HTTP.
    srv = AgentpostServer(
        tmp_path_factory.mktemp("unsubscribe") / "data",
        database_url=url,
        extra_env={"AGENTPOST_HTTP_PUBLIC_URL": PUBLIC_URL},
    )
    with srv.running():
        yield srv


def _inbox(http: httpx.Client, address: str) -> tuple[str, dict[str, str]]:
    """An inbox and the DKIM TXT records of its domain (name -> value)."""
    local, domain = address.split("@")
    created = http.post("/v0/domains", json={"domain": domain})
    created.raise_for_status()
    records = {r["name"]: r["value"] for r in created.json()["records"] if "._domainkey." in r["name"]}
    response = http.post("/v0/inboxes", json={"username": local, "domain": domain})
    response.raise_for_status()
    return str(response.json()["inbox_id"]), records


def _send(http: httpx.Client, inbox: str, **body: Any) -> httpx.Response:
    return http.post(f"/v0/inboxes/{inbox}/messages/send", json={"subject": "news", "text": "hello", **body})


def _raw(server: AgentpostServer, http: httpx.Client, inbox: str, message_id: str) -> bytes:
    link = http.get(f"/v0/inboxes/{inbox}/messages/{message_id}/raw").json()["download_url"]
    return httpx.get(server.http_url + urlsplit(link).path).content  # public_url is not reachable here


def _header(raw: bytes, name: str) -> str | None:
    head = raw.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n ", " ").replace("\r\n\t", " ")
    for line in head.split("\r\n"):
        field, _, value = line.partition(":")
        if field.lower() == name.lower():
            return value.strip()
    return None


def _one_click_path(raw: bytes) -> str:
    header = _header(raw, "List-Unsubscribe") or ""
    url = next(u.strip("<> ") for u in header.split(",") if u.strip().startswith("<https://"))
    assert url.startswith(PUBLIC_URL + "/v0/unsubscribe/")
    return urlsplit(url).path


def _suppressed(http: httpx.Client) -> dict[str, dict[str, Any]]:
    return {s["address"]: s for s in http.get("/v0/suppressions").json()["suppressions"]}


def test_every_sent_message_carries_dkim_signed_list_unsubscribe_and_one_click(server: AgentpostServer) -> None:
    with server.client() as http:
        inbox, records = _inbox(http, "news@unsub1.example.test")
        sent = _send(http, inbox, to="reader@remote.test")
        assert sent.status_code == 200, sent.text
        raw = _raw(server, http, inbox, sent.json()["message_id"])
    header = _header(raw, "List-Unsubscribe") or ""
    mailto, url = (u.strip().strip("<>") for u in header.split(","))
    local = mailto.removeprefix("mailto:").split("@")[0]
    assert local.startswith("unsubscribe+") and len(local) <= 64  # RFC 5321 §4.5.3.1.1
    assert mailto.split("@")[1].startswith("unsub1.example.test")
    assert url.startswith(PUBLIC_URL + "/v0/unsubscribe/")
    assert _header(raw, "List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"

    # RFC 8058 §4: the DKIM signature covers both fields. Verify every signature with dkimpy.
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return records[name.decode().rstrip(".")].encode()

    count = raw.count(b"DKIM-Signature:")
    assert count == 2
    for index in range(count):
        assert dkim.DKIM(raw).verify(idx=index, dnsfunc=dnsfunc)
    signature = raw.split(b"DKIM-Signature:")[1].split(b"b=")[0].decode().replace("\r\n", "").replace(" ", "")
    signed = signature.split("h=")[1].split(";")[0].split(":")
    assert "list-unsubscribe" in signed and "list-unsubscribe-post" in signed
    # Changing the header breaks the signature.
    tampered = raw.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: x")
    assert not dkim.DKIM(tampered).verify(idx=0, dnsfunc=dnsfunc)


def test_get_shows_a_form_and_post_unsubscribes_then_a_send_drops_the_address(server: AgentpostServer) -> None:
    with WebhookReceiver() as hooks, server.client() as http:
        inbox, _ = _inbox(http, "news@unsub2.example.test")
        hook = http.post(f"/v0/inboxes/{inbox}/webhooks", json={"url": hooks.url, "event_types": ["message.rejected"]})
        assert hook.status_code == 200, hook.text
        sent = _send(http, inbox, to="Leaver <Leaver@remote.test>")
        path = _one_click_path(_raw(server, http, inbox, sent.json()["message_id"]))

        # GET (a link scanner, a preview): a confirmation form, nothing changes.
        page = httpx.get(server.http_url + path)
        assert page.status_code == 200 and "<form" in page.text and 'method="post"' in page.text
        assert "leaver@remote.test" in page.text
        assert page.headers["cache-control"] == "no-store"
        assert "leaver@remote.test" not in _suppressed(http)

        # RFC 8058 §3.2: the POST with List-Unsubscribe=One-Click, no API key, no cookies.
        click = httpx.post(
            server.http_url + path,
            content=b"List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert click.status_code == 200, click.text
        entry = _suppressed(http)["leaver@remote.test"]
        assert (entry["reason"], entry["inbox_id"]) == ("unsubscribed", inbox)
        assert httpx.post(server.http_url + path).status_code == 200  # a repeat is harmless

        # A later send: the suppressed address is dropped from the envelope, the rest goes out.
        later = _send(http, inbox, to=["leaver@remote.test", "stayer@remote.test"])
        assert later.status_code == 200, later.text
        events = hooks.wait_for(1) and hooks.events()
        assert [e["event_type"] for e in events] == ["message.rejected"]
        reject = events[0]["reject"]
        assert reject["message_id"] == later.json()["message_id"]
        assert reject["thread_id"] == later.json()["thread_id"]
        assert (reject["recipients"], reject["reason"]) == (["leaver@remote.test"], "suppressed")
        # Headers are unchanged (the To: still names both), the envelope is not.
        raw = _raw(server, http, inbox, later.json()["message_id"])
        assert "leaver@remote.test" in (_header(raw, "To") or "")
        # Two envelope recipients left? No: one, so the one-click URL names stayer.
        stayer = httpx.get(server.http_url + _one_click_path(raw))
        assert "stayer@remote.test" in stayer.text and "leaver" not in stayer.text

        # Only suppressed recipients: refused, with a message naming them.
        refused = _send(http, inbox, to="LEAVER@remote.test")
        assert refused.status_code == 422
        assert "suppressed" in refused.json()["message"] and "leaver@remote.test" in refused.json()["message"]

        # The suppression is per inbox: another inbox may still write to the address.
        other, _ = _inbox(http, "other@unsub3.example.test")
        assert _send(http, other, to="leaver@remote.test").status_code == 200


def test_a_forged_or_altered_token_is_404_and_suppresses_nothing(server: AgentpostServer) -> None:
    with server.client() as http:
        inbox, _ = _inbox(http, "news@unsub4.example.test")
        sent = _send(http, inbox, to="target@remote.test")
        path = _one_click_path(_raw(server, http, inbox, sent.json()["message_id"]))
        body, _, mac = path.rsplit("/", 1)[1].partition(".")
        other = base64.urlsafe_b64encode(f"{inbox}\nvictim@remote.test".encode()).decode().rstrip("=")
        for token in (f"{other}.{mac}", f"{body}.{mac[:-2]}AA", "nonsense", f"{body}."):
            for method in ("GET", "POST"):
                response = httpx.request(method, f"{server.http_url}/v0/unsubscribe/{token}")
                assert response.status_code == 404, (token, method, response.text)
        assert not {"target@remote.test", "victim@remote.test"} & set(_suppressed(http))


def test_a_caller_supplied_list_unsubscribe_header_wins(server: AgentpostServer) -> None:
    with server.client() as http:
        inbox, _ = _inbox(http, "news@unsub5.example.test")
        own = "<https://lists.example.test/leave?u=1>"
        sent = _send(http, inbox, to="reader@remote.test", headers={"List-Unsubscribe": own})
        assert sent.status_code == 200, sent.text
        raw = _raw(server, http, inbox, sent.json()["message_id"])
    assert _header(raw, "List-Unsubscribe") == own
    assert raw.count(b"List-Unsubscribe:") == 1 and b"List-Unsubscribe-Post" not in raw


def test_the_config_switch_turns_list_unsubscribe_off(tmp_path: Any) -> None:
    srv = AgentpostServer(tmp_path / "data", extra_env={"AGENTPOST_OUTBOUND_LIST_UNSUBSCRIBE": "false"})
    srv.setup()
    srv.start()
    try:
        with srv.client() as http:
            inbox, _ = _inbox(http, "quiet@unsub6.example.test")
            sent = _send(http, inbox, to="reader@remote.test")
            raw = _raw(srv, http, inbox, sent.json()["message_id"])
        assert b"List-Unsubscribe" not in raw
    finally:
        srv.stop()
