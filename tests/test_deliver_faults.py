"""Delivery through server faults, injected on a real SMTP server (aiosmtpd), never by mocking
the client: 4xx then success, 5xx for one recipient, a hang-up mid-DATA, a server that is down
or slow, 421 mid-batch, a refused sender, and a clean stop. Every test ends by checking that
each subscriber got exactly one digest (or why not)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Iterator

import pytest

from newsletter.deliver import edition_status, send_edition
from newsletter.errors import DeliveryError, StoreError
from newsletter.settings import Settings
from tests.smtpd import RecordingHandler, SMTPServer, free_port
from tests.test_deliver import NOW, World, make_world, running


@pytest.fixture(autouse=True, params=[False, True], ids=["one-by-one", "pipelined"])
def pipelining(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Every fault twice: with a server that takes one command at a time, and with one that
    advertises PIPELINING, where MAIL, RCPT and DATA go out together."""
    monkeypatch.setattr(RecordingHandler, "pipelining", request.param)
    return bool(request.param)


@pytest.fixture
def world(make_settings: Callable[..., Settings]) -> Iterator[World]:
    w = make_world(make_settings)
    yield w
    w.store.close()


@pytest.fixture
def big_world(make_settings: Callable[..., Settings]) -> Iterator[World]:
    w = make_world(make_settings, copies=4)  # 20 subscribers
    yield w
    w.store.close()


def exactly_once(server: SMTPServer, emails: list[str]) -> None:
    got = server.handler.by_rcpt()
    assert sorted(got) == sorted(emails)
    assert {e: len(v) for e, v in got.items() if len(v) != 1} == {}


def rcpt_count(server: SMTPServer, email: str) -> int:
    return sum(1 for c, arg in server.handler.commands if c == "RCPT" and arg.lower() == email)


async def test_451_then_success(world: World) -> None:
    target = world.emails[2]
    async with running() as server:
        server.handler.fail("RCPT", "451 4.7.1 greylisted, try again", rcpt=target)
        report = await world.send(server)
    exactly_once(server, world.emails)
    assert report.sent == len(world.emails) and report.failed == 0
    row = world.store.ledger_row(world.edition, target)
    assert row is not None and row.status == "sent" and row.attempts == 2


async def test_550_for_one_recipient_while_the_rest_go_through(
    make_settings: Callable[..., Settings], db_url: str
) -> None:
    world = make_world(make_settings, database_url=db_url)  # SQLite and PostgreSQL
    target = world.emails[1]
    async with running() as server:
        server.handler.fail("RCPT", f"550 5.1.1 <{target}>: no such user", rcpt=target, times=None)
        report = await world.send(server)
        assert report.sent == len(world.emails) - 1 and report.failed_permanent == 1
        assert report.failures == {"permanent: 550 5.1.1 <<recipient>>: no such user": 1}
        row = world.store.ledger_row(world.edition, target)
        assert row is not None and row.status == "failed_permanent"
        assert row.attempts == 1 and row.next_attempt_at is None  # never retried
        assert row.last_reply == f"550 5.1.1 <{target}>: no such user"
        # a re-run leaves the permanent failure alone; only --resend tries again
        again = await world.send(server)
        assert again.sent == 0 and rcpt_count(server, target) == 1
        server.handler.clear()
        resent = await world.send(server, resend=[target])
    assert resent.sent == 1
    exactly_once(server, world.emails)
    assert set(world.statuses().values()) == {"sent"}
    later = world.edition + dt.timedelta(days=1)
    history = world.store.history_before(later, world.emails)
    for row in world.store.ledger_rows(world.edition):
        assert history[row.email] == set(row.paper_ids) and row.paper_ids
    world.store.close()


async def test_5xx_after_the_data_is_permanent_for_that_subscriber_only(world: World) -> None:
    target = world.emails[0]
    async with running() as server:
        server.handler.fail("DATA", "554 5.7.1 message refused", rcpt=target, times=None)
        report = await world.send(server)
    assert report.failed_permanent == 1 and report.sent == len(world.emails) - 1
    assert world.statuses()[target] == "failed_permanent"
    exactly_once(server, world.emails[1:])


async def test_a_hang_up_after_the_whole_message_is_unknown_and_never_resent_at_once(
    world: World,
) -> None:
    """The server took the whole message, then hung up without a reply: it may have queued
    it. The row is `unknown`: not retried in this run nor by a plain re-run, only after
    NEWSLETTER_UNKNOWN_RETRY_AFTER (the daemon's retry) or by --resend."""
    async with running() as server:
        server.handler.drop_data(2)
        report = await world.send(server)
        assert report.unknown == 2 and report.sent == len(world.emails) - 2
        assert report.failed == 0
        unknown = sorted(e for e, st in world.statuses().items() if st == "unknown")
        assert len(unknown) == 2
        for email in unknown:
            row = world.store.ledger_row(world.edition, email)
            assert row is not None and row.next_attempt_at == NOW + dt.timedelta(days=1)
            assert row.last_reply is not None and "may have it" in row.last_reply
        again = await world.send(server)  # a plain re-run leaves them alone
        assert again.sent == 0 and again.unknown == 0 and again.unchanged == len(world.emails)
        doc = edition_status(world.store, world.edition)
        assert doc["counts"]["unknown"] == 2
        assert sorted(u["email"] for u in doc["unknown"]) == unknown
        resent = await world.send(server, resend=[unknown[0]])  # the operator's call
        assert resent.sent == 1
        later = await send_edition(  # the daemon, a day later
            world.settings(server),
            world.store,
            world.subscribers,
            world.edition,
            now=lambda: NOW + dt.timedelta(days=1, seconds=1),
            respect_next_attempt=True,
        )
        assert later.sent == 1
    # one copy each; the two that were dropped mid-DATA arrived once, afterwards
    exactly_once(server, world.emails)
    assert set(world.statuses().values()) == {"sent"}


async def test_server_down_at_start_and_up_later(world: World) -> None:
    port = free_port()
    server = SMTPServer()
    settings = world.settings(server, smtp_port=port, smtp_max_attempts=8, smtp_retry_base=0.05)

    async def start_later() -> None:
        await asyncio.sleep(0.2)
        await server.start(port)

    starter = asyncio.create_task(start_later())
    try:
        report = await world.send(settings=settings)
    finally:
        await starter
        await server.stop()
    assert report.sent == len(world.emails) and report.failed == 0
    exactly_once(server, world.emails)


async def test_server_down_for_the_whole_run_leaves_temporary_failures(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    settings = world.settings(
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        smtp_max_attempts=3,
        smtp_retry_base=0.01,
    )
    report = await world.send(settings=settings)
    assert report.failed_temporary == len(world.emails) and report.sent == 0
    (reason,) = report.failures
    assert reason.startswith(f"temporary: cannot connect to 127.0.0.1:{port}")
    for row in world.store.ledger_rows(world.edition):
        assert row.status == "failed" and 1 <= row.attempts <= 3
        assert row.next_attempt_at is not None and row.next_attempt_at > NOW
    server = await SMTPServer().start(port)  # the server is back
    try:
        # the daemon waits for next_attempt_at; a send started by hand retries at once
        waiting = await world.send(settings=settings, respect_next_attempt=True)
        assert waiting.sent == 0 and waiting.unchanged == len(world.emails)
        by_hand = await world.send(settings=settings)
    finally:
        await server.stop()
    assert by_hand.sent == len(world.emails)
    exactly_once(server, world.emails)


async def test_a_slow_server_hits_the_timeout_and_the_retry_succeeds(world: World) -> None:
    async with running() as server:
        server.handler.delay("RCPT", 2.0)
        report = await world.send(settings=world.settings(server, smtp_timeout=0.2))
    assert report.sent == len(world.emails) and report.failed == 0
    exactly_once(server, world.emails)
    assert max(r.attempts for r in world.store.ledger_rows(world.edition)) == 2


async def test_a_slow_final_reply_is_waited_for_not_resent(world: World) -> None:
    """The general command timeout does not apply to the reply after the message: a server
    that queues the message and answers late (31 s in the field, 1 s here against a 0.2 s
    command timeout) gets each digest once."""
    async with running() as server:
        server.handler.delay("DATA", 1.0, times=len(world.emails))
        report = await world.send(settings=world.settings(server, smtp_timeout=0.2))
    assert report.sent == len(world.emails) and report.failed == 0 and report.unknown == 0
    exactly_once(server, world.emails)


async def test_a_final_reply_later_than_the_data_timeout_is_unknown_not_repeated(
    world: World,
) -> None:
    """Past NEWSLETTER_SMTP_DATA_TIMEOUT the server may still have kept every message: no
    copies, in this run or the next, however many times it is run."""
    async with running() as server:
        server.handler.delay("DATA", 1.0, times=1000)
        settings = world.settings(server, smtp_timeout=5.0, smtp_data_timeout=0.2)
        report = await world.send(settings=settings)
        assert report.unknown == len(world.emails) and report.sent == 0
        for _ in range(3):
            again = await world.send(settings=settings)
            assert again.sent == 0 and again.unknown == 0
            again = await world.send(settings=settings, respect_next_attempt=True)
            assert again.sent == 0 and again.unknown == 0
    exactly_once(server, world.emails)  # the server kept each once; nobody got a copy
    assert set(world.statuses().values()) == {"unknown"}


async def test_421_mid_batch_closes_that_connection_and_slows_down(
    big_world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "newsletter")
    async with running() as server:
        server.handler.fail("MAIL", "421 4.3.2 too busy, come back later", after=6, close=True)
        report = await big_world.send(server)
    assert report.sent == len(big_world.emails) and report.failed == 0
    exactly_once(server, big_world.emails)
    assert "answered 421" in caplog.text
    assert sum(r.attempts for r in big_world.store.ledger_rows(big_world.edition)) == 21


async def test_a_refused_sender_stops_the_run_and_blames_no_subscriber(world: World) -> None:
    async with running() as server:
        server.handler.fail("MAIL", "553 5.7.1 sender not allowed", times=None)
        with pytest.raises(DeliveryError, match="NEWSLETTER_SENDER_ADDRESS"):
            await world.send(server)
    assert server.handler.received == []
    assert set(world.statuses().values()) == {"planned"}


async def test_stop_finishes_what_is_in_flight_and_the_next_run_completes(
    big_world: World,
) -> None:
    stop = asyncio.Event()

    def stop_after_three(count: int) -> None:
        if count == 3:
            stop.set()

    async with running() as server:
        server.handler.on_message = stop_after_three
        first = await big_world.send(server, stop=stop)
        # every message the server accepted is recorded as sent: nothing in flight was lost
        assert first.interrupted and 3 <= first.sent < len(big_world.emails)
        assert first.sent == len(server.handler.received)
        assert list(big_world.statuses().values()).count("sent") == first.sent
        server.handler.on_message = None
        second = await big_world.send(server)
    assert first.sent + second.sent == len(big_world.emails)
    exactly_once(server, big_world.emails)


async def test_a_rate_limit_still_sends_everything(world: World) -> None:
    async with running() as server:
        report = await world.send(settings=world.settings(server, smtp_rate_limit=500.0))
    assert report.sent == len(world.emails)
    exactly_once(server, world.emails)


async def test_a_ledger_that_cannot_be_written_stops_the_run_and_loses_nobody(
    big_world: World,
) -> None:
    def break_the_history_table(count: int) -> None:
        if count == 3:
            with big_world.store.engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE history RENAME TO history_moved")

    async with running() as server:
        server.handler.on_message = break_the_history_table
        with pytest.raises(StoreError, match="delivery ledger"):
            await asyncio.wait_for(big_world.send(server), 60)  # an error, never a hang
        with big_world.store.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE history_moved RENAME TO history")
        server.handler.on_message = None
        await big_world.send(server)
    assert sorted(server.handler.by_rcpt()) == sorted(big_world.emails)
    assert set(big_world.statuses().values()) == {"sent"}


# --- the brake: a relay that refuses everyone ---------------------------------------------------
@pytest.mark.parametrize(
    "reply",
    ["550 5.7.1 relaying denied", "550 5.1.1 <{rcpt}>: recipient address rejected"],
)
async def test_a_relay_refusing_everyone_stops_the_run_and_burns_nobody(
    big_world: World, reply: str
) -> None:
    """Every recipient refused the same way (even as "no such user"): the first 10 replies
    trip the brake; nothing is permanent; once the relay is fixed a plain send delivers all."""
    world = big_world
    async with running() as server:
        for email in world.emails:
            server.handler.fail("RCPT", reply.format(rcpt=email), rcpt=email, times=None)
        with pytest.raises(DeliveryError, match="NEWSLETTER_SMTP_HOST") as info:
            await world.send(server)
        assert "first 10 recipients" in str(info.value)
        statuses = world.statuses()
        assert "failed_permanent" not in statuses.values()
        assert set(statuses.values()) <= {"failed", "planned"}
        refused = sum(1 for c, _ in server.handler.commands if c == "RCPT")
        assert 10 <= refused <= 10 + 2 * 4  # the brake's sample plus what was in flight
        server.handler.clear()  # the operator fixes the relay
        report = await world.send(server)
    assert report.sent == len(world.emails)
    exactly_once(server, world.emails)


async def test_refusals_mixed_with_deliveries_are_permanent_as_usual(big_world: World) -> None:
    world = big_world
    refused = world.emails[::2]
    async with running() as server:
        for email in refused:
            server.handler.fail("RCPT", "550 5.1.1 no such user", rcpt=email, times=None)
        report = await world.send(server)
    assert report.failed_permanent == len(refused)
    assert report.sent == len(world.emails) - len(refused)
    assert {e for e, st in world.statuses().items() if st == "failed_permanent"} == set(refused)


async def test_fewer_subscribers_than_the_brake_needs_are_judged_one_by_one(world: World) -> None:
    """Five refusals cannot tell a bad relay from five bad addresses: permanent, as before,
    and the run ends (nothing waits for replies that will never come)."""
    async with running() as server:
        server.handler.fail("RCPT", "550 5.7.1 relaying denied", times=None)
        report = await asyncio.wait_for(world.send(server), 30)
    assert report.failed_permanent == len(world.emails)


async def test_the_brake_can_be_turned_off(big_world: World) -> None:
    world = big_world
    async with running() as server:
        server.handler.fail("RCPT", "550 5.7.1 relaying denied", times=None)
        report = await world.send(settings=world.settings(server, smtp_brake_after=0))
    assert report.failed_permanent == len(world.emails)
