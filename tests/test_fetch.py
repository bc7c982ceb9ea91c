"""Fetching days from the Daily Papers API, against a local server in the API's shape."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from newsletter import fetch
from newsletter.cli import AppContext, cli
from newsletter.dailypapers import parse_daily_papers
from newsletter.errors import IngestError
from newsletter.fetch import DayOutcome, SourceClient, fetch_days, retry_after
from newsletter.ingest import json_dump_date, json_dump_name, parse_json_dump, read_dump
from newsletter.pipeline import ingest_folder, selections_for
from newsletter.render import Renderer, author_line, short_name
from newsletter.schedule import run_pass
from newsletter.settings import Settings
from newsletter.store import Store
from newsletter.subscribers import load_subscribers

from .conftest import EXAMPLE_SUBSCRIBERS, NO_SOURCE, SEEDS
from .dailyapi import DailyApi, Reply, api_entries, arxiv_id, body

MAR17 = dt.date(2026, 3, 17)
N17, N14 = 78, 65  # papers in the Mar 17 and Mar 14 seed dumps
NOW = dt.datetime(2026, 3, 17, 18, 0, tzinfo=dt.UTC)
SEED_MAR17 = SEEDS / "002_2b37b74c05805532.txt"
SEED_MAR14 = SEEDS / "003_7dc8c6cc3b596c67.txt"


@pytest.fixture
def api() -> Iterator[DailyApi]:
    with DailyApi() as server:
        yield server


@pytest.fixture
def seeds(tmp_path: Path) -> Path:
    return tmp_path / "seeds"


@pytest.fixture
def fetch_settings(make_settings: Callable[..., Settings], api: DailyApi, seeds: Path) -> Settings:
    return make_settings(source_url=api.url, seeds_dir=seeds)


@pytest.fixture
def local_store(fetch_settings: Settings) -> Iterator[Store]:
    s = Store.open(fetch_settings.database_url)
    yield s
    s.close()


def quick(api: DailyApi, **kw: Any) -> SourceClient:
    """A client with short waits: tests should not sleep through real backoff."""
    return SourceClient(api.url, **{"backoff": 0.01, "timeout": 5.0, **kw})


def run_fetch(
    settings: Settings, store: Store, *dates: dt.date, client: SourceClient | None = None
) -> list[DayOutcome]:
    return asyncio.run(fetch_days(settings, store, list(dates), now=NOW, client=client))


# --- the parser ------------------------------------------------------------------------------
def test_the_parser_keeps_what_is_there_and_tolerates_what_is_not() -> None:
    answer = [
        {"paper": {"id": "2403.03950", "title": "A", "summary": "x\ny", "upvotes": 3,
                   "authors": [{"name": " Ada  Lovelace "}, {"hidden": True}, "Grace Hopper"],
                   "githubRepo": "https://github.com/a/b", "projectPage": "javascript:alert(1)"}},
        {"title": "Flat entry, no paper object", "summary": "s"},
        {"paper": {"id": "not-arxiv", "title": "B", "upvotes": True}},
        {"paper": {"summary": "no title anywhere"}},
    ]  # fmt: skip
    day = parse_daily_papers(json.dumps(answer), source="u")
    a, flat, b = day.papers
    assert (a.arxiv_id, a.summary, a.upvotes) == ("2403.03950", "x y", 3)
    assert a.authors == ("Ada Lovelace", "Grace Hopper")
    assert a.links == ("https://github.com/a/b",)
    assert (flat.title, flat.summary, flat.arxiv_id, flat.authors) == (
        "Flat entry, no paper object", "s", None, ()
    )  # fmt: skip
    assert (b.arxiv_id, b.upvotes, b.summary) == (None, None, "")
    assert any("entry 4 has no title" in w for w in day.warnings)
    assert any("'not-arxiv'" in w and "no arXiv id" in w for w in day.warnings)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'[{"paper": {"title": "A"}}, {"pap', "truncated JSON"),
        (b"<!doctype html><html>rate limited</html>", "looks like an HTML page"),
        (b'{"error": "Invalid date"}', "expected a JSON list of papers, got a dict: Invalid date"),
        (b"[1, 2]", "entry 1 is a int"),
        (b"", "empty"),
        (b"\xff\xfe[]", "not UTF-8"),
        (  # a renamed field: not a day without papers
            b'[{"paper": {"paperTitle": "A", "summary": "s"}}, {"paperTitle": "B"}]',
            "none of its 2 entries has a title (looked for `paper.title` and `title`); the "
            "source's format may have changed: nothing stored",
        ),
    ],
)
def test_a_malformed_answer_is_refused_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(IngestError, match=r"^u: ") as exc:
        parse_daily_papers(data, source="u")
    assert reason in str(exc.value)


def test_a_json_dump_is_dated_by_its_name_and_ranked_by_upvotes() -> None:
    listing = parse_json_dump(body(api_entries(SEED_MAR17)), source="x.json", date=MAR17)
    text = read_dump(SEED_MAR17, reference=MAR17)
    assert listing.date == MAR17  # not publishedAt (2026-03-16 in the answer)
    assert [e.paper.id for e in listing.entries] == [e.paper.id for e in text.entries]
    assert listing.entries[0].paper.arxiv_id == arxiv_id(1)
    with pytest.raises(IngestError, match="must end in its day"):
        json_dump_date("seeds/march.json")
    assert json_dump_date("seeds/daily-papers-2026-03-17.json") == MAR17


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = dt.datetime(2026, 3, 17, 12, 0, tzinfo=dt.UTC)
    assert retry_after("7", now) == 7.0
    assert retry_after("Tue, 17 Mar 2026 12:00:30 GMT", now) == 30.0
    assert retry_after("Tue, 17 Mar 2026 12:00:30 GMT", None) is None  # no Date header to go by
    assert retry_after("soon", now) is None and retry_after(None, now) is None


# --- one day over HTTP -----------------------------------------------------------------------
def test_happy_path_writes_the_raw_answer_and_ingests_it(
    api: DailyApi, fetch_settings: Settings, local_store: Store, seeds: Path
) -> None:
    data = body(api_entries(SEED_MAR17))
    api.add(MAR17, data)
    [outcome] = run_fetch(fetch_settings, local_store, MAR17, client=quick(api))
    assert outcome == DayOutcome("2026-03-17", "fetched", N17, None)
    assert (seeds / json_dump_name(MAR17)).read_bytes() == data
    assert [p.name for p in seeds.iterdir()] == [json_dump_name(MAR17)]  # no temp file left
    listing = local_store.listing(MAR17)
    assert listing is not None and len(listing.entries) == N17
    top = listing.entries[0].paper
    assert top.arxiv_id == arxiv_id(1) and top.upvotes == 499 and len(top.authors) == 3
    [request] = api.requests
    assert request.headers["user-agent"].startswith("newsletter/")
    assert "if-none-match" not in request.headers


def test_a_503_then_success_is_retried(
    api: DailyApi, fetch_settings: Settings, local_store: Store
) -> None:
    api.add(MAR17, body(api_entries(SEED_MAR17)))
    api.queue(MAR17, Reply(503, b"busy"), Reply(502, b"bad gateway"))
    [outcome] = run_fetch(fetch_settings, local_store, MAR17, client=quick(api))
    assert outcome.status == "fetched" and outcome.papers == N17
    assert len(api.asked(MAR17)) == 3


def test_a_429_waits_as_long_as_retry_after_says(
    api: DailyApi, fetch_settings: Settings, local_store: Store
) -> None:
    api.add(MAR17, body(api_entries(SEED_MAR17)))
    api.queue(MAR17, Reply(429, b"slow down", {"Retry-After": "1"}))
    [outcome] = run_fetch(fetch_settings, local_store, MAR17, client=quick(api))
    assert outcome.status == "fetched"
    first, second = api.asked(MAR17)
    assert second.at - first.at >= 1.0  # the backoff alone would have waited ~0.01 s


def test_a_retry_after_beyond_the_limit_gives_up_at_once(
    api: DailyApi, fetch_settings: Settings, local_store: Store
) -> None:
    api.queue(MAR17, Reply(429, b"", {"Retry-After": "3600"}))
    [outcome] = run_fetch(fetch_settings, local_store, MAR17, client=quick(api))
    assert outcome.status == "failed" and "wait 3600 s" in (outcome.error or "")
    assert len(api.asked(MAR17)) == 1


def test_a_slow_server_times_out_and_nothing_is_stored(
    api: DailyApi, fetch_settings: Settings, local_store: Store, seeds: Path
) -> None:
    api.add(MAR17, body(api_entries(SEED_MAR17)))
    api.queue(MAR17, Reply(200, b"[]", delay=1.0), Reply(200, b"[]", delay=1.0))
    started = time.monotonic()
    [outcome] = run_fetch(
        fetch_settings, local_store, MAR17, client=quick(api, timeout=0.2, attempts=2)
    )
    assert time.monotonic() - started < 1.0
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error.startswith(api.url + "?date=2026-03-17: ")
    assert "timed out" in outcome.error and "gave up after 2 attempts" in outcome.error
    assert not seeds.exists() and local_store.listing(MAR17) is None


def test_truncated_json_is_refused_with_the_url_and_stores_nothing(
    api: DailyApi, fetch_settings: Settings, local_store: Store, seeds: Path
) -> None:
    data = body(api_entries(SEED_MAR17))
    api.queue(MAR17, Reply(200, data[: len(data) // 2]))
    [outcome] = run_fetch(fetch_settings, local_store, MAR17, client=quick(api))
    assert outcome.status == "failed"
    assert (
        outcome.error is not None and f"{api.url}?date=2026-03-17: truncated JSON" in outcome.error
    )
    assert "nothing stored" in outcome.error
    assert len(api.asked(MAR17)) == 1  # a malformed answer is not retried
    assert not seeds.exists() and local_store.listing(MAR17) is None
    assert local_store.fetched_day(MAR17) is None


def test_an_answer_whose_entries_all_lack_a_title_fails_the_day(
    api: DailyApi, fetch_settings: Settings, local_store: Store, seeds: Path
) -> None:
    """It was taken for an empty day, silently: an upstream field rename would have stopped
    every edition with exit 0."""
    api.add(MAR17, body([{"paper": {"paperTitle": "A", "summary": "s"}}]))
    [outcome] = run_fetch(fetch_settings, local_store, MAR17, client=quick(api))
    assert outcome.status == "failed"
    assert outcome.error is not None and "none of its 1 entries has a title" in outcome.error
    assert local_store.fetched_day(MAR17) is None and not seeds.exists()


def test_an_empty_day_is_fine_and_makes_no_listing(
    api: DailyApi, fetch_settings: Settings, local_store: Store, seeds: Path
) -> None:
    weekend = dt.date(2026, 3, 15)
    assert run_fetch(fetch_settings, local_store, weekend, client=quick(api)) == [
        DayOutcome("2026-03-15", "empty", 0, None)
    ]
    assert local_store.listing_dates() == [] and not seeds.exists()
    again = run_fetch(fetch_settings, local_store, weekend, client=quick(api))
    assert again == [DayOutcome("2026-03-15", "empty", 0, None)]
    assert api.asked(weekend)[-1].headers.get("if-none-match")  # asked conditionally: 304


@pytest.mark.parametrize("etags", [True, False], ids=["etag", "last-modified"])
def test_refetching_an_unchanged_day_changes_nothing(
    api: DailyApi, fetch_settings: Settings, local_store: Store, seeds: Path, etags: bool
) -> None:
    api.etags = etags
    api.add(MAR17, body(api_entries(SEED_MAR17)))
    run_fetch(fetch_settings, local_store, MAR17, client=quick(api))
    dump = seeds / json_dump_name(MAR17)
    stamp, state = dump.stat().st_mtime_ns, local_store.fetched_day(MAR17)
    [outcome] = run_fetch(fetch_settings, local_store, MAR17, client=quick(api))
    assert outcome == DayOutcome("2026-03-17", "unchanged", N17, None)
    header = "if-none-match" if etags else "if-modified-since"
    assert header in api.asked(MAR17)[-1].headers
    assert dump.stat().st_mtime_ns == stamp and local_store.fetched_day(MAR17) == state


def test_a_changed_day_replaces_the_dump_and_the_listing(
    api: DailyApi, fetch_settings: Settings, local_store: Store
) -> None:
    entries = api_entries(SEED_MAR17)
    api.add(MAR17, body(entries))
    run_fetch(fetch_settings, local_store, MAR17, client=quick(api))
    api.add(MAR17, body(entries[-5:]))  # the top five only
    [outcome] = run_fetch(fetch_settings, local_store, MAR17, client=quick(api))
    assert outcome == DayOutcome("2026-03-17", "fetched", 5, None)
    listing = local_store.listing(MAR17)
    assert listing is not None and len(listing.entries) == 5


def test_a_paper_known_from_a_text_dump_is_one_record_with_its_api_facts(
    api: DailyApi, make_settings: Callable[..., Settings], store: Store, seeds: Path
) -> None:
    settings = make_settings(source_url=api.url, seeds_dir=seeds, database_url="unused")
    seeds.mkdir()
    (seeds / SEED_MAR17.name).write_bytes(SEED_MAR17.read_bytes())
    ingest_folder(store, settings, seeds, now=NOW)
    before = {p.id: p for p in store.all_papers()}
    assert all(p.arxiv_id is None and not p.authors for p in before.values())
    api.add(MAR17, body(api_entries(SEED_MAR17)))
    [outcome] = run_fetch(settings, store, MAR17, client=quick(api))
    assert outcome.status == "fetched"
    after = {p.id: p for p in store.all_papers()}
    assert after.keys() == before.keys()  # no second record for any paper
    assert all(p.arxiv_id and p.authors and p.upvotes for p in after.values())
    # the text dump of the same day now yields to the fetched one, and erases nothing
    rows = {Path(r.path).name: r for r in ingest_folder(store, settings, seeds, now=NOW)}
    assert rows[SEED_MAR17.name].status == "skipped" and "fetched" in (
        rows[SEED_MAR17.name].error or ""
    )
    assert rows[json_dump_name(MAR17)].status == "unchanged"
    assert {p.id: p for p in store.all_papers()} == after


# --- the command -----------------------------------------------------------------------------
@pytest.fixture
def env(api: DailyApi, seeds: Path, tmp_path: Path) -> dict[str, str]:
    return {
        "NEWSLETTER_SOURCE_URL": api.url,
        "NEWSLETTER_SEEDS_DIR": str(seeds),
        "NEWSLETTER_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "NEWSLETTER_SUBSCRIBERS_FILE": str(EXAMPLE_SUBSCRIBERS),
        "NEWSLETTER_REFERENCE_DATE": "2026-11-21",
    }


def invoke(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def cli_clock(monkeypatch: pytest.MonkeyPatch) -> dt.datetime:
    """The command's `now` (its only clock), pinned to the evening of Mar 17 (UTC)."""
    monkeypatch.setattr(AppContext, "now", lambda _self: NOW)
    return NOW


def test_since_goes_on_past_a_bad_day_and_exits_1(
    api: DailyApi, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, cli_clock: dt.datetime
) -> None:
    monkeypatch.setattr(fetch, "BACKOFF", 0.01)
    api.add("2026-03-14", body(api_entries(SEED_MAR14)))
    api.queue("2026-03-16", Reply(200, b'[{"paper": {"title": "cut off'))
    api.add(MAR17, body(api_entries(SEED_MAR17)))
    result = invoke(
        {**env, "NEWSLETTER_TIMEZONE": "UTC"}, "fetch", "--since", "2026-03-14", "--json"
    )
    assert result.exit_code == 1
    days = json.loads(result.stdout)["days"]
    assert [(d["date"], d["status"], d["papers"]) for d in days] == [
        ("2026-03-14", "fetched", N14),
        ("2026-03-15", "empty", 0),
        ("2026-03-16", "failed", 0),
        ("2026-03-17", "fetched", N17),
    ]
    assert all(set(d) == {"date", "status", "papers", "error"} for d in days)
    assert "truncated JSON" in days[2]["error"] and api.url in days[2]["error"]
    papers = invoke(env, "papers", "--date", "2026-03-17", "--json")
    top = json.loads(papers.stdout)[0]
    assert top["arxiv_id"] == arxiv_id(1) and top["upvotes"] == 499
    assert top["authors"] == ["Charles Babbage", "Grace Hopper", "Alan Turing"]  # full names


@pytest.mark.parametrize(
    ("zone", "today"), [("UTC", "2026-03-17"), ("Pacific/Kiritimati", "2026-03-18")]
)
def test_fetch_defaults_to_today_in_the_configured_zone(
    api: DailyApi, env: dict[str, str], cli_clock: dt.datetime, zone: str, today: str
) -> None:
    result = invoke({**env, "NEWSLETTER_TIMEZONE": zone}, "fetch", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "days": [{"date": today, "status": "empty", "papers": 0, "error": None}]
    }
    assert [r.date for r in api.requests] == [today]


def test_fetch_usage_errors(env: dict[str, str], cli_clock: dt.datetime) -> None:
    both = invoke(env, "fetch", "--date", "2026-03-17", "--since", "2026-03-01")
    assert both.exit_code == 2 and "not both" in both.stderr
    assert invoke(env, "fetch", "--since", "2026-03-18").exit_code == 2  # after today
    assert invoke(env, "fetch", "--since", "2001-01-01").exit_code == 2  # too many days
    assert invoke(env, "fetch", "--date", "17 March").exit_code == 2


def test_fetch_human_output_names_the_failure(api: DailyApi, env: dict[str, str]) -> None:
    api.queue(MAR17, Reply(404, b"Not Found"))
    result = invoke(env, "fetch", "--date", "2026-03-17")
    assert result.exit_code == 1
    assert "failed" in result.stdout and "HTTP 404" in result.stdout
    assert "NEWSLETTER_SOURCE_URL" in result.stdout


# --- the email -------------------------------------------------------------------------------
def test_the_email_links_the_paper_page_and_arxiv_and_shows_authors(
    api: DailyApi, fetch_settings: Settings, local_store: Store
) -> None:

    api.add(MAR17, body(api_entries(SEED_MAR17)))
    run_fetch(fetch_settings, local_store, MAR17, client=quick(api))
    subs = load_subscribers(EXAMPLE_SUBSCRIBERS)
    sel = next(s for s in selections_for(local_store, fetch_settings, subs, MAR17) if s.papers)
    paper = next(p.paper for p in sel.papers if p.sent)
    email = Renderer(fetch_settings).render(sel, now=NOW)
    page = f"https://huggingface.co/papers/{paper.arxiv_id}"
    assert f'href="{page}"' in email.html and page in email.text
    assert f'href="https://arxiv.org/abs/{paper.arxiv_id}"' in email.html
    assert f"arXiv: https://arxiv.org/abs/{paper.arxiv_id}" in email.text
    names = [n.split()[-1] for n in paper.authors[:2]]
    assert all(n in email.html and n in email.text for n in names)
    assert "et al." in email.html or len(paper.authors) <= 2
    assert "papers?q=" not in email.html


def test_author_lines() -> None:

    assert author_line(["Ada Lovelace", "Charles Babbage", "Grace Hopper"]) == (
        "A. Lovelace, C. Babbage et al."
    )
    assert author_line(["Ada Lovelace", "Charles Babbage"]) == "A. Lovelace, C. Babbage"
    assert author_line([]) == ""
    assert short_name("Jean-Paul van der Berg") == "J.-P. van der Berg"
    assert short_name("A. M. Turing") == "A. M. Turing"
    assert short_name("李明") == "李明" and short_name("Plato") == "Plato"


def test_a_query_in_the_source_url_is_kept(
    api: DailyApi, fetch_settings: Settings, local_store: Store
) -> None:
    """A mirror or proxy that wants a key in the URL gets it with every day asked."""
    api.add(MAR17, body(api_entries(SEED_MAR17)))
    keyed = fetch_settings.model_copy(update={"source_url": api.url + "?token=abc"})
    outcomes = asyncio.run(fetch.fetch_days(keyed, local_store, [MAR17], now=NOW))
    assert [o.status for o in outcomes] == ["fetched"]
    assert api.requests[0].path == "/api/daily_papers?token=abc&date=2026-03-17"


# --- the daemon ------------------------------------------------------------------------------
def test_fetch_before_firing_is_bounded_and_logs(
    api: DailyApi,
    fetch_settings: Settings,
    local_store: Store,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fetch, "FIRING_BUDGET", 0.5)
    api.queue(MAR17, Reply(200, b"[]", delay=3.0))
    caplog.set_level(logging.INFO, "newsletter")
    started = time.monotonic()
    outcomes = asyncio.run(fetch.fetch_before_firing(fetch_settings, local_store, [MAR17], now=NOW))
    assert time.monotonic() - started < 2.0 and outcomes == []
    assert "gave up after 0.5 s (2026-03-17 not fetched); sending what is stored" in caplog.text


SUBS = """\
defaults: {send_at: "07:00", timezone: Europe/Berlin}
subscribers:
  - email: berlin@example.org
    topics: [{name: RL, keywords: ["reinforcement learning", "language model", "diffusion"]}]
"""


def daemon_pass(settings: Settings, store: Store, now: dt.datetime) -> list[str]:

    subs = load_subscribers(settings.subscribers_file)
    decisions = asyncio.run(run_pass(settings, store, subs, lambda: now)).decisions
    return [f"{d.action}:{d.edition}" for d in decisions]


@pytest.fixture
def daemon_settings(
    make_settings: Callable[..., Settings], api: DailyApi, seeds: Path, tmp_path: Path
) -> Settings:
    subs = tmp_path / "subscribers.yaml"
    subs.write_text(SUBS, encoding="utf-8")
    seeds.mkdir()
    return make_settings(
        source_url=api.url, seeds_dir=seeds, subscribers_file=subs, fetch=True, catch_up=True
    )


def test_the_daemon_fetches_the_day_that_has_ended_then_sends_it(
    api: DailyApi, daemon_settings: Settings, local_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "newsletter")
    mar18 = dt.date(2026, 3, 18)
    api.add(MAR17, body(api_entries(SEED_MAR17)))
    api.add(mar18, body(api_entries(SEED_MAR17)[:1]))  # today: still being listed
    # 07:05 in Berlin on Mar 18 (06:05 UTC): Mar 17 has ended in UTC, Mar 18 has not
    assert daemon_pass(
        daemon_settings, local_store, dt.datetime(2026, 3, 18, 6, 5, tzinfo=dt.UTC)
    ) == ["send:2026-03-17"]
    assert [r.date for r in api.requests] == ["2026-03-17"]
    assert f"fetch 2026-03-17: fetched, {N17} papers" in caplog.text
    # the 5-minute retry pass serves nothing new and asks the source nothing
    daemon_pass(daemon_settings, local_store, dt.datetime(2026, 3, 18, 6, 10, tzinfo=dt.UTC))
    assert len(api.requests) == 1


def test_a_day_the_source_lists_late_goes_out_when_it_comes(
    api: DailyApi, daemon_settings: Settings, local_store: Store
) -> None:
    """The finished day is not there at the send time (a slow source): every pass asks again,
    and the day goes out at the first pass that finds it, the same morning."""
    api.add(dt.date(2026, 3, 16), body(api_entries(SEED_MAR17)[:3]))
    assert daemon_pass(
        daemon_settings, local_store, dt.datetime(2026, 3, 17, 6, 5, tzinfo=dt.UTC)
    ) == ["send:2026-03-16"]
    berlin_mar18 = dt.datetime(2026, 3, 18, 6, 0, tzinfo=dt.UTC)
    assert daemon_pass(daemon_settings, local_store, berlin_mar18) == ["nothing-new:2026-03-16"]
    api.add(MAR17, body(api_entries(SEED_MAR17)))
    later = berlin_mar18 + dt.timedelta(hours=3)
    assert daemon_pass(daemon_settings, local_store, later) == ["send:2026-03-17"]
    assert [r.date for r in api.requests].count("2026-03-17") == 2
    # served now: the next pass neither sends nor asks
    assert daemon_pass(daemon_settings, local_store, later + dt.timedelta(minutes=5)) == [
        "not-due:None"
    ]
    assert [r.date for r in api.requests].count("2026-03-17") == 2


def test_tokyo_gets_the_last_finished_day_at_seven_local(
    api: DailyApi, daemon_settings: Settings, local_store: Store
) -> None:
    """07:00 in Tokyo is 22:00 UTC the day before: the day of the local date has not begun
    on the source's calendar, the one before is still being listed; the last finished day
    goes out (asking for the local date only, the group got nothing, ever)."""
    tokyo = daemon_settings.subscribers_file
    tokyo.write_text(SUBS.replace("Europe/Berlin", "Asia/Tokyo"), encoding="utf-8")
    api.add(dt.date(2026, 3, 16), body(api_entries(SEED_MAR17)))
    api.add(MAR17, body(api_entries(SEED_MAR17)[:2]))
    # 07:00 on Mar 18 in Tokyo
    moment = dt.datetime(2026, 3, 17, 22, 0, tzinfo=dt.UTC)
    assert daemon_pass(daemon_settings, local_store, moment) == ["send:2026-03-16"]
    assert [r.date for r in api.requests] == ["2026-03-16"]


def test_a_day_without_papers_sends_nothing_new_and_says_so(
    api: DailyApi, daemon_settings: Settings, local_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    api.add(MAR17, body(api_entries(SEED_MAR17)))
    daemon_pass(daemon_settings, local_store, dt.datetime(2026, 3, 18, 6, 5, tzinfo=dt.UTC))
    caplog.clear()
    caplog.set_level(logging.INFO, "newsletter")
    # Monday Mar 23's send time: the API listed nothing on Sunday Mar 22
    actions = daemon_pass(
        daemon_settings, local_store, dt.datetime(2026, 3, 23, 6, 5, tzinfo=dt.UTC)
    )
    assert actions == ["nothing-new:2026-03-17"]
    assert "fetch 2026-03-22: no papers listed that day: no new edition from it" in caplog.text
    assert "no new listing since the last edition" in caplog.text
    print("\n".join(r.getMessage() for r in caplog.records))  # for the closing note


def test_a_failed_fetch_never_blocks_a_stored_edition(
    daemon_settings: Settings,
    local_store: Store,
    seeds: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fetch, "BACKOFF", 0.01)
    settings = daemon_settings.model_copy(update={"source_url": NO_SOURCE})
    (seeds / SEED_MAR17.name).write_bytes(SEED_MAR17.read_bytes())
    caplog.set_level(logging.INFO, "newsletter")
    # Mar 19's send time asks for Mar 18, which fails: the stored Mar 17 goes out
    actions = daemon_pass(settings, local_store, dt.datetime(2026, 3, 19, 6, 5, tzinfo=dt.UTC))
    assert actions == ["send:2026-03-17"]
    assert (
        "fetch 2026-03-18 failed: " + NO_SOURCE + "?date=2026-03-18: connection error"
        in caplog.text
    )
