"""POST /v0/domains/{id}/rotate-dkim: the domain with the new selectors listed, the old ones signing."""

from __future__ import annotations

from serverproc import AgentpostServer

DOMAIN = "rotate-api.example.test"


def test_rotate_dkim_adds_two_pending_selectors_once(shared_server: AgentpostServer) -> None:
    with shared_server.client() as http:
        created = http.post("/v0/domains", json={"domain": DOMAIN}).json()
        before = {r["name"] for r in created["records"] if "._domainkey." in r["name"]}
        rotated = http.post(f"/v0/domains/{created['domain_id']}/rotate-dkim")
        assert rotated.status_code == 200
        dkim = {r["name"]: r for r in rotated.json()["records"] if "._domainkey." in r["name"]}
        new = set(dkim) - before
        assert len(dkim) == 4 and len(new) == 2
        assert all(dkim[name]["reason"].startswith("next key") and dkim[name]["status"] == "MISSING" for name in new)
        assert all(not dkim[name]["reason"].startswith("next key") for name in before)
        assert http.post(f"/v0/domains/{DOMAIN}/rotate-dkim").json()["records"] == rotated.json()["records"]
        assert http.post("/v0/domains/dom_nope/rotate-dkim").status_code == 404
