"""List-Unsubscribe on sent mail (RFC 2369, RFC 8058 one-click) and the unsubscribe use cases.

Every message sent through the API names two ways out:

- ``mailto:unsubscribe+TOKEN@<domain>``: TOKEN names the sent message; the sender of the mail
  that arrives there is the one leaving (handled by outbound.bounces after the MX).
- ``https://<public_url>/v0/unsubscribe/TOKEN`` (one-click, RFC 8058): TOKEN names the inbox
  and the recipient. A URL in a header every recipient sees can only name one person, so it is
  present only when the message has exactly one envelope recipient; a message to several
  carries the mailto URI alone (and then no List-Unsubscribe-Post, RFC 8058 §3.1).

A POST to the URL suppresses the recipient for the inbox (reason ``unsubscribed``); a GET only
shows a confirmation form, because link scanners fetch every URL in a message (RFC 8058 §1).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from dataclasses import dataclass

from agentpost.errors import NotFound
from agentpost.outbound.bounces import AddressTokens
from agentpost.proto.compose import MAX_URI, Draft
from agentpost.service.context import Context, Sealer
from agentpost.store import inboxes as inbox_store
from agentpost.store import suppressions as suppression_store

ADDRESS_TOKENS = "address-tokens"  # key purpose shared with the MX (serve builds its AddressTokens so)
_URL_TOKENS = "list-unsubscribe-url"
_CALLER_HEADERS = frozenset({"list-unsubscribe", "list-unsubscribe-post"})


def address_tokens(sealer: Sealer) -> AddressTokens:
    """The VERP / unsubscribe address codec; the MX must build the same one (same secret key)."""
    return AddressTokens(sealer.derive(ADDRESS_TOKENS))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _mac(sealer: Sealer, body: str) -> str:
    return _b64(hmac.new(sealer.derive(_URL_TOKENS), body.encode(), hashlib.sha256).digest()[:16])


def url_token(sealer: Sealer, inbox_id: str, address: str) -> str:
    """A token naming (inbox, recipient), with no expiry: unsubscribe links must keep working."""
    body = _b64(f"{inbox_id.lower()}\n{address.lower()}".encode())
    return f"{body}.{_mac(sealer, body)}"


def read_url_token(sealer: Sealer, token: str) -> tuple[str, str] | None:
    body, dot, mac = token.partition(".")
    if not dot or len(token) > 2048 or not hmac.compare_digest(mac.encode(), _mac(sealer, body).encode()):
        return None
    try:
        inbox_id, newline, address = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode().partition("\n")
    except ValueError:
        return None
    return (inbox_id, address) if newline and inbox_id and address else None


def with_list_unsubscribe(
    ctx: Context, draft: Draft, message_pk: str, domain: str, inbox_id: str, recipients: list[str]
) -> Draft:
    """``draft`` with our List-Unsubscribe URIs, unless turned off or the caller set its own."""
    if not ctx.list_unsubscribe or any(name.lower() in _CALLER_HEADERS for name in draft.headers):
        return draft
    # RFC 2369 §3.2: a mailto URI may carry a subject; some clients send an empty mail otherwise.
    mailto = f"mailto:{address_tokens(ctx.sealer).unsubscribe(message_pk, domain)}?subject=unsubscribe"
    url = None
    if len(recipients) == 1:
        url = f"{ctx.public_url}/v0/unsubscribe/{url_token(ctx.sealer, inbox_id, recipients[0])}"
        if len(url) > MAX_URI:  # two very long addresses: the mailto URI alone still works
            url = None
    return dataclasses.replace(draft, list_unsubscribe_mailto=mailto, list_unsubscribe_url=url)


@dataclass(frozen=True, slots=True)
class Unsubscription:
    inbox_id: str
    address: str


async def _lookup(ctx: Context, token: str) -> tuple[Unsubscription, str]:
    found = read_url_token(ctx.sealer, token)
    if found is None:
        raise NotFound("unknown unsubscribe link")
    async with ctx.db.read() as conn:
        inbox = await inbox_store.get_row(conn, found[0])
    if inbox is None:
        raise NotFound("unknown unsubscribe link")
    return Unsubscription(found[0], found[1]), str(inbox.organization_id)


async def lookup(ctx: Context, token: str) -> Unsubscription:
    """What a one-click link would unsubscribe (no change); NotFound for a forged token."""
    return (await _lookup(ctx, token))[0]


async def one_click(ctx: Context, token: str) -> Unsubscription:
    """RFC 8058 §3.2 POST: suppress the recipient for the inbox. Repeats are harmless."""
    found, organization_id = await _lookup(ctx, token)
    async with ctx.db.write() as conn:
        await suppression_store.add(
            conn,
            organization_id,
            found.inbox_id,
            found.address,
            "unsubscribed",
            "List-Unsubscribe one-click (RFC 8058)",
        )
    return found
