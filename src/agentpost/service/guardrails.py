"""Guardrails: the allow/block lists API, the inbox guardrail settings, and the checks every send passes
(send lists and default deny, send caps, RFC 3834 loop protection)."""

from __future__ import annotations

import base64
import math
import re
import time
from collections.abc import Callable
from typing import Any

from agentpost import model, schemas
from agentpost.errors import BadRequest, Forbidden, Invalid, NotFound, RateLimited
from agentpost.proto.address import AddressError, parse_address
from agentpost.service.auth import Principal
from agentpost.service.context import Context
from agentpost.service.mail import owned_inbox
from agentpost.store import labels as labelset
from agentpost.store import lists as list_store
from agentpost.store import messages as message_store
from agentpost.store.lists import ListSet
from agentpost.store.pages import clamp_limit, encode_token
from agentpost.store.sending import Caps, SendingFacts

DIRECTIONS = ("send", "receive", "reply")
LIST_TYPES = ("allow", "block")
# RFC 1035 §2.3.1 labels (after IDNA), at least two of them.
_DOMAIN = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")
# Labels inbound puts on automatic mail (proto.mime: Auto-Submitted, Precedence, List-Id, DSNs, ARF).
_AUTOMATIC = frozenset({model.LABEL_AUTO_REPLY, model.LABEL_BOUNCE, model.LABEL_REPORT, model.LABEL_BULK})


# ---- inbox settings ------------------------------------------------------------------------


def settings(row: Any | None, req: schemas.CreateInbox | schemas.UpdateInbox) -> dict[str, Any]:
    """The guardrail columns to write for a create (``row`` None) or an update: given fields replace,
    the others keep their value."""
    values: dict[str, Any] = {}
    for name in ("default_deny", "send_limits", "loop_protection"):
        change = getattr(req, name)
        if change is not None:
            stored = getattr(row, name) if row is not None else None
            values[name] = {**(stored or {}), **change.model_dump(exclude_unset=True)} or None
    return values


def _loop(inbox: Any) -> schemas.LoopProtection:
    return schemas.LoopProtection.model_validate(inbox.loop_protection or {})


def caps_for(thread_id: str | None) -> Callable[[Any], Caps]:
    """Which caps a send from an inbox counts (store/sending.py asks with the inbox row)."""

    def caps(inbox: Any) -> Caps:
        limits = inbox.send_limits or {}
        per_thread = _loop(inbox).per_thread_per_hour if thread_id is not None else None
        return Caps(limits.get("per_hour"), limits.get("per_day"), per_thread, thread_id)

    return caps


# ---- the send-side checks ------------------------------------------------------------------


def now_ms() -> int:
    return int(time.time() * 1000)


async def replying_to(ctx: Context, inbox_id: str, in_reply_to: str | None) -> Any | None:
    """The message of this inbox a send answers (its thread is capped, its kind may forbid an answer)."""
    if in_reply_to is None:
        return None
    async with ctx.db.read() as conn:
        return await message_store.get_row(conn, inbox_id.lower(), in_reply_to)


def refused(lists: ListSet, direction: str, address: str, default_deny: bool) -> bool:
    """Whether the lists (most specific entry first) or, when none names the address, the inbox's
    default deny refuse ``address`` in ``direction``."""
    decision = lists.decide(direction, address)
    return decision == "block" or (decision is None and default_deny)


def automatic(original: Any) -> str | None:
    """Why ``original`` must not be answered automatically (RFC 3834 §2), or None."""
    if original.direction != "received":
        return None
    if not original.mail_from:
        # RFC 3834 §2: never respond to a message with a null reverse-path (bounces, MDNs, ...).
        return "it has a null envelope sender"
    found = _AUTOMATIC & set(labelset.load(original.labels))
    if found:
        # RFC 3834 §2/§5: Auto-Submitted other than "no", Precedence bulk/junk/list (and List-Id,
        # DSNs, ARF reports) mark mail a responder must not answer, or two agents loop forever.
        return f"it is automatic mail (label {sorted(found)[0]}: Auto-Submitted, Precedence or a report)"
    return None


def check_send(facts: SendingFacts, recipient_keys: list[str], replying_to: Any | None, now_ms: int) -> None:
    """Raise when a send must not go: a recipient refused by the send lists (403, naming them), a reply
    to automatic mail (403), or a cap reached (429 with Retry-After). Pure, given the facts."""
    assert facts.sender is not None
    inbox = facts.sender.inbox
    deny = bool((inbox.default_deny or {}).get("send"))
    if facts.sender.lists or deny:
        blocked = sorted(k for k in recipient_keys if refused(facts.sender.lists, "send", k, deny))
        if blocked:
            # The whole send is refused rather than sent to the rest: an agent told "sent" would
            # believe a blocked party was informed.
            raise Forbidden(
                f"recipients refused by the inbox's send lists{' (default deny)' if deny else ''}: "
                + ", ".join(blocked),
                fix="Remove them, or add an allow entry: POST /v0/inboxes/{inbox_id}/lists/send/allow",
            )
    if replying_to is not None and not _loop(inbox).answer_auto_submitted:
        why = automatic(replying_to)
        if why is not None:
            raise Forbidden(
                f"not replying to {replying_to.message_id}: {why}",
                fix="Set loop_protection.answer_auto_submitted on the inbox to answer automatic mail.",
            )
    if not facts.windows:  # nothing capped was counted: the common case costs nothing more
        return
    limits = inbox.send_limits or {}
    windows = (
        ("hour", limits.get("per_hour"), 3600, "sends per hour (send_limits.per_hour)"),
        ("day", limits.get("per_day"), 86400, "sends per day (send_limits.per_day)"),
        ("thread", _loop(inbox).per_thread_per_hour, 3600, "sends per thread per hour (loop_protection)"),
    )
    for name, cap, span, what in windows:
        window = facts.windows.get(name)
        if cap and window is not None and window.count >= cap:
            retry_after = max(1, math.ceil((window.oldest_ms + span * 1000 - now_ms) / 1000))
            raise RateLimited(f"the inbox reached its cap of {cap} {what}", retry_after)


# ---- the lists API -------------------------------------------------------------------------


def _checked(direction: str, list_type: str) -> None:
    if direction not in DIRECTIONS:
        raise NotFound(f"no list direction {direction!r}: one of send, receive, reply")
    if list_type not in LIST_TYPES:
        raise NotFound(f"no list type {list_type!r}: allow or block")


def _entry(value: str) -> tuple[str, str]:
    """(normalised entry, entry_type): an address or a domain."""
    value = value.strip()
    if "@" in value:
        try:
            return parse_address(value).key, "email"
        except AddressError as exc:
            raise Invalid(str(exc), [{"path": "entry", "message": str(exc)}]) from None
    try:
        domain = value.lower().rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        domain = ""
    if not _DOMAIN.match(domain):
        raise Invalid(
            "entry is neither an email address nor a domain", [{"path": "entry", "message": "address or domain"}]
        )
    return domain, "domain"


def _to_entry(row: Any) -> schemas.ListEntry:
    return schemas.ListEntry(
        entry=row.entry,
        organization_id=row.organization_id,
        reason=row.reason,
        direction=row.direction,
        list_type=row.list_type,
        entry_type=row.entry_type,
        created_at=row.created_at,
        read_only=False,
        inbox_id=row.scope or None,
    )


async def _scope(ctx: Context, who: Principal, inbox_id: str | None) -> str:
    """The scope key: the inbox id, or "" for the organisation (which an inbox-scoped key cannot touch)."""
    if inbox_id is None:
        who.require_org()
        return ""
    row = await owned_inbox(ctx, who, inbox_id)
    return str(row.id)


async def list_entries(
    ctx: Context,
    who: Principal,
    inbox_id: str | None,
    direction: str,
    list_type: str,
    limit: int | None,
    page_token: str | None,
) -> schemas.ListListEntries:
    who.require("list_entry_read")
    _checked(direction, list_type)
    scope = await _scope(ctx, who, inbox_id)
    n = clamp_limit(limit)
    after = _after(page_token)
    async with ctx.db.read() as conn:
        rows = await list_store.page(conn, who.organization_id, scope, direction, list_type, n, after)
    more = len(rows) > n
    rows = rows[:n]
    return schemas.ListListEntries(
        count=len(rows),
        limit=n,
        next_page_token=encode_token(rows[-1].entry) if more else None,
        entries=[_to_entry(r) for r in rows],
    )


def _after(page_token: str | None) -> str | None:
    """The last entry of the previous page. Entries, unlike ids, may be up to 320 characters long,
    so the id-shaped check of ``store.pages.decode_token`` does not apply."""
    if not page_token:
        return None
    try:
        return base64.urlsafe_b64decode(page_token + "=" * (-len(page_token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("page_token is not valid", fix="Pass next_page_token from a previous response.") from None


async def create_entry(
    ctx: Context, who: Principal, inbox_id: str | None, direction: str, list_type: str, req: schemas.CreateListEntry
) -> schemas.ListEntry:
    who.require("list_entry_create")
    _checked(direction, list_type)
    scope = await _scope(ctx, who, inbox_id)
    entry, entry_type = _entry(req.entry)
    if req.reason is not None and len(req.reason) > 1000:
        raise Invalid("reason is too long", [{"path": "reason", "message": "at most 1000 characters"}])
    async with ctx.db.write() as conn:
        row = await list_store.add(
            conn, who.organization_id, scope, direction, list_type, entry, entry_type, req.reason
        )
    ctx.routing_changed()  # the send facts and MX routes cached per process read the lists
    return _to_entry(row)


async def get_entry(
    ctx: Context, who: Principal, inbox_id: str | None, direction: str, list_type: str, entry: str
) -> schemas.ListEntry:
    who.require("list_entry_read")
    _checked(direction, list_type)
    scope = await _scope(ctx, who, inbox_id)
    key, _ = _entry(entry)
    async with ctx.db.read() as conn:
        row = await list_store.get(conn, who.organization_id, scope, direction, list_type, key)
    if row is None:
        raise NotFound("list entry not found")
    return _to_entry(row)


async def delete_entry(
    ctx: Context, who: Principal, inbox_id: str | None, direction: str, list_type: str, entry: str
) -> None:
    who.require("list_entry_delete")
    _checked(direction, list_type)
    scope = await _scope(ctx, who, inbox_id)
    key, _ = _entry(entry)
    async with ctx.db.write() as conn:
        removed = await list_store.remove(conn, who.organization_id, scope, direction, list_type, key)
    if not removed:
        raise NotFound("list entry not found")
    ctx.routing_changed()
