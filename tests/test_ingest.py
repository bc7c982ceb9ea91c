"""Ingest: the parser on the real seeds, every quirk and every bad-input case."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter.errors import ConfigError, IngestError
from newsletter.ingest import (
    MAX_DUMP_BYTES,
    dump_files,
    extract_links,
    infer_date,
    json_dump_name,
    normalise_title,
    paper_id,
    parse_dump,
    read_dump,
    read_dumps,
    scan_dumps,
)
from newsletter.pipeline import ingest_folder
from newsletter.settings import Settings, load_settings
from newsletter.store import Store

from .conftest import FIXTURES, REFERENCE, SEEDS
from .dailyapi import api_entries, body

DUMPS = FIXTURES / "dumps"


def test_bundled_seeds_parse_to_the_known_counts() -> None:
    results = read_dumps(dump_files(SEEDS), reference=REFERENCE)
    assert all(r.error is None for r in results)
    listings = {r.path.name[:3]: r.listing for r in results if r.listing}
    assert [len(listings[k].entries) for k in ("001", "002", "003", "004")] == [56, 78, 65, 52]
    assert {listings[k].date for k in listings} == {
        dt.date(2026, 3, 11),
        dt.date(2026, 3, 17),
        dt.date(2026, 3, 14),
        dt.date(2026, 3, 12),
    }
    distinct = {e.paper.id for lst in listings.values() for e in lst.entries}
    assert len(distinct) == 211


def test_header_is_generic_and_ranks_follow_the_page() -> None:
    listing = read_dump(DUMPS / "extra_header.txt", reference=REFERENCE)
    assert listing.header[:2] == ("Trending Papers", "new")
    assert "byAK and the research community" in listing.header
    assert [e.rank for e in listing.entries] == [1, 2, 3]
    assert listing.entries[0].paper.title.startswith("B-STaR")
    assert listing.entries[0].paper.abstract.startswith("In the absence of")


@pytest.mark.parametrize("name", ["crlf_bom.txt", "trailing_spaces.txt", "extra_header.txt"])
def test_quirky_but_valid_files_give_the_same_papers(name: str) -> None:
    listing = read_dump(DUMPS / name, reference=REFERENCE)
    assert listing.date == dt.date(2026, 3, 17)
    titles = [e.paper.title for e in listing.entries]
    assert titles[0].startswith("B-STaR") and len(titles) == 3
    assert all(t == t.strip() and "\r" not in t for t in titles)
    assert not listing.entries[0].paper.abstract.endswith(" ")


def test_same_content_same_hash_whatever_the_line_endings() -> None:
    a = read_dump(DUMPS / "crlf_bom.txt", reference=REFERENCE)
    text = (DUMPS / "crlf_bom.txt").read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    b = parse_dump(text, reference=REFERENCE)
    assert a.content_hash == b.content_hash
    assert a.entries == b.entries


def test_unicode_titles_survive() -> None:
    listing = read_dump(DUMPS / "unicode.txt", reference=REFERENCE)
    first = listing.entries[0].paper
    assert first.title == "Σ-Attention: 学習 des Modèles — “Ünïcödé” ☃ Titles"
    assert "$O(\\sqrt{T})$" in first.abstract


def test_duplicate_within_a_dump_counts_once_at_first_rank_with_a_warning() -> None:
    listing = read_dump(DUMPS / "duplicate.txt", reference=REFERENCE)
    titles = [e.paper.title for e in listing.entries]
    assert len(titles) == 4 and len(set(titles)) == 4
    assert titles[0].startswith("B-STaR") and listing.entries[0].rank == 1
    assert [e.rank for e in listing.entries] == [1, 2, 3, 4]
    assert len(listing.warnings) == 1
    assert "listed again" in listing.warnings[0] and "rank 1" in listing.warnings[0]
    assert "line " in listing.warnings[0]


@pytest.mark.parametrize(
    ("name", "line", "words"),
    [
        ("empty.txt", None, "empty"),
        ("blank_only.txt", None, "empty"),
        ("no_date.txt", None, "no date line"),
        ("binary.txt", 3, "binary"),
        ("latin1.txt", 11, "not UTF-8"),
        ("odd.txt", 23, "odd number of paragraphs"),
        ("missing_title.txt", 15, "reads like an abstract"),
        ("missing_abstract.txt", 17, "reads like a title"),
        ("bad_date.txt", 9, "not a valid date"),
    ],
)
def test_bad_files_are_rejected_with_file_line_and_reason(
    name: str, line: int | None, words: str
) -> None:
    with pytest.raises(IngestError) as info:
        read_dump(DUMPS / name, reference=REFERENCE)
    err = info.value
    assert err.path.endswith(name)
    assert err.line == line
    assert words in str(err)
    assert name in str(err)
    if line is not None:
        assert f"line {line}" in str(err)


def test_one_bad_file_does_not_stop_the_others() -> None:
    files = [DUMPS / "odd.txt", SEEDS / "001_5dda9fa4defc14f9.txt", DUMPS / "binary.txt"]
    results = read_dumps(files, reference=REFERENCE)
    assert [r.error is None for r in results] == [False, True, False]
    assert results[1].listing is not None and len(results[1].listing.entries) == 56


def test_never_pairs_a_title_with_the_wrong_abstract() -> None:
    """Dropping any single paragraph of a real dump must be detected, never silently re-paired."""
    text = (SEEDS / "004_67f282ffe6c058cf.txt").read_text(encoding="utf-8")
    head, _, body = text.partition("Mar 12\n")
    paragraphs = [p for p in body.split("\n\n") if p.strip()]
    for drop in range(0, len(paragraphs) - 1, 7):
        broken = head + "Mar 12\n\n" + "\n\n".join(paragraphs[:drop] + paragraphs[drop + 1 :])
        with pytest.raises(IngestError):
            parse_dump(broken, reference=REFERENCE)


def test_year_is_the_latest_not_after_the_reference_or_pinned() -> None:
    assert infer_date(3, 17, dt.date(2026, 11, 21)) == dt.date(2026, 3, 17)
    assert infer_date(12, 30, dt.date(2026, 1, 2)) == dt.date(2025, 12, 30)
    assert infer_date(3, 17, dt.date(2026, 3, 17)) == dt.date(2026, 3, 17)
    # the publisher's zone may already be at tomorrow; the day after that is a year-old page
    assert infer_date(3, 18, dt.date(2026, 3, 17)) == dt.date(2026, 3, 18)
    assert infer_date(3, 19, dt.date(2026, 3, 17)) == dt.date(2025, 3, 19)
    assert infer_date(1, 1, dt.date(2026, 12, 31)) == dt.date(2027, 1, 1)
    assert infer_date(2, 29, dt.date(2026, 11, 21)) == dt.date(2024, 2, 29)
    assert infer_date(3, 17, dt.date(2026, 11, 21), year=2024) == dt.date(2024, 3, 17)
    text = (DUMPS / "crlf_bom.txt").read_text(encoding="utf-8-sig")
    assert parse_dump(text, reference=REFERENCE, year=2025).date == dt.date(2025, 3, 17)


def test_stable_id_from_normalised_title() -> None:
    a = paper_id("Offline RL: A  Survey")
    assert a == paper_id("offline rl — a survey") == paper_id(" OFFLINE RL: A SURVEY ")
    assert a != paper_id("Offline RL: A Survey II")
    assert normalise_title("Model-Based RL") == "model based rl"


@pytest.mark.parametrize(
    ("text", "links"),
    [
        ("Code: https://github.com/a/b.", ("https://github.com/a/b",)),
        ("(see https://x.io/p), and", ("https://x.io/p",)),
        ("at https://e.org/w_(x) now", ("https://e.org/w_(x)",)),
        ("https://a.b/c; https://a.b/c!", ("https://a.b/c",)),
        ("page: https://site.github.io/proj/.", ("https://site.github.io/proj/",)),
        ("no links here.", ()),
    ],
)
def test_links_without_trailing_punctuation(text: str, links: tuple[str, ...]) -> None:
    assert extract_links(text) == links


_words = st.text(
    alphabet=st.characters(
        codec="utf-8",
        exclude_categories=("Cc", "Cs", "Zl", "Zp", "Zs"),
        exclude_characters="\x85\ufeff",
    ),
    min_size=1,
    max_size=12,
)
_title = st.lists(_words, min_size=1, max_size=10).map(" ".join)
_abstract = st.lists(_words, min_size=40, max_size=80).map(lambda ws: " ".join(ws) + ".")


@settings(max_examples=60, deadline=None)
@given(
    header=st.lists(st.sampled_from(["new", "Subscribe", "Get papers!", "by AK"]), max_size=4),
    papers=st.lists(
        st.tuples(_title, _abstract),
        min_size=1,
        max_size=6,
        unique_by=lambda p: normalise_title(p[0]) or p[0],
    ),
    crlf=st.booleans(),
)
def test_round_trip(header: list[str], papers: list[tuple[str, str]], crlf: bool) -> None:
    """Writing papers in the dump format and parsing them gives the same papers, in order."""
    from hypothesis import assume

    assume(all(len(t) < 250 and len(a) > 250 for t, a in papers))
    assume(len({paper_id(t) for t, _ in papers}) == len(papers))
    parts = [*header, "Mar 17"]
    for title, abstract in papers:
        parts += [title, abstract]
    text = "\n\n".join(parts) + "\n"
    if crlf:
        text = text.replace("\n", "\r\n")
    listing = parse_dump(text, reference=REFERENCE)
    assert [(e.paper.title, e.paper.abstract) for e in listing.entries] == [
        (t.strip(), a.strip()) for t, a in papers
    ]
    assert listing.header == tuple(header)


def test_folder_listing_only_takes_txt_files(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / ".hidden.txt").write_text("x")
    assert [p.name for p in dump_files(tmp_path)] == ["a.txt"]
    with pytest.raises(IngestError, match="no such folder"):
        dump_files(tmp_path / "nope")


# --- "today" is the date in the service's time zone, of the `now` passed in -----------------
def _dump_dated(folder: Path, day: str) -> Path:
    """A copy of one seed with its date line replaced by `day` (e.g. "Nov 29")."""
    folder.mkdir(exist_ok=True)
    text = (SEEDS / "001_5dda9fa4defc14f9.txt").read_text(encoding="utf-8")
    path = folder / "day.txt"
    path.write_text(text.replace("\nMar 11\n", f"\n{day}\n", 1), encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    ("zone", "now", "today"),
    [
        # 20:00 on Nov 28 in Los Angeles is 04:00 on Nov 29 in UTC
        ("UTC", "2026-11-29T04:00:00+00:00", "2026-11-29"),
        ("America/Los_Angeles", "2026-11-29T04:00:00+00:00", "2026-11-28"),
        ("America/Los_Angeles", "2026-11-29T07:59:59+00:00", "2026-11-28"),
        ("America/Los_Angeles", "2026-11-29T08:00:00+00:00", "2026-11-29"),
        # 23:30 on Nov 28 in UTC is already Nov 29 in Tokyo
        ("Asia/Tokyo", "2026-11-28T23:30:00+00:00", "2026-11-29"),
        ("Asia/Tokyo", "2026-11-28T14:59:00+00:00", "2026-11-28"),
        ("UTC", "2026-11-28T23:30:00", "2026-11-28"),  # a naive `now` is UTC
    ],
)
def test_today_is_the_date_of_now_in_the_configured_zone(
    make_settings: Callable[..., Settings], zone: str, now: str, today: str
) -> None:
    settings = make_settings(reference_date=None, timezone=zone)
    assert settings.today(dt.datetime.fromisoformat(now)) == dt.date.fromisoformat(today)
    pinned = make_settings(timezone=zone)  # NEWSLETTER_REFERENCE_DATE still wins
    assert pinned.today(dt.datetime.fromisoformat(now)) == REFERENCE


def test_an_unknown_service_time_zone_is_a_config_error_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"NEWSLETTER_TIMEZONE.*IANA"):
        load_settings(timezone="Mars/Olympus")


@pytest.mark.parametrize(
    ("zone", "year"), [("UTC", 2026), ("Asia/Tokyo", 2026), ("America/Los_Angeles", 2026)]
)
def test_ingest_infers_the_year_from_the_now_it_is_given(
    make_settings: Callable[..., Settings], tmp_path: Path, zone: str, year: int
) -> None:
    settings = make_settings(reference_date=None, timezone=zone)
    store = Store.open(settings.database_url)
    now = dt.datetime(2026, 11, 29, 4, 0, tzinfo=dt.UTC)  # Nov 28, 20:00 in Los Angeles
    (row,) = ingest_folder(store, settings, _dump_dated(tmp_path / "d", "Nov 29"), now=now)
    store.close()
    assert row.status == "ingested" and row.date == f"{year}-11-29"


_CHILD = """
import datetime as dt, sys, time
from pathlib import Path
from newsletter.pipeline import ingest_folder
from newsletter.settings import Settings
from newsletter.store import Store
assert time.strftime("%Z") in ("PST", "PDT"), time.strftime("%Z")  # the host is in LA
settings = Settings(_env_file=None, database_url=sys.argv[1])
store = Store.open(settings.database_url)
now = dt.datetime(2026, 11, 29, 4, 0, tzinfo=dt.UTC)  # 20:00 on Nov 28 on this host
(row,) = ingest_folder(store, settings, Path(sys.argv[2]), now=now)
print(row.date)
"""


def test_a_stored_dump_keeps_its_date_when_read_again_a_year_later(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The daemon re-reads the seeds folder every pass: on a dump's anniversary its "Mar 11"
    used to be re-dated to the new year, a new newest edition of year-old papers."""
    now = dt.datetime(2027, 3, 12, 12, tzinfo=dt.UTC)
    store = Store.open(make_settings().database_url)
    first = ingest_folder(store, make_settings(reference_date=REFERENCE), SEEDS, now=now)
    later = make_settings(reference_date=dt.date(REFERENCE.year + 1, 3, 12))
    again = ingest_folder(store, later, SEEDS, now=now)
    dates = store.listing_dates()
    pinned = ingest_folder(store, later, SEEDS, year=REFERENCE.year + 1, now=now)
    store.close()
    assert [o.date for o in again] == [o.date for o in first]
    assert {o.status for o in again} == {"unchanged"}
    assert all(d.year == REFERENCE.year for d in dates)
    assert {o.status for o in pinned} == {"ingested"}  # --year is the operator's word


@pytest.mark.parametrize("json_first", [True, False])
def test_a_text_dump_a_fetched_day_replaced_keeps_its_date_a_year_later(
    json_first: bool, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Where the fetched day (JSON) of the same date won, the text dump's content is in no
    stored listing: it was re-dated on its anniversary and mailed as the newest edition."""
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    txt = SEEDS / "002_2b37b74c05805532.txt"  # Mar 17
    shutil.copy(txt, seeds / txt.name)
    fetched = seeds / json_dump_name(dt.date(REFERENCE.year, 3, 17))
    store = Store.open(make_settings().database_url)
    now = dt.datetime(2027, 3, 16, 12, tzinfo=dt.UTC)
    if json_first:
        fetched.write_bytes(body(api_entries(txt)))
    ingest_folder(store, make_settings(reference_date=REFERENCE), seeds, now=now)
    if not json_first:  # stored from the text, then replaced by the fetched day
        fetched.write_bytes(body(api_entries(txt)))
        ingest_folder(store, make_settings(reference_date=REFERENCE), seeds, now=now)
    later = make_settings(reference_date=dt.date(REFERENCE.year + 1, 3, 16))
    rows = {Path(r.path).name: r for r in ingest_folder(store, later, seeds, now=now)}
    dates = store.listing_dates()
    store.close()
    assert dates == [dt.date(REFERENCE.year, 3, 17)]
    assert rows[txt.name].date == f"{REFERENCE.year}-03-17"
    assert rows[txt.name].status == "skipped" and "fetched" in (rows[txt.name].error or "")


def test_the_hosts_time_zone_does_not_move_the_year(tmp_path: Path) -> None:
    folder = _dump_dated(tmp_path / "d", "Nov 29")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env |= {"TZ": "America/Los_Angeles", "NEWSLETTER_SETTINGS_FILE": os.devnull}
    url = f"sqlite:///{tmp_path / 'n.db'}"
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, url, str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2026-11-29"  # the service's zone is UTC: Nov 29 is today


# --- a word for every entry of the seeds folder that is not ingested ------------------------
def test_symlinks_to_dumps_are_followed_and_every_other_entry_is_skipped_with_a_reason(
    tmp_path: Path,
) -> None:
    elsewhere = tmp_path / "archive"
    elsewhere.mkdir()
    shutil.copy(SEEDS / "001_5dda9fa4defc14f9.txt", elsewhere / "mar11")
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    shutil.copy(SEEDS / "002_2b37b74c05805532.txt", seeds / "b.txt")
    (seeds / "a.txt").symlink_to(elsewhere / "mar11")  # operators symlink dumps
    (seeds / "broken.txt").symlink_to(tmp_path / "gone.txt")
    (seeds / "folder.txt").mkdir()
    os.mkfifo(seeds / "pipe.txt")  # opening it would block: it must never be opened
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(seeds / "sock.txt"))
    (seeds / "notes.md").write_text("x")
    (seeds / ".hidden.txt").write_text("x")
    dumps, skipped = scan_dumps(seeds)
    assert [p.name for p in dumps] == ["a.txt", "b.txt"]
    reasons = {s.path.name: s.reason for s in skipped}
    assert sorted(reasons) == ["broken.txt", "folder.txt", "notes.md", "pipe.txt", "sock.txt"]
    assert "broken symlink" in reasons["broken.txt"] and "gone.txt" in reasons["broken.txt"]
    assert "folder" in reasons["folder.txt"]
    assert "FIFO" in reasons["pipe.txt"]
    assert "socket" in reasons["sock.txt"]
    assert "*.txt" in reasons["notes.md"]
    listing = read_dump(dumps[0], reference=REFERENCE)
    assert listing.date == dt.date(2026, 3, 11) and len(listing.entries) == 56


def test_a_runaway_dump_is_refused_unread_and_the_others_ingest(tmp_path: Path) -> None:
    """A 33 MiB file in the seeds folder (a log, a wrong export) costs a bounded read, not
    its whole size at every daemon pass, and names the fix."""
    shutil.copy(SEEDS / "002_2b37b74c05805532.txt", tmp_path / "002.txt")
    with (tmp_path / "big.txt").open("wb") as f:
        f.truncate(MAX_DUMP_BYTES + 1024 * 1024)
    results = read_dumps(sorted(tmp_path.iterdir()), reference=REFERENCE)
    by_name = {r.path.name: r for r in results}
    assert by_name["002.txt"].listing is not None
    error = by_name["big.txt"].error
    assert error is not None and "larger than 32 MiB" in str(error) and "big.txt" in str(error)


def test_the_paper_cap_counts_the_papers_of_a_dump() -> None:
    text = (SEEDS / "004_67f282ffe6c058cf.txt").read_text(encoding="utf-8")
    assert len(parse_dump(text, reference=REFERENCE, max_papers=52).entries) == 52
    with pytest.raises(IngestError, match=r"^day\.txt: 52 papers, more than .*\(51\)"):
        parse_dump(text, source="day.txt", reference=REFERENCE, max_papers=51)
