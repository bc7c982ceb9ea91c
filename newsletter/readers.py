"""Subscription state: who unsubscribed, when and how; the reader ids the links carry.

The subscriber file says who exists and what they read; the store says whether they still want
it. An unsubscribed address gets no digest, whatever the file says, until the reader
resubscribes (the Undo button on the page shown right after their own unsubscribe, for an
hour) or the operator runs `newsletter resubscribe EMAIL`. No web request undoes an
unsubscribe the operator made (`how` cli).
The CLI (`unsubscribe`, `resubscribe`, `subscribers list`) and the web app both call these.
"""

from __future__ import annotations

import datetime as dt
import os
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from newsletter.addresses import address_key
from newsletter.errors import NotFound
from newsletter.models import Subscriber
from newsletter.settings import Settings
from newsletter.store import ReaderRow, Store, SubscriptionStatus

How = Literal["one-click", "page", "cli"]
WEB: frozenset[str | None] = frozenset({"one-click", "page"})  # the reader's own, by link
# what an Undo link may do: resubscribe; nothing (already subscribed); refuse (the operator
# unsubscribed them, or the link is for an earlier unsubscribe than the latest)
Undo = Literal["resubscribe", "subscribed", "operator", "stale"]
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    """One line of `subscribers list`."""

    email: str
    status: SubscriptionStatus
    name: str
    in_file: bool  # False: only the store knows the address (removed from the file since)
    changed_at: dt.datetime | None
    how: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "status": self.status,
            "name": self.name,
            "in_file": self.in_file,
            "changed_at": self.changed_at.isoformat() if self.changed_at else None,
            "how": self.how,
        }


def unsubscribe(store: Store, email: str, *, how: How, now: dt.datetime) -> ReaderRow:
    """Stop every digest to `email` from now on (also the rest of an edition being sent)."""
    return store.set_subscription(email, "unsubscribed", how=how, now=now)


def resubscribe(store: Store, email: str, *, how: How, now: dt.datetime) -> ReaderRow:
    return store.set_subscription(email, "active", how=how, now=now)


def reader(store: Store, reader_id: str) -> ReaderRow:
    """The reader behind a link's id; NotFound when there is none (a link from another store)."""
    row = store.reader(reader_id)
    if row is None:
        raise NotFound("this link belongs to no reader we know")
    return row


def unsubscribe_reader(
    store: Store, reader_id: str, *, how: How, now: dt.datetime
) -> tuple[ReaderRow, bool]:
    """Unsubscribe the reader behind a link; also whether this call made the change (only then
    may the page offer Undo: a repeated POST of an old link must not hand out a way back)."""
    before = reader(store, reader_id)
    row = unsubscribe(store, before.email, how=how, now=now)
    return row, before.status != "unsubscribed"


def stamp(row: ReaderRow) -> str:
    """Which unsubscribe an Undo link is for: its stored time in microseconds since the epoch
    (a later unsubscribe has a later one, so an old Undo link does not undo it)."""
    if row.status_at is None:
        return "0"
    return str((row.status_at - _EPOCH) // dt.timedelta(microseconds=1))


def undo_verdict(row: ReaderRow, unsubscribed: str) -> Undo:
    if row.status != "unsubscribed":
        return "subscribed"
    if row.status_how not in WEB:
        return "operator"
    return "resubscribe" if stamp(row) == unsubscribed else "stale"


def undo_unsubscribe(
    store: Store, reader_id: str, unsubscribed: str, *, now: dt.datetime
) -> tuple[ReaderRow, Undo]:
    """The Undo button: resubscribe the reader when `unsubscribed` names their latest
    unsubscribe and they made it themselves; else change nothing and say why."""
    row = reader(store, reader_id)
    verdict = undo_verdict(row, unsubscribed)
    if verdict == "resubscribe":
        row = resubscribe(store, row.email, how="page", now=now)
    return row, verdict


def subscription_list(store: Store, subscribers: Sequence[Subscriber]) -> list[SubscriptionView]:
    """Every subscriber in the file with their state, then addresses only the store still
    knows as unsubscribed (removed from the file since; they stay unsubscribed if re-added)."""
    rows = store.readers()
    out = []
    for sub in subscribers:
        row = rows.pop(address_key(sub.email), None)
        out.append(
            SubscriptionView(
                email=sub.email,
                status=row.status if row else "active",
                name=sub.name,
                in_file=True,
                changed_at=row.status_at if row else None,
                how=row.status_how if row else None,
            )
        )
    for row in rows.values():
        if row.status == "unsubscribed":
            out.append(
                SubscriptionView(row.email, row.status, "", False, row.status_at, row.status_how)
            )
    return out


class ReaderIds:
    """The renderer's source of reader ids: the store's, cached, created where missing.

    Opens its own store from the settings on first use unless given one, so a renderer made
    anywhere (the CLI, a delivery worker process) can build the links; a forked process opens
    fresh connections rather than sharing its parent's.
    """

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self._settings = settings
        self._store = store
        self._own: Store | None = None
        self._pid = os.getpid()
        self._cache: dict[str, str] | None = None

    def _open(self) -> Store:
        if self._store is not None:
            return self._store
        if self._own is not None and self._pid != os.getpid():
            self._own.engine.dispose(close=False)  # the parent's connections stay the parent's
            self._pid = os.getpid()
        if self._own is None:
            s = self._settings
            self._own = Store.open(
                s.database_url,
                lock_timeout=s.db_lock_timeout,
                statement_timeout=s.db_statement_timeout,
            )
            weakref.finalize(self, self._own.close)
        return self._own

    def prime(self, emails: Iterable[str], now: dt.datetime) -> None:
        """Get the ids of a whole chunk in one transaction, creating the missing ones (a first
        send to a new list would otherwise insert them one by one). The cache then holds this
        chunk alone: a send's memory does not grow with the number of readers."""
        self._cache = self._open().reader_ids(emails, now=now)

    def __call__(self, email: str, now: dt.datetime) -> str:
        store = self._open()
        if self._cache is None:
            self._cache = store.all_reader_ids()
        key = address_key(email)
        found = self._cache.get(key)
        if found is None:
            found = store.reader_ids([key], now=now)[key]
            self._cache[key] = found
        return found
