"""How each subscriber's topics fare over recent editions, and what to change (pure).

`subscribers health` reports per subscriber: the editions where nothing matched, the editions
where the topics matched more than half the listing, keywords that no stored paper matches,
and the closest papers that were not sent, each with the bar it missed. Nothing here reads a
file or the store: the CLI passes the index and the listings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from newsletter.learning import Votes
from newsletter.models import DailyListing, SelectedPaper, Subscriber
from newsletter.selection import (
    CLOSEST,
    PaperIndex,
    Tuning,
    calibrated_threshold,
    select_for,
    topic_reference,
)

FLOOD_SHARE = 0.5  # an edition matching more than this share of its listing is flooded
GENERIC_SHARE = 0.2  # a keyword in more than this share of the stored papers is called generic


@dataclass(frozen=True, slots=True)
class NearMiss:
    edition: str
    id: str
    title: str
    topic: str
    score: float
    needed: float  # the topic's send threshold (calibrated)
    matched_terms: tuple[str, ...]


NOTHING_STORED = (
    "no paper is stored yet: run `newsletter fetch` or `newsletter ingest` first (topics are "
    "judged against the stored editions)"
)


@dataclass(frozen=True, slots=True)
class Health:
    email: str
    editions: int
    empty: tuple[str, ...]  # ISO dates of the editions where nothing matched
    flooded: tuple[str, ...]  # ... where more than half the listing matched
    dead_keywords: tuple[str, ...]
    near_misses: tuple[NearMiss, ...]
    advice: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def subscriber_health(
    index: PaperIndex,
    listings: Sequence[DailyListing],
    subscribers: Sequence[Subscriber],
    *,
    threshold: float,
    tuning: Tuning,
    votes: Mapping[str, Votes] | None = None,
) -> list[Health]:
    """One Health per subscriber over `listings` (history and max_papers ignored; each
    reader's votes applied, as `select` and `send` apply them)."""
    if not index.papers:  # nothing to judge a keyword by: say so once, not per keyword
        return [Health(s.email, 0, (), (), (), (), (NOTHING_STORED,)) for s in subscribers]
    uncapped = [dataclasses.replace(s, max_papers=10_000, on_empty="skip") for s in subscribers]
    per_edition = [
        (
            listing,
            select_for(index, listing, uncapped, threshold=threshold, tuning=tuning, votes=votes),
        )
        for listing in listings
    ]
    out = []
    for n, sub in enumerate(subscribers):
        empty, flooded, misses = [], [], []
        for listing, selections in per_edition:
            sel = selections[n]
            if not sel.papers:
                empty.append(listing.date.isoformat())
                misses += [(listing.date.isoformat(), sp) for sp in sel.near_misses]
            elif len(sel.papers) > FLOOD_SHARE * len({e.paper.id for e in listing.entries}):
                flooded.append(listing.date.isoformat())
        bars = {
            t.name: calibrated_threshold(threshold, topic_reference(index, t, tuning), tuning)
            for t in sub.topics
        }
        near = tuple(_near_miss(d, sp, bars) for d, sp in _best(misses))
        dead = tuple(k for t in sub.topics for k in t.keywords if not index.lookup(k.strip()).tf)
        advice = _advice(index, sub, len(listings), empty, flooded, dead, near)
        out.append(
            Health(sub.email, len(listings), tuple(empty), tuple(flooded), dead, near, advice)
        )
    return out


def _best(misses: list[tuple[str, SelectedPaper]]) -> list[tuple[str, SelectedPaper]]:
    """The CLOSEST best near misses, each paper once."""
    seen: set[str] = set()
    out = []
    for date, sp in sorted(misses, key=lambda m: (-m[1].score, m[1].paper.id)):
        if sp.paper.id not in seen:
            seen.add(sp.paper.id)
            out.append((date, sp))
    return out[:CLOSEST]


def _near_miss(date: str, sp: SelectedPaper, bars: dict[str, float]) -> NearMiss:
    topic = sp.matches[0].topic if sp.matches else ""
    return NearMiss(
        date,
        sp.paper.id,
        sp.paper.title,
        topic,
        round(sp.score, 4),
        round(bars.get(topic, 0.0), 4),
        sp.matched_terms,
    )


def _advice(
    index: PaperIndex,
    sub: Subscriber,
    editions: int,
    empty: list[str],
    flooded: list[str],
    dead: tuple[str, ...],
    near: tuple[NearMiss, ...],
) -> tuple[str, ...]:
    advice = [
        f"keyword {k!r} never matched any stored paper: check its spelling, or write it the "
        "way papers do (a phrase from a title you would want)"
        for k in dead
    ]
    n = len(index.papers) or 1
    generic = [
        f"{k!r} ({len(index.lookup(k.strip()).tf) / n:.0%} of stored papers)"
        for t in sub.topics
        for k in t.keywords
        if len(index.lookup(k.strip()).tf) > GENERIC_SHARE * n
    ]
    if empty:
        line = f"nothing matched in {len(empty)} of {editions} editions"
        if near:
            best = near[0]
            terms = ", ".join(best.matched_terms) or "description words only"
            line += (
                f"; the closest paper, {best.title!r}, scored {best.score:.2f} against the bar "
                f"{best.needed:.2f} of topic {best.topic!r} (matched: {terms}): add keywords "
                "that such papers use, or a description of the topic in your own words"
            )
        else:
            line += ": no stored paper matches the topics at all; add keywords papers use"
        if generic:
            line += "; generic keywords weigh little on their own: " + ", ".join(generic)
        if sub.on_empty != "closest":
            line += "; or set on_empty: closest to get the 3 closest papers, labelled"
        advice.append(line)
    if flooded:
        line = (
            f"more than half the listing matched in {len(flooded)} of {editions} editions: "
            "use more specific keywords or add exclude terms"
        )
        if generic:
            line += "; generic keywords: " + ", ".join(generic)
        advice.append(line)
    return tuple(advice)
