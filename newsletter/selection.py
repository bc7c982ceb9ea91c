"""Choose each subscriber's papers for one edition, each with the reason it was chosen.

A paper's score for one topic (term matching and BM25F live in `textindex`):
- keywords: each of the user's terms is matched as a phrase and weighted by BM25F's saturated
  term frequency (title boosted, length-normalised against the collection), times its
  specificity: 1 for a term in at most GENERIC_SHARE of the stored papers, less (its idf
  relative to that share's) for one that matches everything ("reinforcement learning",
  "planning"), so a passing mention of a generic keyword is weak evidence. The matching
  keywords' weights are sorted and summed with a geometric decay, so a second keyword adds half
  of what the first did and no topic scores more than twice its best keyword: the score does
  not grow with the length of the list;
- description: its content words, hyphenated compounds and adjacent pairs ("count bonuses"),
  plus the words inside multi-word keywords, as a BM25 bag of words with an idf that is small
  but never 0 for common words (the reader's own subject still counts), normalised to the share
  of the best score a paper could reach on them, times `Tuning.description_weight`;
- exclude terms are a hard filter.
A subscriber's score for a paper is their best topic's.

The send decision is calibrated per topic: a topic's threshold is the global one, lowered for
a topic whose own best papers over the whole stored collection score low (a narrow topic, or
two short keywords and no description), to `relative` times its REF_RANK-th best score, but
never below the absolute `floor`. So one global setting is fair to a narrow and a broad
topic, and a topic that matches nothing well still sends nothing. A reader's votes (see
`learning`) then weight their keywords and move their scores and threshold. The sent papers are ordered by the mixed
score: relevance with a bonus for the day's trending rank.

When nothing is sent, the Selection carries the closest near misses; a subscriber with
`on_empty: closest` gets them, labelled as such.

Scale: each distinct term is matched once per index (`PaperIndex.lookup` is memoised); a
topic is compiled once per distinct name, keyword list and description evidence (a reworded
description often keeps its evidence: it is compiled per punctuation piece; compiled topics
are kept with the index for the next edition, see `_TOPICS`), and scored once per distinct
key (keyword list and description terms; a description's part is its evidence's integer lane
plus or minus a few terms), over the whole collection only when a paper falls between the
floor and the global threshold (and then only the papers outside the listing). An edition
then selects its subscribers without votes together (`_Edition.picks`), as matrices of
subscriber x topic x listed paper: the send decision, exclusions, history, the order by mixed
score and `max_papers`; explanations and SelectedPapers are built once per distinct value and
shared. Readers with votes are judged one by one (`_judge`), as are all subscribers with
`_select_for(..., vectorised=False)`, the plain path the tests hold the vectorised one to.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import gc
import heapq
import itertools
import math
import re
import weakref
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from newsletter.addresses import address_key
from newsletter.learning import NO_READER, Lift, Reader, Votes, Weights, keyword_weights, learn
from newsletter.models import (
    DailyListing,
    Paper,
    SelectedPaper,
    Selection,
    Subscriber,
    Topic,
    TopicMatch,
)
from newsletter.textindex import K1, STOPWORDS, PaperIndex, Postings, soft_idf, word_spans

__all__ = [
    "CLOSEST",
    "DEFAULT_TUNING",
    "PaperIndex",
    "Tuning",
    "calibrated_threshold",
    "rank_all",
    "rank_all_weighted",
    "score_papers",
    "select_for",
    "topic_reference",
]

KEYWORD_DECAY = 0.5
TERM_CAP = 0.5  # a description term counts at most half as much as the same word as a keyword
TREND_BONUS = 0.5  # trending rank 1 multiplies the score by 1.5, rank 3 by 1.25 (DCG discount)
GENERIC_SHARE = 0.05  # a keyword in at most this share of the papers has full weight
MIN_COLLECTION = 50  # with fewer stored papers, document frequency says nothing: no discount
REF_RANK = 3  # a topic's own scale: the score of its 3rd best paper over the whole collection
BATCH_CELLS = 1 << 21  # term lanes (x papers) gathered at once when scoring many topics
WHOLE_PASS = 4  # an edition scores all stored papers at once while they are at most 4x listed
CLOSEST = 3  # near misses shown (or sent, with on_empty: closest) when nothing matched
_FIXED = float(1 << 24)  # fixed-point scale of the packed description weights
# Punctuation that never falls inside a content term nor between a pair's words, so a text's
# content terms are its pieces' (split at it) in order: reworded descriptions share pieces.
_PIECE_BREAK = re.compile(r'[.,;:!?()\[\]{}"]')


@dataclass(frozen=True, slots=True)
class Tuning:
    """The matcher's tuned constants besides the global threshold (from `Settings`; chosen
    leave-one-profile-out by scripts/eval.py)."""

    relative: float = 0.6  # share of the topic's REF_RANK-th best score that is sent ...
    floor: float = 1.4  # ... if it reaches this absolute score too
    # A paper scoring on every description term as high as BM25 allows would add this.
    description_weight: float = 8.0
    vote_weight: float = 16.0  # score change per unit of likeness to the reader's liked papers
    vote_send_weight: float = 8.0  # ... and the change of its margin over the send threshold
    vote_contrast: float = 0.5  # share of the collection's centroid off the liked and disliked ones
    vote_prior: float = 1.0  # up-votes a reader's own keyword counts for against down-votes
    vote_half: float = 4.0  # votes at which the likeness weights act at half strength
    vote_send_contrast: float = 0.5  # vote_contrast of the likeness that moves the send decision
    vote_sink_weight: float = 16.0  # vote_send_weight of papers less like the liked than most

    def vote_weights(self) -> Weights:
        return Weights(
            self.vote_weight,
            self.vote_send_weight,
            self.vote_contrast,
            self.vote_prior,
            self.vote_half,
            self.vote_send_contrast,
            self.vote_sink_weight,
        )


DEFAULT_TUNING = Tuning()

Scored = dict[int, tuple[float, tuple[TopicMatch, ...]]]
_Vector = npt.NDArray[np.float64]  # one lane per slot (a row per term or keyword group)


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
    """One keyword as `_Topics._keyword_part` combines it with the others of its list."""

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


@dataclass(frozen=True, slots=True)
class _Scores:
    """One topic over a scorer's papers: the score of each paper scoring above 0, and the
    weight of each keyword group in each paper (a column per slot)."""

    query: _Query
    total: dict[int, float]
    groups: _Vector  # (keyword group, slot): the group's weight, 0 where it did not match
    slot_of: Mapping[int, int]

    def score(self, i: int) -> float:
        return self.total.get(i, 0.0)

    def papers(self) -> AbstractSet[int]:
        return self.total.keys()

    def matched(self, i: int) -> tuple[int, ...]:
        return _matched(self.groups, self.slot_of[i])


def _matched(groups: _Vector, slot: int) -> tuple[int, ...]:
    """The keyword groups (in the query's order) that matched the paper in `slot`."""
    return tuple(np.flatnonzero(groups[:, slot]).tolist())


_Passing = tuple[tuple[int, float, tuple[int, ...]], ...]  # (paper, score, keyword groups)

# Each topic's reference score per index, kept for as long as the index (pipeline.paper_index
# keeps one per set of stored papers): many subscribers share topics, and every edition of a
# day and every group of subscribers the daemon sends scores the same stored papers.
_REFERENCES: weakref.WeakKeyDictionary[PaperIndex, dict[tuple[float, _Key], float]] = (
    weakref.WeakKeyDictionary()
)


_D = TypeVar("_D", bound=np.generic)
_K = TypeVar("_K", bound=Hashable)
_T = TypeVar("_T")


class _Lanes(Generic[_K, _D]):
    """Each term's weights over a scorer's slots, as the rows of one matrix (a row is filled
    by `fill` the first time its term is used; row 0 stays all zeros), so a topic's terms are
    gathered in one step."""

    def __init__(
        self, width: int, dtype: type[_D], fill: Callable[[_K, npt.NDArray[_D]], None]
    ) -> None:
        self.matrix: npt.NDArray[_D] = np.zeros((16, width), dtype=dtype)
        self._fill = fill
        self.row_of: dict[_K, int] = {}  # what `row` has filled (read-only outside)

    def row(self, term: _K) -> int:
        found = self.row_of.get(term)
        if found is None:
            found = self.row_of[term] = len(self.row_of) + 1
            if found == len(self.matrix):  # full: double the capacity
                self.matrix = np.concatenate([self.matrix, np.zeros_like(self.matrix)])
            self._fill(term, self.matrix[found])
        return found


_MAX_GROUPS = 62  # keyword groups a topic's bits in `_Table.bits` can tell apart


class _Table:
    """Scores of distinct query keys over a scorer's slots at one threshold, a row per key
    (row 0 scores nothing), the slots in the order of `columns`: what the edition's
    vectorised selection gathers from."""

    def __init__(self, columns: npt.NDArray[np.intp]) -> None:
        self.columns = columns  # the slot in each column
        self.column_of_slot = np.argsort(columns)
        self.row_of: dict[int, int] = {}  # _Query.key_id -> row
        self.total: _Vector = np.zeros((1, len(columns)))
        self.cuts: _Vector = np.full(1, np.inf)
        self.bits: npt.NDArray[np.int64] = np.zeros((1, len(columns)), dtype=np.int64)

    def reserve(self, rows: int) -> None:
        """Room for `rows` more rows (filled in chunks by `add`, without copying the table
        once per chunk)."""
        used = len(self.row_of) + 1
        if used + rows > len(self.total):
            # Left unset: `add` writes every reserved row before any is read.
            total = np.empty((used + rows, self.total.shape[1]))
            cuts = np.empty(used + rows)
            bits = np.empty((used + rows, self.bits.shape[1]), dtype=np.int64)
            total[:used], cuts[:used] = self.total[:used], self.cuts[:used]
            bits[:used] = self.bits[:used]
            self.total, self.cuts, self.bits = total, cuts, bits

    def add(
        self,
        keys: Sequence[int],
        total: _Vector,
        cuts: _Vector,
        alike: npt.NDArray[np.intp],
        hits: npt.NDArray[np.bool_],
        which: npt.NDArray[np.intp],
        slots: npt.NDArray[np.intp],
    ) -> None:
        """Rows for `keys` (reserved): their scores and send thresholds (`total[alike]`,
        `slots` giving the lane of each column, and `cuts[alike]`) and matched keyword
        groups (bit k for group k, up to _MAX_GROUPS groups) from `hits[which]`, shape
        (key, group, column)."""
        start = len(self.row_of) + 1
        for key in keys:
            self.row_of[key] = len(self.row_of) + 1
        end = len(self.row_of) + 1
        depth = min(hits.shape[1], _MAX_GROUPS)
        weights = np.left_shift(np.int64(1), np.arange(depth, dtype=np.int64))
        hit = hits[:, :depth].astype(np.int64)
        self.total[start:end] = total[np.ix_(alike, slots)]
        self.cuts[start:end] = cuts[alike]
        self.bits[start:end] = np.einsum("ngs,g->ns", hit, weights)[which]


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
        self._keyword_parts: dict[tuple[str, ...], _KeywordPart] = {}
        # (_KeywordPart.evidence_id, description evidence id) -> (`weak`, its number)
        self._weak: dict[tuple[int, int], tuple[tuple[str, ...], int]] = {}
        self._compiled: dict[tuple[str, tuple[str, ...], int], _Compiled] = {}
        self.ids: dict[object, int] = {}  # see _Query.key_id and _Labels
        self._keywords: dict[str, _Keyword] = {}
        self.query_of_shown: list[_Query] = []
        # The `shown` of queries with more keyword groups than `_Table.bits` tells apart.
        self.wide: set[int] = set()
        self.labels = _Labels()
        self._ids_of_variants: dict[tuple[tuple[str, ...], ...], int] = {}
        self._queries: dict[Topic, _Query] = {}
        self._shown: dict[tuple[str, int, int], int] = {}  # (name, grouped_id, weak_id)

    def size(self) -> int:
        """How many topics and texts it keeps, as far as they grow without bound."""
        return len(self._compiled) + len(self._queries) + len(self._text_ids) + len(self._tails)

    def compile(self, topic: Topic) -> _Query:
        cached = self._queries.get(topic)
        if cached is None:
            cached = self._queries[topic] = _Query(topic, *self._compile(topic))
        return cached

    def shown_of(self, topic: Topic) -> int:
        """The topic's `shown` number (see `_Query`), with `query_of_shown` holding a query
        for each: the fast path of an edition, which needs no `_Query` per topic."""
        return self._compile(topic)[3]

    def _compile(self, topic: Topic) -> _Compiled:
        # A query depends on the description only through its evidence, which rewordings
        # (another closing remark, a number) often leave as it was.
        description = self._text_ids.get(topic.description)
        if description is None:
            description = self._evidence_id(topic.description)
        found = self._compiled.get((topic.name, topic.keywords, description))
        if found is None:
            key = (topic.name, topic.keywords, description)
            found = self._compiled[key] = self._compile_terms(*key)
            if found[3] == len(self.query_of_shown):  # a new `shown`: its first topic shows it
                self.query_of_shown.append(_Query(topic, *found))
                if len(found[0]) > _MAX_GROUPS:
                    self.wide.add(found[3])
        return found

    def _compile_terms(self, name: str, keywords: tuple[str, ...], description: int) -> _Compiled:
        """A topic's keyword groups, description terms, key and `shown` (the description given
        by its evidence id)."""
        part = self._keyword_part(keywords)
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
        shown = self._shown.setdefault((name, part.grouped_id, weak_id), len(self._shown))
        labels = self.labels
        if shown == len(labels.names):  # a new one
            labels.names.append(ids.setdefault(name, len(ids)))
            labels.weak.append(weak_id)
            labels.groups_at.append(len(labels.groups))
            labels.groups += part.group_ids
        key = part.firsts, terms
        return part.grouped, terms, key, shown, description, key_id, part.firsts_id, weak_id

    def _keyword_part(self, keywords: tuple[str, ...]) -> _KeywordPart:
        """What a topic's keyword list gives its query."""
        found = self._keyword_parts.get(keywords)
        if found is None:
            found = self._keyword_parts[keywords] = self._new_keyword_part(keywords)
        return found

    def _new_keyword_part(self, keywords: tuple[str, ...]) -> _KeywordPart:
        # "offline RL" and "offline reinforcement learning" are one term once the index
        # knows the acronym: counting both would score every offline-RL paper twice.
        # Terms are told apart by the number of their variants (see `_variant_id`).
        ids = self.ids
        found = [self._keyword(k) for k in keywords]
        variants = [k.variants for k in found if k.variants is not None]
        firsts: dict[int, str] = {}
        for k in found:
            for v, term in k.terms:
                if v not in firsts:
                    firsts[v] = term
        if len(variants) == len(found) and len(set(variants)) == len(variants):
            # The common case: each keyword a group of its own, numbered once per keyword.
            grouped = tuple([k.group for k in found])
            first = tuple([k.stripped for k in found])
            group_ids = tuple([k.group_id for k in found])
            grouped_variants = frozenset(variants)
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
        terms = tuple([(v, t) for v, t in firsts.items() if v not in grouped_variants])
        firsts_id = ids.setdefault(first, len(ids))
        # A list of one-keyword groups is told by its first terms alone.
        single = all(len(g) == 1 for g in grouped)
        return _KeywordPart(
            grouped,
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
            # Split after its last full stop, a text's pieces are its head's then its tail's:
            # a description reworded in its last sentence reuses its head's, kept as a text
            # of its own (one level only, so a text is kept at most twice).
            head, stop, tail = text.rpartition(". ")
            if stop:
                head += "."
                known = self._text_ids.get(head)
                if known is None:
                    known = self._text_ids[head] = self._pieces_id(self._pieces(head))
                # Tails repeat too ("(1234)" after many a head): their pieces are kept.
                more = self._tails.get(tail)
                if more is None:
                    more = self._tails[tail] = self._pieces(" " + tail)
                found = self._pieces_id(self._pieces_of[known] + more) if more else known
            else:
                found = self._pieces_id(self._pieces(text))
            self._text_ids[text] = found
        return found

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
# edition of a day over one index, mostly with the same topics. Started afresh past
# MAX_COMPILED topics, so a long-lived index with ever new topics stays bounded.
_TOPICS: weakref.WeakKeyDictionary[PaperIndex, _Topics] = weakref.WeakKeyDictionary()
MAX_COMPILED = 50_000  # ~40 MB: one edition of a large file must not grow send memory


def _topics_of(index: PaperIndex) -> _Topics:
    """The index's kept `_Topics` (see `_TOPICS`)."""
    topics = _TOPICS.get(index)
    if topics is None or topics.size() > MAX_COMPILED:
        topics = _TOPICS[index] = _Topics(index)
    return topics


class _Scorer:
    """Scores topics against the papers `within` (None: all), caching per term and topic.

    Each term's weights are a vector with one lane per paper (slot); a topic's score is worked
    out for every slot at once. Description terms are summed as fixed-point integers, so their
    sum is exact and never depends on the order of the terms; keyword weights are sorted per
    slot and summed with their decay in rank order.
    """

    def __init__(
        self,
        index: PaperIndex,
        within: Collection[int] | None,
        tuning: Tuning = DEFAULT_TUNING,
        topics: _Topics | None = None,
    ) -> None:
        self.index = index
        self.tuning = tuning
        self._full: _Scorer | None = None if within is not None else self
        self._outside: _Scorer | None = None
        self._thresholds: dict[tuple[Topic, float], float] = {}
        self._closest: dict[tuple[int, float], list[tuple[int, float, TopicMatch]]] = {}
        self.within = None if within is None else frozenset(within)
        self.slots = sorted(range(len(index.papers)) if self.within is None else self.within)
        self._slot_of = {i: n for n, i in enumerate(self.slots)}
        self._weights: dict[tuple[str, bool], dict[int, float]] = {}
        # Each description part's row in `_parts` (by _Query.weak_id; row 0, all zeros:
        # none), which many queries share.
        self._part_row: dict[int, int] = {}
        self._parts: _Vector = np.zeros((16, len(self.slots)))
        self._parts_used = 1
        self._keyword_lanes = _Lanes(len(self.slots), np.float64, self._keyword_lane)
        self._weak_lanes = _Lanes(len(self.slots), np.int64, self._weak_lane)
        # Per description (evidence id): the sum of its first terms' lanes, which most
        # queries' description parts differ from by a few terms.
        self._described_lanes = _Lanes(len(self.slots), np.int64, self._described_lane)
        self.topics = topics or _Topics(index)  # shared with `full()`
        self._passing: dict[tuple[_Key, float], _Passing] = {}
        self._tables: dict[float, _Table] = {}
        self._sends: dict[tuple[int, float], list[tuple[int, float, TopicMatch]]] = {}
        # A subscriber's sent papers per (their topics' `shown`, exclude terms, threshold).
        self._ranked: dict[tuple[tuple[int, ...], tuple[str, ...], float], list[SelectedPaper]] = {}
        self._excluded: dict[tuple[str, ...], frozenset[int]] = {}
        self._hits: dict[tuple[str, int], tuple[bool, bool, tuple[tuple[int, str], ...]]] = {}
        self._specific: dict[str, float | None] = {}
        self._most: dict[int, float] = {}  # by _Query.firsts_id
        # Numbers for sets of keywords (see `_keyword_set`): by the sorted terms, and by
        # _Query.firsts_id.
        self._sets: dict[tuple[str, ...], int] = {}
        self._set_of_firsts: dict[int, int] = {}
        self._scales: dict[int, float] = {}  # by _Query.weak_id
        self._first_sets: dict[int, frozenset[str]] = {}
        self._idfs: dict[str, float] = {}
        # The idf of a term in GENERIC_SHARE of the papers: specific enough for full weight
        # (0, meaning "no cap", with too few papers to tell).
        n = len(index.papers)
        self._specific_idf = soft_idf(n, int(GENERIC_SHARE * n)) if n >= MIN_COLLECTION else 0.0
        self._strong: dict[tuple[tuple[str, ...], int], tuple[str, ...]] = {}
        self._found: dict[tuple[tuple[str, ...], int], tuple[tuple[str, ...], ...]] = {}

    def compile(self, topic: Topic) -> _Query:
        return self.topics.compile(topic)

    def weights(self, term: str, keyword: bool) -> dict[int, float]:
        """Weight of `term` per paper: BM25F's saturated tf, times the keyword's specificity or
        the description term's idf. The user chose a keyword, so its rarity says little about
        how much they want it (and a rare keyword keeps a scale independent of the collection's
        size), but one that matches everything is weak evidence; description words are free
        text, where idf tells "bonuses" from "problems"."""
        cached = self._weights.get((term, keyword))
        if cached is None:
            postings = self.index.lookup(term)
            idf = self._specificity(postings) if keyword else postings.soft_idf
            tf = postings.tf
            if self.within is None:
                cached = {i: idf * t for i, t in tf.items()}
            elif len(self.within) < len(tf):
                cached = {i: idf * tf[i] for i in self.within if i in tf}
            else:
                cached = {i: idf * t for i, t in tf.items() if i in self.within}
            self._weights[term, keyword] = cached
        return cached

    def _specificity(self, postings: Postings) -> float:
        ref = self._specific_idf
        return min(1.0, postings.soft_idf / ref) if ref else 1.0

    def _keyword_lane(self, term: str, lane: _Vector) -> None:
        for i, w in self.weights(term, keyword=True).items():
            lane[self._slot_of[i]] = w

    def _weak_lane(self, term: str, lane: npt.NDArray[np.int64]) -> None:
        for i, w in self.weights(term, keyword=False).items():
            lane[self._slot_of[i]] = round(w * _FIXED)

    def _described_lane(self, described: int, lane: npt.NDArray[np.int64]) -> None:
        terms = self.topics.first_terms_of(described).values()
        rows = [self._weak_lanes.row(t) for t in terms]
        lane[:] = self._weak_lanes.matrix[rows].sum(axis=0)

    def _most_specific(self, firsts_id: int, firsts: tuple[str, ...]) -> float:
        # Specificity is relative to the topic's most specific keyword: a reader whose every
        # keyword is broad ("reinforcement learning") still gets their subject at full weight.
        cached = self._most.get(firsts_id)
        if cached is None:
            found = (self._keyword_specificity(term) for term in firsts)
            cached = max((f for f in found if f is not None), default=1.0)
            self._most[firsts_id] = cached
        return cached

    def _keyword_specificity(self, term: str) -> float | None:
        """The keyword's specificity (None when no paper has it)."""
        if term not in self._specific:
            postings = self.index.lookup(term)
            self._specific[term] = self._specificity(postings) if postings.tf else None
        return self._specific[term]

    def _weak_scale(self, query: _Query) -> float:
        """What a description's summed fixed-point weights are multiplied by (0: none)."""
        found = self._scales.get(query.weak_id)
        if found is None:
            found = self._scales[query.weak_id] = self._scale_of(query.weak)
        return found

    def _scale_of(self, weak: tuple[str, ...]) -> float:
        weight = self.tuning.description_weight
        if not weak or weight <= 0:
            return 0.0
        known = self._idfs.get  # (a soft idf is never 0)
        idfs = [known(t) or self._soft_idf(t) for t in weak]
        # The share of the best score a paper could reach on these terms; with a short
        # description that share is capped so one term counts at most TERM_CAP of a keyword
        # (a specific one, so a description of generic words alone stays weak evidence).
        full = max(self._specific_idf, max(idfs))
        best_possible = max(sum(idfs) * (K1 + 1), weight * full / TERM_CAP)
        return weight / best_possible / _FIXED

    def _soft_idf(self, term: str) -> float:
        found = self._idfs.get(term)
        if found is None:
            found = self._idfs[term] = self.index.lookup(term).soft_idf
        return found

    def _batch(self, queries: Sequence[_Query]) -> tuple[_Vector, _Vector]:
        """(keyword group weights, shape (query, group, slot), 0 past a query's own groups;
        scores, shape (query, slot)) of several queries in one pass."""
        groups, which, total = self._scored(queries)
        return groups[which], total

    def _scored(self, queries: Sequence[_Query]) -> tuple[_Vector, npt.NDArray[np.intp], _Vector]:
        """(keyword group weights per distinct keyword list, shape (list, group, slot), 0
        past a list's own groups; each query's list; scores, shape (query, slot))."""
        rows, which, lists = self._keyword_rows(queries)
        most = np.array([self._most_specific(q.firsts_id, q.key[0]) for q in lists])
        groups = self._keyword_lanes.matrix[rows] / most[:, None, None]
        return groups, which, self._totals(queries)

    def _keyword_rows(
        self, queries: Sequence[_Query]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], list[_Query]]:
        """(the lane rows of each distinct keyword list's groups, shape (list, group), row 0
        past a list's own groups; each query's list; a query with each list)."""
        first_of: dict[int, int] = {}
        which = [first_of.setdefault(q.firsts_id, len(first_of)) for q in queries]
        lists = list({q.firsts_id: q for q in queries}.values())
        return self._lane_rows([q.key[0] for q in lists]), np.array(which, np.intp), lists

    def _lane_rows(self, term_lists: Sequence[Sequence[str]]) -> npt.NDArray[np.intp]:
        """The keyword lane rows of each list of terms, shape (list, longest), padded with
        row 0 (all zeros)."""
        depth = max(map(len, term_lists), default=0)
        pad = [0] * depth
        row_of, row = self._keyword_lanes.row_of, self._keyword_lanes.row
        rows = [
            [row_of.get(t) or row(t) for t in terms] + pad[len(terms) :] for terms in term_lists
        ]
        return np.array(rows, dtype=np.intp).reshape(len(term_lists), depth)

    def _keyword_set(self, query: _Query) -> int:
        """A number for the set of the query's keyword groups' first terms (per scorer):
        the keyword part of a score does not depend on the groups' order."""
        found = self._set_of_firsts.get(query.firsts_id)
        if found is None:
            members = tuple(sorted(query.key[0]))
            found = self._set_of_firsts[query.firsts_id] = self._sets.setdefault(
                members, len(self._sets)
            )
        return found

    def _totals(self, queries: Sequence[_Query]) -> _Vector:
        """Each query's score per slot, shape (query, slot).

        Per slot, a query's keyword weights are sorted, best first, and summed with their
        decay in that order (scored once per distinct set of keywords); its description
        terms' fixed-point weights are summed as integers (exact, in any order) and
        scaled."""
        width = len(self.slots)
        weak = self._weak_lanes
        members: dict[int, _Query] = {}  # a query with each set, in order
        set_at: dict[int, int] = {}
        which = []
        for q in queries:
            number = self._keyword_set(q)
            found = set_at.get(number)
            if found is None:
                found = set_at[number] = len(set_at)
                members[number] = q
            which.append(found)
        sets = list(members.values())
        lane_rows = self._lane_rows([sorted(q.key[0]) for q in sets])
        depth = lane_rows.shape[1]
        most = np.array([self._most_specific(q.firsts_id, q.key[0]) for q in sets])
        groups = self._keyword_lanes.matrix[lane_rows] / most[:, None, None]
        # A slot one keyword group matches scores that group's weight; only the (few) slots
        # where several match need their weights sorted.
        total = groups.max(axis=1) if depth else np.zeros((len(sets), width))
        several_of, slot = np.nonzero((groups > 0).sum(axis=1) > 1)
        if len(several_of):
            ranked = np.sort(groups[several_of, :, slot], axis=1)[:, ::-1]  # best first
            several = ranked[:, 0]
            for r in range(1, depth):
                several = several + ranked[:, r] * KEYWORD_DECAY**r
            total[several_of, slot] = several
        total = total[np.array(which, dtype=np.intp)]
        # Each distinct description's part, kept by the scorer: a lane per query sharing it.
        part_row = self._part_row
        missing = list({q.weak_id: q for q in queries if q.weak_id not in part_row}.values())
        scales = [self._weak_scale(q) for q in missing]
        described = [q for q, scale in zip(missing, scales, strict=True) if scale]
        part_row.update(
            (q.weak_id, 0) for q, scale in zip(missing, scales, strict=True) if not scale
        )
        if described:
            # Exact integer sums, in any order: a query's description lane, plus its terms
            # not among the description's, minus the description's it lacks (its keywords').
            bases: list[int] = []
            adding: list[list[int]] = []
            removing: list[list[int]] = []
            for q in described:
                w = q.weak
                firsts = self._first_sets.get(q.described)
                if firsts is None:
                    terms = self.topics.first_terms_of(q.described).values()
                    firsts = self._first_sets[q.described] = frozenset(terms)
                extra = [t for t in w if t not in firsts]
                lacking = (
                    [t for t in firsts if t not in w] if len(firsts) + len(extra) > len(w) else []
                )
                if len(extra) + len(lacking) < len(w):
                    bases.append(self._described_lanes.row(q.described))
                else:
                    bases.append(0)
                    extra, lacking = list(w), []
                adding.append([weak.row(t) for t in extra] + [0])  # row 0 is all zeros
                removing.append([weak.row(t) for t in lacking] + [0])
            summed = self._described_lanes.matrix[bases]
            for lists, sign in ((adding, 1), (removing, -1)):
                starts = np.cumsum([0] + [len(t) for t in lists[:-1]])
                rows = weak.matrix[[r for t in lists for r in t]]
                summed += sign * np.add.reduceat(rows, starts, axis=0)
            scaled = [scale for scale in scales if scale]
            start = self._parts_used
            end = self._parts_used = start + len(described)
            if end > len(self._parts):  # full: at least double the capacity
                more = np.zeros((max(end, 2 * len(self._parts)), len(self.slots)))
                more[:start] = self._parts[:start]
                self._parts = more
            self._parts[start:end] = np.array(scaled)[:, None] * summed.astype(np.float64)
            part_row.update((q.weak_id, start + n) for n, q in enumerate(described))
        # Each distinct description part gathered to its queries' rows (adding 0.0 leaves a
        # score without one as it was).
        total += self._parts[[part_row[q.weak_id] for q in queries]]
        return total

    def _vectors(self, query: _Query) -> tuple[_Vector, _Vector]:
        """(each keyword group's weight per slot, each slot's score)."""
        groups, total = self._batch([query])
        return groups[0, : len(query.keywords)], total[0]

    def _chunks(self, queries: Sequence[_T]) -> Iterable[Sequence[_T]]:
        """`queries` (or their numbers) in runs small enough that their terms' lanes fit in
        BATCH_CELLS."""
        size = max(1, BATCH_CELLS // (max(1, len(self.slots)) * 16))
        return (queries[n : n + size] for n in range(0, len(queries), size))

    def scores(self, topic: Topic) -> _Scores:
        query = self.compile(topic)
        groups, total = self._vectors(query)
        slots = self.slots
        positive = {slots[n]: s for n, s in enumerate(total.tolist()) if s > 0}
        return _Scores(query, positive, groups, self._slot_of)

    def full(self) -> _Scorer:
        """A scorer over the whole collection (this one when it already is)."""
        if self._full is None:
            self._full = self._sibling(None)
        return self._full

    def _key_order(self, query: _Query) -> int:
        """A number per set of keywords, to sort queries sharing theirs into one chunk."""
        return self._keyword_set(query)

    def references(self, queries: Sequence[_Query]) -> list[float]:
        """Each query's own scale: its REF_RANK-th best score over the whole collection (kept
        per index, see _REFERENCES)."""
        memo = _REFERENCES.setdefault(self.index, {})
        weight = self.tuning.description_weight
        missing = sorted(
            {q.key: q for q in queries if (weight, q.key) not in memo}.values(),
            key=self._key_order,
        )
        full = self.full()
        for chunk in full._chunks(missing):
            total = full._totals(chunk)
            for query, best in zip(chunk, _nth_best(total, REF_RANK), strict=True):
                memo[weight, query.key] = best
        return [memo[weight, q.key] for q in queries]

    def _sibling(self, within: Collection[int] | None) -> _Scorer:
        """A scorer over other papers, sharing what does not depend on which papers."""
        other = _Scorer(self.index, within, self.tuning, self.topics)
        other._most, other._scales, other._first_sets = self._most, self._scales, self._first_sets
        other._specific, other._idfs = self._specific, self._idfs
        other._sets, other._set_of_firsts = self._sets, self._set_of_firsts
        return other

    def outside(self) -> _Scorer | None:
        """A scorer over the stored papers this one leaves out (None: it leaves none out)."""
        if self._outside is None and self.within is not None:
            rest = set(range(len(self.index.papers))) - self.within
            if rest:
                self._outside = self._sibling(rest)
        return self._outside

    def _references_from(self, queries: Sequence[_Query], scores: _Vector) -> list[float]:
        """`references` of queries whose `scores` over this scorer's slots are known: only the
        papers outside them are scored (a paper's score does not depend on which others a
        scorer holds, and the REF_RANK-th best of the union does not on their order)."""
        memo = _REFERENCES.setdefault(self.index, {})
        weight = self.tuning.description_weight
        rows = {q.key: n for n, q in enumerate(queries) if (weight, q.key) not in memo}
        missing = sorted(rows.values(), key=lambda n: self._key_order(queries[n]))
        outside = self.outside() if self.within is not None else None
        if outside is None:
            if missing:
                for n, best in zip(missing, _nth_best(scores[missing], REF_RANK), strict=True):
                    memo[weight, queries[n].key] = best
        else:
            for chunk in outside._chunks(missing):
                rest = outside._totals([queries[n] for n in chunk])
                both = np.concatenate([scores[list(chunk)], rest], axis=1)
                for n, best in zip(chunk, _nth_best(both, REF_RANK), strict=True):
                    memo[weight, queries[n].key] = best
        return [memo[weight, q.key] for q in queries]

    def reference(self, topic: Topic) -> float:
        """The topic's own scale: its REF_RANK-th best score over the whole collection."""
        return self.references([self.compile(topic)])[0]

    def threshold_for(self, topic: Topic, threshold: float) -> float:
        """The topic's calibrated send threshold (see the module docstring)."""
        cached = self._thresholds.get((topic, threshold))
        if cached is None:
            cached = calibrated_threshold(threshold, self.reference(topic), self.tuning)
            self._thresholds[topic, threshold] = cached
        return cached

    def _prepare(self, queries: Sequence[_Query], threshold: float) -> None:
        """Which papers each query sends."""
        groups, total = self._batch(queries)
        positive = total > 0
        cuts = self._cuts(queries, total, threshold)
        which, slot = np.nonzero(positive & (total >= cuts[:, None]))
        scores = total[which, slot].tolist()
        matched = (groups[which, :, slot] > 0).tolist()
        passing: list[list[tuple[int, float, tuple[int, ...]]]] = [[] for _ in queries]
        keys_of: dict[tuple[bool, ...], tuple[int, ...]] = {}  # few distinct ones
        for n, s, score, hit in zip(which.tolist(), slot.tolist(), scores, matched, strict=True):
            bits = tuple(hit)
            keys = keys_of.get(bits)
            if keys is None:
                keys = keys_of[bits] = tuple(k for k, h in enumerate(hit) if h)
            passing[n].append((self.slots[s], score, keys))
        for query, found in zip(queries, passing, strict=True):
            self._passing[query.key, threshold] = tuple(found)

    def _cuts(
        self,
        queries: Sequence[_Query],
        total: _Vector,
        threshold: float,
        whole: _Vector | None = None,
    ) -> _Vector:
        """Each query's send threshold, as far as it matters for `total` (its scores), given
        its scores over the `whole` collection when they are known.

        The calibrated threshold is only worked out when it matters: when a paper scores
        between the floor and the global threshold, and could reach `relative` x the query's
        reference. Scores here are a subset of the whole collection's, so their REF_RANK-th
        best is a lower bound of the reference: papers below `relative` x that bound fail
        whatever the reference."""
        positive = total > 0
        window = positive & (total >= self.tuning.floor) & (total < threshold)
        relative = self.tuning.relative
        cuts = np.full(len(queries), threshold)
        candidates = np.flatnonzero(window.any(axis=1))
        if len(candidates):
            bound = relative * np.array(_nth_best(total[candidates], REF_RANK))
            highest = np.where(window[candidates], total[candidates], -np.inf).max(axis=1)
            known = (positive[candidates].sum(axis=1) >= REF_RANK) & (relative >= 0)
            needed = candidates[~(known & (highest < bound))].tolist()
            if whole is None:
                references = self._references_from([queries[n] for n in needed], total[needed])
            else:
                references = _nth_best(whole[needed], REF_RANK)
            for n, reference in zip(needed, references, strict=True):
                cuts[n] = calibrated_threshold(threshold, reference, self.tuning)
        return cuts

    def rows(
        self, shown: npt.NDArray[np.intp], threshold: float, columns: npt.NDArray[np.intp]
    ) -> tuple[_Table, npt.NDArray[np.intp]]:
        """The table at `threshold` (its slots in the order of `columns` when it is made),
        and the row of each query in `query_of_shown[shown]`, each distinct key scored once
        (row 0: nothing, sends nothing)."""
        table = self._tables.get(threshold)
        if table is None:
            table = self._tables[threshold] = _Table(columns)
        queries = [self.topics.query_of_shown[n] for n in shown.tolist()]
        missing = {q.key_id: q for q in queries if q.key_id not in table.row_of}
        table.reserve(len(missing))
        # While the stored papers are few times the listed ones, scored over the whole
        # collection in one pass, which the references need of most queries anyway, the
        # listing's slots taken from it (a paper's score does not depend on which others a
        # scorer holds); past that, the listing first, and the rest only for the queries
        # whose references matter. By set of keywords, so queries sharing theirs fall in
        # one chunk (see `_totals`).
        order = sorted(missing.values(), key=self._key_order)
        if len(self.index.papers) > WHOLE_PASS * len(self.slots):
            for chunk in self._chunks(order):
                distinct, at = self._alike(chunk)
                total = self._totals(distinct)
                cuts = self._cuts(distinct, total, threshold)
                hits, which = self._hits_of(chunk, table.columns)
                keys = [q.key_id for q in chunk]
                table.add(keys, total, cuts, at, hits, which, table.columns)
        else:
            full = self.full()
            listed = np.array(self.slots, dtype=np.intp)  # the full scorer's slots are papers
            slots = listed[table.columns]
            for chunk in full._chunks(order):
                distinct, at = self._alike(chunk)
                whole = full._totals(distinct)
                cuts = self._cuts(distinct, whole[:, listed], threshold, whole)
                hits, which = full._hits_of(chunk, slots)
                table.add([q.key_id for q in chunk], whole, cuts, at, hits, which, slots)
        return table, np.array([table.row_of[q.key_id] for q in queries], dtype=np.intp)

    def _alike(self, queries: Sequence[_Query]) -> tuple[list[_Query], npt.NDArray[np.intp]]:
        """(a query for each distinct score: queries with the same set of keywords and the
        same description part score alike, see `_totals`; the one of each query)."""
        number: dict[tuple[int, int], int] = {}
        distinct: list[_Query] = []
        at: list[int] = []
        for q in queries:
            alike = (self._keyword_set(q), q.weak_id)
            found = number.get(alike)
            if found is None:
                found = number[alike] = len(distinct)
                distinct.append(q)
            at.append(found)
        return distinct, np.array(at, dtype=np.intp)

    def _hits_of(
        self, queries: Sequence[_Query], slots: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
        """(whether each keyword group of each distinct keyword list matches the paper in
        each of `slots`, shape (list, group, len(slots)); each query's list)."""
        rows, which, _ = self._keyword_rows(queries)
        return self._keyword_lanes.matrix[:, slots][rows] > 0, which

    def _passing_papers(self, query: _Query, threshold: float) -> _Passing:
        """(paper, score, keyword groups) of each paper the query sends, shared by the topics
        with the same key."""
        if (query.key, threshold) not in self._passing:
            self._prepare([query], threshold)
        return self._passing[query.key, threshold]

    def sends(self, query: _Query, threshold: float) -> list[tuple[int, float, TopicMatch]]:
        """(paper, score, explanation) for each paper this topic alone sends, computed once
        per distinct `shown`."""
        cached = self._sends.get((query.shown, threshold))
        if cached is None:
            cached = [
                (i, s, self.match(query, i, matched, s))
                for i, s, matched in self._passing_papers(query, threshold)
            ]
            self._sends[query.shown, threshold] = cached
        return cached

    def closest(self, query: _Query, threshold: float) -> list[tuple[int, float, TopicMatch]]:
        """The CLOSEST best papers this topic does not send (score > 0), best first."""
        cached = self._closest.get((query.shown, threshold))
        if cached is not None:
            return cached
        table = self._tables.get(threshold)
        row = table.row_of.get(query.key_id) if table else None
        if table is not None and row is not None:  # scored with the edition's other topics
            scores = table.total[row, table.column_of_slot]
            bits = table.bits[row, table.column_of_slot]
            rest = np.flatnonzero((scores > 0) & (scores < table.cuts[row]))
            best = rest[np.argsort(-scores[rest], kind="stable")[:CLOSEST]].tolist()
            cached = [
                (self.slots[n], s, self.match(query, self.slots[n], _bits(b), s))
                for n, s, b in zip(best, scores[best].tolist(), bits[best].tolist(), strict=True)
            ]
        else:
            groups, total = self._vectors(query)
            sent = {i for i, _, _ in self._passing_papers(query, threshold)}
            rest_of = (
                (-s, n) for n, s in enumerate(total.tolist()) if s > 0 and self.slots[n] not in sent
            )
            found = heapq.nsmallest(CLOSEST, rest_of)  # slots are in paper order: ties as papers
            cached = [
                (self.slots[n], -s, self.match(query, self.slots[n], _matched(groups, n), -s))
                for s, n in found
            ]
        self._closest[query.shown, threshold] = cached
        return cached

    def excluded(self, terms: tuple[str, ...]) -> frozenset[int]:
        cached = self._excluded.get(terms)
        if cached is None:
            # Exact occurrences only: a hard filter should not fire on a loose window match.
            cached = frozenset(i for t in terms for i in self.index.lookup(t).exact)
            self._excluded[terms] = cached
        return cached

    def explain(self, scores: _Scores, i: int) -> TopicMatch:
        return self.match(scores.query, i, scores.matched(i), scores.score(i))

    def match(self, query: _Query, i: int, matched: tuple[int, ...], score: float) -> TopicMatch:
        """Why paper i matched the topic: its keywords found (the `matched` groups), or else
        its strongest few description terms; where they were; the exact text of each
        occurrence."""
        if len(matched) == 1:  # the common case: that group's terms
            terms = query.keywords[matched[0]]
        else:
            terms = tuple(term for k in matched for term in query.keywords[k])
        if not terms:
            terms = self._strongest(query.weak, i)
        cached = self._found.get((terms, i))
        if cached is None:
            hits = [self._hit(term, i) for term in terms]
            found = sorted(occurrence for hit in hits for occurrence in hit[2])
            cached = self._found[terms, i] = (
                tuple(t for t, hit in zip(terms, hits, strict=True) if hit[0]),
                tuple(t for t, hit in zip(terms, hits, strict=True) if hit[1]),
                tuple(dict.fromkeys(text for _, text in found)),
            )
        in_title, in_abstract, highlights = cached
        return TopicMatch(query.topic.name, terms, in_title, in_abstract, highlights, score)

    def _strongest(self, weak: tuple[str, ...], i: int) -> tuple[str, ...]:
        """The (at most 3) description terms that weigh most in paper i."""
        cached = self._strong.get((weak, i))
        if cached is None:
            weight = {t: self.weights(t, keyword=False).get(i, 0.0) for t in weak}
            strongest = sorted(weak, key=lambda t: -weight[t])
            cached = self._strong[weak, i] = tuple(t for t in strongest[:3] if weight[t] > 0)
        return cached

    def _hit(self, term: str, i: int) -> tuple[bool, bool, tuple[tuple[int, str], ...]]:
        """(in title?, in abstract?, (position, exact text) of each occurrence)."""
        cached = self._hits.get((term, i))
        if cached is None:
            spans = self.index.lookup(term).spans.get(i, ())
            in_title = [self.index.in_title(i, s) for s in spans]
            texts = self.index.surfaces(i, spans)
            found = tuple((s[0], t) for s, t in zip(spans, texts, strict=True))
            cached = self._hits[term, i] = (any(in_title), not all(in_title), found)
        return cached


def _nth_best(scores: _Vector, n: int) -> list[float]:
    """Per row, the n-th best positive score (the last one when fewer; 0.0 when none)."""
    counts = (scores > 0).sum(axis=1)
    n = min(n, scores.shape[1])
    if not n:
        return [0.0] * len(counts)
    best = -np.partition(-np.where(scores > 0, scores, 0.0), range(n), axis=1)[:, :n]
    nth = best[np.arange(len(best)), np.clip(counts, 1, n) - 1]
    found: list[float] = np.where(counts > 0, nth, 0.0).tolist()
    return found


def calibrated_threshold(threshold: float, reference: float, tuning: Tuning) -> float:
    """A topic's send threshold: the global one, lowered towards `relative` x the topic's own
    reference score (its REF_RANK-th best over the stored papers), never below `floor`."""
    return min(threshold, max(tuning.floor, tuning.relative * reference))


def topic_reference(index: PaperIndex, topic: Topic, tuning: Tuning = DEFAULT_TUNING) -> float:
    """A topic's REF_RANK-th best score over every stored paper (its own scale)."""
    return _Scorer(index, None, tuning).reference(topic)


def score_papers(
    index: PaperIndex,
    subscriber: Subscriber,
    *,
    threshold: float = math.inf,
    tuning: Tuning = DEFAULT_TUNING,
) -> Scored:
    """paper index -> (score, explanations) for every paper in the index that scores above 0
    and no exclude term hits, without votes. The explanations are the topics reaching
    `threshold`, best first, or the best topic alone when none does."""
    scorer = _Scorer(index, None, tuning)
    excluded = scorer.excluded(subscriber.exclude)
    per_topic = [scorer.scores(topic) for topic in subscriber.topics]
    papers = set().union(*(s.papers() for s in per_topic)) - excluded
    out: Scored = {}
    for i in sorted(papers):
        ranked = sorted(
            ((s.score(i), t) for t, s in enumerate(per_topic)), key=lambda st: (-st[0], st[1])
        )
        if ranked[0][0] <= 0:
            continue
        shown = [st for st in ranked if st[0] >= threshold] or ranked[:1]
        out[i] = (ranked[0][0], tuple(scorer.explain(per_topic[t], i) for _, t in shown))
    return out


@dataclass(frozen=True, slots=True)
class _Verdict:
    score: float  # best topic's score, plus the votes' change
    sent: bool
    matches: tuple[TopicMatch, ...]
    liked: str


_NO_LIFT = Lift(0.0, 0.0, False, "")


def _reader(
    scorer: _Scorer,
    sub: Subscriber,
    threshold: float,
    votes: Votes | None,
    weights: Weights | None = None,
) -> Reader:
    """What this subscriber's own votes teach (NO_READER without votes), weighted by
    `weights` (None: the scorer's tuning's)."""
    if not votes:
        return NO_READER
    full = scorer.full()
    voted = [full.index.id_to_index[p] for p in votes if p in full.index.id_to_index]
    margins = {i: -threshold for i in voted}
    for topic in sub.topics:
        scores, cut = full.scores(topic), full.threshold_for(topic, threshold)
        for i in voted:
            margins[i] = max(margins[i], scores.score(i) - cut)
    weights = weights or scorer.tuning.vote_weights()
    up = [i for i in voted if votes[full.index.papers[i].id] > 0]
    down = [i for i in voted if votes[full.index.papers[i].id] < 0]
    keywords = []
    for topic in sub.topics:
        scores = full.scores(topic)
        found = [scores.matched(i) for i in up], [scores.matched(i) for i in down]
        keywords.append(keyword_weights(*found, len(scores.query.keywords), weights.prior))
    return learn(
        full.index,
        votes,
        weights=weights,
        margins=margins,
        threshold=threshold,
        keywords=tuple(keywords),
    )


def _keyword_sum(weights: Iterable[float]) -> float:
    """Keyword group weights summed best first with their decay (as `_Scorer._batch` does)."""
    ranked = sorted((w for w in weights if w > 0), reverse=True)
    return sum(w * KEYWORD_DECAY**r for r, w in enumerate(ranked))


def _reweighted(scores: _Scores, i: int, weights: Sequence[float] | None) -> float:
    """The topic's score of paper i, its keyword groups weighted by the reader's votes."""
    score = scores.score(i)
    if weights is None or not score:
        return score
    column = scores.groups[:, scores.slot_of[i]].tolist()
    if all(w == 1.0 for w, c in zip(weights, column, strict=True) if c):
        return score
    weighted = (c * w for c, w in zip(column, weights, strict=True))
    return score - _keyword_sum(column) + _keyword_sum(weighted)


def _judge(
    scorer: _Scorer, sub: Subscriber, threshold: float, reader: Reader
) -> dict[int, _Verdict]:
    """Score and send decision of every paper within the scorer for one subscriber: the best
    topic's score, sent when some topic's calibrated threshold is reached, the reader's votes
    moving both."""
    excluded = scorer.excluded(sub.exclude)
    per_topic = [(scorer.scores(t), scorer.threshold_for(t, threshold)) for t in sub.topics]
    papers = set().union(*(s.papers() for s, _ in per_topic))
    if reader is not NO_READER:
        papers = set(scorer.slots)  # likeness to liked papers can lift any paper
    keywords = reader.keywords or [None] * len(per_topic)
    out: dict[int, _Verdict] = {}
    for i in sorted(papers - excluded):
        ranked = sorted(
            (
                (ts, ts - cut, t)
                for t, ((s, cut), k) in enumerate(zip(per_topic, keywords, strict=True))
                for ts in (_reweighted(s, i, k),)
            ),
            key=lambda x: (-x[0], x[2]),
        )
        best = ranked[0][0] if ranked else 0.0
        margin = max((m for _, m, _ in ranked), default=-threshold)
        lift = _NO_LIFT if reader is NO_READER else reader.adjust(i, scorer.index.vector(i))
        score = best + lift.score
        if score <= 0:
            continue
        sent = margin + lift.send >= reader.shift and not lift.unwanted  # "not for me"
        shown = [x for x in ranked if x[1] >= 0] or [x for x in ranked[:1] if x[0] > 0]
        matches = tuple(scorer.explain(per_topic[t][0], i) for _, _, t in shown)
        out[i] = _Verdict(score, sent, matches, lift.because)
    return out


def rank_all(
    index: PaperIndex,
    subscriber: Subscriber,
    *,
    threshold: float,
    limit: int | None = None,
    tuning: Tuning = DEFAULT_TUNING,
    votes: Votes | None = None,
) -> list[SelectedPaper]:
    """Every paper with a score > 0, by relevance alone (no history, no max_papers): for
    previews and evaluation. `sent` is the real send decision: the topic's calibrated
    threshold, and the reader's `votes` (paper id -> +1/-1) when given."""
    return rank_all_weighted(
        index,
        subscriber,
        threshold=threshold,
        limit=limit,
        tuning=tuning,
        votes=votes,
        weightings=(tuning.vote_weights(),),
    )[0]


def rank_all_weighted(
    index: PaperIndex,
    subscriber: Subscriber,
    *,
    threshold: float,
    weightings: Sequence[Weights],
    limit: int | None = None,
    tuning: Tuning = DEFAULT_TUNING,
    votes: Votes | None = None,
) -> list[list[SelectedPaper]]:
    """`rank_all` with each of several weightings of the votes (in place of `tuning`'s vote
    constants), the topics scored and explained once: for the evaluation's grid."""
    scorer = _Scorer(index, None, tuning)
    out = []
    for weights in weightings:
        reader = _reader(scorer, subscriber, threshold, votes, weights)
        judged = _judge(scorer, subscriber, threshold, reader)
        order = sorted(judged, key=lambda i: (-judged[i].score, index.papers[i].id))
        out.append(
            [
                SelectedPaper(
                    index.papers[i],
                    judged[i].score,
                    0,
                    judged[i].sent,
                    judged[i].matches,
                    0.0,
                    liked=judged[i].liked,
                )
                for i in order[:limit]
            ]
        )
    return out


def select_for(
    index: PaperIndex,
    listing: DailyListing,
    subscribers: Sequence[Subscriber],
    *,
    threshold: float,
    history: Mapping[str, AbstractSet[str]] | None = None,
    votes: Mapping[str, Votes] | None = None,
    tuning: Tuning = DEFAULT_TUNING,
) -> list[Selection]:
    """One Selection per subscriber, in order: the listing's papers each subscriber's send
    decision picks, minus exclusions and papers in `history` (address key -> ids delivered in
    *other* editions, so a re-render keeps its content), by mixed score, at most `max_papers`.
    `votes` (address key -> paper id -> +1/-1) change only that reader's results. When nothing
    is sent, `near_misses` holds the closest papers; with `on_empty: closest` they are sent,
    marked `near_miss`."""
    # An edition allocates millions of objects and frees few (its caches, its selections):
    # collecting meanwhile is waste, the same as when subscribers are loaded.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _select_for(
            index, listing, subscribers, threshold, history or {}, votes or {}, tuning
        )
    finally:
        if collecting:
            gc.enable()


def _select_for(
    index: PaperIndex,
    listing: DailyListing,
    subscribers: Sequence[Subscriber],
    threshold: float,
    history: Mapping[str, AbstractSet[str]],
    votes: Mapping[str, Votes],
    tuning: Tuning,
    *,
    vectorised: bool = True,
) -> list[Selection]:
    """`select_for`; with `vectorised` False, every subscriber is judged one by one (the
    plain path the tests hold the vectorised one to)."""
    missing = [e.paper.id for e in listing.entries if e.paper.id not in index.id_to_index]
    if missing:
        raise ValueError(f"listing papers missing from the index (rebuild it): {missing[:5]}")
    rank_of: dict[int, int] = {}
    paper_of: dict[int, Paper] = {}
    for entry in listing.entries:
        i = index.id_to_index[entry.paper.id]
        if entry.rank < rank_of.get(i, entry.rank + 1):
            rank_of[i], paper_of[i] = entry.rank, entry.paper
    scorer = _Scorer(index, rank_of, tuning, _topics_of(index))
    edition = _Edition(scorer, rank_of, paper_of, threshold, listing.date)
    # Address keys only matter to look up history and votes.
    keys = [address_key(sub.email) for sub in subscribers] if history or votes else None
    no_history: frozenset[str] = frozenset()
    seen = [history.get(k, no_history) for k in keys] if keys and history else None
    # Readers with votes (and topics with more keyword groups than `_Table` tells apart) are
    # judged one by one, the others all at once.
    together: list[int] = []
    shown: list[list[int]] = []
    alone: list[int] = []
    queries = scorer.topics.query_of_shown
    shown_of, wide = scorer.topics.shown_of, scorer.topics.wide
    for n, sub in enumerate(subscribers):
        if not vectorised or (keys and votes.get(keys[n])):
            alone.append(n)
            continue
        topics = [shown_of(t) for t in sub.topics]
        if wide and not wide.isdisjoint(topics):
            alone.append(n)
        else:
            together.append(n)
            shown.append(topics)
    selections: list[Selection | None] = [None] * len(subscribers)
    if together:
        picks = edition.picks(
            shown,
            [subscribers[n].exclude for n in together],
            [subscribers[n].max_papers for n in together],
            [seen[n] for n in together] if seen else None,
        )
        for n, topics, (picked, ranked) in zip(together, shown, picks, strict=True):
            sub = subscribers[n]
            if ranked:
                selections[n] = Selection(sub, listing.date, picked)
                continue
            near = _closest(
                scorer,
                [queries[t] for t in topics],
                sub.exclude,
                threshold,
                paper_of,
                seen[n] if seen else no_history,
            )
            selections[n] = edition.finish(sub, (), False, near)
    for n in alone:
        sub = subscribers[n]
        key = keys[n] if keys else ""
        selections[n] = _select_one(edition, sub, seen[n] if seen else no_history, votes.get(key))
    return [s for s in selections if s is not None]


def _select_one(
    edition: _Edition, sub: Subscriber, seen: AbstractSet[str], votes: Votes | None
) -> Selection:
    """One subscriber's Selection, judged alone."""
    scorer, threshold = edition.scorer, edition.threshold
    rank_of, paper_of = edition.rank_of, edition.paper_of
    if votes:
        reader = _reader(scorer, sub, threshold, votes)
        judged = _judge(scorer, sub, threshold, reader)
        sent = ((i, v.score, v.matches, v.liked) for i, v in judged.items() if v.sent)
        ranked = _ranked(sent, rank_of, paper_of)
        near = [
            (i, v.score, v.matches, v.liked)
            for i, v in sorted(judged.items(), key=lambda iv: (-iv[1].score, iv[0]))
            if not v.sent and paper_of[i].id not in seen
        ][:CLOSEST]
    else:
        queries = [scorer.compile(t) for t in sub.topics]
        # Subscribers whose topics send alike share their ranked papers.
        shown = tuple(q.shown for q in queries)
        cached = scorer._ranked.get((shown, sub.exclude, threshold))
        if cached is None:
            passing = _sent_without_votes(scorer, queries, sub.exclude, threshold)
            cached = _ranked(passing, rank_of, paper_of)
            scorer._ranked[shown, sub.exclude, threshold] = cached
        ranked = cached
        near = [] if ranked else _closest(scorer, queries, sub.exclude, threshold, paper_of, seen)
    fresh = (sp for sp in ranked if sp.paper.id not in seen) if seen else iter(ranked)
    picked = tuple(itertools.islice(fresh, max(0, sub.max_papers)))
    return edition.finish(sub, picked, bool(ranked), near)


_CELLS = 1 << 20  # (subscriber, topic, paper) cells gathered at once


class _Edition:
    """One edition's listing over a scorer: its papers as columns in the order ties are broken
    in (trending rank, then id), and the vectorised selection of many subscribers at once."""

    def __init__(
        self,
        scorer: _Scorer,
        rank_of: Mapping[int, int],
        paper_of: Mapping[int, Paper],
        threshold: float,
        date: dt.date,
    ) -> None:
        self.scorer, self.threshold, self.date = scorer, threshold, date
        self.rank_of, self.paper_of = rank_of, paper_of
        slots = scorer.slots
        self.order = np.array(
            sorted(range(len(slots)), key=lambda n: (rank_of[slots[n]], paper_of[slots[n]].id)),
            dtype=np.intp,
        )
        self.papers = [slots[n] for n in self.order.tolist()]  # paper index per column
        self.trend = np.array([_trend(rank_of[i]) for i in self.papers])  # what `_mixed` multiplies
        self.column_of = {paper_of[i].id: c for c, i in enumerate(self.papers)}
        self.paper_of_column = [paper_of[i] for i in self.papers]
        self.rank_of_column = [rank_of[i] for i in self.papers]
        self.trend_of_column = self.trend.tolist()

    def finish(
        self,
        sub: Subscriber,
        picked: tuple[SelectedPaper, ...],
        ranked: bool,
        near: Sequence[_Sent],
    ) -> Selection:
        """The Selection of the `picked` papers; when none was `ranked` (before history), the
        `near` misses, sent as such with `on_empty: closest`."""
        if ranked:
            return Selection(sub, self.date, picked)
        rank_of, paper_of = self.rank_of, self.paper_of
        misses = tuple(
            SelectedPaper(paper_of[i], s, rank_of[i], False, m, _mixed(s, rank_of[i]), liked=liked)
            for i, s, m, liked in near
        )
        if sub.on_empty == "closest":
            picked = tuple(
                dataclasses.replace(sp, sent=True, near_miss=True)
                for sp in misses[: max(0, sub.max_papers)]
            )
        return Selection(sub, self.date, picked, misses)

    def picks(
        self,
        shown: Sequence[Sequence[int]],
        excludes: Sequence[tuple[str, ...]],
        caps: Sequence[int],
        seen: Sequence[AbstractSet[str]] | None,
    ) -> list[tuple[tuple[SelectedPaper, ...], bool]]:
        """Per subscriber (their topics' `shown`, exclude terms, max_papers and papers seen in
        other editions): (the papers sent, in digest order; whether any was sent before
        history took its own), every subscriber at once.

        A subscriber's score of a paper is the best of their topics that send it; the papers
        are ordered by mixed score with ties broken by column (trending rank, then id), as
        `_ranked` sorts; a paper one topic sends carries that topic's explanation, one that
        several send all of theirs, best first. Explanations and SelectedPapers are built once
        per distinct value, most subscribers sharing them with others."""
        scorer, width, n = self.scorer, len(self.papers), len(shown)
        counts = np.fromiter(map(len, shown), dtype=np.intp, count=n)
        depth = int(counts.max(initial=0))
        flat = np.fromiter(itertools.chain.from_iterable(shown), np.intp, int(counts.sum()))
        distinct = _distinct(flat)[0]
        row_of_shown = np.zeros(int(distinct[-1]) + 1 if len(distinct) else 0, dtype=np.intp)
        table, rows = scorer.rows(distinct, self.threshold, self.order)
        row_of_shown[distinct] = rows
        total, cuts, bits = table.total, table.cuts, table.bits
        # (subscriber, topic) -> the topic's row, row 0 (nothing) past their own topics.
        owner = np.repeat(np.arange(n), counts)
        position = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
        grid = np.zeros((n, depth), dtype=np.intp)
        grid[owner, position] = row_of_shown[flat]
        shown_grid = np.full((n, depth), -1, dtype=np.intp)
        shown_grid[owner, position] = flat
        excluded, excluding = self._excluded(excludes)
        seen_at, seen_column = self._seen(seen)
        cap = np.maximum(np.fromiter(caps, dtype=np.intp, count=n), 0)
        ranked = np.zeros(n, dtype=bool)
        found: list[
            tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], _Vector, npt.NDArray[np.intp]]
        ] = []
        step = max(1, _CELLS // max(1, depth * width))
        for a in range(0, n, step):
            b = min(n, a + step)
            rows = grid[a:b]
            scores = total[rows]  # (subscriber, topic, column), 0 where the topic does not send
            scores[scores < cuts[rows][:, :, None]] = 0.0
            excluding_some = np.flatnonzero(excluded[a:b])
            if len(excluding_some):
                hide = excluding[excluded[a + excluding_some]]
                scores[excluding_some] *= ~hide[:, None, :]
            best = scores.max(axis=1) if depth else np.zeros((b - a, width))
            ranked[a:b] = (best > 0).any(axis=1)
            lo, hi = np.searchsorted(seen_at, (a, b))
            best[seen_at[lo:hi] - a, seen_column[lo:hi]] = 0.0
            sub, column = np.nonzero(best > 0)
            # By subscriber, then mixed score, ties by column (lexsort is stable).
            by = np.lexsort((-(best[sub, column] * self.trend[column]), sub))
            sub, column = sub[by], column[by]
            per = np.bincount(sub, minlength=b - a)
            keep = np.arange(len(sub)) - (np.cumsum(per) - per)[sub] < cap[a:b][sub]
            sub, column = sub[keep], column[keep]
            found.append((sub + a, column, scores[sub, :, column], shown_grid[a:b][sub]))
        owners = np.concatenate([f[0] for f in found])
        columns = np.concatenate([f[1] for f in found])
        scores = np.concatenate([f[2] for f in found]).reshape(len(owners), depth)
        shown_of = np.concatenate([f[3] for f in found]).reshape(len(owners), depth)
        papers = self._papers(scores, shown_of, columns, row_of_shown, total, bits)
        per = np.bincount(owners, minlength=n).tolist()
        out = []
        start = 0
        for size, sent in zip(per, ranked.tolist(), strict=True):
            out.append((tuple(papers[start : start + size]), sent))
            start += size
        return out

    def _papers(
        self,
        scores: _Vector,
        shown_of: npt.NDArray[np.intp],
        columns: npt.NDArray[np.intp],
        row_of_shown: npt.NDArray[np.intp],
        total: _Vector,
        bits: npt.NDArray[np.int64],
    ) -> list[SelectedPaper]:
        """The SelectedPaper of each picked cell, from its topics' `scores` (0 where a topic
        does not send it) and `shown`."""
        if not len(columns):  # nothing picked (say, no subscriber in the chunk has a topic)
            return []
        scorer, width = self.scorer, len(self.papers)
        queries = scorer.topics.query_of_shown
        senders = scores > 0
        # Each distinct (shown, column) a topic sends, then each distinct explanation.
        pair = shown_of[senders] * width + np.broadcast_to(columns[:, None], senders.shape)[senders]
        pairs, pair_at = _distinct(pair)
        pair_shown, pair_column = np.divmod(pairs, width)
        rows = row_of_shown[pair_shown]
        pair_score, pair_bits = total[rows, pair_column], bits[rows, pair_column]
        # An explanation depends on the topic's name, the matched keyword groups' terms (or,
        # without any, its description terms and the paper), the paper and the score.
        labels = scorer.topics.labels
        name = np.array(labels.names, dtype=np.int64)
        weak = -1 - np.array(labels.weak, dtype=np.int64)  # negative: no group's terms
        group_at = np.array(labels.groups_at, dtype=np.intp)
        group_terms = np.array([*labels.groups, 0], dtype=np.int64)
        lone = (pair_bits & (pair_bits - 1)) == 0  # one group (or none) matched
        group = np.log2(np.where(lone & (pair_bits > 0), pair_bits, 1)).astype(np.intp)
        terms = np.where(
            pair_bits == 0, weak[pair_shown], group_terms[group_at[pair_shown] + group]
        )
        if not lone.all():
            # Several groups matched: numbered by their terms' numbers, in order (the same
            # terms as one group's, or another list of groups', may get another number: the
            # explanations are then equal values built twice).
            several = np.flatnonzero(~lone)
            bits_of, at = pair_bits[several], group_at[pair_shown[several]]
            wide = int(bits_of.max()).bit_length()
            found = np.full((len(several), wide), -1, dtype=np.int64)
            for k in range(wide):
                has = (bits_of >> k) & 1 == 1
                found[has, k] = group_terms[at[has] + k]
            found = np.take_along_axis(found, np.argsort(found < 0, axis=1, kind="stable"), 1)
            terms[several] = len(scorer.topics.ids) + _numbered(found)
        columns_of = (name[pair_shown], pair_column, terms, pair_score.view(np.int64))
        key = np.lexsort(columns_of)
        new = np.zeros(len(key), dtype=bool)
        new[:1] = True
        for column in columns_of:
            ordered = column[key]
            new[1:] |= ordered[1:] != ordered[:-1]
        match_of_pair = np.empty(len(key), dtype=np.intp)
        match_of_pair[key] = np.cumsum(new) - 1
        first = key[new]  # a pair showing each explanation
        match_column = pair_column[first].tolist()
        matches = [
            scorer.match(queries[t], self.papers[c], _bits(b), s)
            for t, c, b, s in zip(
                pair_shown[first].tolist(),
                match_column,
                pair_bits[first].tolist(),
                pair_score[first].tolist(),
                strict=True,
            )
        ]
        # Each cell: its one topic's SelectedPaper (shared by every cell with that
        # explanation), or one made for the topics that send it, best first.
        by_topic = np.full(senders.shape, -1, dtype=np.intp)
        by_topic[senders] = match_of_pair[pair_at]
        several = senders.sum(axis=1) > 1
        out = np.empty(len(columns), dtype=object)
        one = np.flatnonzero(~several)
        match_at = by_topic[one].max(axis=1)
        used, used_at = _distinct(match_at)
        alone = np.empty(len(used), dtype=object)
        paper = self._paper
        alone[:] = [paper(match_column[m], (matches[m],)) for m in used.tolist()]
        out[one] = alone[used_at]
        many = np.flatnonzero(several)
        if len(many):
            # Explanations best first (then in topic order), one SelectedPaper per distinct list.
            best_first = np.argsort(-scores[many], axis=1, kind="stable")
            ordered = np.take_along_axis(by_topic[many], best_first, axis=1)
            at = _numbered(ordered)
            distinct = np.empty_like(ordered)
            distinct[at] = ordered
            distinct = distinct[: at.max() + 1]
            sizes = (distinct >= 0).sum(axis=1).tolist()  # the senders come first
            merged = np.empty(len(distinct), dtype=object)
            merged[:] = [
                paper(match_column[row[0]], tuple([matches[m] for m in row[:size]]))
                for row, size in zip(distinct.tolist(), sizes, strict=True)
            ]
            out[many] = merged[at]
        papers: list[SelectedPaper] = out.tolist()
        return papers

    def _paper(self, column: int, matches: tuple[TopicMatch, ...]) -> SelectedPaper:
        """The sent paper in `column` with its explanations, best first: the first's score."""
        score = matches[0].score
        mixed = score * self.trend_of_column[column]  # _mixed(score, rank), worked out once
        return SelectedPaper(
            self.paper_of_column[column], score, self.rank_of_column[column], True, matches, mixed
        )

    def _excluded(
        self, excludes: Sequence[tuple[str, ...]]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        """(a mask number per subscriber, a mask of the excluded columns per number)."""
        numbers: dict[tuple[str, ...], int] = {(): 0}
        which = np.fromiter(
            (numbers.setdefault(e, len(numbers)) for e in excludes), np.intp, len(excludes)
        )
        masks = np.zeros((len(numbers), len(self.papers)), dtype=bool)
        for terms, n in numbers.items():
            hit = self.scorer.excluded(terms)
            masks[n] = [i in hit for i in self.papers]
        return which, masks

    def _seen(
        self, seen: Sequence[AbstractSet[str]] | None
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """(subscriber, column) of each listed paper a subscriber has seen, by subscriber."""
        at: list[int] = []
        columns: list[int] = []
        column_of = self.column_of
        for n, ids in enumerate(seen or ()):
            if not ids:
                continue
            if len(ids) < len(column_of):
                found = [column_of[p] for p in ids if p in column_of]
            else:
                found = [c for p, c in column_of.items() if p in ids]
            at += [n] * len(found)
            columns += found
        return np.array(at, dtype=np.intp), np.array(columns, dtype=np.intp)


def _distinct(
    values: npt.NDArray[np.intp],
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """`np.unique(values, return_inverse=True)` of small non-negative integers, by marking
    them in a table of all the numbers up to the largest instead of sorting them."""
    if not len(values):
        return values, values
    if int(values.max()) > 16 * len(values) + 4096:  # a table that size would cost more
        found, at = np.unique(values, return_inverse=True)
        return found, at.reshape(values.shape)
    marked = np.zeros(int(values.max()) + 1, dtype=bool)
    marked[values] = True
    found = np.flatnonzero(marked)
    # Numbers written where they are needed only: a cumsum over the table is slower.
    number = np.empty(len(marked), dtype=np.int32)  # fewer than 2**31: at most 16x values
    number[found] = np.arange(len(found), dtype=np.int32)
    return found, number[values].astype(np.intp)


def _numbered(rows: npt.NDArray[np.integer]) -> npt.NDArray[np.intp]:
    """A number per distinct row of `rows` (0, 1, ...), for each row: `np.unique(axis=0)`
    without its sort of the rows as bytes."""
    if not len(rows):
        return np.zeros(0, dtype=np.intp)
    order = np.lexsort(rows.T[::-1])
    ordered = rows[order]
    new = np.zeros(len(rows), dtype=bool)
    new[0] = True
    new[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    numbers = np.empty(len(rows), dtype=np.intp)
    numbers[order] = np.cumsum(new) - 1
    return numbers


@functools.lru_cache(maxsize=4096)  # few distinct values, asked for per explanation
def _bits(bits: int) -> tuple[int, ...]:
    """The keyword groups set in `bits` (see `_Table`)."""
    return tuple(k for k in range(bits.bit_length()) if bits >> k & 1)


_Sent = tuple[int, float, tuple[TopicMatch, ...], str]  # (paper, score, matches, liked)


def _ranked(
    passing: Iterable[_Sent], rank_of: Mapping[int, int], paper_of: Mapping[int, Paper]
) -> list[SelectedPaper]:
    """The sent papers in digest order: by mixed score, then trending rank, then id (unique,
    so the sort never compares further)."""
    order = sorted(
        (-_mixed(score, rank_of[i]), rank_of[i], paper_of[i].id, i, score, matches, liked)
        for i, score, matches, liked in passing
    )
    return [
        SelectedPaper(paper_of[i], score, rank, True, matches, -mixed, liked=liked)
        for mixed, rank, _, i, score, matches, liked in order
    ]


def _sent_without_votes(
    scorer: _Scorer, queries: Sequence[_Query], exclude: tuple[str, ...], threshold: float
) -> list[_Sent]:
    """The papers some topic sends (cached per distinct topic), each with its best score and
    the sending topics' explanations, best first."""
    excluded = scorer.excluded(exclude)
    if len(queries) == 1:  # the common case, with nothing to merge
        sends = scorer.sends(queries[0], threshold)
        return [(i, score, (match,), "") for i, score, match in sends if i not in excluded]
    found: dict[int, list[tuple[float, int, TopicMatch]]] = {}
    for t, query in enumerate(queries):
        for i, score, match in scorer.sends(query, threshold):
            if i not in excluded:
                found.setdefault(i, []).append((-score, t, match))
    sent: list[_Sent] = []
    for i, f in found.items():
        if len(f) > 1:
            f.sort()  # best first (then in topic order)
        sent.append((i, -f[0][0], tuple(m for *_, m in f), ""))
    return sent


def _closest(
    scorer: _Scorer,
    queries: Sequence[_Query],
    exclude: tuple[str, ...],
    threshold: float,
    paper_of: Mapping[int, Paper],
    seen: AbstractSet[str],
) -> list[tuple[int, float, tuple[TopicMatch, ...], str]]:
    """The best CLOSEST papers of the listing no topic sends, not excluded, not seen."""
    excluded = scorer.excluded(exclude)
    best: dict[int, tuple[float, TopicMatch]] = {}
    for query in queries:
        for i, score, match in scorer.closest(query, threshold):
            fresh = i not in excluded and paper_of[i].id not in seen
            if fresh and score > best.get(i, (0.0, match))[0]:
                best[i] = (score, match)
    order = sorted(best, key=lambda i: (-best[i][0], paper_of[i].id))[:CLOSEST]
    return [(i, best[i][0], (best[i][1],), "") for i in order]


def _mixed(score: float, rank: int) -> float:
    """Relevance with a trending bonus that fades like DCG's position discount."""
    return score * _trend(rank)


def _trend(rank: int) -> float:
    """What `_mixed` multiplies a score by: 1.5 for trending rank 1, 1.25 for rank 3."""
    return 1.0 + TREND_BONUS / math.log2(max(rank, 1) + 1)
