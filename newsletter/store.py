"""The store: SQLAlchemy 2 Core over SQLite (default, WAL) or PostgreSQL, unchanged SQL for both.

Tables: papers (one row per paper however often it appears), listings (one per date, with its
source file and content hash) and their ranked entries; the delivery ledger (one row per
edition and subscriber) and each subscriber's paper history. Recording a delivery as sent and
adding its papers to the history happen in one transaction.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from newsletter.errors import LockHeld, StoreError
from newsletter.models import DailyListing, ListingEntry, Paper

metadata = sa.MetaData()

papers = sa.Table(
    "papers",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("abstract", sa.Text, nullable=False),
    sa.Column("links", sa.Text, nullable=False, default="[]"),  # JSON list
    sa.Column("first_seen", sa.Date, nullable=False),
)

listings = sa.Table(
    "listings",
    metadata,
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
)

listing_entries = sa.Table(
    "listing_entries",
    metadata,
    sa.Column(
        "date", sa.Date, sa.ForeignKey("listings.date", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("rank", sa.Integer, primary_key=True),
    sa.Column("paper_id", sa.String(32), sa.ForeignKey("papers.id"), nullable=False),
    sa.Column("line", sa.Integer, nullable=False, default=0),
    sa.UniqueConstraint("date", "paper_id", name="uq_listing_paper"),
)

LedgerStatus = Literal["planned", "sent", "failed", "failed_permanent", "skipped"]

ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("edition", sa.Date, primary_key=True),
    sa.Column("email", sa.String(320), primary_key=True),  # lower-cased
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("message_id", sa.Text),
    sa.Column("paper_ids", sa.Text, nullable=False, default="[]"),  # JSON list, in digest order
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
    sa.Column("last_reply", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_ledger_status", "edition", "status"),
)

history = sa.Table(
    "history",
    metadata,
    sa.Column("email", sa.String(320), primary_key=True),  # lower-cased
    sa.Column("paper_id", sa.String(32), primary_key=True),
    sa.Column("edition", sa.Date, nullable=False),
    sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=False),
)

schedule_state = sa.Table(
    "schedule_state",
    metadata,
    sa.Column("group_key", sa.String(80), primary_key=True),  # "<time zone>|HH:MM"
    sa.Column("last_firing", sa.DateTime(timezone=True), nullable=False),
)

IngestStatus = Literal["ingested", "unchanged", "replaced"]


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    status: IngestStatus
    papers: int
    new_papers: int


@dataclass(frozen=True, slots=True)
class LedgerRow:
    edition: dt.date
    email: str
    status: str
    message_id: str | None
    paper_ids: tuple[str, ...]
    attempts: int
    next_attempt_at: dt.datetime | None
    last_reply: str | None
    reason: str | None
    updated_at: dt.datetime


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


def make_engine(url: str) -> Engine:
    """An engine for the URL; SQLite gets WAL, foreign keys and a busy timeout. Creates no
    folder: the entry point decides that (settings.prepare_database_folder)."""
    try:
        engine = sa.create_engine(url, future=True)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise StoreError(
            f"setting NEWSLETTER_DATABASE_URL: cannot use {url!r} ({exc}); use e.g. "
            "sqlite:///var/newsletter.db or postgresql+psycopg://user@host/db"
        ) from exc
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine


class Store:
    """Typed access to the database; every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> Store:
        store = cls(make_engine(url))
        try:
            metadata.create_all(store.engine)
        except sa.exc.OperationalError as exc:
            raise StoreError(
                f"cannot open the database {store.engine.url.render_as_string()!r}: "
                f"{exc.orig}; check NEWSLETTER_DATABASE_URL and that the server is running"
            ) from exc
        return store

    def close(self) -> None:
        self.engine.dispose()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # --- ingest -----------------------------------------------------------------------------
    def save_listing(self, listing: DailyListing, *, now: dt.datetime) -> IngestOutcome:
        """Store a listing; identical content changes nothing, new content for a date replaces it."""
        with self.engine.begin() as conn:
            old = conn.execute(
                sa.select(listings.c.content_hash).where(listings.c.date == listing.date)
            ).scalar_one_or_none()
            if old == listing.content_hash:
                return IngestOutcome("unchanged", len(listing.entries), 0)
            new_papers = self._upsert_papers(conn, listing)
            if old is not None:
                conn.execute(listing_entries.delete().where(listing_entries.c.date == listing.date))
                conn.execute(listings.delete().where(listings.c.date == listing.date))
            conn.execute(
                listings.insert().values(
                    date=listing.date,
                    source=Path(listing.source).name,
                    content_hash=listing.content_hash,
                    ingested_at=now,
                )
            )
            conn.execute(
                listing_entries.insert(),
                [
                    {"date": listing.date, "rank": e.rank, "paper_id": e.paper.id, "line": e.line}
                    for e in listing.entries
                ],
            )
        status: IngestStatus = "ingested" if old is None else "replaced"
        return IngestOutcome(status, len(listing.entries), new_papers)

    def _upsert_papers(self, conn: Connection, listing: DailyListing) -> int:
        ids = [e.paper.id for e in listing.entries]
        known = set(conn.execute(sa.select(papers.c.id).where(papers.c.id.in_(ids))).scalars())
        fresh = [
            {
                "id": e.paper.id,
                "title": e.paper.title,
                "abstract": e.paper.abstract,
                "links": json.dumps(list(e.paper.links)),
                "first_seen": listing.date,
            }
            for e in listing.entries
            if e.paper.id not in known
        ]
        if fresh:
            conn.execute(papers.insert(), fresh)
        return len(fresh)

    # --- reading ----------------------------------------------------------------------------
    def listing_dates(self) -> list[dt.date]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(sa.select(listings.c.date).order_by(listings.c.date)).scalars()
            )

    def newest_date(self) -> dt.date | None:
        dates = self.listing_dates()
        return dates[-1] if dates else None

    def listing(self, date: dt.date) -> DailyListing | None:
        with self.engine.connect() as conn:
            head = conn.execute(sa.select(listings).where(listings.c.date == date)).one_or_none()
            if head is None:
                return None
            rows = conn.execute(
                sa.select(listing_entries.c.rank, listing_entries.c.line, papers)
                .join(papers, papers.c.id == listing_entries.c.paper_id)
                .where(listing_entries.c.date == date)
                .order_by(listing_entries.c.rank)
            ).all()
        entries = tuple(ListingEntry(rank=r.rank, paper=_paper(r), line=r.line) for r in rows)
        return DailyListing(
            date=head.date, source=head.source, entries=entries, content_hash=head.content_hash
        )

    def all_papers(self) -> list[Paper]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(papers).order_by(papers.c.first_seen, papers.c.id))
            return [_paper(r) for r in rows]

    def paper_dates(self, paper_ids: Iterable[str]) -> dict[str, list[tuple[dt.date, int, str]]]:
        """Every appearance of each paper: (date, rank, source file), oldest first."""
        out: dict[str, list[tuple[dt.date, int, str]]] = defaultdict(list)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    listing_entries.c.paper_id,
                    listing_entries.c.date,
                    listing_entries.c.rank,
                    listings.c.source,
                )
                .join(listings, listings.c.date == listing_entries.c.date)
                .where(listing_entries.c.paper_id.in_(list(paper_ids)))
                .order_by(listing_entries.c.date)
            )
            for r in rows:
                out[r.paper_id].append((r.date, r.rank, r.source))
        return dict(out)

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {
                t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                for t in (papers, listings, listing_entries, ledger, history, schedule_state)
            }

    # --- history ----------------------------------------------------------------------------
    def history_before(
        self, edition: dt.date, emails: Sequence[str] | None = None
    ) -> dict[str, set[str]]:
        """Papers each subscriber received in editions before `edition` (re-renders stay equal)."""
        query = sa.select(history.c.email, history.c.paper_id).where(history.c.edition < edition)
        if emails is not None:
            query = query.where(history.c.email.in_([e.lower() for e in emails]))
        out: dict[str, set[str]] = defaultdict(set)
        with self.engine.connect() as conn:
            for email, pid in conn.execute(query):
                out[email].add(pid)
        return dict(out)

    def record_history(
        self, email: str, edition: dt.date, paper_ids: Sequence[str], *, now: dt.datetime
    ) -> None:
        """Record papers as delivered (tests and imports; sending uses mark_sent)."""
        with self.engine.begin() as conn:
            self._add_history(conn, email, edition, paper_ids, now)

    def _add_history(
        self,
        conn: Connection,
        email: str,
        edition: dt.date,
        paper_ids: Sequence[str],
        now: dt.datetime,
    ) -> None:
        email = email.lower()
        have = set(
            conn.execute(
                sa.select(history.c.paper_id).where(
                    history.c.email == email, history.c.paper_id.in_(list(paper_ids))
                )
            ).scalars()
        )
        rows = [
            {"email": email, "paper_id": pid, "edition": edition, "delivered_at": now}
            for pid in dict.fromkeys(paper_ids)
            if pid not in have
        ]
        if rows:
            conn.execute(history.insert(), rows)

    # --- ledger -----------------------------------------------------------------------------
    def ledger_rows(self, edition: dt.date, emails: Sequence[str] | None = None) -> list[LedgerRow]:
        query = sa.select(ledger).where(ledger.c.edition == edition).order_by(ledger.c.email)
        if emails is not None:
            query = query.where(ledger.c.email.in_([e.lower() for e in emails]))
        with self.engine.connect() as conn:
            return [_ledger_row(r) for r in conn.execute(query)]

    def ledger_row(self, edition: dt.date, email: str) -> LedgerRow | None:
        rows = self.ledger_rows(edition, [email])
        return rows[0] if rows else None

    def plan(
        self,
        edition: dt.date,
        email: str,
        *,
        message_id: str,
        paper_ids: Sequence[str],
        now: dt.datetime,
    ) -> LedgerRow:
        """Insert the planned row unless one exists; returns the row as stored (never downgrades)."""
        email = email.lower()
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(ledger).where(ledger.c.edition == edition, ledger.c.email == email)
            ).one_or_none()
            if row is None:
                values = {
                    "edition": edition,
                    "email": email,
                    "status": "planned",
                    "message_id": message_id,
                    "paper_ids": json.dumps(list(paper_ids)),
                    "attempts": 0,
                    "updated_at": now,
                }
                conn.execute(ledger.insert().values(**values))
                row = conn.execute(
                    sa.select(ledger).where(ledger.c.edition == edition, ledger.c.email == email)
                ).one()
        return _ledger_row(row)

    def mark_sent(
        self,
        edition: dt.date,
        email: str,
        *,
        message_id: str,
        paper_ids: Sequence[str],
        reply: str,
        now: dt.datetime,
    ) -> None:
        """Sent + history in one transaction: a crash leaves both or neither."""
        with self.engine.begin() as conn:
            self._set(
                conn,
                edition,
                email,
                now,
                status="sent",
                message_id=message_id,
                paper_ids=json.dumps(list(paper_ids)),
                last_reply=reply,
                next_attempt_at=None,
                reason=None,
                attempts=ledger.c.attempts + 1,
            )
            self._add_history(conn, email, edition, paper_ids, now)

    def mark_failed(
        self,
        edition: dt.date,
        email: str,
        *,
        permanent: bool,
        reply: str,
        attempts: int,
        next_attempt_at: dt.datetime | None,
        now: dt.datetime,
    ) -> None:
        with self.engine.begin() as conn:
            self._set(
                conn,
                edition,
                email,
                now,
                status="failed_permanent" if permanent else "failed",
                last_reply=reply,
                reason=reply,
                next_attempt_at=None if permanent else next_attempt_at,
                attempts=ledger.c.attempts + attempts,
            )

    def mark_skipped(self, edition: dt.date, email: str, *, reason: str, now: dt.datetime) -> None:
        """Nothing matched: recorded so status can say why, and re-runs do not re-select."""
        email = email.lower()
        with self.engine.begin() as conn:
            exists = conn.execute(
                sa.select(ledger.c.status).where(
                    ledger.c.edition == edition, ledger.c.email == email
                )
            ).scalar_one_or_none()
            if exists is None:
                conn.execute(
                    ledger.insert().values(
                        edition=edition,
                        email=email,
                        status="skipped",
                        paper_ids="[]",
                        attempts=0,
                        reason=reason,
                        updated_at=now,
                    )
                )
            elif exists != "sent":
                self._set(conn, edition, email, now, status="skipped", reason=reason)

    def reset_for_resend(self, edition: dt.date, email: str, *, now: dt.datetime) -> None:
        """The explicit way to send an edition again: the row goes back to planned."""
        with self.engine.begin() as conn:
            self._set(conn, edition, email, now, status="planned", next_attempt_at=None)

    @staticmethod
    def _set(
        conn: Connection, edition: dt.date, email: str, now: dt.datetime, **values: Any
    ) -> None:
        conn.execute(
            ledger.update()
            .where(ledger.c.edition == edition, ledger.c.email == email.lower())
            .values(updated_at=now, **values)
        )

    def watermarks(self, emails: Sequence[str]) -> dict[str, dt.date]:
        """Each subscriber's newest finished edition (sent, skipped or permanently failed)."""
        out: dict[str, dt.date] = {}
        with self.engine.connect() as conn:
            for chunk in iter_chunks([e.lower() for e in emails]):
                rows = conn.execute(
                    sa.select(ledger.c.email, sa.func.max(ledger.c.edition))
                    .where(
                        ledger.c.email.in_(list(chunk)),
                        ledger.c.status.in_(["sent", "skipped", "failed_permanent"]),
                    )
                    .group_by(ledger.c.email)
                )
                out.update({email: edition for email, edition in rows})
        return out

    def retry_due(self, now: dt.datetime) -> dict[dt.date, list[str]]:
        """Temporary failures whose next attempt time has come, by edition."""
        out: dict[dt.date, list[str]] = defaultdict(list)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(ledger.c.edition, ledger.c.email)
                .where(
                    ledger.c.status == "failed",
                    sa.or_(ledger.c.next_attempt_at.is_(None), ledger.c.next_attempt_at <= now),
                )
                .order_by(ledger.c.edition, ledger.c.email)
            )
            for edition, email in rows:
                out[edition].append(email)
        return dict(out)

    # --- scheduling state and the sender lock ----------------------------------------------
    def last_firing(self, group_key: str) -> dt.datetime | None:
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(schedule_state.c.last_firing).where(
                    schedule_state.c.group_key == group_key
                )
            ).scalar_one_or_none()
        return _utc(value)

    def set_last_firing(self, group_key: str, firing: dt.datetime) -> None:
        with self.engine.begin() as conn:
            done = conn.execute(
                schedule_state.update()
                .where(schedule_state.c.group_key == group_key)
                .values(last_firing=firing)
            ).rowcount
            if not done:
                conn.execute(
                    schedule_state.insert().values(group_key=group_key, last_firing=firing)
                )

    @property
    def lock_dir(self) -> Path:
        """Where this store's sender lock files live: beside the SQLite database file, so two
        processes on one store exclude each other whatever folder they were started from."""
        db = self.engine.url.database
        if self.dialect == "sqlite" and db and db != ":memory:" and not db.startswith("file:"):
            return Path(db).expanduser().resolve().parent
        # an in-memory store is private to its process: a per-process folder is enough
        return Path(tempfile.gettempdir()) / f"newsletter-locks-{os.getpid()}"

    def lock_path(self, name: str) -> Path:
        db = Path(self.engine.url.database or "memory").name
        return self.lock_dir / f"{db}.send-{name}.lock"

    @contextlib.contextmanager
    def sender_lock(self, name: str) -> Iterator[None]:
        """Exclusive right to send `name` (an edition). Released by the kernel or the server
        when the holder dies, even by SIGKILL: flock on a file beside the SQLite database, an
        advisory lock on PostgreSQL.
        """
        if self.dialect == "postgresql":
            key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
            key -= 1 << 63  # bigint range
            with self.engine.connect() as conn:
                got = conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar_one()
                conn.commit()
                if not got:
                    raise LockHeld(f"another sender is already working on {name}; wait for it")
                try:
                    yield
                finally:
                    conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
                    conn.commit()
            return
        path = self.lock_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockHeld(
                    f"another sender is already working on {name} (lock {path}); wait for it"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            os.close(fd)  # closing drops the flock


def _paper(row: Any) -> Paper:
    return Paper(
        id=row.id, title=row.title, abstract=row.abstract, links=tuple(json.loads(row.links))
    )


def _ledger_row(row: Any) -> LedgerRow:
    return LedgerRow(
        edition=row.edition,
        email=row.email,
        status=row.status,
        message_id=row.message_id,
        paper_ids=tuple(json.loads(row.paper_ids)),
        attempts=row.attempts,
        next_attempt_at=_utc(row.next_attempt_at),
        last_reply=row.last_reply,
        reason=row.reason,
        updated_at=_utc(row.updated_at) or row.updated_at,
    )


def iter_chunks(items: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
