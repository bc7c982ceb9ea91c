"""Render: templates, content, escaping, headers, MIME, size, DKIM and previews."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.header
import email.policy
import re
import shutil
from collections.abc import Callable
from html import unescape
from pathlib import Path

import dkim
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from newsletter import render as render_module
from newsletter.deliver import wire_form
from newsletter.deliver.wire import raw_form
from newsletter.errors import BadToken, ConfigError, RenderError
from newsletter.links import Links
from newsletter.mime import (
    assemble,
    assemble_wire,
    clean_header_text,
    encode_chunks,
    encode_phrase,
    encode_unstructured,
)
from newsletter.models import Paper, SelectedPaper, Selection, Subscriber, Topic, TopicMatch
from newsletter.render import (
    EXCERPT_CHARS,
    BodyCache,
    PreviewEntry,
    Renderer,
    excerpt,
    load_templates,
    message_id,
    sentences,
    sign_dkim,
    wrap_text,
    write_preview,
    write_preview_index,
)
from newsletter.settings import BUNDLED_TEMPLATES, Settings, load_settings
from newsletter.tokens import SigningKeys, Tokens, signing_keys

from .render_helpers import (
    BANDITS,
    EXPLORATION,
    NOW,
    OFFLINE,
    RLHF,
    ROBOTS,
    SEEDS,
    dkim_key,
    first_n,
    listing,
    reader,
    select,
)

MakeSettings = Callable[..., Settings]
URL = re.compile(r"https?://\S+")


@pytest.fixture
def renderer(settings: Settings) -> Renderer:
    return Renderer(settings)


def parse(raw: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def parts(raw: bytes) -> tuple[str, str]:
    msg = parse(raw)
    plain, html = (p.get_content().replace("\r\n", "\n") for p in msg.iter_parts())
    return plain, html


def hrefs(html: str) -> list[str]:
    return [unescape(h) for h in re.findall(r'href="([^"]*)"', html)]


def untagged(html: str) -> str:
    """The HTML with its tags removed (titles carry highlight tags around matched words)."""
    return re.sub(r"<[^>]+>", "", html)


def norm(text: str) -> str:
    return " ".join(text.split())


def paper(title: str, abstract: str, links: tuple[str, ...] = (), pid: str = "") -> Paper:
    return Paper(id=pid or title[:12], title=title, abstract=abstract, links=links)


def one(p: Paper, *matches: TopicMatch, rank: int = 1, sub: Subscriber | None = None) -> Selection:
    sub = sub or reader(OFFLINE)
    return Selection(sub, dt.date(2026, 3, 17), (SelectedPaper(p, 1.0, rank, True, matches),))


# --- realistic digests from every bundled seed ---------------------------------------------
KINDS = {
    "one-topic": lambda day: select(day, reader(EXPLORATION)),
    "several-topics": lambda day: select(day, reader(OFFLINE, RLHF, EXPLORATION, BANDITS, ROBOTS)),
    "25-papers": lambda day: first_n(day, reader(OFFLINE, RLHF, EXPLORATION, max_papers=25), 25),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", SEEDS, ids=lambda p: p.name[:3])
def test_every_seed_renders_a_complete_valid_message(
    renderer: Renderer, seed: Path, kind: str
) -> None:
    sel = KINDS[kind](listing(seed))
    assert sel.papers, "the helper must select something for every seed"
    out = renderer.render(sel, now=NOW)
    plain, html = parts(out.raw)
    assert plain == out.text and html == out.html
    assert sorted(out.paper_ids) == sorted(sp.paper.id for sp in sel.papers)
    for sp in sel.papers:
        title = norm(sp.paper.title)
        assert str(escape_html(title)) in untagged(html)
        assert title in norm(plain)
        for link in sp.paper.links:
            assert link in hrefs(html) and link in plain.split()
    for url in hrefs(html):  # every HTML link is absolute and also in the text part
        assert url.startswith(("https://", "mailto:"))
        assert url in plain
    assert len(out.html.encode()) < 90_000


def escape_html(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


def test_paper_ids_follow_the_order_shown(renderer: Renderer) -> None:
    sel = select(listing(SEEDS[1]), reader(OFFLINE, RLHF, EXPLORATION))
    out = renderer.render(sel, now=NOW)
    titles = {sp.paper.id: escape_html(norm(sp.paper.title)) for sp in sel.papers}
    shown = untagged(out.html)
    positions = [shown.index(f"{titles[pid]}") for pid in out.paper_ids]
    assert positions == sorted(positions)


def test_several_topics_are_grouped_each_paper_once_under_its_best_topic(
    renderer: Renderer,
) -> None:
    a = paper("Alpha offline paper", "Offline RL done right. It works.", pid="a")
    b = paper("Beta RLHF paper", "RLHF and offline RL together. Best for RLHF.", pid="b")
    weak = TopicMatch("Offline RL", ("offline RL",), highlights=("offline RL",), score=0.5)
    strong = TopicMatch("RLHF", ("RLHF",), highlights=("RLHF",), score=3.0)
    off = TopicMatch("Offline RL", ("offline RL",), highlights=("Offline RL",), score=2.0)
    c = paper("Gamma unmatched paper", "Nothing to see.", pid="c")
    sel = Selection(
        reader(OFFLINE, RLHF),
        dt.date(2026, 3, 17),
        (
            SelectedPaper(c, 0.5, 1, True, ()),
            SelectedPaper(a, 2.0, 4, True, (off,)),
            SelectedPaper(b, 1.5, 9, True, (weak, strong)),
        ),
    )
    out = renderer.render(sel, now=NOW)
    heads = re.findall(r"text-transform:uppercase;color:#4338ca;\">([^<]+?) <span", out.html)
    assert heads == ["Offline RL", "RLHF", "More trending papers"]
    assert out.paper_ids == ("a", "b", "c")
    title = '<strong class="hl"[^>]*>RLHF</strong>'
    assert len(re.findall(f">Beta {title} paper</a>", out.html)) == 1  # title words highlighted
    assert out.html.index(">RLHF <span") < re.search(f">Beta {title} paper</a>", out.html).start()
    assert "Matched: offline RL, RLHF" in out.html and "Matched: offline RL, RLHF" in out.text
    assert "OFFLINE RL · 1 paper" in out.text and "RLHF · 1 paper" in out.text
    assert out.subject == "3 papers on Offline RL and RLHF from Mar 17"


def test_one_topic_is_not_grouped_and_has_summary_rank_and_topics(renderer: Renderer) -> None:
    sel = select(listing(SEEDS[1]), reader(EXPLORATION))
    out = renderer.render(sel, now=NOW)
    n = len(sel.papers)
    assert out.subject == f"{n} papers on Exploration from Mar 17"
    assert "Tuesday, March 17, 2026" in out.html and "Tuesday, March 17, 2026" in out.text
    assert "· 1 paper" not in out.text and f"· {n} papers" not in out.html
    first = sel.papers[0]
    assert f">#{first.rank}</span>" in out.html and "trending rank <span" in out.html
    assert f"Trending rank #{first.rank} on Mar 17" in out.text
    assert "Exploration</span>" in out.html
    assert "Hi Ada, here is what matched your topics" in out.html


def test_a_paper_the_readers_votes_lifted_says_which_liked_paper(renderer: Renderer) -> None:
    sel = select(listing(SEEDS[1]), reader(EXPLORATION))
    lifted = dataclasses.replace(sel.papers[0], liked="Go-Explore & friends")
    out = renderer.render(dataclasses.replace(sel, papers=(lifted, *sel.papers[1:])), now=NOW)
    assert "because you liked &ldquo;Go-Explore &amp; friends&rdquo;" in out.html
    assert 'Because you liked "Go-Explore & friends"' in out.text
    assert out.text.count("Because you liked") == 1  # only where a vote lifted the paper


def test_matched_terms_are_highlighted_in_an_excerpt_cut_at_a_sentence(
    renderer: Renderer,
) -> None:
    abstract = (
        "We study agents. Exploration is hard, e.g. in Montezuma's Revenge. "
        "Our explorer uses curiosity. " + "Filler sentence here. " * 40
    )
    match = TopicMatch("Exploration", ("exploration", "curiosity"), highlights=("Exploration",))
    out = renderer.render(one(paper("A title", abstract), match), now=NOW)
    hl = re.findall(r'<strong class="hl"[^>]*>([^<]*)</strong>', out.html)
    assert hl == ["Exploration"]  # "explorer" is not a match: whole words only
    (shown,) = re.findall(r"\n     (We study agents\..*?)\n\n", out.text, re.S)
    shown = norm(shown)
    assert shown.endswith(".") and len(shown) <= EXCERPT_CHARS
    assert abstract.startswith(shown)


def test_excerpt_starts_at_the_match_when_the_opening_does_not_show_it() -> None:
    abstract = "Long opening sentence about nothing. " * 15 + "Then offline RL appears. End."
    text = excerpt(abstract, ("offline RL",), 200)
    assert text.startswith("… Then offline RL appears.")
    assert excerpt(abstract, ("offline RL",), 200, title="Offline RL title").startswith("Long")
    assert excerpt("One enormous sentence " * 50, (), 200).endswith(" …")


def test_sentences_do_not_split_at_abbreviations_or_urls() -> None:
    text = (
        "Methods, e.g. DPO, help. Smith et al. show it. "
        "Code: https://github.com/a/b.c. Results (Fig. 2) hold! Next?"
    )
    assert sentences(text) == [
        "Methods, e.g. DPO, help.",
        "Smith et al. show it.",
        "Code: https://github.com/a/b.c.",
        "Results (Fig. 2) hold!",
        "Next?",
    ]


# --- escaping ------------------------------------------------------------------------------
def test_html_escapes_markup_and_the_text_part_does_not(renderer: Renderer) -> None:
    p = paper(
        "<script>alert(1)</script> Tom & Jerry's RL",
        "We prove $O(\\sqrt{T})$ regret for Zoë’s naïve agent — ∑ ≤ ∞ <b>bold</b> & co. "
        "Offline RL wins.",
        links=("https://github.com/a/b?x=1&y=2",),
    )
    m = TopicMatch("Offline RL", ("offline RL",), highlights=("Offline RL",))
    out = renderer.render(one(p, m), now=NOW)
    assert "<script" not in out.html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Tom &amp; Jerry&#39;s RL" in out.html
    assert "$O(\\sqrt{T})$" in out.html and "Zoë’s naïve agent — ∑ ≤ ∞" in out.html
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co." in out.html
    assert 'href="https://github.com/a/b?x=1&amp;y=2"' in out.html
    assert "<script>alert(1)</script> Tom & Jerry's RL" in out.text
    assert "<b>bold</b> & co." in norm(out.text)
    assert "&amp;" not in out.text and "&lt;" not in out.text
    assert "https://github.com/a/b?x=1&y=2" in out.text
    assert "q=%3Cscript%3Ealert%281%29%3C%2Fscript%3E%20Tom%20%26%20Jerry%27s%20RL" in out.text
    plain, html = parts(out.raw)
    assert "Zoë’s naïve agent" in plain and "Zoë’s naïve agent" in html


# --- headers -------------------------------------------------------------------------------
def test_headers(renderer: Renderer, settings: Settings) -> None:
    sel = select(listing(SEEDS[0]), reader(OFFLINE, RLHF))
    out = renderer.render(sel, now=NOW)
    msg = parse(out.raw)
    assert msg["From"] == "Trending Papers <digest@example.org>"
    assert msg["To"] == "Ada Lovelace <ada@example.org>" and out.to == "ada@example.org"
    assert msg["Subject"] == out.subject and out.subject.startswith(f"{len(sel.papers)} papers on")
    assert msg["Date"] == "Tue, 17 Mar 2026 07:00:00 +0000"
    assert msg["MIME-Version"] == "1.0"
    assert (
        msg["Message-ID"]
        == out.message_id
        == message_id(sel.edition, "ada@example.org", "example.org")
    )
    assert msg["List-Id"] == "Trending Papers <daily-digest.example.org>"
    assert msg["List-Unsubscribe"] == "<mailto:unsubscribe@example.org?subject=unsubscribe>"
    assert msg["List-Unsubscribe-Post"] is None  # RFC 8058 needs an https URI
    assert "mailto:unsubscribe@example.org?subject=unsubscribe" in hrefs(out.html)
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in msg.iter_parts())
    assert all(p["Content-Transfer-Encoding"] == "quoted-printable" for p in msg.iter_parts())
    assert not msg.defects and not any(p.defects for p in msg.iter_parts())


def test_message_id_is_deterministic_per_edition_and_subscriber(renderer: Renderer) -> None:
    day = listing(SEEDS[0])
    a1 = renderer.render(select(day, reader(OFFLINE)), now=NOW)
    a2 = renderer.render(select(day, reader(OFFLINE, RLHF)), now=NOW + dt.timedelta(hours=5))
    assert a1.message_id == a2.message_id  # a resend of the edition is recognisable
    other = Subscriber("bob@example.org", topics=(OFFLINE,))
    b = renderer.render(select(day, other), now=NOW)
    later = renderer.render(select(listing(SEEDS[1]), reader(OFFLINE)), now=NOW)
    assert len({a1.message_id, b.message_id, later.message_id}) == 3
    assert re.fullmatch(r"<digest\.2026-03-11\.[0-9a-f]{20}@example\.org>", a1.message_id)
    assert message_id(day.date, " ADA@example.org ", "x") == message_id(
        day.date, "ada@example.org", "x"
    )
    assert renderer.render(select(day, reader(OFFLINE)), now=NOW).raw == a1.raw


def test_https_unsubscribe_and_one_click_only_with_public_base_url(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(public_base_url="https://news.example.org/", signing_key="k" * 32)
    out = Renderer(settings).render(select(listing(SEEDS[0]), reader(OFFLINE)), now=NOW)
    msg = parse(out.raw)
    https, mailto = re.findall(r"<([^>]+)>", msg["List-Unsubscribe"])
    assert mailto == "mailto:unsubscribe@example.org?subject=unsubscribe"
    m = re.fullmatch(r"https://news\.example\.org/unsubscribe\?r=([\w-]+)&t=([\w.-]+)", https)
    assert m, https
    assert "ada" not in https  # an opaque reader id, never the address
    tokens = Tokens(SigningKeys("k" * 32), max_age_days=365)
    tokens.verify("subscription", m[2], m[1])
    with pytest.raises(BadToken):
        Tokens(SigningKeys("o" * 32), max_age_days=365).verify("subscription", m[2], m[1])
    with pytest.raises(BadToken):
        tokens.verify("vote", m[2], m[1])
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert https in hrefs(out.html) and https in out.text


@pytest.mark.parametrize(
    ("base", "one_click"),
    [
        ("https://news.example.org", True),
        ("http://127.0.0.1:8080", False),
        ("http://localhost:8080/", False),
        ("http://news.example.org", False),
        ("http://localhost.evil.example", False),
    ],
)
def test_one_click_headers_for_https_only(
    make_settings: MakeSettings, base: str, one_click: bool
) -> None:
    settings = make_settings(public_base_url=base, signing_key="k" * 32)
    msg = parse(Renderer(settings).render(select(listing(SEEDS[0]), reader(OFFLINE)), now=NOW).raw)
    assert base.rstrip("/") + "/unsubscribe?r=" in msg["List-Unsubscribe"]
    assert (msg["List-Unsubscribe-Post"] is not None) == one_click


def test_every_html_link_is_in_the_text_part_votes_included(make_settings: MakeSettings) -> None:
    settings = make_settings(public_base_url="https://news.example.org", signing_key="k" * 32)
    out = Renderer(settings).render(select(listing(SEEDS[0]), reader(OFFLINE)), now=NOW)
    links = [h for h in hrefs(out.html) if h.startswith("http")]
    votes = [h for h in links if "/vote/" in h]
    assert len(votes) == 2 * len(out.paper_ids)
    assert any("/archive/" in h for h in links) and any("/day/" in h for h in links)
    assert [h for h in links if h not in out.text] == []


def test_public_base_url_without_signing_key_creates_one_in_var(
    make_settings: MakeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Renderer(make_settings(public_base_url="https://news.example.org"))
    key = tmp_path / "var" / "signing-key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert len(key.read_text().strip().encode()) >= 32


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"list_id": "two words"}, "NEWSLETTER_LIST_ID"),
        ({"dkim_selector": "s1"}, "NEWSLETTER_DKIM_DOMAIN"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_setting(
    make_settings: MakeSettings, overrides: dict[str, str], setting: str
) -> None:
    with pytest.raises(ConfigError, match=setting):
        Renderer(make_settings(**overrides))


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"sender_address": "not an address"}, "NEWSLETTER_SENDER_ADDRESS"),
        ({"reply_to": "x@y\r\nBcc: evil@example.com"}, "NEWSLETTER_REPLY_TO"),
        ({"unsubscribe_address": "nobody"}, "NEWSLETTER_UNSUBSCRIBE_ADDRESS"),
    ],
)
def test_bad_addresses_in_settings_stop_at_load_naming_the_setting(
    overrides: dict[str, str], setting: str
) -> None:
    """The same address validation as the subscriber file, when the settings load."""
    with pytest.raises(ConfigError, match=setting):
        load_settings(_env_file=None, **overrides)


def test_non_ascii_subject_and_names_are_rfc2047_encoded(make_settings: MakeSettings) -> None:
    topic = Topic("Apprentissage hors-ligne — RL", ("offline RL",))
    sub = Subscriber("zoe@example.org", name="Zoë “Z” Ünal", topics=(topic,))
    settings = make_settings(sender_name="Revue des Papiers — Paris")
    sel = Selection(sub, dt.date(2026, 3, 17), select(listing(SEEDS[0]), reader(OFFLINE)).papers)
    sel = Selection(
        sub,
        sel.edition,
        tuple(
            SelectedPaper(
                sp.paper, sp.score, sp.rank, True, (TopicMatch(topic.name, ("offline RL",)),)
            )
            for sp in sel.papers
        ),
    )
    out = Renderer(settings).render(sel, now=NOW)
    head = out.raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert b"Subject: " in head and b"=?utf-8?b?" in head
    msg = parse(out.raw)
    assert msg["Subject"] == out.subject
    assert "Apprentissage hors-ligne — RL" in out.subject
    assert msg["To"].addresses[0].display_name == "Zoë “Z” Ünal"
    assert msg["From"].addresses[0].display_name == "Revue des Papiers — Paris"
    assert msg["List-Id"] == "Revue des Papiers — Paris <daily-digest.example.org>"


_HEADER_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)


@hsettings(max_examples=300, deadline=None)
@given(_HEADER_TEXT)
def test_any_subject_round_trips_through_the_stdlib_parser(value: str) -> None:
    encoded = encode_unstructured(value, "Subject")
    raw = f"Subject: {encoded}\r\n\r\n".encode("ascii")
    assert all(len(line) <= 78 for line in raw.split(b"\r\n"))
    assert parse(raw)["Subject"] == clean_header_text(value)


@hsettings(max_examples=300, deadline=None)
@given(_HEADER_TEXT)
def test_any_display_name_round_trips_and_cannot_inject(value: str) -> None:
    phrase = encode_phrase(value) or "x"
    raw = f"To: {phrase} <a@example.org>\r\n\r\n".encode("ascii")
    msg = parse(raw)
    assert list(msg.keys()) == ["To"]
    assert msg["To"].addresses[0].addr_spec == "a@example.org"
    if not clean_header_text(value):
        return
    if phrase.startswith("=?"):
        # CPython's address parser puts a space between adjacent encoded-words (against
        # RFC 2047 6.2), so decode the phrase the RFC way.
        name = str(email.header.make_header(email.header.decode_header(phrase)))
    else:
        name = msg["To"].addresses[0].display_name
    assert name == clean_header_text(value)


# What DATA carries, built with the message from the same cached lines, must be exactly what
# wire_form makes of the message: any dot-stuffing slip would corrupt (or cut) a digest.
_BODY = st.text(st.sampled_from(".. =\n\r\taé€-x"), max_size=400)


@hsettings(max_examples=300, deadline=None)
@given(_BODY, _BODY, st.sampled_from(["Subject", ".Subject", "X"]))
def test_the_wire_form_built_with_a_message_is_wire_form_of_it(
    text: str, html: str, name: str
) -> None:
    headers = [(name, "a\r\n .folded"), ("To", "b@example.org")]
    raw, wire = assemble_wire(headers, text * 3, html, "=_alt_x")
    assert raw == assemble(headers, text * 3, html, "=_alt_x")
    assert wire is not None and wire == wire_form(raw)


@hsettings(max_examples=500, deadline=None)
@given(st.lists(st.text(st.sampled_from(".. =\naé€-x\r"), max_size=120), max_size=12))
def test_a_body_encoded_piece_by_piece_is_the_body_encoded_whole(chunks: list[str]) -> None:
    """How the HTML part of a send is built: from the template's pieces, never joined."""
    body = "".join(chunks)
    headers = [("To", "b@example.org")]
    encoded = encode_chunks(chunks)
    if "\r" in body:
        assert encoded is None  # the joined body is encoded instead
        return
    assert encoded is not None and encoded.size == len(body.encode("utf-8"))
    assert assemble_wire(headers, "t", "", "=_alt_x", html_body=encoded) == assemble_wire(
        headers, "t", body, "=_alt_x"
    )


def test_a_header_wire_form_refuses_gives_no_wire_form() -> None:
    raw, wire = assemble_wire([("Subject", "a\nb")], "t", "h", "=_alt_x")
    assert wire is None and wire_form(raw) is None


@pytest.mark.parametrize("seed", SEEDS, ids=lambda p: p.name[:3])
def test_every_digest_comes_with_its_wire_form(renderer: Renderer, seed: Path) -> None:
    day = listing(seed)
    dotted = paper(
        "." * 60 + " Dots " + "a" * 70 + "." * 30,
        ".NET. " + ". " * 120 + "offline RL " + "." * 200,
        ("https://example.org/" + "." * 90,),
    )
    m = TopicMatch(OFFLINE.name, ("offline RL",), highlights=("offline RL",), score=1.0)
    stuffed = 0
    for name in ["", "Ada Lovelace", ".Dot Reader", "Zoë " + "." * 80]:
        for sel in (
            *(KINDS[kind](day) for kind in KINDS),
            one(dotted, m, sub=reader(OFFLINE, name=name)),
        ):
            sel = dataclasses.replace(sel, subscriber=reader(OFFLINE, RLHF, name=name))
            if not any(sp.sent for sp in sel.papers):
                continue
            out, wire = renderer.render_wire(sel, now=NOW)
            assert out == renderer.render(sel, now=NOW)
            assert wire == wire_form(out.raw)
            # what a send renders: the wire form alone, the message given back by raw_form
            slim, only = renderer.render_wire(sel, now=NOW, wire_only=True)
            assert only == wire and slim == dataclasses.replace(out, raw=b"", html="", text="")
            assert only is not None and raw_form(only) == out.raw
            stuffed += wire is not None and b"\r\n.." in wire
    assert stuffed  # the case that matters was there


def test_no_header_injection_through_names_topics_or_addresses(renderer: Renderer) -> None:
    evil = Topic("RL\r\nBcc: victim@example.com", ("offline RL",))
    sub = Subscriber("ada@example.org", name="Ada\r\nBcc: victim@example.com\n", topics=(evil,))
    m = TopicMatch(evil.name, ("offline RL",), highlights=("offline RL",))
    out = renderer.render(one(paper("T", "Offline RL. Yes."), m, sub=sub), now=NOW)
    msg = parse(out.raw)
    assert msg["Bcc"] is None and "\n" not in out.subject and "\r" not in out.subject
    assert msg["To"].addresses[0].addr_spec == "ada@example.org"
    assert msg["Subject"] == out.subject == "1 paper on RL Bcc: victim@example.com from Mar 17"
    names = [ln.split(b":")[0] for ln in out.raw.split(b"\r\n\r\n")[0].split(b"\r\n")]
    assert all(n[:1] in b" \t" or n in KNOWN_HEADERS for n in names)
    for bad in ("ada@example.org\r\nBcc: v@example.com", "a da@example.org", "ada", "ä@x.org"):
        with pytest.raises(ValueError):
            renderer.render(one(paper("T", "x."), sub=Subscriber(bad)), now=NOW)


KNOWN_HEADERS = {
    b"From", b"To", b"Subject", b"Date", b"Message-ID", b"MIME-Version", b"List-Id",
    b"List-Unsubscribe", b"List-Unsubscribe-Post", b"Precedence", b"Content-Type",
}  # fmt: skip


# --- lines, size, structure ------------------------------------------------------------------
def long_line_ok(line: str) -> bool:
    """A line over 78 columns must be one unbreakable URL (plus its indent)."""
    return len(line) <= 78 or bool(re.fullmatch(r" *(?:\S+: )?https?://\S+", line))


@pytest.mark.parametrize("seed", SEEDS, ids=lambda p: p.name[:3])
def test_text_part_wrapped_at_78_columns_and_raw_lines_crlf_under_998(
    renderer: Renderer, seed: Path
) -> None:
    out = renderer.render(first_n(listing(seed), reader(OFFLINE, RLHF), 25), now=NOW)
    lines = out.text.split("\n")
    assert all(long_line_ok(line) for line in lines), [x for x in lines if not long_line_ok(x)]
    assert any(len(line) > 78 for line in lines)  # the paper links are long: really exercised
    assert b"\n" not in out.raw.replace(b"\r\n", b"") and b"\r" not in out.raw.replace(b"\r\n", b"")
    assert max(len(line) for line in out.raw.split(b"\r\n")) <= 78  # QP lines are <= 76


def test_wrap_text_keeps_urls_whole_and_hangs_indents() -> None:
    url = "https://example.org/" + "x" * 90
    text = wrap_text(f"#12  {'word ' * 30}\n    Code: {url}\nshort\n\n\n\nend   ")
    lines = text.split("\n")
    assert lines[0].startswith("#12  word") and lines[1].startswith("     word")
    assert f"    {url}" in lines and "    Code:" in lines
    assert text.endswith("short\n\nend\n")
    assert all(long_line_ok(line) for line in lines)


def test_25_papers_stay_under_gmails_clip_limit(renderer: Renderer) -> None:
    longest = sorted(
        (e for s in SEEDS for e in listing(s).entries), key=lambda e: -len(e.paper.abstract)
    )[:25]
    topics = (OFFLINE, RLHF, EXPLORATION)
    sub = reader(*topics, max_papers=25)
    from .render_helpers import selected

    sel = Selection(sub, dt.date(2026, 3, 17), tuple(selected(e, topics) for e in longest))
    out = renderer.render(sel, now=NOW)
    assert len(out.paper_ids) == 25
    assert len(out.html.encode()) < 90_000  # Gmail clips at 102 KB; mailcheck warns at 90


def test_excerpts_shrink_when_the_html_would_be_clipped(renderer: Renderer) -> None:
    # Every word highlighted and linked: full excerpts would be far above the budget.
    words = [f"w{i}" for i in range(120)]
    abstract = ". ".join(" ".join(words[j : j + 12]).capitalize() for j in range(0, 120, 12)) + "."
    links = tuple(f"https://github.com/org/repo-{i}" for i in range(3))
    papers = tuple(
        SelectedPaper(
            paper(f"Paper {i}", abstract, links, pid=f"p{i}"),
            1.0,
            i + 1,
            True,
            (TopicMatch("Offline RL", tuple(words), highlights=tuple(words)),),
        )
        for i in range(25)
    )
    sel = Selection(reader(OFFLINE, max_papers=25), dt.date(2026, 3, 17), papers)
    out = renderer.render(sel, now=NOW)
    assert len(out.html.encode()) < 90_000
    assert len(out.paper_ids) == 25 and all(f">Paper {i}</a>" in out.html for i in range(25))


def test_html_is_email_safe_and_dark_mode_aware(renderer: Renderer) -> None:
    out = renderer.render(select(listing(SEEDS[2]), reader(RLHF, OFFLINE)), now=NOW)
    html = out.html
    assert html.startswith("<!doctype html>") and '<html lang="en"' in html
    assert f"<title>{escape_html(out.subject)}</title>" in html
    assert '<meta name="color-scheme" content="light dark"' in html
    assert '<meta name="supported-color-schemes" content="light dark"' in html
    assert "@media (prefers-color-scheme: dark)" in html
    assert 'name="viewport"' in html and "max-width:600px" in html
    assert not re.search(r"<script|javascript:|<link\b|@import|\{\{|\{%", html, re.I)
    assert all(u.startswith(("https://", "mailto:")) for u in hrefs(html))
    assert re.search(
        r'<div style="display:none;[^"]*">[^<]*'
        + re.escape(
            escape_html(
                norm(select(listing(SEEDS[2]), reader(RLHF, OFFLINE)).papers[0].paper.title)
            )[:40]
        ),
        html,
    )
    # body text at least 14 px: every font-size in the paper blocks
    sizes = {int(s) for s in re.findall(r"font-size:(\d+)px", html)}
    assert min(sizes - {0, 1}) >= 13 and 15 in sizes


def test_only_sent_papers_are_rendered_and_empty_digests_raise(renderer: Renderer) -> None:
    sel = select(listing(SEEDS[0]), reader(OFFLINE))
    held = SelectedPaper(paper("Held back", "Below threshold."), 0.1, 2, False)
    out = renderer.render(Selection(sel.subscriber, sel.edition, (*sel.papers, held)), now=NOW)
    assert "Held back" not in out.html and "Held back" not in out.text
    with pytest.raises(ValueError, match="no papers"):
        renderer.render(Selection(sel.subscriber, sel.edition, ()), now=NOW)
    with pytest.raises(ValueError, match="no papers"):
        renderer.render(Selection(sel.subscriber, sel.edition, (held,)), now=NOW)


# --- templates -----------------------------------------------------------------------------
@pytest.fixture
def template_dir(tmp_path: Path) -> Path:
    target = tmp_path / "templates"
    shutil.copytree(BUNDLED_TEMPLATES, target)
    return target


def edit(path: Path, old: str, new: str) -> int:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return text[: text.index(old)].count("\n") + 1


def test_custom_templates_are_used(make_settings: MakeSettings, template_dir: Path) -> None:
    (template_dir / "subject.txt").write_text("Digest: {{ count }} for {{ first_name }}\n")
    edit(template_dir / "digest.txt", "Unsubscribe:", "Leave the list:")
    r = Renderer(make_settings(template_dir=template_dir))
    out = r.render(select(listing(SEEDS[0]), reader(OFFLINE)), now=NOW)
    assert out.subject == f"Digest: {len(out.paper_ids)} for Ada"
    assert "Leave the list: mailto:" in out.text


@pytest.mark.parametrize(
    ("name", "old", "new", "expect"),
    [
        ("digest.mjml", "{{ headline }}", "{{ headlin }}", "'headlin' is undefined"),
        ("digest.mjml", "{{ p.title_html }}", "{{ p.titel }}", "has no attribute 'titel'"),
        ("digest.mjml", "{% endif %}", "{% endfi %}", "Jinja syntax error"),
        ("digest.txt", "{{ p.url }}", "{{ p.url | nosuchfilter }}", "No filter named"),
        ("digest.txt", "{% endfor %}", "{% endfor %}{% endfor %}", "Jinja syntax error"),
        ("subject.txt", "{{ summary }}", "{{ summary + 1 }}", "TypeError"),
    ],
)
def test_broken_templates_fail_at_construction_naming_file_and_line(
    make_settings: MakeSettings, template_dir: Path, name: str, old: str, new: str, expect: str
) -> None:
    line = edit(template_dir / name, old, new)
    with pytest.raises(RenderError) as err:
        Renderer(make_settings(template_dir=template_dir))
    msg = str(err.value)
    assert f"{template_dir / name}, line {line}:" in msg and expect in msg and "; " in msg


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        ("</mj-column>", "", "MJML does not compile"),
        ("{% if grouped %}", "{% if count < 3 %}", "is lt"),
        ("<mj-raw>{% for group", '<mj-raw><script>alert(1)</script></mj-raw><mj-raw>{% for group',
         "JavaScript"),
        ('href="{{ p.url }}" style="color:#3730a3', 'href="/papers/{{ p.id }}" style="color:#3730a3',
         "not absolute"),
    ],
)  # fmt: skip
def test_mjml_problems_fail_at_construction(
    make_settings: MakeSettings, template_dir: Path, old: str, new: str, expect: str
) -> None:
    edit(template_dir / "digest.mjml", old, new)
    with pytest.raises(RenderError, match=expect) as err:
        Renderer(make_settings(template_dir=template_dir))
    assert "digest.mjml" in str(err.value)


def test_missing_template_is_named(make_settings: MakeSettings, template_dir: Path) -> None:
    (template_dir / "subject.txt").unlink()
    with pytest.raises(RenderError, match=r"subject\.txt: template missing"):
        Renderer(make_settings(template_dir=template_dir))


# --- DKIM ----------------------------------------------------------------------------------
def test_dkim_signature_verifies_and_covers_the_list_headers(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    pem, dns = dkim_key(tmp_path)
    settings = make_settings(
        dkim_selector="s1",
        dkim_domain="example.org",
        dkim_private_key_file=pem,
        public_base_url="https://news.example.org",
        signing_key="s" * 32,
    )
    out = Renderer(settings).render(select(listing(SEEDS[0]), reader(OFFLINE)), now=NOW)
    assert out.raw.startswith(b"DKIM-Signature: ")
    assert dkim.verify(out.raw, dnsfunc=dns)
    signed = parse(out.raw)["DKIM-Signature"]
    h = re.search(r"h=([^;]+)", "".join(signed.split())).group(1).lower().split(":")
    for name in ("from", "to", "subject", "date", "message-id", "list-unsubscribe"):
        assert name in h
    assert "list-unsubscribe-post" in h
    assert sign_dkim(out.raw, settings) == out.raw  # already signed: unchanged
    _, wire = Renderer(settings).render_wire(select(listing(SEEDS[0]), reader(OFFLINE)), now=NOW)
    assert wire in (None, wire_form(out.raw))  # None: the caller runs wire_form itself
    tampered = out.raw.replace(b"Subject: ", b"Subject: FREE ", 1)
    assert not dkim.verify(tampered, dnsfunc=dns)


def test_unreadable_dkim_key_is_a_config_error(make_settings: MakeSettings, tmp_path: Path) -> None:
    settings = make_settings(
        dkim_selector="s1", dkim_domain="example.org", dkim_private_key_file=tmp_path / "nope.pem"
    )
    with pytest.raises(ConfigError, match="NEWSLETTER_DKIM_PRIVATE_KEY_FILE"):
        Renderer(settings)


# --- previews ------------------------------------------------------------------------------
def test_preview_files_and_an_escaped_index(renderer: Renderer, tmp_path: Path) -> None:
    out = renderer.render(select(listing(SEEDS[0]), reader(OFFLINE)), now=NOW)
    entry = write_preview(out, tmp_path)
    assert (tmp_path / entry.href).read_text(encoding="utf-8") == out.html
    assert entry.papers == len(out.paper_ids)
    evil = PreviewEntry('<b>"x"</b>@example.org', 'a "b"&c.html', 3, "S <i>")
    index = write_preview_index([entry, evil, ("plain@example.org", "p.html", 0)], tmp_path)
    page = index.read_text(encoding="utf-8")
    assert f'<a href="{entry.href}">ada@example.org</a></td><td>{entry.papers}</td>' in page
    assert "&lt;b&gt;&quot;x&quot;&lt;/b&gt;@example.org" in page and "<b>" not in page
    assert 'href="a%20%22b%22%26c.html"' in page and "S &lt;i&gt;" in page
    assert "<td>0</td>" in page


# --- link labels show the real host ---------------------------------------------------------
def test_deceptive_links_show_their_real_host_in_html_and_text(renderer: Renderer) -> None:
    links = (
        "https://github.com@evil.example/login",
        "https://user:secret@github.com.evil.example/x",
        "https://gіthub.com/x",  # Cyrillic і (U+0456)
        "https://evil.example/\u202emoc.buhtig",  # a right-to-left override in the path
        "https://github.com/real/repo",
    )
    p = paper("Offline RL with deceptive links", "Offline RL wins. " * 20, links)
    out = renderer.render(one(p, TopicMatch("Offline RL", ("offline RL",))), now=NOW)
    plain, html = parts(out.raw)
    shown = re.findall(r'href="(https://[^"]*)"[^>]*>([^<]*)</a>', html)
    by_label = {label: unescape(href) for href, label in shown if "papers?q=" not in href}
    assert by_label == {
        "evil.example/login": "https://evil.example/login",
        "github.com.evil.example/x": "https://github.com.evil.example/x",
        "xn--gthub-n2e.com/x": "https://xn--gthub-n2e.com/x",
        "evil.example/%E2%80%AEmoc.buhtig": "https://evil.example/%E2%80%AEmoc.buhtig",
        "github.com/real/repo": "https://github.com/real/repo",
    }
    for gone in ("github.com@", "secret", "gіthub", "\u202e"):
        assert gone not in html and gone not in plain
    assert "Code: https://github.com/real/repo" in plain
    assert "Project page: https://evil.example/login" in plain  # not "Code": not GitHub
    assert "Project page: https://xn--gthub-n2e.com/x" in plain


@pytest.mark.parametrize(("votes", "size"), [(False, 4096), (True, 4096), (False, 8)])
def test_cached_loop_bodies_render_the_bytes_of_the_template_as_written(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch, votes: bool, size: int
) -> None:
    """Each paper's block is rendered once per distinct view and then looked up: every
    digest must still be byte for byte what the uncached templates give, vote links (per
    reader, never shared) included, and whichever block comes first in a group; a full
    cache drops its older half and stays within its size."""
    monkeypatch.setattr(render_module, "BLOCK_CACHE_SIZE", size)
    base = "https://news.example.org"
    settings = make_settings(
        **({"public_base_url": base, "signing_key": "k" * 32} if votes else {})
    )
    renderer = Renderer(settings)
    if votes:  # tokens carry the time: one clock for both renders
        renderer._links = Links(
            base, Tokens(signing_keys(settings), max_age_days=30, clock=lambda: 1.8e9)
        )
    readers = [
        reader(OFFLINE),
        reader(OFFLINE, RLHF, EXPLORATION, name="Grace Hopper"),
        reader(BANDITS, ROBOTS, max_papers=25, name=""),
        reader(RLHF, ROBOTS, EXPLORATION, BANDITS, max_papers=4),
    ]
    sels = []
    for seed in SEEDS:
        for n, sub in enumerate(readers):
            sel = select(listing(seed), dataclasses.replace(sub, email=f"r{n}@example.org"))
            sels.append(sel)
            variant = tuple(  # the same papers as near misses and liked ones
                dataclasses.replace(sp, near_miss=i % 2 == 0, liked="A <liked> one" * (i % 3 == 1))
                for i, sp in enumerate(sel.papers)
            )
            sels.append(dataclasses.replace(sel, papers=variant))
    sels = [s for s in sels if s.papers]
    renderer.prime([s.subscriber for s in sels], NOW)
    cached = [renderer.render(s, now=NOW) for s in sels * 2]  # the second pass hits the cache
    caches = [c for t in (renderer._html, renderer._text) for c in t.globals.values()]
    sizes = [len(c.cache) for c in caches if isinstance(c, BodyCache)]
    assert len(sizes) == 2 and all(n <= size for n in sizes)
    assert all(n > 0 for n in sizes) != votes  # a reader's vote links are never cached
    uncached_templates = load_templates(
        settings.template_dir, renderer._sample_contexts(), cache_bodies=False
    )
    renderer._html, renderer._text, renderer._subject = uncached_templates
    plain = [renderer.render(s, now=NOW) for s in sels]
    assert [m.raw for m in cached] == [m.raw for m in plain * 2]
    assert [(m.html, m.text) for m in cached] == [(m.html, m.text) for m in plain * 2]
    assert any("/vote/" in m.html for m in plain) == votes
