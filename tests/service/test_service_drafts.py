"""Drafts below the HTTP layer: who waits for approval (a table), and the leases that let one
sender (scheduler, explicit send, approval) take a draft, on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from agentpost.model import new_id, utcnow
from agentpost.service.auth import Principal
from agentpost.service.drafts import needs_approval
from agentpost.store import drafts as draft_store

ORG_KEY = Principal("org_1", "key_org", None, None)
INBOX_KEY = Principal("org_1", "key_agent", "agent@x.test", None)


@dataclass
class _Inbox:
    send_requires_approval: bool


@pytest.mark.parametrize(
    "requires, who, held",
    [
        (True, INBOX_KEY, True),
        (True, ORG_KEY, False),
        (False, INBOX_KEY, False),
        (False, ORG_KEY, False),
    ],
)
def test_only_an_inbox_scoped_keys_send_on_an_inbox_requiring_approval_is_held(
    requires: bool, who: Principal, held: bool
) -> None:
    assert needs_approval(_Inbox(requires), who) is held


async def _draft(db: Any, **values: Any) -> str:
    draft_id = new_id("drf_")
    async with db.write() as conn:
        await draft_store.create(
            conn, id=draft_id, organization_id="org_1", inbox_id="agent@x.test", labels=[], **values
        )
    return draft_id


async def test_a_due_draft_is_claimed_by_one_scheduler_and_again_only_after_its_lease(db: Any) -> None:
    now = utcnow()
    due = await _draft(db, send_status="scheduled", send_at=now, next_attempt_at=now - timedelta(seconds=1))
    await _draft(db, send_status="scheduled", next_attempt_at=now + timedelta(hours=1))
    await _draft(db)  # unscheduled
    await _draft(db, send_status="pending_approval")
    async with db.write() as conn:
        first = await draft_store.claim_due(conn, 10, timedelta(minutes=5))
    async with db.write() as conn:
        second = await draft_store.claim_due(conn, 10, timedelta(minutes=5))
    assert [r.id for r in first] == [due] and second == []
    async with db.read() as conn:
        row = await draft_store.get_row(conn, due)
    assert row is not None and row.send_status == "sending"
    # While it is being sent it cannot be changed or deleted, nor taken by an explicit send.
    async with db.write() as conn:
        assert not await draft_store.update(conn, due, unless_sending=True, subject="x")
        assert not await draft_store.delete(conn, due, unless_sending=True)
        assert not await draft_store.take(conn, due, [None, "scheduled", "sending"], timedelta(minutes=5))
    # A scheduler that died leaves the draft to the next one once the lease has run out.
    async with db.write() as conn:
        await draft_store.update(conn, due, lease_until=utcnow() - timedelta(seconds=1))
    async with db.write() as conn:
        assert [r.id for r in await draft_store.claim_due(conn, 10, timedelta(minutes=5))] == [due]


async def test_of_an_approval_and_a_rejection_racing_only_one_takes_the_draft(db: Any) -> None:
    held = await _draft(db, send_status="pending_approval")
    async with db.write() as conn:
        assert await draft_store.take(conn, held, ["pending_approval"], timedelta(minutes=5))
    async with db.write() as conn:
        assert not await draft_store.take(conn, held, ["pending_approval"], timedelta(minutes=5))
    plain = await _draft(db)
    async with db.write() as conn:
        assert not await draft_store.take(conn, plain, ["pending_approval"], timedelta(minutes=5))
        assert await draft_store.take(conn, plain, [None], timedelta(minutes=5))
