"""The store when things go wrong, against the real databases: a lock held by another session,
a connection the server terminates, and a database URL with a password in an error message."""

from __future__ import annotations

import contextlib
import datetime as dt
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
from newsletter.store import Store, _lock_key, redact, safe_url

from .conftest import ROOT, SEEDS
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
    store.plan(ED, "ada@example.org", message_id="<m@x>", paper_ids=["a"], now=NOW)


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
        "NEWSLETTER_SUBSCRIBERS_FILE": str(ROOT / "config" / "subscribers.yaml"),
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
    key = _lock_key(name)
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


# --- helpers for subprocesses -------------------------------------------------------------
def newsletter_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(
        NEWSLETTER_SETTINGS_FILE=str(tmp_path / "no-settings.toml"),
        NEWSLETTER_DATABASE_URL=db_url,
        NEWSLETTER_SEEDS_DIR=str(SEEDS),
        NEWSLETTER_SUBSCRIBERS_FILE=str(ROOT / "config" / "subscribers.yaml"),
        NEWSLETTER_OUTBOX_DIR=str(tmp_path / "outbox"),
        NEWSLETTER_REFERENCE_DATE="2026-11-21",
        NEWSLETTER_LOG_LEVEL="WARNING",
    )
    return env


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
    assert result.returncode == 1
    assert "StoreError" in result.stderr and "u:***@" in result.stderr
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
