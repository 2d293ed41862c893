"""Database.run_write: a write nobody was promised may skip the fsync, and is still committed;
every other write, before and after it, waits for the disk."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from agentpost.model import utcnow
from agentpost.store.tables import suppressions


def _sync_mode(conn: sa.Connection) -> Any:
    if conn.dialect.name == "sqlite":
        return conn.exec_driver_sql("PRAGMA synchronous").scalar_one()  # 2 = FULL, 1 = NORMAL
    return conn.exec_driver_sql("SHOW synchronous_commit").scalar_one()


def _insert(conn: sa.Connection, address: str) -> Any:
    row = {"organization_id": "org", "scope": "", "address": address, "reason": "test", "created_at": utcnow()}
    conn.execute(suppressions.insert().values(**row))
    return _sync_mode(conn)


def _count(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(suppressions)).scalar_one())


async def test_a_non_durable_write_commits_without_waiting_for_the_disk_and_the_next_one_waits_again(db: Any) -> None:
    before = await db.run_write(_sync_mode)
    during = await db.run_write(_insert, "a@x.test", durable=False)
    after = await db.run_write(_insert, "b@x.test")
    if db.is_sqlite:
        assert (before, during, after) == (2, 1, 2)
    else:  # the test server may itself run with synchronous_commit off: SET LOCAL must not leak
        assert during == "off" and before == after
    assert await db.run_read(_count) == 2  # both committed


async def test_a_failing_non_durable_write_rolls_back_and_leaves_the_connection_durable(db: Any) -> None:
    def fail(conn: sa.Connection) -> None:
        _insert(conn, "c@x.test")
        raise RuntimeError("boom")

    try:
        await db.run_write(fail, durable=False)
    except RuntimeError:
        pass
    assert await db.run_read(_count) == 0
    if db.is_sqlite:
        assert await db.run_write(_sync_mode) == 2


async def test_warm_opens_every_reader_connection_before_the_first_request(db: Any) -> None:
    from agentpost.store.db import READERS

    await db.warm()
    # One connection per reader thread (each thread opened its own, together), idle in the pool now.
    assert db._read_engine is not None and db._read_engine.pool.checkedin() == READERS
    assert await db.run_read(_count) == 0


def test_the_newest_migration_is_found_as_alembic_finds_it() -> None:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    from agentpost.store.db import MIGRATIONS, head_revision

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert [head_revision()] == ScriptDirectory.from_config(cfg).get_heads()


def test_a_current_database_is_opened_without_loading_alembic(database_url: str) -> None:
    import subprocess
    import sys

    # Twice, each in a fresh interpreter: the first migrates a new database, the second finds it current.
    script = (
        "import asyncio, sys\n"
        "from agentpost.store.db import Database\n"
        "async def main():\n"
        f"    db = Database({database_url!r})\n"
        "    await db.migrate()\n"
        "    await db.close()\n"
        "asyncio.run(main())\n"
        "print('alembic' in sys.modules)\n"
    )
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (first.stdout.strip(), second.stdout.strip()) == ("True", "False"), first.stderr + second.stderr
