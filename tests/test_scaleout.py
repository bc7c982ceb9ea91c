"""Scale-out on PostgreSQL: several `newsletter send` / `run` processes on one edition at once.

The store's claims first (planning once, SKIP LOCKED, leases on the database clock, the shared
budget), then real processes of the CLI against the in-process SMTP server: four senders at
once, a worker SIGKILLed mid-run, the shared rate limit, two daemons firing together, and the
database connection terminated under a running worker."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from newsletter import store as store_module
from newsletter.deliver import claims, edition_status, run, send_edition
from newsletter.deliver.claims import PlanItems
from newsletter.mime import message_id
from newsletter.models import LedgerOutcome
from newsletter.pipeline import ingest_folder
from newsletter.settings import Settings
from newsletter.store import Store
from newsletter.subscribers import load_subscribers
from tests.conftest import SEEDS
from tests.smtpd import ThreadedSMTPServer
from tests.test_crash import NOW, POOL, due_now, environment, newest_status, write_subscribers
from tests.test_crash import cli as start

pytestmark = pytest.mark.postgres

ED = dt.date(2026, 3, 17)


# --- the store's side -----------------------------------------------------------------------------
@pytest.fixture
def pg(pg_url: str) -> Iterator[Store]:
    s = Store.open(pg_url)
    yield s
    s.close()


def claim(store: Store, worker: str, limit: int = 100, **kw: Any) -> list[str]:
    values: dict[str, Any] = {"lease": 30.0, "now": NOW, "started": NOW}
    values.update(kw)
    rows = store.claim_rows(ED, worker, limit=limit, respect_next_attempt=False, **values)
    return [r.email for r in rows]


def test_planning_happens_once_per_scope_and_never_touches_a_row(pg: Store) -> None:
    items = [(f"r{i}@example.org", f"<m{i}>") for i in range(5)]
    assert pg.plan_edition(ED, items, now=NOW) == "planned"
    assert pg.plan_edition(ED, items, now=NOW) == "done"
    pg.record_outcomes(ED, [LedgerOutcome("r0@example.org", "sent", attempts=1)], now=NOW)
    more = [*items, ("r5@example.org", "<m5>")]
    assert pg.plan_edition(ED, more, now=NOW) == "planned"  # a new scope plans its newcomers
    statuses = {r.email: r.status for r in pg.ledger_rows(ED)}
    assert statuses["r0@example.org"] == "sent" and len(statuses) == 6


def test_planning_writes_a_big_scope_a_slice_at_a_time(
    pg: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "PLAN_SLICE", 2)
    items = PlanItems([f"R{i}@Example.org" for i in (4, 0, 3, 1, 2)], ED, "example.org")
    twice = [*items, ("r0@example.org", "<again>")]  # one mailbox twice: its last id
    assert pg.plan_edition(ED, twice, now=NOW) == "planned"
    rows = pg.ledger_rows(ED)
    assert [r.email for r in rows] == [f"r{i}@example.org" for i in range(5)]
    ids = {r.email: r.message_id for r in rows}
    assert ids["r0@example.org"] == "<again>"
    assert ids["r3@example.org"] == message_id(ED, "r3@example.org", "example.org")
    assert all(r.status == "planned" for r in rows)
    assert pg.plan_edition(ED, twice, now=NOW) == "done"


def test_another_worker_planning_makes_a_worker_wait(pg_url: str, pg: Store) -> None:
    other = sa.create_engine(pg_url)
    try:
        with other.begin() as conn:  # what plan_edition holds while it writes the rows
            key = pg.sender_key(f"plan:{ED.isoformat()}")
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
            assert pg.plan_edition(ED, [("a@example.org", "<a>")], now=NOW) == "busy"
        assert pg.plan_edition(ED, [("a@example.org", "<a>")], now=NOW) == "planned"
    finally:
        other.dispose()


def test_claims_never_overlap_and_a_dead_workers_rows_come_free_after_its_lease(
    pg: Store,
) -> None:
    pg.plan_edition(ED, [(f"r{i:02d}@example.org", "<m>") for i in range(10)], now=NOW)
    a = claim(pg, "a", 4, lease=1.0)
    b = claim(pg, "b", 4)
    assert len(a) == len(b) == 4 and not set(a) & set(b)
    assert sorted(e for e, _ in pg.held_elsewhere(ED, "c")) == sorted(a + b)
    c = claim(pg, "c")
    assert len(c) == 2  # the rest; a's and b's are leased
    time.sleep(1.2)  # a stops renewing (dead): its lease runs out
    assert sorted(claim(pg, "c")) == sorted(a)


def test_an_outcome_ends_the_claim_and_a_failure_is_not_retaken_by_its_own_worker(
    pg: Store,
) -> None:
    pg.plan_edition(ED, [("a@example.org", "<a>"), ("b@example.org", "<b>")], now=NOW)
    assert claim(pg, "w1") == ["a@example.org", "b@example.org"]
    pg.record_outcomes(
        ED,
        [
            LedgerOutcome("a@example.org", "sent", attempts=1),
            LedgerOutcome("b@example.org", "failed", attempts=1, reply="451 later"),
        ],
        now=NOW,
    )
    assert pg.held_elsewhere(ED, "other") == []
    assert claim(pg, "w1") == []  # its own failure: not again within its run
    assert claim(pg, "w2", started=NOW - dt.timedelta(seconds=1)) == []  # failed after w2 began
    assert claim(pg, "w2") == ["b@example.org"]  # an earlier failure: retried by hand at once


def test_renewing_keeps_the_rows_and_status_shows_the_workers(pg: Store) -> None:
    pg.plan_edition(ED, [("a@example.org", "<a>"), ("b@example.org", "<b>")], now=NOW)
    pg.register_worker("h:1:x", ED, host="h", pid=1, lease=1.0)
    pg.register_worker("h:2:y", ED, host="h", pid=2, lease=1.0)
    claim(pg, "h:1:x", 1, lease=1.0)
    time.sleep(0.6)
    pg.renew_lease(ED, "h:1:x", lease=1.0, sent=7)
    time.sleep(0.6)
    assert claim(pg, "h:2:y") == ["b@example.org"]  # a@ stays with its renewing worker
    pg.finish_worker("h:2:y", sent=0)
    doc = edition_status(pg, ED)
    workers = {w["id"]: w for w in doc["workers"]}
    assert workers["h:1:x"]["state"] == "working" and workers["h:1:x"]["held"] == 1
    assert workers["h:1:x"]["sent"] == 7 and workers["h:1:x"]["lease_until"]
    assert workers["h:2:y"]["state"] == "finished" and workers["h:2:y"]["lease_until"] is None
    time.sleep(1.1)
    assert {w["id"]: w["state"] for w in edition_status(pg, ED)["workers"]}["h:1:x"] == "lost"


def test_the_shared_budget_paces_every_taker_together(pg_url: str, pg: Store) -> None:
    other = Store.open(pg_url)
    try:
        ready = []  # when each grant of 2 tokens may be spent
        for _ in range(5):
            for s in (pg, other):
                wait = s.take_budget("smtp", 2, rate=20, burst=2)
                ready.append(time.monotonic() + wait)
    finally:
        other.close()
    # ten grants of 2 at 20/s, from two takers: one every 0.1 s, whoever asks
    gaps = [b - a for a, b in itertools.pairwise(ready)]
    assert all(abs(g - 0.1) < 0.02 for g in gaps), gaps


def test_an_older_ledger_gains_the_claim_columns(db_url: str) -> None:
    store = Store.open(db_url)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_ledger_todo")  # PostgreSQL only
        conn.exec_driver_sql("ALTER TABLE ledger DROP COLUMN lease_until")
        conn.exec_driver_sql("ALTER TABLE ledger DROP COLUMN claimed_by")
    store.close()
    store = Store.open(db_url)  # a store made before scale-out
    try:
        cols = {c["name"] for c in sa.inspect(store.engine).get_columns("ledger")}
        assert {"claimed_by", "lease_until"} <= cols
        names = {i["name"] for i in sa.inspect(store.engine).get_indexes("ledger")}
        assert ("ix_ledger_todo" in names) == (store.dialect == "postgresql")
    finally:
        store.close()


def test_claims_can_be_limited_to_named_addresses(pg: Store) -> None:
    pg.plan_edition(ED, [(f"r{i}@example.org", "<m>") for i in range(4)], now=NOW)
    assert claim(pg, "w", only=["r1@example.org", "r3@example.org"]) == [
        "r1@example.org",
        "r3@example.org",
    ]
    assert claim(pg, "w", exclude=["r0@example.org"]) == ["r2@example.org"]


def maildir_settings(tmp_path: Path, pg_url: str) -> Settings:
    """The settings of a send from `setup`'s subscriber file into a Maildir."""
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=pg_url,
        subscribers_file=tmp_path / "subscribers.yaml",
        outbox_dir=tmp_path / "outbox",
        reference_date=dt.date(2026, 11, 21),
    )


async def test_a_worker_gives_back_rows_it_has_no_subscriber_for(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large scope is not named in the claim: rows of the edition outside it (another
    group's, a subscriber no longer in the file) are given back, never sent, never held."""
    monkeypatch.setattr(claims, "NAMED_SCOPE", 0)
    emails = setup(tmp_path, pg_url, 6)
    settings = maildir_settings(tmp_path, pg_url)
    subscribers = load_subscribers(settings.subscribers_file)
    store = Store.open(pg_url)
    try:
        edition = store.newest_date()
        assert edition is not None
        store.plan_edition(edition, [(e, f"<{e}>") for e in emails], now=NOW)  # all six
        report = await send_edition(settings, store, subscribers[:3], edition, now=lambda: NOW)
        rows = {r.email: r for r in store.ledger_rows(edition)}
        assert report.sent == 3 and report.complete
        assert [rows[e].status for e in emails] == ["sent"] * 3 + ["planned"] * 3
        assert store.held_elsewhere(edition, "nobody") == []
    finally:
        store.close()


async def test_a_worker_claims_as_many_chunks_as_its_render_pool_has_room_for(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One claim (and one unsubscribe check) for several chunks, not one per chunk: each is a
    round trip the render workers wait for. Every row still goes out once."""
    monkeypatch.setattr(run, "CHUNK", 2)
    monkeypatch.setattr(run, "POOL_MIN_SUBSCRIBERS", 0)
    monkeypatch.setattr(run, "MAX_RENDER_WORKERS", 1)  # one worker: two chunks queued for it
    monkeypatch.setattr(run, "usable_cpus", lambda: 2)
    limits: list[int] = []
    plain_claim = claims.Claims.claim

    async def claim(self: claims.Claims, limit: int) -> list[Any]:
        limits.append(limit)
        return await plain_claim(self, limit)

    monkeypatch.setattr(claims.Claims, "claim", claim)
    emails = setup(tmp_path, pg_url, 12)
    settings = maildir_settings(tmp_path, pg_url)
    subscribers = load_subscribers(settings.subscribers_file)
    store = Store.open(pg_url)
    try:
        edition = store.newest_date()
        assert edition is not None
        report = await send_edition(settings, store, subscribers, edition, now=lambda: NOW)
        assert report.sent + report.skipped == 12 and report.complete
        assert limits[0] == 2 * 3  # the chunk the worker renders and the two queued for it
        assert len(limits) < 12 // 2
        assert {r.email: r.status for r in store.ledger_rows(edition)}.keys() == set(emails)
        assert len(list((tmp_path / "outbox" / "new").iterdir())) == report.sent
    finally:
        store.close()


# --- review regressions: fencing, the renewer, the done check ----------------------------------
def claims_for(pg_url: str, lease: float = 30.0) -> claims.Claims:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=pg_url, sender_address="d@example.org", lease_seconds=lease
    )
    store = Store.open(pg_url)
    return claims.Claims(settings, store, ED, now=lambda: NOW, respect_next_attempt=False)


async def test_a_worker_never_takes_a_row_it_has_queued_a_second_time(pg_url: str) -> None:
    """A row whose lease lapsed while its message waited in the worker's queue is claimable
    again, by that worker too: the claim renews it, but it is not queued twice."""
    x = claims_for(pg_url, lease=1.0)
    try:
        x.store.plan_edition(ED, [(f"r{i}@example.org", f"<m{i}>") for i in range(3)], now=NOW)
        first = [r.email for r in await x.claim(10)]
        await asyncio.sleep(1.1)  # no renewal: the leases lapse, the messages still queued here
        again = [r.email for r in await x.claim(10)]
        assert len(first) == 3 and again == []
        assert x.holds(first[0])  # the second claim renewed them: still ours to send
        assert claim(x.store, "other") == []
    finally:
        x.store.close()


async def test_no_send_starts_once_the_lease_may_have_run_out(pg_url: str) -> None:
    """Each claim (and renewal) sets a local deadline: its start + lease - margin."""
    x = claims_for(pg_url, lease=1.0)
    try:
        x.store.plan_edition(ED, [("a@example.org", "<a>")], now=NOW)
        assert [r.email for r in await x.claim(10)] == ["a@example.org"]
        assert x.holds("a@example.org") and not x.holds("b@example.org")
        await asyncio.sleep(1.0 * (1 - claims.MARGIN) + 0.05)
        assert not x.holds("a@example.org")  # the lease still runs, but only just: hand back
        await x.hand_back("a@example.org")
        assert claim(x.store, "other") == ["a@example.org"]  # given back: free at once
    finally:
        x.store.close()


def test_a_late_outcome_never_overrides_the_worker_that_took_the_row_over(pg: Store) -> None:
    """A's lease lapsed and B took the row; A's late failure leaves B's claim alone (B's
    lease stays live), A's late `sent` is recorded (a 250 happened) and ends the claim."""
    pg.plan_edition(ED, [("a@example.org", "<a>"), ("b@example.org", "<b>")], now=NOW)
    assert claim(pg, "A", lease=1.0) == ["a@example.org", "b@example.org"]
    time.sleep(1.1)
    assert claim(pg, "B") == ["a@example.org", "b@example.org"]
    late = [
        LedgerOutcome("a@example.org", "failed", attempts=1, reply="451 x", next_attempt_at=NOW),
        LedgerOutcome("b@example.org", "sent", attempts=1, reply="250 ok", message_id="<b>"),
    ]
    pg.record_outcomes(ED, late, now=NOW, worker="A")
    rows = {r.email: r for r in pg.ledger_rows(ED)}
    assert rows["a@example.org"].status == "planned" and rows["a@example.org"].attempts == 0
    assert [e for e, _ in pg.held_elsewhere(ED, "A")] == ["a@example.org"]  # B's, still live
    assert rows["b@example.org"].status == "sent"
    # the worker holding the row records its own outcome as before
    pg.record_outcomes(ED, late[:1], now=NOW, worker="B")
    assert pg.ledger_row(ED, "a@example.org").status == "failed"  # type: ignore[union-attr]
    assert pg.held_elsewhere(ED, "A") == []


def test_renewal_never_deadlocks_with_the_workers_own_ledger_writer(pg: Store) -> None:
    """The renewer's one UPDATE over every held row and the ledger writer's outcomes (another
    connection of the same worker, any order) used to lock the same rows in different orders:
    PostgreSQL's DeadlockDetected within a second or two."""
    n = 600
    items = [(f"r{i:04d}@example.org", f"<m{i}>") for i in range(n)]
    pg.plan_edition(ED, items, now=NOW)
    emails = [e for e, _ in items]
    errors: list[tuple[str, BaseException]] = []
    stop = threading.Event()

    def renew() -> None:
        while not stop.is_set():
            try:
                pg.renew_lease(ED, "w", lease=30, sent=0)
            except Exception as exc:
                errors.append(("renew", exc))
                return

    rng = random.Random(7)
    t = threading.Thread(target=renew)
    t.start()
    try:
        for i in range(0, n, 100):
            claim(pg, "w", 100)
            held = emails[i : i + 100]
            rng.shuffle(held)  # outcomes in completion order
            for j in range(0, 100, 10):
                outs = [
                    LedgerOutcome(e, "sent", attempts=1, reply="250 ok", message_id="<m>")
                    if k % 2
                    else LedgerOutcome(e, "failed", attempts=1, reply="451 x", next_attempt_at=NOW)
                    for k, e in enumerate(held[j : j + 10])
                ]
                try:
                    pg.record_outcomes(ED, outs, now=NOW, worker="w")
                except Exception as exc:
                    errors.append(("writer", exc))
                if errors:
                    break
            if errors:
                break
    finally:
        stop.set()
        t.join()
    assert not errors, [(w, str(e).splitlines()[0]) for w, e in errors]


async def test_the_renewer_outlives_a_failed_round(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any error in one round (a deadlock, a timeout, the database restarting: not only a
    lost connection) used to end the renewer silently; the leases then lapsed under a
    worker that kept sending."""
    x = claims_for(pg_url, lease=1.0)
    real = x.store.renew_lease
    calls = []

    def flaky(*args: Any, **kw: Any) -> set[str]:
        calls.append(1)
        if len(calls) == 1:
            raise sa.exc.OperationalError("UPDATE ledger", {}, Exception("deadlock detected"))
        return real(*args, **kw)

    monkeypatch.setattr(x.store, "renew_lease", flaky)
    try:
        x.store.plan_edition(ED, [("a@example.org", "<a>")], now=NOW)
        await x.start([], asyncio.Event(), lambda: 0)
        x.only = None  # the empty scope names no row: claim the edition's
        assert [r.email for r in await x.claim(10)] == ["a@example.org"]
        await asyncio.sleep(1.5)  # rounds at 0.33 s: the first fails, the rest renew
        assert x._renewer is not None and not x._renewer.done()
        assert len(calls) >= 3 and x.holds("a@example.org")
        assert claim(x.store, "other") == []
    finally:
        await x.close(0)
        x.store.close()


async def test_a_row_given_back_after_a_claim_found_nothing_is_not_left_behind(
    pg_url: str,
) -> None:
    """X's claim finds nothing (Y holds R), Y gives R back, X asks whether it is done: the
    answer comes from R's status (still due), not from whether anyone holds it now."""
    x = claims_for(pg_url)
    r = "r0@example.org"
    try:
        x.store.plan_edition(ED, [(r, "<m0>")], now=NOW)
        assert claim(x.store, "Y", 10) == [r]
        assert await x.claim(64) == []  # Y's lease is live
        assert await x.anything_left({r})  # held by Y: wait, then look again
        x.store.release_claims(ED, "Y", None)  # Y stops (SIGTERM) and gives R back
        assert await x.anything_left({r})  # free: claim it
        assert [row.email for row in await x.claim(64)] == [r]
        assert not await x.anything_left({r})  # ours now: nothing left for anyone else
    finally:
        x.store.close()


# --- real processes -------------------------------------------------------------------------------
def setup(tmp_path: Path, pg_url: str, n: int, send_at: str = "07:00") -> list[str]:
    emails = write_subscribers(tmp_path / "subscribers.yaml", n, send_at)
    settings = Settings(_env_file=None, database_url=pg_url, reference_date=dt.date(2026, 11, 21))  # type: ignore[call-arg]
    store = Store.open(pg_url)
    ingest_folder(store, settings, SEEDS, now=NOW)
    store.close()
    return [e.lower() for e in emails]


def pg_env(tmp_path: Path, port: int, pg_url: str, **extra: str) -> dict[str, str]:
    env = environment(tmp_path, port)
    env.update(
        NEWSLETTER_DATABASE_URL=pg_url,
        NEWSLETTER_LEASE_SECONDS="3",
        NEWSLETTER_FETCH="false",  # the seeds are stored already
    )
    env.update(extra)
    return env


def finish(procs: list[subprocess.Popen[str]], timeout: float = 180) -> list[tuple[str, str]]:
    try:
        return [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_four_senders_at_once_share_the_edition(tmp_path: Path, pg_url: str) -> None:
    n = 400
    emails = setup(tmp_path, pg_url, n)
    server = ThreadedSMTPServer().start()
    server.handler.delay("DATA", 0.1, times=100_000)  # a relay's pace: the run takes seconds
    env = pg_env(tmp_path, server.port, pg_url)
    try:
        procs = [start(env, "send", "--json") for _ in range(4)]
        results = finish(procs)
    finally:
        server.stop()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    reports = [json.loads(out) for out, _ in results]
    got = server.handler.by_rcpt()
    assert sorted(got) == sorted(emails)
    assert all(len(copies) == 1 for copies in got.values())  # exactly one digest each
    sent = [r["sent"] for r in reports]
    assert sum(sent) == n and sum(1 for s in sent if s > 0) >= 2, sent
    late = start(env, "send", "--json")  # finds nothing left: exit 0, nothing sent
    out, err = late.communicate(timeout=60)
    assert late.returncode == 0 and json.loads(out)["sent"] == 0, err
    shown = start(env, "status", "--json")
    out, err = shown.communicate(timeout=60)
    assert shown.returncode == 0, err
    doc = json.loads(out)
    assert doc["counts"]["sent"] == n and doc["total"] == n
    assert len(doc["workers"]) == 5
    assert all(w["state"] == "finished" and w["held"] == 0 for w in doc["workers"])
    assert sorted(w["sent"] for w in doc["workers"]) == sorted([*sent, 0])
    print(f"four senders: sent {sent}")


def held_by(pg_url: str, pid: int) -> dict[str, dt.datetime]:
    """The rows the worker with this pid holds now, each with the end of its lease (batches
    claimed at different times may end at different times)."""
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            worker = conn.execute(
                sa.text("SELECT id FROM workers WHERE pid = :pid"), {"pid": pid}
            ).scalar_one()
            rows = conn.execute(
                sa.text(
                    "SELECT email, lease_until FROM ledger "
                    "WHERE claimed_by = :w AND status = 'planned'"
                ),
                {"w": worker},
            ).all()
            return {r[0]: r[1] for r in rows}
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_sigkilled_workers_rows_are_taken_over_after_its_lease(
    tmp_path: Path, pg_url: str
) -> None:
    n = 600
    emails = setup(tmp_path, pg_url, n)
    server = ThreadedSMTPServer().start()
    server.handler.delay("DATA", 0.01, times=100_000)
    killed = threading.Event()
    killed_at: list[dt.datetime] = []
    try:
        env = pg_env(tmp_path, server.port, pg_url)
        procs = [start(env, "send", "--json") for _ in range(3)]
        victim = procs[0]

        def on_message(k: int) -> None:
            if k >= 150 and not killed.is_set():
                killed.set()
                victim.send_signal(signal.SIGKILL)
                killed_at.append(dt.datetime.now(dt.UTC))

        server.handler.on_message = on_message
        assert killed.wait(120), "the run ended before the kill"
        victim.wait(10)
        held = held_by(pg_url, victim.pid)  # its claimed rows, frozen by its death
        results = finish(procs)
    finally:
        server.stop()
    assert victim.returncode == -signal.SIGKILL
    for p, (_, err) in zip(procs[1:], results[1:], strict=True):
        assert p.returncode == 0, err
    got = server.handler.by_rcpt()
    assert sorted(got) == sorted(emails)  # lost: 0
    repeated = {e: c for e, c in got.items() if len(c) > 1}
    assert set(repeated) <= held.keys() and len(repeated) <= 2 * POOL  # only its in-flight ones
    assert all(len(c) == 2 and c[0].message_id == c[1].message_id for c in repeated.values())
    assert held, "the killed worker held no rows"
    doc = newest_status(pg_url)
    assert doc["counts"]["sent"] == n and doc["total"] == n
    states = sorted(w["state"] for w in doc["workers"])
    assert states == ["finished", "finished", "lost"]
    store = Store.open(pg_url)
    try:
        rows = {r.email: r for r in store.ledger_rows(store.newest_date() or ED, sorted(held))}
    finally:
        store.close()
    dead = next(w["id"] for w in doc["workers"] if w["state"] == "lost")
    assert all(r.status == "sent" and r.claimed_by != dead for r in rows.values())
    # each row taken over after its own lease ran out, not before (the database and the workers
    # share this host's clock)
    early = {e: (r.updated_at, held[e]) for e, r in rows.items() if r.updated_at < held[e]}
    assert not early, early
    lease_left = (max(held.values()) - killed_at[0]).total_seconds()
    print(
        f"SIGKILL: {len(held)} rows held by the dead worker taken over "
        f"(its lease had {lease_left:.1f} s left), "
        f"{len(repeated)} sent twice (limit {2 * POOL}), lost 0"
    )


@pytest.mark.slow
def test_a_worker_stopped_by_sigterm_gives_its_rows_back_at_once(
    tmp_path: Path, pg_url: str
) -> None:
    n = 400
    emails = setup(tmp_path, pg_url, n)
    server = ThreadedSMTPServer().start()
    server.handler.delay("DATA", 0.02, times=100_000)
    stopped = threading.Event()
    env = pg_env(tmp_path, server.port, pg_url, NEWSLETTER_LEASE_SECONDS="60")
    try:
        procs = [start(env, "send", "--json") for _ in range(2)]

        def on_message(k: int) -> None:
            if k >= 100 and not stopped.is_set():
                stopped.set()
                procs[0].send_signal(signal.SIGTERM)

        server.handler.on_message = on_message
        began = time.monotonic()
        results = finish(procs)
        took = time.monotonic() - began
    finally:
        server.stop()
    assert stopped.is_set()
    assert procs[0].returncode == 1, results[0][1]  # interrupted: exit 1, as on SQLite
    assert procs[1].returncode == 0, results[1][1]
    got = server.handler.by_rcpt()
    assert sorted(got) == sorted(emails)
    assert all(len(copies) == 1 for copies in got.values())  # a clean stop repeats nothing
    assert took < 60  # its rows came back at once, not after its 60 s lease
    doc = newest_status(pg_url)
    assert doc["counts"]["sent"] == n
    assert all(w["state"] == "finished" for w in doc["workers"])
    print(f"SIGTERM: the other worker finished in {took:.1f} s, nothing sent twice")


@pytest.mark.slow
def test_the_rate_limit_holds_across_three_workers(tmp_path: Path, pg_url: str) -> None:
    rate, window = 25.0, 20.0
    n = int(rate * (window + 4))
    emails = setup(tmp_path, pg_url, n)
    server = ThreadedSMTPServer().start()
    stamps: list[float] = []
    server.handler.on_message = lambda _k: stamps.append(time.monotonic())
    try:
        env = pg_env(tmp_path, server.port, pg_url, NEWSLETTER_SMTP_RATE_LIMIT=str(rate))
        procs = [start(env, "send", "--json") for _ in range(3)]
        results = finish(procs)
    finally:
        server.stop()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    sent = [json.loads(out)["sent"] for out, _ in results]
    assert sum(sent) == n and all(s > 0 for s in sent), sent
    assert sorted(server.handler.by_rcpt()) == sorted(emails)
    stamps.sort()
    # the 20 s after all three workers are sending: the workers start one by one
    begin = stamps[0] + 2.0
    inside = [t for t in stamps if begin <= t < begin + window]
    achieved = len(inside) / window
    assert abs(achieved - rate) <= 0.1 * rate, achieved
    print(f"shared rate: {achieved:.2f}/s over {window:g} s against a limit of {rate:g}/s")


def sent_count(pg_url: str) -> int:
    try:
        return int(newest_status(pg_url)["counts"]["sent"])
    except (AssertionError, sa.exc.SQLAlchemyError):
        return 0


@pytest.mark.slow
def test_two_daemons_share_a_firing_without_double_sends(tmp_path: Path, pg_url: str) -> None:
    n = 400
    emails = setup(tmp_path, pg_url, n, send_at=due_now())
    server = ThreadedSMTPServer().start()
    server.handler.delay("DATA", 0.1, times=100_000)  # the run outlasts the daemons' starts
    try:
        env = pg_env(tmp_path, server.port, pg_url)
        procs = [start(env, "run") for _ in range(2)]
        deadline = time.monotonic() + 120
        while sent_count(pg_url) < n and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1.0)  # both finish the firing (mark it served)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        results = finish(procs, timeout=60)
    finally:
        server.stop()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    got = server.handler.by_rcpt()
    assert sorted(got) == sorted(emails)
    assert all(len(copies) == 1 for copies in got.values())
    doc = newest_status(pg_url)
    by_worker = sorted(w["sent"] for w in doc["workers"])
    assert sum(by_worker) == n and sum(1 for s in by_worker if s > 0) == 2, by_worker
    store = Store.open(pg_url)
    try:
        with store.engine.connect() as conn:
            open_left = conn.execute(sa.text("SELECT count(*) FROM open_firings")).scalar_one()
            served = conn.execute(sa.text("SELECT count(*) FROM schedule_state")).scalar_one()
    finally:
        store.close()
    assert open_left == 0 and served == 1  # the firing is served, and not open any more
    print(f"two daemons: sent {by_worker}")


def terminate_backends(pg_url: str, pid: int) -> int:
    """End every database session of the process `pid` (its application_name)."""
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = :name"
                    ),
                    {"name": f"newsletter:{pid}"},
                ).scalar_one()
            )
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_worker_survives_its_database_connections_being_terminated(
    tmp_path: Path, pg_url: str
) -> None:
    n = 400
    emails = setup(tmp_path, pg_url, n)
    server = ThreadedSMTPServer().start()
    server.handler.delay("DATA", 0.01, times=100_000)
    marks = {k: threading.Event() for k in range(50, 400, 50)}  # seven times over the run

    def on_message(k: int) -> None:
        if k in marks:
            marks[k].set()

    server.handler.on_message = on_message
    terminated = []
    try:
        env = pg_env(tmp_path, server.port, pg_url)
        procs = [start(env, "send", "--json") for _ in range(2)]
        for mark in marks.values():
            assert mark.wait(120)
            # right after a termination a sender may hold no session for a moment (its pool
            # reconnects when it next needs the database): end the next ones it opens
            deadline = time.monotonic() + 10
            ended = 0
            while not ended and time.monotonic() < deadline:
                ended = sum(terminate_backends(pg_url, p.pid) for p in procs)
                if not ended:
                    time.sleep(0.05)
            terminated.append(ended)
        results = finish(procs)
    finally:
        server.stop()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    assert all(terminated), terminated
    got = server.handler.by_rcpt()
    assert sorted(got) == sorted(emails)
    assert all(len(copies) == 1 for copies in got.values())
    assert newest_status(pg_url)["counts"]["sent"] == n
    retried = sum(err.count("trying again") + err.count("chunk again") for _, err in results)
    print(f"terminated {terminated} sessions; every digest sent once; {retried} retries")


@pytest.mark.slow
def test_a_paused_worker_does_not_send_the_rows_taken_over_from_it(
    tmp_path: Path, pg_url: str
) -> None:
    """A is paused (SIGSTOP: a VM pause, swap, a long GC) for longer than its lease; B takes
    its rows over and sends them; A resumes: only the messages it had in flight may go out
    twice, its queued ones are handed back (they used to be sent: 176 of 300 twice)."""
    n = 300
    emails = setup(tmp_path, pg_url, n)
    server = ThreadedSMTPServer().start()
    server.handler.delay("DATA", 0.02, times=100_000)
    stopped = threading.Event()
    try:
        env = pg_env(tmp_path, server.port, pg_url)  # lease 3 s
        a = start(env, "send", "--json")

        def on_message(k: int) -> None:
            if k >= 20 and not stopped.is_set():
                stopped.set()
                a.send_signal(signal.SIGSTOP)

        server.handler.on_message = on_message
        assert stopped.wait(120)
        time.sleep(5)  # longer than the lease
        b = start(env, "send", "--json")
        ((_, err_b),) = finish([b])
        a.send_signal(signal.SIGCONT)
        ((_, err_a),) = finish([a])
    finally:
        server.stop()
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b
    got = server.handler.by_rcpt()
    twice = {e: c for e, c in got.items() if len(c) > 1}
    assert sorted(got) == sorted(emails)
    assert len(twice) <= 2 * POOL, len(twice)
    assert all(c[0].message_id == c[1].message_id for c in twice.values())
    assert newest_status(pg_url)["counts"]["sent"] == n
    print(f"paused worker: {len(twice)} sent twice (limit {2 * POOL}), lost 0")
