"""Delivery against a real SMTP server (aiosmtpd in process) and a real Maildir: the happy path,
the ledger (re-run, resend, dry run, skips), TLS + AUTH, and the CLI's send/status."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import json
import logging
import mailbox
import subprocess
import sys
import time
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterator
from email import header as email_header
from email import message_from_bytes
from email.policy import compat32
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from newsletter.cli import cli
from newsletter.deliver import (
    DeliveryReport,
    SmtpTransport,
    classify,
    edition_status,
    host,
    send_edition,
    smtp_endpoint,
    wire_form,
    workers,
)
from newsletter.deliver.failures import NotStarted
from newsletter.deliver.host import HostSenders
from newsletter.deliver.maildir import MaildirTransport
from newsletter.deliver.wire import raw_form, raw_size
from newsletter.deliver.workers import Preparer, ProcessPool
from newsletter.errors import ConfigError, DeliveryError, RecipientRefused
from newsletter.models import RenderedEmail, Subscriber, Topic
from newsletter.pipeline import (
    SKIP_ALL_SEEN,
    SKIP_NO_MATCH,
    ingest_folder,
    paper_index,
    selections_for,
)
from newsletter.render import Renderer
from newsletter.roster import by_address
from newsletter.selection import compile as compiled_topics
from newsletter.selection import select_for
from newsletter.settings import Settings
from newsletter.store import Store
from newsletter.subscribers import load_subscribers
from tests.conftest import EXAMPLE_SUBSCRIBERS, SEEDS
from tests.smtpd import (
    RecordingHandler,
    SMTPServer,
    ThreadedSMTPServer,
    password_authenticator,
    server_tls_context,
)

NOW = dt.datetime(2026, 3, 17, 7, 0, tzinfo=dt.UTC)


def clock() -> dt.datetime:
    return NOW


@dataclasses.dataclass
class World:
    """A store with the bundled seeds ingested, and subscribers to send to."""

    make_settings: Callable[..., Settings]
    store: Store
    subscribers: list[Subscriber]
    edition: dt.date

    def settings(
        self, server: SMTPServer | ThreadedSMTPServer | None = None, **overrides: Any
    ) -> Settings:
        values: dict[str, Any] = {}
        if server is not None:
            values = {
                "smtp_host": "127.0.0.1",
                "smtp_port": server.port,
                "smtp_security": "none",
                "smtp_helo_name": "client.test",
                "smtp_timeout": 5.0,
                "smtp_pool_size": 4,
                "smtp_retry_base": 0.01,
            }
        values.update(overrides)
        return self.make_settings(**values)

    async def send(
        self, server: SMTPServer | None = None, settings: Settings | None = None, **kw: Any
    ) -> DeliveryReport:
        settings = settings or self.settings(server)
        subs = kw.pop("subscribers", self.subscribers)
        return await send_edition(settings, self.store, subs, self.edition, now=clock, **kw)

    def statuses(self) -> dict[str, str]:
        return {r.email: r.status for r in self.store.ledger_rows(self.edition)}

    @property
    def emails(self) -> list[str]:
        return [s.email.lower() for s in self.subscribers]


def make_world(make_settings: Callable[..., Settings], copies: int = 1, **overrides: Any) -> World:
    """`copies` > 1 repeats the example subscribers under new addresses; `overrides` are
    settings for every run (e.g. database_url)."""
    make_settings = functools.partial(make_settings, **overrides)
    settings = make_settings()
    store = Store.open(settings.database_url)
    ingest_folder(store, settings, SEEDS, now=NOW)
    base = load_subscribers(EXAMPLE_SUBSCRIBERS)
    subs = [
        dataclasses.replace(s, email=f"{s.email.split('@')[0]}.{i}@example.org")
        for i in range(copies)
        for s in base
    ]
    edition = store.newest_date()
    assert edition is not None
    return World(make_settings, store, subs if copies > 1 else base, edition)


@pytest.fixture
def world(make_settings: Callable[..., Settings]) -> Iterator[World]:
    w = make_world(make_settings)
    yield w
    w.store.close()


@contextlib.asynccontextmanager
async def running(
    handler: RecordingHandler | None = None, **smtpd: Any
) -> AsyncIterator[SMTPServer]:
    server = await SMTPServer(handler, **smtpd).start()
    try:
        yield server
    finally:
        await server.stop()


# --- the happy path ---------------------------------------------------------------------------
async def test_every_subscriber_gets_one_digest_and_the_ledger_says_so(world: World) -> None:
    async with running() as server:
        report = await world.send(server)

    received = server.handler.by_rcpt()
    assert sorted(received) == sorted(world.emails)
    assert all(len(copies) == 1 for copies in received.values())
    rows = {r.email: r for r in world.store.ledger_rows(world.edition)}
    for email, (msg,) in received.items():
        row = rows[email]
        assert row.status == "sent" and row.attempts == 1
        assert msg.message_id == row.message_id
        assert msg.mail_from == world.settings().sender_address
        assert row.last_reply is not None and row.last_reply.startswith("250")
        assert msg.message["To"].addresses[0].addr_spec.lower() == email
    # the papers became history in the same transaction
    later = world.edition + dt.timedelta(days=1)
    seen = world.store.history_before(later, world.emails)
    assert all(set(seen[e]) == set(rows[e].paper_ids) for e in world.emails)
    assert report.sent == len(world.emails) and report.failed == 0 and report.skipped == 0
    assert all("SIZE=" in arg.upper() for arg in server.handler.mail_args)
    assert report.to_json() == {
        "edition": world.edition.isoformat(),
        "sent": len(world.emails),
        "skipped": 0,
        "failed_temporary": 0,
        "failed_permanent": 0,
        "unknown": 0,
        "pending": 0,
        "elapsed_s": report.to_json()["elapsed_s"],
    }


async def test_connections_are_reused_and_renewed_after_the_cap(make_settings: Any) -> None:
    world = make_world(make_settings, copies=4)  # 20 subscribers
    async with running() as server:
        settings = world.settings(server, smtp_pool_size=2, smtp_max_per_connection=3)
        report = await world.send(settings=settings)
    assert report.sent == 20 and len(server.handler.received) == 20
    # 20 messages at most 3 per connection: at least 7 connections, far fewer than 20
    assert 7 <= server.handler.connections < 20
    world.store.close()


async def test_a_message_with_a_leading_dot_line_arrives_intact(world: World) -> None:
    raw = (
        b"From: a@example.org\r\nTo: b@example.org\r\nSubject: dots\r\n"
        b"Message-ID: <dots@example.org>\r\n\r\n.starts with a dot\r\n..two\r\n.\r\nend\r\n"
    )
    async with running() as server:
        transport = SmtpTransport(world.settings(server))
        await transport.start()
        msg = RenderedEmail("b@example.org", "dots", "<dots@example.org>", "", "", raw)
        reply = await transport.send(msg, "a@example.org")
        # not in wire form (bare LF): the stock sendmail path normalises it
        lf = RenderedEmail("b@example.org", "lf", "<lf@example.org>", "", "", b"Subject: lf\n\nx\n")
        await transport.send(lf, "a@example.org")
        await transport.close()
    assert reply.startswith("250")
    assert server.handler.received[0].data == raw
    assert server.handler.received[1].data == b"Subject: lf\r\n\r\nx\r\n"


async def test_a_message_that_travels_as_its_wire_form_alone_arrives_the_same(
    world: World, tmp_path: Path
) -> None:
    """What the render workers send back: the wire form, and the message without raw."""
    raw = b"Subject: dots\r\nMessage-ID: <w@example.org>\r\n\r\n.a dot\r\n..two\r\nend\r\n"
    wire = wire_form(raw)
    slim = RenderedEmail("b@example.org", "dots", "<w@example.org>", "", "", b"")
    async with running() as server:
        transport = SmtpTransport(world.settings(server))
        await transport.start()
        await transport.send(slim, "a@example.org", wire)
        await transport.close()
    (got,) = server.handler.received
    assert got.data == raw and f"SIZE={len(raw)}" in got.mail_options
    box = MaildirTransport(tmp_path / "box")
    await box.start()
    await box.send(slim, "a@example.org", wire)
    (path,) = (tmp_path / "box" / "new").iterdir()
    assert path.read_bytes() == raw.replace(b"\r\n", b"\n")


async def test_a_send_whose_turn_came_too_late_never_starts(world: World) -> None:
    """`may_start` is asked after the waits (here: for the one pooled connection, held by a
    slow message), right before MAIL FROM: a lease that ran short meanwhile sends nothing."""
    async with running() as server:
        server.handler.delay("DATA", 0.5)
        transport = SmtpTransport(world.settings(server, smtp_pool_size=1))
        await transport.start()
        first = RenderedEmail(
            "a@example.org", "s", "<1@example.org>", "", "", b"Subject: 1\r\n\r\nx\r\n"
        )
        late = RenderedEmail(
            "b@example.org", "s", "<2@example.org>", "", "", b"Subject: 2\r\n\r\nx\r\n"
        )
        deadline = time.monotonic() + 0.2  # passes while `late` waits for the connection
        slow = asyncio.create_task(transport.send(first, "d@example.org"))
        await asyncio.sleep(0.05)
        with pytest.raises(NotStarted):
            await transport.send(late, "d@example.org", None, lambda: time.monotonic() < deadline)
        assert (await slow).startswith("250")
        again = await transport.send(late, "d@example.org", None, lambda: True)
        await transport.close()
    assert again.startswith("250") and server.handler.connections == 1  # the connection stayed
    assert [r.rcpt_tos for r in server.handler.received] == [("a@example.org",), ("b@example.org",)]


# --- the ledger: re-run, resend, dry run, skips -----------------------------------------------
async def test_a_rerun_sends_nothing_new(world: World) -> None:
    async with running() as server:
        first = await world.send(server)
        second = await world.send(server)
    assert first.sent == len(world.emails)
    assert second.sent == 0 and second.unchanged == len(world.emails)
    assert second.to_json()["sent"] == 0
    assert len(server.handler.received) == len(world.emails)


async def test_resend_sends_the_same_message_id_again_to_that_subscriber_only(
    world: World,
) -> None:
    target = world.emails[1]
    async with running() as server:
        await world.send(server)
        report = await world.send(server, resend=[target.upper()])
    copies = server.handler.by_rcpt()[target]
    assert len(copies) == 2 and copies[0].message_id == copies[1].message_id
    assert report.sent == 1 and len(server.handler.received) == len(world.emails) + 1
    row = world.store.ledger_row(world.edition, target)
    assert row is not None and row.status == "sent" and row.attempts == 2


async def test_a_dry_run_resend_says_it_would_send_again(world: World) -> None:
    async with running() as server:
        await world.send(server)
        report = await world.send(server, resend=[world.emails[0]], dry_run=True)
    assert report.sent == 1 and len(server.handler.received) == len(world.emails)
    assert world.statuses()[world.emails[0]] == "sent"


async def test_an_unusable_helo_name_stops_the_run_naming_the_setting(world: World) -> None:
    async with running() as server:
        settings = world.settings(server, smtp_helo_name="bad name\r\n")
        with pytest.raises(DeliveryError, match="NEWSLETTER_SMTP_HELO_NAME"):
            await world.send(settings=settings)
    assert server.handler.received == [] and set(world.statuses().values()) == {"planned"}


async def test_dry_run_renders_and_plans_without_sending_or_recording(world: World) -> None:
    async with running() as server:
        report = await world.send(server, dry_run=True)
    assert report.dry_run and report.sent == len(world.emails)
    assert server.handler.received == [] and server.handler.connections == 0
    assert world.store.ledger_rows(world.edition) == []


async def test_only_restricts_the_run_and_unknown_addresses_are_a_config_error(
    world: World,
) -> None:
    async with running() as server:
        report = await world.send(server, only=[world.emails[0]])
        with pytest.raises(ConfigError, match=r"nobody@example\.org"):
            await world.send(server, only=["nobody@example.org"])
    assert report.sent == 1 and list(server.handler.by_rcpt()) == [world.emails[0]]


async def test_empty_digests_are_skipped_with_the_reason(world: World) -> None:
    nothing = Subscriber("nothing@example.org", topics=(Topic("Knitting", ("crochet",)),))
    seen_all = world.subscribers[0]
    # everything that matches seen_all today was already delivered in an earlier edition
    # (max_papers hides further matches, so repeat until nothing is left)
    earlier = world.edition - dt.timedelta(days=1)
    index = paper_index(world.store)
    for _ in range(10):
        (sel,) = selections_for(
            world.store, world.settings(), [seen_all], world.edition, index=index
        )
        if not sel.papers:
            break
        ids = [p.paper.id for p in sel.papers]
        world.store.record_history(seen_all.email, earlier, ids, now=NOW)
    async with running() as server:
        report = await world.send(server, subscribers=[nothing, seen_all])
    assert report.skipped == 2 and report.sent == 0 and server.handler.received == []
    rows = {r.email: r for r in world.store.ledger_rows(world.edition)}
    assert rows["nothing@example.org"].reason == SKIP_NO_MATCH
    assert rows[seen_all.email.lower()].reason == SKIP_ALL_SEEN
    assert all(r.status == "skipped" for r in rows.values())


# --- Maildir ----------------------------------------------------------------------------------
async def test_without_smtp_host_digests_land_in_a_maildir(world: World, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    report = await world.send(settings=world.settings(outbox_dir=outbox))
    assert report.sent == len(world.emails) and "Maildir" in report.transport
    box = mailbox.Maildir(outbox, create=False)
    messages = list(box)
    assert len(messages) == len(world.emails)
    assert not list((outbox / "tmp").iterdir()) and not list((outbox / "cur").iterdir())
    ids = {str(m["Message-ID"]) for m in messages}
    assert ids == {r.message_id for r in world.store.ledger_rows(world.edition)}
    for path in (outbox / "new").iterdir():
        assert b"\r\n" not in path.read_bytes()  # local mail uses LF
        stamp, unique, _host = path.name.split(".", 2)
        assert stamp.isdigit() and "_" in unique
    again = await world.send(settings=world.settings(outbox_dir=outbox))
    assert again.sent == 0 and len(list(mailbox.Maildir(outbox, create=False))) == len(messages)


async def test_runs_in_the_same_second_never_overwrite_each_other(world: World) -> None:
    settings = world.settings()
    for sub in world.subscribers:  # one run, and one transport, per subscriber
        await world.send(settings=settings, only=[sub.email])
    assert len(list(mailbox.Maildir(settings.outbox_dir, create=False))) == len(world.emails)


async def test_dkim_signed_digests_still_verify_as_the_server_received_them(
    world: World, tmp_path: Path
) -> None:
    import dkim

    from .render_helpers import dkim_key

    pem, dns = dkim_key(tmp_path)

    async with running() as server:
        settings = world.settings(
            server, dkim_selector="s1", dkim_domain="example.org", dkim_private_key_file=pem
        )
        report = await world.send(settings=settings)
    assert report.sent == len(world.emails)
    for received in server.handler.received:
        assert received.data.startswith(b"DKIM-Signature: ")
        assert dkim.verify(received.data, dnsfunc=dns)


# --- STARTTLS and AUTH ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_server_options(ca: trustme.CA) -> dict[str, Any]:
    return {
        "tls_context": server_tls_context(ca),
        "require_starttls": True,
        "auth_required": True,
        "auth_require_tls": True,  # AUTH is only offered after STARTTLS
        "authenticator": password_authenticator("digest", "s3cret-Pa55word"),
    }


async def test_auth_over_starttls_with_a_self_signed_ca(
    world: World, ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    (tmp_path / "smtp-password").write_text("s3cret-Pa55word\n")
    async with running(**tls_server_options(ca)) as server:
        settings = world.settings(
            server,
            smtp_security="starttls",
            smtp_username="digest",
            smtp_password_file=tmp_path / "smtp-password",
            smtp_ca_file=ca_file,
        )
        report = await world.send(settings=settings)
    assert report.sent == len(world.emails)
    commands = [c for c, _ in server.handler.commands]
    assert commands.index("STARTTLS") < commands.index("AUTH") < commands.index("MAIL")
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("newsletter")]
    assert "s3cret-Pa55word" not in "\n".join(ours) + caplog.text


async def test_a_wrong_password_stops_the_run_naming_the_setting_not_the_secret(
    world: World, ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    async with running(**tls_server_options(ca)) as server:
        settings = world.settings(
            server,
            smtp_security="starttls",
            smtp_username="digest",
            smtp_password="wrong-Pa55word-xyz",
            smtp_ca_file=ca_file,
        )
        with pytest.raises(DeliveryError) as info:
            await world.send(settings=settings)
    message = str(info.value)
    assert "NEWSLETTER_SMTP_USERNAME" in message and "wrong-Pa55word-xyz" not in message
    assert "wrong-Pa55word-xyz" not in caplog.text
    assert server.handler.received == []
    # nothing is marked failed: the next run, with the right password, sends everything
    assert set(world.statuses().values()) <= {"planned"}


async def test_an_untrusted_certificate_names_the_ca_setting(world: World, ca: trustme.CA) -> None:
    async with running(**tls_server_options(ca)) as server:
        settings = world.settings(server, smtp_security="starttls", smtp_username="digest")
        with pytest.raises(DeliveryError, match="NEWSLETTER_SMTP_CA_FILE"):
            await world.send(settings=settings)
    assert server.handler.received == []


# --- small pure pieces ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("port", "security", "expected"),
    [
        (None, None, ("starttls", 587)),
        (465, None, ("tls", 465)),
        (25, None, ("none", 25)),
        (2525, None, ("starttls", 2525)),
        (None, "tls", ("tls", 465)),
        (None, "none", ("none", 25)),
        (25, "starttls", ("starttls", 25)),
    ],
)
def test_security_defaults_by_port(
    make_settings: Callable[..., Settings],
    port: int | None,
    security: str | None,
    expected: tuple[str, int],
) -> None:
    settings = make_settings(smtp_host="mail.test", smtp_port=port, smtp_security=security)
    assert smtp_endpoint(settings) == expected


@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))))
def test_wire_form_is_what_aiosmtplib_would_transmit(lines: list[bytes]) -> None:
    from aiosmtplib.protocol import PERIOD_REGEX

    raw = b"".join(line + b"\r\n" for line in lines)
    if not raw:
        assert wire_form(raw) is None  # no final CRLF: left to sendmail()
        return
    assert wire_form(raw) == PERIOD_REGEX.sub(b"..", raw) + b".\r\n"
    wire = wire_form(raw)
    assert wire is not None and raw_form(wire) == raw and raw_size(wire) == len(raw)
    assert wire_form(raw.replace(b"\r\n", b"\n", 1)) is None  # a bare LF
    assert wire_form(raw[:-2] + b"\r" + raw[-2:]) is None  # a bare CR


def test_classification_of_replies_and_errors() -> None:
    import aiosmtplib

    refused = aiosmtplib.SMTPRecipientRefused(550, "5.1.1 no such\n user", "eve@example.org")
    err = classify(refused, "eve@example.org", "h:25")
    assert isinstance(err, RecipientRefused) and err.permanent and err.code == 550
    assert err.reply == "5.1.1 no such user"
    busy = classify(aiosmtplib.SMTPRecipientRefused(451, "later", "x"), "x", "h:25")
    assert not busy.permanent and busy.code == 451
    assert classify(aiosmtplib.SMTPDataError(554, "spam"), "x", "h:25").permanent
    assert not classify(aiosmtplib.SMTPServerDisconnected("gone"), "x", "h:25").permanent
    assert not classify(aiosmtplib.SMTPReadTimeoutError("slow"), "x", "h:25").permanent
    assert not classify(ConnectionResetError(), "x", "h:25").permanent
    with pytest.raises(KeyError):
        classify(KeyError("a bug"), "x", "h:25")


# --- the CLI ----------------------------------------------------------------------------------
def cli_env(settings: Settings) -> dict[str, str]:
    env = {
        "NEWSLETTER_DATABASE_URL": settings.database_url,
        "NEWSLETTER_SUBSCRIBERS_FILE": str(settings.subscribers_file),
        "NEWSLETTER_OUTBOX_DIR": str(settings.outbox_dir),
        "NEWSLETTER_REFERENCE_DATE": "2026-11-21",
    }
    for name in ("smtp_host", "smtp_port", "smtp_security", "smtp_retry_base", "smtp_helo_name"):
        value = getattr(settings, name)
        if value is not None:
            env[f"NEWSLETTER_{name.upper()}"] = str(value)
    return env


@contextlib.contextmanager
def threaded_server() -> Iterator[ThreadedSMTPServer]:
    """For the CLI, which runs its own event loop (and signal handlers) in this thread."""
    server = ThreadedSMTPServer().start()
    try:
        yield server
    finally:
        server.stop()


def invoke(args: list[str], env: dict[str, str]) -> Any:
    return CliRunner().invoke(cli, args, env=env)


def test_cli_send_json_and_exit_codes(world: World, tmp_path: Path) -> None:
    with threaded_server() as server:
        server.handler.fail("RCPT", "550 5.1.1 no such user", rcpt=world.emails[0], times=None)
        env = cli_env(world.settings(server))
        date = world.edition.isoformat()
        first = invoke(["send", "--date", date, "--json"], env)
        again = invoke(["send", "--date", date, "--json"], env)
        unknown = invoke(["send", "--email", "nobody@example.org"], env)
        status = invoke(["status", "--date", date, "--json"], env)
        bad_file = tmp_path / "bad.yaml"
        bad_file.write_text(yaml.safe_dump({"subscribers": [{"email": "not-an-address"}]}))
        invalid = invoke(["send"], {**env, "NEWSLETTER_SUBSCRIBERS_FILE": str(bad_file)})
    n = len(world.emails)
    assert first.exit_code == 1, first.output
    assert json.loads(first.stdout) == {
        "edition": date,
        "sent": n - 1,
        "skipped": 0,
        "failed_temporary": 0,
        "failed_permanent": 1,
        "unknown": 0,
        "pending": 0,
        "elapsed_s": json.loads(first.stdout)["elapsed_s"],
    }
    assert again.exit_code == 0 and json.loads(again.stdout)["sent"] == 0
    assert unknown.exit_code == 2 and "nobody@example.org" in unknown.output
    assert invalid.exit_code == 2
    assert status.exit_code == 0, status.output
    doc = json.loads(status.stdout)
    assert doc["counts"]["sent"] == n - 1 and doc["counts"]["failed_permanent"] == 1
    (failure,) = doc["failures"]
    assert failure["email"] == world.emails[0] and failure["last_reply"].startswith("550")
    assert failure["attempts"] == 1 and failure["next_attempt_at"] is None


def test_cli_send_exits_1_when_an_outcome_is_unknown(world: World) -> None:
    """A reply lost after the whole message went out is not a success to report with exit 0."""
    with threaded_server() as server:
        server.handler.delay("DATA", 3.0)
        env = {**cli_env(world.settings(server)), "NEWSLETTER_SMTP_DATA_TIMEOUT": "0.5"}
        result = invoke(["send", "--email", world.emails[0], "--json"], env)
    assert json.loads(result.stdout)["unknown"] == 1, result.output
    assert result.exit_code == 1


def test_cli_dry_run_and_human_output(world: World) -> None:
    with threaded_server() as server:
        env = cli_env(world.settings(server))
        dry = invoke(["send", "--dry-run"], env)
        real = invoke(["send"], env)
        status = invoke(["status"], env)
    assert dry.exit_code == 0 and "would send" in dry.output
    assert real.exit_code == 0 and f"sent {len(world.emails)}" in real.output
    assert status.exit_code == 0 and "sent" in status.output
    assert len(server.handler.received) == len(world.emails)


def test_edition_status_of_an_unsent_edition_is_empty(world: World) -> None:
    doc = edition_status(world.store, world.edition)
    assert doc["total"] == 0 and doc["failures"] == [] and doc["counts"]["sent"] == 0


async def test_a_wrong_password_costs_one_login_per_run(world: World, ca: trustme.CA) -> None:
    """Providers lock accounts after repeated failed logins: with a pool of 4 and 4 attempts
    per message, a refused login is still tried once per run."""
    async with running(**tls_server_options(ca)) as server:
        settings = world.settings(
            server,
            smtp_security="starttls",
            smtp_username="digest",
            smtp_password="wrong-Pa55word-xyz",
            smtp_validate_certs=False,
        )
        with pytest.raises(DeliveryError, match="refused the login"):
            await world.send(settings=settings)
    # the recorder logs AUTH twice per try (the command and its hook): one mechanism, once
    auths = [arg for c, arg in server.handler.commands if c == "AUTH" and arg.isalpha()]
    assert auths == ["PLAIN"]


async def test_auth_without_encryption_is_refused_unless_allowed(world: World) -> None:
    options = {
        "auth_require_tls": False,
        "authenticator": password_authenticator("digest", "s3cret-Pa55word"),
    }
    async with running(**options) as server:
        plain = world.settings(
            server, smtp_username="digest", smtp_password="s3cret-Pa55word"
        )  # security none
        with pytest.raises(ConfigError, match="NEWSLETTER_SMTP_ALLOW_PLAINTEXT_AUTH"):
            await world.send(settings=plain)
        assert server.handler.received == [] and server.handler.connections == 0
        allowed = world.settings(
            server,
            smtp_username="digest",
            smtp_password="s3cret-Pa55word",
            smtp_allow_plaintext_auth=True,
        )
        report = await world.send(settings=allowed)
    assert report.sent == len(world.emails)


# --- one mailbox, one digest ------------------------------------------------------------------
async def test_one_mailbox_spelled_two_ways_gets_one_digest_and_reruns_never_crash(
    world: World, tmp_path: Path
) -> None:
    # The subscriber file refuses this (test_subscribers); a caller that passes such a list
    # anyway still sends each mailbox one digest and leaves the ledger consistent.
    ada = world.subscribers[0]
    spellings = [
        dataclasses.replace(ada, email="reader@bücher.example"),
        dataclasses.replace(ada, email="READER@xn--bcher-kva.example"),
        dataclasses.replace(ada, email="ada@café.example"),
        dataclasses.replace(ada, email=unicodedata.normalize("NFD", "ada@café.example")),
    ]
    async with running() as server:
        first = await world.send(server, subscribers=spellings)
        again = await world.send(server, subscribers=spellings)
    assert first.sent == 2 and first.failed == 0 and again.sent == 0, first.failures
    assert sorted(server.handler.by_rcpt()) == [
        "ada@xn--caf-dma.example",
        "reader@xn--bcher-kva.example",
    ]
    assert world.statuses() == {"reader@bücher.example": "sent", "ada@café.example": "sent"}
    outbox = tmp_path / "outbox"
    maildir = world.settings(outbox_dir=outbox)
    await world.send(settings=maildir, subscribers=spellings, resend=[spellings[1].email])
    assert len(list(mailbox.Maildir(outbox, create=False))) == 1


def test_cli_send_refuses_a_file_naming_one_mailbox_twice(world: World, tmp_path: Path) -> None:
    path = tmp_path / "subs.yaml"
    entries = [
        {"email": e, "topics": [{"name": "RL", "keywords": ["reinforcement learning"]}]}
        for e in ("elodie@café.example", unicodedata.normalize("NFD", "elodie@café.example"))
    ]
    path.write_text(yaml.safe_dump({"subscribers": entries}, allow_unicode=True), "utf-8")
    with threaded_server() as server:
        env = {**cli_env(world.settings(server)), "NEWSLETTER_SUBSCRIBERS_FILE": str(path)}
        result = invoke(["send"], env)
    assert result.exit_code == 2 and "duplicate" in result.output
    assert server.handler.received == []


# --- long display names -----------------------------------------------------------------------
LONG_NAMES = {
    "words@example.org": " ".join(["Augusta Ada King, Countess of Lovelace"] * 25),  # 974 chars
    "atoms@example.org": " ".join(["Ada"] * 330),
    "one-word@example.org": "A" * 995,
    "unicode@example.org": "Zoë “Z” Ünal-Øster " * 52,
}


async def test_long_display_names_are_folded_and_accepted_by_the_server(world: World) -> None:
    ada = world.subscribers[0]
    subs = [dataclasses.replace(ada, email=e, name=n) for e, n in LONG_NAMES.items()]
    async with running() as server:
        report = await world.send(server, subscribers=subs)
    assert report.sent == len(LONG_NAMES), report.failures
    for addr, (got,) in server.handler.by_rcpt().items():
        head = got.data.split(b"\r\n\r\n", 1)[0]
        assert max(len(line) for line in head.split(b"\r\n")) <= 78
        to = got.message["To"]
        assert to.addresses[0].addr_spec == addr
        # CPython's address parser puts a space between adjacent encoded-words (against
        # RFC 2047 6.2), so decode the header the RFC way.
        raw = message_from_bytes(head, policy=compat32)["To"]
        unfolded = raw.replace("\r\n ", " ")  # RFC 5322 2.2.3: unfolding removes the CRLFs
        decoded = str(email_header.make_header(email_header.decode_header(unfolded)))
        name = " ".join(LONG_NAMES[addr].split())
        assert decoded.removesuffix(f" <{addr}>").strip('"') == name
        if not unfolded.startswith("=?"):
            assert to.addresses[0].display_name == name


# --- history across editions, in any order ----------------------------------------------------
async def test_an_older_edition_sent_after_a_newer_one_repeats_no_paper(world: World) -> None:
    editions = sorted(world.store.listing_dates(), reverse=True)  # newest first
    index = paper_index(world.store)
    threshold = world.settings().relevance_threshold
    unfiltered: dict[str, list[str]] = {}  # what each edition would send with no history
    for edition in editions:
        for sel in select_for(
            index, world.store.listing(edition), world.subscribers, threshold=threshold
        ):
            unfiltered.setdefault(sel.subscriber.email, []).extend(p.paper.id for p in sel.papers)
    assert any(len(ids) > len(set(ids)) for ids in unfiltered.values()), "needs shared papers"

    async with running() as server:
        for edition in editions:
            report = await send_edition(
                world.settings(server), world.store, world.subscribers, edition, now=clock
            )
            assert report.failed == 0
    sent: dict[str, list[str]] = {}
    for edition in editions:
        for row in world.store.ledger_rows(edition):
            sent.setdefault(row.email, []).extend(row.paper_ids)
    assert sent and all(len(ids) == len(set(ids)) for ids in sent.values()), sent
    assert len(server.handler.received) == sum(
        1 for e in editions for r in world.store.ledger_rows(e) if r.status == "sent"
    )
    # re-rendering any edition afterwards gives exactly what it sent
    for edition in editions:
        rows = {r.email: set(r.paper_ids) for r in world.store.ledger_rows(edition)}
        for sel in selections_for(world.store, world.settings(), world.subscribers, edition):
            assert {p.paper.id for p in sel.papers if p.sent} == rows[sel.subscriber.email]


# --- the host's senders share its cores ---------------------------------------------------------
def test_senders_on_one_host_count_each_other_and_share_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host, "RECOUNT_S", 0.0)
    first = HostSenders(tmp_path)
    assert first.count() == 1 and first.share(2) == 2
    second = HostSenders(tmp_path)
    assert first.count() == second.count() == 2
    assert first.share(2) == 1 and first.share(8) == 4 and HostSenders(tmp_path).share(2) == 1
    second.close()
    assert first.count() == 2  # the third one (never closed) is still alive in this process
    first.close()
    assert not (tmp_path / first.path.name).exists()


def test_a_sigkilled_sender_stops_counting_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host, "RECOUNT_S", 0.0)
    code = (
        "import sys, time; from pathlib import Path; from newsletter.deliver.host import "
        "HostSenders; HostSenders(Path(sys.argv[1])); print('ready', flush=True); time.sleep(60)"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    ) as other:
        try:
            assert other.stdout is not None and other.stdout.readline() == "ready\n"
            me = HostSenders(tmp_path)
            assert me.count() == 2
            other.kill()
            other.wait()
            assert me.count() == 1  # the kernel dropped its lock; its file goes
            assert [p.name for p in tmp_path.iterdir()] == [me.path.name]
            me.close()
        finally:
            other.kill()


def test_a_pool_keeps_busy_only_its_share_of_the_workers(settings: Settings) -> None:
    store = Store.open(settings.database_url)
    share = [2]
    preparer = Preparer(settings, store, Renderer(settings))
    pool = ProcessPool(settings, preparer, 2, share=lambda: share[0])
    try:
        assert pool.depth == 4  # every worker busy, two chunks queued for each
        share[0] = 1  # a second sender came: one chunk at a time
        assert pool.depth == 0
    finally:
        pool.close()
        store.close()


def _compiled_in_worker() -> tuple[int, int, int]:
    """In a render worker: its bound on compiled topics, the size of the ones it keeps, and
    the terms its paper index keeps."""
    assert workers._WORKER is not None
    index = workers._WORKER.index
    kept = compiled_topics._TOPICS.get(index)
    return compiled_topics.MAX_COMPILED, kept.size() if kept is not None else 0, index.kept_terms()


def test_a_render_worker_keeps_few_compiled_topics(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its memory stays flat in the number of subscribers with topics of their own."""
    monkeypatch.setattr(workers, "WORKER_COMPILED", 60)
    monkeypatch.setattr(workers, "WORKER_TERMS", 150)
    settings = world.settings()
    subs = [
        Subscriber(f"r{i}@example.org", topics=(Topic(f"t{i}", (f"word{i}", "offline RL")),))
        for i in range(400)
    ]
    preparer = Preparer(settings, world.store, Renderer(settings), by_address(subs))
    pool = ProcessPool(settings, preparer, 1)
    try:
        sizes, terms = [], []
        for i in range(0, len(subs), 10):
            keys = [s.email for s in subs[i : i + 10]]
            done = pool._executor.submit(workers._worker_prepare, keys, world.edition, NOW)
            assert len(done.result()) == len(keys)
            bound, size, kept_terms = pool._executor.submit(_compiled_in_worker).result()
            sizes.append(size)
            terms.append(kept_terms)
        assert max(sizes) <= 60 + 10 * 4  # past the bound, started afresh after a chunk
        assert max(terms) <= 150 and sum(terms) > 0, terms
        assert bound == 60
        assert sum(sizes) > 0, sizes
        assert compiled_topics.MAX_COMPILED > 60_000 // 2  # the parent's (a daemon's) is kept
    finally:
        pool.close()
