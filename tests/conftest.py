"""Shared fixtures: the storage backend under test (SQLite or a private PostgreSQL) and servers.

`AGENTPOST_TEST_BACKEND=postgresql` runs every database-backed test on a throwaway PostgreSQL
cluster started for the session; the default is SQLite.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from serverproc import AgentpostServer

BACKEND = os.environ.get("AGENTPOST_TEST_BACKEND", "sqlite")
TESTDATA = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata"


def pytest_report_header(config: pytest.Config) -> str:
    return f"agentpost storage backend: {BACKEND}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgresql: needs the PostgreSQL backend; deselected (not skipped) on SQLite")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``postgresql`` (several processes on one database) only exist in the PostgreSQL
    run: on SQLite they are deselected, so no run reports them as skipped."""
    if BACKEND == "postgresql":
        return
    deselected = [item for item in items if item.get_closest_marker("postgresql") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item.get_closest_marker("postgresql") is None]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    if BACKEND != "postgresql":
        yield None
        return
    from pgserver import PrivatePostgres

    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def database_url(tmp_path: Path, postgres: Any) -> str:
    if postgres is None:
        return f"sqlite:///{tmp_path / 'agentpost.db'}"
    return str(postgres.create_database("t" + uuid.uuid4().hex[:12]))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Any]:
    from agentpost.store.db import Database

    database = Database(database_url)
    await database.migrate()
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def ctx(db: Any) -> Any:
    """A service Context on the test database, as the service tests build it."""
    from agentpost.notify.bus import EventBus
    from agentpost.service.context import Context, Sealer

    return Context(
        db=db,
        sealer=Sealer("test-secret-key"),
        bus=EventBus(),
        routing_changed=lambda: None,
        hostname="mx.test",
        public_url="http://127.0.0.1",
    )


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[AgentpostServer]:
    """A real `agentpost serve` process, with an organisation API key."""
    srv = AgentpostServer(tmp_path / "data", database_url=database_url if BACKEND == "postgresql" else "")
    with srv.running():
        yield srv


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> Iterator[AgentpostServer]:
    """One server for a whole test module (tests use their own inboxes)."""
    url = ""
    if postgres is not None:
        url = str(postgres.create_database("m" + uuid.uuid4().hex[:12]))
    srv = AgentpostServer(tmp_path_factory.mktemp("server") / "data", database_url=url)
    with srv.running():
        yield srv
