"""`agentpost domain rotate-dkim NAME`: new selectors to publish, the old ones still signing."""

from __future__ import annotations

import re
from pathlib import Path

from serverproc import AgentpostServer


def test_rotate_dkim_lists_the_new_selectors_to_publish_and_is_a_no_op_while_they_wait(tmp_path: Path) -> None:
    server = AgentpostServer(tmp_path / "data")
    server.setup()
    server.cli("domain", "add", "agents.example.test")
    out = server.cli("domain", "rotate-dkim", "Agents.Example.Test.").stdout
    pending = re.findall(r"(ap\d+[re])\._domainkey\.agents\.example\.test\s+next key", out)
    assert len(pending) == 2, out
    assert "signing switches" in out
    again = server.cli("domain", "rotate-dkim", "agents.example.test").stdout
    assert re.findall(r"(ap\d+[re])\._domainkey\.agents\.example\.test\s+next key", again) == pending
    records = server.cli("domain", "records", "--zone-file", "agents.example.test").stdout
    assert all(f"\n{s}._domainkey.agents.example.test." in records for s in pending)
    unknown = server.cli("domain", "rotate-dkim", "nowhere.example.test", check=False)
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr
