"""The CLI as scripts use it: exact forms, JSON on stdout only, exit codes."""

from __future__ import annotations

import json
import os
import re
import shutil
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from newsletter.cli import cli
from newsletter.settings import Settings
from newsletter.store import Store

from .conftest import EXAMPLE_SUBSCRIBERS, FIXTURES, SEEDS


@pytest.fixture
def env(tmp_path: Path, db_url: str) -> dict[str, str]:
    return make_env(tmp_path, db_url)


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    """For the tests of the command layer itself, which need one backend only."""
    return make_env(tmp_path, f"sqlite:///{tmp_path / 'store.db'}")


def make_env(tmp_path: Path, db_url: str) -> dict[str, str]:
    return {
        "NEWSLETTER_DATABASE_URL": db_url,
        "NEWSLETTER_SEEDS_DIR": str(SEEDS),
        "NEWSLETTER_SUBSCRIBERS_FILE": str(EXAMPLE_SUBSCRIBERS),
        "NEWSLETTER_OUTBOX_DIR": str(tmp_path / "outbox"),
        "NEWSLETTER_PREVIEW_DIR": str(tmp_path / "preview"),
        "NEWSLETTER_REFERENCE_DATE": "2026-11-21",
    }


def run(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_ingest_json_reports_every_file_and_is_idempotent(env: dict[str, str]) -> None:
    first = run(env, "ingest", "--json")
    assert first.exit_code == 0, first.stderr
    doc = json.loads(first.stdout)
    files = sorted(doc["files"], key=lambda f: f["path"])
    assert [f["papers"] for f in files] == [56, 78, 65, 52]
    assert sum(f["new_papers"] for f in files) == 211
    assert {f["status"] for f in files} == {"ingested"}
    assert files[1]["date"] == "2026-03-17" and files[1]["error"] is None
    assert set(files[0]) == {"path", "date", "papers", "new_papers", "status", "error"}
    again = json.loads(run(env, "ingest", "--json").stdout)
    assert {f["status"] for f in again["files"]} == {"unchanged"}
    assert sum(f["new_papers"] for f in again["files"]) == 0


def test_a_rejected_file_exits_1_and_the_others_still_ingest(
    env: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "dumps"
    folder.mkdir()
    shutil.copy(SEEDS / "001_5dda9fa4defc14f9.txt", folder)
    shutil.copy(FIXTURES / "dumps" / "odd.txt", folder)
    result = run(env, "ingest", "--seeds", str(folder), "--json")
    assert result.exit_code == 1
    rows = {Path(f["path"]).name: f for f in json.loads(result.stdout)["files"]}
    assert rows["001_5dda9fa4defc14f9.txt"]["status"] == "ingested"
    assert rows["odd.txt"]["status"] == "rejected"
    assert "line 23" in rows["odd.txt"]["error"] and "odd number" in rows["odd.txt"]["error"]


def test_two_dumps_for_one_date_reject_the_second(env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "dumps"
    folder.mkdir()
    shutil.copy(SEEDS / "002_2b37b74c05805532.txt", folder / "a.txt")
    shutil.copy(FIXTURES / "dumps" / "crlf_bom.txt", folder / "b.txt")
    result = run(env, "ingest", "--seeds", str(folder), "--json")
    rows = json.loads(result.stdout)["files"]
    assert result.exit_code == 1
    assert [r["status"] for r in rows] == ["ingested", "rejected"]
    assert "same date" in rows[1]["error"]


def test_year_option_pins_the_year(env: dict[str, str]) -> None:
    doc = json.loads(run(env, "ingest", "--year", "2024", "--json").stdout)
    assert {f["date"][:4] for f in doc["files"]} == {"2024"}


def test_papers_json_in_rank_order_with_dates(env: dict[str, str]) -> None:
    run(env, "ingest")
    result = run(env, "papers", "--json")
    assert result.exit_code == 0
    papers = json.loads(result.stdout)
    assert len(papers) == 78 and [p["rank"] for p in papers] == list(range(1, 79))
    assert set(papers[0]) == {
        *("id", "title", "abstract", "rank", "links", "dates"),
        *("arxiv_id", "authors", "upvotes"),  # known only for fetched days
    }
    assert (papers[0]["arxiv_id"], papers[0]["authors"], papers[0]["upvotes"]) == (None, [], None)
    dichotomy = next(p for p in papers if p["title"].startswith("Dichotomy"))
    assert dichotomy["dates"] == ["2026-03-12", "2026-03-14", "2026-03-17"]
    day = json.loads(run(env, "papers", "--date", "2026-03-11", "--json").stdout)
    assert len(day) == 56


def test_papers_errors(env: dict[str, str]) -> None:
    run(env, "ingest")
    missing = run(env, "papers", "--date", "2026-01-01")
    assert missing.exit_code == 1 and "stored dates: 2026-03-11" in missing.stderr
    bad = run(env, "papers", "--date", "17/03")
    assert bad.exit_code == 2 and "YYYY-MM-DD" in bad.stderr


def test_subscribers_check_exit_codes(env: dict[str, str], tmp_path: Path) -> None:
    ok = run(env, "subscribers", "check")
    assert ok.exit_code == 0 and "valid" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("subscribers:\n  - email: nope\n    topics: []\n", encoding="utf-8")
    result = run(env, "subscribers", "check", str(bad))
    assert result.exit_code == 1
    assert "line 2" in result.stderr and "'nope'" in result.stderr
    assert "line 3" in result.stderr


def test_invalid_setting_is_a_usage_error(env: dict[str, str]) -> None:
    result = run({**env, "NEWSLETTER_SMTP_PORT": "99999"}, "papers")
    assert result.exit_code == 2 and "NEWSLETTER_SMTP_PORT" in result.stderr


def _select(env: dict[str, str], *args: str) -> dict[str, list[dict[str, object]]]:
    result = run(env, "select", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return {s["email"]: s["papers"] for s in json.loads(result.stdout)["subscribers"]}


@pytest.mark.parametrize("date", ["2026-03-11", "2026-03-12", "2026-03-14", "2026-03-17"])
def test_every_example_subscriber_gets_at_least_two_papers(env: dict[str, str], date: str) -> None:
    run(env, "ingest")
    picked = _select(env, "--date", date)
    assert len(picked) == 5
    for email, papers in picked.items():
        # (2, not 3: a passing mention of a generic keyword like "exploration" no longer sends)
        assert len(papers) >= 2, email
        for p in papers:
            assert {"id", "title", "score", "sent", "topics", "matched_terms"} <= set(p)
            assert p["sent"] is True and p["topics"] and p["matched_terms"]


def test_select_all_ranks_by_relevance_with_limit(env: dict[str, str]) -> None:
    run(env, "ingest")
    picked = _select(env, "--all", "--limit", "30", "--email", "KENJI@example.org")
    papers = picked["kenji@example.org"]
    assert len(papers) == 30
    scores = [float(p["score"]) for p in papers]  # type: ignore[arg-type]
    assert scores == sorted(scores, reverse=True)
    everything = _select(env, "--all", "--email", "kenji@example.org")["kenji@example.org"]
    sent = [p["sent"] for p in everything]
    assert len(everything) > 30 and sent[0] is True and sent[-1] is False
    # every stored paper, once: those nothing matched (or an exclude term removed) last, at 0
    store = Store.open(env["NEWSLETTER_DATABASE_URL"])
    stored = sorted(p.id for p in store.all_papers())
    store.close()
    assert sorted(str(p["id"]) for p in everything) == stored
    ada = _select(env, "--all", "--email", "ada@example.org")["ada@example.org"]
    surveys = [p for p in ada if "survey" in str(p["title"]).lower()]  # ada excludes "survey"
    assert surveys and all(p["score"] == 0 and p["sent"] is False for p in surveys)
    assert len(ada) == len(everything)
    # The global threshold always sends; the floor never does (the bar between is per topic).
    bar, floor = (
        Settings.model_fields[f].default for f in ("relevance_threshold", "relevance_floor")
    )
    assert all(p["sent"] for p in everything if float(p["score"]) >= bar)  # type: ignore[arg-type]
    assert not any(p["sent"] for p in everything if float(p["score"]) < floor)  # type: ignore[arg-type]


TWO_SHORT_KEYWORDS = (
    "defaults: {on_empty: skip}\n"
    "subscribers:\n"
    "  - email: short@example.org\n"
    "    topics: [{name: Exploration, keywords: [exploration, curiosity]}]\n"
    "  - email: closest@example.org\n"
    "    on_empty: closest\n"
    "    topics: [{name: Exploration, keywords: [exploration, curiosity]}]\n"
    "  - email: zed@example.org\n"
    "    topics: [{name: Geology, keywords: [plate tectonics, sedimentary rock]}]\n"
)


def test_two_short_keywords_get_a_labelled_result_or_a_health_report_saying_why(
    env: dict[str, str], tmp_path: Path
) -> None:
    subs = tmp_path / "subs.yaml"
    subs.write_text(TWO_SHORT_KEYWORDS, encoding="utf-8")
    env = {**env, "NEWSLETTER_SUBSCRIBERS_FILE": str(subs)}
    run(env, "ingest")
    result = run(env, "subscribers", "health", "--days", "4", "--json")
    assert result.exit_code == 0, result.stderr
    reports = {r["email"]: r for r in json.loads(result.stdout)["subscribers"]}
    for r in reports.values():
        keys = {"email", "editions", "empty", "flooded", "dead_keywords", "near_misses"}
        assert keys <= set(r) and r["editions"] == 4
    short = reports["short@example.org"]
    for date in ("2026-03-11", "2026-03-12", "2026-03-14", "2026-03-17"):
        picked = _select(env, "--date", date)
        if picked["short@example.org"]:
            continue
        # Nothing sent: the health report lists the edition, the near misses and the advice.
        assert date in short["empty"] and short["near_misses"] and short["advice"]
        closest = picked["closest@example.org"]
        assert 0 < len(closest) <= 3
        assert all(p["near_miss"] and p["sent"] for p in closest)
    zed = reports["zed@example.org"]
    assert zed["dead_keywords"] == ["plate tectonics", "sedimentary rock"]
    assert len(zed["empty"]) == 4 and any("never matched" in a for a in zed["advice"])
    text = run(env, "subscribers", "health").stdout
    assert "short@example.org" in text and "zed@example.org" in text


def test_health_applies_the_readers_votes_and_says_once_when_nothing_is_stored(
    env: dict[str, str], tmp_path: Path
) -> None:
    subs = tmp_path / "subs.yaml"
    subs.write_text(TWO_SHORT_KEYWORDS, encoding="utf-8")
    env = {**env, "NEWSLETTER_SUBSCRIBERS_FILE": str(subs)}
    bare = json.loads(run(env, "subscribers", "health", "--json").stdout)["subscribers"]
    zed = next(r for r in bare if r["email"] == "zed@example.org")
    assert zed["dead_keywords"] == [] and zed["editions"] == 0  # not "check the spelling"
    assert len(zed["advice"]) == 1 and "no paper is stored yet" in zed["advice"][0]
    run(env, "ingest")

    def short() -> dict[str, Any]:
        doc = json.loads(run(env, "subscribers", "health", "--days", "4", "--json").stdout)
        return next(r for r in doc["subscribers"] if r["email"] == "short@example.org")

    before = short()
    assert before["empty"] and before["near_misses"], before
    day = before["near_misses"][0]["edition"]
    liked = [m["id"] for m in before["near_misses"] if m["edition"] == day]
    for paper in liked:
        assert run(env, "feedback", "add", "short@example.org", paper, "up").exit_code == 0
    picked = _select(env, "--date", day, "--email", "short@example.org")["short@example.org"]
    after = short()
    # health says what select and send do: a day the votes filled is no longer empty
    assert bool(picked) == (day not in after["empty"]), (picked, after)
    assert picked and day not in after["empty"]


def test_select_never_repeats_a_received_paper(env: dict[str, str]) -> None:
    import datetime as dt

    from newsletter.store import Store

    run(env, "ingest")
    before = _select(env, "--date", "2026-03-17", "--email", "ada@example.org")
    ids = [str(p["id"]) for p in before["ada@example.org"]]
    store = Store.open(env["NEWSLETTER_DATABASE_URL"])
    now = dt.datetime(2026, 3, 14, 7, tzinfo=dt.UTC)
    store.record_history("ada@example.org", dt.date(2026, 3, 14), ids[:3], now=now)
    # the same edition's own deliveries do not change what it shows (a re-render is stable)
    store.record_history("ada@example.org", dt.date(2026, 3, 17), ids[3:5], now=now)
    store.close()
    after = _select(env, "--date", "2026-03-17", "--email", "ada@example.org")
    after_ids = [str(p["id"]) for p in after["ada@example.org"]]
    assert not set(ids[:3]) & set(after_ids)
    assert set(ids[3:5]) <= set(after_ids)


def test_select_usage_errors(env: dict[str, str]) -> None:
    run(env, "ingest")
    unknown = run(env, "select", "--email", "nobody@example.org")
    assert unknown.exit_code == 2 and "nobody@example.org" in unknown.stderr
    both = run(env, "select", "--all", "--date", "2026-03-17")
    assert both.exit_code == 2


def test_invalid_subscriber_file_stops_other_commands_with_exit_2(
    env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("subscribers:\n  - email: x@example.org\n    topics: []\n", encoding="utf-8")
    run(env, "ingest")
    result = run(env, "select", "--subscribers", str(bad))
    assert result.exit_code == 2 and "line 3" in result.stderr


def test_preview_one_subscriber_as_html_eml_and_text(env: dict[str, str], tmp_path: Path) -> None:
    import email
    from email import policy

    run(env, "ingest")
    html, eml = tmp_path / "ada.html", tmp_path / "ada.eml"
    result = run(env, "preview", "--email", "ada@example.org", "-o", str(html), "--eml", str(eml))
    assert result.exit_code == 0, result.stderr
    picked = _select(env, "--email", "ada@example.org")["ada@example.org"]
    page = re.sub(r"<[^>]+>", "", html.read_text(encoding="utf-8"))  # titles carry highlights
    msg = email.message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert msg["To"].addresses[0].addr_spec == "ada@example.org"
    text = run(env, "preview", "--email", "ada@example.org", "--text").stdout
    for p in picked:
        title = str(p["title"])
        assert title.replace("&", "&amp;") in page or title in page
        assert " ".join(title.split()[:3]) in text
    assert "<html" not in text and "unsubscribe" in text.lower()
    assert not (tmp_path / "preview").exists()  # -o/--eml/--text write only where asked


def test_preview_all_writes_an_index(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "ingest")
    out_dir = tmp_path / "pv"
    result = run(env, "preview", "--all", "-o", str(out_dir))
    assert result.exit_code == 0, result.stderr
    index = (out_dir / "index.html").read_text(encoding="utf-8")
    assert index.count("<tr><td><a href=") == 5
    assert len(list(out_dir.glob("*.eml"))) == 5


def test_preview_with_nothing_matched_says_so_and_writes_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    subs = tmp_path / "subs.yaml"
    subs.write_text(
        "subscribers:\n  - email: zed@example.org\n    topics:\n"
        "      - {name: Geology, keywords: [sedimentary rock, plate tectonics]}\n",
        encoding="utf-8",
    )
    run(env, "ingest")
    out = tmp_path / "zed.html"
    result = run(
        {**env, "NEWSLETTER_SUBSCRIBERS_FILE": str(subs)},
        "preview",
        "--email",
        "zed@example.org",
        "-o",
        str(out),
    )
    assert result.exit_code == 0
    assert "nothing matched" in result.stderr and "no email" in result.stderr
    assert not out.exists()


def test_ingest_reports_skipped_entries_and_still_ingests_the_rest(
    env: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "dumps"
    folder.mkdir()
    (folder / "mar11.txt").symlink_to(SEEDS / "001_5dda9fa4defc14f9.txt")
    (folder / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    (folder / "old").mkdir()
    os.mkfifo(folder / "pipe.txt")
    result = run(env, "ingest", "--seeds", str(folder), "--json")
    assert result.exit_code == 0, result.stderr
    rows = {Path(f["path"]).name: f for f in json.loads(result.stdout)["files"]}
    assert set(rows["gone.txt"]) == {"path", "date", "papers", "new_papers", "status", "error"}
    assert rows["mar11.txt"]["status"] == "ingested" and rows["mar11.txt"]["papers"] == 56
    for name, why in (("gone.txt", "broken symlink"), ("old", "folder"), ("pipe.txt", "FIFO")):
        assert rows[name]["status"] == "skipped" and why in rows[name]["error"]
        assert rows[name]["path"] == str(folder / name)
        assert str(folder / name) in result.stderr and "skipped" in result.stderr
    human = run(env, "ingest", "--seeds", str(folder))
    assert "skipped" in human.stdout and "FIFO" in human.stdout


def test_a_dump_over_the_paper_cap_is_refused_and_the_others_ingest(env: dict[str, str]) -> None:
    result = run({**env, "NEWSLETTER_MAX_PAPERS_PER_DUMP": "60"}, "ingest", "--json")
    assert result.exit_code == 1
    rows = {Path(f["path"]).name[:3]: f for f in json.loads(result.stdout)["files"]}
    assert {k: r["status"] for k, r in rows.items()} == {
        "001": "ingested",  # 56 papers
        "002": "rejected",  # 78
        "003": "rejected",  # 65
        "004": "ingested",  # 52
    }
    error = rows["002"]["error"]
    assert error.startswith(rows["002"]["path"]) and "78 papers" in error
    assert "NEWSLETTER_MAX_PAPERS_PER_DUMP (60)" in error
    assert "65 papers" in rows["003"]["error"]


# --- version, init, settings names, exit codes, safe defaults -----------------------------------
@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder (the command's cwd); no settings file named explicitly."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("NEWSLETTER_SETTINGS_FILE")
    return folder


def test_version() -> None:
    result = run({}, "--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"newsletter, version {version('newsletter')}"


def test_demo_in_an_empty_folder_uses_the_bundled_examples_and_var(here: Path) -> None:
    result = run({"NEWSLETTER_REFERENCE_DATE": "2026-11-21"}, "demo")
    assert result.exit_code == 0, result.stderr
    assert len(list((here / "var" / "outbox" / "new").iterdir())) == 5
    assert (here / "var" / "newsletter.db").is_file()
    assert (here / "var" / "preview" / "index.html").is_file()


def test_real_subscribers_are_never_mailed_the_bundled_example_dumps(here: Path) -> None:
    """A deployment folder with its own subscriber file and no seeds/ yet: a first fetch that
    fails must not fall back to the bundled March example edition and mail it to real readers
    (it did). seeds/ is the dumps' home then, for demo too (it shares the store)."""
    (here / "config").mkdir()
    (here / "config" / "subscribers.yaml").write_text(
        "subscribers:\n  - email: real.reader@example.com\n"
        "    topics: [{name: RL, keywords: [reinforcement learning]}]\n"
    )
    env = {"NEWSLETTER_REFERENCE_DATE": "2026-11-21", "NEWSLETTER_FETCH": "true"}
    env["NEWSLETTER_SOURCE_URL"] = "http://127.0.0.1:9/api"  # nothing listens: the fetch fails
    result = run(env, "run", "--once")
    assert "2026-03" not in result.stdout + result.stderr, result.stderr
    assert not (here / "var" / "outbox").exists()
    assert (here / "seeds").is_dir() and not list((here / "seeds").iterdir())
    demo = run({"NEWSLETTER_REFERENCE_DATE": "2026-11-21"}, "demo")
    assert demo.exit_code == 1 and "no listing stored" in demo.stderr, demo.stderr
    assert not (here / "var" / "outbox").exists()


def test_demo_never_uses_the_configured_smtp_server(
    sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    result = run({**sqlite_env, "NEWSLETTER_SMTP_HOST": "smtp.example.invalid"}, "demo")
    assert result.exit_code == 0, result.stderr
    assert len(list((tmp_path / "outbox" / "new").iterdir())) == 5
    assert f"Maildir {tmp_path / 'outbox'}/" in result.stdout
    assert "smtp.example.invalid) was not used" in result.stdout


def test_replay_runs_in_a_scratch_copy_unless_live(here: Path) -> None:
    ref = {"NEWSLETTER_REFERENCE_DATE": "2026-11-21"}
    assert run(ref, "ingest").exit_code == 0
    result = run(ref, "replay")
    assert result.exit_code == 0, result.stderr
    assert "scratch copy" in result.stderr and "var/replay/outbox/" in result.stderr
    scratch = list((here / "var" / "replay" / "outbox" / "new").iterdir())
    assert len(scratch) >= 5
    assert not (here / "var" / "outbox").exists()
    store = Store.open("sqlite:///var/newsletter.db")
    try:
        assert all(not store.ledger_rows(d) for d in store.listing_dates())
    finally:
        store.close()
    again = run(ref, "replay")  # renewed each run: the same deliveries again
    assert again.exit_code == 0
    assert len(list((here / "var" / "replay" / "outbox" / "new").iterdir())) == len(scratch)
    live = run(ref, "replay", "--live")
    assert live.exit_code == 0, live.stderr
    assert "scratch" not in live.stderr
    assert len(list((here / "var" / "outbox" / "new").iterdir())) == len(scratch)


def test_init_writes_editable_files_that_commands_there_pick_up(here: Path) -> None:
    result = run({}, "init", "--templates")
    assert result.exit_code == 0, result.stderr
    assert (here / "config" / "subscribers.yaml").read_bytes() == EXAMPLE_SUBSCRIBERS.read_bytes()
    assert sorted(p.name for p in (here / "templates").iterdir()) == [
        "digest.mjml",
        "digest.txt",
        "subject.txt",
        "web",  # the web app's pages (newsletter serve), editable too
    ]
    assert (here / "templates" / "web" / "archive.html").is_file()
    assert "template_dir" in result.stdout and "NEWSLETTER_TEMPLATE_DIR" in result.stdout
    (here / "templates" / "subject.txt").write_text("Custom: {{ summary }}\n", encoding="utf-8")
    (here / "config" / "subscribers.yaml").write_text(
        "subscribers:\n  - email: me@example.org\n    topics:\n"
        "      - {name: RL, keywords: [reinforcement learning]}\n",
        encoding="utf-8",
    )
    ref = {"NEWSLETTER_REFERENCE_DATE": "2026-11-21"}
    assert run(ref, "ingest").exit_code == 1  # own subscribers: seeds/, never the examples
    assert run(ref, "ingest", "--seeds", str(SEEDS)).exit_code == 0
    eml = here / "me.eml"
    shown = run(ref, "preview", "--email", "me@example.org", "--eml", str(eml))
    assert shown.exit_code == 0, shown.stderr
    assert b"Subject: Custom: " in eml.read_bytes()


def test_init_into_a_folder_and_refusing_to_overwrite(here: Path) -> None:
    first = run({}, "init", "site")
    assert first.exit_code == 0, first.stderr
    settings_file = here / "site" / "config" / "newsletter.toml"
    assert settings_file.is_file() and not (here / "site" / "templates").exists()
    settings_file.write_text('sender_name = "Mine"\n', encoding="utf-8")
    again = run({}, "init", "site", "--templates")
    assert again.exit_code == 2
    assert "site/config/subscribers.yaml" in again.stderr and "newsletter.toml" in again.stderr
    assert settings_file.read_text(encoding="utf-8") == 'sender_name = "Mine"\n'
    assert not (here / "site" / "templates").exists()  # all or nothing


@pytest.mark.parametrize("command", [["papers"], ["init"], ["subscribers", "check"], ["demo"]])
def test_an_unknown_environment_variable_stops_every_command(
    sqlite_env: dict[str, str], command: list[str], here: Path
) -> None:
    result = run({**sqlite_env, "NEWSLETTER_SMTP_HOTS": "x"}, *command)
    assert result.exit_code == 2
    assert (
        "environment variable NEWSLETTER_SMTP_HOTS is not a setting; "
        "did you mean NEWSLETTER_SMTP_HOST?"
    ) in result.stderr
    assert not (here / "config").exists()


def test_reserved_and_obsolete_names_are_accepted(sqlite_env: dict[str, str], here: Path) -> None:
    extra = {
        "NEWSLETTER_TEST_ANYTHING": "1",
        "NEWSLETTER_LOCK_DIR": str(here),
        "NEWSLETTER_SETTINGS_FILE": os.devnull,
    }
    result = run({**sqlite_env, **extra}, "subscribers", "check")
    assert result.exit_code == 0, result.stderr
    assert "NEWSLETTER_LOCK_DIR is obsolete" in result.stderr


def test_an_unknown_name_in_dotenv_stops_the_command(
    sqlite_env: dict[str, str], here: Path
) -> None:
    (here / ".env").write_text(
        "OTHER_TOOL_TOKEN=abc\nNEWSLETTER_SENDER_NAME=Me\n", encoding="utf-8"
    )
    assert (
        run(sqlite_env, "subscribers", "check").exit_code == 0
    )  # other tools' keys are left alone
    (here / ".env").write_text("OTHER_TOOL_TOKEN=abc\nNEWSLETTER_SMPT_PORT=25\n", encoding="utf-8")
    result = run(sqlite_env, "subscribers", "check")
    assert result.exit_code == 2
    assert (
        ".env: NEWSLETTER_SMPT_PORT is not a setting; did you mean NEWSLETTER_SMTP_PORT?"
        in result.stderr
    )


def test_an_unknown_key_in_the_settings_file_stops_the_command(
    sqlite_env: dict[str, str], here: Path
) -> None:
    (here / "config").mkdir()
    toml = here / "config" / "newsletter.toml"
    toml.write_text('sender_name = "Me"\nsmtp_hots = "mail.example.org"\n', encoding="utf-8")
    result = run(
        sqlite_env, "subscribers", "check"
    )  # found in the working folder, no setting needed
    assert result.exit_code == 2
    assert (
        "settings file config/newsletter.toml: smtp_hots is not a setting; did you mean smtp_host?"
    ) in result.stderr
    named = here / "other.toml"
    named.write_text("relevance_treshold = 2.5\n", encoding="utf-8")
    result = run({**sqlite_env, "NEWSLETTER_SETTINGS_FILE": str(named)}, "subscribers", "check")
    assert result.exit_code == 2
    assert f"{named}: relevance_treshold is not a setting; did you mean relevance_threshold?" in (
        result.stderr
    )
    named.write_text("relevance_threshold = \n", encoding="utf-8")
    result = run({**sqlite_env, "NEWSLETTER_SETTINGS_FILE": str(named)}, "subscribers", "check")
    assert result.exit_code == 2 and "cannot read it as TOML" in result.stderr


def test_an_explicit_sqlite_url_needs_an_existing_folder(
    sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    missing = tmp_path / "no" / "such"
    result = run({**sqlite_env, "NEWSLETTER_DATABASE_URL": f"sqlite:///{missing}/x.db"}, "status")
    assert result.exit_code == 2
    assert "NEWSLETTER_DATABASE_URL" in result.stderr and str(missing) in result.stderr
    assert not missing.parent.exists()


@pytest.mark.parametrize("url", ["nosuchdriver://x", "postgresql+psycopg://nobody@127.0.0.1:1/x"])
def test_a_bad_or_unreachable_database_at_start_is_exit_2(
    sqlite_env: dict[str, str], url: str
) -> None:
    result = run({**sqlite_env, "NEWSLETTER_DATABASE_URL": url}, "papers")
    assert result.exit_code == 2
    assert "NEWSLETTER_DATABASE_URL" in result.stderr


@pytest.mark.parametrize("folder", ["seeds[/]", "/data/[bold]seeds"])
def test_text_that_looks_like_console_markup_is_printed_as_it_is(
    sqlite_env: dict[str, str], folder: str
) -> None:
    """A "[/]" in a path crashed the command with rich's MarkupError (a traceback, exit 1);
    "[bold]" vanished from the message, which then named another folder."""
    result = run({**sqlite_env, "NEWSLETTER_SEEDS_DIR": folder}, "ingest")
    assert result.exit_code == 2
    assert f"no such folder {folder};" in result.stderr


def test_an_unparseable_database_url_never_shows_its_password(sqlite_env: dict[str, str]) -> None:
    """An unencoded @ or : in the password made SQLAlchemy raise a ValueError whose text (a
    traceback, exit 1) carried part of the password."""
    url = "postgresql+psycopg://u:p@ss:w0rd@127.0.0.1:1/x"
    result = run({**sqlite_env, "NEWSLETTER_DATABASE_URL": url}, "status")
    assert result.exit_code == 2
    assert "percent-encoded" in result.stderr and "NEWSLETTER_DATABASE_URL" in result.stderr
    assert "w0rd" not in result.output + result.stderr and "ss:" not in result.stderr


def test_a_missing_seeds_folder_is_exit_2_only_for_commands_that_read_it(
    sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    assert run(sqlite_env, "ingest").exit_code == 0
    missing = {**sqlite_env, "NEWSLETTER_SEEDS_DIR": str(tmp_path / "gone")}
    result = run(missing, "ingest")
    assert result.exit_code == 2
    assert "NEWSLETTER_SEEDS_DIR" in result.stderr and "gone" in result.stderr
    for command in (["run", "--once"], ["demo"]):
        assert run(missing, *command).exit_code == 2
    given = run(sqlite_env, "ingest", "--seeds", str(tmp_path / "nope"))
    assert given.exit_code == 2 and "--seeds" in given.stderr
    assert run(missing, "papers").exit_code == 0  # does not read the seeds folder


def test_ingest_of_a_folder_without_dumps_says_so(
    sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run(sqlite_env, "ingest", "--seeds", str(empty), "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"files": []}
    assert f"no dump in {empty}" in result.stderr


def test_subscribers_check_of_a_missing_file_is_exit_2(
    sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    result = run(sqlite_env, "subscribers", "check", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2 and "nope.yaml" in result.stderr
    setting = {**sqlite_env, "NEWSLETTER_SUBSCRIBERS_FILE": str(tmp_path / "gone.yaml")}
    result = run(setting, "subscribers", "check")
    assert result.exit_code == 2 and "NEWSLETTER_SUBSCRIBERS_FILE" in result.stderr
