"""Subscription state, votes and signing keys: the store methods on SQLite and PostgreSQL, the
library, and the commands (`unsubscribe`, `resubscribe`, `subscribers list`, `feedback`)."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from newsletter.cli import cli
from newsletter.errors import BadToken, ConfigError, NotFound
from newsletter.feedback import vote
from newsletter.models import Subscriber
from newsletter.pipeline import ingest_folder
from newsletter.readers import ReaderIds, subscription_list, unsubscribe
from newsletter.settings import Settings
from newsletter.store import Store
from newsletter.subscribers import load_subscribers
from newsletter.tokens import SigningKeys, Tokens, signing_keys

from .conftest import EXAMPLE_SUBSCRIBERS, SEEDS

NOW = dt.datetime(2026, 3, 17, 7, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(hours=1)
KEY = "k" * 32


# --- the store, on both backends ----------------------------------------------------------
def test_reader_ids_are_random_stable_and_keyed_by_the_normalised_address(store: Store) -> None:
    ids = store.reader_ids(["Ada@Example.org", "grace@example.org"], now=NOW)
    assert set(ids) == {"ada@example.org", "grace@example.org"}
    assert all(len(i) >= 16 and "ada" not in i for i in ids.values())
    again = store.reader_ids([" ADA@example.org "], now=LATER)
    assert again == {"ada@example.org": ids["ada@example.org"]}
    row = store.reader(ids["ada@example.org"])
    assert row is not None and row.email == "ada@example.org" and row.status == "active"
    assert store.reader("no-such-reader") is None


def test_the_renderers_reader_ids_hold_one_chunk_at_a_time(store: Store) -> None:
    ids = ReaderIds(Settings(_env_file=None), store)  # type: ignore[call-arg]
    ids.prime(["Ada@Example.org", "grace@example.org"], NOW)  # created in one go
    first = ids("ada@example.org", NOW)
    ids.prime(["kenji@example.org"], LATER)
    held = ids._cache
    assert held is not None and set(held) == {"kenji@example.org"}  # flat: the chunk alone
    assert (
        ids("ADA@example.org", LATER)
        == first
        == store.reader_ids(["ada@example.org"], now=NOW)["ada@example.org"]
    )


def test_subscription_state_with_when_and_how(store: Store) -> None:
    assert store.unsubscribed(["ada@example.org"]) == set()
    row = store.set_subscription("ADA@example.org", "unsubscribed", how="one-click", now=NOW)
    assert (row.status, row.status_how, row.status_at) == ("unsubscribed", "one-click", NOW)
    # the same state again keeps the first time and way
    row = store.set_subscription("ada@example.org", "unsubscribed", how="page", now=LATER)
    assert (row.status_how, row.status_at) == ("one-click", NOW)
    assert store.unsubscribed(["Ada@Example.org", "grace@example.org"]) == {"ada@example.org"}
    row = store.set_subscription("ada@example.org", "active", how="cli", now=LATER)
    assert (row.status, row.status_how, row.status_at) == ("active", "cli", LATER)
    assert store.unsubscribed(["ada@example.org"]) == set()


def test_votes_latest_wins_and_clear_removes(store: Store, settings: Settings) -> None:
    ingest_folder(store, settings, SEEDS, now=NOW)
    edition = store.newest_date()
    assert edition is not None
    listing = store.listing(edition)
    assert listing is not None
    p1, p2 = (e.paper.id for e in listing.entries[:2])
    store.set_vote("ada@example.org", p1, "up", now=NOW)
    store.set_vote("ada@example.org", p2, "down", now=NOW)
    store.set_vote("Ada@example.org", p1, "down", now=LATER)
    assert [(v.paper_id, v.vote, v.at) for v in store.votes("ada@example.org")] == [
        (p1, "down", LATER),
        (p2, "down", NOW),
    ]
    store.set_vote("ada@example.org", p1, None, now=LATER)
    assert [v.paper_id for v in store.votes("ada@example.org")] == [p2]
    assert store.votes("grace@example.org") == []


# --- the library ----------------------------------------------------------------------------
def test_votes_only_from_subscribers_in_the_file_and_on_stored_papers(
    store: Store, settings: Settings
) -> None:
    ingest_folder(store, settings, SEEDS, now=NOW)
    subs = [Subscriber("ada@example.org")]
    paper = store.all_papers()[0]
    assert vote(store, subs, "ADA@example.org", paper.id, "up", now=NOW) == paper
    with pytest.raises(NotFound, match="not in the subscriber file"):
        vote(store, subs, "eve@example.org", paper.id, "up", now=NOW)
    with pytest.raises(NotFound, match="papers --json"):
        vote(store, subs, "ada@example.org", "0000000000000000", "up", now=NOW)


def test_the_list_shows_file_subscribers_then_unsubscribed_leftovers(store: Store) -> None:
    subs = [Subscriber("ada@example.org", name="Ada"), Subscriber("grace@example.org")]
    unsubscribe(store, "grace@example.org", how="page", now=NOW)
    unsubscribe(store, "gone@example.org", how="cli", now=NOW)
    store.reader_ids(["other@example.org"], now=NOW)  # active, not in the file: not listed
    rows = [r.as_dict() for r in subscription_list(store, subs)]
    assert [(r["email"], r["status"], r["in_file"], r["how"]) for r in rows] == [
        ("ada@example.org", "active", True, None),
        ("grace@example.org", "unsubscribed", True, "page"),
        ("gone@example.org", "unsubscribed", False, "cli"),
    ]


# --- tokens and keys ------------------------------------------------------------------------
def test_tokens_are_bound_to_purpose_reader_and_parts() -> None:
    tokens = Tokens(SigningKeys(KEY), max_age_days=60)
    t = tokens.sign("vote", "reader1", "abc123", "up")
    tokens.verify("vote", t, "reader1", "abc123", "up")
    for purpose, parts in [
        ("vote", ("reader2", "abc123", "up")),
        ("vote", ("reader1", "abc123", "down")),
        ("vote", ("reader1", "abc124", "up")),
        ("subscription", ("reader1", "abc123", "up")),
        ("archive", ("reader1",)),
    ]:
        with pytest.raises(BadToken):
            tokens.verify(purpose, t, *parts)  # type: ignore[arg-type]
    with pytest.raises(BadToken):
        Tokens(SigningKeys("x" * 32), max_age_days=60).verify("vote", t, "reader1", "abc123", "up")
    with pytest.raises(BadToken):
        tokens.verify("vote", "garbage", "reader1", "abc123", "up")


def test_an_old_token_expires_after_the_max_age() -> None:
    made = 1_700_000_000.0
    old = Tokens(SigningKeys(KEY), max_age_days=60, clock=lambda: made)
    t = old.sign("archive", "r1")
    later = Tokens(SigningKeys(KEY), max_age_days=60, clock=lambda: made + 59 * 86400)
    later.verify("archive", t, "r1")
    expired = Tokens(SigningKeys(KEY), max_age_days=60, clock=lambda: made + 61 * 86400)
    with pytest.raises(BadToken) as info:
        expired.verify("archive", t, "r1")
    assert info.value.expired


def test_a_missing_key_is_created_once_with_mode_0600(
    make_settings: Callable[..., Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "var" / "signing-key"
    with caplog.at_level("WARNING", logger="newsletter.tokens"):
        first = signing_keys(make_settings(), auto_file=path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(first.current.encode()) >= 32
    assert str(path) in caplog.text and first.current not in caplog.text
    assert signing_keys(make_settings(), auto_file=path) == first  # send and serve share it
    assert "***" in repr(first) and first.current not in repr(first)


def _key_in_child(path: str, out: Any) -> None:
    try:
        out.put(signing_keys(Settings(_env_file=None), auto_file=Path(path)).current)
    except ConfigError as exc:
        out.put(f"error: {exc}")


def test_processes_starting_together_share_one_whole_key(tmp_path: Path) -> None:
    """`send` and `serve` started at once: the loser read the key file between its creation
    and its write, and stopped on "the signing key has 0 bytes" (15 of 200 starts)."""
    ctx = multiprocessing.get_context("fork")
    for round_ in range(40):
        path = tmp_path / str(round_) / "signing-key"
        out = ctx.Queue()
        procs = [ctx.Process(target=_key_in_child, args=(str(path), out)) for _ in range(3)]
        for p in procs:
            p.start()
        keys = {out.get(timeout=30) for _ in procs}
        for p in procs:
            p.join()
        assert len(keys) == 1 and not next(iter(keys)).startswith("error"), keys
        assert sorted(f.name for f in path.parent.iterdir()) == ["signing-key"]  # no temp left


def test_a_short_key_is_refused_and_never_printed(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text("short-but-secret\n")
    with pytest.raises(ConfigError, match="at least 32 bytes") as info:
        signing_keys(make_settings(signing_key_file=keyfile))
    assert "short-but-secret" not in str(info.value)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        make_settings(signing_key="é" * 15)  # 30 bytes in UTF-8
    make_settings(signing_key="é" * 16)  # 32 bytes: fine


# --- the commands -----------------------------------------------------------------------------
@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., object]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///{tmp_path / 'n.db'}")
    monkeypatch.setenv("NEWSLETTER_SEEDS_DIR", str(SEEDS))
    monkeypatch.setenv("NEWSLETTER_SUBSCRIBERS_FILE", str(EXAMPLE_SUBSCRIBERS))
    monkeypatch.setenv("NEWSLETTER_REFERENCE_DATE", "2026-11-21")
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> object:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    return run


def test_unsubscribe_resubscribe_and_the_list_from_the_command_line(
    cli_env: Callable[..., object],
) -> None:
    run = cli_env
    run("unsubscribe", "Ada@Example.org")
    doc = json.loads(run("subscribers", "list", "--json").stdout)  # type: ignore[attr-defined]
    by = {s["email"]: s for s in doc["subscribers"]}
    assert set(by) == {s.email for s in load_subscribers(EXAMPLE_SUBSCRIBERS)}
    assert by["ada@example.org"]["status"] == "unsubscribed"
    assert by["ada@example.org"]["how"] == "cli" and by["ada@example.org"]["changed_at"]
    assert {s["status"] for e, s in by.items() if e != "ada@example.org"} == {"active"}
    run("resubscribe", "ada@example.org")
    doc = json.loads(run("subscribers", "list", "--json").stdout)  # type: ignore[attr-defined]
    assert {s["status"] for s in doc["subscribers"]} == {"active"}
    run("unsubscribe", "not an address", code=2)
    # a typo is recorded (it may be meant for a later subscriber) but said to be one
    typo = run("unsubscribe", "adaa@example.org")
    assert "adaa@example.org is not in the subscriber file (a typo?)" in typo.stderr  # type: ignore[attr-defined]
    assert "not in the subscriber file" not in run("unsubscribe", "ada@example.org").stderr  # type: ignore[attr-defined]


def test_feedback_add_and_list_from_the_command_line(cli_env: Callable[..., object]) -> None:
    run = cli_env
    run("ingest")
    papers = json.loads(run("papers", "--json").stdout)  # type: ignore[attr-defined]
    pid = papers[0]["id"]
    run("feedback", "add", "ada@example.org", pid, "up")
    run("feedback", "add", "ada@example.org", papers[1]["id"], "down")
    cleared = run("feedback", "add", "ada@example.org", papers[1]["id"], "clear")
    assert "cleared the vote on" in cleared.stdout  # type: ignore[attr-defined]
    nothing = run("feedback", "add", "ada@example.org", papers[2]["id"], "clear")
    assert "had no vote to clear" in nothing.stdout  # type: ignore[attr-defined]
    doc = json.loads(run("feedback", "list", "ada@example.org", "--json").stdout)  # type: ignore[attr-defined]
    assert [(v["paper_id"], v["title"], v["vote"]) for v in doc["votes"]] == [
        (pid, papers[0]["title"], "up")
    ]
    assert dt.datetime.fromisoformat(doc["votes"][0]["at"])
    run("feedback", "add", "eve@example.org", pid, "up", code=2)
    run("feedback", "add", "ada@example.org", "nope", "up", code=2)
    run("feedback", "add", "ada@example.org", pid, "sideways", code=2)


def test_serve_refuses_a_short_signing_key_before_listening(
    cli_env: Callable[..., object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SIGNING_KEY", "tiny-secret")
    result = cli_env("serve", "--port", "0", code=2)
    assert "NEWSLETTER_SIGNING_KEY" in result.output  # type: ignore[attr-defined]
    assert "at least 32 bytes" in result.output  # type: ignore[attr-defined]
    assert "tiny-secret" not in result.output  # type: ignore[attr-defined]


def test_votes_added_from_the_command_line_change_that_readers_ranking_only(
    cli_env: Callable[..., object],
) -> None:
    """`feedback add` is read by the matcher: `select --all --json` of the voter changes (a
    down-voted paper sinks and is no longer sent), the other readers' results do not."""
    run = cli_env

    def ranking() -> dict[str, dict[str, tuple[float, bool]]]:
        doc = json.loads(run("select", "--all", "--json").stdout)  # type: ignore[attr-defined]
        return {
            s["email"]: {p["id"]: (p["score"], p["sent"]) for p in s["papers"]}
            for s in doc["subscribers"]
        }

    run("ingest")
    before = ranking()
    ada = before["ada@example.org"]
    top = max((pid for pid, (_, sent) in ada.items() if sent), key=lambda pid: ada[pid][0])
    run("feedback", "add", "ada@example.org", top, "down")
    after = ranking()
    assert after["ada@example.org"][top][0] < ada[top][0]
    assert after["ada@example.org"][top][1] is False
    for email, papers in before.items():
        if email != "ada@example.org":
            assert after[email] == papers
