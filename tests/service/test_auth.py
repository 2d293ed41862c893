"""API key authentication: a burst of requests with a key not yet cached reads it once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentpost.errors import Unauthorized
from agentpost.service import keys
from agentpost.service.auth import authenticate
from agentpost.service.context import Context
from agentpost.store import orgs


def _count_key_reads(db: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The key reads that reach the (real) database, by key hash."""
    reads: list[str] = []
    run_read = db.run_read

    async def counting(fn: Any, *args: Any) -> Any:
        if fn is orgs.find_key_by_hash_sync:
            reads.append(args[0])
        return await run_read(fn, *args)

    monkeypatch.setattr(db, "run_read", counting)
    return reads


async def test_a_burst_of_requests_with_an_uncached_key_reads_it_once(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = await keys.bootstrap_key(ctx)
    reads = _count_key_reads(ctx.db, monkeypatch)
    who = await asyncio.gather(*(authenticate(ctx, created.api_key) for _ in range(20)))
    assert {w.organization_id for w in who} == {who[0].organization_id} and len(who) == 20
    assert len(reads) == 1
    # Cached now; once forgotten (a key deleted somewhere), the next burst reads it once again.
    await authenticate(ctx, created.api_key)
    assert len(reads) == 1
    ctx.principals.clear()
    await asyncio.gather(*(authenticate(ctx, created.api_key) for _ in range(5)))
    assert len(reads) == 2 and not ctx.principal_reads


async def test_every_request_of_a_burst_with_an_unknown_key_is_refused(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    await keys.bootstrap_key(ctx)
    reads = _count_key_reads(ctx.db, monkeypatch)
    results = await asyncio.gather(*(authenticate(ctx, "am_not-a-key") for _ in range(8)), return_exceptions=True)
    assert all(isinstance(r, Unauthorized) for r in results)
    assert len(reads) == 1
    # Unknown keys are never cached: a later request reads again (a key created since works).
    with pytest.raises(Unauthorized):
        await authenticate(ctx, "am_not-a-key")
    assert len(reads) == 2


async def test_a_caller_that_goes_away_does_not_cancel_the_others_read(ctx: Context) -> None:
    created = await keys.bootstrap_key(ctx)
    first = asyncio.create_task(authenticate(ctx, created.api_key))
    second = asyncio.create_task(authenticate(ctx, created.api_key))
    await asyncio.sleep(0)  # both are waiting on the one read
    first.cancel()
    assert (await second).organization_id
    with pytest.raises(asyncio.CancelledError):
        await first
