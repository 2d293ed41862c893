"""Row counts for `agentpost status`."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentpost.store.tables import domains, events, inboxes, messages, threads, webhook_deliveries, webhooks


async def counts(conn: AsyncConnection) -> dict[str, int]:
    result: dict[str, int] = {}
    for name, table in (
        ("domains", domains),
        ("inboxes", inboxes),
        ("threads", threads),
        ("messages", messages),
        ("events", events),
        ("webhooks", webhooks),
    ):
        result[name] = int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())
    pending = sa.select(sa.func.count()).select_from(webhook_deliveries).where(webhook_deliveries.c.status == "pending")
    result["webhook deliveries pending"] = int((await conn.execute(pending)).scalar_one())
    return result
