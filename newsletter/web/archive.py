"""The editions in a browser: a reader's edition as sent, their Atom feed, the public days.

/archive/DATE (signed): the papers that reader was sent that day, with vote links, then the
rest of that day's listing (vote links too: up-vote what the matcher missed), links to their
other editions and a <link rel="alternate"> to their feed. /feed (signed): their recent papers,
one Atom entry per paper. /day/DATE and / are public: the whole listing, and the list of days.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from newsletter import archive
from newsletter.web.pages import call, context, parse_day, verified_reader

ATOM = "application/atom+xml"


def _origin(request: Request) -> str:
    """What makes the pages' links absolute (the feed needs them): the public base URL's
    scheme and host (its path is in the links already), else what the client used."""
    configured = context(request).settings.public_base_url
    if configured:
        parts = urlsplit(configured)
        return f"{parts.scheme}://{parts.netloc}"
    return str(request.base_url).rstrip("/")


async def reader_edition(request: Request) -> Response:
    edition = parse_day(request.path_params["date"])
    reader = verified_reader(request, "archive")
    web = context(request)
    found = await call(archive.reader_edition, web.store, reader, edition)
    links = web.links

    def view(paper_id: str, paper: object, rank: int) -> dict[str, object]:
        return {
            **web.paper_view(paper, rank),  # type: ignore[arg-type]
            "vote": found.votes.get(paper_id),
            "up": links.vote(reader, paper_id, "up"),
            "down": links.vote(reader, paper_id, "down"),
        }

    return web.page(
        "archive.html",
        edition=edition,
        papers=[view(p.id, p, found.ranks.get(p.id, 0)) for p in found.papers],
        rest=[view(e.paper.id, e.paper, e.rank) for e in found.rest],
        editions=[(d, links.archive(reader, d)) for d in found.editions],
        feed_url=links.feed(reader),
        day_url=links.day(edition),
        unsubscribe_url=links.unsubscribe(reader),
        unsubscribed=found.reader.status == "unsubscribed",
    )


async def reader_feed(request: Request) -> Response:
    reader = verified_reader(request, "feed")
    web = context(request)
    feed = await call(archive.reader_feed, web.store, reader)
    base = _origin(request)
    host = urlsplit(base).hostname or "localhost"
    updated = max((e.delivered_at for e in feed.entries), default=None) or web.now()
    newest = feed.newest_edition
    return web.page(
        "feed.xml",
        media_type=ATOM,
        feed_id=f"tag:{host},2026:reader:{reader}",
        host=host,
        self_url=base + web.links.feed(reader),
        alternate=base + (web.links.archive(reader, newest) if newest else web.links.home()),
        updated=updated,
        entries=[
            {**web.paper_view(e.paper), "edition": e.edition, "at": e.delivered_at}
            for e in feed.entries
        ],
    )


async def day(request: Request) -> Response:
    date = parse_day(request.path_params["date"])
    web = context(request)
    listing = await call(archive.day_listing, web.store, date)
    return web.page(
        "day.html",
        private=False,
        date=date,
        source=listing.source,
        papers=[web.paper_view(e.paper, e.rank) for e in listing.entries],
        newer_older=_neighbours(await call(archive.listing_dates, web.store), date),
    )


def _neighbours(dates: list[dt.date], date: dt.date) -> tuple[dt.date | None, dt.date | None]:
    """(the next newer stored day, the next older one); `dates` newest first."""
    newer = [d for d in dates if d > date]
    older = [d for d in dates if d < date]
    return (newer[-1] if newer else None, older[0] if older else None)


async def home(request: Request) -> Response:
    web = context(request)
    dates = await call(archive.listing_dates, web.store)
    return web.page("home.html", private=False, dates=[(d, web.links.day(d)) for d in dates])
