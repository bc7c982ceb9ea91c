"""Glue between the stages: which papers each subscriber gets for an edition.

Kept apart from the CLI so the daemon, `send`, `select` and `preview` all pick the same papers.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from newsletter import ingest
from newsletter.addresses import address_key
from newsletter.errors import NoListing, StoreError
from newsletter.health import Health, subscriber_health
from newsletter.learning import Votes
from newsletter.models import DailyListing, Selection, Subscriber
from newsletter.render import Renderer, write_preview, write_preview_index
from newsletter.selection import PaperIndex, Tuning, select_for
from newsletter.settings import Settings
from newsletter.store import Store

log = logging.getLogger(__name__)


SKIP_NO_MATCH = "no paper above the relevance threshold"
SKIP_ALL_SEEN = "every matching paper already received"


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """One dump's ingest result, as `ingest --json` reports it."""

    path: str
    date: str | None
    papers: int
    new_papers: int
    status: str  # ingested | unchanged | replaced | rejected | skipped
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
    """Ingest every dump under `location`; one bad file never stops the others, and every
    entry that is not a dump is reported as skipped, with the reason."""
    dumps, skipped = ingest.scan_dumps(location)
    if not dumps:
        log.warning(
            "%s: no dump to ingest (no *.txt or *.json file); run `newsletter fetch`, or put "
            "the day's page text there as <name>.txt",
            location,
        )
    pinned = year if year is not None else settings.year
    results = ingest.read_dumps(
        dumps, reference=settings.today(now), year=pinned, max_papers=settings.max_papers_per_dump
    )
    # A text dump carries no year, so reading it again a year later would date it a year later
    # (a new edition of old papers): once stored, a dump keeps the date it was stored under.
    stored_dates = store.dates_by_content() if pinned is None else {}
    outcomes: list[FileOutcome] = []
    for entry in skipped:
        log.warning("%s: skipped: %s", entry.path, entry.reason)
        outcomes.append(FileOutcome(str(entry.path), None, 0, 0, "skipped", entry.reason))
    seen: dict[dt.date, Path] = {}
    dated: dict[str, dt.date] = {}  # text dumps' dates, kept even where a fetched day wins
    # A fetched day (JSON) carries ids and authors: it wins over a text dump of the same day.
    for res in sorted(results, key=lambda r: r.path.suffix != ".json"):
        path = str(res.path)
        if res.listing is None:
            log.error("%s", res.error)
            outcomes.append(FileOutcome(path, None, 0, 0, "rejected", str(res.error)))
            continue
        listing = res.listing
        stored = stored_dates.get(listing.content_hash) if res.path.suffix == ".txt" else None
        if stored is not None and stored != listing.date:
            listing = replace(listing, date=stored)
        if not listing.entries:
            reason = "no papers that day (a weekend or a holiday): no edition"
            outcomes.append(FileOutcome(path, listing.date.isoformat(), 0, 0, "skipped", reason))
            continue
        if listing.date in seen and seen[listing.date].suffix == ".json" != res.path.suffix:
            dated[listing.content_hash] = listing.date
            reason = f"{seen[listing.date].name} (fetched) is the listing of that day"
            log.info("%s: skipped: %s", path, reason)
            outcomes.append(FileOutcome(path, listing.date.isoformat(), 0, 0, "skipped", reason))
            continue
        if listing.date in seen:
            error = (
                f"{path}: same date {listing.date:%b %d %Y} as {seen[listing.date]}; keep one "
                "dump per day (remove or rename the older file)"
            )
            log.error("%s", error)
            outcomes.append(FileOutcome(path, listing.date.isoformat(), 0, 0, "rejected", error))
            continue
        for warning in listing.warnings:
            log.warning("%s", warning)
        try:
            saved = store.save_listing(listing, now=now)
        except StoreError:
            raise  # the database itself (unreachable, timed out): no other file would store
        except Exception as exc:  # this file's data: the others still ingest
            log.exception("%s: unexpected error while storing it", path)
            error = str(ingest.unexpected(path, exc))
            outcomes.append(FileOutcome(path, listing.date.isoformat(), 0, 0, "rejected", error))
            continue
        seen[listing.date] = res.path
        if res.path.suffix == ".txt":
            dated[listing.content_hash] = listing.date
        if saved.status == "replaced":
            log.warning(
                "%s: the listing for %s changed; replaced the stored one", path, listing.date
            )
        outcomes.append(
            FileOutcome(
                path, listing.date.isoformat(), saved.papers, saved.new_papers, saved.status, None
            )
        )
    store.remember_dump_dates(dated)
    return sorted(outcomes, key=lambda o: o.path)


def copy_listings(source: Store, target: Store, *, now: dt.datetime) -> int:
    """Every listing stored in `source` into `target` (a scratch store for a dry replay)."""
    copied = 0
    for date in source.listing_dates():
        listing = source.listing(date)
        if listing is not None:
            target.save_listing(listing, now=now)
            copied += 1
    return copied


_INDEXES: dict[int, PaperIndex] = {}


def paper_index(store: Store) -> PaperIndex:
    """The matcher's index over every stored paper (BM25 statistics need the whole collection),
    built once per process and set of papers: building takes ~0.4 s, and the daemon sends an
    edition per group of subscribers. The one place the index is built."""
    all_papers = store.all_papers()
    key = hash(tuple(all_papers))
    if key not in _INDEXES:
        _INDEXES.clear()
        _INDEXES[key] = PaperIndex.build(all_papers)
    return _INDEXES[key]


def edition_listing(
    store: Store, edition: dt.date | None, known: DailyListing | None = None
) -> DailyListing:
    """The listing of `edition`, or the newest one when None; `known` when it is that
    edition's (a send selects chunk by chunk from one listing, read once)."""
    if known is not None and known.date == edition:
        return known
    date = edition or store.newest_date()
    listing = store.listing(date) if date else None
    if listing is None:
        stored = ", ".join(d.isoformat() for d in store.listing_dates())
        if not stored:
            raise NoListing(
                "no listing stored yet: put the day's dumps in the seeds folder and run "
                "`newsletter ingest`, or run `newsletter fetch`"
            )
        raise NoListing(f"no listing stored for {date}; stored dates: {stored}")
    return listing


def matcher_tuning(settings: Settings) -> Tuning:
    """The matcher's tuned constants, from the settings."""
    return Tuning(
        relative=settings.relevance_relative,
        floor=settings.relevance_floor,
        description_weight=settings.description_weight,
        vote_weight=settings.vote_weight,
        vote_send_weight=settings.vote_send_weight,
        vote_contrast=settings.vote_contrast,
        vote_prior=settings.vote_prior,
        vote_half=settings.vote_half,
        vote_send_contrast=settings.vote_send_contrast,
        vote_sink_weight=settings.vote_sink_weight,
    )


def selections_for(
    store: Store,
    settings: Settings,
    subscribers: Sequence[Subscriber],
    edition: dt.date,
    *,
    index: PaperIndex | None = None,
    votes: Mapping[str, Votes] | None = None,
    listing: DailyListing | None = None,
) -> list[Selection]:
    """Each subscriber's papers for `edition`, minus what any other edition (older or newer)
    already gave them, with each reader's votes (address key -> paper id -> +1/-1; read from
    the store unless given) applied to that reader alone. `listing`: the edition's, when the
    caller has it already (a send selects chunk by chunk from one listing).

    The papers this edition itself delivered are not history for it, so rendering the same
    edition again (a preview after sending, a resend) yields the same content.
    """
    listing = edition_listing(store, edition, listing)
    history = store.history_elsewhere(listing.date, [s.email for s in subscribers])
    if votes is None:  # the readers' own votes (email links, archive pages, feedback add)
        votes = store.vote_map([s.email for s in subscribers])
    return select_for(
        index or paper_index(store),
        listing,
        subscribers,
        threshold=settings.relevance_threshold,
        history=history,
        votes=votes,
        tuning=matcher_tuning(settings),
    )


def health_report(
    store: Store, settings: Settings, subscribers: Sequence[Subscriber], *, days: int
) -> list[Health]:
    """How each subscriber's topics fared over the last `days` stored editions."""
    dates = store.listing_dates()[-days:] if days > 0 else []
    listings = [lst for d in dates if (lst := store.listing(d)) is not None]
    return subscriber_health(
        paper_index(store),
        listings,
        subscribers,
        threshold=settings.relevance_threshold,
        tuning=matcher_tuning(settings),
        votes=store.vote_map([s.email for s in subscribers]),
    )


def write_previews(
    settings: Settings,
    store: Store,
    subscribers: Sequence[Subscriber],
    edition: dt.date,
    *,
    now: dt.datetime,
    out_dir: Path | None = None,
) -> Path:
    """Every subscriber's digest of `edition` as HTML/.eml files plus an index.html."""
    renderer = Renderer(settings)
    target = out_dir or settings.preview_dir
    entries = [
        write_preview(renderer.render(sel, now=now), target)
        for sel in selections_for(store, settings, subscribers, edition)
        if sel.papers
    ]
    return write_preview_index(entries, target)


def skip_reasons(
    store: Store,
    settings: Settings,
    selections: Sequence[Selection],
    edition: dt.date,
    *,
    index: PaperIndex | None = None,
    listing: DailyListing | None = None,
) -> dict[str, str]:
    """Why each selection with nothing to send is empty (keyed by address_key): nothing
    matched, or everything that matched was already received (found by selecting again
    without the history)."""
    empty = [s.subscriber for s in selections if not any(p.sent for p in s.papers)]
    if not empty:
        return {}
    listing = edition_listing(store, edition, listing)
    again = select_for(
        index or paper_index(store),
        listing,
        empty,
        threshold=settings.relevance_threshold,
        tuning=matcher_tuning(settings),
    )
    matched = {address_key(s.subscriber.email) for s in again if s.papers}
    return {
        address_key(s.email): SKIP_ALL_SEEN if address_key(s.email) in matched else SKIP_NO_MATCH
        for s in empty
    }
