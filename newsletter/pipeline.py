"""Glue between the stages: which papers each subscriber gets for an edition.

Kept apart from the CLI so the daemon, `send`, `select` and `preview` all pick the same papers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from newsletter.errors import NewsletterError
from newsletter.models import DailyListing, Selection, Subscriber
from newsletter.selection import PaperIndex, select_for
from newsletter.settings import Settings
from newsletter.store import Store


class NoListing(NewsletterError):
    """No listing is stored for the requested date."""


def build_index(store: Store) -> PaperIndex:
    """The matcher's index over every stored paper (BM25 statistics need the whole collection)."""
    return PaperIndex.build(store.all_papers())


def edition_listing(store: Store, edition: dt.date | None) -> DailyListing:
    """The listing of `edition`, or the newest one when None."""
    date = edition or store.newest_date()
    listing = store.listing(date) if date else None
    if listing is None:
        known = ", ".join(d.isoformat() for d in store.listing_dates()) or "none; run ingest first"
        raise NoListing(f"no listing stored for {date}; stored dates: {known}")
    return listing


def selections_for(
    store: Store,
    settings: Settings,
    subscribers: Sequence[Subscriber],
    edition: dt.date,
    *,
    index: PaperIndex | None = None,
) -> list[Selection]:
    """Each subscriber's papers for `edition`, minus what earlier editions already gave them.

    History is taken from editions *before* this one, so rendering the same edition again
    (a preview after sending, a resend) yields the same content.
    """
    listing = edition_listing(store, edition)
    history = store.history_before(listing.date, [s.email for s in subscribers])
    return select_for(
        index or build_index(store),
        listing,
        subscribers,
        threshold=settings.relevance_threshold,
        history=history,
    )
