"""Secrets at rest: API keys only as hashes, webhook secrets and custom headers encrypted."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from agentpost import schemas
from agentpost.service import keys, webhooks
from agentpost.service.context import Context, Sealer


async def _dump(db: Any) -> str:
    """Every text and blob value of every table, as one string."""
    parts: list[str] = []
    async with db.read() as conn:
        for table in ("api_keys", "webhooks"):
            for row in (await conn.execute(sa.text(f"SELECT * FROM {table}"))).all():
                parts.extend(str(value) for value in row)
    return "\n".join(parts)


async def test_api_keys_and_webhook_secrets_never_reach_the_database_in_clear(db: Any, ctx: Context) -> None:
    created = await keys.bootstrap_key(ctx)
    who = await keys.operator(ctx)
    hook = await webhooks.create(
        ctx,
        who,
        schemas.CreateWebhook(
            url="https://hooks.example.test/in", event_types=["message.received"], headers={"X-Token": "hunter2-value"}
        ),
    )
    stored = await _dump(db)
    assert created.api_key not in stored
    assert hook.secret not in stored and hook.secret.removeprefix("whsec_") not in stored
    assert "hunter2-value" not in stored
    # ... and they still work: the key authenticates, the secret and header names read back.
    from agentpost.service.auth import authenticate

    assert (await authenticate(ctx, created.api_key)).organization_id == who.organization_id
    assert (await webhooks.get(ctx, who, hook.webhook_id)).secret == hook.secret
    assert await webhooks.header_names(ctx, who, hook.webhook_id) == ["X-Token"]


async def test_a_different_secret_key_cannot_read_sealed_values(db: Any) -> None:
    sealed = Sealer("one").seal("whsec_abc")
    try:
        Sealer("two").unseal(sealed)
    except ValueError as exc:
        assert "secret_key" in str(exc)
    else:
        raise AssertionError("unsealed with the wrong key")
