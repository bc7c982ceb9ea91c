"""Topics compiled against an index: keyword groups, description terms, the query keys."""

from __future__ import annotations

import dataclasses
import math
import operator
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from newsletter.models import Topic
from newsletter.selection.tuning import _PIECE_BREAK
from newsletter.textindex import STOPWORDS, PaperIndex, word_spans

# A query's scores depend on its keyword groups' first terms and its description terms only
# (not on the topic's name or on a group's other spellings): topics alike share them.
_Key = tuple[tuple[str, ...], tuple[str, ...]]


# _Query's fields but its topic
_Compiled = tuple[tuple[tuple[str, ...], ...], tuple[str, ...], _Key, int, int, int, int, int]


# Not frozen: a frozen dataclass's __init__ pays a call per field, and an edition makes one
# per distinct topic (never changed once made).
@dataclass(slots=True, eq=False)
class _Query:
    """A topic compiled to index terms."""

    topic: Topic
    keywords: tuple[tuple[str, ...], ...]  # the user's terms as typed, synonyms grouped
    weak: tuple[str, ...]  # description terms and the words of multi-word keywords
    key: _Key  # what its scores depend on: each keyword group's first term, `weak`
    # What its explanations depend on too (the topic's name, `keywords`, `weak`), numbered per
    # scorer: topics that differ only in wording outside their terms share what they send.
    shown: int
    described: int  # the evidence id of its description, whose terms most of `weak` are
    # Numbers (per scorer) of `key`, its keyword part and `weak`: a nested tuple hashes anew
    # at every look-up, an int does not.
    key_id: int
    firsts_id: int
    weak_id: int


@dataclass(slots=True)
class _Labels:
    """Numbers for what a `shown`'s explanations depend on, a list entry per `shown`: the
    topic's name, its description terms (`_Query.weak_id`), where its keyword groups'
    numbers start in `groups` (the number of each group's terms). A scorer numbers names and
    terms alike in `_Scorer._ids`: equal numbers, equal values."""

    names: list[int] = dataclasses.field(default_factory=list)
    weak: list[int] = dataclasses.field(default_factory=list)
    groups_at: list[int] = dataclasses.field(default_factory=list)
    groups: list[int] = dataclasses.field(default_factory=list)


@dataclass(slots=True, eq=False)  # not frozen, as `_Query`
class _KeywordPart:
    """What a topic's keyword list gives its query (see `_Scorer._compile_terms`)."""

    grouped: tuple[tuple[str, ...], ...]  # `_Query.keywords`
    grouped_id: int
    firsts: tuple[str, ...]  # each group's first term: what the scores depend on
    firsts_id: int
    variants: frozenset[int]  # the groups' variant ids
    group_ids: tuple[int, ...]  # a number for each group's terms (see `_Labels`)
    # (variant id, first term) of the keywords' evidence, but for the groups' own variants
    terms: tuple[tuple[int, str], ...]
    evidence_id: int  # a number for `variants` and `terms`: what a query's `weak` needs


@dataclass(frozen=True, slots=True)
class _Keyword:
    """One keyword as `_Topics._new_keyword_part` combines it with the others of its list."""

    stripped: str
    variants: int | None  # its variant id
    terms: tuple[tuple[int, str], ...]  # (variant id, first term) of its evidence
    group: tuple[str, ...]  # its group when alone in it, and that group's number (see `_Labels`)
    group_id: int


def _content_terms(text: str) -> tuple[str, ...]:
    """Content words of free text, a hyphenated compound ("self-play") as one term, and each
    pair of adjacent content terms ("count bonuses"), which is evidence beyond its words."""
    units: list[list[int]] = []  # [start, end, words] of each word or hyphenated compound
    for start, end, glued in word_spans(text):
        if glued and units:
            units[-1][1:] = end, units[-1][2] + 1
        else:
            units.append([start, end, 1])
    terms: list[str] = []
    prev: list[int] | None = None
    for unit in units:
        term = text[unit[0] : unit[1]]
        content = unit[2] > 1 or (
            len(term) > 1 and term.isalpha() and term.lower() not in STOPWORDS
        )
        if content:
            terms.append(term)
            if prev and not text[prev[1] : unit[0]].strip():
                terms.append(text[prev[0] : unit[1]])
        prev = unit if content else None
    return tuple(terms)


def _first_seen(
    values: npt.NDArray[np.intp],
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """(where each distinct value (or row) of `values` is first, in that order; the number of
    each value in that order): what a loop numbering them with a dict finds, in C."""
    axis = 0 if values.ndim > 1 else None
    _, first, inverse = np.unique(values, return_index=True, return_inverse=True, axis=axis)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), dtype=np.intp)
    rank[order] = np.arange(len(order))
    return first[order], rank[inverse.reshape(-1)]


_NAME_KEYWORDS_TEXT = tuple(map(operator.attrgetter, ("name", "keywords", "description")))


_MAX_GROUPS = 62  # keyword groups a topic's bits in `_Table.bits` can tell apart


class _Topics:
    """Topics compiled to index terms (what does not depend on which papers are scored), and
    numbers for what their scores and explanations depend on."""

    def __init__(self, index: PaperIndex) -> None:
        self.index = index
        self._variant_ids: dict[str, int | None] = {}
        # Texts compiled per piece: piece -> evidence id, a text -> the ids of its pieces.
        self._piece_ids: dict[str, int] = {}
        self._ids_of_evidence: dict[tuple[tuple[int, str], ...], int] = {(): 0}
        self._piece_evidence: list[tuple[tuple[int, str], ...]] = [()]
        self._text_ids: dict[str, int] = {}
        self._tails: dict[str, tuple[int, ...]] = {}  # see `_evidence_id`
        self._ids_of_pieces: dict[tuple[int, ...], int] = {}
        self._pieces_of: list[tuple[int, ...]] = []
        self._firsts: dict[int, dict[int, str]] = {}
        # Each keyword list's number, the part of each number.
        self._part_of: dict[tuple[str, ...], int] = {}
        self._parts: list[_KeywordPart] = []
        # (_KeywordPart.evidence_id, description evidence id) -> (`weak`, its number)
        self._weak: dict[tuple[int, int], tuple[tuple[str, ...], int]] = {}
        # By (the name's number in `ids`, the keyword list's, the description's evidence id)
        self._compiled: dict[tuple[int, int, int], _Compiled] = {}
        self.ids: dict[object, int] = {}  # see _Query.key_id and _Labels
        self._keywords: dict[str, _Keyword] = {}
        self.query_of_shown: list[_Query] = []
        # The `shown` of queries with more keyword groups than `_Table.bits` tells apart.
        self.wide: set[int] = set()
        self.labels = _Labels()
        self._ids_of_variants: dict[tuple[tuple[str, ...], ...], int] = {}
        self._queries: dict[Topic, _Query] = {}
        self._shown: dict[tuple[int, int, int], int] = {}  # (name's id, grouped_id, weak_id)

    def size(self) -> int:
        """How many topics and texts it keeps, as far as they grow without bound."""
        return len(self._compiled) + len(self._queries) + len(self._text_ids) + len(self._tails)

    def compile(self, topic: Topic) -> _Query:
        cached = self._queries.get(topic)
        if cached is None:
            cached = self._queries[topic] = _Query(topic, *self._compile(topic))
        return cached

    def shown_numbers(self, topics: Sequence[Topic]) -> npt.NDArray[np.intp]:
        """The `shown` number (see `_Query`) of each topic, with `query_of_shown` holding a
        query for each (an edition needs no `_Query` per topic). Each topic's name, keyword
        list and description are numbered by dicts built and read in C (a Python loop over
        every topic costs a microsecond each, and a topic, a frozen dataclass, hashes in
        Python), the description by its evidence; each distinct triple of numbers is compiled
        once, with its first topic."""
        n = len(topics)
        ids, texts, part_of = self.ids, self._text_ids, self._part_of
        names, keywords, descriptions = (list(map(f, topics)) for f in _NAME_KEYWORDS_TEXT)
        for name in dict.fromkeys(names):
            ids.setdefault(name, len(ids))
        for keys in dict.fromkeys(keywords):
            if keys not in part_of:
                self._part_number(keys)
        self._evidence_ids([t for t in dict.fromkeys(descriptions) if t not in texts])
        named = np.fromiter(map(ids.__getitem__, names), np.intp, n)
        parts = np.fromiter(map(part_of.__getitem__, keywords), np.intp, n)
        described = np.fromiter(map(texts.__getitem__, descriptions), np.intp, n)
        sizes = (len(ids), len(self._parts), len(self._pieces_of))
        if math.prod(sizes) < 1 << 62:
            first, inverse = _first_seen((named * sizes[1] + parts) * sizes[2] + described)
        else:  # numbers too large to combine in an int64
            first, inverse = _first_seen(np.stack([named, parts, described], axis=1))
        compiled, compile_terms, all_parts = self._compiled, self._compile_terms, self._parts
        shown: list[int] = []
        for at, name_id, part, description in zip(
            first.tolist(),
            named[first].tolist(),
            parts[first].tolist(),
            described[first].tolist(),
            strict=True,
        ):
            terms = compiled.get((name_id, part, description))
            if terms is None:
                terms = compiled[name_id, part, description] = compile_terms(
                    topics[at], name_id, all_parts[part], description
                )
            shown.append(terms[3])
        found: npt.NDArray[np.intp] = np.array(shown, dtype=np.intp)[inverse]
        return found

    def _compile(self, topic: Topic) -> _Compiled:
        # A query depends on the description only through its evidence, which rewordings
        # (another closing remark, a number) often leave as it was.
        description = self._text_ids.get(topic.description)
        if description is None:
            description = self._evidence_id(topic.description)
        name_id = self.ids.setdefault(topic.name, len(self.ids))
        part = self._part_of.get(topic.keywords)
        if part is None:
            part = self._part_number(topic.keywords)
        found = self._compiled.get((name_id, part, description))
        if found is None:
            found = self._compiled[name_id, part, description] = self._compile_terms(
                topic, name_id, self._parts[part], description
            )
        return found

    def _part_number(self, keywords: tuple[str, ...]) -> int:
        """The number of a keyword list's `_KeywordPart` in `_parts`."""
        found = self._part_of.get(keywords)
        if found is None:
            found = self._part_of[keywords] = len(self._parts)
            self._parts.append(self._new_keyword_part(keywords))
        return found

    def _compile_terms(
        self, topic: Topic, name_id: int, part: _KeywordPart, description: int
    ) -> _Compiled:
        """A topic's keyword groups, description terms, key and `shown` (its name's number
        in `ids`, its keyword list's part, its description's evidence id); a new `shown` gets
        its query in `query_of_shown`, with `topic` (its first topic shows it)."""
        ids = self.ids  # one numbering: a pair of numbers equals no tuple of terms
        weak = self._weak.get((part.evidence_id, description))
        if weak is None:
            # Each variant's first term, in order (the description's, then the keywords'),
            # but for the keyword groups' own.
            described, groups = self.first_terms_of(description), part.variants
            terms = tuple(
                [t for v, t in described.items() if v not in groups]
                + [t for v, t in part.terms if v not in described]
            )
            weak = self._weak[part.evidence_id, description] = (
                terms,
                ids.setdefault(terms, len(ids)),
            )
        terms, weak_id = weak
        key_id = ids.setdefault((part.firsts_id, weak_id), len(ids))
        shown = self._shown.setdefault((name_id, part.grouped_id, weak_id), len(self._shown))
        found = (
            part.grouped,
            terms,
            (part.firsts, terms),
            shown,
            description,
            key_id,
            part.firsts_id,
            weak_id,
        )
        labels = self.labels
        if shown == len(labels.names):  # a new one
            labels.names.append(name_id)
            labels.weak.append(weak_id)
            labels.groups_at.append(len(labels.groups))
            labels.groups += part.group_ids
            self.query_of_shown.append(_Query(topic, *found))
            if len(part.grouped) > _MAX_GROUPS:
                self.wide.add(shown)
        return found

    def _new_keyword_part(self, keywords: tuple[str, ...]) -> _KeywordPart:
        # "offline RL" and "offline reinforcement learning" are one term once the index
        # knows the acronym: counting both would score every offline-RL paper twice.
        # Terms are told apart by the number of their variants (see `_variant_id`).
        ids = self.ids
        known = self._keywords.get
        found = [known(k) or self._keyword(k) for k in keywords]
        variants = [k.variants for k in found if k.variants is not None]
        firsts: dict[int, str] = {}
        for k in found:
            for v, term in k.terms:
                firsts.setdefault(v, term)
        if len(variants) == len(found) and len(set(variants)) == len(variants):
            # The common case: each keyword a group of its own, numbered once per keyword.
            grouped = tuple([k.group for k in found])
            first = tuple([k.stripped for k in found])
            group_ids = tuple([k.group_id for k in found])
            grouped_variants = frozenset(variants)
            single = True
        else:
            groups: dict[int, list[str]] = {}
            for k in found:
                if k.variants is not None:
                    group = groups.get(k.variants)
                    if group is None:
                        groups[k.variants] = [k.stripped]
                    elif k.stripped not in group:
                        group.append(k.stripped)
            grouped = tuple([tuple(g) for g in groups.values()])
            first = tuple([g[0] for g in grouped])
            group_ids = tuple([ids.setdefault(g, len(ids)) for g in grouped])
            grouped_variants = frozenset(groups)
            single = all(len(g) == 1 for g in grouped)
        terms = tuple([(v, t) for v, t in firsts.items() if v not in grouped_variants])
        firsts_id = ids.setdefault(first, len(ids))
        return _KeywordPart(
            grouped,
            # A list of one-keyword groups is told by its first terms alone.
            firsts_id if single else ids.setdefault(("groups", grouped), len(ids)),
            first,
            firsts_id,
            grouped_variants,
            group_ids,
            terms,
            ids.setdefault(("evidence", grouped_variants, terms), len(ids)),
        )

    def _keyword(self, keyword: str) -> _Keyword:
        """What one keyword gives its list (see `_Keyword`)."""
        found = self._keywords.get(keyword)
        if found is None:
            stripped = keyword.strip()
            terms = tuple(self._first_terms(keyword).items())
            group = (stripped,)
            found = self._keywords[keyword] = _Keyword(
                stripped,
                self._variant_id(stripped),
                terms,
                group,
                self.ids.setdefault(group, len(self.ids)),
            )
        return found

    def _first_terms(self, text: str) -> dict[int, str]:
        """Variant id -> first term of the evidence of `text`, in order (not to be changed)."""
        return self.first_terms_of(self._evidence_id(text))

    def first_terms_of(self, text_id: int) -> dict[int, str]:
        """`_first_terms` of the texts with this evidence id."""
        found = self._firsts.get(text_id)
        if found is None:
            found = self._firsts[text_id] = {}
            for piece in self._pieces_of[text_id]:
                for variants, term in self._piece_evidence[piece]:
                    found.setdefault(variants, term)
        return found

    def _evidence_id(self, text: str) -> int:
        """A number for the evidence of `text`: the same for texts whose pieces (split at
        `_PIECE_BREAK`) with any evidence have the same evidence, in order."""
        found = self._text_ids.get(text)
        if found is None:
            self._evidence_ids((text,))
            found = self._text_ids[text]
        return found

    def _evidence_ids(self, texts: Iterable[str]) -> None:
        """Numbers each of `texts` by its evidence (see `_evidence_id`), in one loop (an
        edition has tens of thousands)."""
        text_ids, tails, pieces_of = self._text_ids, self._tails, self._pieces_of
        pieces, pieces_id = self._pieces, self._pieces_id
        for text in texts:
            if text in text_ids:  # a head of an earlier one
                continue
            # Split after its last full stop, a text's pieces are its head's then its tail's:
            # a description reworded in its last sentence reuses its head's, kept as a text
            # of its own (one level only, so a text is kept at most twice).
            head, stop, tail = text.rpartition(". ")
            if not stop:
                text_ids[text] = pieces_id(pieces(text))
                continue
            head += "."
            known = text_ids.get(head)
            if known is None:
                known = text_ids[head] = pieces_id(pieces(head))
            # Tails repeat too ("(1234)" after many a head): their pieces are kept.
            more = tails.get(tail)
            if more is None:
                more = tails[tail] = pieces(" " + tail)
            text_ids[text] = pieces_id(pieces_of[known] + more) if more else known

    def _pieces_id(self, pieces: tuple[int, ...]) -> int:
        """The evidence id of a text with these `_pieces`."""
        ids = self._ids_of_pieces
        found = ids.get(pieces)
        if found is None:
            found = ids[pieces] = len(self._pieces_of)
            self._pieces_of.append(pieces)
        return found

    def _pieces(self, text: str) -> tuple[int, ...]:
        """The evidence ids of the pieces of `text` (split at `_PIECE_BREAK`) with any."""
        parts = _PIECE_BREAK.split(text)
        known = list(map(self._piece_ids.get, parts))
        if None in known:
            known = list(map(self._piece_id, parts))
        return tuple(filter(None, known))

    def _piece_id(self, piece: str) -> int:
        """A number for the evidence of a text without `_PIECE_BREAK` (0: none)."""
        found = self._piece_ids.get(piece)
        if found is None:
            if piece.isdigit():  # "(1234)": no word of it is content, and numbers are many
                return 0
            terms = ((self._variant_id(t), t) for t in _content_terms(piece))
            evidence = tuple((v, t) for v, t in terms if v is not None and self.index.lookup(t).tf)
            found = self._ids_of_evidence.get(evidence)
            if found is None:
                found = self._ids_of_evidence[evidence] = len(self._piece_evidence)
                self._piece_evidence.append(evidence)
            self._piece_ids[piece] = found
        return found

    def _variant_id(self, term: str) -> int | None:
        """A number for the term's variants (None when it has none), equal for terms with equal
        variants: a nested tuple of strings hashes anew at every dict look-up, an int does not."""
        found = self._variant_ids.get(term, -1)
        if found == -1:
            variants = self.index.variants(term)
            ids = self._ids_of_variants
            found = ids.setdefault(variants, len(ids)) if variants else None
            self._variant_ids[term] = found
        return found


# Each index's compiled topics (they depend on the stored papers alone), kept for as long as
# the index, as `_REFERENCES` is: the daemon selects every group of subscribers and every
# edition of a day over one index, mostly with the same topics. Dropped after an edition that
# leaves them past MAX_COMPILED topics (see `_release`), so a long-lived index with ever new
# topics stays bounded.
_TOPICS: weakref.WeakKeyDictionary[PaperIndex, _Topics] = weakref.WeakKeyDictionary()


MAX_COMPILED = 50_000  # ~40 MiB traced at the cap, 106 MiB after 100k distinct topics (#13)


def _topics_of(index: PaperIndex) -> _Topics:
    """The index's kept `_Topics` (see `_TOPICS`)."""
    topics = _TOPICS.get(index)
    if topics is None or topics.size() > MAX_COMPILED:
        topics = _TOPICS[index] = _Topics(index)
    return topics


def _release(index: PaperIndex) -> None:
    """Drops the index's kept `_Topics` when an edition left them past MAX_COMPILED: the next
    edition would start afresh anyway, and until then they would hold their memory (~106 MiB
    after an edition of 100,000 subscribers with distinct topics)."""
    topics = _TOPICS.get(index)
    if topics is not None and topics.size() > MAX_COMPILED:
        del _TOPICS[index]
