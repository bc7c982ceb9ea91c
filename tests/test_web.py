"""The reader's side against a real server: emails from a real send into the Maildir, the app
under uvicorn on a free port, real HTTP (httpx) and a real browser (Playwright driving
Debian's chromium). Nothing is mocked."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email
import email.policy
import html
import logging
import mailbox
import re
import shutil
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import feedparser
import httpx
import pytest
from pydantic import SecretStr

from newsletter import readers
from newsletter.addresses import address_key
from newsletter.deliver import send_edition
from newsletter.links import Links
from newsletter.models import Paper, Subscriber
from newsletter.pipeline import ingest_folder
from newsletter.settings import Settings
from newsletter.store import Store, make_engine
from newsletter.subscribers import load_subscribers
from newsletter.tokens import SigningKeys, Tokens
from newsletter.web import create_app
from newsletter.web.pages import WebContext

from .conftest import EXAMPLE_SUBSCRIBERS, IN_CI, SEEDS
from .smtpd import RecordingHandler, SMTPServer
from .webserver import LiveServer

KEY = "test-signing-key-" + "k" * 32
OLD_KEY = "old-signing-key-" + "o" * 32
NOW = dt.datetime(2026, 3, 17, 7, 0, tzinfo=dt.UTC)
ONE_CLICK = {"content": b"List-Unsubscribe=One-Click"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def clock() -> dt.datetime:
    return NOW


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def hrefs(markup: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(r'href="([^"]+)"', markup)]


@dataclasses.dataclass
class Site:
    settings: Settings
    store: Store
    server: LiveServer
    subscribers: list[Subscriber]
    editions: list[dt.date]

    @property
    def url(self) -> str:
        return self.server.url

    def mail(self) -> dict[str, list[EmailMessage]]:
        """Every delivered message, by recipient, oldest edition first."""
        out: dict[str, list[EmailMessage]] = {}
        box = mailbox.Maildir(self.settings.outbox_dir, create=False)
        for key in box.iterkeys():
            msg = parse(box.get_bytes(key))
            out.setdefault(str(msg["To"]).rsplit("<", 1)[-1].rstrip(">"), []).append(msg)
        for msgs in out.values():
            msgs.sort(key=lambda m: str(m["Message-ID"]))
        return out

    def latest(self, who: str) -> EmailMessage:
        return sorted(self.mail()[who], key=lambda m: str(m["Message-ID"]))[-1]

    def our_links(self, msg: EmailMessage) -> list[str]:
        body = msg.get_body(("html",))
        assert body is not None
        return [h for h in hrefs(body.get_content()) if h.startswith(self.url)]

    def link(self, who: str, kind: str) -> str:
        return next(u for u in self.our_links(self.latest(who)) if kind in u)

    def state(self) -> dict[str, Any]:
        """Everything a request could change: subscriptions, votes, the ledger."""
        readers = {k: (r.status, r.status_how) for k, r in self.store.readers().items()}
        votes = {s.email: self.store.votes(s.email) for s in self.subscribers}
        ledger = [
            (r.edition, r.email, r.status) for e in self.editions for r in self.store.ledger_rows(e)
        ]
        return {"readers": readers, "votes": votes, "ledger": ledger}

    def status(self, who: str) -> tuple[str, str | None]:
        row = self.store.readers([who]).get(address_key(who))
        return (row.status, row.status_how) if row else ("active", None)


def build_site(
    make_settings: Callable[..., Settings], tmp_path: Path, **overrides: Any
) -> Iterator[Site]:
    server = LiveServer()
    values = {"public_base_url": server.url, "signing_key": KEY, **overrides}
    settings = make_settings(**values)
    store = Store.open(settings.database_url)
    ingest_folder(store, settings, SEEDS, now=NOW)
    subs = load_subscribers(EXAMPLE_SUBSCRIBERS)
    dates = store.listing_dates()
    editions = dates[-2:]  # two editions, so the archive has an earlier one to link
    for edition in editions:
        asyncio.run(send_edition(settings, store, subs, edition, now=clock))
    server.start(create_app(settings, store, subscribers=lambda: subs))
    try:
        yield Site(settings, store, server, subs, editions)
    finally:
        server.stop()
        store.close()


@pytest.fixture
def site(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Site]:
    monkeypatch.chdir(tmp_path)
    yield from build_site(make_settings, tmp_path)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10, follow_redirects=False) as c:
        yield c


ADA = "ada@example.org"
GRACE = "grace@example.org"


# --- one-click unsubscribe ------------------------------------------------------------------
def test_one_click_post_unsubscribes_at_once_and_no_digest_follows(
    site: Site, client: httpx.Client
) -> None:
    msg = site.latest(ADA)
    https, mailto = re.findall(r"<([^>]+)>", str(msg["List-Unsubscribe"]))
    assert https.startswith(site.url + "/unsubscribe?") and mailto.startswith("mailto:")
    # RFC 8058 is for https only: this loopback http site gets no List-Unsubscribe-Post, but
    # the endpoint answers the one-click POST all the same (as behind a TLS proxy)
    assert msg["List-Unsubscribe-Post"] is None
    assert "ada" not in https.lower()  # an opaque reader id, not the address
    # a mail provider: no cookie, no session, no CSRF token, just the body of RFC 8058
    r = client.post(https, headers=FORM, **ONE_CLICK)
    assert r.status_code == 200 and "set-cookie" not in r.headers
    assert "You are unsubscribed" in r.text and 'action="/resubscribe?' in html.unescape(r.text)
    assert site.status(ADA) == ("unsubscribed", "one-click")
    # posting again changes nothing and still answers 2xx
    assert client.post(https, headers=FORM, **ONE_CLICK).status_code == 200
    # the next edition skips ada, with the reason, whatever the subscriber file says
    older = site.store.listing_dates()[-3]
    asyncio.run(send_edition(site.settings, site.store, site.subscribers, older, now=clock))
    row = site.store.ledger_row(older, ADA)
    assert row is not None and (row.status, row.reason) == ("skipped", "unsubscribed")
    assert all(m["Message-ID"] != f"<digest.{older}" for m in site.mail()[ADA])
    assert len(site.mail()[ADA]) == 2 and len(site.mail()[GRACE]) == 3


def test_one_click_as_multipart_form_data_also_unsubscribes(
    site: Site, client: httpx.Client
) -> None:
    url = site.link(GRACE, "/unsubscribe?")
    r = client.post(url, files={"List-Unsubscribe": (None, "One-Click")})
    assert r.status_code == 200
    assert site.status(GRACE) == ("unsubscribed", "one-click")


def test_the_page_confirms_with_a_button_then_offers_undo(site: Site, client: httpx.Client) -> None:
    url = site.link(ADA, "/unsubscribe?")  # the footer link goes to the same page
    page = client.get(url)
    assert page.status_code == 200 and site.status(ADA) == ("active", None)
    assert '<form method="post"' in page.text and "Unsubscribe a***@example.org?" in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "<script" not in page.text
    action = html.unescape(re.search(r'action="([^"]+)"', page.text)[1])  # type: ignore[index]
    done = client.post(site.url + action)  # the button: an empty form
    assert "You are unsubscribed" in done.text
    assert site.status(ADA) == ("unsubscribed", "page")
    undo = html.unescape(re.search(r'action="(/resubscribe[^"]+)"', done.text)[1])  # type: ignore[index]
    back = client.post(site.url + undo)
    assert back.status_code == 200 and "Welcome back" in back.text
    assert site.status(ADA) == ("active", "page")


# --- link scanners ----------------------------------------------------------------------------
def test_a_link_scanner_opening_every_link_changes_nothing(
    site: Site, client: httpx.Client
) -> None:
    before = site.state()
    checked = 0
    for who in (ADA, GRACE):
        msg = site.latest(who)
        text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        links = {*site.our_links(msg), *re.findall(re.escape(site.url) + r"\S+", text)}
        links.add(re.findall(r"<([^>]+)>", str(msg["List-Unsubscribe"]))[0])
        for url in links:
            for method, headers in (
                ("GET", {}),
                ("HEAD", {}),
                ("GET", {"Sec-Purpose": "prefetch", "Purpose": "prefetch"}),
            ):
                r = client.request(method, url, headers=headers)
                assert r.status_code == 200, (method, url, r.status_code)
                checked += 1
    assert checked >= 3 * 2 * 10
    assert site.state() == before


# --- tokens -----------------------------------------------------------------------------------
def _with(url: str, **query: str) -> str:
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()} | query
    return parts._replace(query="&".join(f"{k}={v}" for k, v in q.items())).geturl()


def test_forged_swapped_and_incomplete_tokens_get_4xx_and_change_nothing(
    site: Site, client: httpx.Client
) -> None:
    ada_unsub = site.link(ADA, "/unsubscribe?")
    grace_unsub = site.link(GRACE, "/unsubscribe?")
    ada_vote = site.link(ADA, "vote=up")
    ada_archive = site.link(ADA, "/archive/")
    q = lambda url, k: parse_qs(urlsplit(url).query)[k][0]  # noqa: E731
    token = q(ada_unsub, "t")
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    bad = [
        _with(ada_unsub, t=forged),  # tampered signature
        _with(ada_unsub, t=token.split(".")[1]),  # no timestamp
        _with(ada_unsub, r=q(grace_unsub, "r")),  # ada's token, grace's reader id
        _with(ada_unsub, t=q(ada_vote, "t")),  # a vote token used to unsubscribe
        _with(ada_unsub, t=q(ada_archive, "t")),  # an archive token used to unsubscribe
        _with(ada_vote, vote="down"),  # the "up" token used to vote down
        site.url + "/unsubscribe",  # nothing at all
        _with(ada_vote, r="nobody"),
    ]
    before = site.state()
    for url in bad:
        for method in ("GET", "POST"):
            r = client.request(method, url, headers=FORM, **ONE_CLICK)
            assert 400 <= r.status_code < 500, (method, url, r.status_code)
            assert "This link does not work" in r.text or r.status_code == 404
    archive_url = _with(ada_archive, t=q(ada_unsub, "t"))  # unsubscribe token on the archive
    assert client.get(archive_url).status_code == 403
    feed = site.url + "/feed?" + urlsplit(ada_archive).query  # archive token on the feed
    assert client.get(feed).status_code == 403
    assert site.state() == before


def test_unsubscribe_and_feed_links_never_expire_votes_do(site: Site, client: httpx.Client) -> None:
    reader = site.store.reader_ids([ADA], now=NOW)[address_key(ADA)]
    keys = SigningKeys(KEY)

    def links(days_ago: float) -> Links:
        made = time.time() - days_ago * 86400
        return Links(site.url, Tokens(keys, max_age_days=365, clock=lambda: made))

    paper_id = urlsplit(site.link(ADA, "vote=up")).path.rsplit("/", 1)[1]
    r = client.post(links(366).vote(reader, paper_id, "up"))
    assert r.status_code == 410 and "expired" in r.text and site.store.votes(ADA) == []
    # a feed reader keeps the URL it subscribed with
    feed = client.get(links(3 * 365).feed(reader))
    assert feed.status_code == 200 and feed.headers["content-type"].startswith("application/atom")
    # an old mail's unsubscribe link: still signed by us, so it works (tampered: 403)
    old = links(3 * 365).unsubscribe(reader)
    token = parse_qs(urlsplit(old).query)["t"][0]
    forged = _with(old, t=token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
    assert client.post(forged, headers=FORM, **ONE_CLICK).status_code == 403
    assert site.status(ADA) == ("active", None)
    assert client.get(old).status_code == 200
    r = client.post(old, headers=FORM, **ONE_CLICK)
    assert r.status_code == 200 and site.status(ADA) == ("unsubscribed", "one-click")


# --- undo: only right after one's own unsubscribe -------------------------------------------
def _undo(markup: str) -> str | None:
    found = re.search(r'action="(/resubscribe[^"]+)"', markup)
    return html.unescape(found[1]) if found else None


def test_an_unsubscribe_link_never_resubscribes(site: Site, client: httpx.Client) -> None:
    """The List-Unsubscribe link is in every mail (forwarded ones, copied headers): with it,
    anyone can unsubscribe, nobody can turn the mail back on."""
    url = site.link(ADA, "/unsubscribe?")
    assert client.post(url, headers=FORM, **ONE_CLICK).status_code == 200
    assert site.status(ADA) == ("unsubscribed", "one-click")
    resub = site.url + "/resubscribe?" + urlsplit(url).query  # its token on /resubscribe
    for method in ("POST", "GET"):
        r = client.request(method, resub, headers=FORM, **ONE_CLICK)
        assert r.status_code == 403, (method, resub, r.status_code)
        assert site.status(ADA) == ("unsubscribed", "one-click")
    # even with the `u` of the latest unsubscribe: the kind of token is wrong
    stamp = readers.stamp(site.store.readers([ADA])[address_key(ADA)])
    assert client.post(_with(resub, u=stamp)).status_code == 403
    # posting the unsubscribe link again (a later holder of the mail) offers no undo
    again = client.post(url)
    assert again.status_code == 200 and _undo(again.text) is None
    assert "please contact" in again.text
    assert site.status(ADA) == ("unsubscribed", "one-click")


def test_undo_works_for_an_hour_and_only_for_that_unsubscribe(
    site: Site, client: httpx.Client
) -> None:
    url = site.link(ADA, "/unsubscribe?")
    first = _undo(client.post(url).text)
    assert first is not None and site.status(ADA) == ("unsubscribed", "page")
    # GET shows the button and changes nothing
    page = client.get(site.url + first)
    assert page.status_code == 200 and "Subscribe a***@example.org again?" in page.text
    assert _undo(page.text) == first and site.status(ADA) == ("unsubscribed", "page")
    # an hour later the Undo link has expired
    reader = parse_qs(urlsplit(first).query)["r"][0]
    stamp = parse_qs(urlsplit(first).query)["u"][0]
    made = time.time() - 3601
    late = Links(site.url, Tokens(SigningKeys(KEY), max_age_days=365, clock=lambda: made))
    assert client.post(late.resubscribe(reader, stamp)).status_code == 410
    assert site.status(ADA) == ("unsubscribed", "page")
    assert client.post(site.url + first).text.count("Welcome back") == 1
    assert site.status(ADA) == ("active", "page")
    # unsubscribed again: the first Undo link does not undo this one; the new one does
    second = _undo(client.post(url).text)
    assert second is not None and second != first
    stale = client.post(site.url + first)
    assert stale.status_code == 200 and "You are unsubscribed" in stale.text
    assert _undo(stale.text) is None and site.status(ADA)[0] == "unsubscribed"
    assert "Welcome back" in client.post(site.url + second).text
    assert site.status(ADA) == ("active", "page")


def test_no_web_request_undoes_an_operator_unsubscribe(site: Site, client: httpx.Client) -> None:
    """`newsletter unsubscribe EMAIL` (after a complaint, say) holds against any link, even a
    validly signed, fresh Undo link for the very unsubscribe."""
    row = readers.unsubscribe(site.store, ADA, how="cli", now=NOW)
    own = site.url + "/resubscribe?" + urlsplit(site.link(ADA, "/unsubscribe?")).query
    assert client.post(own).status_code == 403 and site.status(ADA) == ("unsubscribed", "cli")
    links = Links(site.url, Tokens(SigningKeys(KEY), max_age_days=365))
    undo = links.resubscribe(row.reader_id, readers.stamp(row))
    for method in ("GET", "POST"):
        r = client.request(method, undo)
        assert r.status_code == 200 and "You are unsubscribed" in r.text
        assert _undo(r.text) is None and "please contact" in r.text
        assert "Trending Papers stopped them" in r.text
    page = client.post(site.link(ADA, "/unsubscribe?"))  # the reader's own link: no undo
    assert _undo(page.text) is None and "please contact" in page.text
    assert site.status(ADA) == ("unsubscribed", "cli")


def test_an_operator_unsubscribe_after_the_readers_own_takes_away_the_undo(
    site: Site, client: httpx.Client
) -> None:
    """The reader unsubscribed on the page (Undo works for an hour); the operator then runs
    `newsletter unsubscribe` too: the Undo link no longer resubscribes."""
    page = client.post(site.link(ADA, "/unsubscribe?"))
    undo = _undo(page.text)
    assert undo is not None and site.status(ADA)[0] == "unsubscribed"
    readers.unsubscribe(site.store, ADA, how="cli", now=NOW)
    assert site.status(ADA) == ("unsubscribed", "cli")
    r = client.post(site.url + undo)
    assert "please contact" in r.text and site.status(ADA) == ("unsubscribed", "cli")


def test_links_signed_with_the_previous_key_work_during_a_rotation(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # the emails went out signed with OLD_KEY; then the key was rotated
    sites = build_site(make_settings, tmp_path, signing_key=OLD_KEY)
    site = next(sites)
    try:
        old_link = site.link(ADA, "/unsubscribe?")
        for previous, expected in ((OLD_KEY, 200), (None, 403)):
            rotated = site.settings.model_copy(
                update={
                    "signing_key": SecretStr(KEY),
                    "signing_key_previous": SecretStr(previous) if previous else None,
                }
            )
            app = create_app(rotated, site.store, subscribers=lambda: site.subscribers)
            server = LiveServer().start(app)
            try:
                url = old_link.replace(site.url, server.url)
                assert httpx.get(url).status_code == expected
            finally:
                server.stop()
    finally:
        sites.close()


# --- the edition in a browser, the feed, the day ----------------------------------------------
def test_view_in_browser_shows_the_edition_as_sent_with_votes_and_the_rest_of_the_day(
    site: Site, client: httpx.Client
) -> None:
    edition = site.editions[-1]
    row = site.store.ledger_row(edition, ADA)
    assert row is not None and row.paper_ids
    page = client.get(site.link(ADA, "/archive/"))
    assert page.status_code == 200
    text = html.unescape(page.text)
    papers = site.store.papers_by_id(row.paper_ids)
    positions = [text.index(" ".join(papers[pid].title.split())) for pid in row.paper_ids]
    assert positions == sorted(positions)  # in digest order
    listing = site.store.listing(edition)
    assert listing is not None
    rest = [e.paper for e in listing.entries if e.paper.id not in row.paper_ids]
    assert rest and all(" ".join(p.title.split()) in text for p in rest)
    assert positions[-1] < text.index("The rest of")
    votes = [h for h in hrefs(page.text) if h.startswith("/vote/")]
    assert len(votes) == 2 * len(listing.entries)  # every paper of the day can be voted on
    assert re.search(
        r'<link rel="alternate" type="application/atom\+xml"[^>]+href="/feed\?', page.text
    )
    earlier = [h for h in hrefs(page.text) if h.startswith(f"/archive/{site.editions[0]}")]
    assert earlier and client.get(site.url + earlier[0]).status_code == 200
    assert page.headers["cache-control"] == "no-store"


def test_the_readers_feed_is_valid_atom_with_one_entry_per_paper(
    site: Site, client: httpx.Client
) -> None:
    page = client.get(site.link(GRACE, "/archive/"))
    feed_url = html.unescape(re.search(r'href="(/feed\?[^"]+)"', page.text)[1])  # type: ignore[index]
    r = client.get(site.url + feed_url)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/atom+xml")
    feed = feedparser.parse(r.text)
    assert feed.bozo == 0, feed.get("bozo_exception")
    assert feed.version == "atom10"
    sent = {pid for e in site.editions for pid in site.store.ledger_row(e, GRACE).paper_ids}  # type: ignore[union-attr]
    assert len(feed.entries) == len(sent)
    titles = {" ".join(p.title.split()) for p in site.store.papers_by_id(sent).values()}
    assert {e.title for e in feed.entries} == titles
    assert all(e.link.startswith("https://huggingface.co/papers?q=") for e in feed.entries)
    assert feed.feed.links and any(link.rel == "self" for link in feed.feed.links)


def test_the_public_day_page_lists_the_whole_listing(site: Site, client: httpx.Client) -> None:
    edition = site.editions[-1]
    listing = site.store.listing(edition)
    assert listing is not None
    day = client.get(site.link(ADA, "/day/"))
    assert day.status_code == 200 and day.url.path == f"/day/{edition}"
    text = html.unescape(day.text)
    assert all(" ".join(e.paper.title.split()) in text for e in listing.entries)
    assert "/vote/" not in text  # public: nobody's votes
    home = client.get(site.url + "/")
    assert all(f"/day/{d}" in home.text for d in site.store.listing_dates())
    assert client.get(site.url + "/day/1999-01-01").status_code == 404
    assert client.get(site.url + "/day/yesterday").status_code == 404


# --- votes ------------------------------------------------------------------------------------
def test_a_vote_link_confirms_on_get_and_records_on_post(site: Site, client: httpx.Client) -> None:
    up = site.link(ADA, "vote=up")
    paper_id = urlsplit(up).path.rsplit("/", 1)[1]
    page = client.get(up)
    assert page.status_code == 200 and '<form method="post"' in page.text
    assert site.store.votes(ADA) == []
    r = client.post(up)  # the link itself, with an empty body
    assert r.status_code == 200 and "vote recorded" in r.text
    assert [(v.paper_id, v.vote) for v in site.store.votes(ADA)] == [(paper_id, "up")]
    down = site.link(ADA, f"/vote/{paper_id}?vote=down")
    client.post(down, content=b"anything at all")
    assert [(v.paper_id, v.vote) for v in site.store.votes(ADA)] == [(paper_id, "down")]
    clear = html.unescape(re.search(r'action="([^"]*vote=clear[^"]*)"', r.text)[1])  # type: ignore[index]
    cleared = client.post(site.url + clear)
    assert site.store.votes(ADA) == []
    # nothing left to clear: the page offers up and down only
    assert "Vote cleared" in cleared.text and "vote=clear" not in cleared.text
    assert "Clear my vote" not in cleared.text and cleared.text.count("<form") == 2


def test_a_vote_from_a_removed_subscriber_is_refused_with_the_address_masked(
    site: Site, client: httpx.Client
) -> None:
    up = site.link(ADA, "vote=up")
    site.subscribers[:] = [s for s in site.subscribers if address_key(s.email) != ADA]
    r = client.post(up)
    assert r.status_code == 404 and "a***@example.org" in r.text
    assert "ada@" not in r.text and site.store.votes(ADA) == []


# --- operations -------------------------------------------------------------------------------
def test_healthz_says_the_store_is_reachable(site: Site, client: httpx.Client) -> None:
    r = client.get(site.url + "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "store": "ok"}


def test_healthz_tells_a_probe_the_store_is_down_and_names_no_database_detail(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """The probe is public: the reason (user, host, port, database name) goes to the log only."""
    url = "postgresql+psycopg://newsletter:secret@127.0.0.1:9/prod"
    down = Store(make_engine(url, lock_timeout=2))
    app = create_app(make_settings(), down, subscribers=lambda: [])

    async def probe() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://web") as web:
            return await web.get("/healthz")

    with caplog.at_level(logging.ERROR, logger="newsletter.web"):
        r = asyncio.run(probe())
    down.close()
    assert r.status_code == 503 and r.json() == {"status": "error", "store": "unreachable"}
    assert "127.0.0.1" in caplog.text and "secret" not in caplog.text


def test_the_access_log_carries_no_token_reader_id_or_address(
    site: Site, client: httpx.Client
) -> None:
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("newsletter.web.access")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    forged = "/day/x%0A2026-11-29 23:59:59,000 INFO newsletter.web.access: POST /unsubscribe 200"
    try:
        urls = [site.link(ADA, k) for k in ("/unsubscribe?", "/archive/", "vote=up")]
        for url in urls:
            client.get(url)
        client.post(urls[0], headers=FORM, **ONE_CLICK)
        client.get(site.url + forged.replace(" ", "%20"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert len(lines) == 5 and lines[-2].startswith("POST /unsubscribe 200")
    # a path cannot forge a line of its own (it used to be logged percent-decoded)
    assert "\n" not in lines[-1] and lines[-1].startswith("GET /day/x%0A2026-11-29%2023:59")
    lines.pop()
    secrets_ = [v for u in urls for vs in parse_qs(urlsplit(u).query).values() for v in vs]
    for line in lines:
        assert "@" not in line and "?" not in line
        assert not any(s in line for s in secrets_ if len(s) > 4), line


# --- an unsubscribe while the edition is being sent -------------------------------------------
async def test_an_unsubscribe_during_a_send_stops_that_readers_digest(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    handler = RecordingHandler()
    smtp = await SMTPServer(handler).start()
    web = LiveServer()
    settings = make_settings(
        public_base_url=web.url,
        signing_key=KEY,
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        smtp_security="none",
        smtp_helo_name="client.test",
        smtp_pool_size=1,  # one message at a time, in file order
        smtp_brake_after=0,
    )
    store = Store.open(settings.database_url)
    ingest_folder(store, settings, SEEDS, now=NOW)
    subs = load_subscribers(EXAMPLE_SUBSCRIBERS)
    edition = store.newest_date()
    assert edition is not None
    handler.delay("DATA", 0.4, times=len(subs))  # a slow server
    first = asyncio.Event()
    handler.on_message = lambda n: first.set()
    web.start(create_app(settings, store, subscribers=lambda: subs))
    last = subs[-1].email
    try:
        sending = asyncio.create_task(send_edition(settings, store, subs, edition, now=clock))
        await asyncio.wait_for(first.wait(), 10)
        # the reader's one-click link, as it is in the digest still waiting in the queue
        reader = store.reader_ids([last], now=NOW)[address_key(last)]
        url = Links(web.url, Tokens(SigningKeys(KEY), max_age_days=365)).unsubscribe(reader)
        async with httpx.AsyncClient() as http:
            r = await http.post(url, headers=FORM, **ONE_CLICK)
        assert r.status_code == 200
        report = await asyncio.wait_for(sending, 30)
    finally:
        web.stop()
        await smtp.stop()
    got = {rcpt for m in handler.received for rcpt in m.rcpt_tos}
    assert last not in got and len(got) == len(subs) - 1
    row = store.ledger_row(edition, last)
    assert row is not None and (row.status, row.reason) == ("skipped", "unsubscribed")
    assert report.skipped == 1 and report.sent == len(subs) - 1
    store.close()


# --- a real browser ---------------------------------------------------------------------------
@pytest.fixture
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if chromium is None:
        reason = "Debian's chromium not found (apt-get install chromium) for the browser tests"
        if IN_CI:
            pytest.fail(reason + "; CI must run the browser tests")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def phone(browser: Any) -> Any:
    """A 375 px phone without JavaScript: the pages must work without it."""
    context = browser.new_context(
        viewport={"width": 375, "height": 740}, java_script_enabled=False, is_mobile=True
    )
    return context.new_page()


def fits(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= 375"))


@pytest.mark.browser
def test_in_a_browser_the_unsubscribe_button_works_and_undo_too(site: Site, browser: Any) -> None:
    page = phone(browser)
    page.goto(site.link(ADA, "/unsubscribe?"))  # straight from the delivered email
    assert page.get_by_role("heading").inner_text() == "Unsubscribe a***@example.org?"
    assert site.status(ADA) == ("active", None)
    page.get_by_role("button", name="Unsubscribe").click()
    assert page.get_by_role("heading").inner_text() == "You are unsubscribed"
    assert site.status(ADA) == ("unsubscribed", "page")
    page.get_by_role("button", name="Undo: resubscribe").click()
    assert page.get_by_role("heading").inner_text() == "Welcome back"
    assert site.status(ADA) == ("active", "page")


@pytest.mark.browser
def test_in_a_browser_a_vote_from_the_email_is_recorded_by_the_button(
    site: Site, browser: Any
) -> None:
    up = site.link(GRACE, "vote=up")
    paper_id = urlsplit(up).path.rsplit("/", 1)[1]
    page = phone(browser)
    page.goto(up)
    assert "More like this?" in page.get_by_role("heading").inner_text()
    assert site.store.votes(GRACE) == []
    page.get_by_role("button", name=re.compile("Vote")).click()
    assert page.get_by_role("heading").inner_text() == "Thanks, vote recorded"
    assert [(v.paper_id, v.vote) for v in site.store.votes(GRACE)] == [(paper_id, "up")]
    assert fits(page)


@pytest.mark.browser
def test_in_a_browser_the_archive_page_reads_on_a_phone(site: Site, browser: Any) -> None:
    page = phone(browser)
    page.goto(site.link(ADA, "/archive/"))
    assert page.get_by_role("heading", level=1).inner_text().startswith("Your digest of")
    assert fits(page)
    page.get_by_role("link", name=re.compile("More like this")).first.click()
    assert "More like this?" in page.get_by_role("heading").inner_text()


def test_the_pages_link_a_papers_own_page_and_show_its_authors(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """As the email does: with an arXiv id (from the Daily Papers API) the title links to the
    paper's page, the authors and the arXiv link are shown; without one, the search link."""
    settings = make_settings(signing_key=KEY)
    store = Store.open(settings.database_url)
    web = WebContext(settings, store, Tokens(SigningKeys(KEY), max_age_days=365), lambda: [])
    known = Paper(
        "p1", "A Paper", "Abstract.", arxiv_id="2503.01234", authors=("Ada Lovelace", "C. B.")
    )
    view = web.paper_view(known, 3)
    assert view["url"] == "https://huggingface.co/papers/2503.01234"
    assert view["arxiv_url"] == "https://arxiv.org/abs/2503.01234" and "Lovelace" in view["authors"]
    html_out = web.env.get_template("_paper.html").module.paper_block(view, voting=False)  # type: ignore[attr-defined]
    assert 'href="https://huggingface.co/papers/2503.01234"' in str(html_out)
    assert "arxiv.org/abs/2503.01234" in str(html_out) and "Lovelace" in str(html_out)
    plain = web.paper_view(Paper("p2", "Another Paper", "Abstract."))
    assert plain["url"].startswith(settings.paper_base_url) and plain["authors"] == ""
    store.close()


def test_under_a_public_url_with_a_path_every_page_link_keeps_the_path(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    client: httpx.Client,
) -> None:
    """Behind a proxy at https://example.org/digest (which strips /digest), the mail linked
    /digest/unsubscribe but the page's Unsubscribe button posted to /unsubscribe at the host's
    root: a human's unsubscribe failed. Here the test plays the proxy."""
    monkeypatch.chdir(tmp_path)
    public = "https://example.org/digest"
    for site in build_site(make_settings, tmp_path, public_base_url=public):
        mail = site.latest(ADA)
        body = mail.get_body(("html",))
        assert body is not None
        ours = [h for h in hrefs(body.get_content()) if h.startswith(public + "/")]
        unsubscribe = next(h for h in ours if "/unsubscribe?" in h)
        archive = next(h for h in ours if "/archive/" in h)
        day = next(h for h in ours if "/day/" in h)
        pages = [client.get(site.url + u.removeprefix(public)) for u in (unsubscribe, archive, day)]
        assert [p.status_code for p in pages] == [200, 200, 200]
        page_links = [h for p in pages for h in hrefs(p.text) if h.startswith("/")]
        page_links += re.findall(r'action="(/[^"]*)"', " ".join(p.text for p in pages))
        assert page_links and all(h.startswith("/digest/") for h in page_links), page_links
        feed_path = next(h for h in page_links if h.startswith("/digest/feed?"))
        answer = client.get(site.url + html.unescape(feed_path).removeprefix("/digest"))
        assert answer.status_code == 200, (feed_path, answer.text[:300])
        feed = feedparser.parse(answer.text)
        assert {link.href for link in feed.feed.links if link.rel == "self"} == {
            "https://example.org" + html.unescape(feed_path)
        }
        # the Undo link's page (GET: a confirm button) posts under the path too
        confirm = html.unescape(re.findall(r'action="(/[^"]*)"', pages[0].text)[0])
        done = client.post(site.url + confirm.removeprefix("/digest"))
        undo = html.unescape(re.findall(r'action="(/[^"]*resubscribe[^"]*)"', done.text)[0])
        assert undo.startswith("/digest/resubscribe?")
        again = client.get(site.url + undo.removeprefix("/digest"))
        assert again.status_code == 200
        actions = [html.unescape(a) for a in re.findall(r'action="([^"]*)"', again.text)]
        assert actions == [undo], actions
