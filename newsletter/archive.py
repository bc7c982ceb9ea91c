"""The editions in a browser: a reader's edition as it was sent, their feed, a day's listing.

"As sent" means the papers the ledger recorded for that (edition, reader), in digest order,
whatever the matcher would pick today. The web app's archive, feed and day pages call these.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from newsletter.errors import NotFound
from newsletter.feedback import vote_map
from newsletter.models import DailyListing, ListingEntry, Paper
from newsletter.readers import reader
from newsletter.store import ReaderRow, Received, Store

FEED_ENTRIES = 50


@dataclass(frozen=True, slots=True)
class ReaderEdition:
    reader: ReaderRow
    edition: dt.date
    papers: tuple[Paper, ...]  # as sent, in digest order
    ranks: dict[str, int]  # trending rank in that day's listing, where the paper has one
    rest: tuple[ListingEntry, ...]  # the rest of that day's listing, in trending order
    editions: tuple[dt.date, ...]  # every edition the reader got, newest first
    votes: dict[str, str]  # paper id -> "up" | "down"


@dataclass(frozen=True, slots=True)
class ReaderFeed:
    reader: ReaderRow
    entries: tuple[Received, ...]  # newest first
    newest_edition: dt.date | None


def reader_edition(store: Store, reader_id: str, edition: dt.date) -> ReaderEdition:
    """The reader's `edition` as sent, with the rest of that day and their other editions."""
    who = reader(store, reader_id)
    delivered = store.delivered_editions(who.email)
    row = next((r for r in delivered if r.edition == edition), None)
    if row is None:
        raise NotFound(f"no edition of {edition:%B %-d, %Y} was sent to you")
    found = store.papers_by_id(row.paper_ids)
    papers = tuple(found[pid] for pid in row.paper_ids if pid in found)
    listing = store.listing(edition)
    entries = listing.entries if listing else ()
    sent = {p.id for p in papers}
    rest = tuple(e for e in entries if e.paper.id not in sent)
    ids = [p.id for p in papers] + [e.paper.id for e in rest]
    return ReaderEdition(
        reader=who,
        edition=edition,
        papers=papers,
        ranks={e.paper.id: e.rank for e in entries},
        rest=rest,
        editions=tuple(r.edition for r in delivered),
        votes=vote_map(store, who.email, ids),
    )


def reader_feed(store: Store, reader_id: str, *, limit: int = FEED_ENTRIES) -> ReaderFeed:
    """The reader's most recent papers, one entry per paper."""
    who = reader(store, reader_id)
    entries = tuple(store.received(who.email, limit=limit))
    newest = max((e.edition for e in entries), default=None)
    return ReaderFeed(who, entries, newest)


def day_listing(store: Store, date: dt.date) -> DailyListing:
    listing = store.listing(date)
    if listing is None:
        raise NotFound(f"no listing is stored for {date:%B %-d, %Y}")
    return listing


def listing_dates(store: Store) -> list[dt.date]:
    """Every stored day, newest first."""
    return sorted(store.listing_dates(), reverse=True)
