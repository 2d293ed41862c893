"""/v0/unsubscribe/{token}: the RFC 8058 one-click endpoint (no API key: the token is the credential)."""

from __future__ import annotations

from html import escape

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from agentpost.api.deps import Ctx
from agentpost.service import unsubscribe

router = APIRouter(tags=["unsubscribe"])
PATH = "/v0/unsubscribe/{token}"
# The token is in the URL: keep it out of caches, referrers and search indexes.
_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}


def _page(title: str, body: str) -> HTMLResponse:
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title></head>"
        f'<body style="font-family: sans-serif; max-width: 32rem; margin: 3rem auto">{body}</body></html>'
    )
    return HTMLResponse(html, headers=_HEADERS)


@router.get(PATH, response_class=HTMLResponse)
async def confirm_page(ctx: Ctx, token: str) -> HTMLResponse:
    """A confirmation form; a GET never unsubscribes (link scanners fetch every URL, RFC 8058 §1)."""
    found = await unsubscribe.lookup(ctx, token)
    return _page(
        "Unsubscribe",
        f"<p>Stop mail from <b>{escape(found.inbox_id)}</b> to <b>{escape(found.address)}</b>?</p>"
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>',
    )


@router.post(PATH, response_class=HTMLResponse)
async def one_click(ctx: Ctx, token: str) -> HTMLResponse:
    """RFC 8058 §3.2: the POST (body ``List-Unsubscribe=One-Click``) unsubscribes, without
    cookies, redirects or further interaction. The token alone decides, so the body is not required."""
    found = await unsubscribe.one_click(ctx, token)
    return _page(
        "Unsubscribed",
        f"<p><b>{escape(found.address)}</b> will get no more mail from <b>{escape(found.inbox_id)}</b>.</p>",
    )
