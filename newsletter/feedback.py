"""Thumbs up / down: a reader's latest vote per paper (the matcher can weigh them).

Votes are accepted for any subscriber in the file and any stored paper; the latest vote wins
and `clear` removes it. The CLI (`feedback add`, `feedback list`) and the web app's vote links
both call these.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from newsletter.addresses import address_key
from newsletter.errors import NotFound
from newsletter.links import VOTES, VoteChoice
from newsletter.models import Paper, Subscriber
from newsletter.readers import reader
from newsletter.store import Store, VoteRow


def check_choice(choice: str) -> VoteChoice:
    if choice not in VOTES:
        raise ValueError(f"a vote is one of {', '.join(VOTES)}, not {choice!r}")
    return choice


def vote(
    store: Store,
    subscribers: Sequence[Subscriber],
    email: str,
    paper_id: str,
    choice: VoteChoice,
    *,
    now: dt.datetime,
) -> Paper:
    """Record (or clear) `email`'s vote on a paper; NotFound for an address that is not in
    the subscriber file or a paper that is not stored. Returns the paper."""
    key = address_key(email)
    if not any(address_key(s.email) == key for s in subscribers):
        raise NotFound(
            f"{email} is not in the subscriber file; votes are taken from subscribers only"
        )
    paper = store.papers_by_id([paper_id]).get(paper_id)
    if paper is None:
        raise NotFound(
            f"no stored paper has the id {paper_id!r}; `newsletter papers --json` shows the ids"
        )
    store.set_vote(key, paper_id, None if choice == "clear" else choice, now=now)
    return paper


def vote_by_reader(
    store: Store,
    subscribers: Sequence[Subscriber],
    reader_id: str,
    paper_id: str,
    choice: VoteChoice,
    *,
    now: dt.datetime,
) -> Paper:
    """`vote` for the reader behind a link's id."""
    return vote(store, subscribers, reader(store, reader_id).email, paper_id, choice, now=now)


def paper_vote(store: Store, reader_id: str, paper_id: str) -> tuple[Paper, str | None]:
    """The paper a vote link is about and the reader's current vote on it (None: no vote)."""
    who = reader(store, reader_id)
    paper = store.papers_by_id([paper_id]).get(paper_id)
    if paper is None:
        raise NotFound("this paper is not in our store (any more)")
    return paper, vote_map(store, who.email, [paper_id]).get(paper_id)


def votes(store: Store, email: str) -> list[VoteRow]:
    return store.votes(email)


def vote_map(store: Store, email: str, paper_ids: Iterable[str]) -> dict[str, str]:
    """paper id -> "up" | "down" for the papers the reader voted on."""
    return {v.paper_id: v.vote for v in store.votes(email, list(paper_ids))}


def votes_json(rows: Sequence[VoteRow]) -> dict[str, Any]:
    """The `feedback list --json` document."""
    return {
        "votes": [
            {"paper_id": v.paper_id, "title": v.title, "vote": v.vote, "at": v.at.isoformat()}
            for v in rows
        ]
    }
