"""`python -m newsletter send` killed mid-run, then run again: nobody is lost, and only the
messages in flight can arrive twice, with the same Message-ID. The SMTP server (aiosmtpd)
runs in a thread of this process and records what it accepted."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from newsletter.deliver import edition_status
from newsletter.pipeline import ingest_folder
from newsletter.settings import Settings
from newsletter.store import Store
from newsletter.subscribers import load_subscribers
from tests.conftest import EXAMPLE_SUBSCRIBERS, ROOT, SEEDS
from tests.smtpd import ThreadedSMTPServer

pytestmark = pytest.mark.slow

POOL = 4  # connections; at most 2 x POOL messages are in flight (the module's guarantee)
NOW = dt.datetime(2026, 3, 17, 7, 0, tzinfo=dt.UTC)


def write_subscribers(path: Path, n: int, send_at: str = "07:00") -> list[str]:
    """n subscribers with the example subscribers' topics, in the subscriber file format."""
    examples = load_subscribers(EXAMPLE_SUBSCRIBERS)
    entries = []
    for i in range(n):
        ex = examples[i % len(examples)]
        entries.append(
            {
                "email": f"reader{i:05d}@example.org",
                "name": f"Reader {i}",
                "topics": [{"name": t.name, "keywords": list(t.keywords)} for t in ex.topics],
            }
        )
    doc = {"defaults": {"max_papers": 3, "send_at": send_at, "timezone": "UTC"}}  # small: fast
    path.write_text(yaml.safe_dump({**doc, "subscribers": entries}), encoding="utf-8")
    return [e["email"] for e in entries]


def environment(tmp_path: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(
        NEWSLETTER_SETTINGS_FILE=os.devnull,
        NEWSLETTER_DATABASE_URL=f"sqlite:///{tmp_path / 'newsletter.db'}",
        NEWSLETTER_SUBSCRIBERS_FILE=str(tmp_path / "subscribers.yaml"),
        NEWSLETTER_REFERENCE_DATE="2026-11-21",
        NEWSLETTER_SEEDS_DIR=str(SEEDS),  # not ./seeds: a test must leave the checkout as it was
        NEWSLETTER_SMTP_HOST="127.0.0.1",
        NEWSLETTER_SMTP_PORT=str(port),
        NEWSLETTER_SMTP_SECURITY="none",
        NEWSLETTER_SMTP_HELO_NAME="crash.test",
        NEWSLETTER_SMTP_POOL_SIZE=str(POOL),
        NEWSLETTER_LOG_LEVEL="WARNING",
    )
    return env


def prepare(tmp_path: Path, n: int, send_at: str = "07:00") -> list[str]:
    emails = write_subscribers(tmp_path / "subscribers.yaml", n, send_at)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=f"sqlite:///{tmp_path / 'newsletter.db'}",
        reference_date=dt.date(2026, 11, 21),
    )
    store = Store.open(settings.database_url)
    ingest_folder(store, settings, SEEDS, now=NOW)
    store.close()
    return emails


def cli(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.Popen[str]:
    """A real `newsletter` process, its output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def send(env: dict[str, str]) -> subprocess.Popen[str]:
    return cli(env, "send", "--json")


def kill_after(server: ThreadedSMTPServer, count: int, sig: signal.Signals) -> list[int]:
    """Send `sig` to the current sender once the server has accepted `count` messages."""
    target: list[int] = []
    fired = threading.Event()

    def on_message(n: int) -> None:
        if n >= count and target and not fired.is_set():
            fired.set()
            os.kill(target[0], sig)

    server.handler.on_message = on_message
    return target


def ledger(tmp_path: Path) -> dict[str, Any]:
    return newest_status(f"sqlite:///{tmp_path / 'newsletter.db'}")


def newest_status(url: str) -> dict[str, Any]:
    """`status --json` of the newest edition in the store at `url`."""
    store = Store.open(url)
    try:
        edition = store.newest_date()
        assert edition is not None
        return edition_status(store, edition)
    finally:
        store.close()


@pytest.mark.parametrize("subscribers", [300, 1200])  # 1200: rendering in worker processes
def test_sigkill_mid_run_then_rerun_sends_everyone_once_but_in_flight(
    tmp_path: Path, subscribers: int
) -> None:
    emails = prepare(tmp_path, subscribers)
    server = ThreadedSMTPServer().start()
    try:
        env = environment(tmp_path, server.port)
        target = kill_after(server, 40, signal.SIGKILL)
        first = send(env)
        target.append(first.pid)
        first.communicate(timeout=60)
        assert first.returncode == -signal.SIGKILL
        accepted_before = len(server.handler.received)
        server.handler.on_message = None
        second = send(env)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, err
        report = json.loads(out)
    finally:
        server.stop()

    got = server.handler.by_rcpt()
    assert sorted(got) == sorted(e.lower() for e in emails)  # nobody lost
    repeated = {e: copies for e, copies in got.items() if len(copies) > 1}
    assert len(repeated) <= 2 * POOL  # only what was in flight at the kill
    for copies in repeated.values():
        assert len(copies) == 2 and copies[0].message_id == copies[1].message_id
    assert report["sent"] == subscribers - (accepted_before - len(repeated))
    doc = ledger(tmp_path)
    assert doc["counts"]["sent"] == subscribers and doc["total"] == subscribers


def test_sigterm_stops_cleanly_and_the_rerun_repeats_nothing(tmp_path: Path) -> None:
    emails = prepare(tmp_path, 300)
    server = ThreadedSMTPServer().start()
    try:
        env = environment(tmp_path, server.port)
        target = kill_after(server, 40, signal.SIGTERM)
        first = send(env)
        target.append(first.pid)
        out, err = first.communicate(timeout=60)
        assert first.returncode == 1, err  # interrupted: not everything was sent
        stopped = json.loads(out)
        # everything the server accepted was recorded as sent before the exit
        assert stopped["sent"] == len(server.handler.received)
        server.handler.on_message = None
        second = send(env)
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
    finally:
        server.stop()
    got = server.handler.by_rcpt()
    assert sorted(got) == sorted(e.lower() for e in emails)
    assert all(len(copies) == 1 for copies in got.values())  # a clean stop repeats nothing
    assert json.loads(out)["sent"] == 300 - stopped["sent"]


def test_two_senders_from_two_folders_exclude_each_other(tmp_path: Path) -> None:
    """An absolute database URL (as a systemd unit's environment file has it) and a manual
    `send` started from another folder: the lock lives beside the database, so the second
    sender stops at once and every subscriber gets exactly one digest."""
    emails = prepare(tmp_path, 120)
    server = ThreadedSMTPServer().start()
    started, second_done = threading.Event(), threading.Event()

    def hold(n: int) -> None:
        # the server stops answering at the 5th message until the second sender has exited:
        # the first is mid-send, holding its lock, however slowly a loaded machine starts
        # the second (a fixed delay let the first finish first under load)
        if n == 5:
            started.set()
            second_done.wait(120)

    server.handler.on_message = hold
    folders = [tmp_path / "a", tmp_path / "b"]
    procs = []
    try:
        env = environment(tmp_path, server.port)
        for folder in folders:
            folder.mkdir()
            procs.append(cli(env, "send", "--json", cwd=folder))
            if folder == folders[0]:
                assert started.wait(60), "the first sender never started sending"
        second = procs[1].communicate(timeout=120)
        second_done.set()
        results = [procs[0].communicate(timeout=120), second]
    finally:
        second_done.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
        server.stop()
    first, second = procs
    assert first.returncode == 0, results[0][1]
    assert second.returncode == 1 and "already working on" in results[1][1]
    got = server.handler.by_rcpt()
    assert sorted(got) == sorted(e.lower() for e in emails)
    assert all(len(copies) == 1 for copies in got.values())
    assert not any((f / "var").exists() for f in folders)  # no stray lock folders either


def due_now() -> str:
    """A send time that passed a minute ago (UTC): the daemon's catch-up pass serves it."""
    return f"{dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1):%H:%M}"


def daemon(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return cli(env, "run", *args)


@pytest.mark.parametrize("signals", [1, 2])
def test_the_daemon_stopped_mid_send_finishes_the_edition_after_a_restart(
    tmp_path: Path, signals: int
) -> None:
    """A deploy in the send window: SIGTERM (systemd's stop) to the daemon mid-edition. One
    signal finishes what is in flight and repeats nothing; a second abandons the in-flight
    messages (each may arrive twice, with the same Message-ID). Either way the firing is not
    "served": the next `run --once` (catch-up off, so only the open firing can explain a
    send) delivers the rest, and a further one sends nothing."""
    n = 600
    emails = prepare(tmp_path, n, send_at=due_now())
    server = ThreadedSMTPServer().start()
    server.handler.delay("DATA", 0.01, times=100_000)  # a real relay's pace, not loopback's
    try:
        env = environment(tmp_path, server.port)
        target = kill_after(server, 60, signal.SIGTERM)
        first = daemon(env)
        target.append(first.pid)
        if signals == 2:  # the second signal right behind the first
            fired = threading.Event()

            def twice(k: int) -> None:
                if k >= 60 and not fired.is_set():
                    fired.set()
                    os.kill(first.pid, signal.SIGTERM)
                    os.kill(first.pid, signal.SIGTERM)

            server.handler.on_message = twice
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
        stopped_at = len(server.handler.received)
        assert stopped_at < n, "the daemon finished before the stop; slow the server down"
        doc = ledger(tmp_path)
        assert doc["counts"]["sent"] < n
        server.handler.on_message = None
        env_off = {**env, "NEWSLETTER_CATCH_UP": "false"}
        resumed = daemon(env_off, "--once")
        _, err = resumed.communicate(timeout=180)
        assert resumed.returncode == 0, err
        again = daemon(env_off, "--once")
        _, err = again.communicate(timeout=60)
        assert again.returncode == 0, err
    finally:
        server.stop()
    got = server.handler.by_rcpt()
    assert sorted(got) == sorted(e.lower() for e in emails)  # nobody lost
    repeated = {e: copies for e, copies in got.items() if len(copies) > 1}
    if signals == 1:
        assert repeated == {}  # a clean stop repeats nothing
    else:
        assert len(repeated) <= 2 * POOL
        assert all(c[0].message_id == c[1].message_id for c in repeated.values())
    doc = ledger(tmp_path)
    assert doc["counts"]["sent"] == n and doc["total"] == n
    assert len(server.handler.received) == n + len(repeated)
