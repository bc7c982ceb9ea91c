"""Hostile data from the source: NaN, counts no column holds, control characters, and answers
the store refuses. Each reaches the real parser, a real store (SQLite and PostgreSQL), the
local Daily Papers server over HTTP and the reader's feed under uvicorn; none may stop a pass
from sending the stored editions, nor leave a dump behind that trips every later ingest."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import sqlite3
import xml.dom.minidom
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import feedparser
import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from newsletter import fetch
from newsletter.cli import AppContext, cli
from newsletter.dailypapers import MAX_COUNT, parse_daily_papers, strip_control_chars
from newsletter.deliver import send_edition
from newsletter.errors import DatabaseTimeout, IngestError
from newsletter.fetch import DayOutcome, SourceClient, fetch_days
from newsletter.ingest import json_dump_name, read_dump
from newsletter.links import Links
from newsletter.pipeline import ingest_folder
from newsletter.schedule import run_pass
from newsletter.settings import Settings
from newsletter.store import Store
from newsletter.subscribers import load_subscribers
from newsletter.tokens import Tokens, signing_keys
from newsletter.web import create_app

from .conftest import SEEDS
from .dailyapi import DailyApi, api_entries, body
from .webserver import LiveServer

MAR17, MAR18 = dt.date(2026, 3, 17), dt.date(2026, 3, 18)
NOW = dt.datetime(2026, 3, 18, 18, 0, tzinfo=dt.UTC)
SEED_MAR17 = SEEDS / "002_2b37b74c05805532.txt"
SEED_MAR14 = SEEDS / "003_7dc8c6cc3b596c67.txt"
N17 = 78
KEY = "test-signing-key-" + "k" * 32
SUBS = """\
defaults: {send_at: "07:00", timezone: Europe/Berlin}
subscribers:
  - email: berlin@example.org
    topics: [{name: RL, keywords: ["reinforcement learning", "language model", "diffusion"]}]
"""
BERLIN_MORNING = dt.datetime(2026, 3, 19, 6, 5, tzinfo=dt.UTC)  # 07:05 in Berlin: asks Mar 18


def entries(**first: Any) -> list[dict[str, Any]]:
    """The Mar 17 seed as the API answers it, with fields of its top paper overridden."""
    answer = api_entries(SEED_MAR17)
    answer[-1]["paper"].update(first)  # the API lists the top paper last
    return answer


def raw(answer: list[dict[str, Any]], token: str, literal: str) -> bytes:
    """The answer with the JSON string `"token"` replaced by a bare `literal` (NaN, 1e400...),
    which json.dumps cannot write."""
    data = body(answer)
    assert data.count(f'"{token}"'.encode()) == 1
    return data.replace(f'"{token}"'.encode(), literal.encode())


def refuse_titles_with(store: Store, word: str) -> None:
    """Make the database refuse any paper whose title holds `word`: a trigger raising a data
    error, as the server does for data it cannot keep (NUL in text, a number out of range).
    It stands for what no check foresaw; the store is real, its refusal too."""
    with store.engine.begin() as conn:
        if store.dialect == "sqlite":
            conn.execute(
                sa.text(
                    "CREATE TRIGGER refuse BEFORE INSERT ON papers "
                    f"WHEN NEW.title LIKE '%{word}%' BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
        else:
            conn.execute(
                sa.text(
                    "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                    f"IF NEW.title LIKE '%{word}%' THEN "
                    "RAISE EXCEPTION 'refused' USING ERRCODE = '22P05'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                sa.text(
                    "CREATE TRIGGER refuse BEFORE INSERT ON papers "
                    "FOR EACH ROW EXECUTE FUNCTION refuse()"
                )
            )


# --- the parser ------------------------------------------------------------------------------
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_with_their_place(literal: str) -> None:
    data = raw(entries(upvotes="HERE"), "HERE", literal)
    with pytest.raises(IngestError) as exc:
        parse_daily_papers(data, source="u")
    err = exc.value
    assert err.line == 1 and f"not valid JSON: {literal} is no JSON number (column " in err.reason
    column = int(err.reason.rsplit("column ", 1)[1].rstrip(")"))
    assert data.decode()[column - 1 :].startswith(literal)


def test_a_nan_inside_a_string_is_text_and_the_bare_one_is_located() -> None:
    day = parse_daily_papers(b'[{"paper": {"title": "NaN: Infinity", "upvotes": 2}}]', source="u")
    assert day.papers[0].title == "NaN: Infinity" and day.papers[0].upvotes == 2
    data = b'[\n {"title": "a \\" NaN \\\\", "summary": "Infinity",\n  "upvotes": NaN}]'
    with pytest.raises(IngestError) as exc:
        parse_daily_papers(data, source="u")
    assert str(exc.value) == "u, line 3: not valid JSON: NaN is no JSON number (column 14)"


@pytest.mark.parametrize(
    ("literal", "shown"),
    [
        ("1e400", "inf"),
        ("-1", "-1"),
        ("3.5", "3.5"),
        (str(MAX_COUNT + 1), str(MAX_COUNT + 1)),
        ("99999999999999999999999", "99999999999999999999999"),
    ],
)
def test_a_count_no_column_holds_is_left_out_with_a_warning(literal: str, shown: str) -> None:
    day = parse_daily_papers(raw(entries(upvotes="HERE"), "HERE", literal), source="u")
    top = day.papers[-1]
    assert top.upvotes is None and all(p.upvotes is not None for p in day.papers[:-1])
    assert any(f"has upvotes {shown}, which is no count" in w for w in day.warnings)


def test_a_whole_count_is_kept_as_an_int() -> None:
    day = parse_daily_papers(b'[{"title": "A", "upvotes": 42.0}, {"title": "B", "upvotes": '
                             + str(MAX_COUNT).encode() + b"}]", source="u")  # fmt: skip
    assert [p.upvotes for p in day.papers] == [42, MAX_COUNT]
    assert isinstance(day.papers[0].upvotes, int) and not day.warnings


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"[" * 100_000, "nested too deeply"), (b"[" + b"7" * 5000 + b"]", "4300 digits")],
)
def test_json_python_cannot_hold_is_refused_not_raised(data: bytes, reason: str) -> None:
    with pytest.raises(IngestError, match="not usable JSON") as exc:
        parse_daily_papers(data, source="u")
    assert reason in str(exc.value)


def test_control_characters_leave_every_string() -> None:
    nasty = "\x00\x07\x08\x1b\x7f\x85\ud800\ufffe"
    answer = [{"paper": {
        "id": "2403.00001", "title": f"Bell{nasty} title", "summary": f"line\none\t{nasty}two",
        "authors": [{"name": f"Ada{nasty} Lovelace"}], "githubRepo": f"https://x.org/{nasty}a",
    }}]  # fmt: skip
    [paper] = parse_daily_papers(json.dumps(answer), source="u").papers
    assert paper.title == "Bell title" and paper.summary == "line one two"
    assert paper.authors == ("Ada Lovelace",) and paper.links == ("https://x.org/a",)
    assert strip_control_chars("tab\tline\nreturn\r\u00e9\u4e2d\U0001f600") == (
        "tab\tline\nreturn\r\u00e9\u4e2d\U0001f600"
    )


def test_a_text_dump_drops_control_characters(tmp_path: Path) -> None:
    lines = SEED_MAR17.read_text(encoding="utf-8").split("\n")
    first = read_dump(SEED_MAR17, reference=MAR17).entries[0].line - 1
    lines[first] = "Bell \x07and back\x08space " + lines[first]
    dump = tmp_path / "bell.txt"
    dump.write_text("\n".join(lines), encoding="utf-8")
    listing = read_dump(dump, reference=MAR17)
    assert not any(
        set(e.paper.title + e.paper.abstract) & {"\x07", "\x08"} for e in listing.entries
    )
    assert any(e.paper.title.startswith("Bell and backspace ") for e in listing.entries)


# --- fetching over HTTP ----------------------------------------------------------------------
@pytest.fixture
def api() -> Iterator[DailyApi]:
    with DailyApi() as server:
        yield server


@pytest.fixture
def seeds(tmp_path: Path) -> Path:
    folder = tmp_path / "seeds"
    folder.mkdir()
    return folder


@pytest.fixture
def fetch_settings(make_settings: Callable[..., Settings], api: DailyApi, seeds: Path) -> Settings:
    return make_settings(source_url=api.url, seeds_dir=seeds, database_url="unused")


def run_fetch(settings: Settings, store: Store, *dates: dt.date) -> list[DayOutcome]:
    client = SourceClient(settings.source_url, backoff=0.01, timeout=5.0)
    return asyncio.run(fetch_days(settings, store, list(dates), now=NOW, client=client))


def test_a_nan_answer_is_that_days_failure_and_writes_nothing(
    api: DailyApi, fetch_settings: Settings, store: Store, seeds: Path
) -> None:
    api.add(MAR17, raw(entries(upvotes="HERE"), "HERE", "NaN"))
    api.add(MAR18, body(api_entries(SEED_MAR17)))
    bad, good = run_fetch(fetch_settings, store, MAR17, MAR18)
    assert (bad.status, good.status, good.papers) == ("failed", "fetched", N17)
    assert bad.error is not None and bad.error.startswith(f"{api.url}?date=2026-03-17: line 1: ")
    assert "NaN is no JSON number" in bad.error and "nothing stored" in bad.error
    assert [p.name for p in seeds.iterdir()] == [json_dump_name(MAR18)]
    assert store.listing_dates() == [MAR18]


@pytest.mark.parametrize("literal", ["99999999999999999999999", str(2**31), "1e400"])
def test_a_count_too_big_for_the_store_stores_the_day_without_it(
    api: DailyApi, fetch_settings: Settings, store: Store, seeds: Path, literal: str
) -> None:
    api.add(MAR17, raw(entries(upvotes="HERE"), "HERE", literal))
    [outcome] = run_fetch(fetch_settings, store, MAR17)
    assert (outcome.status, outcome.papers) == ("fetched", N17)
    listing = store.listing(MAR17)
    assert listing is not None
    upvotes = sorted((e.paper.upvotes for e in listing.entries), key=lambda u: u is None)
    assert upvotes[-1] is None and None not in upvotes[:-1]
    # the dump written is read back by every later ingest without a hitch
    [row] = ingest_folder(store, fetch_settings, seeds, now=NOW)
    assert (row.status, row.error) == ("unchanged", None)


def test_nul_and_bells_from_the_source_never_reach_the_store(
    api: DailyApi, fetch_settings: Settings, store: Store
) -> None:
    api.add(MAR17, body(entries(title="Offline RL\x00 with nul, \x07 bell and \x08 backspace")))
    [outcome] = run_fetch(fetch_settings, store, MAR17)
    assert outcome.status == "fetched"
    titles = [p.title for p in store.all_papers()]
    assert "Offline RL with nul, bell and backspace" in titles
    assert not any(set(t) & {"\x00", "\x07", "\x08"} for t in titles)


def test_an_answer_the_store_refuses_leaves_no_dump_and_the_other_days_go_on(
    api: DailyApi,
    fetch_settings: Settings,
    store: Store,
    seeds: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    refuse_titles_with(store, "poison")
    api.add(MAR17, body(entries(title="A poison title")))
    api.add(MAR18, body(api_entries(SEED_MAR17)))
    bad, good = run_fetch(fetch_settings, store, MAR17, MAR18)
    assert (bad.status, good.status) == ("failed", "fetched")
    assert bad.error is not None and bad.error.startswith(f"{api.url}?date=2026-03-17: ")
    assert "the store refused the answer" in bad.error and "no dump written" in bad.error
    assert [p.name for p in seeds.iterdir()] == [json_dump_name(MAR18)]
    assert store.listing_dates() == [MAR18] and store.fetched_day(MAR17) is None
    assert "Traceback" in caplog.text or any(r.exc_info for r in caplog.records)  # a bug: logged


def test_the_fetch_command_reports_a_nan_day_and_goes_on(
    api: DailyApi, seeds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(AppContext, "now", lambda _self: NOW)  # the command's only clock
    api.add(MAR17, raw(entries(upvotes="HERE"), "HERE", "NaN"))
    api.add(MAR18, body(api_entries(SEED_MAR17)))
    env = {
        "NEWSLETTER_SOURCE_URL": api.url,
        "NEWSLETTER_SEEDS_DIR": str(seeds),
        "NEWSLETTER_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "NEWSLETTER_TIMEZONE": "UTC",
    }
    args = ["fetch", "--since", "2026-03-17", "--json"]
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 1  # a day failed; not a traceback
    days = {d["date"]: d for d in json.loads(result.stdout)["days"]}
    assert list(days) == ["2026-03-17", "2026-03-18"]
    assert days["2026-03-17"]["status"] == "failed" and days["2026-03-18"]["status"] == "fetched"
    assert "NaN is no JSON number" in days["2026-03-17"]["error"]


@contextlib.contextmanager
def listings_held(db_url: str) -> Iterator[None]:
    """Another session holding the listings table, so that storing a day waits for it."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as pg, pg.begin() as transaction:
            pg.execute(sa.text("LOCK TABLE listings IN ACCESS EXCLUSIVE MODE"))
            yield
            transaction.rollback()
    finally:
        engine.dispose()


def test_a_database_timeout_is_raised_not_blamed_on_the_day_or_the_folder(
    api: DailyApi, fetch_settings: Settings, db_url: str, seeds: Path
) -> None:
    """The store's own trouble stays fatal: a lock timeout is an OSError too, and used to be
    reported as "cannot write <dump>; check NEWSLETTER_SEEDS_DIR"."""
    api.add(MAR17, body(api_entries(SEED_MAR17)))
    store = Store.open(db_url, lock_timeout=0.3)
    try:
        with listings_held(db_url), pytest.raises(DatabaseTimeout, match="stayed locked"):
            run_fetch(fetch_settings, store, MAR17)
        assert list(seeds.iterdir()) == []  # stored first: nothing written for the day
        [outcome] = run_fetch(fetch_settings, store, MAR17)  # the lock gone, the day comes
        assert outcome.status == "fetched"
    finally:
        store.close()


# --- a daemon pass ---------------------------------------------------------------------------
@pytest.fixture
def daemon_settings(
    make_settings: Callable[..., Settings], api: DailyApi, seeds: Path, tmp_path: Path
) -> Settings:
    subs = tmp_path / "subscribers.yaml"
    subs.write_text(SUBS, encoding="utf-8")
    (seeds / SEED_MAR17.name).write_bytes(SEED_MAR17.read_bytes())  # the stored edition
    return make_settings(
        source_url=api.url,
        seeds_dir=seeds,
        subscribers_file=subs,
        fetch=True,
        catch_up=True,
        database_url="unused",
    )


def daemon_pass(settings: Settings, store: Store, now: dt.datetime = BERLIN_MORNING) -> list[str]:
    subs = load_subscribers(settings.subscribers_file)
    decisions = asyncio.run(run_pass(settings, store, subs, lambda: now)).decisions
    return [f"{d.action}:{d.edition}" for d in decisions]


@pytest.mark.parametrize("poison", ["nan", "refused"])
def test_a_poisoned_day_still_sends_the_stored_edition_pass_after_pass(
    api: DailyApi,
    daemon_settings: Settings,
    store: Store,
    seeds: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    poison: str,
) -> None:
    monkeypatch.setattr(fetch, "BACKOFF", 0.01)
    if poison == "nan":
        api.add(MAR18, raw(entries(upvotes="HERE"), "HERE", "NaN"))
    else:
        refuse_titles_with(store, "poison")
        api.add(MAR18, body(entries(title="A poison title")))
    caplog.set_level(logging.INFO, "newsletter")
    assert daemon_pass(daemon_settings, store) == ["send:2026-03-17"]
    assert f"fetch 2026-03-18 failed: {api.url}?date=2026-03-18: " in caplog.text
    assert [p.name for p in seeds.iterdir()] == [SEED_MAR17.name]  # no poison file left
    # the next pass, fetching off: nothing in the folder trips it
    quiet = daemon_settings.model_copy(update={"fetch": False})
    assert daemon_pass(quiet, store, BERLIN_MORNING + dt.timedelta(minutes=5)) == ["not-due:None"]
    assert {r.status for r in ingest_folder(store, quiet, seeds, now=NOW)} == {"unchanged"}


def test_a_huge_count_sends_the_fetched_day(
    api: DailyApi, daemon_settings: Settings, store: Store, seeds: Path
) -> None:
    api.add(MAR18, raw(entries(upvotes="HERE"), "HERE", "99999999999999999999999"))
    assert daemon_pass(daemon_settings, store) == ["send:2026-03-18"]
    assert json_dump_name(MAR18) in {p.name for p in seeds.iterdir()}
    quiet = daemon_settings.model_copy(update={"fetch": False})
    assert daemon_pass(quiet, store, BERLIN_MORNING + dt.timedelta(minutes=5)) == ["not-due:None"]
    assert {r.status for r in ingest_folder(store, quiet, seeds, now=NOW)} == {"unchanged"}


# --- the seeds folder ------------------------------------------------------------------------
def test_poisoned_dumps_left_by_an_older_version_never_stop_the_others(
    make_settings: Callable[..., Settings], store: Store, seeds: Path
) -> None:
    """A NaN dump, a NUL and a bell in a title, a count no column holds: written by a version
    that did not check them. The NUL one was a raw DataError on PostgreSQL that stopped the
    text dumps of the same folder."""
    settings = make_settings(seeds_dir=seeds, database_url="unused")
    (seeds / json_dump_name(dt.date(2026, 3, 16))).write_bytes(
        raw(entries(upvotes="HERE"), "HERE", "NaN")
    )
    nul = entries(title="Offline RL\x00 with nul", upvotes=99999999999999999999999)
    nul[0]["paper"]["title"] = "Bell \x07 and backspace \x08 in a title"
    (seeds / json_dump_name(MAR18)).write_bytes(body(nul))
    for seed in (SEED_MAR17, SEED_MAR14):
        (seeds / seed.name).write_bytes(seed.read_bytes())
    rows = {Path(r.path).name: r for r in ingest_folder(store, settings, seeds, now=NOW)}
    nan_row = rows[json_dump_name(dt.date(2026, 3, 16))]
    assert nan_row.status == "rejected" and "NaN is no JSON number" in (nan_row.error or "")
    assert nan_row.error is not None and nan_row.error.startswith(str(seeds))
    assert rows[json_dump_name(MAR18)].status == "ingested"
    assert rows[SEED_MAR17.name].status == rows[SEED_MAR14.name].status == "ingested"
    titles = {p.title for p in store.all_papers()}
    assert {"Offline RL with nul", "Bell and backspace in a title"} <= titles
    assert not any(set(t) & {"\x00", "\x07", "\x08"} for t in titles)


def test_a_file_the_store_refuses_is_rejected_and_the_others_ingest(
    make_settings: Callable[..., Settings], store: Store, seeds: Path
) -> None:
    settings = make_settings(seeds_dir=seeds, database_url="unused")
    refuse_titles_with(store, "poison")
    (seeds / json_dump_name(MAR18)).write_bytes(body(entries(title="A poison title")))
    for seed in (SEED_MAR17, SEED_MAR14):
        (seeds / seed.name).write_bytes(seed.read_bytes())
    rows = {Path(r.path).name: r for r in ingest_folder(store, settings, seeds, now=NOW)}
    refused = rows[json_dump_name(MAR18)]
    assert refused.status == "rejected" and refused.error is not None
    assert refused.error.startswith(f"{seeds / json_dump_name(MAR18)}: not ingested: unexpected ")
    assert "fix or remove this file" in refused.error
    assert rows[SEED_MAR17.name].status == rows[SEED_MAR14.name].status == "ingested"
    assert MAR18 not in store.listing_dates()


# --- the reader's feed -----------------------------------------------------------------------
def test_the_feed_stays_valid_xml_with_control_characters_in_the_store(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store filled before ingest dropped control characters: the feed drops them too."""
    monkeypatch.chdir(tmp_path)
    server = LiveServer()
    settings = make_settings(public_base_url=server.url, signing_key=KEY)
    store = Store.open(settings.database_url)
    try:
        text = read_dump(SEED_MAR17, reference=MAR17)
        bells = tuple(
            dataclasses.replace(
                e, paper=dataclasses.replace(e.paper, title=f"{e.paper.title} \x07\x08\x1b")
            )
            for e in text.entries
        )
        store.save_listing(dataclasses.replace(text, entries=bells), now=NOW)
        subs_file = tmp_path / "subscribers.yaml"
        subs_file.write_text(SUBS, encoding="utf-8")
        subs = load_subscribers(subs_file)
        asyncio.run(send_edition(settings, store, subs, MAR17, now=lambda: NOW))
        row = store.ledger_row(MAR17, "berlin@example.org")
        assert row is not None and row.status == "sent" and row.paper_ids
        server.start(create_app(settings, store, subscribers=lambda: subs))
        [reader] = store.readers().values()
        tokens = Tokens(signing_keys(settings), max_age_days=settings.link_max_age_days)
        r = httpx.get(Links(server.url, tokens).feed(reader.reader_id), timeout=10)
        assert r.status_code == 200
        xml.dom.minidom.parseString(r.content)  # raises on a control character
        feed = feedparser.parse(r.content)
        assert feed.bozo == 0 and feed.entries
        titles = {e.paper.id: e.paper.title for e in text.entries}
        assert sorted(e.title for e in feed.entries) == sorted(titles[i] for i in row.paper_ids)
    finally:
        server.stop()
        store.close()
