"""Shared fixtures: a clean environment, settings, and a real store on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from newsletter.settings import BUNDLED, SUBSCRIBERS_FILE, Settings
from newsletter.store import Store

ROOT = Path(__file__).resolve().parent.parent
SEEDS = BUNDLED / "seeds"
EXAMPLE_SUBSCRIBERS = BUNDLED / SUBSCRIBERS_FILE
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE = dt.date(2026, 11, 21)
PG_URL = os.environ.get(
    "NEWSLETTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() == "true"
NO_SOURCE = "http://127.0.0.1:9/api/daily_papers"  # the discard port: refused at once


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's NEWSLETTER_* variables and settings file out of the tests."""
    for key in list(os.environ):
        if key.startswith("NEWSLETTER_") and key != "NEWSLETTER_TEST_POSTGRES_URL":
            monkeypatch.delenv(key)
    monkeypatch.setenv("NEWSLETTER_SETTINGS_FILE", os.devnull)
    # Nothing in the suite may reach the real source: fetching is off, and a test that turns
    # it on without its own server gets a port where nothing listens.
    monkeypatch.setenv("NEWSLETTER_FETCH", "false")
    monkeypatch.setenv("NEWSLETTER_SOURCE_URL", NO_SOURCE)


def _postgres_reachable() -> str | None:
    try:
        engine = sa.create_engine(PG_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any failure means "not reachable": report it as the reason
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"


_PG_PROBLEM: list[str | None] = []


def require_postgres() -> None:
    """Skip (outside CI) or fail (in CI) when PostgreSQL does not answer."""
    if not _PG_PROBLEM:
        _PG_PROBLEM.append(_postgres_reachable())
    problem = _PG_PROBLEM[0]
    if problem is None:
        return
    message = f"PostgreSQL not reachable at {PG_URL}: {problem}"
    if IN_CI:
        pytest.fail(message + " (CI must run the PostgreSQL tests)")
    pytest.skip(message)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    # A test's own subprocess (killed on purpose) may still hold a lock for a moment: wait a
    # little, never for ever, and never fail the test over its clean-up (a leftover schema in
    # the test database harms nothing; the next run uses a fresh name).
    try:
        with admin.begin() as conn:
            conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    except sa.exc.OperationalError:
        pass
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every store test runs on both backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store.open(db_url)
    yield s
    s.close()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings isolated from env, .env and the repo's settings file."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": f"sqlite:///{tmp_path / 'newsletter.db'}",
            "seeds_dir": SEEDS,
            "subscribers_file": EXAMPLE_SUBSCRIBERS,
            "outbox_dir": tmp_path / "outbox",
            "preview_dir": tmp_path / "preview",
            "reference_date": REFERENCE,
            "fetch": False,
            "source_url": NO_SOURCE,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()
