"""Scoring compiled topics against the papers, the per-topic reference and threshold."""

from __future__ import annotations

import functools
import heapq
import math
import operator
import weakref
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

import numpy as np
import numpy.typing as npt

from newsletter.models import SelectedPaper, Subscriber, Topic, TopicMatch
from newsletter.selection.compile import _MAX_GROUPS, _first_seen, _Key, _Query, _Topics
from newsletter.selection.tuning import (
    _FIXED,
    BATCH_CELLS,
    CLOSEST,
    DEFAULT_TUNING,
    GENERIC_SHARE,
    KEYWORD_DECAY,
    MIN_COLLECTION,
    REF_RANK,
    TERM_CAP,
    WHOLE_PASS,
    Tuning,
)
from newsletter.textindex import K1, PaperIndex, Postings, soft_idf

Scored = dict[int, tuple[float, tuple[TopicMatch, ...]]]


_Vector = npt.NDArray[np.float64]  # one lane per slot (a row per term or keyword group)


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


_KEYWORDS, _FIRSTS_ID = operator.attrgetter("keywords"), operator.attrgetter("firsts_id")


_WEAK_ID = operator.attrgetter("weak_id")


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


# The narrowest signed integer holding the bits of each number of keyword groups (up to 62).
_BITS = [
    np.dtype(np.int8 if g < 8 else np.int16 if g < 16 else np.int32 if g < 32 else np.int64)
    for g in range(_MAX_GROUPS + 1)
]


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
        # As narrow an integer as the widest keyword list allows: a new table's memory costs
        # a page fault per page first written, and most lists have a few keywords.
        self.bits: npt.NDArray[np.signedinteger] = np.zeros((1, len(columns)), dtype=np.int8)

    def reserve(self, rows: int, groups: int) -> None:
        """Room for `rows` more rows of at most `groups` keyword groups (filled in chunks by
        `add`, without copying the table once per chunk)."""
        used = len(self.row_of) + 1
        dtype = np.promote_types(self.bits.dtype, _BITS[min(groups, _MAX_GROUPS)])
        if used + rows > len(self.total) or dtype != self.bits.dtype:
            # Left unset: `add` writes every reserved row before any is read.
            size = max(used + rows, len(self.total))
            total = np.empty((size, self.total.shape[1]))
            cuts = np.empty(size)
            bits = np.empty((size, self.bits.shape[1]), dtype=dtype)
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
        end = start + len(keys)
        self.row_of.update(zip(keys, range(start, end), strict=True))
        depth = min(hits.shape[1], _MAX_GROUPS)
        weights = np.left_shift(np.int64(1), np.arange(depth, dtype=np.int64))
        hit = hits[:, :depth].astype(np.int64)
        self.total[start:end] = total[np.ix_(alike, slots)]
        self.cuts[start:end] = cuts[alike]
        self.bits[start:end] = np.einsum("ngs,g->ns", hit, weights)[which].astype(self.bits.dtype)


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
        firsts = np.fromiter(map(_FIRSTS_ID, queries), dtype=np.intp, count=len(queries))
        first, which = _first_seen(firsts)
        lists = list(map(queries.__getitem__, first.tolist()))
        return self._lane_rows([q.key[0] for q in lists]), which, lists

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

    def _keyword_sets(self, queries: Iterable[_Query]) -> list[int]:
        """`_keyword_set` of each query."""
        queries = list(queries)
        found = list(map(self._set_of_firsts.get, map(_FIRSTS_ID, queries)))
        if None in found:  # new ones: numbered (the others were read in C)
            pairs = zip(queries, found, strict=True)
            return [self._keyword_set(q) if n is None else n for q, n in pairs]
        return cast(list[int], found)

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
        for q, number in zip(queries, self._keyword_sets(queries), strict=True):
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
        queries = list(map(self.topics.query_of_shown.__getitem__, shown.tolist()))
        row_of = table.row_of
        missing = list({q.key_id: q for q in queries if q.key_id not in row_of}.values())
        table.reserve(len(missing), max(map(len, map(_KEYWORDS, missing)), default=0))
        # While the stored papers are few times the listed ones, scored over the whole
        # collection in one pass, which the references need of most queries anyway, the
        # listing's slots taken from it (a paper's score does not depend on which others a
        # scorer holds); past that, the listing first, and the rest only for the queries
        # whose references matter. By set of keywords, so queries sharing theirs fall in
        # one chunk (see `_totals`).
        sets = self._keyword_sets(missing)
        by = np.argsort(np.array(sets, dtype=np.intp), kind="stable").tolist()
        order = [missing[n] for n in by]
        set_order = [sets[n] for n in by]
        if len(self.index.papers) > WHOLE_PASS * len(self.slots):
            for chunk, chunk_sets in zip(self._chunks(order), self._chunks(set_order), strict=True):
                distinct, at = self._alike(chunk, chunk_sets)
                total = self._totals(distinct)
                cuts = self._cuts(distinct, total, threshold)
                hits, which = self._hits_of(chunk, table.columns)
                keys = [q.key_id for q in chunk]
                table.add(keys, total, cuts, at, hits, which, table.columns)
        else:
            full = self.full()
            listed = np.array(self.slots, dtype=np.intp)  # the full scorer's slots are papers
            slots = listed[table.columns]
            for chunk, chunk_sets in zip(full._chunks(order), full._chunks(set_order), strict=True):
                distinct, at = self._alike(chunk, chunk_sets)
                whole = full._totals(distinct)
                cuts = self._cuts(distinct, whole[:, listed], threshold, whole)
                hits, which = full._hits_of(chunk, slots)
                table.add([q.key_id for q in chunk], whole, cuts, at, hits, which, slots)
        keys = [q.key_id for q in queries]
        return table, np.fromiter(map(row_of.__getitem__, keys), dtype=np.intp, count=len(keys))

    def _alike(
        self, queries: Sequence[_Query], sets: Sequence[int]
    ) -> tuple[list[_Query], npt.NDArray[np.intp]]:
        """(a query for each distinct score: queries with the same set of keywords (`sets`,
        their `_keyword_set`) and the same description part score alike, see `_totals`; the
        one of each query)."""
        weak = np.fromiter(map(_WEAK_ID, queries), dtype=np.intp, count=len(queries))
        if not len(weak):
            return [], weak
        first, at = _first_seen(np.array(sets, dtype=np.intp) * (int(weak.max()) + 1) + weak)
        return list(map(queries.__getitem__, first.tolist())), at

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
        terms, in_title, in_abstract, highlights = self.explained(query, i, matched)
        return TopicMatch(query.topic.name, terms, in_title, in_abstract, highlights, score)

    def explained(
        self, query: _Query, i: int, matched: tuple[int, ...]
    ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """`match`'s terms, in_title, in_abstract and highlights."""
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
        return terms, in_title, in_abstract, highlights

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


@functools.lru_cache(maxsize=4096)  # few distinct values, asked for per explanation
def _bits(bits: int) -> tuple[int, ...]:
    """The keyword groups set in `bits` (see `_Table`)."""
    return tuple(k for k in range(bits.bit_length()) if bits >> k & 1)
