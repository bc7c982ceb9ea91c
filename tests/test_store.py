"""The store on SQLite and PostgreSQL: idempotent ingest, replacement, ledger and history."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

import pytest

from newsletter.errors import LockHeld, StoreError
from newsletter.ingest import dump_files, read_dump
from newsletter.models import LedgerOutcome, ListingEntry
from newsletter.store import Store

from .conftest import REFERENCE, SEEDS

NOW = dt.datetime(2026, 11, 21, 7, 0, tzinfo=dt.UTC)


def ingest_seeds(store: Store) -> list[str]:
    return [
        store.save_listing(read_dump(p, reference=REFERENCE), now=NOW).status
        for p in dump_files(SEEDS)
    ]


def test_seeds_ingest_once_and_reingest_changes_nothing(store: Store) -> None:
    assert ingest_seeds(store) == ["ingested"] * 4
    counts = store.counts()
    assert counts["papers"] == 211 and counts["listings"] == 4
    assert counts["listing_entries"] == 56 + 78 + 65 + 52
    assert ingest_seeds(store) == ["unchanged"] * 4
    assert store.counts() == counts


def test_listing_round_trips_in_rank_order(store: Store) -> None:
    ingest_seeds(store)
    listing = store.listing(dt.date(2026, 3, 17))
    assert listing is not None and len(listing.entries) == 78
    parsed = read_dump(SEEDS / "002_2b37b74c05805532.txt", reference=REFERENCE)
    assert [e.paper for e in listing.entries] == [e.paper for e in parsed.entries]
    assert store.newest_date() == dt.date(2026, 3, 17)
    assert store.listing_dates() == sorted(store.listing_dates())


def test_a_paper_is_one_record_with_every_appearance(store: Store) -> None:
    ingest_seeds(store)
    listing = store.listing(dt.date(2026, 3, 17))
    assert listing is not None
    dichotomy = next(e for e in listing.entries if e.paper.title.startswith("Dichotomy"))
    seen = store.paper_dates([dichotomy.paper.id])[dichotomy.paper.id]
    assert [d for d, _, _ in seen] == [
        dt.date(2026, 3, 12),
        dt.date(2026, 3, 14),
        dt.date(2026, 3, 17),
    ]
    assert all(src.endswith(".txt") and rank >= 1 for _, rank, src in seen)


def test_changed_file_for_a_stored_date_replaces_the_listing(store: Store) -> None:
    listing = read_dump(SEEDS / "001_5dda9fa4defc14f9.txt", reference=REFERENCE)
    assert store.save_listing(listing, now=NOW).status == "ingested"
    shorter = dataclasses.replace(
        listing, entries=listing.entries[:10], content_hash="changed-hash"
    )
    outcome = store.save_listing(shorter, now=NOW)
    assert outcome.status == "replaced" and outcome.new_papers == 0
    stored = store.listing(listing.date)
    assert stored is not None and len(stored.entries) == 10
    assert store.counts()["papers"] == 56  # papers are never deleted: history may refer to them


def test_replacement_with_new_papers_and_new_ranks(store: Store) -> None:
    a = read_dump(SEEDS / "001_5dda9fa4defc14f9.txt", reference=REFERENCE)
    b = read_dump(SEEDS / "004_67f282ffe6c058cf.txt", reference=REFERENCE)
    store.save_listing(a, now=NOW)
    mixed = dataclasses.replace(
        a,
        entries=tuple(
            ListingEntry(rank=i + 1, paper=e.paper, line=e.line)
            for i, e in enumerate(b.entries[:5] + a.entries[:5])
        ),
        content_hash="mixed",
    )
    outcome = store.save_listing(mixed, now=NOW)
    assert outcome.status == "replaced" and outcome.new_papers > 0
    stored = store.listing(a.date)
    assert stored is not None
    assert [e.paper.id for e in stored.entries] == [e.paper.id for e in mixed.entries]


def test_history_before_an_edition_excludes_that_edition(store: Store) -> None:
    ingest_seeds(store)
    store.record_history("Ada@Example.org", dt.date(2026, 3, 11), ["p1", "p2"], now=NOW)
    store.record_history("ada@example.org", dt.date(2026, 3, 12), ["p3", "p1"], now=NOW)
    assert store.history_before(dt.date(2026, 3, 12)) == {"ada@example.org": {"p1", "p2"}}
    assert store.history_before(dt.date(2026, 3, 14)) == {"ada@example.org": {"p1", "p2", "p3"}}
    assert store.history_before(dt.date(2026, 3, 11)) == {}
    assert store.history_before(dt.date(2026, 3, 14), ["bob@example.org"]) == {}


def test_ledger_lifecycle(store: Store) -> None:
    """The batched writes the send loop uses (plan_rows, record_outcomes), as production
    runs them, on SQLite and PostgreSQL."""
    ed = dt.date(2026, 3, 17)
    store.plan_rows(ed, [("Ada@example.org", "<m1@x>", ("a", "b"))], now=NOW)
    row = store.ledger_row(ed, "ada@example.org")
    assert row is not None
    assert (
        row.status == "planned" and row.paper_ids == ("a", "b") and row.email == "ada@example.org"
    )
    # planning again never resets a row
    store.plan_rows(ed, [("ada@example.org", "<m2@x>", ("c",))], now=NOW)
    again = store.ledger_row(ed, "ada@example.org")
    assert again is not None and again.message_id == "<m1@x>"
    later = NOW + dt.timedelta(minutes=5)
    failed = LedgerOutcome(
        "ada@example.org", "failed", attempts=2, reply="451 try later", next_attempt_at=later
    )
    store.record_outcomes(ed, [failed], now=NOW)
    row2 = store.ledger_row(ed, "ada@example.org")
    assert row2 is not None and row2.status == "failed" and row2.attempts == 2
    assert row2.next_attempt_at == later and row2.last_reply == "451 try later"
    sent = LedgerOutcome(
        "ada@example.org",
        "sent",
        attempts=1,
        reply="250 ok",
        message_id="<m1@x>",
        paper_ids=("a", "b"),
    )
    store.record_outcomes(ed, [sent], now=NOW)
    row3 = store.ledger_row(ed, "ada@example.org")
    assert row3 is not None and row3.status == "sent" and row3.attempts == 3
    assert row3.next_attempt_at is None
    assert store.history_before(ed + dt.timedelta(days=1)) == {"ada@example.org": {"a", "b"}}
    skip = LedgerOutcome("ada@example.org", "skipped", reason="nothing")
    bob = LedgerOutcome("bob@example.org", "skipped", reason="no paper above the threshold")
    store.record_outcomes(ed, [skip, bob], now=NOW)
    row4 = store.ledger_row(ed, "ada@example.org")
    assert row4 is not None and row4.status == "sent"  # skipped never overwrites sent
    assert [r.status for r in store.ledger_rows(ed)] == ["sent", "skipped"]
    # an unknown outcome counts its papers as had (no later edition repeats them)
    unknown = LedgerOutcome("carol@example.org", "unknown", attempts=1, paper_ids=("z",))
    store.record_outcomes(ed, [unknown], now=NOW)
    assert store.history_before(ed + dt.timedelta(days=1))["carol@example.org"] == {"z"}
    assert sorted(store.edition_counts(ed)) == [
        ("sent", None, 1),
        ("skipped", "no paper above the threshold", 1),
        ("unknown", None, 1),
    ]
    assert store.watermarks(["ADA@example.org", "bob@example.org"]) == {
        "ada@example.org": ed,
        "bob@example.org": ed,
    }


@pytest.mark.parametrize("bad", ["nosuchdriver://x", "postgresql+psycopg://nobody@127.0.0.1:1/x"])
def test_bad_database_url_is_a_clear_error(bad: str) -> None:

    with pytest.raises(StoreError, match=r"NEWSLETTER_DATABASE_URL|cannot open the database"):
        Store.open(bad)


def test_sender_lock_is_exclusive_and_released(store: Store, tmp_path: Path) -> None:

    with store.sender_lock("2026-03-17"):
        other = Store.open(str(store.engine.url.render_as_string(hide_password=False)))
        try:
            with (
                pytest.raises(LockHeld, match="already working on 2026-03-17"),
                other.sender_lock("2026-03-17"),
            ):
                pass
            with other.sender_lock("2026-03-12"):  # another edition is free
                pass
        finally:
            other.close()
    with store.sender_lock("2026-03-17"):  # released after the block
        pass


def test_sqlite_lock_files_do_not_pile_up(tmp_path: Path) -> None:
    """A day's lock file goes with its sender: a year of editions leaves no year of files."""
    store = Store.open(f"sqlite:///{tmp_path / 'n.db'}")
    try:
        for day in ("2026-03-16", "2026-03-17"):
            with store.sender_lock(day):
                assert store.lock_path(day).exists()
            assert not store.lock_path(day).exists()
    finally:
        store.close()
    assert sorted(p.name for p in tmp_path.iterdir() if ".lock" in p.name) == []


def test_sqlite_lock_holds_across_symlinked_and_hard_linked_paths(tmp_path: Path) -> None:
    """Two senders reaching one database file by two paths meet on one lock (they sent every
    digest twice when the lock was named after the path they were given)."""
    (tmp_path / "db").mkdir()
    real = tmp_path / "db" / "n.db"
    Store.open(f"sqlite:///{real}").close()
    (tmp_path / "link").symlink_to(tmp_path / "db")
    os.link(real, tmp_path / "db" / "hard.db")
    paths = [tmp_path / "link" / "n.db", tmp_path / "db" / "hard.db"]
    stores = [Store.open(f"sqlite:///{p}") for p in [real, *paths]]
    try:
        with stores[0].sender_lock("2026-03-17"):
            for other in stores[1:]:
                with pytest.raises(LockHeld), other.sender_lock("2026-03-17"):
                    pass
    finally:
        for s in stores:
            s.close()


@pytest.mark.parametrize(
    "url", ["sqlite:///file:n.db?mode=rwc&uri=true", "sqlite:///file:mem?mode=memory&uri=true"]
)
def test_sqlite_uri_filenames_are_refused(url: str) -> None:
    """A URI filename names no file a sender lock could sit beside: refused with the fix."""
    with pytest.raises(StoreError, match="URI filename; give the database file's path"):
        Store.open(url)


_HAMMER = """
import os, sys, time
from newsletter.errors import LockHeld
from newsletter.store import Store
store = Store.open(sys.argv[1])
inside = sys.argv[2]
entered = clashes = 0
deadline = time.monotonic() + 3
while time.monotonic() < deadline:
    try:
        with store.sender_lock("ed"):
            entered += 1
            try:
                fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                clashes += 1
                continue
            os.close(fd)
            os.unlink(inside)
    except LockHeld:
        pass
print(entered, clashes)
"""


def test_sqlite_lock_excludes_while_holders_remove_its_file(tmp_path: Path) -> None:
    """Holders unlink the lock file as they leave; a process that opened the old file just
    before must not think it holds the lock while another holds the new file."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'n.db'}"
    Store.open(url).close()
    inside = str(tmp_path / "inside")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _HAMMER, url, inside], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    counts = [tuple(map(int, p.communicate()[0].split())) for p in procs]
    assert sum(entered for entered, _ in counts) > 100, counts  # they did take turns
    assert [clashes for _, clashes in counts] == [0, 0, 0, 0], counts


def test_lock_released_when_the_holder_is_killed(store: Store, tmp_path: Path) -> None:
    """A holder killed by SIGKILL leaves no stale lock (the kernel / server drops it)."""
    import subprocess
    import sys
    import time

    url = store.engine.url.render_as_string(hide_password=False)
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from newsletter.store import Store\n"
        f"s = Store.open({url!r})\n"
        f"with s.sender_lock('ed'):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeld), store.sender_lock("ed"):
            pass
    finally:
        proc.kill()
        proc.communicate()
    for _ in range(50):  # the server may need a moment to notice the dead session
        try:
            with store.sender_lock("ed"):
                break
        except LockHeld:
            time.sleep(0.1)
    else:
        pytest.fail("lock still held after the holder was killed")


def test_schedule_state_round_trip(store: Store) -> None:
    assert store.last_firing("UTC|07:00") is None
    store.set_last_firing("UTC|07:00", NOW)
    store.set_last_firing("UTC|07:00", NOW + dt.timedelta(days=1))
    assert store.last_firing("UTC|07:00") == NOW + dt.timedelta(days=1)


def test_history_elsewhere_is_every_other_edition_but_never_its_own(store: Store) -> None:
    ingest_seeds(store)
    mar11, mar12, mar14 = dt.date(2026, 3, 11), dt.date(2026, 3, 12), dt.date(2026, 3, 14)
    store.record_history("Ada@Example.org", mar12, ["p1", "p2"], now=NOW)
    store.record_history("ada@example.org", mar14, ["p3"], now=NOW)
    store.record_history("bob@example.org", mar11, ["p1"], now=NOW)
    # an older edition sees what newer ones sent; an edition never loses its own papers
    assert store.history_elsewhere(mar11) == {"ada@example.org": {"p1", "p2", "p3"}}
    assert store.history_elsewhere(mar12, ["ADA@example.org"]) == {"ada@example.org": {"p3"}}
    assert store.history_elsewhere(mar14) == {
        "ada@example.org": {"p1", "p2"},
        "bob@example.org": {"p1"},
    }
    assert store.history_elsewhere(mar14, ["carol@example.org"]) == {}
    # p3 was first delivered on Mar 14 and (a repeat, before this rule) on Mar 12 as well: a
    # re-render of Mar 12 still shows it, as its sent ledger row says
    store.plan_rows(mar12, [("ada@example.org", "<m@x>", ("p3",))], now=NOW)
    store.record_outcomes(
        mar12,
        [LedgerOutcome("ada@example.org", "sent", message_id="<m@x>", paper_ids=("p3",))],
        now=NOW,
    )
    assert store.history_elsewhere(mar12, ["ada@example.org"]) == {}
