"""RCPT routing of our own generated addresses: a valid VERP or unsubscribe token routes to the
bounce handler, a forged one is an unknown user (550 5.1.1), and a real inbox keeps its name."""

from __future__ import annotations

from typing import Any

from agentpost import schemas
from agentpost.inbound.checks import Directory, Route
from agentpost.model import new_id
from agentpost.notify.bus import EventBus
from agentpost.outbound.bounces import BOUNCE, UNSUBSCRIBE, Returned
from agentpost.proto import codes
from agentpost.service import domains, inboxes, keys
from agentpost.service.context import Context, Sealer
from agentpost.service.unsubscribe import address_tokens


async def test_our_addresses_route_to_the_bounce_handler_and_forgeries_are_unknown_users(db: Any) -> None:
    ctx = Context(db, Sealer("test-secret-key"), EventBus(), lambda: None, "mx.test", "http://127.0.0.1")
    who = await keys.operator(ctx)
    await domains.add(ctx, who, schemas.CreateDomain(domain="routes.example.test"))
    await inboxes.create(ctx, who, schemas.CreateInbox(username="agent", domain="routes.example.test"))
    # An inbox whose name merely looks like ours keeps receiving.
    await inboxes.create(ctx, who, schemas.CreateInbox(username="bounces+list", domain="routes.example.test"))
    # The MX builds its codec from the secret key the same way the service does.
    tokens = address_tokens(Sealer("test-secret-key"))
    directory = Directory(db, tokens=tokens)
    pk = new_id("msg_")

    verp = tokens.verp(pk, "routes.example.test")
    route = await directory.route(verp)
    assert isinstance(route, Route)
    assert route.returned == Returned(BOUNCE, pk) and route.inbox_id == verp.lower() and route.organization_id
    unsubscribe = await directory.route(tokens.unsubscribe(pk, "routes.example.test").upper())
    assert isinstance(unsubscribe, Route) and unsubscribe.returned == Returned(UNSUBSCRIBE, pk)

    forged = address_tokens(Sealer("another-secret-key")).verp(pk, "routes.example.test")
    assert await directory.route(forged) == codes.R550_NO_SUCH_USER
    assert await directory.route("bounces+" + "0" * 42 + "@routes.example.test") == codes.R550_NO_SUCH_USER
    # Never a relay: a token at a domain not hosted here is refused as such.
    assert await directory.route(tokens.verp(pk, "elsewhere.test")) == codes.R550_RELAY_DENIED
    plain = await directory.route("bounces+list@routes.example.test")
    assert isinstance(plain, Route) and plain.returned is None

    # Without a codec (tokens not wired), our addresses are unknown users: nothing leaks through.
    assert await Directory(db).route(verp) == codes.R550_NO_SUCH_USER
