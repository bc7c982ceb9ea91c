"""The CLI as scripts use it: exact forms, JSON on stdout only, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from newsletter.cli import cli

from .conftest import EXAMPLE_SUBSCRIBERS, FIXTURES, SEEDS


@pytest.fixture
def env(tmp_path: Path, db_url: str) -> dict[str, str]:
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
    assert set(papers[0]) == {"id", "title", "abstract", "rank", "links", "dates"}
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
def test_every_example_subscriber_gets_at_least_three_papers(
    env: dict[str, str], date: str
) -> None:
    run(env, "ingest")
    picked = _select(env, "--date", date)
    assert len(picked) == 5
    for email, papers in picked.items():
        assert len(papers) >= 3, email
        for p in papers:
            assert set(p) == {"id", "title", "score", "sent", "topics", "matched_terms"}
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
    assert sent == sorted(sent, reverse=True)  # one global threshold cuts the ranking once


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
    page = html.read_text(encoding="utf-8")
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
