"""The command line as an operator uses it: init, key create, domain add, inbox create/list, status."""

from __future__ import annotations

from pathlib import Path

import httpx

from serverproc import AgentpostServer


def test_key_create_prints_only_the_key_and_the_key_works(tmp_path: Path) -> None:
    server = AgentpostServer(tmp_path / "data")
    server.setup()
    assert server.api_key.startswith("ap_") and "\n" not in server.api_key and " " not in server.api_key
    config = (tmp_path / "data" / "agentpost.toml").read_text()
    assert "secret_key" in config and "[mx]" in config
    assert (tmp_path / "data" / "agentpost.toml").stat().st_mode & 0o077 == 0  # holds the secret key
    assert (tmp_path / "data" / "tls" / "key.pem").stat().st_mode & 0o077 == 0
    server.start()
    try:
        response = httpx.get(server.http_url + "/v0/auth/me", headers={"authorization": f"Bearer {server.api_key}"})
        assert response.status_code == 200 and response.json()["scope_type"] == "organization"
    finally:
        server.stop()


def test_inbox_create_adds_the_domain_and_list_and_status_show_it(tmp_path: Path) -> None:
    server = AgentpostServer(tmp_path / "data")
    server.setup()
    created = server.cli("inbox", "create", "support@agents.example.test")
    assert "support@agents.example.test" in created.stdout
    listed = server.cli("inbox", "list")
    assert "support@agents.example.test" in listed.stdout
    status = server.cli("status")
    assert "inboxes" in status.stdout and "not running" in status.stdout
    again = server.cli("inbox", "create", "support@agents.example.test", check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = server.cli("inbox", "create", "not an address", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_domain_add_prints_records_and_recommends_a_subdomain(tmp_path: Path) -> None:
    server = AgentpostServer(tmp_path / "data")
    server.setup()
    out = server.cli("domain", "add", "example.test").stdout
    assert "MX" in out and "v=spf1" in out and "_dmarc.example.test" in out
    assert "subdomain" in out


def test_a_broken_config_file_is_a_clear_error_not_a_trace(tmp_path: Path) -> None:
    server = AgentpostServer(tmp_path / "data")
    server.setup()
    (tmp_path / "data" / "agentpost.toml").write_text("hostname = [broken\n")
    result = server.cli("status", check=False)
    assert result.returncode == 2
    assert "configuration error" in result.stderr and "Traceback" not in result.stderr
