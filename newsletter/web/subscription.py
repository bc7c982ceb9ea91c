"""Unsubscribe and resubscribe pages (RFC 8058 one-click on the same URL).

GET/HEAD (what link scanners do) only shows a page with a button; a POST to the link
unsubscribes at once, with no cookie, session or CSRF check: mail providers post
`List-Unsubscribe=One-Click` to it, and the page's button posts to it too. An unsubscribe
link never expires (tokens.py) and never resubscribes: it is in every mail, forwarded ones
and copied headers too.

Only the page answering the POST that made the change offers Undo: a link to /resubscribe with
a token of its own, valid for an hour and bound to that unsubscribe (readers.stamp), so it
stops working once the reader resubscribes and unsubscribes again. No web request undoes an
unsubscribe the operator made (`newsletter unsubscribe`); the page says to contact the sender.
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


def _page(
    request: Request, row: ReaderRow, reader: str, state: str, undo_action: str = ""
) -> Response:
    web = context(request)
    return web.page(
        "subscription.html",
        state=state,  # confirm | unsubscribed | resubscribe | resubscribed
        subscription=row.status,
        since=row.status_at,
        by_operator=row.status == "unsubscribed" and row.status_how not in readers.WEB,
        address=masked(row.email),
        unsubscribe_action=web.links.unsubscribe(reader),
        undo_action=undo_action,
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
    row, changed = await call(readers.unsubscribe_reader, web.store, reader, how=how, now=web.now())
    undo = web.links.resubscribe(reader, readers.stamp(row)) if changed else ""
    return _page(request, row, reader, "unsubscribed", undo)


def _undo_link(request: Request) -> tuple[str, str]:
    unsubscribed = request.query_params.get("u", "")
    reader = verified_reader(request, "resubscribe", unsubscribed)
    # the button posts to the link as it is: a new token here would extend its hour; under
    # the public URL's path (the proxy stripped it from the request)
    return reader, f"{context(request).links.base}{request.url.path}?{request.url.query}"


async def confirm_resubscribe(request: Request) -> Response:
    reader, action = _undo_link(request)
    row = await call(readers.reader, context(request).store, reader)
    verdict = readers.undo_verdict(row, request.query_params["u"])
    return _page(request, row, reader, "resubscribe", action if verdict == "resubscribe" else "")


async def resubscribe(request: Request) -> Response:
    reader, _ = _undo_link(request)
    web = context(request)
    row, verdict = await call(
        readers.undo_unsubscribe, web.store, reader, request.query_params["u"], now=web.now()
    )
    return _page(request, row, reader, "resubscribed" if verdict == "resubscribe" else "undo")
