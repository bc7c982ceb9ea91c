"""Glue between the stages: which papers each subscriber gets for an edition.

Kept apart from the CLI so the daemon, `send`, `select` and `preview` all pick the same papers.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from newsletter import ingest
from newsletter.errors import NewsletterError
from newsletter.models import DailyListing, Selection, Subscriber
from newsletter.selection import PaperIndex, select_for
from newsletter.settings import Settings
from newsletter.store import Store

log = logging.getLogger(__name__)


class NoListing(NewsletterError):
    """No listing is stored for the requested date."""


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """One dump's ingest result, as `ingest --json` reports it."""

    path: str
    date: str | None
    papers: int
    new_papers: int
    status: str  # ingested | unchanged | replaced | rejected
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ingest_folder(
    store: Store,
    settings: Settings,
    location: Path,
    *,
    year: int | None = None,
    now: dt.datetime,
) -> list[FileOutcome]:
    """Ingest every dump under `location`; one bad file never stops the others."""
    results = ingest.read_dumps(
        ingest.dump_files(location),
        reference=settings.today(),
        year=year if year is not None else settings.year,
    )
    outcomes: list[FileOutcome] = []
    seen: dict[dt.date, Path] = {}
    for res in results:
        path = str(res.path)
        if res.listing is None:
            log.error("%s", res.error)
            outcomes.append(FileOutcome(path, None, 0, 0, "rejected", str(res.error)))
            continue
        listing = res.listing
        if listing.date in seen:
            error = (
                f"{path}: same date {listing.date:%b %d %Y} as {seen[listing.date]}; keep one "
                "dump per day (remove or rename the older file)"
            )
            log.error("%s", error)
            outcomes.append(FileOutcome(path, listing.date.isoformat(), 0, 0, "rejected", error))
            continue
        seen[listing.date] = res.path
        for warning in listing.warnings:
            log.warning("%s", warning)
        saved = store.save_listing(listing, now=now)
        if saved.status == "replaced":
            log.warning(
                "%s: the listing for %s changed; replaced the stored one", path, listing.date
            )
        outcomes.append(
            FileOutcome(
                path, listing.date.isoformat(), saved.papers, saved.new_papers, saved.status, None
            )
        )
    return outcomes


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
