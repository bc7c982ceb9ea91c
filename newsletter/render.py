"""Render one subscriber's Selection into a finished email (HTML, plain text, subject, MIME).

Templates live in `settings.template_dir`: `digest.mjml` (MJML with Jinja inside), `digest.txt`
and `subject.txt` (plain Jinja). The MJML is compiled to HTML once per process; per subscriber
only Jinja runs, and a loop body that reads only its item (a paper's block) is rendered once per
distinct view of it and then looked up (BodyCache). Every template is test-rendered with sample
data when the Renderer is built, so a broken template stops the run before anything is sent.

Template context (the same for all three templates):
  summary, headline, intro, preheader, preheader_pad   one-line texts ("7 papers on X from Mar 17")
  edition (date), edition_short ("Mar 17"), edition_long ("Tuesday, March 17, 2026")
  count, grouped (bool), groups [{topic, count_label, papers}], papers (flat, in shown order)
  paper: id, rank (trending rank in the day's listing; 0 = unranked), title, title_html
         (escaped, matched words highlighted), url (the paper's Hugging Face page when its arXiv
         id is known, else a search for its title), topics, terms (the matched terms), excerpt
         (plain), excerpt_html (escaped, matched terms in <strong class="hl">), links
         [{url, kind, label}], authors ("A. Lovelace, C. Babbage et al."; "" when unknown),
         arxiv_id, arxiv_url (https://arxiv.org/abs/<id>; "" when unknown), near_miss (sent
         only as one of the closest), liked (title of the paper the reader voted up that this
         one is like, or "")
  closest (bool: nothing matched; the papers are the closest ones, on_empty: closest)
  subscriber (Subscriber), first_name, subscriber_topics_phrase, digest_topics_phrase
  sender_name, postal_address, source_name, unsubscribe_url (https if configured, else mailto)
  archive_url ("view in browser"), day_url (the day's whole listing), and
  votes {paper id: {"up": url, "down": url}}: set only with NEWSLETTER_PUBLIC_BASE_URL
  (None / empty otherwise); every link of the HTML part must also be in the text part
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html as htmllib
import itertools
import operator
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit, urlunsplit

import idna
import jinja2
import jinja2.meta
from markupsafe import Markup, escape
from mjml import mjml2html

from newsletter.addresses import check_address
from newsletter.dailypapers import arxiv_page, paper_page
from newsletter.errors import ConfigError, RenderError
from newsletter.links import Links, one_click_allowed
from newsletter.mime import (
    assemble_wire,
    clean_header_text,
    dkim_enabled,
    encode_chunks,
    encode_phrase,
    encode_unstructured,
    format_address,
    format_date,
    load_dkim_key,
    message_id,
    sign_dkim,
    unsubscribe_mailto,
)
from newsletter.models import (
    Paper,
    RenderedEmail,
    SelectedPaper,
    Selection,
    Subscriber,
    Topic,
    TopicMatch,
)
from newsletter.readers import ReaderIds
from newsletter.settings import Settings
from newsletter.store import Store
from newsletter.tokens import Tokens, signing_keys

__all__ = [
    "PreviewEntry",
    "Renderer",
    "message_id",
    "sign_dkim",
    "wrap_text",
    "write_preview",
    "write_preview_index",
]

TEMPLATE_FILES = ("digest.mjml", "digest.txt", "subject.txt")
SOURCE_NAME = "Hugging Face Daily Papers"
OTHER_TOPIC = "More trending papers"
TEXT_WIDTH = 78
# Gmail clips above ~102 KB; mailcheck warns above 90 KB. Stay under both with some margin.
HTML_BUDGET = 88_000
EXCERPT_CHARS = 380  # target excerpt length at up to 10 papers; shrinks for longer digests
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
# Hidden filler after the preheader so clients don't pull body text into the inbox preview.
_PREHEADER_PAD = Markup("&#847;&zwnj;&nbsp;" * 40)


class LinkView(NamedTuple):
    url: str
    kind: str  # "Code", "Project page", ...
    label: str  # host + path, shown as the link text


class PaperView(NamedTuple):
    id: str
    rank: int
    title: str
    url: str
    topics: tuple[str, ...]
    terms: tuple[str, ...]
    excerpt: str
    excerpt_html: Markup
    links: tuple[LinkView, ...]
    authors: str = ""
    arxiv_id: str = ""
    arxiv_url: str = ""
    title_html: Markup = Markup("")
    near_miss: bool = False
    liked: str = ""


class GroupView(NamedTuple):
    topic: str
    count_label: str
    papers: tuple[PaperView, ...]


# --- excerpts and highlights -------------------------------------------------------------
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_ABBREVIATIONS = frozenset(
    [
        "e.g",
        "i.e",
        "etc",
        "et",
        "al",
        "vs",
        "cf",
        "fig",
        "figs",
        "eq",
        "eqs",
        "sec",
        "resp",
        "approx",
        "no",
    ]
)


def sentences(text: str) -> list[str]:
    """Split an abstract at sentence ends, not at e.g./i.e./et al./initials or inside URLs."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        words = text[start : m.start()].rsplit(None, 1)
        last = words[-1].lower().lstrip("([") if words else ""
        if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha()):
            continue
        out.append(text[start : m.end()].strip())
        start = m.end()
    if text[start:].strip():
        out.append(text[start:].strip())
    return out


def _term_pattern(terms: Sequence[str]) -> re.Pattern[str] | None:
    """Exact surface strings, longest first, not matching inside a longer word."""
    return _compiled_terms(tuple(terms))


@lru_cache(maxsize=16384)  # one compile per set of highlights (re's own cache holds only 512)
def _compiled_terms(terms: tuple[str, ...]) -> re.Pattern[str] | None:
    alts = []
    for t in sorted({t for t in terms if t.strip()}, key=len, reverse=True):
        left = r"(?<!\w)" if t[0].isalnum() else ""
        right = r"(?!\w)" if t[-1].isalnum() else ""
        alts.append(left + re.escape(t) + right)
    return re.compile("|".join(alts)) if alts else None


def excerpt(abstract: str, highlights: Sequence[str], budget: int, title: str = "") -> str:
    """About `budget` chars of whole sentences from the start of the abstract.

    When no matched term shows in the title or the opening, start at the first sentence that
    has one instead, so the reader sees why the paper was picked.
    """
    sents = _abstract_sentences(abstract)
    if not sents:
        return ""
    start = 0
    pattern = _term_pattern(highlights)
    if pattern and not any(h.lower() in title.lower() for h in highlights):
        for i, s in enumerate(sents):
            if pattern.search(s):
                if sum(len(x) + 1 for x in sents[: i + 1]) > budget:
                    start = i  # the opening would hide why the paper matched
                break
    picked: list[str] = []
    size = 0
    for s in sents[start:]:
        grown = size + len(s) + 1
        # Over budget: stop, unless what we have is thin and this sentence still fits loosely.
        if picked and grown > budget and (size >= budget // 2 or grown > budget * 1.4):
            break
        picked.append(s)
        size += len(s) + 1
    text = " ".join(picked)
    if len(text) > budget * 1.4:  # one very long sentence: cut at a word, say so
        text = text[: budget + 1].rsplit(" ", 1)[0].rstrip(",;:") + " …"
    return ("… " if start else "") + text


@lru_cache(maxsize=4096)  # an abstract is split once per process, whatever the highlights
def _abstract_sentences(abstract: str) -> tuple[str, ...]:
    return tuple(sentences(" ".join(abstract.split())))


def highlight(text: str, highlights: Sequence[str]) -> Markup:
    """HTML-escaped text with each matched term wrapped in a highlight span."""
    pattern = _term_pattern(highlights)
    if pattern is None:
        return escape(text)
    out: list[str] = []
    pos = 0
    for m in pattern.finditer(text):
        out.append(escape(text[pos : m.start()]))
        out.append(
            '<strong class="hl" style="font-weight:600;background-color:#fef3c7;'
            f'color:#1f2937;border-radius:3px;padding:0 2px;">{escape(m.group(0))}</strong>'
        )
        pos = m.end()
    out.append(escape(text[pos:]))
    return Markup("".join(out))


_LINK_KINDS = {
    "github.com": "Code",
    "gitlab.com": "Code",
    "bitbucket.org": "Code",
    "codeberg.org": "Code",
    "huggingface.co": "Hugging Face",
}


def link_view(url: str) -> LinkView:
    """A link as shown: the host it really goes to, never a look-alike. User info
    ("github.com@evil.example") is dropped, a non-ASCII host is shown in punycode
    ("xn--gthub-n2e.com" for a Cyrillic "і"), and invisible or bidi characters in the path are
    percent-encoded; the href and the text part use the same cleaned URL."""
    try:
        parts = urlsplit(url)
        host = ascii_host(parts.hostname or "")
        port = parts.port
    except ValueError:  # a malformed host or port: show it, inert, as it is
        return LinkView(url=_visible(url), kind="Link", label=_visible(url))
    if not host:
        return LinkView(url=_visible(url), kind="Link", label=_visible(url))
    at = (f"[{host}]" if ":" in host else host) + (f":{port}" if port is not None else "")
    path, query, fragment = (_visible(x) for x in (parts.path, parts.query, parts.fragment))
    honest = "@" not in parts.netloc and parts.netloc.isascii() and _visible(url) == url
    clean = url if honest else urlunsplit((parts.scheme, at, path, query, fragment))
    bare = host.removeprefix("www.")
    kind = _LINK_KINDS.get(bare, "Project page")
    if bare == "huggingface.co":
        first = parts.path.strip("/").split("/", 1)[0]
        kind = {"datasets": "Dataset", "spaces": "Demo"}.get(first, "Model")
    label = (at.removeprefix("www.") + path).rstrip("/")
    return LinkView(url=clean, kind=kind, label=label)


def ascii_host(host: str) -> str:
    """A host name in ASCII: IDNA (punycode) for non-ASCII labels, lower-cased."""
    if host.isascii():
        return host.lower()
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError:  # not valid IDNA: punycode each label anyway, so it stays visible
        return ".".join(
            label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")
            for label in host.lower().split(".")
        )


def _visible(text: str) -> str:
    """Percent-encode control, format (bidi overrides, zero-width) and space characters."""
    return "".join(quote(c, safe="") if unicodedata.category(c)[0] in "CZ" else c for c in text)


# --- authors -----------------------------------------------------------------------------
# Particles, written in lower case, begin the surname: "Johannes van der Waals" -> "J. van der
# Waals". Capitalised ("Bin", "Van") they are given names and are shortened like any other.
_PARTICLES = frozenset(
    ["van", "von", "der", "den", "de", "del", "della", "di", "da", "dos", "das", "du", "le", "la"]
)
AUTHORS_SHOWN = 2


def initials(given: str) -> str:
    """ "Ada" -> "A.", "Jean-Paul" -> "J.-P."; an initial already ("A.") stays."""
    return "-".join(part[0] + "." for part in given.split("-") if part)


def short_name(name: str) -> str:
    """ "Ada Lovelace" -> "A. Lovelace": initials for the given names, the surname in full.
    A one-word name, or one written in a script without capitals (CJK), is kept as it is."""
    words = name.split()
    if len(words) < 2 or not words[0][0].isupper():
        return name
    cut = next((i for i, w in enumerate(words[1:], 1) if w in _PARTICLES), len(words) - 1)
    return " ".join([*(initials(w) for w in words[:cut]), *words[cut:]])


def author_line(authors: Sequence[str], shown: int = AUTHORS_SHOWN) -> str:
    """The first authors as an email shows them: "A. Author, B. Author et al."."""
    names = [short_name(a) for a in authors[:shown]]
    return ", ".join(names) + (" et al." if len(authors) > shown else "")


@lru_cache(maxsize=16384)  # papers repeat across subscribers: build each view once per day
def paper_view(
    paper: Paper,
    rank: int,
    topics: tuple[str, ...],
    terms: tuple[str, ...],
    highlights: tuple[str, ...],
    budget: int,
    base_url: str,
) -> PaperView:
    # the key above varies with each reader's topics; its parts repeat far more often
    text = _excerpt(paper.abstract, highlights, budget, paper.title) if budget else ""
    title, url, links, authors, arxiv_id, arxiv_url = _paper_parts(paper, base_url)
    return PaperView(
        id=paper.id,
        rank=rank,
        title=title,
        url=url,
        topics=topics,
        terms=terms,
        excerpt=text,
        excerpt_html=_highlight(text, highlights),
        links=links,
        authors=authors,
        arxiv_id=arxiv_id,
        arxiv_url=arxiv_url,
        title_html=_highlight(title, highlights),
    )


@lru_cache(maxsize=4096)
def _paper_parts(
    paper: Paper, base_url: str
) -> tuple[str, str, tuple[LinkView, ...], str, str, str]:
    """What a paper's view shows whatever the reader: title, url, links, authors, arXiv."""
    title = " ".join(paper.title.split())
    arxiv_id = paper.arxiv_id or ""
    return (
        title,
        paper_page(arxiv_id) if arxiv_id else base_url + quote(title, safe=""),
        tuple(link_view(u) for u in paper.links if u.startswith(("https://", "http://"))),
        author_line(paper.authors),
        arxiv_id,
        arxiv_page(arxiv_id) if arxiv_id else "",
    )


@lru_cache(maxsize=16384)
def _excerpt(abstract: str, highlights: tuple[str, ...], budget: int, title: str) -> str:
    return excerpt(abstract, highlights, budget, title)


@lru_cache(maxsize=16384)
def _highlight(text: str, highlights: tuple[str, ...]) -> Markup:
    return highlight(text, highlights)


# --- plain text --------------------------------------------------------------------------
_HANG = re.compile(r" *(?:#\d+ +|[-*•] +)?")


@lru_cache(maxsize=16384)
def _wrap_line(line: str, width: int) -> str:
    if len(line) <= width:
        return line
    lead = _HANG.match(line).group(0)  # type: ignore[union-attr]
    indent = " " * len(lead)
    words = [w for w in line[len(lead) :].split(" ") if w]
    out: list[str] = []
    cur, empty = lead, True
    for word in words:
        room = width - len(indent)
        while len(word) > room and "://" not in word:  # hard-split a giant non-URL token
            if not empty:
                out.append(cur)
                cur, empty = indent, True
            out.append(cur + word[:room])
            word = word[room:]
        if not empty and len(cur) + 1 + len(word) > width:
            out.append(cur)
            cur = indent + word
        else:
            cur = cur + ("" if empty else " ") + word
        empty = False
    out.append(cur)
    return "\n".join(out)


def wrap_text(text: str, width: int = TEXT_WIDTH) -> str:
    """Wrap every line at `width` columns with a hanging indent; URLs are never broken.

    Also strips trailing spaces and keeps at most one blank line in a row, so templates can
    be laid out for readability.
    """
    lines: list[str] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.rstrip()
        if not line and (not lines or not lines[-1]):
            continue
        lines.append(_wrap_line(line, width))
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


# --- context -----------------------------------------------------------------------------
def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(" ·,;:") + "…"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def join_names(names: Sequence[str], limit: int = 0) -> str:
    """ "A", "A and B", "A, B and C"; with `limit`, "A, B and 3 more topics"."""
    names = list(names)
    if limit and len(names) > limit + 1:
        names = [*names[:limit], f"{len(names) - limit} more topics"]
    if len(names) <= 1:
        return names[0] if names else "your topics"
    return ", ".join(names[:-1]) + " and " + names[-1]


def _best_topic(sp: SelectedPaper) -> str:
    if not sp.matches:
        return OTHER_TOPIC
    return max(sp.matches, key=lambda m: m.score).topic  # ties: the first match wins


def group_papers(
    papers: Sequence[SelectedPaper], topic_order: Sequence[str] = ()
) -> list[tuple[str, list[SelectedPaper]]]:
    """Papers under their best topic, each group in the papers' order; groups in the order of
    `topic_order` (the subscriber's, so the subject does not reshuffle from day to day), other
    topics after them in order of their best paper, "other" last."""
    groups: dict[str, list[SelectedPaper]] = {}
    for sp in papers:
        groups.setdefault(_best_topic(sp), []).append(sp)
    other = groups.pop(OTHER_TOPIC, None)
    position = {name: n for n, name in enumerate(topic_order)}
    ordered = sorted(groups.items(), key=lambda g: position.get(g[0], len(position)))
    return [*ordered, *([(OTHER_TOPIC, other)] if other else [])]


# --- templates ---------------------------------------------------------------------------
_TAG_WITH_LT = re.compile(r"\{[{%][^}]*<[^}]*[}%]\}")
_URL_ATTR = re.compile(r"""\b(?:href|src)\s*=\s*["']([^"']*)["']""", re.I)
_IMG = re.compile(r"<img\b[^>]*>", re.I)


def _environment(template_dir: Path, *, html: bool) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir),
        autoescape=html,  # HTML only: the text part and subject must not carry &amp;
        undefined=jinja2.StrictUndefined,
        trim_blocks=not html,
        lstrip_blocks=not html,
        keep_trailing_newline=True,
        auto_reload=False,
    )


# --- per-item caching of loop bodies -------------------------------------------------------
# A paper's block in a digest is the same for every reader who gets the same view of it (its
# excerpt, highlights, badges), so a loop body that depends only on its item, a few loop
# counters and names with plain values is rendered once per distinct key and then looked up.
# Which bodies qualify is decided from the template's syntax tree, so an edited template is
# cached where it is safe and rendered as written everywhere else (a body that includes,
# imports, calls a macro, mutates a namespace or reads a per-reader mapping stays uncached).
_LOOP_ATTRS = frozenset(["first", "last", "index", "index0", "revindex", "revindex0", "length"])
_OPAQUE = (  # nodes whose output depends on more than the names they mention
    jinja2.nodes.Macro,
    jinja2.nodes.CallBlock,
    jinja2.nodes.Include,
    jinja2.nodes.Import,
    jinja2.nodes.FromImport,
    jinja2.nodes.Extends,
    jinja2.nodes.Block,
    jinja2.nodes.ScopedEvalContextModifier,
    jinja2.nodes.EvalContextModifier,
    jinja2.nodes.ContextReference,
    jinja2.nodes.DerivedContextReference,
    jinja2.nodes.ExtensionAttribute,
    jinja2.nodes.ImportedName,
    jinja2.nodes.InternalName,
    jinja2.nodes.Assign,
    jinja2.nodes.AssignBlock,
    jinja2.nodes.With,
)
_PLAIN = (str, int, float, bool, type(None), dt.date, tuple)  # values compared by value
BLOCK_CACHE_SIZE = 4096  # entries per cached body: a day has ~50 papers in a few views each
_MISSING = object()


@dataclass(frozen=True, slots=True)
class _Loop:
    """The loop counters a cached body reads (a body reading others is not cached)."""

    first: bool
    last: bool
    index: int
    index0: int
    revindex: int
    revindex0: int
    length: int


_LOOP_FIELDS = tuple(f.name for f in fields(_Loop))


class BodyCache:
    """Renders one loop body through a cache keyed by everything the body reads: the loop
    item, the loop counters it uses, the other names it mentions (by type and value), and for
    a mapping read only as `mapping[item.attr]` that one entry. A key holding anything else
    (a reader's vote links, a list) renders uncached: nothing per reader is ever shared."""

    def __init__(
        self,
        template: jinja2.Template,
        target: str,
        loop_attrs: tuple[str, ...],
        names: tuple[str, ...],
        lookups: tuple[tuple[str, str], ...],
        markup: bool,
    ) -> None:
        self.template, self.target, self.loop_attrs = template, target, loop_attrs
        self.names, self.lookups, self.markup = names, lookups, markup
        self.cache: dict[tuple[Any, ...], str] = {}
        # the key's parts, fetched in C (a call per paper per digest: its cost matters)
        self._counters = operator.attrgetter(*loop_attrs) if loop_attrs else None
        self._keys = tuple(operator.attrgetter(attr) for _, attr in lookups)
        self._plain = len(names)

    def __call__(self, item: Any, loop: Any, *values: Any) -> str:
        counters = self._counters(loop) if self._counters is not None else ()
        n = self._plain
        plain = values[:n]
        entries = tuple(  # a mapping that is not a dict is keyed whole (cached when plain)
            [
                mapping.get(key(item), _MISSING) if isinstance(mapping, dict) else mapping
                for mapping, key in zip(values[n:], self._keys, strict=True)
            ]
        )
        key = (type(item), item, counters, tuple(map(type, plain)) if n else (), plain, entries)
        try:
            hit = self.cache.get(key)
        except TypeError:  # an unhashable value (a reader's vote links): render as written
            hit, cacheable = None, False
        else:
            if hit is not None:  # most calls: what makes a key cacheable is asked on a miss
                return hit
            cacheable = all(
                isinstance(v, _PLAIN) for v in (item, *plain, *entries) if v is not _MISSING
            )
        ctx: dict[str, Any] = {self.target: item, **dict(zip(self.names, plain, strict=True))}
        if self.loop_attrs:
            ctx["loop"] = _Loop(*(getattr(loop, a) for a in _LOOP_FIELDS))
        for (name, attr), mapping, entry in zip(
            self.lookups, values[len(self.names) :], entries, strict=True
        ):
            if isinstance(mapping, dict):
                ctx[name] = {} if entry is _MISSING else {getattr(item, attr): entry}
            else:
                ctx[name] = mapping
        out = self.template.render(ctx)
        if self.markup:
            out = Markup(out)
        if cacheable:
            if len(self.cache) >= BLOCK_CACHE_SIZE:  # bounded, however many readers:
                for old in list(itertools.islice(self.cache, BLOCK_CACHE_SIZE // 2)):
                    del self.cache[old]  # the older half goes (the day's common views return)
            self.cache[key] = out
        return out


def _walk(
    node: jinja2.nodes.Node, parent: jinja2.nodes.Node | None, outer: bool
) -> Iterable[tuple[jinja2.nodes.Node, jinja2.nodes.Node | None, bool]]:
    """Every node under `node` with its parent and whether it is in the outer loop's scope
    (not inside the body of a nested for, where `loop` is that loop's)."""
    yield node, parent, outer
    for field, value in node.iter_fields():
        inner = outer and not (isinstance(node, jinja2.nodes.For) and field in ("body", "else_"))
        children = value if isinstance(value, list) else [value]
        for child in children:
            if isinstance(child, jinja2.nodes.Node):
                yield from _walk(child, node, inner)


def _cacheable_body(
    env: jinja2.Environment, loop: jinja2.nodes.For
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, str], ...]] | None:
    """(loop counters, plain names, mapping lookups) the body reads, or None when caching it
    could change its output."""
    if not isinstance(loop.target, jinja2.nodes.Name) or loop.recursive or loop.else_:
        return None
    target = loop.target.name
    body = jinja2.nodes.Template(loop.body)
    body.set_environment(env)
    free = jinja2.meta.find_undeclared_variables(body)
    counters: set[str] = set()
    lookups: dict[str, str] = {}
    plain: set[str] = set()
    for node, parent, outer in _walk(body, None, True):
        if isinstance(node, _OPAQUE):
            return None
        if isinstance(node, jinja2.nodes.Call) and not isinstance(node.node, jinja2.nodes.Name):
            return None  # a method call (loop.cycle, a namespace's) may depend on state
        if not isinstance(node, jinja2.nodes.Name) or node.name not in free:
            continue
        name = node.name
        if name == target or (name == "loop" and not outer):  # an inner loop's own counters
            continue
        if name == "loop":
            if not (isinstance(parent, jinja2.nodes.Getattr) and parent.attr in _LOOP_ATTRS):
                return None
            counters.add(parent.attr)
        elif (
            isinstance(parent, jinja2.nodes.Getitem)
            and parent.node is node
            and isinstance(parent.arg, jinja2.nodes.Getattr)
            and isinstance(parent.arg.node, jinja2.nodes.Name)
            and parent.arg.node.name == target
            and lookups.get(name, parent.arg.attr) == parent.arg.attr
        ):
            lookups[name] = parent.arg.attr  # mapping[item.attr]: only that entry matters
        elif (isinstance(parent, jinja2.nodes.Getitem) and parent.node is node) or (
            isinstance(parent, jinja2.nodes.For) and parent.iter is node
        ):
            return None  # indexed or iterated: a container, no key; an inner loop may qualify
        else:
            plain.add(name)
    if set(lookups) & plain or "loop" in plain:
        return None
    return tuple(sorted(counters)), tuple(sorted(plain)), tuple(sorted(lookups.items()))


def _cached_template(
    env: jinja2.Environment,
    tree: jinja2.nodes.Template,
    name: str | None,
    filename: str | None,
    *,
    cache: bool = True,
) -> jinja2.Template:
    """The template of `tree` with each cacheable for-loop body (the outermost one that
    qualifies; loops inside it are part of it) rendered through a BodyCache: the same output
    as the template as written."""
    bodies: dict[str, BodyCache] = {}

    def visit(node: jinja2.nodes.Node) -> None:
        for child in node.iter_child_nodes():
            found = _cacheable_body(env, child) if isinstance(child, jinja2.nodes.For) else None
            if found is None:
                visit(child)
                continue
            assert isinstance(child, jinja2.nodes.For)
            assert isinstance(child.target, jinja2.nodes.Name)
            counters, plain, lookups = found
            fn = f"_body_cache_{len(bodies)}"
            body = jinja2.nodes.Template(child.body, lineno=child.lineno)
            body.set_environment(env)
            code = env.compile(body, name, filename)
            bodies[fn] = BodyCache(
                env.template_class.from_code(env, code, env.make_globals(None)),
                child.target.name,
                counters,
                plain,
                lookups,
                markup=bool(env.autoescape),
            )
            args: list[jinja2.nodes.Expr] = [
                jinja2.nodes.Name(child.target.name, "load"),
                # only a body that reads the counters makes Jinja build a loop context
                jinja2.nodes.Name("loop", "load") if counters else jinja2.nodes.Const(None),
            ]
            args += [jinja2.nodes.Name(n, "load") for n in (*plain, *(m for m, _ in lookups))]
            call = jinja2.nodes.Call(jinja2.nodes.Name(fn, "load"), args, [], None, None)
            child.body = [jinja2.nodes.Output([call], lineno=child.lineno)]

    if cache:
        visit(tree)
    tree.set_environment(env)
    code = env.compile(tree, name, filename)
    return env.template_class.from_code(env, code, env.make_globals(bodies))


def _template_line(exc: BaseException, filename: str | None) -> int | None:
    """The template line Jinja mapped into the traceback (innermost frame of that file)."""
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _fail(path: Path, line: int | None, problem: str, fix: str) -> RenderError:
    where = f"{path}, line {line}" if line else str(path)
    return RenderError(f"{where}: {problem}; {fix}")


def _hint(exc: Exception) -> str:
    if isinstance(exc, jinja2.UndefinedError):
        return (
            "use only the context variables listed in newsletter/render.py "
            "(summary, groups, papers, unsubscribe_url, ...) or guard it with `is defined`"
        )
    return "fix the expression on that line"


def _compile(env: jinja2.Environment, path: Path) -> jinja2.Template:
    try:
        return env.get_template(path.name)
    except jinja2.TemplateSyntaxError as exc:
        raise _fail(path, exc.lineno, f"Jinja syntax error: {exc.message}", "fix the tag") from exc


def _try_render(tpl: jinja2.Template, ctx: dict[str, Any], path: Path, what: str = "") -> str:
    try:
        return tpl.render(ctx)
    except Exception as exc:  # any template error must stop the run here, not mid-send
        line = _template_line(exc, tpl.filename)
        raise _fail(path, line, f"{what}{type(exc).__name__}: {exc}", _hint(exc)) from exc


def _compile_mjml(source: str, path: Path) -> str:
    for m in _TAG_WITH_LT.finditer(source):
        raise _fail(
            path,
            source.count("\n", 0, m.start()) + 1,
            f"a literal '<' inside {m.group(0)!r} breaks the MJML parser",
            "use a Jinja test instead (`a is lt(b)`, `a is le(b)`) or compute it in Python",
        )
    root = path.parent.resolve()

    def include(path: str) -> str:
        target = (root / path).resolve()
        if not target.is_relative_to(root):
            raise ValueError(f"mj-include {path!r} points outside the template folder")
        return target.read_text(encoding="utf-8")

    try:
        # fonts={}: no Google Fonts @import (external CSS is stripped and leaks opens)
        html = mjml2html(source, disable_comments=True, fonts={}, include_loader=include)
    except (ValueError, OSError) as exc:
        raise _fail(
            path,
            None,
            f"MJML does not compile ({exc})",
            "check that every mj- tag is closed, nothing sits outside <mjml>, and Jinja "
            "tags between MJML elements are wrapped in <mj-raw>",
        ) from exc
    # MJML emits the body as one huge line. Breaking it after each table row (whitespace
    # there is insignificant) gives short lines that repeat across subscribers, which the
    # quoted-printable encoder caches, and keeps every paper on lines of its own.
    return html.replace("</tr>", "</tr>\n").rstrip("\n") + "\n"


def _lint_html(html: str, path: Path) -> None:
    """What no client tolerates: scripts, relative links, images without alt, raw Jinja."""
    problems = []
    if re.search(r"<script\b|\bjavascript:", html, re.I):
        problems.append("it contains JavaScript (mail clients strip or block it)")
    for url in _URL_ATTR.findall(html):
        if not url.startswith(("https://", "http://", "mailto:", "tel:")):
            problems.append(f"link {url[:60]!r} is not absolute (https://, mailto:)")
    for img in _IMG.findall(html):
        if not re.search(r"\balt\s*=", img):
            problems.append(f"image {img[:60]!r} has no alt text")
    if "{{" in html or "{%" in html:
        problems.append("a Jinja tag survived MJML unrendered (MJML changed its quoting)")
    if problems:
        raise _fail(
            path,
            None,
            "the rendered sample HTML is not email-safe: " + "; ".join(problems[:5]),
            "fix the template",
        )


def load_templates(
    template_dir: Path, samples: Sequence[dict[str, Any]], *, cache_bodies: bool = True
) -> tuple[jinja2.Template, jinja2.Template, jinja2.Template]:
    """Compile and test-render all three templates; any problem is a RenderError. With
    `cache_bodies`, loop bodies that qualify render through a BodyCache (same output)."""
    paths = [template_dir / name for name in TEMPLATE_FILES]
    for path in paths:
        if not path.is_file():
            raise _fail(
                path,
                None,
                "template missing",
                f"NEWSLETTER_TEMPLATE_DIR must hold {', '.join(TEMPLATE_FILES)} "
                "(`newsletter init --templates` writes a copy of the bundled ones to edit)",
            )
    mjml_path, text_path, subject_path = paths
    html_env = _environment(template_dir, html=True)
    text_env = _environment(template_dir, html=False)
    # The MJML source is itself a Jinja template: rendering it first gives errors with the
    # line numbers the author sees. The compiled HTML is then rendered too, to catch anything
    # MJML changed.
    source_tpl = _compile(html_env, mjml_path)
    for ctx in samples:
        _try_render(source_tpl, ctx, mjml_path)
    compiled = _compile_mjml(mjml_path.read_text(encoding="utf-8"), mjml_path)
    try:
        html_tree = html_env.parse(compiled)
        html_tpl = _cached_template(html_env, html_tree, None, None, cache=cache_bodies)
    except jinja2.TemplateSyntaxError as exc:
        raise _fail(
            mjml_path,
            None,
            f"the compiled HTML is not valid Jinja ({exc.message})",
            "MJML rewrote a Jinja tag: move it into <mj-raw> or <mj-text>",
        ) from exc
    text_tpl = _compile(text_env, text_path)
    text_tpl = _cached_template(
        text_env,
        text_env.parse(text_path.read_text(encoding="utf-8"), text_path.name, text_tpl.filename),
        text_path.name,
        text_tpl.filename,
        cache=cache_bodies,
    )
    subject_tpl = _compile(text_env, subject_path)
    for ctx in samples:
        _lint_html(_try_render(html_tpl, ctx, mjml_path, "in the compiled HTML: "), mjml_path)
        _try_render(text_tpl, ctx, text_path)
        if not clean_header_text(_try_render(subject_tpl, ctx, subject_path)):
            raise _fail(subject_path, None, "the subject renders empty", "give it some text")
    return html_tpl, text_tpl, subject_tpl


class ReaderLinks(NamedTuple):
    """One reader's links in one digest (with NEWSLETTER_PUBLIC_BASE_URL only)."""

    unsubscribe: str
    archive: str
    day: str
    votes: dict[str, dict[str, str]]  # paper id -> {"up": url, "down": url}


class Renderer:
    """Compiles the templates once; `render` then costs one Jinja pass per part plus MIME.

    With NEWSLETTER_PUBLIC_BASE_URL the links to the web app carry the reader's opaque id from
    the store (`store`, else one opened from the settings on first use) and signed tokens.
    """

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self._check_settings(settings)
        self._dkim = dkim_enabled(settings)
        if self._dkim:
            load_dkim_key(settings)  # fail now, not at the first message
        self._from = format_address(settings.sender_name, settings.sender_address, "From")
        self._list_id_bare = self._list_id_value()
        self._list_id = f"{encode_phrase(settings.sender_name)} <{self._list_id_bare}>"
        self._mailto_address = settings.effective_unsubscribe_address
        self._links: Links | None = None
        if settings.public_base_url:
            tokens = Tokens(signing_keys(settings), max_age_days=settings.link_max_age_days)
            self._links = Links(settings.public_base_url, tokens)
        self._one_click = one_click_allowed(settings.public_base_url)
        self._reader_ids = ReaderIds(settings, store)
        self._html, self._text, self._subject = load_templates(
            Path(settings.template_dir), self._sample_contexts()
        )

    # -- construction helpers -----------------------------------------------------------
    @staticmethod
    def _check_settings(settings: Settings) -> None:
        for name in ("sender_address", "reply_to", "unsubscribe_address"):
            value = getattr(settings, name)
            if value is None:
                continue
            try:
                check_address(value)
            except ValueError as exc:
                raise ConfigError(f"setting NEWSLETTER_{name.upper()}: {exc}") from None
        dkim = {
            "dkim_selector": settings.dkim_selector,
            "dkim_domain": settings.dkim_domain,
            "dkim_private_key_file": settings.dkim_private_key_file,
        }
        missing = [f"NEWSLETTER_{k.upper()}" for k, v in dkim.items() if not v]
        if 0 < len(missing) < len(dkim):
            raise ConfigError(
                f"DKIM is half configured: set {', '.join(missing)} as well, "
                "or unset the other DKIM settings to send unsigned"
            )

    def _list_id_value(self) -> str:
        value = self.settings.effective_list_id.strip().strip("<>")
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+", value) or "." not in value:
            raise ConfigError(
                f"setting NEWSLETTER_LIST_ID: {value!r} is not a valid List-Id; "
                "use a dotted name such as daily-digest.example.org"
            )
        return value

    def _sample_contexts(self) -> list[dict[str, Any]]:
        """Each sample with and without excerpts (the size guard may drop them)."""
        mailto = unsubscribe_mailto(self._mailto_address)
        contexts = []
        for sel in sample_selections():
            links = self._reader_links("sample-reader", sel)
            for budget in (EXCERPT_CHARS, 0):
                contexts.append(self._context(sel, sel.papers, budget, mailto, links))
        return contexts

    # -- rendering ---------------------------------------------------------------------
    def _reader_links(self, reader_id: str, selection: Selection) -> ReaderLinks | None:
        if self._links is None:
            return None
        links = self._links
        return ReaderLinks(
            unsubscribe=links.unsubscribe(reader_id),
            archive=links.archive(reader_id, selection.edition),
            day=links.day(selection.edition),
            votes={
                sp.paper.id: {v: links.vote(reader_id, sp.paper.id, v) for v in ("up", "down")}
                for sp in selection.papers
                if sp.sent
            },
        )

    def prime(self, subscribers: Iterable[Subscriber], now: dt.datetime) -> None:
        """Get the reader ids of a chunk of subscribers ready in one go (with web links)."""
        if self._links is not None:
            self._reader_ids.prime((s.email for s in subscribers), now)

    def links_for(self, selection: Selection, now: dt.datetime) -> ReaderLinks | None:
        """The reader's web links for this digest; None without NEWSLETTER_PUBLIC_BASE_URL."""
        if self._links is None:
            return None
        return self._reader_links(self._reader_ids(selection.subscriber.email, now), selection)

    def _context(
        self,
        selection: Selection,
        papers: Sequence[SelectedPaper],
        budget: int,
        mailto: str,
        links: ReaderLinks | None,
    ) -> dict[str, Any]:
        base = self.settings.paper_base_url
        groups = []
        sub = selection.subscriber
        for topic, members in group_papers(papers, [t.name for t in sub.topics]):
            views = []
            for sp in members:
                topics = tuple(dict.fromkeys(m.topic for m in sp.matches))
                hl = tuple(dict.fromkeys(h for m in sp.matches for h in m.highlights))
                view = paper_view(sp.paper, sp.rank, topics, sp.matched_terms, hl, budget, base)
                if sp.near_miss or sp.liked:
                    view = view._replace(near_miss=sp.near_miss, liked=sp.liked)
                views.append(view)
            groups.append(GroupView(topic, _plural(len(views), "paper"), tuple(views)))
        flat = [p for g in groups for p in g.papers]
        ed = selection.edition
        closest = bool(papers) and all(sp.near_miss for sp in papers)
        digest_topics = [g.topic for g in groups if g.topic != OTHER_TOPIC]
        headline = f"{_plural(len(flat), 'paper')} on {join_names(digest_topics, 2)}"
        if not digest_topics:
            headline = f"{_plural(len(flat), 'trending paper')}"
        edition_short = f"{_MONTHS[ed.month - 1][:3]} {ed.day}"
        first_name = sub.name.split()[0] if sub.name.strip() else ""
        hello = f"Hi {first_name}, here" if first_name else "Here"
        order = (
            "best match first (the match score, with a small bonus for the paper's trending "
            "rank that day)"
        )
        intro = f"{hello} is what matched your topics among the papers trending on "
        intro += f"{edition_short}, {'grouped by topic, each ' if len(groups) > 1 else ''}{order}."
        if closest:
            headline = f"{_plural(len(flat), 'closest paper')} (nothing matched your topics)"
            intro = (
                f"{hello.replace('here', 'nothing').replace('Here', 'Nothing')} reached your "
                f"topics' bar on {edition_short}. You asked for the closest papers on such a "
                f"day (on_empty: closest); here they are, {order}."
            )
        return {
            "summary": f"{headline} from {edition_short}",
            "headline": headline,
            "intro": intro,
            "closest": closest,
            "preheader": _shorten(" · ".join(p.title for p in flat[:3]), 150),
            "preheader_pad": _PREHEADER_PAD,
            "edition": ed,
            "edition_short": edition_short,
            "edition_long": f"{_DAYS[ed.weekday()]}, {_MONTHS[ed.month - 1]} {ed.day}, {ed.year}",
            "count": len(flat),
            "grouped": len(groups) > 1,
            "groups": groups,
            "papers": flat,
            "subscriber": sub,
            "first_name": first_name,
            "subscriber_topics_phrase": join_names([t.name for t in sub.topics] or digest_topics),
            "digest_topics_phrase": join_names(digest_topics),
            "sender_name": self.settings.sender_name,
            "postal_address": self.settings.postal_address,
            "source_name": SOURCE_NAME,
            "unsubscribe_url": links.unsubscribe if links else mailto,
            "archive_url": links.archive if links else None,
            "day_url": links.day if links else None,
            "votes": links.votes if links else {},
        }

    def render(self, selection: Selection, *, now: dt.datetime) -> RenderedEmail:
        """The finished message for one subscriber; `now` is only used for the Date header."""
        return self.render_wire(selection, now=now)[0]

    def render_wire(
        self, selection: Selection, *, now: dt.datetime, wire_only: bool = False
    ) -> tuple[RenderedEmail, bytes | None]:
        """`render`, and the message as SMTP DATA carries it (deliver.wire_form of its raw),
        built from the same cached lines; None when not built here (a DKIM-signed message,
        or headers wire_form refuses): the caller then calls wire_form itself. With
        `wire_only` (a send), raw is b"" whenever the wire form is there (deliver.raw_form of
        it), and html and text are "" (nor are they joined)."""
        papers = [sp for sp in selection.papers if sp.sent]
        sub = selection.subscriber
        if not papers:
            raise ValueError(
                f"{sub.email}: no papers to send for {selection.edition}; skip empty digests"
            )
        to = format_address(sub.name, sub.email)  # ValueError on a bad or injected address
        mailto = unsubscribe_mailto(self._mailto_address)
        links = self.links_for(selection, now)
        https = links.unsubscribe if links else None
        # Long digests get shorter excerpts: easier to scan, and well under Gmail's clip limit.
        budget = EXCERPT_CHARS if len(papers) <= 10 else max(220, EXCERPT_CHARS * 10 // len(papers))
        while True:
            ctx = self._context(selection, papers, budget, mailto, links)
            chunks = self._html_chunks(ctx)
            # the HTML part encoded piece by piece (the template's text and the cached paper
            # blocks are the same objects in every digest), never joined for a send
            body = encode_chunks(chunks)
            size = body.size if body is not None else len("".join(chunks).encode("utf-8"))
            if size <= HTML_BUDGET or budget == 0:
                break
            budget = budget * 2 // 3 if budget > 90 else 0  # shorter excerpts, then none
        with_raw = self._dkim or not wire_only  # DKIM signs the message itself
        html = "".join(chunks) if with_raw or body is None else ""
        text = wrap_text(self._text.render(ctx))
        subject = clean_header_text(self._subject.render(ctx))
        mid = message_id(selection.edition, sub.email, self.settings.sender_domain)
        headers = self._headers(to, subject, mid, now, https, mailto)
        raw, wire = assemble_wire(headers, text, html, _boundary(mid), raw=with_raw, html_body=body)
        if self._dkim:
            raw, wire = sign_dkim(raw, self.settings), None
        email = RenderedEmail(
            to=check_address(sub.email),
            subject=subject,
            message_id=mid,
            html=html,
            text=text if with_raw else "",
            raw=raw,
            paper_ids=tuple(p.id for p in ctx["papers"]),
        )
        return email, wire

    def _html_chunks(self, ctx: dict[str, Any]) -> list[str]:
        """The HTML template's output as the pieces it yields (`render` joins them)."""
        tpl = self._html
        try:
            return list(tpl.root_render_func(tpl.new_context(ctx)))
        except Exception:
            tpl.environment.handle_exception()  # raises, as render() does

    def _headers(
        self, to: str, subject: str, mid: str, now: dt.datetime, https: str | None, mailto: str
    ) -> list[tuple[str, str]]:
        unsub = f"<{https}>,\r\n <{mailto}>" if https else f"<{mailto}>"
        headers = [
            ("From", self._from),
            ("To", to),
            ("Subject", encode_unstructured(subject, "Subject")),
            ("Date", format_date(now)),
            ("Message-ID", mid),
            ("MIME-Version", "1.0"),
        ]
        if self.settings.reply_to:
            headers.append(("Reply-To", check_address(self.settings.reply_to)))
        headers += [("List-Id", self._list_id), ("List-Unsubscribe", unsub)]
        if https and self._one_click:  # RFC 8058: https only
            headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
        headers.append(("Precedence", "bulk"))  # tells vacation responders to stay quiet
        return headers


def _boundary(mid: str) -> str:
    return "=_alt_" + hashlib.blake2s(mid.encode(), digest_size=12).hexdigest()


# --- sample data for the start-up test render --------------------------------------------
def sample_selections() -> list[Selection]:
    """Two digests that exercise every template branch: grouped/ungrouped, ranks, links."""
    offline = Topic("Offline RL", ("offline RL",))
    rlhf = Topic("RLHF & <preferences>", ("RLHF",))
    p1 = Paper(
        id="sample-1",
        title="Conservative <Q> & Learning: Zoë’s $O(\\sqrt{T})$ bound",
        abstract="We study offline RL with a regret of $O(\\sqrt{T})$. It works — mostly. "
        "Code is at https://github.com/example/conservative-q-learning-with-a-long-name.",
        links=("https://github.com/example/conservative-q-learning-with-a-long-name",),
        arxiv_id="2403.03950",
        authors=("Zoë Reader", "Jean-Paul van der Berg", "Ada Lovelace"),
    )
    p2 = Paper(id="sample-2", title="Preference Optimisation", abstract="RLHF, revisited.")
    m1 = TopicMatch("Offline RL", ("offline RL",), highlights=("offline RL",), score=2.0)
    m2 = TopicMatch(rlhf.name, ("RLHF",), highlights=("RLHF",), score=1.0)
    sub = Subscriber("reader@example.org", name="Zoë Reader", topics=(offline, rlhf))
    edition = dt.date(2026, 3, 17)
    return [
        Selection(sub, edition, (SelectedPaper(p1, 2.0, rank=3, matches=(m1, m2)),)),
        Selection(
            Subscriber("anon@example.org"),
            edition,
            (
                SelectedPaper(p1, 2.0, rank=1, matches=(m1,)),
                SelectedPaper(p2, 1.0, rank=0, matches=(m2,)),
                SelectedPaper(p2, 0.5, rank=7),
            ),
        ),
    ]


# --- previews ----------------------------------------------------------------------------
class PreviewEntry(NamedTuple):
    subscriber: str  # the address (or a label) shown in the index
    href: str  # the preview file, relative to the index
    papers: int
    subject: str = ""


def write_preview(email: RenderedEmail, out_dir: Path | str) -> PreviewEntry:
    """Write `<name>.html`, `.txt` and `.eml` for one rendered email; return its index entry."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", email.to)[:60]
    slug += "-" + hashlib.blake2s(email.to.encode(), digest_size=3).hexdigest()
    (out / f"{slug}.html").write_text(email.html, encoding="utf-8")
    (out / f"{slug}.txt").write_text(email.text, encoding="utf-8")
    (out / f"{slug}.eml").write_bytes(email.raw)
    return PreviewEntry(email.to, f"{slug}.html", len(email.paper_ids), email.subject)


def write_preview_index(
    entries: Iterable[PreviewEntry | Sequence[Any]], out_dir: Path | str
) -> Path:
    """`index.html` linking each subscriber's preview with its paper count (all escaped)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for entry in entries:
        e = entry if isinstance(entry, PreviewEntry) else PreviewEntry(*entry)
        href = quote(str(e.href), safe="/._-~%")
        rows.append(
            f'<tr><td><a href="{htmllib.escape(href)}">{htmllib.escape(e.subscriber)}</a></td>'
            f"<td>{int(e.papers)}</td><td>{htmllib.escape(e.subject)}</td></tr>"
        )
    body = "\n".join(rows) or '<tr><td colspan="3">No previews.</td></tr>'
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Digest previews</title><style>body{font:15px/1.5 system-ui,sans-serif;"
        "margin:2rem;max-width:60rem}td,th{padding:.3rem .8rem;text-align:left;"
        "border-bottom:1px solid #ddd}</style></head><body><h1>Digest previews</h1>\n"
        "<table><thead><tr><th>Subscriber</th><th>Papers</th><th>Subject</th></tr></thead>"
        f"<tbody>\n{body}\n</tbody></table></body></html>\n"
    )
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
