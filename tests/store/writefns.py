"""Write functions for the write-process tests: module-level, so the write process can import them."""

from __future__ import annotations

import os
import time
from typing import Any

import sqlalchemy as sa

from agentpost.model import utcnow
from agentpost.store.tables import suppressions


def insert(conn: sa.Connection, address: str) -> tuple[int, int]:
    """Insert a suppression row; answers (the process that wrote it, PRAGMA synchronous then)."""
    row = {"organization_id": "org", "scope": "", "address": address, "reason": "test", "created_at": utcnow()}
    conn.execute(suppressions.insert().values(**row))
    return os.getpid(), int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())


def insert_slowly(conn: sa.Connection, address: str, seconds: float) -> tuple[int, int]:
    time.sleep(seconds)
    return insert(conn, address)


def insert_then_fail(conn: sa.Connection, address: str) -> None:
    insert(conn, address)
    raise ValueError(f"refused {address}")


def count(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(suppressions)).scalar_one())


def addresses(conn: sa.Connection) -> list[Any]:
    return sorted(r[0] for r in conn.execute(sa.select(suppressions.c.address)))
