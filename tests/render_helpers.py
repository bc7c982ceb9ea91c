"""Realistic Selections for the rendering tests, built straight from the bundled seed dumps.

The real matcher lives in newsletter.selection; this is a deliberately tiny stand-in (keyword
search with exact surface-string highlights) so the renderer is tested on its own.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

from newsletter.ingest import read_dump
from newsletter.models import (
    DailyListing,
    ListingEntry,
    Paper,
    SelectedPaper,
    Selection,
    Subscriber,
    Topic,
    TopicMatch,
)
from newsletter.settings import BUNDLED, SUBSCRIBERS_FILE
from newsletter.subscribers import load_subscribers

ROOT = Path(__file__).resolve().parent.parent
SEEDS = sorted((BUNDLED / "seeds").glob("*.txt"))
EXAMPLE_SUBSCRIBERS = BUNDLED / SUBSCRIBERS_FILE
REFERENCE = dt.date(2026, 11, 21)
NOW = dt.datetime(2026, 3, 17, 7, 0, tzinfo=dt.UTC)

OFFLINE = Topic("Offline RL", ("offline RL", "offline reinforcement learning", "batch RL"))
RLHF = Topic("RLHF", ("RLHF", "human feedback", "preference optimization", "DPO", "reward model"))
EXPLORATION = Topic("Exploration", ("exploration", "intrinsic motivation", "curiosity", "novelty"))
BANDITS = Topic("Bandits", ("bandit", "bandits", "regret"))
ROBOTS = Topic("Robot learning", ("robot", "robotic", "manipulation", "locomotion"))


@cache
def listing(path: Path) -> DailyListing:
    return read_dump(path, reference=REFERENCE)


def subscribers() -> list[Subscriber]:
    return load_subscribers(EXAMPLE_SUBSCRIBERS)


def match(paper: Paper, topic: Topic) -> TopicMatch | None:
    terms, in_title, in_abstract, highlights = [], [], [], []
    for kw in topic.keywords:
        pattern = re.compile(r"(?<!\w)" + re.escape(kw) + r"(?!\w)", re.I)
        hits_t = [m.group(0) for m in pattern.finditer(paper.title)]
        hits_a = [m.group(0) for m in pattern.finditer(paper.abstract)]
        if hits_t or hits_a:
            terms.append(kw)
            in_title += [kw] if hits_t else []
            in_abstract += [kw] if hits_a else []
            highlights += [h for h in dict.fromkeys(hits_t + hits_a) if h not in highlights]
    if not terms:
        return None
    score = 2.0 * len(in_title) + len(in_abstract)
    return TopicMatch(
        topic.name,
        tuple(terms),
        tuple(in_title),
        tuple(in_abstract),
        tuple(highlights),
        score,
    )


def selected(entry: ListingEntry, topics: tuple[Topic, ...]) -> SelectedPaper:
    matches = tuple(m for t in topics if (m := match(entry.paper, t)))
    return SelectedPaper(
        entry.paper, sum(m.score for m in matches), rank=entry.rank, matches=matches
    )


def select(day: DailyListing, sub: Subscriber, limit: int | None = None) -> Selection:
    """Matching papers by score (ties: trending rank), at most `limit` or max_papers."""
    picks = [sp for e in day.entries if (sp := selected(e, sub.topics)).matches]
    picks.sort(key=lambda sp: (-sp.score, sp.rank))
    return Selection(sub, day.date, tuple(picks[: limit or sub.max_papers]))


def first_n(day: DailyListing, sub: Subscriber, n: int) -> Selection:
    """The day's top-n trending papers, matched or not (a long digest for size checks)."""
    return Selection(sub, day.date, tuple(selected(e, sub.topics) for e in day.entries[:n]))


def reader(*topics: Topic, max_papers: int = 10, name: str = "Ada Lovelace") -> Subscriber:
    return Subscriber("ada@example.org", name=name, max_papers=max_papers, topics=topics)


def dkim_key(tmp_path: Path) -> tuple[Path, Callable[..., bytes]]:
    """A fresh RSA-2048 key as a PEM file, and a DNS lookup that publishes it as
    selector `s1` of example.org (for dkimpy's `verify(dnsfunc=...)`)."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "dkim.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s1._domainkey.example.org."
        return record

    return pem, dns
