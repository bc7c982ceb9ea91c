"""The store when things go wrong, against the real databases: a lock held by another session,
a connection the server terminates, many processes on a fresh store at once, and a database
URL with a password in an error message."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from newsletter.cli import cli
from newsletter.errors import ConnectionLost, DatabaseTimeout, StoreError
from newsletter.ingest import read_dump
from newsletter.models import LedgerOutcome
from newsletter.store import Store, redact, safe_url

from .conftest import EXAMPLE_SUBSCRIBERS, REFERENCE, ROOT, SEEDS
from .test_crash import cli as start_cli
from .test_store import NOW

ED = dt.date(2026, 3, 17)


@contextlib.contextmanager
def another_session_holds(url: str, table: str) -> Iterator[None]:
    """Another session holds the database: on PostgreSQL `LOCK TABLE <table> IN ACCESS
    EXCLUSIVE MODE` (in the URL's schema), on SQLite a write transaction (BEGIN IMMEDIATE)."""
    if url.startswith("sqlite"):
        raw = sqlite3.connect(str(sa.make_url(url).database), isolation_level=None)
        raw.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            raw.execute("ROLLBACK")
            raw.close()
        return
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            try:
                yield
            finally:
                conn.rollback()
    finally:
        engine.dispose()


def terminate(url: str, pid: int) -> None:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.pg_terminate_backend(pid))).scalar_one()
    engine.dispose()


def plan(store: Store) -> None:
    store.plan_rows(ED, [("ada@example.org", "<m@x>", ("a",))], now=NOW)


# --- 1. lock and statement timeouts -------------------------------------------------------------
def test_a_lock_held_by_another_session_fails_after_the_lock_timeout(db_url: str) -> None:
    store = Store.open(db_url, lock_timeout=1)
    try:
        with another_session_holds(db_url, "ledger"):
            started = time.monotonic()
            with pytest.raises(DatabaseTimeout, match="NEWSLETTER_DB_LOCK_TIMEOUT") as info:
                plan(store)
            assert time.monotonic() - started < 5
        assert info.value.kind == "lock" and info.value.setting == "NEWSLETTER_DB_LOCK_TIMEOUT"
        assert "another newsletter process" in str(info.value)
        assert "stayed locked by another session for more than 1 s" in str(info.value)
        plan(store)  # the lock is gone: the same call works
        assert [r.status for r in store.ledger_rows(ED)] == ["planned"]
    finally:
        store.close()


@pytest.mark.postgres
def test_a_statement_longer_than_the_statement_timeout_is_cancelled(pg_url: str) -> None:
    store = Store.open(pg_url, lock_timeout=30, statement_timeout=1)
    try:
        with another_session_holds(pg_url, "ledger"):
            started = time.monotonic()
            with pytest.raises(DatabaseTimeout, match="NEWSLETTER_DB_STATEMENT_TIMEOUT") as info:
                store.ledger_rows(ED)
            assert time.monotonic() - started < 5
        assert info.value.kind == "statement"
        assert "another process holding the database" in str(info.value)
    finally:
        store.close()


def test_send_stops_with_the_lock_timeout_setting_named(db_url: str, tmp_path: Path) -> None:
    """The CLI passes NEWSLETTER_DB_LOCK_TIMEOUT down: `send` fails within seconds instead of
    waiting for as long as the other session holds the database."""
    env = {
        "NEWSLETTER_DATABASE_URL": db_url,
        "NEWSLETTER_SEEDS_DIR": str(SEEDS),
        "NEWSLETTER_SUBSCRIBERS_FILE": str(EXAMPLE_SUBSCRIBERS),
        "NEWSLETTER_OUTBOX_DIR": str(tmp_path / "outbox"),
        "NEWSLETTER_REFERENCE_DATE": "2026-11-21",
        "NEWSLETTER_DB_LOCK_TIMEOUT": "1",
    }
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest"], env=env, catch_exceptions=False).exit_code == 0
    with another_session_holds(db_url, "ledger"):
        started = time.monotonic()
        result = runner.invoke(cli, ["send", "--date", "2026-03-17"], env=env)
        elapsed = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert "DatabaseTimeout" in result.stderr and "NEWSLETTER_DB_LOCK_TIMEOUT" in result.stderr
    assert elapsed < 20
    assert not list((tmp_path / "outbox").rglob("*.eml"))


# --- 2. a lost connection ----------------------------------------------------------------------
def advisory_lock_holder(url: str, name: str) -> int:
    store = Store.open(url)
    key = store.sender_key(name)
    store.close()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        pid = conn.execute(
            sa.text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid = :hi AND objid = :lo"
            ),
            {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF},
        ).scalar_one()
    engine.dispose()
    return int(pid)


def wait_until_free(store: Store, name: str) -> None:
    for _ in range(50):  # the server may need a moment to end the terminated session
        try:
            with store.sender_lock(name):
                return
        except StoreError:
            time.sleep(0.1)
    pytest.fail(f"sender lock {name} still held after its session was terminated")


@pytest.mark.postgres
def test_sender_lock_survives_its_connection_being_terminated(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"edition-{uuid.uuid4().hex}"  # unique: advisory locks are database-wide
    store, other = Store.open(pg_url), Store.open(pg_url)
    try:
        with caplog.at_level(logging.WARNING, logger="newsletter.store"), store.sender_lock(name):
            terminate(pg_url, advisory_lock_holder(pg_url, name))
            plan(store)  # the store itself keeps working on its other connections
        assert "its database connection was lost" in caplog.text
        assert "the server has released the lock" in caplog.text
        wait_until_free(other, name)
    finally:
        store.close()
        other.close()


@pytest.mark.postgres
def test_a_dead_lock_connection_never_hides_the_error_that_ended_the_block(pg_url: str) -> None:
    name = f"edition-{uuid.uuid4().hex}"
    store = Store.open(pg_url)
    try:
        with pytest.raises(RuntimeError, match="the real problem"), store.sender_lock(name):
            terminate(pg_url, advisory_lock_holder(pg_url, name))
            raise RuntimeError("the real problem")
        wait_until_free(store, name)
    finally:
        store.close()


@pytest.mark.postgres
def test_a_pooled_connection_dropped_while_idle_is_replaced(pg_url: str) -> None:
    store = Store.open(pg_url)
    try:
        with store.engine.connect() as conn:
            pid = conn.execute(sa.select(sa.func.pg_backend_pid())).scalar_one()
        terminate(pg_url, pid)  # the connection now sits dead in the pool
        time.sleep(0.2)
        assert store.counts()["ledger"] == 0  # pre-ping replaced it
    finally:
        store.close()


@pytest.mark.postgres
def test_a_connection_lost_mid_statement_is_a_clear_error(pg_url: str) -> None:
    store = Store.open(pg_url)
    admin = sa.create_engine(pg_url)
    outcome: list[BaseException | object] = []

    def read() -> None:
        try:
            outcome.append(store.ledger_rows(ED))
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    try:
        with admin.connect() as holder:
            holder.execute(sa.text("LOCK TABLE ledger IN ACCESS EXCLUSIVE MODE"))
            me = holder.execute(sa.select(sa.func.pg_backend_pid())).scalar_one()
            reader = threading.Thread(target=read)
            reader.start()
            blocked: list[int] = []
            for _ in range(100):
                blocked = list(
                    holder.execute(
                        sa.text(
                            "SELECT pid FROM pg_stat_activity WHERE :me = ANY(pg_blocking_pids(pid))"
                        ),
                        {"me": me},
                    ).scalars()
                )
                if blocked:
                    break
                time.sleep(0.05)
            assert len(blocked) == 1
            terminate(pg_url, blocked[0])
            reader.join(10)
            holder.rollback()
        assert len(outcome) == 1 and isinstance(outcome[0], ConnectionLost), outcome
        message = str(outcome[0])
        assert message.startswith("lost the connection to the database postgresql+psycopg://")
        assert "everything recorded so far is kept; run the same command again" in message
        assert store.ledger_rows(ED) == []  # and the next call gets a fresh connection
    finally:
        store.close()
        admin.dispose()


@pytest.mark.postgres
def test_a_connection_terminated_while_it_opens_is_lost_not_refused(pg_url: str) -> None:
    # A sender's pool may open a connection just as an operator (or a failover) terminates
    # the sessions: that is a lost connection its callers try again, not a wrong URL.
    store = Store.open(pg_url)
    kill = [True]

    def terminated_on_open(dbapi_conn: object, _record: object) -> None:
        if kill[0]:
            kill[0] = False
            cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
            cur.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    try:
        store.engine.dispose()  # the next call opens a new connection
        sa.event.listen(store.engine, "connect", terminated_on_open)
        with pytest.raises(ConnectionLost, match="run the same command again"):
            store.ledger_rows(ED)
        assert store.ledger_rows(ED) == []  # the next attempt opens a fresh one
    finally:
        store.close()


def test_a_refused_connection_still_says_check_the_url() -> None:
    with pytest.raises(
        StoreError, match=r"cannot open the database .*check NEWSLETTER_DATABASE_URL"
    ):
        Store.open("postgresql+psycopg://nobody@127.0.0.1:1/none")


# --- 3. concurrent first use -------------------------------------------------------------------
def newsletter_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(
        NEWSLETTER_SETTINGS_FILE=os.devnull,
        NEWSLETTER_DATABASE_URL=db_url,
        NEWSLETTER_SEEDS_DIR=str(SEEDS),
        NEWSLETTER_SUBSCRIBERS_FILE=str(EXAMPLE_SUBSCRIBERS),
        NEWSLETTER_OUTBOX_DIR=str(tmp_path / "outbox"),
        NEWSLETTER_REFERENCE_DATE="2026-11-21",
        NEWSLETTER_LOG_LEVEL="WARNING",
    )
    return env


def run_at_once(n: int, env: dict[str, str], *args: str) -> list[subprocess.CompletedProcess[str]]:
    procs = [start_cli(env, *args) for _ in range(n)]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def test_racing_first_writes_are_idempotent(db_url: str) -> None:
    """Six stores (six engines) on one fresh database do the insert-if-missing writes at the
    same moment: no IntegrityError, every row once, exactly one `ingested`."""
    listing = read_dump(SEEDS / "001_5dda9fa4defc14f9.txt", reference=REFERENCE)
    stores = [Store.open(db_url) for _ in range(6)]
    start = threading.Barrier(len(stores))
    statuses: list[str] = []
    errors: list[BaseException] = []

    def work(store: Store) -> None:
        try:
            start.wait()
            statuses.append(store.save_listing(listing, now=NOW).status)
            store.set_last_firing("UTC|07:00", NOW)
            plan(store)
            skip = LedgerOutcome("bob@example.org", "skipped", reason="nothing matched")
            store.record_outcomes(ED, [skip], now=NOW)
            store.record_history("ada@example.org", ED, ["a", "b"], now=NOW)
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in stores]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert sorted(statuses) == ["ingested"] + ["unchanged"] * 5
        counts = stores[0].counts()
        assert counts["listings"] == 1 and counts["papers"] == 56
        assert counts["ledger"] == 2 and counts["history"] == 2 and counts["schedule_state"] == 1
        assert stores[0].last_firing("UTC|07:00") == NOW
    finally:
        for s in stores:
            s.close()


@pytest.mark.slow
def test_eight_ingests_at_once_on_a_fresh_store(db_url: str, tmp_path: Path) -> None:
    runs = run_at_once(8, newsletter_env(db_url, tmp_path), "ingest", "--json")
    for r in runs:
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    statuses: dict[str, list[str]] = {}
    for r in runs:
        for f in json.loads(r.stdout)["files"]:
            statuses.setdefault(Path(f["path"]).name, []).append(f["status"])
    assert len(statuses) == 4
    for name, seen in statuses.items():  # each listing stored by exactly one process
        assert sorted(seen) == ["ingested"] + ["unchanged"] * 7, name
    store = Store.open(db_url)
    try:
        counts = store.counts()
    finally:
        store.close()
    assert counts["listings"] == 4 and counts["papers"] == 211
    assert counts["listing_entries"] == 56 + 78 + 65 + 52


@pytest.mark.slow
def test_four_run_once_at_once_on_a_fresh_store(db_url: str, tmp_path: Path) -> None:
    runs = run_at_once(4, newsletter_env(db_url, tmp_path), "run", "--once")
    for r in runs:
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    store = Store.open(db_url)
    try:
        sent = [r for ed in store.listing_dates() for r in store.ledger_rows(ed)]
        counts = store.counts()
    finally:
        store.close()
    assert counts["listings"] == 4 and counts["schedule_state"] >= 1
    messages = [p for p in (tmp_path / "outbox").rglob("*") if p.is_file()]
    delivered = [r for r in sent if r.status == "sent"]
    assert delivered and len(messages) == len(delivered)  # nobody got an edition twice


# --- 4. no password in what the program prints -------------------------------------------------
SECRET_URLS = [
    "postgresql+nosuchdriver://u:s3cret@h/db",
    "postgresql+psycopg://u:s3cret@127.0.0.1:1/db",
]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_a_store_error_never_shows_the_password(url: str) -> None:
    with pytest.raises(StoreError) as info:
        Store.open(url)
    message = str(info.value)
    assert "s3cret" not in message
    assert "u:***@" in message and "NEWSLETTER_DATABASE_URL" in message


@pytest.mark.slow
@pytest.mark.parametrize("url", SECRET_URLS)
def test_the_cli_never_prints_the_password(url: str, tmp_path: Path) -> None:
    env = newsletter_env(url, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "newsletter", "papers"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2  # the database at start: a configuration error
    assert "NEWSLETTER_DATABASE_URL" in result.stderr and "u:***@" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout


def test_safe_url_masks_every_form_of_password() -> None:
    assert safe_url("postgresql+psycopg://u:s3cret@h:5432/db") == (
        "postgresql+psycopg://u:***@h:5432/db"
    )
    assert "s3cret" not in safe_url("postgresql://u@h/db?password=s3cret&sslmode=require")
    assert safe_url("sqlite:///var/newsletter.db") == "sqlite:///var/newsletter.db"
    assert (
        safe_url("postgresql://postgres@127.0.0.1/test") == "postgresql://postgres@127.0.0.1/test"
    )
    unparseable = "not a url: x://u:s3cret@h/db"
    assert "s3cret" not in safe_url(unparseable)
    assert redact("cannot use 'pg://u:p@ss@h/db' (x)") == "cannot use 'pg://u:***@h/db' (x)"
