"""Typed domain models passed between the pipeline stages (frozen: stages never mutate them)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Paper:
    """One paper, however often it appears: `id` is derived from the normalised title.

    What only the Daily Papers API knows (arXiv id, authors, upvotes) is kept when known; a
    paper seen only in text dumps has none of it."""

    id: str
    title: str
    abstract: str
    links: tuple[str, ...] = ()
    arxiv_id: str | None = None
    authors: tuple[str, ...] = ()  # full names, as the source gave them
    upvotes: int | None = None


@dataclass(frozen=True, slots=True)
class ListingEntry:
    """A paper's appearance in one day's listing. `rank` is 1-based (1 = most trending)."""

    rank: int
    paper: Paper
    line: int = 0  # line of the title in the source file, for messages


@dataclass(frozen=True, slots=True)
class DailyListing:
    """One day's trending papers, parsed from one dump (a text dump or a fetched JSON one)."""

    date: dt.date
    source: str
    entries: tuple[ListingEntry, ...]
    content_hash: str = ""
    header: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def papers(self) -> tuple[Paper, ...]:
        return tuple(e.paper for e in self.entries)


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    keywords: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Subscriber:
    email: str
    name: str = ""
    timezone: str = "UTC"
    send_at: dt.time = dt.time(7, 0)
    max_papers: int = 10
    topics: tuple[Topic, ...] = ()
    exclude: tuple[str, ...] = ()
    line: int = 0  # line in the subscriber file, for messages
    on_empty: str = "skip"  # skip | closest: on a day nothing matches, send the closest 3


@dataclass(frozen=True, slots=True)
class TopicMatch:
    """Why a paper matched one topic: the user's terms that hit, and where.

    `highlights` are the exact surface strings found in the title/abstract (for the renderer
    to emphasise), so nothing downstream has to re-implement matching.
    """

    topic: str
    terms: tuple[str, ...]
    in_title: tuple[str, ...] = ()
    in_abstract: tuple[str, ...] = ()
    highlights: tuple[str, ...] = ()
    score: float = 0.0


@dataclass(frozen=True, slots=True)
class SelectedPaper:
    paper: Paper
    score: float
    rank: int = 0  # trending rank in the edition's listing; 0 when not from a listing
    sent: bool = True  # the send decision (calibrated threshold, the reader's votes)
    matches: tuple[TopicMatch, ...] = ()
    mixed: float = 0.0  # the order in the digest: score with the trending bonus (0: unranked)
    near_miss: bool = False  # sent only because nothing matched and on_empty is "closest"
    liked: str = ""  # title of the up-voted paper whose likeness lifted this one

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(m.topic for m in self.matches)

    @property
    def matched_terms(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for m in self.matches:
            for t in m.terms:
                seen.setdefault(t, None)
        return tuple(seen)


@dataclass(frozen=True, slots=True)
class Selection:
    """One subscriber's digest for one edition (the listing's date)."""

    subscriber: Subscriber
    edition: dt.date
    papers: tuple[SelectedPaper, ...] = field(default_factory=tuple)
    # When nothing was sent: the listing's best papers that did not make it, best first.
    near_misses: tuple[SelectedPaper, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    """A finished message: `raw` is the complete RFC 5322 message with CRLF line endings."""

    to: str
    subject: str
    message_id: str
    html: str
    text: str
    raw: bytes
    paper_ids: tuple[str, ...] = ()


@dataclass(slots=True)
class LedgerOutcome:
    """What became of one (edition, subscriber) row in a run, as the ledger records it."""

    email: str  # address_key form
    status: str  # sent | failed | unknown | failed_permanent | skipped
    attempts: int = 0
    reply: str | None = None
    reason: str | None = None
    message_id: str | None = None
    paper_ids: tuple[str, ...] = ()
    next_attempt_at: dt.datetime | None = None
