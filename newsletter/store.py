"""The store: SQLAlchemy 2 Core over SQLite (default, WAL) or PostgreSQL, unchanged SQL for both.

Tables: papers (one row per paper however often it appears) and paper_meta (what the Daily
Papers API adds to a paper: arXiv id, authors, upvotes, links; a table of its own, so that
create_all adds it to a store made before it), listings (one per date, with its source file
and content hash) and their ranked entries, fetched_days (each fetched day's HTTP validators,
for conditional requests); the delivery ledger (one row per
edition and subscriber) and each subscriber's paper history. Recording a delivery as sent and
adding its papers to the history happen in one transaction. For the reader's side: `readers`
(one row per address: the opaque id its links carry, and the subscription state with when and
how it last changed) and `votes` (the latest thumbs up/down per reader and paper).

Safe under concurrency and failure: first use creates the schema one process at a time, every
insert-if-missing is an INSERT .. ON CONFLICT, and one `handle_error` hook on the engine turns
lock and statement timeouts and a lost connection into StoreErrors that name the setting or the
next step. Database URLs are printed through `safe_url`, which masks the password.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import sqlite3
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, ExceptionContext

from newsletter.addresses import address_key
from newsletter.errors import ConnectionLost, DatabaseTimeout, LockHeld, StoreError
from newsletter.models import DailyListing, LedgerOutcome, ListingEntry, Paper
from newsletter.settings import sqlite_uri

log = logging.getLogger(__name__)

PLAN_SLICE = 5000  # planned rows a statement: planning a big scope holds one slice of rows

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

# Known only for papers that came from the API; a text dump never erases it.
paper_meta = sa.Table(
    "paper_meta",
    metadata,
    sa.Column("paper_id", sa.String(32), sa.ForeignKey("papers.id"), primary_key=True),
    sa.Column("arxiv_id", sa.String(64)),
    sa.Column("authors", sa.Text, nullable=False, default="[]"),  # JSON list of full names
    sa.Column("upvotes", sa.Integer),
    sa.Column("links", sa.Text, nullable=False, default="[]"),  # JSON list: code, project page
)

# One row per day fetched from the source: what to send in the next conditional request.
fetched_days = sa.Table(
    "fetched_days",
    metadata,
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("etag", sa.Text),
    sa.Column("last_modified", sa.Text),
    sa.Column("papers", sa.Integer, nullable=False),
    sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
)

# The date every text dump was first given (a dump has no year): it keeps that date when read
# again a year later, even if its listing was never kept (a fetched day won) or was replaced.
dump_dates = sa.Table(
    "dump_dates",
    metadata,
    sa.Column("content_hash", sa.String(64), primary_key=True),
    sa.Column("date", sa.Date, nullable=False),
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

LedgerStatus = Literal["planned", "sent", "failed", "unknown", "failed_permanent", "skipped"]

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
    # PostgreSQL scale-out: the worker that last claimed the row, and until when (database
    # clock) it holds it. An outcome clears the lease and keeps the worker, so a worker never
    # re-claims its own failure within its run. Unused on SQLite (one sender per edition).
    sa.Column("claimed_by", sa.String(200)),
    sa.Column("lease_until", sa.DateTime(timezone=True)),
    sa.Index("ix_ledger_status", "edition", "status"),
    # PostgreSQL: what is left to claim, in claim order; sent rows drop out, so claims stay cheap
    sa.Index(
        "ix_ledger_todo",
        "edition",
        "email",
        postgresql_where=sa.text("status IN ('planned', 'failed', 'unknown')"),
    ).ddl_if(dialect="postgresql"),
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

# A firing whose send started and has not finished (stopped by SIGTERM, SIGKILL, a lost
# database or a fatal SMTP error). It is not "served" until its edition is done: the next pass
# resumes it, whatever the time, catch-up or no.
open_firings = sa.Table(
    "open_firings",
    metadata,
    sa.Column("group_key", sa.String(80), primary_key=True),
    sa.Column("firing", sa.DateTime(timezone=True), nullable=False),
    sa.Column("edition", sa.Date, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
)

# The reader's side. An address gets a row the first time a link is made for it (or its state
# changes); `reader_id` is random, so a URL never carries the address or anything derived from
# it. No row means active: the subscriber file decides who exists.
readers = sa.Table(
    "readers",
    metadata,
    sa.Column("email", sa.String(320), primary_key=True),  # address_key
    sa.Column("reader_id", sa.String(32), nullable=False, unique=True),
    sa.Column("status", sa.String(20), nullable=False),  # active | unsubscribed
    sa.Column("status_at", sa.DateTime(timezone=True)),  # when it last changed (None: never)
    sa.Column("status_how", sa.String(20)),  # one-click | page | cli
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

votes = sa.Table(
    "votes",
    metadata,
    sa.Column("email", sa.String(320), primary_key=True),  # address_key
    sa.Column("paper_id", sa.String(32), sa.ForeignKey("papers.id"), primary_key=True),
    sa.Column("vote", sa.String(4), nullable=False),  # up | down (a cleared vote has no row)
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

# PostgreSQL scale-out: every send process of an edition is a worker; this row is what `status`
# shows of it (its lease is renewed with its rows' leases).
workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),  # host:pid:random
    sa.Column("edition", sa.Date, nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("lease_until", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("sent", sa.Integer, nullable=False, default=0),
    sa.Index("ix_workers_edition", "edition"),
)

# The scopes an edition was planned for (a hash of the addresses): the first worker plans, the
# others find the mark and go straight to claiming.
plans = sa.Table(
    "plans",
    metadata,
    sa.Column("edition", sa.Date, primary_key=True),
    sa.Column("scope", sa.String(64), primary_key=True),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("planned_at", sa.DateTime(timezone=True), nullable=False),
)

# A token bucket shared by every worker (NEWSLETTER_SMTP_RATE_LIMIT across hosts); it may go
# negative: a grant taken into debt tells its taker how long to wait.
send_budget = sa.Table(
    "send_budget",
    metadata,
    sa.Column("name", sa.String(300), primary_key=True),
    sa.Column("tokens", sa.Float, nullable=False),
    sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
)

IngestStatus = Literal["ingested", "unchanged", "replaced"]
SubscriptionStatus = Literal["active", "unsubscribed"]
Vote = Literal["up", "down"]


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    status: IngestStatus
    papers: int
    new_papers: int


@dataclass(frozen=True, slots=True)
class FetchedDay:
    """A day fetched before: the URL asked, the server's validators, its paper count."""

    date: dt.date
    url: str
    etag: str | None
    last_modified: str | None
    papers: int
    fetched_at: dt.datetime


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
    claimed_by: str | None = None


@dataclass(frozen=True, slots=True)
class ReaderRow:
    email: str  # address_key
    reader_id: str
    status: SubscriptionStatus
    status_at: dt.datetime | None
    status_how: str | None


@dataclass(frozen=True, slots=True)
class VoteRow:
    paper_id: str
    title: str
    vote: Vote
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class Received:
    """A paper in a reader's history: which edition brought it, and when."""

    paper: Paper
    edition: dt.date
    delivered_at: dt.datetime


def new_reader_id() -> str:
    """96 random bits, URL-safe: what a reader's links carry instead of the address."""
    return secrets.token_urlsafe(12)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


_PASSWORD_IN_URL = re.compile(r"(://[^/\s'\"@:]*:)[^\s'\"]*@")
_PASSWORD_PARAM = re.compile(r"(?i)\b(password=)[^&\s'\"]*")


def redact(text: str) -> str:
    """`text` with the password of every URL in it masked (user:***@host, password=***)."""
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD_IN_URL.sub(r"\1***@", text))


def safe_url(url: str | sa.URL) -> str:
    """A database URL as it may be printed or logged: never with its password."""
    try:
        text = sa.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):  # unparseable: mask what looks like a password
        text = str(url)
    return redact(text)


def make_engine(
    url: str, *, lock_timeout: float = 30.0, statement_timeout: float = 300.0
) -> Engine:
    """An engine for the URL. SQLite gets WAL, foreign keys and `lock_timeout` as its busy
    timeout; PostgreSQL gets lock_timeout and statement_timeout on every connection and a
    pre-ping, so a connection dropped while idle is replaced. Errors from either become
    StoreErrors in one place (`_ErrorTranslator`). Creates no folder: the entry point decides
    that (settings.prepare_database_folder)."""
    authority = url.partition("://")[2].partition("/")[0]
    if authority.count("@") > 1:  # parsed, a piece of the password would be the host name
        raise StoreError(
            "setting NEWSLETTER_DATABASE_URL: more than one @ before the host; a user name or "
            "password holding @, :, / or % must be percent-encoded (@ as %40, : as %3A)"
        )
    try:
        parsed = sa.make_url(url)
        backend = parsed.get_backend_name()
        pg = backend == "postgresql"
        # a name per process in pg_stat_activity: an operator (or a test) can find its sessions
        named = pg and "application_name" not in parsed.query
        args = {"application_name": f"newsletter:{os.getpid()}"} if named else {}
        if backend == "sqlite" and sqlite_uri(parsed):
            # a URI filename names no file the sender lock could sit beside: two senders on
            # one database would not exclude each other and would send every digest twice
            raise StoreError(
                f"setting NEWSLETTER_DATABASE_URL: {safe_url(url)!r} is an SQLite URI filename; "
                "give the database file's path, e.g. sqlite:///var/newsletter.db"
            )
        engine = sa.create_engine(url, future=True, pool_pre_ping=pg, connect_args=args)
    except ValueError:  # e.g. a port that is no number: its text may hold the password
        raise StoreError(
            f"setting NEWSLETTER_DATABASE_URL: cannot parse {safe_url(url)!r}; a user name or "
            "password holding @, :, / or % must be percent-encoded (@ as %40, : as %3A)"
        ) from None
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise StoreError(
            f"setting NEWSLETTER_DATABASE_URL: cannot use {safe_url(url)!r} ({redact(str(exc))}); "
            "use e.g. sqlite:///var/newsletter.db or postgresql+psycopg://user@host/db"
        ) from exc
    lock_ms, statement_ms = round(lock_timeout * 1000), round(statement_timeout * 1000)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", functools.partial(_sqlite_setup, lock_ms))
    elif engine.dialect.name == "postgresql":
        sa.event.listen(
            engine, "connect", functools.partial(_postgresql_setup, lock_ms, statement_ms)
        )
    translate = _ErrorTranslator(safe_url(url), lock_timeout, statement_timeout)
    sa.event.listen(engine, "handle_error", translate)
    return engine


def _sqlite_setup(busy_ms: int, dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={busy_ms}")  # first: switching to WAL may have to wait
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _postgresql_setup(lock_ms: int, statement_ms: int, dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"SET lock_timeout = {lock_ms}")
    cur.execute(f"SET statement_timeout = {statement_ms}")
    cur.close()
    dbapi_conn.commit()  # a SET inside a transaction that rolls back would be undone


def _timeout_kind(exc: BaseException) -> Literal["lock", "statement"] | None:
    """Which timeout ended the statement, from the driver's error: PostgreSQL's SQLSTATE
    (55P03 lock_not_available, 57014 query_canceled) or SQLite's SQLITE_BUSY."""
    code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if code == "55P03":
        return "lock"
    if code == "57014" and "statement timeout" in str(exc):
        return "statement"
    if (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF == sqlite3.SQLITE_BUSY:
        return "lock"
    return None


def _dropped(exc: BaseException) -> bool:
    """Whether the server ended the session (its backend terminated, the server shutting down
    or restarting: SQLSTATE class 57P), even while the connection was being opened: the next
    attempt gets a fresh one, unlike a refused or misconfigured connection."""
    code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None) or ""
    return code.startswith("57P") or "server closed the connection unexpectedly" in str(exc)


@dataclass(frozen=True)  # no slots: event listeners are weakly referenced
class _ErrorTranslator:
    """The engine's `handle_error` hook: the one place where the database errors a user can act
    on (a timeout, a lost or refused connection) become StoreErrors. Everything else keeps its
    SQLAlchemy type: a bug still shows its traceback."""

    url: str  # already masked
    lock_timeout: float
    statement_timeout: float

    def __call__(self, ctx: ExceptionContext) -> None:
        if ctx.is_pre_ping:
            return  # the pool replaces the dead connection on its own
        orig = ctx.original_exception
        cause = redact(str(orig).strip().splitlines()[0] if str(orig).strip() else repr(orig))
        kind = _timeout_kind(orig)
        if kind == "lock":
            raise DatabaseTimeout(
                f"the database {self.url} stayed locked by another session for more than "
                f"{self.lock_timeout:g} s ({cause}); check for another newsletter process or a "
                "long transaction holding the database (PostgreSQL: pg_stat_activity), or raise "
                "NEWSLETTER_DB_LOCK_TIMEOUT",
                kind="lock",
                setting="NEWSLETTER_DB_LOCK_TIMEOUT",
            )
        if kind == "statement":
            raise DatabaseTimeout(
                f"a statement on {self.url} ran longer than {self.statement_timeout:g} s and "
                f"was cancelled ({cause}); check for another process holding the database or "
                "an overloaded server, or raise NEWSLETTER_DB_STATEMENT_TIMEOUT",
                kind="statement",
                setting="NEWSLETTER_DB_STATEMENT_TIMEOUT",
            )
        dropped = _dropped(orig)
        if ctx.connection is None and not dropped:
            raise StoreError(
                f"cannot open the database {self.url}: {cause}; check "
                "NEWSLETTER_DATABASE_URL and that the server is running"
            )
        if ctx.is_disconnect or dropped:
            raise ConnectionLost(
                f"lost the connection to the database {self.url} ({cause}); everything "
                "recorded so far is kept; run the same command again",
                cause=cause,
            )


# Columns added to the ledger after its first release: ALTER TABLE for an older store.
added_columns = (ledger.c.claimed_by, ledger.c.lease_until)
column_indexes = tuple(i for i in ledger.indexes if i.name == "ix_ledger_todo")


def _missing_columns(conn: Connection) -> list[sa.Column[Any]]:
    have = {c["name"] for c in sa.inspect(conn).get_columns("ledger")}
    return [c for c in added_columns if c.name not in have]


def _lock_key(name: str) -> int:
    """A PostgreSQL advisory lock key (bigint) for a name."""
    key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
    return key - (1 << 63)


class Store:
    """Typed access to the database; every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(
        cls, url: str, *, lock_timeout: float = 30.0, statement_timeout: float = 300.0
    ) -> Store:
        """Open the store and create missing tables. `lock_timeout` (seconds) bounds every wait
        for a lock held by another session, `statement_timeout` (PostgreSQL) every statement;
        production callers pass settings.db_lock_timeout and settings.db_statement_timeout."""
        store = cls(
            make_engine(url, lock_timeout=lock_timeout, statement_timeout=statement_timeout)
        )
        try:
            store._create_schema()
        except sa.exc.OperationalError as exc:
            store.close()
            raise StoreError(
                f"cannot open the database {safe_url(url)}: {redact(str(exc.orig))}; check "
                "NEWSLETTER_DATABASE_URL and that the server is running"
            ) from exc
        except StoreError:
            store.close()
            raise
        return store

    def _create_schema(self) -> None:
        """Create missing tables, and add the columns (and their index) a store made by an
        older version lacks, one process at a time: concurrent first runs never race."""
        with self.engine.connect() as conn:
            present = set(sa.inspect(conn).get_table_names())
            missing = _missing_columns(conn) if "ledger" in present else []
        if set(metadata.tables) <= present and not missing:
            return
        with self._exclusive("schema") as conn:
            metadata.create_all(conn)
            for column in _missing_columns(conn):
                spec = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {column.table.name} ADD COLUMN {spec}")
            for index in column_indexes if conn.dialect.name == "postgresql" else ():
                index.create(conn, checkfirst=True)

    @contextlib.contextmanager
    def _exclusive(self, name: str) -> Iterator[Connection]:
        """A transaction for read-then-write work that several processes may start at once: it
        runs alone among the transactions for the same `name` (PostgreSQL: a transaction-level
        advisory lock), on SQLite among all writers (BEGIN IMMEDIATE). Waits count against the
        lock timeout."""
        with self.engine.begin() as conn:
            if self.dialect == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                key = _lock_key(f"newsletter-store:{name}")
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
            yield conn

    def _insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        """The dialect's INSERT, which has ON CONFLICT (the same SQL on both backends)."""
        return sqlite.insert(table) if self.dialect == "sqlite" else postgresql.insert(table)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # --- ingest -----------------------------------------------------------------------------
    def save_listing(self, listing: DailyListing, *, now: dt.datetime) -> IngestOutcome:
        """Store a listing; identical content changes nothing, new content for a date replaces it.
        Concurrent ingests of one listing take turns, so exactly one reports it as ingested."""
        with self._exclusive("listings") as conn:
            old = conn.execute(
                sa.select(listings.c.content_hash).where(listings.c.date == listing.date)
            ).scalar_one_or_none()
            if old == listing.content_hash:
                self._upsert_meta(conn, listing)  # upvotes move while the listing stays
                return IngestOutcome("unchanged", len(listing.entries), 0)
            new_papers = self._upsert_papers(conn, listing)
            self._upsert_meta(conn, listing)
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
            conn.execute(self._insert(papers).on_conflict_do_nothing(), fresh)
        return len(fresh)

    def _upsert_meta(self, conn: Connection, listing: DailyListing) -> None:
        """The API's facts about each paper; rewritten only when they changed, and never
        erased by a listing that does not know them (a text dump)."""
        rows = [
            {
                "paper_id": p.id,
                "arxiv_id": p.arxiv_id,
                "authors": json.dumps(list(p.authors), ensure_ascii=False),
                "upvotes": p.upvotes,
                "links": json.dumps(list(p.links)),
            }
            for p in listing.papers
            if p.arxiv_id is not None or p.authors or p.upvotes is not None
        ]
        if not rows:
            return
        insert = self._insert(paper_meta)
        changed = sa.or_(
            *(
                paper_meta.c[name].is_distinct_from(insert.excluded[name])
                for name in ("arxiv_id", "authors", "upvotes", "links")
            )
        )
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=[paper_meta.c.paper_id],
                set_={
                    name: insert.excluded[name]
                    for name in ("arxiv_id", "authors", "upvotes", "links")
                },
                where=changed,
            ),
            rows,
        )

    # --- fetching ---------------------------------------------------------------------------
    def fetched_day(self, date: dt.date) -> FetchedDay | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(fetched_days).where(fetched_days.c.date == date)
            ).one_or_none()
        if row is None:
            return None
        return FetchedDay(
            date=row.date,
            url=row.url,
            etag=row.etag,
            last_modified=row.last_modified,
            papers=row.papers,
            fetched_at=_utc(row.fetched_at) or row.fetched_at,
        )

    def record_fetch(
        self,
        date: dt.date,
        *,
        url: str,
        etag: str | None,
        last_modified: str | None,
        papers: int,
        now: dt.datetime,
    ) -> None:
        """Remember a day's answer: its validators make the next request conditional."""
        values = {
            "date": date,
            "url": url,
            "etag": etag,
            "last_modified": last_modified,
            "papers": papers,
            "fetched_at": now,
        }
        insert = self._insert(fetched_days).values(**values)
        with self.engine.begin() as conn:
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[fetched_days.c.date],
                    set_={k: insert.excluded[k] for k in values if k != "date"},
                )
            )

    # --- reading ----------------------------------------------------------------------------
    def listing_dates(self) -> list[dt.date]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(sa.select(listings.c.date).order_by(listings.c.date)).scalars()
            )

    def dates_by_content(self) -> dict[str, dt.date]:
        """The date each dump's content (its hash) was given: the date a text dump was first
        dated (`remember_dump_dates`), else the date a stored listing with that content is
        stored under, the earliest if one content sits under several dates."""
        query = sa.select(listings.c.content_hash, listings.c.date).order_by(listings.c.date.desc())
        with self.engine.connect() as conn:
            found = {content: date for content, date in conn.execute(query)}
            dumps = conn.execute(sa.select(dump_dates.c.content_hash, dump_dates.c.date))
            found.update({content: date for content, date in dumps})
        return found

    def remember_dump_dates(self, dated: Mapping[str, dt.date]) -> None:
        """Record the date of each dump content not dated before (the first date stays)."""
        if not dated:
            return
        rows = [{"content_hash": h, "date": d} for h, d in dated.items()]
        with self.engine.begin() as conn:
            conn.execute(self._insert(dump_dates).values(rows).on_conflict_do_nothing())

    def newest_date(self) -> dt.date | None:
        dates = self.listing_dates()
        return dates[-1] if dates else None

    def listing(self, date: dt.date) -> DailyListing | None:
        with self.engine.connect() as conn:
            head = conn.execute(sa.select(listings).where(listings.c.date == date)).one_or_none()
            if head is None:
                return None
            rows = conn.execute(
                sa.select(listing_entries.c.rank, listing_entries.c.line, *_PAPER_COLUMNS)
                .join(papers, papers.c.id == listing_entries.c.paper_id)
                .outerjoin(paper_meta, paper_meta.c.paper_id == papers.c.id)
                .where(listing_entries.c.date == date)
                .order_by(listing_entries.c.rank)
            ).all()
        entries = tuple(ListingEntry(rank=r.rank, paper=_paper(r), line=r.line) for r in rows)
        return DailyListing(
            date=head.date, source=head.source, entries=entries, content_hash=head.content_hash
        )

    def all_papers(self) -> list[Paper]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(*_PAPER_COLUMNS)
                .outerjoin(paper_meta, paper_meta.c.paper_id == papers.c.id)
                .order_by(papers.c.first_seen, papers.c.id)
            )
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
            query = query.where(history.c.email.in_([address_key(e) for e in emails]))
        out: dict[str, set[str]] = defaultdict(set)
        with self.engine.connect() as conn:
            for email, pid in conn.execute(query):
                out[email].add(pid)
        return dict(out)

    def history_elsewhere(
        self, edition: dt.date, emails: Sequence[str] | None = None
    ) -> dict[str, set[str]]:
        """Papers each subscriber received in any edition other than `edition`, older or newer,
        so no edition repeats them whatever order editions are sent in. What `edition` itself
        delivered (its history and its sent ledger rows) stays, so re-rendering or re-sending
        it keeps its content."""
        keys = None if emails is None else [address_key(e) for e in emails]
        out: dict[str, set[str]] = defaultdict(set)
        own: dict[str, set[str]] = defaultdict(set)
        with self.engine.connect() as conn:
            for chunk in [None] if keys is None else iter_chunks(keys):
                query = sa.select(history.c.email, history.c.paper_id).where(
                    history.c.edition != edition
                )
                sent = sa.select(ledger.c.email, ledger.c.paper_ids).where(
                    ledger.c.edition == edition, ledger.c.status == "sent"
                )
                if chunk is not None:
                    query = query.where(history.c.email.in_(list(chunk)))
                    sent = sent.where(ledger.c.email.in_(list(chunk)))
                for email, pid in conn.execute(query):
                    out[email].add(pid)
                for email, ids in conn.execute(sent):
                    own[email].update(json.loads(ids))
        return {email: pids - own[email] for email, pids in out.items() if pids - own[email]}

    def record_history(
        self, email: str, edition: dt.date, paper_ids: Sequence[str], *, now: dt.datetime
    ) -> None:
        """Record papers as delivered (imports and tests; sending uses record_outcomes)."""
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
        """Papers already in the history keep their first edition."""
        email = address_key(email)
        rows = [
            {"email": email, "paper_id": pid, "edition": edition, "delivered_at": now}
            for pid in dict.fromkeys(paper_ids)
        ]
        if rows:
            conn.execute(self._insert(history).on_conflict_do_nothing(), rows)

    # --- ledger -----------------------------------------------------------------------------
    def ledger_rows(self, edition: dt.date, emails: Sequence[str] | None = None) -> list[LedgerRow]:
        query = sa.select(ledger).where(ledger.c.edition == edition).order_by(ledger.c.email)
        if emails is not None:
            query = query.where(ledger.c.email.in_([address_key(e) for e in emails]))
        with self.engine.connect() as conn:
            return [_ledger_row(r) for r in conn.execute(query)]

    def ledger_row(self, edition: dt.date, email: str) -> LedgerRow | None:
        rows = self.ledger_rows(edition, [email])
        return rows[0] if rows else None

    def plan_rows(
        self,
        edition: dt.date,
        items: Sequence[tuple[str, str, Sequence[str]]],
        *,
        now: dt.datetime,
        refresh: bool = False,
    ) -> None:
        """Insert `planned` rows (email, message_id, paper_ids) that do not exist yet; an
        existing row (sent, failed, planned by an earlier run) is never touched, except that
        with `refresh` a `planned` one takes the new Message-ID and papers (a claimed row
        planned by `plan_edition`, before its digest was rendered)."""
        rows = [
            {
                "edition": edition,
                "email": address_key(email),
                "status": "planned",
                "message_id": mid,
                "paper_ids": json.dumps(list(pids)),
                "attempts": 0,
                "updated_at": now,
            }
            for email, mid, pids in items
        ]
        if not rows:
            return
        if self.dialect == "postgresql" and len({r["email"] for r in rows}) == len(rows):
            self._plan_rows_pg(edition, rows, now, refresh)
            return
        insert = self._insert(ledger)
        upsert = (
            insert.on_conflict_do_update(
                index_elements=[ledger.c.edition, ledger.c.email],
                set_={
                    "message_id": insert.excluded.message_id,
                    "paper_ids": insert.excluded.paper_ids,
                },
                where=ledger.c.status == "planned",
            )
            if refresh
            else insert.on_conflict_do_nothing()
        )
        with self.engine.begin() as conn:
            conn.execute(upsert, rows)

    def _plan_rows_pg(
        self, edition: dt.date, rows: list[dict[str, Any]], now: dt.datetime, refresh: bool
    ) -> None:
        """`plan_rows` as one statement over arrays (a chunk a statement, not a row)."""
        with self.engine.begin() as conn:
            _insert_planned_pg(conn, edition, rows, now, refresh=refresh)

    def record_outcomes(
        self,
        edition: dt.date,
        outcomes: Sequence[LedgerOutcome],
        *,
        now: dt.datetime,
        worker: str | None = None,
    ) -> None:
        """Record a group of outcomes in one transaction (group commit: the per-message form
        costs more CPU than sending). `sent` adds the papers to the history in the same
        transaction, so a crash leaves both or neither; a `sent` row is never downgraded.

        `worker` (PostgreSQL scale-out): the outcomes are that worker's, and a row another
        worker holds under a live lease (taken over from it) keeps its claim: any other
        outcome of ours is dropped, theirs will follow. A `sent` is always recorded (the
        server took the message; the row is due for no one any more) and ends any claim.
        Rows are written in address order, as every other writer of many rows does."""
        outcomes = sorted(outcomes, key=lambda o: o.email)
        sent = [o for o in outcomes if o.status == "sent"]
        rest = [o for o in outcomes if o.status != "sent"]
        with self.engine.begin() as conn:
            mark = _placeholder(conn.dialect)
            rest += _update_sent(conn, mark, edition, sent, now) if sent else []
            if rest:
                _upsert_outcomes(conn, edition, rest, now, worker)
            # an `unknown` digest may well have arrived: its papers count as had, so no later
            # edition repeats them (its own retry re-renders the same papers)
            had = sent + [o for o in outcomes if o.status == "unknown"]
            if had:
                _add_history_rows(conn, mark, edition, had, now)

    def edition_counts(self, edition: dt.date) -> list[tuple[str, str | None, int]]:
        """(status, reason, rows) for one edition's ledger."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(ledger.c.status, ledger.c.reason, sa.func.count())
                .where(ledger.c.edition == edition)
                .group_by(ledger.c.status, ledger.c.reason)
            )
            return [(status, reason, int(n)) for status, reason, n in rows]

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
            .where(ledger.c.edition == edition, ledger.c.email == address_key(email))
            .values(updated_at=now, **values)
        )

    def watermarks(self, emails: Sequence[str]) -> dict[str, dt.date]:
        """Each subscriber's newest finished edition (sent, skipped, permanently failed, or
        unknown: the server may have it, and the row is retried on its own schedule)."""
        out: dict[str, dt.date] = {}
        with self.engine.connect() as conn:
            for chunk in iter_chunks([address_key(e) for e in emails]):
                rows = conn.execute(
                    sa.select(ledger.c.email, sa.func.max(ledger.c.edition))
                    .where(
                        ledger.c.email.in_(list(chunk)),
                        ledger.c.status.in_(["sent", "skipped", "failed_permanent", "unknown"]),
                    )
                    .group_by(ledger.c.email)
                )
                out.update({email: edition for email, edition in rows})
        return out

    def retry_due(self, now: dt.datetime) -> dict[dt.date, list[str]]:
        """Rows to work on again, by edition: `planned` ones (a run that was stopped, even by
        SIGKILL, before it got to them; on SQLite the caller holds the edition's sender lock,
        so nobody is sending them now; on PostgreSQL they are claimed like any other row) and
        temporary failures or unknowns whose next attempt has come."""
        out: dict[dt.date, list[str]] = defaultdict(list)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(ledger.c.edition, ledger.c.email)
                .where(
                    sa.or_(
                        ledger.c.status == "planned",
                        sa.and_(
                            ledger.c.status.in_(["failed", "unknown"]),
                            sa.or_(
                                ledger.c.next_attempt_at.is_(None),
                                ledger.c.next_attempt_at <= now,
                            ),
                        ),
                    )
                )
                .order_by(ledger.c.edition, ledger.c.email)
            )
            for edition, email in rows:
                out[edition].append(email)
        return dict(out)

    # --- readers: ids, subscription state, votes --------------------------------------------
    def ping(self) -> None:
        """One round trip to the database (StoreError when it does not answer)."""
        with self.engine.connect() as conn:
            conn.execute(sa.select(1)).scalar_one()

    def reader_ids(self, emails: Iterable[str], *, now: dt.datetime) -> dict[str, str]:
        """The opaque reader id of each address (by address_key), created where missing.
        Safe when several processes create them at once (INSERT .. ON CONFLICT DO NOTHING)."""
        keys = list(dict.fromkeys(address_key(e) for e in emails))
        out: dict[str, str] = {}
        with self.engine.begin() as conn:
            for chunk in iter_chunks(keys):
                out.update(self._reader_ids(conn, chunk))
            missing = [k for k in keys if k not in out]
            if missing:
                rows = [
                    {
                        "email": k,
                        "reader_id": new_reader_id(),
                        "status": "active",
                        "created_at": now,
                    }
                    for k in missing
                ]
                conn.execute(self._insert(readers).on_conflict_do_nothing(), rows)
                for chunk in iter_chunks(missing):
                    out.update(self._reader_ids(conn, chunk))
        return out

    @staticmethod
    def _reader_ids(conn: Connection, keys: Sequence[str]) -> dict[str, str]:
        query = sa.select(readers.c.email, readers.c.reader_id).where(
            readers.c.email.in_(list(keys))
        )
        return dict(conn.execute(query).all())

    def all_reader_ids(self) -> dict[str, str]:
        """Every address that has a reader id (address_key -> id)."""
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(readers.c.email, readers.c.reader_id)).all())

    def reader(self, reader_id: str) -> ReaderRow | None:
        """The reader a link's id belongs to (None: no such reader)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(readers).where(readers.c.reader_id == reader_id)
            ).one_or_none()
        return None if row is None else _reader_row(row)

    def readers(self, emails: Iterable[str] | None = None) -> dict[str, ReaderRow]:
        """Stored reader rows by address_key (all of them when `emails` is None)."""
        query = sa.select(readers).order_by(readers.c.email)
        out: dict[str, ReaderRow] = {}
        with self.engine.connect() as conn:
            if emails is None:
                return {r.email: _reader_row(r) for r in conn.execute(query)}
            for chunk in iter_chunks(list(dict.fromkeys(address_key(e) for e in emails))):
                rows = conn.execute(query.where(readers.c.email.in_(list(chunk))))
                out.update({r.email: _reader_row(r) for r in rows})
        return out

    def set_subscription(
        self, email: str, status: SubscriptionStatus, *, how: str, now: dt.datetime
    ) -> ReaderRow:
        """Record `status` for the address (creating its reader row), with when and how.
        Setting the state it already has keeps the original time and way."""
        key = address_key(email)
        with self.engine.connect() as conn:  # the same state again (a repeated POST): no write
            row = conn.execute(sa.select(readers).where(readers.c.email == key)).one_or_none()
        if row is not None and row.status == status:
            if how != "cli" or row.status_how == "cli":
                return _reader_row(row)
            # the operator's word holds over the reader's own click: a page unsubscribe could
            # be undone from its page for an hour, an operator's may not (time unchanged)
            with self.engine.begin() as conn:
                conn.execute(
                    readers.update()
                    .where(readers.c.email == key, readers.c.status == status)
                    .values(status_how=how)
                )
                row = conn.execute(sa.select(readers).where(readers.c.email == key)).one()
            return _reader_row(row)
        insert = self._insert(readers).values(
            email=key,
            reader_id=new_reader_id(),
            status=status,
            status_at=now,
            status_how=how,
            created_at=now,
        )
        changed = readers.c.status != insert.excluded.status
        with self.engine.begin() as conn:
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[readers.c.email],
                    set_={
                        "status": insert.excluded.status,
                        "status_at": sa.case(
                            (changed, insert.excluded.status_at), else_=readers.c.status_at
                        ),
                        "status_how": sa.case(
                            (changed, insert.excluded.status_how), else_=readers.c.status_how
                        ),
                    },
                )
            )
            row = conn.execute(sa.select(readers).where(readers.c.email == key)).one()
        return _reader_row(row)

    def unsubscribed(self, emails: Iterable[str]) -> set[str]:
        """The address_keys among `emails` that are unsubscribed (delivery skips them)."""
        keys = list(dict.fromkeys(address_key(e) for e in emails))
        out: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in iter_chunks(keys):
                out.update(
                    conn.execute(
                        sa.select(readers.c.email).where(
                            readers.c.email.in_(list(chunk)),
                            readers.c.status == "unsubscribed",
                        )
                    ).scalars()
                )
        return out

    def unsubscribe_mark(self) -> tuple[int, dt.datetime | None]:
        """Changes whenever someone unsubscribes (count and latest change of unsubscribed
        readers): a send in progress polls this cheap query and re-reads the set on a change."""
        with self.engine.connect() as conn:
            n, latest = conn.execute(
                sa.select(sa.func.count(), sa.func.max(readers.c.status_at)).where(
                    readers.c.status == "unsubscribed"
                )
            ).one()
        return int(n), _utc(latest)

    def set_vote(self, email: str, paper_id: str, vote: Vote | None, *, now: dt.datetime) -> None:
        """The reader's latest vote on a paper (`None` clears it)."""
        key = address_key(email)
        with self.engine.begin() as conn:
            if vote is None:
                conn.execute(
                    votes.delete().where(votes.c.email == key, votes.c.paper_id == paper_id)
                )
                return
            insert = self._insert(votes).values(email=key, paper_id=paper_id, vote=vote, at=now)
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[votes.c.email, votes.c.paper_id],
                    set_={"vote": insert.excluded.vote, "at": insert.excluded.at},
                )
            )

    def votes(self, email: str, paper_ids: Iterable[str] | None = None) -> list[VoteRow]:
        """The reader's votes, newest first (only on `paper_ids` when given)."""
        query = (
            sa.select(votes.c.paper_id, papers.c.title, votes.c.vote, votes.c.at)
            .join(papers, papers.c.id == votes.c.paper_id)
            .where(votes.c.email == address_key(email))
            .order_by(votes.c.at.desc(), votes.c.paper_id)
        )
        if paper_ids is not None:
            query = query.where(votes.c.paper_id.in_(list(paper_ids)))
        with self.engine.connect() as conn:
            return [
                VoteRow(r.paper_id, r.title, r.vote, _utc(r.at) or r.at)
                for r in conn.execute(query)
            ]

    def vote_map(self, emails: Iterable[str]) -> dict[str, dict[str, int]]:
        """Each reader's votes for the matcher: address key -> paper id -> +1 (up) | -1 (down)."""
        keys = list(dict.fromkeys(address_key(e) for e in emails))
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for chunk in iter_chunks(keys):
                rows = conn.execute(
                    sa.select(votes.c.email, votes.c.paper_id, votes.c.vote).where(
                        votes.c.email.in_(list(chunk))
                    )
                )
                for email, paper_id, vote in rows:
                    out.setdefault(email, {})[paper_id] = 1 if vote == "up" else -1
        return out

    def papers_by_id(self, paper_ids: Iterable[str]) -> dict[str, Paper]:
        ids = list(dict.fromkeys(paper_ids))
        out: dict[str, Paper] = {}
        with self.engine.connect() as conn:
            for chunk in iter_chunks(ids):
                rows = conn.execute(
                    sa.select(*_PAPER_COLUMNS)
                    .outerjoin(paper_meta, paper_meta.c.paper_id == papers.c.id)
                    .where(papers.c.id.in_(list(chunk)))
                )
                out.update({r.id: _paper(r) for r in rows})
        return out

    def delivered_editions(self, email: str) -> list[LedgerRow]:
        """The reader's editions that went out (sent, or unknown: it may well have arrived),
        newest first, each with its paper ids in digest order."""
        query = (
            sa.select(ledger)
            .where(
                ledger.c.email == address_key(email),
                ledger.c.status.in_(["sent", "unknown"]),
            )
            .order_by(ledger.c.edition.desc())
        )
        with self.engine.connect() as conn:
            return [_ledger_row(r) for r in conn.execute(query)]

    def received(self, email: str, *, limit: int = 50) -> list[Received]:
        """The papers the reader was sent, newest first (the reader's Atom feed)."""
        query = (
            sa.select(*_PAPER_COLUMNS, history.c.edition, history.c.delivered_at)
            .select_from(history)
            .join(papers, papers.c.id == history.c.paper_id)
            .outerjoin(paper_meta, paper_meta.c.paper_id == papers.c.id)
            .where(history.c.email == address_key(email))
            .order_by(history.c.delivered_at.desc(), history.c.edition.desc(), papers.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [
                Received(_paper(r), r.edition, _utc(r.delivered_at) or r.delivered_at)
                for r in conn.execute(query)
            ]

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
        """The group's firing is served; the mark only moves forward (a daemon that finishes
        an older firing after another served a newer one changes nothing)."""
        insert = self._insert(schedule_state).values(group_key=group_key, last_firing=firing)
        with self.engine.begin() as conn:
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[schedule_state.c.group_key],
                    set_={"last_firing": insert.excluded.last_firing},
                    where=schedule_state.c.last_firing < insert.excluded.last_firing,
                )
            )

    def open_firing(self, group_key: str) -> tuple[dt.datetime, dt.date] | None:
        """The group's firing that started sending and has not finished: (firing, edition)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(open_firings.c.firing, open_firings.c.edition).where(
                    open_firings.c.group_key == group_key
                )
            ).first()
        return None if row is None else (_utc(row.firing) or row.firing, row.edition)

    def start_firing(
        self, group_key: str, firing: dt.datetime, edition: dt.date, *, now: dt.datetime
    ) -> tuple[dt.datetime, dt.date]:
        """Record that a firing's send has begun (before its first message goes out). A claim:
        a second daemon starting the same firing joins it and changes nothing; only a newer
        firing replaces an open one. Returns the open firing as recorded, (firing, edition):
        the edition a daemon joining the firing must send (its own pick may differ: a listing
        stored between the two daemons' passes)."""
        insert = self._insert(open_firings).values(
            group_key=group_key, firing=firing, edition=edition, started_at=now
        )
        recorded = sa.select(open_firings.c.firing, open_firings.c.edition).where(
            open_firings.c.group_key == group_key
        )
        with self.engine.begin() as conn:
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[open_firings.c.group_key],
                    set_={
                        "firing": insert.excluded.firing,
                        "edition": insert.excluded.edition,
                        "started_at": insert.excluded.started_at,
                    },
                    where=open_firings.c.firing < insert.excluded.firing,
                )
            )
            row = conn.execute(recorded).one()
        return _utc(row.firing) or row.firing, row.edition

    def finish_firing(self, group_key: str, firing: dt.datetime) -> None:
        """The firing's edition is done: it is served, and no longer open."""
        self.set_last_firing(group_key, firing)
        with self.engine.begin() as conn:
            conn.execute(
                open_firings.delete().where(
                    open_firings.c.group_key == group_key, open_firings.c.firing <= firing
                )
            )

    # --- scale-out on PostgreSQL: planning once, claims with leases, workers, shared budget --
    def plan_edition(
        self, edition: dt.date, items: Sequence[tuple[str, str]], *, now: dt.datetime
    ) -> Literal["planned", "done", "busy"]:
        """Write a `planned` row (email, message_id) for each address of a scope that has no row
        yet, once per scope: "busy" while another worker plans the edition (try again), "done"
        when this scope was planned before, "planned" when this call did it. `items` is read
        again a slice at a time (it may make its message ids as asked), so planning 100,000
        addresses holds their keys, not 100,000 rows."""
        key_of = [address_key(email) for email, _ in items]
        order = sorted(range(len(key_of)), key=key_of.__getitem__)  # address order
        # an address given twice: its last message id, as a dict of them would keep
        last = [
            i
            for n, i in enumerate(order)
            if n + 1 == len(order) or key_of[order[n + 1]] != key_of[i]
        ]
        del order
        scope = hashlib.sha256("\n".join(key_of[i] for i in last).encode()).hexdigest()
        with self.engine.begin() as conn:
            key = self._sender_key(conn, f"plan:{edition.isoformat()}")
            if not conn.execute(sa.select(sa.func.pg_try_advisory_xact_lock(key))).scalar_one():
                return "busy"
            mark = sa.select(plans.c.rows).where(plans.c.edition == edition, plans.c.scope == scope)
            if conn.execute(mark).first() is not None:
                return "done"
            for start in range(0, len(last), PLAN_SLICE):
                rows = [
                    {
                        "email": key_of[i],
                        "message_id": items[i][1],
                        "paper_ids": "[]",  # the claiming worker's render fills them in
                    }
                    for i in last[start : start + PLAN_SLICE]
                ]
                _insert_planned_pg(conn, edition, rows, now, refresh=False)  # keys are distinct
            conn.execute(
                plans.insert().values(edition=edition, scope=scope, rows=len(last), planned_at=now)
            )
        return "planned"

    def claim_rows(
        self,
        edition: dt.date,
        worker: str,
        *,
        limit: int,
        lease: float,
        now: dt.datetime,
        started: dt.datetime,
        respect_next_attempt: bool,
        exclude: Sequence[str] = (),
        only: Sequence[str] | None = None,
    ) -> list[LedgerRow]:
        """Claim up to `limit` rows that are due and free (never claimed, or their lease ran
        out: a dead worker's), in address order, skipping rows another worker is claiming at
        this moment (FOR UPDATE SKIP LOCKED). Due: `planned`; a temporary failure (at its next
        attempt time with `respect_next_attempt`) and an `unknown` at its next attempt time,
        either only when another worker recorded it before this one `started`, so no failure
        goes round the workers within their run. `only` limits the claim to those addresses,
        `exclude` leaves those out. The lease is on the database's clock."""
        c = ledger.c
        due = _due(edition, worker, now, started, respect_next_attempt, exclude, only)
        free = sa.or_(c.lease_until.is_(None), c.lease_until < sa.func.clock_timestamp())
        pick = (
            sa.select(c.email)
            .where(due, free)
            .order_by(c.email)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        picked = pick.cte("picked")
        claim = (
            ledger.update()
            .where(c.edition == edition, c.email == picked.c.email)
            .values(claimed_by=worker, lease_until=_lease_end(lease))
            .returning(*ledger.c)
        )
        with self.engine.begin() as conn:
            rows = [_ledger_row(r) for r in conn.execute(claim)]
        return sorted(rows, key=lambda r: r.email)

    def renew_lease(self, edition: dt.date, worker: str, *, lease: float, sent: int) -> set[str]:
        """Extend the worker's lease on the rows it holds and on its own row; returns the rows
        extended. A row another transaction has locked (the worker's own ledger writer ending
        its claim, another worker taking it over) is skipped, not waited for: two statements
        locking the same rows in different orders would deadlock. A skipped row keeps its
        lease until the next round."""
        until = _lease_end(lease)
        c = ledger.c
        mine = (
            sa.select(c.email)
            .where(c.edition == edition, c.claimed_by == worker, c.lease_until.is_not(None))
            .with_for_update(skip_locked=True)
            .cte("mine")
        )
        with self.engine.begin() as conn:
            extended = conn.execute(
                ledger.update()
                .where(c.edition == edition, c.email == mine.c.email)
                .values(lease_until=until)
                .returning(c.email)
            ).scalars()
            emails = set(extended)
            conn.execute(
                workers.update().where(workers.c.id == worker).values(lease_until=until, sent=sent)
            )
        return emails

    def release_claims(
        self, edition: dt.date, worker: str, emails: Sequence[str] | None = None
    ) -> int:
        """Give back rows the worker holds (or just `emails`), for any worker to claim now;
        returns how many."""
        query = ledger.update().where(
            ledger.c.edition == edition,
            ledger.c.claimed_by == worker,
            ledger.c.lease_until.is_not(None),
        )
        if emails is not None:
            query = query.where(ledger.c.email.in_(list(emails)))
        with self.engine.begin() as conn:
            return int(conn.execute(query.values(lease_until=None)).rowcount)

    def held_elsewhere(self, edition: dt.date, worker: str) -> list[tuple[str, float]]:
        """Rows of the edition that other workers hold now: (email, seconds left on the
        lease). Few: at most what the live workers have claimed."""
        left = sa.func.extract("epoch", ledger.c.lease_until - sa.func.clock_timestamp())
        query = sa.select(ledger.c.email, left).where(
            ledger.c.edition == edition,
            ledger.c.lease_until > sa.func.clock_timestamp(),
            sa.or_(ledger.c.claimed_by.is_(None), ledger.c.claimed_by != worker),
        )
        with self.engine.connect() as conn:
            return [(email, float(s)) for email, s in conn.execute(query)]

    def due_left(
        self,
        edition: dt.date,
        worker: str,
        *,
        now: dt.datetime,
        started: dt.datetime,
        respect_next_attempt: bool,
        exclude: Sequence[str] = (),
        only: Sequence[str] | None = None,
    ) -> list[tuple[str, float | None]]:
        """The rows `claim_rows` would claim if they were free, leaving out those the worker
        holds itself: (email, seconds left on another worker's live lease, or None when the
        row is free). A worker is done with its scope only when none is left: a row another
        worker holds may come back (given back, or its worker dies)."""
        c = ledger.c
        live = c.lease_until > sa.func.clock_timestamp()
        left = sa.case(
            (live, sa.func.extract("epoch", c.lease_until - sa.func.clock_timestamp())),
            else_=None,
        )
        due = _due(edition, worker, now, started, respect_next_attempt, exclude, only)
        not_mine = sa.or_(
            c.claimed_by.is_(None),
            c.claimed_by != worker,
            c.lease_until.is_(None),
            c.lease_until <= sa.func.clock_timestamp(),
        )
        query = sa.select(c.email, left).where(due, not_mine)
        with self.engine.connect() as conn:
            return [(e, None if s is None else float(s)) for e, s in conn.execute(query)]

    def register_worker(
        self, worker: str, edition: dt.date, *, host: str, pid: int, lease: float
    ) -> None:
        now = sa.func.clock_timestamp()
        with self.engine.begin() as conn:
            conn.execute(
                workers.insert().values(
                    id=worker,
                    edition=edition,
                    host=host,
                    pid=pid,
                    started_at=now,
                    lease_until=_lease_end(lease),
                    sent=0,
                )
            )

    def finish_worker(self, worker: str, *, sent: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                workers.update()
                .where(workers.c.id == worker)
                .values(lease_until=None, finished_at=sa.func.clock_timestamp(), sent=sent)
            )

    def edition_workers(self, edition: dt.date) -> list[dict[str, Any]]:
        """The workers that took part in the edition, oldest first, each with the rows it
        holds now and whether its lease is live (`working`), ran out (`lost`: a dead worker
        whose rows the others take over) or was given back (`finished`)."""
        held = (
            sa.select(sa.func.count())
            .where(
                ledger.c.edition == edition,
                ledger.c.claimed_by == workers.c.id,
                ledger.c.lease_until > sa.func.clock_timestamp(),
            )
            .scalar_subquery()
        )
        alive = workers.c.lease_until > sa.func.clock_timestamp()
        query = (
            sa.select(workers, held.label("held"), alive.label("alive"))
            .where(workers.c.edition == edition)
            .order_by(workers.c.started_at, workers.c.id)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        out = []
        for r in rows:
            state = "finished" if r.finished_at else ("working" if r.alive else "lost")
            out.append(
                {
                    "id": r.id,
                    "host": r.host,
                    "pid": r.pid,
                    "state": state,
                    "started_at": _iso(r.started_at),
                    "lease_until": _iso(r.lease_until),
                    "finished_at": _iso(r.finished_at),
                    "sent": r.sent,
                    "held": int(r.held),
                }
            )
        return out

    def take_budget(self, name: str, tokens: int, *, rate: float, burst: float) -> float:
        """Take `tokens` from the shared bucket `name` (refilled at `rate` per second up to
        `burst`, on the database's clock); returns the seconds to wait before using them."""
        b = send_budget.c
        now = sa.func.clock_timestamp()
        refill = b.tokens + rate * sa.func.extract("epoch", now - b.updated)
        take = (
            send_budget.update()
            .where(b.name == name)
            .values(tokens=sa.func.least(refill, burst) - tokens, updated=now)
            .returning(b.tokens)
        )
        with self.engine.begin() as conn:
            conn.execute(
                postgresql.insert(send_budget)
                .values(name=name, tokens=burst, updated=now)
                .on_conflict_do_nothing()
            )
            left = float(conn.execute(take).scalar_one())
        return max(0.0, -left / rate)

    @property
    def _db_file(self) -> Path | None:
        """The SQLite database file with every symlink resolved; None in memory."""
        db = self.engine.url.database
        if self.dialect == "sqlite" and db and db != ":memory:":
            return Path(db).expanduser().resolve()
        return None

    @property
    def lock_dir(self) -> Path:
        """Where this store's sender lock files live: beside the SQLite database file, so two
        processes on one store exclude each other whatever folder they were started from."""
        db = self._db_file
        if db is not None:
            return db.parent
        # an in-memory store is private to its process: a per-process folder is enough
        return Path(tempfile.gettempdir()) / f"newsletter-locks-{os.getpid()}"

    def lock_path(self, name: str) -> Path:
        """The lock file for `name`, beside the resolved database file and named after its
        inode: two senders that reach one database through a symlink or a hard link
        (two paths, one file) must meet on one lock."""
        db = self._db_file
        if db is None:
            return self.lock_dir / f"memory.send-{name}.lock"
        try:  # a hard link's name differs, its inode does not
            key = f"inode-{os.stat(db).st_ino}"
        except FileNotFoundError:  # Store.open creates it; a store deleted under us locks by name
            key = db.name
        return self.lock_dir / f".{key}.send-{name}.lock"

    def sender_key(self, name: str) -> int:
        """The PostgreSQL advisory lock key of `name`'s sender lock (for monitoring)."""
        with self.engine.connect() as conn:
            return self._sender_key(conn, name)

    @staticmethod
    def _sender_key(conn: Connection, name: str) -> int:
        # advisory locks are per database: two stores in two schemas of one database
        # (deployments side by side, parallel test runs) must not block each other
        schema = conn.execute(sa.select(sa.func.current_schema())).scalar_one()
        return _lock_key(f"{schema}:{name}")

    @contextlib.contextmanager
    def sender_lock(self, name: str) -> Iterator[None]:
        """Exclusive right to send `name` (an edition). Released by the kernel or the server
        when the holder dies, even by SIGKILL: flock on a file beside the SQLite database, an
        advisory lock on PostgreSQL.
        """
        if self.dialect == "postgresql":
            with self.engine.connect() as conn:
                key = self._sender_key(conn, name)
                got = conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar_one()
                conn.commit()
                if not got:
                    raise LockHeld(f"another sender is already working on {name}; wait for it")
                try:
                    yield
                finally:
                    _advisory_unlock(conn, key, name)
            return
        path = self.lock_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _flock_file(path, name)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            # one file per edition would pile up beside the database day after day: the holder
            # removes it while still holding it (a waiter that opened it sees the swap and retries)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.close(fd)  # closing drops the flock


def _flock_file(path: Path, name: str) -> int:
    """An open descriptor holding an exclusive flock on `path`, which is still the file at `path`.

    A holder unlinks the file before it lets go, so the file we opened may have been removed (or
    replaced by a newer holder's) by the time our flock succeeds: a lock on that orphan would
    exclude nobody, so compare inodes and start again on a mismatch.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(
                f"another sender is already working on {name} (lock {path}); wait for it"
            ) from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = -1
        if current == os.fstat(fd).st_ino:
            return fd
        os.close(fd)


def _due(
    edition: dt.date,
    worker: str,
    now: dt.datetime,
    started: dt.datetime,
    respect_next_attempt: bool,
    exclude: Sequence[str],
    only: Sequence[str] | None,
) -> Any:
    """The rows of an edition a worker may claim once they are free (see `claim_rows`)."""
    c = ledger.c
    retry_at = sa.or_(c.next_attempt_at.is_(None), c.next_attempt_at <= now)
    earlier = sa.and_(
        sa.or_(c.claimed_by.is_(None), c.claimed_by != worker), c.updated_at <= started
    )
    due = sa.and_(
        c.edition == edition,
        c.status.in_(["planned", "failed", "unknown"]),
        sa.or_(
            c.status == "planned",
            sa.and_(c.status == "failed", earlier, retry_at if respect_next_attempt else sa.true()),
            sa.and_(c.status == "unknown", earlier, c.next_attempt_at <= now),
        ),
    )
    if exclude:
        due = sa.and_(due, c.email.not_in(list(exclude)))
    if only is not None:
        due = sa.and_(due, c.email.in_(list(only)))
    return due


def _lease_end(seconds: float) -> Any:
    """The database's clock plus `seconds`: hosts with skewed clocks agree on every lease."""
    return sa.func.clock_timestamp() + sa.func.make_interval(0, 0, 0, 0, 0, 0, float(seconds))


def _iso(value: dt.datetime | None) -> str | None:
    value = _utc(value)
    return value.isoformat() if value is not None else None


def _advisory_unlock(conn: Connection, key: int, name: str) -> None:
    """Release a session advisory lock. A dead connection needs no unlock: the server drops a
    session's advisory locks with the session, and failing here would hide the error that
    ended the block."""
    try:
        conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
        conn.commit()
    except ConnectionLost as exc:
        log.warning(
            "sender lock for %s: its database connection was lost (%s); the server has "
            "released the lock",
            name,
            exc.cause,
        )


_PAPER_COLUMNS = (
    papers,
    paper_meta.c.arxiv_id,
    paper_meta.c.authors.label("meta_authors"),
    paper_meta.c.upvotes,
    paper_meta.c.links.label("meta_links"),
)


# --- the ledger's batched writes ------------------------------------------------------------------
# `sent` is written once per message and dominated the sender's CPU through SQLAlchemy's
# per-row parameter processing (~20 us a row, ten history rows a digest); these go to the
# driver's executemany instead. The dates are the same for a whole batch, so they pass the
# column types' bind processors once. The SQL is the same on SQLite and PostgreSQL.
_UPDATE_OUTCOME = (  # bind parameters: "b_" + the column name (bound from _outcome_row)
    ledger.update()
    .where(ledger.c.edition == sa.bindparam("b_edition"), ledger.c.email == sa.bindparam("b_email"))
    .values(
        status=sa.bindparam("b_status"),
        message_id=sa.func.coalesce(sa.bindparam("b_message_id"), ledger.c.message_id),
        paper_ids=sa.bindparam("b_paper_ids"),
        attempts=ledger.c.attempts + sa.bindparam("b_attempts"),
        last_reply=sa.func.coalesce(sa.bindparam("b_last_reply"), ledger.c.last_reply),
        reason=sa.bindparam("b_reason"),
        next_attempt_at=sa.bindparam("b_next_attempt_at"),
        updated_at=sa.bindparam("b_updated_at"),
        lease_until=None,  # an outcome ends the claim (claimed_by stays: who finished it)
    )
)


# a worker's own outcome for a row no other worker holds now (PostgreSQL scale-out)
_NOT_HELD_ELSEWHERE = sa.or_(
    ledger.c.claimed_by.is_(None),
    ledger.c.claimed_by == sa.bindparam("b_worker"),
    ledger.c.lease_until.is_(None),
    ledger.c.lease_until <= sa.func.clock_timestamp(),
)
_UPDATE_OUTCOME_FENCED = _UPDATE_OUTCOME.where(
    ledger.c.status != "sent",
    sa.or_(sa.bindparam("b_status") == "sent", _NOT_HELD_ELSEWHERE),
)


def _placeholder(dialect: sa.Dialect) -> str:
    return {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(dialect.paramstyle, "?")


def _bound(column: sa.Column[Any], dialect: sa.Dialect, value: Any) -> Any:
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    return process(value) if process else value


def _update_sent(
    conn: Connection, m: str, edition: dt.date, sent: Sequence[LedgerOutcome], now: dt.datetime
) -> list[LedgerOutcome]:
    """Mark planned rows sent; returns the outcomes that had no row (for the insert path)."""
    d = conn.dialect
    table = d.identifier_preparer.format_table(ledger)
    ed, at = _bound(ledger.c.edition, d, edition), _bound(ledger.c.updated_at, d, now)
    if d.name == "postgresql" and len({o.email for o in sent}) == len(sent):
        # one statement over arrays: per-row executemany costs the sender ~60 us a digest
        result = conn.exec_driver_sql(
            f"UPDATE {table} AS l SET status = 'sent', message_id = v.mid, paper_ids = v.pids, "
            "attempts = l.attempts + v.att, last_reply = v.reply, reason = NULL, "
            f"next_attempt_at = NULL, lease_until = NULL, updated_at = {m} "
            f"FROM unnest({m}::text[], {m}::text[], {m}::text[], {m}::int[], {m}::text[]) "
            f"AS v(email, mid, pids, att, reply) WHERE l.edition = {m} AND l.email = v.email",
            (
                at,
                [o.email for o in sent],
                [o.message_id for o in sent],
                [json.dumps(list(o.paper_ids)) for o in sent],
                [o.attempts for o in sent],
                [o.reply for o in sent],
                ed,
            ),
        )
    else:
        result = conn.exec_driver_sql(
            f"UPDATE {table} SET status = 'sent', message_id = {m}, paper_ids = {m}, "
            f"attempts = attempts + {m}, last_reply = {m}, reason = NULL, "
            f"next_attempt_at = NULL, lease_until = NULL, updated_at = {m} "
            f"WHERE edition = {m} AND email = {m}",
            [
                (o.message_id, json.dumps(list(o.paper_ids)), o.attempts, o.reply, at, ed, o.email)
                for o in sent
            ],
        )
    if result.rowcount == len(sent):
        return []
    have = set(
        conn.execute(
            sa.select(ledger.c.email).where(
                ledger.c.edition == edition, ledger.c.email.in_([o.email for o in sent])
            )
        ).scalars()
    )
    return [o for o in sent if o.email not in have]


def _insert_planned_pg(
    conn: Connection,
    edition: dt.date,
    rows: Sequence[dict[str, Any]],
    now: dt.datetime,
    *,
    refresh: bool,
) -> None:
    """`planned` rows (email, message_id, paper_ids: distinct emails) in one statement over
    arrays; an existing row is left alone, or with `refresh` a `planned` one takes the new
    Message-ID and papers."""
    d = conn.dialect
    m = _placeholder(d)
    table = d.identifier_preparer.format_table(ledger)
    ed, at = _bound(ledger.c.edition, d, edition), _bound(ledger.c.updated_at, d, now)
    conflict = (
        "DO UPDATE SET message_id = excluded.message_id, paper_ids = excluded.paper_ids "
        "WHERE l.status = 'planned'"
        if refresh
        else "DO NOTHING"
    )
    conn.exec_driver_sql(
        f"INSERT INTO {table} AS l (edition, email, status, message_id, paper_ids, attempts, "
        f"updated_at) SELECT {m}, e, 'planned', mid, pids, 0, {m} "
        f"FROM unnest({m}::text[], {m}::text[], {m}::text[]) AS v(e, mid, pids) "
        f"ON CONFLICT (edition, email) {conflict}",
        (
            ed,
            at,
            [r["email"] for r in rows],
            [r["message_id"] for r in rows],
            [r["paper_ids"] for r in rows],
        ),
    )


def _add_history_rows(
    conn: Connection,
    m: str,
    edition: dt.date,
    had: Sequence[LedgerOutcome],
    now: dt.datetime,
) -> None:
    pairs = [(o.email, p) for o in had for p in dict.fromkeys(o.paper_ids)]
    if not pairs:
        return
    d = conn.dialect
    table = d.identifier_preparer.format_table(history)
    ed, at = _bound(history.c.edition, d, edition), _bound(history.c.delivered_at, d, now)
    if d.name == "postgresql":  # ~10 rows a digest: one statement over arrays, not one each
        conn.exec_driver_sql(
            f"INSERT INTO {table} (email, paper_id, edition, delivered_at) "
            f"SELECT e, p, {m}, {m} FROM unnest({m}::text[], {m}::text[]) AS v(e, p) "
            "ON CONFLICT DO NOTHING",
            (ed, at, [e for e, _ in pairs], [p for _, p in pairs]),
        )
        return
    conn.exec_driver_sql(  # a resend's papers are in the history already
        f"INSERT INTO {table} (email, paper_id, edition, delivered_at) "
        f"VALUES ({m}, {m}, {m}, {m}) ON CONFLICT DO NOTHING",
        [(e, p, ed, at) for e, p in pairs],
    )


def _outcome_row(edition: dt.date, o: LedgerOutcome, now: dt.datetime) -> dict[str, Any]:
    """One outcome as a ledger row (column -> value)."""
    return {
        "edition": edition,
        "email": o.email,
        "status": o.status,
        "message_id": o.message_id,
        "paper_ids": json.dumps(list(o.paper_ids)),
        "attempts": o.attempts,
        "last_reply": o.reply,
        "reason": o.reason,
        "next_attempt_at": o.next_attempt_at,
        "updated_at": now,
    }


def _upsert_outcomes(
    conn: Connection,
    edition: dt.date,
    outcomes: Sequence[LedgerOutcome],
    now: dt.datetime,
    worker: str | None = None,
) -> None:
    """Failures and skips (and the rare `sent` without a planned row): update or insert.
    With `worker`, a row another worker holds under a live lease is left to it."""
    have = dict(
        conn.execute(
            sa.select(ledger.c.email, ledger.c.status).where(
                ledger.c.edition == edition, ledger.c.email.in_([o.email for o in outcomes])
            )
        ).all()
    )
    # a `sent` row is never downgraded (a skip or failure from a stale view of it)
    todo = [o for o in outcomes if have.get(o.email) != "sent" or o.status == "sent"]
    rows = [(o.email, _outcome_row(edition, o, now)) for o in todo]
    values = [{f"b_{k}": v for k, v in row.items()} for e, row in rows if e in have]
    if values and worker is not None:
        conn.execute(_UPDATE_OUTCOME_FENCED, [{**v, "b_worker": worker} for v in values])
    elif values:
        conn.execute(_UPDATE_OUTCOME, values)
    fresh = [row for e, row in rows if e not in have]
    if fresh:  # another sender may have written the row meanwhile: its `sent` stays
        insert = (sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert)(ledger)
        keep = ("status", "message_id", "paper_ids", "attempts", "last_reply", "reason")
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=[ledger.c.edition, ledger.c.email],
                set_={
                    **{c: insert.excluded[c] for c in keep},
                    "next_attempt_at": insert.excluded.next_attempt_at,
                    "updated_at": insert.excluded.updated_at,
                    "lease_until": None,
                },
                where=ledger.c.status != "sent"
                if worker is None
                else sa.and_(
                    ledger.c.status != "sent",
                    sa.or_(insert.excluded.status == "sent", _NOT_HELD_ELSEWHERE),
                ),
            ),
            [{**row, "b_worker": worker} for row in fresh] if worker is not None else fresh,
        )


def _paper(row: Any) -> Paper:
    """A paper row (outer-joined with its paper_meta): the API's links first, then the
    abstract's."""
    links = [*json.loads(row.meta_links or "[]"), *json.loads(row.links)]
    return Paper(
        id=row.id,
        title=row.title,
        abstract=row.abstract,
        links=tuple(dict.fromkeys(links)),
        arxiv_id=row.arxiv_id,
        authors=tuple(json.loads(row.meta_authors or "[]")),
        upvotes=row.upvotes,
    )


def _reader_row(row: Any) -> ReaderRow:
    return ReaderRow(
        email=row.email,
        reader_id=row.reader_id,
        status=row.status,
        status_at=_utc(row.status_at),
        status_how=row.status_how,
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
        claimed_by=row.claimed_by,
    )


def iter_chunks(items: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
