"""The README, executed: `make run` in one shell, the quickstart block verbatim in another."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from serverproc import ROOT, wait_port


def _quickstart() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"```bash quickstart\n(.*?)```", text, re.S)
    assert match, "README has no quickstart block"
    return match.group(1)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_readme_quickstart_works_as_written_against_make_run(tmp_path: Path) -> None:
    for port in (8080, 2525, 9000):
        if not _free(port):
            pytest.fail(f"port {port} is taken; the README quickstart uses the default ports")
    env = {**os.environ, "AGENTPOST_DATA_DIR": str(tmp_path / "data")}
    env.pop("AGENTPOST_TEST_BACKEND", None)
    log = open(tmp_path / "make-run.log", "wb")
    server = subprocess.Popen(["make", "run"], cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        wait_port("127.0.0.1", 8080, timeout=180)
        wait_port("127.0.0.1", 2525, timeout=30)
        result = subprocess.run(
            ["bash", "-e", "-c", _quickstart()], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        subprocess.run(["pkill", "-f", "examples/webhook_receiver.py"], check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output + (tmp_path / "make-run.log").read_text()
    assert "250 2.0.0" in output
    assert "new part only: Yes, please ship it today." in output
    assert "attachments: [('order.txt', 22)]" in output
    assert '"verified": true' in output and '"event_type": "message.received"' in output
    assert '"subject": "Re: your order"' in output
