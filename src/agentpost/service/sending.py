"""What a send knows before it composes: its inbox, domain and DKIM keys, which recipients are
hosted here, and which are suppressed; the seldom-changing part kept per process for a while."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from agentpost.service import domains as domain_service
from agentpost.service.context import Context
from agentpost.store import sending
from agentpost.store.sending import Caps, SendingFacts

log = logging.getLogger(__name__)

# Seconds an inbox's sending facts and a domain's "hosted here" answer are reused. Every send
# read them, and those reads were a tenth of the send path's CPU. Changes made through any
# process on this host take effect at once (``ctx.directory_epoch``); made through another host
# sharing the database, within this time. Suppressions are never cached: a suppressed address
# must not be mailed again, not even for a few seconds.
SENDING_TTL = 5.0
_MAX_ENTRIES = 10_000
# Domains whose DKIM signers a starting process loads before its ports open (newest first).
PRIMED_DOMAINS = 50


async def facts(
    ctx: Context, inbox_id: str, recipient_keys: list[str], caps: Callable[[Any], Caps] | None = None
) -> SendingFacts:
    """``caps`` (service/guardrails.py) names the send caps to count in the same transaction."""
    now = time.monotonic()
    epoch = ctx.directory_epoch()
    if epoch != ctx.sending_epoch:
        ctx.senders.clear()
        ctx.receiving.clear()
        ctx.sending_epoch = epoch
    key = inbox_id.lower()
    cached = ctx.senders.get(key)
    sender = cached[1] if cached is not None and now - cached[0] < SENDING_TTL else None
    known = {name: hosted for name, (when, hosted) in _fresh(ctx, recipient_keys, now)}
    found = await ctx.db.run_read(sending.facts, inbox_id, recipient_keys, sender, known, caps, int(time.time() * 1000))
    if len(ctx.senders) > _MAX_ENTRIES or len(ctx.receiving) > _MAX_ENTRIES:
        ctx.senders.clear()
        ctx.receiving.clear()
    if found.sender is not None and sender is None:
        ctx.senders[key] = (now, found.sender)
    for name, hosted in found.receiving.items():
        if name not in known:
            ctx.receiving[name] = (now, hosted)
    return found


def _fresh(ctx: Context, recipient_keys: list[str], now: float) -> list[tuple[str, tuple[float, bool]]]:
    out = []
    for name in {key.rpartition("@")[2] for key in recipient_keys}:
        entry = ctx.receiving.get(name)
        if entry is not None and now - entry[0] < SENDING_TTL:
            out.append((name, entry))
    return out


async def prime(ctx: Context) -> None:
    """Before the ports open: load the DKIM signers of up to PRIMED_DOMAINS hosted domains and
    read one inbox's sending facts. A key load costs ~4 ms and a process's first facts read
    ~4 ms more than later ones (its statements compile); the first burst of sends after a start
    waited for both, each send behind the one before (outbound benchmark, first 20 sends)."""
    primer = await ctx.db.run_read(sending.primer, PRIMED_DOMAINS)
    for signing in primer.signing:
        try:
            await domain_service.signer(ctx, signing.domain_id, signing.domain, signing.keys)
        except Exception as exc:  # a key that does not load fails that domain's sends, not the start
            log.warning("DKIM keys of %s do not load: %s", signing.domain, exc)
    if primer.inbox_id is not None:
        await facts(ctx, primer.inbox_id, [primer.inbox_id])
