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

Scale: each distinct term is matched once per index (`PaperIndex.lookup` is memoised), each
distinct query (keyword list and description terms) is scored once per edition (and over the
whole collection only when one of its papers falls between the floor and the global
threshold), its explanations are built once per distinct name, keywords and terms (a reworded
description often leaves them alike), and each subscriber merges a few short lists.
"""

from __future__ import annotations

import dataclasses
import gc
import heapq
import itertools
import math
import re
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
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
    vote_weight: float = 8.0  # score change per unit of likeness to the reader's liked papers
    vote_send_weight: float = 8.0  # ... and the change of its margin over the send threshold
    vote_contrast: float = 0.5  # share of the collection's centroid off the liked centroid
    vote_prior: float = 2.0  # up-votes a reader's own keyword counts for against down-votes
    vote_half: float = 4.0  # votes at which the likeness weights act at half strength
    vote_send_contrast: float = 0.5  # vote_contrast of the likeness that moves the send decision

    def vote_weights(self) -> Weights:
        return Weights(
            self.vote_weight,
            self.vote_send_weight,
            self.vote_contrast,
            self.vote_prior,
            self.vote_half,
            self.vote_send_contrast,
        )


DEFAULT_TUNING = Tuning()

Scored = dict[int, tuple[float, tuple[TopicMatch, ...]]]
_Vector = npt.NDArray[np.float64]  # one lane per slot (a row per term or keyword group)


# A query's scores depend on its keyword groups' first terms and its description terms only
# (not on the topic's name or on a group's other spellings): topics alike share them.
_Key = tuple[tuple[str, ...], tuple[str, ...]]


_Compiled = tuple[tuple[tuple[str, ...], ...], tuple[str, ...], _Key, int]  # _Query's fields


@dataclass(frozen=True, slots=True)
class _Query:
    """A topic compiled to index terms."""

    topic: Topic
    keywords: tuple[tuple[str, ...], ...]  # the user's terms as typed, synonyms grouped
    weak: tuple[str, ...]  # description terms and the words of multi-word keywords
    key: _Key  # what its scores depend on: each keyword group's first term, `weak`
    # What its explanations depend on too (the topic's name, `keywords`, `weak`), numbered per
    # scorer: topics that differ only in wording outside their terms share what they send.
    shown: int


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


class _Lanes(Generic[_D]):
    """Each term's weights over a scorer's slots, as the rows of one matrix (a row is filled
    by `fill` the first time its term is used; row 0 stays all zeros), so a topic's terms are
    gathered in one step."""

    def __init__(
        self, width: int, dtype: type[_D], fill: Callable[[str, npt.NDArray[_D]], None]
    ) -> None:
        self.matrix: npt.NDArray[_D] = np.zeros((16, width), dtype=dtype)
        self._fill = fill
        self._row_of: dict[str, int] = {}

    def row(self, term: str) -> int:
        found = self._row_of.get(term)
        if found is None:
            found = self._row_of[term] = len(self._row_of) + 1
            if found == len(self.matrix):  # full: double the capacity
                self.matrix = np.concatenate([self.matrix, np.zeros_like(self.matrix)])
            self._fill(term, self.matrix[found])
        return found


class _Scorer:
    """Scores topics against the papers `within` (None: all), caching per term and topic.

    Each term's weights are a vector with one lane per paper (slot); a topic's score is worked
    out for every slot at once. Description terms are summed as fixed-point integers, so their
    sum is exact and never depends on the order of the terms; keyword weights are sorted per
    slot and summed with their decay in rank order.
    """

    def __init__(
        self, index: PaperIndex, within: Collection[int] | None, tuning: Tuning = DEFAULT_TUNING
    ) -> None:
        self.index = index
        self.tuning = tuning
        self._full: _Scorer | None = None if within is not None else self
        self._thresholds: dict[tuple[Topic, float], float] = {}
        self._closest: dict[tuple[int, float], list[tuple[int, float, TopicMatch]]] = {}
        self.within = None if within is None else frozenset(within)
        self.slots = sorted(range(len(index.papers)) if self.within is None else self.within)
        self._slot_of = {i: n for n, i in enumerate(self.slots)}
        self._weights: dict[tuple[str, bool], dict[int, float]] = {}
        self._weak_parts: dict[tuple[str, ...], _Vector | None] = {}
        self._keyword_lanes = _Lanes(len(self.slots), np.float64, self._keyword_lane)
        self._weak_lanes = _Lanes(len(self.slots), np.int64, self._weak_lane)
        self._texts: dict[str, tuple[tuple[int, str], ...]] = {}
        self._variant_ids: dict[str, int | None] = {}
        self._text_ids: dict[str, int] = {}
        self._firsts: dict[str, dict[int, str]] = {}
        self._ids_of_evidence: dict[tuple[tuple[int, str], ...], int] = {}
        self._compiled: dict[tuple[str, tuple[str, ...], int], _Compiled] = {}
        self._ids_of_variants: dict[tuple[tuple[str, ...], ...], int] = {}
        self._queries: dict[Topic, _Query] = {}
        self._shown: dict[tuple[str, tuple[tuple[str, ...], ...], tuple[str, ...]], int] = {}
        self._passing: dict[tuple[_Key, float], _Passing] = {}
        self._sends: dict[tuple[int, float], list[tuple[int, float, TopicMatch]]] = {}
        # A subscriber's sent papers per (their topics' `shown`, exclude terms, threshold).
        self._ranked: dict[tuple[tuple[int, ...], tuple[str, ...], float], list[SelectedPaper]] = {}
        self._excluded: dict[tuple[str, ...], frozenset[int]] = {}
        self._hits: dict[tuple[str, int], tuple[bool, bool, tuple[tuple[int, str], ...]]] = {}
        self._specific: dict[str, float | None] = {}
        self._idfs: dict[str, float] = {}
        # The idf of a term in GENERIC_SHARE of the papers: specific enough for full weight
        # (0, meaning "no cap", with too few papers to tell).
        n = len(index.papers)
        self._specific_idf = soft_idf(n, int(GENERIC_SHARE * n)) if n >= MIN_COLLECTION else 0.0
        self._strong: dict[tuple[tuple[str, ...], int], tuple[str, ...]] = {}
        self._found: dict[tuple[tuple[str, ...], int], tuple[tuple[str, ...], ...]] = {}

    def compile(self, topic: Topic) -> _Query:
        cached = self._queries.get(topic)
        if cached is None:
            cached = self._queries[topic] = self._compile(topic)
        return cached

    def _compile(self, topic: Topic) -> _Query:
        # A query depends on the description only through its evidence, which rewordings
        # (another closing remark, a number) often leave as it was.
        key = (topic.name, topic.keywords, self._evidence_id(topic.description))
        found = self._compiled.get(key)
        if found is None:
            found = self._compiled[key] = self._compile_terms(topic)
        return _Query(topic, *found)

    def _compile_terms(self, topic: Topic) -> _Compiled:
        """A topic's keyword groups, description terms, key and `shown`."""
        # "offline RL" and "offline reinforcement learning" are one term once the index knows
        # the acronym: counting both would score every offline-RL paper twice.
        # Terms are told apart by the number of their variants (see `_variant_id`).
        groups: dict[int, list[str]] = {}
        for keyword in (k.strip() for k in topic.keywords):
            variants = self._variant_id(keyword)
            if variants is not None and keyword not in groups.get(variants, ()):
                groups.setdefault(variants, []).append(keyword)
        # Each variant's first term, in order, but for the keywords' own.
        weak = dict(self._first_terms(topic.description))
        for keyword in topic.keywords:
            for variants, term in self._first_terms(keyword).items():
                weak.setdefault(variants, term)
        for variants in groups:
            weak.pop(variants, None)
        keywords, terms = tuple(tuple(g) for g in groups.values()), tuple(weak.values())
        shown = self._shown.setdefault((topic.name, keywords, terms), len(self._shown))
        return keywords, terms, (tuple(g[0] for g in keywords), terms), shown

    def _first_terms(self, text: str) -> dict[int, str]:
        """Variant id -> first term of the evidence of `text`, in order (not to be changed)."""
        found = self._firsts.get(text)
        if found is None:
            found = self._firsts[text] = {}
            for variants, term in self._evidence(text):
                found.setdefault(variants, term)
        return found

    def _evidence_id(self, text: str) -> int:
        """A number for the evidence of `text`, equal for texts with equal evidence."""
        found = self._text_ids.get(text)
        if found is None:
            ids = self._ids_of_evidence
            found = self._text_ids[text] = ids.setdefault(self._evidence(text), len(ids))
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

    def _evidence(self, text: str) -> tuple[tuple[int, str], ...]:
        """(variant id, term) of the content terms of `text` that occur in the collection."""
        cached = self._texts.get(text)
        if cached is None:
            pieces = _PIECE_BREAK.split(text)
            if len(pieces) > 1:
                cached = tuple(itertools.chain.from_iterable(map(self._evidence, pieces)))
            else:
                terms = ((self._variant_id(t), t) for t in _content_terms(text))
                cached = tuple(
                    (v, t) for v, t in terms if v is not None and self.index.lookup(t).tf
                )
            self._texts[text] = cached
        return cached

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

    def _most_specific(self, firsts: tuple[str, ...]) -> float:
        # Specificity is relative to the topic's most specific keyword: a reader whose every
        # keyword is broad ("reinforcement learning") still gets their subject at full weight.
        found = (self._keyword_specificity(term) for term in firsts)
        return max((f for f in found if f is not None), default=1.0)

    def _keyword_specificity(self, term: str) -> float | None:
        """The keyword's specificity (None when no paper has it)."""
        if term not in self._specific:
            postings = self.index.lookup(term)
            self._specific[term] = self._specificity(postings) if postings.tf else None
        return self._specific[term]

    def _weak_scale(self, weak: tuple[str, ...]) -> float:
        """What a description's summed fixed-point weights are multiplied by (0: none)."""
        weight = self.tuning.description_weight
        if not weak or weight <= 0:
            return 0.0
        idfs = [self._soft_idf(t) for t in weak]
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
        scores, shape (query, slot)) of several queries in one pass.

        Per slot, a query's keyword weights are sorted, best first, and summed with their
        decay in that order; its description terms' fixed-point weights are summed as
        integers (exact, in any order) and scaled."""
        width = len(self.slots)
        keywords, weak = self._keyword_lanes, self._weak_lanes
        # Many queries share their keywords (or description): each distinct list is scored
        # once, then copied to its queries' rows.
        first_of: dict[tuple[str, ...], int] = {}
        which = [first_of.setdefault(q.key[0], len(first_of)) for q in queries]
        count = len(first_of)
        depth = max(map(len, first_of), default=0)
        pad = [0] * depth  # row 0 of the lanes is all zeros
        rows = np.array(
            [[keywords.row(t) for t in firsts] + pad[len(firsts) :] for firsts in first_of],
            dtype=np.intp,
        ).reshape(count, depth)
        most = np.array([self._most_specific(firsts) for firsts in first_of])
        groups = keywords.matrix[rows] / most[:, None, None]
        # A slot one keyword group matches scores that group's weight; only the (few) slots
        # where several match need their weights sorted.
        total = groups.max(axis=1) if depth else np.zeros((count, width))
        several_of, slot = np.nonzero((groups > 0).sum(axis=1) > 1)
        if len(several_of):
            ranked = np.sort(groups[several_of, :, slot], axis=1)[:, ::-1]  # best first
            several = ranked[:, 0]
            for r in range(1, depth):
                several = several + ranked[:, r] * KEYWORD_DECAY**r
            total[several_of, slot] = several
        groups, total = groups[which], total[which]
        # Each distinct description's part, kept by the scorer: a lane per query sharing it.
        parts = self._weak_parts
        missing = list(dict.fromkeys(q.weak for q in queries if q.weak not in parts))
        scales = [self._weak_scale(w) for w in missing]
        described = [w for w, scale in zip(missing, scales, strict=True) if scale]
        parts.update((w, None) for w, scale in zip(missing, scales, strict=True) if not scale)
        if described:
            terms = [[weak.row(t) for t in w] for w in described]
            starts = np.cumsum([0] + [len(t) for t in terms[:-1]])
            summed = np.add.reduceat(weak.matrix[[r for t in terms for r in t]], starts, axis=0)
            scaled = [scale for scale in scales if scale]
            part = np.array(scaled)[:, None] * summed.astype(np.float64)
            parts.update(zip(described, part, strict=True))
        lanes = [(n, parts[q.weak]) for n, q in enumerate(queries)]
        found = [(n, lane) for n, lane in lanes if lane is not None]
        if found:
            rows_with = [n for n, _ in found]
            total[rows_with] = total[rows_with] + np.array([lane for _, lane in found])
        return groups, total

    def _vectors(self, query: _Query) -> tuple[_Vector, _Vector]:
        """(each keyword group's weight per slot, each slot's score)."""
        groups, total = self._batch([query])
        return groups[0, : len(query.keywords)], total[0]

    def _chunks(self, queries: Sequence[_Query]) -> Iterable[Sequence[_Query]]:
        """`queries` in runs small enough that their terms' lanes fit in BATCH_CELLS."""
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
            self._full = _Scorer(self.index, None, self.tuning)
            self._full._texts = self._texts  # compiled descriptions do not depend on `within`
            self._full._variant_ids = self._variant_ids
            self._full._text_ids = self._text_ids
            self._full._firsts = self._firsts
            self._full._ids_of_evidence = self._ids_of_evidence
            self._full._compiled = self._compiled
            self._full._ids_of_variants = self._ids_of_variants
            self._full._queries = self._queries
            self._full._shown = self._shown
        return self._full

    def references(self, queries: Sequence[_Query]) -> list[float]:
        """Each query's own scale: its REF_RANK-th best score over the whole collection (kept
        per index, see _REFERENCES)."""
        memo = _REFERENCES.setdefault(self.index, {})
        weight = self.tuning.description_weight
        missing = sorted(
            {q.key: q for q in queries if (weight, q.key) not in memo}.values(),
            key=lambda q: q.key,
        )
        full = self.full()
        for chunk in full._chunks(missing):
            _, total = full._batch(chunk)
            for query, best in zip(chunk, _nth_best(total, REF_RANK), strict=True):
                memo[weight, query.key] = best
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

    def prepare(self, compiled: Iterable[_Query], threshold: float) -> None:
        """Work out which papers each distinct query among `compiled` sends, all at once."""
        queries = {}
        for query in compiled:
            if (query.key, threshold) not in self._passing:
                queries[query.key] = query
        # In key order, so queries sharing keywords fall in one chunk (see `_batch`).
        for chunk in self._chunks(sorted(queries.values(), key=lambda q: q.key)):
            self._prepare(chunk, threshold)

    def _prepare(self, queries: Sequence[_Query], threshold: float) -> None:
        """Which papers each query sends. The calibrated threshold is only worked out when it
        matters: when a paper scores between the floor and the global threshold, and could
        reach `relative` x the query's reference. Scores here are a subset of the whole
        collection's, so their REF_RANK-th best is a lower bound of the reference: papers
        below `relative` x that bound fail whatever the reference."""
        groups, total = self._batch(queries)
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
            references = self.references([queries[n] for n in needed])
            for n, reference in zip(needed, references, strict=True):
                cuts[n] = calibrated_threshold(threshold, reference, self.tuning)
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
        if cached is None:
            groups, total = self._vectors(query)
            sent = {i for i, _, _ in self._passing_papers(query, threshold)}
            rest = (
                (-s, n) for n, s in enumerate(total.tolist()) if s > 0 and self.slots[n] not in sent
            )
            best = heapq.nsmallest(CLOSEST, rest)  # slots are in paper order: ties as papers
            cached = [
                (self.slots[n], -s, self.match(query, self.slots[n], _matched(groups, n), -s))
                for s, n in best
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
    counts = (scores > 0).sum(axis=1).tolist()
    n = min(n, scores.shape[1])
    if not n:
        return [0.0] * len(counts)
    best = -np.partition(-np.where(scores > 0, scores, 0.0), range(n), axis=1)[:, :n]
    return [float(best[row, min(n, c) - 1]) if c else 0.0 for row, c in enumerate(counts)]


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


def _reader(scorer: _Scorer, sub: Subscriber, threshold: float, votes: Votes | None) -> Reader:
    """What this subscriber's own votes teach (NO_READER without votes)."""
    if not votes:
        return NO_READER
    full = scorer.full()
    voted = [full.index.id_to_index[p] for p in votes if p in full.index.id_to_index]
    margins = {i: -threshold for i in voted}
    for topic in sub.topics:
        scores, cut = full.scores(topic), full.threshold_for(topic, threshold)
        for i in voted:
            margins[i] = max(margins[i], scores.score(i) - cut)
    weights = scorer.tuning.vote_weights()
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
    scorer = _Scorer(index, None, tuning)
    reader = _reader(scorer, subscriber, threshold, votes)
    judged = _judge(scorer, subscriber, threshold, reader)
    order = sorted(judged, key=lambda i: (-judged[i].score, index.papers[i].id))
    return [
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
) -> list[Selection]:
    missing = [e.paper.id for e in listing.entries if e.paper.id not in index.id_to_index]
    if missing:
        raise ValueError(f"listing papers missing from the index (rebuild it): {missing[:5]}")
    rank_of: dict[int, int] = {}
    paper_of: dict[int, Paper] = {}
    for entry in listing.entries:
        i = index.id_to_index[entry.paper.id]
        if entry.rank < rank_of.get(i, entry.rank + 1):
            rank_of[i], paper_of[i] = entry.rank, entry.paper
    scorer = _Scorer(index, rank_of, tuning)
    keys = [address_key(sub.email) for sub in subscribers]
    # Every distinct topic scored at once (readers with votes are judged one by one).
    compiled = [
        None if votes.get(k) else [scorer.compile(t) for t in s.topics]
        for s, k in zip(subscribers, keys, strict=True)
    ]
    scorer.prepare((q for queries in compiled if queries for q in queries), threshold)
    selections = []
    for sub, key, queries in zip(subscribers, keys, compiled, strict=True):
        seen = history.get(key, frozenset())
        if queries is None:  # a reader with votes
            reader = _reader(scorer, sub, threshold, votes[key])
            judged = _judge(scorer, sub, threshold, reader)
            sent = ((i, v.score, v.matches, v.liked) for i, v in judged.items() if v.sent)
            ranked = _ranked(sent, rank_of, paper_of)
            near = [
                (i, v.score, v.matches, v.liked)
                for i, v in sorted(judged.items(), key=lambda iv: (-iv[1].score, iv[0]))
                if not v.sent and paper_of[i].id not in seen
            ][:CLOSEST]
        else:
            # Subscribers whose topics send alike share their ranked papers.
            shown = tuple(q.shown for q in queries)
            cached = scorer._ranked.get((shown, sub.exclude, threshold))
            if cached is None:
                passing = _sent_without_votes(scorer, queries, sub.exclude, threshold)
                cached = _ranked(passing, rank_of, paper_of)
                scorer._ranked[shown, sub.exclude, threshold] = cached
            ranked = cached
            near = (
                [] if ranked else _closest(scorer, queries, sub.exclude, threshold, paper_of, seen)
            )
        fresh = (sp for sp in ranked if sp.paper.id not in seen) if seen else iter(ranked)
        picked = tuple(itertools.islice(fresh, max(0, sub.max_papers)))
        misses: tuple[SelectedPaper, ...] = ()
        if not ranked:
            misses = tuple(
                SelectedPaper(
                    paper_of[i], s, rank_of[i], False, m, _mixed(s, rank_of[i]), liked=liked
                )
                for i, s, m, liked in near
            )
            if sub.on_empty == "closest":
                picked = tuple(
                    dataclasses.replace(sp, sent=True, near_miss=True)
                    for sp in misses[: max(0, sub.max_papers)]
                )
        selections.append(Selection(sub, listing.date, picked, misses))
    return selections


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
    return score * (1.0 + TREND_BONUS / math.log2(max(rank, 1) + 1))
