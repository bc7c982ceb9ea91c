"""Unsubscribe and resubscribe pages (RFC 8058 one-click on the same URL).

GET/HEAD (what link scanners do) only shows a page with a button; a POST to the link
unsubscribes at once, with no cookie, session or CSRF check: mail providers post
`List-Unsubscribe=One-Click` to it, and the page's button posts to it too. The result page
offers the undo (resubscribe) button, which posts to /resubscribe with the same token.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from newsletter import readers
from newsletter.store import ReaderRow
from newsletter.web.pages import call, context, masked, small_body, verified_reader

ONE_CLICK = b"List-Unsubscribe=One-Click"  # urlencoded; multipart carries name and value apart
ONE_CLICK_PART = (b'name="List-Unsubscribe"', b"One-Click")


def one_click(body: bytes) -> bool:
    """Whether a POST body is RFC 8058's (urlencoded or multipart/form-data)."""
    return ONE_CLICK in body or all(part in body for part in ONE_CLICK_PART)


def _page(request: Request, row: ReaderRow, reader: str, state: str) -> Response:
    web = context(request)
    return web.page(
        "subscription.html",
        state=state,  # confirm | unsubscribed | resubscribe | resubscribed
        subscription=row.status,
        since=row.status_at,
        address=masked(row.email),
        unsubscribe_action=web.links.unsubscribe(reader),
        resubscribe_action=web.links.resubscribe(reader),
    )


async def confirm_unsubscribe(request: Request) -> Response:
    reader = verified_reader(request, "subscription")
    row = await call(readers.reader, context(request).store, reader)
    return _page(request, row, reader, "confirm")


async def unsubscribe(request: Request) -> Response:
    reader = verified_reader(request, "subscription")
    body = await small_body(request)
    how: readers.How = "one-click" if one_click(body) else "page"
    web = context(request)
    row = await call(readers.unsubscribe_reader, web.store, reader, how=how, now=web.now())
    return _page(request, row, reader, "unsubscribed")


async def confirm_resubscribe(request: Request) -> Response:
    reader = verified_reader(request, "subscription")
    row = await call(readers.reader, context(request).store, reader)
    return _page(request, row, reader, "resubscribe")


async def resubscribe(request: Request) -> Response:
    reader = verified_reader(request, "subscription")
    web = context(request)
    row = await call(readers.resubscribe_reader, web.store, reader, how="page", now=web.now())
    return _page(request, row, reader, "resubscribed")
