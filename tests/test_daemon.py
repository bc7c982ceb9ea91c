"""The daemon's passes end to end on a real store and Maildir, driven by an injected clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import mailbox
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from newsletter.pipeline import ingest_folder
from newsletter.schedule import Daemon, Decision, _serve, group_subscribers, run_pass
from newsletter.settings import Settings
from newsletter.store import Store
from newsletter.subscribers import load_subscribers, parse_subscribers

from .conftest import EXAMPLE_SUBSCRIBERS, SEEDS

SUBS = """\
defaults: {send_at: "07:00"}
subscribers:
  - email: tokyo@example.org
    timezone: Asia/Tokyo
    topics: [{name: RL, keywords: ["reinforcement learning", exploration]}]
  - email: berlin@example.org
    timezone: Europe/Berlin
    topics: [{name: RL, keywords: ["reinforcement learning", exploration]}]
"""


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def seeds_dir(tmp_path: Path) -> Path:
    d = tmp_path / "seeds"
    d.mkdir()
    return d


def add_dump(seeds_dir: Path, name: str) -> None:
    shutil.copy(SEEDS / name, seeds_dir / name)


@pytest.fixture
def daemon_settings(
    make_settings: Callable[..., Settings], seeds_dir: Path, db_url: str, tmp_path: Path
) -> Settings:
    subs = tmp_path / "subscribers.yaml"
    subs.write_text(SUBS, encoding="utf-8")
    return make_settings(
        seeds_dir=seeds_dir, subscribers_file=subs, database_url=db_url, smtp_retry_base=0.01
    )


def inbox(settings: Settings) -> list[tuple[str, str]]:
    if not settings.outbox_dir.exists():
        return []
    box = mailbox.Maildir(settings.outbox_dir, create=False)
    return sorted((str(m["To"]), str(m["Message-ID"])) for m in box)


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def run_at(settings: Settings, store: Store, now: dt.datetime) -> list[str]:
    subs = load_subscribers(settings.subscribers_file)
    decisions = asyncio.run(run_pass(settings, store, subs, Clock(now))).decisions
    return [f"{d.group.key}:{d.action}" for d in decisions]


def test_a_firing_another_sender_holds_is_reported_left_open_not_sent(
    make_settings: Callable[..., Settings], seeds_dir: Path, tmp_path: Path
) -> None:
    """SQLite: a second sender gets LockHeld and the firing stays open; `run --once` printed
    it as sent (with its recipient count) all the same."""
    subs = tmp_path / "subscribers.yaml"
    subs.write_text(SUBS, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = make_settings(seeds_dir=seeds_dir, subscribers_file=subs, database_url=url)
    add_dump(seeds_dir, "002_2b37b74c05805532.txt")  # Mar 17
    store, other = Store.open(url), Store.open(url)
    tokyo = utc(2026, 3, 16, 22, 0)  # 07:00 in Tokyo
    try:
        with other.sender_lock("2026-03-17"):
            result = asyncio.run(run_pass(settings, store, load_subscribers(subs), Clock(tokyo)))
        sends = {d.group.key for d in result.decisions if d.action == "send"}
        assert "Asia/Tokyo|07:00" in sends and result.left_open == sends
        assert inbox(settings) == []
        again = asyncio.run(run_pass(settings, store, load_subscribers(subs), Clock(tokyo)))
        assert again.left_open == set() and "tokyo@example.org" in dict(inbox(settings))
    finally:
        store.close()
        other.close()


def test_a_firing_that_found_the_edition_locked_is_resumed_not_missed(
    make_settings: Callable[..., Settings], seeds_dir: Path, tmp_path: Path
) -> None:
    """With catch-up off, a firing that met another sender on its edition (a long send of the
    day before still running at the next cron tick) is resumed when the lock is free, not
    judged late, then missed: it was recorded open before the lock was tried."""
    subs = tmp_path / "subscribers.yaml"
    subs.write_text(SUBS, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = make_settings(
        seeds_dir=seeds_dir, subscribers_file=subs, database_url=url, catch_up=False
    )
    add_dump(seeds_dir, "002_2b37b74c05805532.txt")  # Mar 17
    store, other = Store.open(url), Store.open(url)
    berlin = utc(2026, 3, 17, 6, 0)
    try:
        with other.sender_lock("2026-03-17"):
            first = run_at(settings, store, berlin)
        assert "Europe/Berlin|07:00:send" in first and inbox(settings) == []
        # 40 minutes later, far past the grace: resumed, not missed
        assert "Europe/Berlin|07:00:send" in run_at(
            settings, store, berlin + dt.timedelta(minutes=40)
        )
        assert "berlin@example.org" in dict(inbox(settings))
    finally:
        store.close()
        other.close()


def test_a_dump_copied_in_after_the_send_time_goes_out_that_day(
    daemon_settings: Settings, seeds_dir: Path, store: Store
) -> None:
    """The send time found nothing new; the day's dump came 20 minutes later. It goes out at
    the next pass, not never (the next day's dump would have been the newest)."""
    add_dump(seeds_dir, "001_5dda9fa4defc14f9.txt")  # Mar 11
    run_at(daemon_settings, store, utc(2026, 3, 11, 6, 0))
    assert "Europe/Berlin|07:00:nothing-new" in run_at(
        daemon_settings, store, utc(2026, 3, 12, 6, 0)
    )
    add_dump(seeds_dir, "004_67f282ffe6c058cf.txt")  # Mar 12, late
    assert "Europe/Berlin|07:00:send" in run_at(daemon_settings, store, utc(2026, 3, 12, 6, 25))
    assert "Europe/Berlin|07:00:not-due" in run_at(daemon_settings, store, utc(2026, 3, 12, 6, 30))
    add_dump(seeds_dir, "003_7dc8c6cc3b596c67.txt")  # Mar 14
    run_at(daemon_settings, store, utc(2026, 3, 14, 6, 0))
    days = [dt.date(2026, 3, d) for d in (11, 12, 14)]
    assert all(store.ledger_row(d, "berlin@example.org") for d in days)


def test_each_group_at_its_own_local_time(
    daemon_settings: Settings, seeds_dir: Path, store: Store
) -> None:
    # the daemon has been running: Mar 16's send times were served, with no dump yet
    acts = run_at(daemon_settings, store, utc(2026, 3, 16, 6, 0))
    assert set(acts) == {"Asia/Tokyo|07:00:nothing-new", "Europe/Berlin|07:00:nothing-new"}
    add_dump(seeds_dir, "002_2b37b74c05805532.txt")  # Mar 17
    # 22:00 UTC on Mar 16 is 07:00 in Tokyo and 23:00 in Berlin
    acts = run_at(daemon_settings, store, utc(2026, 3, 16, 22, 0))
    assert "Asia/Tokyo|07:00:send" in acts
    assert [to for to, _ in inbox(daemon_settings)] == ["tokyo@example.org"]
    # Berlin's 07:00 is 06:00 UTC on Mar 17
    run_at(daemon_settings, store, utc(2026, 3, 17, 6, 0))
    assert [to for to, _ in inbox(daemon_settings)] == ["berlin@example.org", "tokyo@example.org"]
    # a second pass at the same moment does nothing
    before = inbox(daemon_settings)
    assert set(run_at(daemon_settings, store, utc(2026, 3, 17, 6, 1))) == {
        "Asia/Tokyo|07:00:not-due",
        "Europe/Berlin|07:00:not-due",
    }
    assert inbox(daemon_settings) == before


def test_no_dump_sends_nothing_and_new_dumps_coalesce(
    daemon_settings: Settings, seeds_dir: Path, store: Store
) -> None:
    add_dump(seeds_dir, "001_5dda9fa4defc14f9.txt")  # Mar 11
    # Berlin's 07:00; Tokyo's 07:00 passed today too (catch-up at first start)
    run_at(daemon_settings, store, utc(2026, 3, 11, 6, 0))
    assert len(inbox(daemon_settings)) == 2
    acts = run_at(daemon_settings, store, utc(2026, 3, 12, 6, 0))  # no new dump
    assert "Europe/Berlin|07:00:nothing-new" in acts and len(inbox(daemon_settings)) == 2
    # two dumps arrive at once (Mar 12 and Mar 14): only the newest goes out
    add_dump(seeds_dir, "004_67f282ffe6c058cf.txt")
    add_dump(seeds_dir, "003_7dc8c6cc3b596c67.txt")
    run_at(daemon_settings, store, utc(2026, 3, 14, 6, 0))
    assert [r.email for r in store.ledger_rows(dt.date(2026, 3, 14))] == [
        "berlin@example.org",
        "tokyo@example.org",
    ]
    assert store.ledger_rows(dt.date(2026, 3, 12)) == []  # never a burst of old editions
    assert len(inbox(daemon_settings)) == 4


def test_downtime_catch_up_and_no_repeat(
    daemon_settings: Settings, seeds_dir: Path, store: Store
) -> None:
    add_dump(seeds_dir, "004_67f282ffe6c058cf.txt")
    add_dump(seeds_dir, "003_7dc8c6cc3b596c67.txt")
    # started at 10:30 Berlin time: today's 07:00 passed while we were down -> sent now
    acts = run_at(daemon_settings, store, utc(2026, 3, 14, 9, 30))
    assert "Europe/Berlin|07:00:send" in acts
    # Tokyo's 07:00 on Mar 14 was 22:00 UTC Mar 13; catch-up at 18:30 Tokyo time, same day
    assert "Asia/Tokyo|07:00:send" in acts
    assert len(inbox(daemon_settings)) == 2
    # the next edition never repeats a paper
    add_dump(seeds_dir, "002_2b37b74c05805532.txt")
    run_at(daemon_settings, store, utc(2026, 3, 17, 6, 0))
    first = set(store.ledger_row(dt.date(2026, 3, 14), "berlin@example.org").paper_ids)  # type: ignore[union-attr]
    second = set(store.ledger_row(dt.date(2026, 3, 17), "berlin@example.org").paper_ids)  # type: ignore[union-attr]
    assert first and second and not first & second


def test_catch_up_off_waits_for_the_next_send_time(
    make_settings: Callable[..., Settings], daemon_settings: Settings, seeds_dir: Path, store: Store
) -> None:
    settings = daemon_settings.model_copy(update={"catch_up": False})
    add_dump(seeds_dir, "003_7dc8c6cc3b596c67.txt")
    acts = run_at(settings, store, utc(2026, 3, 14, 9, 30))
    assert "Europe/Berlin|07:00:missed" in acts and inbox(settings) == []
    run_at(settings, store, utc(2026, 3, 15, 6, 0))
    assert [to for to, _ in inbox(settings)] == ["berlin@example.org"]


def test_subscriber_file_hot_reload_keeps_the_last_good_one(
    daemon_settings: Settings, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    async def scenario() -> None:
        subs = load_subscribers(daemon_settings.subscribers_file)
        daemon = Daemon(daemon_settings, store, subs, Clock(utc(2026, 3, 17, 5, 0)))
        scheduler = AsyncIOScheduler(timezone="UTC")
        daemon._install_jobs(scheduler)
        assert sorted(j.id for j in scheduler.get_jobs()) == [
            "group:Asia/Tokyo|07:00",
            "group:Europe/Berlin|07:00",
        ]
        path = daemon_settings.subscribers_file
        path.write_text(SUBS.replace("Europe/Berlin", "Europe/Berln"), encoding="utf-8")
        daemon._mtime = None  # as if the file's mtime changed
        with caplog.at_level(logging.ERROR, logger="newsletter"):
            await daemon._reload(scheduler)
        assert "keeping the last good version" in caplog.text and "Europe/Berln" in caplog.text
        assert len(daemon.subscribers) == 2
        path.write_text(SUBS.replace("Europe/Berlin", "America/Chicago"), encoding="utf-8")
        daemon._mtime = None
        await daemon._reload(scheduler)
        assert sorted(j.id for j in scheduler.get_jobs()) == [
            "group:America/Chicago|07:00",
            "group:Asia/Tokyo|07:00",
        ]

    logging.getLogger("newsletter").propagate = True
    asyncio.run(scenario())


def test_replay_walks_every_listing_without_repeats(
    daemon_settings: Settings, store: Store
) -> None:
    from newsletter.pipeline import ingest_folder
    from newsletter.schedule import replay

    ingest_folder(store, daemon_settings, SEEDS, now=utc(2026, 3, 17, 0, 0))
    subs = parse_subscribers(SUBS)
    rows = replay(daemon_settings, store, subs)
    assert sorted({r.edition for r in rows}) == store.listing_dates()
    assert all(r.status == "sent" for r in rows)
    for email in ("tokyo@example.org", "berlin@example.org"):
        ids = [
            pid
            for ed in store.listing_dates()
            for pid in store.ledger_row(ed, email).paper_ids  # type: ignore[union-attr]
        ]
        assert len(ids) == len(set(ids)), "a paper was sent twice"
    assert any(r.repeats_avoided for r in rows)
    assert len(inbox(daemon_settings)) == 2 * len(store.listing_dates())
    # a second replay sends nothing new
    again = replay(daemon_settings, store, subs)
    assert len(inbox(daemon_settings)) == 2 * len(store.listing_dates())
    assert [r.status for r in again] == [r.status for r in rows]


def test_demo_is_the_main_job(tmp_path: Path, db_url: str) -> None:
    from click.testing import CliRunner

    from newsletter.cli import cli

    env = {
        "NEWSLETTER_DATABASE_URL": db_url,
        "NEWSLETTER_SEEDS_DIR": str(SEEDS),
        "NEWSLETTER_SUBSCRIBERS_FILE": str(EXAMPLE_SUBSCRIBERS),
        "NEWSLETTER_OUTBOX_DIR": str(tmp_path / "outbox"),
        "NEWSLETTER_PREVIEW_DIR": str(tmp_path / "preview"),
    }
    first = CliRunner().invoke(cli, ["demo"], env=env, catch_exceptions=False)
    assert first.exit_code == 0, first.stderr
    assert "sent 5" in first.stdout and "index.html" in first.stdout
    assert len(list(mailbox.Maildir(tmp_path / "outbox", create=False))) == 5
    assert (tmp_path / "preview" / "index.html").exists()
    again = CliRunner().invoke(cli, ["demo"], env=env, catch_exceptions=False)
    assert again.exit_code == 0 and "sent 0" in again.stdout
    assert len(list(mailbox.Maildir(tmp_path / "outbox", create=False))) == 5


def test_status_shows_each_groups_next_run(tmp_path: Path, db_url: str) -> None:
    import json

    from click.testing import CliRunner

    from newsletter.cli import cli

    subs = tmp_path / "subscribers.yaml"
    subs.write_text(SUBS, encoding="utf-8")
    env = {
        "NEWSLETTER_DATABASE_URL": db_url,
        "NEWSLETTER_SEEDS_DIR": str(SEEDS),
        "NEWSLETTER_SUBSCRIBERS_FILE": str(subs),
    }
    CliRunner().invoke(cli, ["ingest"], env=env, catch_exceptions=False)
    result = CliRunner().invoke(cli, ["status", "--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    schedule = {g["group"]: g for g in json.loads(result.stdout)["schedule"]}
    assert set(schedule) == {"Asia/Tokyo|07:00", "Europe/Berlin|07:00"}
    tokyo = dt.datetime.fromisoformat(schedule["Asia/Tokyo|07:00"]["next_run_local"])
    assert (tokyo.hour, tokyo.minute) == (7, 0) and tokyo.utcoffset() == dt.timedelta(hours=9)
    utc_run = dt.datetime.fromisoformat(schedule["Asia/Tokyo|07:00"]["next_run_utc"])
    assert utc_run == tokyo and utc_run.utcoffset() == dt.timedelta(0)


@pytest.mark.slow
def test_daemon_process_catches_up_then_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """The real daemon: starts, serves today's passed send times, exits 0 on SIGTERM,
    logging JSON lines with no secret in them."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    subs = tmp_path / "subscribers.yaml"
    subs.write_text(SUBS, encoding="utf-8")
    env = {
        **os.environ,
        "NEWSLETTER_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "NEWSLETTER_SEEDS_DIR": str(SEEDS),
        "NEWSLETTER_SUBSCRIBERS_FILE": str(subs),
        "NEWSLETTER_OUTBOX_DIR": str(tmp_path / "outbox"),
        "NEWSLETTER_LOG_FORMAT": "json",
        # a secret the daemon holds (an SMTP password without a host is refused now)
        "NEWSLETTER_SIGNING_KEY": "hunter2-very-secret-signing-key-0123456789",
        "NEWSLETTER_SETTINGS_FILE": os.devnull,
    }
    from newsletter.schedule import decide, group_subscribers

    started = dt.datetime.now(dt.UTC)
    expected = sum(
        decide(
            g,
            started,
            last_served=None,
            newest_listing=dt.date(2026, 3, 17),
            watermarks={},
            catch_up=True,
        ).action
        == "send"
        for g in group_subscribers(parse_subscribers(SUBS))
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "run"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        outbox = tmp_path / "outbox" / "new"
        # Both groups' 07:00 today has passed or not depending on the real clock; at least
        # the daemon must start and serve its catch-up pass. Wait for the pass to finish.
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"the daemon exited {proc.returncode}: {proc.communicate()[1]}")
            if (tmp_path / "db.sqlite").exists():
                from newsletter.store import Store

                store = Store.open(env["NEWSLETTER_DATABASE_URL"])
                served = [store.last_firing(k) for k in ("Asia/Tokyo|07:00", "Europe/Berlin|07:00")]
                store.close()
                if all(served):
                    break
            time.sleep(0.2)
        else:
            pytest.fail("the daemon did not serve its catch-up pass")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pipe in (proc.stdout, proc.stderr):  # closed whatever failed above
            if pipe is not None:
                pipe.close()
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    messages = " ".join(r["msg"] for r in records)
    assert "daemon started" in messages and "shutting down" in messages
    assert "hunter2" not in err and "hunter2" not in out
    assert all({"ts", "level", "msg"} <= set(r) for r in records)
    sent = len(list(outbox.iterdir())) if outbox.exists() else 0
    assert sent == expected  # each send time that already passed today, once


def test_a_daemon_joining_a_firing_sends_the_edition_the_firing_was_started_with(
    daemon_settings: Settings, seeds_dir: Path, store: Store
) -> None:
    """Two daemons fire together, each picking the newest listing; one was stored between
    their picks. The second to start the firing joins the first's edition (it used to send
    its own: two editions for one firing)."""
    add_dump(seeds_dir, "001_5dda9fa4defc14f9.txt")  # Mar 11
    add_dump(seeds_dir, "002_2b37b74c05805532.txt")  # Mar 17
    firing = utc(2026, 3, 16, 22, 0)  # Tokyo's 07:00
    ingest_folder(store, daemon_settings, seeds_dir, now=firing)
    group = next(
        g
        for g in group_subscribers(load_subscribers(daemon_settings.subscribers_file))
        if g.timezone == "Asia/Tokyo"
    )
    first = dt.date(2026, 3, 11)  # the first daemon's pick, before Mar 17 was stored
    store.start_firing(group.key, firing, first, now=firing)
    mine = Decision(group, firing, "send", dt.date(2026, 3, 17), group.subscribers)
    done, report = asyncio.run(_serve(daemon_settings, store, mine, Clock(firing), None))
    assert done and report is not None and report.edition == first and report.sent == 1
    assert [r.status for r in store.ledger_rows(first)] == ["sent"]
    assert store.ledger_rows(dt.date(2026, 3, 17)) == []
    assert store.open_firing(group.key) == (firing, first)
    # what the store answers a daemon starting the firing: the firing and edition recorded
    joined = store.start_firing(group.key, firing, dt.date(2026, 3, 17), now=firing)
    assert joined == (firing, first)
