"""Choose each subscriber's papers for one edition, each with the reason it was chosen.

A paper's score for one topic (term matching and BM25F live in `textindex`):
- keywords: each of the user's terms is matched as a phrase and weighted by BM25F's saturated
  term frequency (title boosted, length-normalised against the collection). The matching
  keywords' weights are sorted and summed with a geometric decay, so a second keyword adds half
  of what the first did and no topic scores more than twice its best keyword: the score does
  not grow with the length of the list, which keeps one global threshold fair to a user with
  two keywords and to one with ten;
- description: its content words, hyphenated compounds and adjacent pairs ("count bonuses"),
  plus the words inside multi-word keywords, as a BM25 bag of words (with idf, as free text
  needs), normalised to the share of the best score a paper could reach on them and weighted so
  that description words alone rarely reach the threshold;
- exclude terms are a hard filter.
A subscriber's score for a paper is their best topic's. A paper is sent when it reaches the
global threshold; the sent papers are ordered by score with a bonus for the day's trending rank.

Scale: each distinct term is matched once per index (`PaperIndex.lookup` is memoised), each
distinct topic is scored once per edition, and each subscriber merges a few short lists.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from newsletter.addresses import address_key
from newsletter.models import (
    DailyListing,
    Paper,
    SelectedPaper,
    Selection,
    Subscriber,
    Topic,
    TopicMatch,
)
from newsletter.textindex import K1, STOPWORDS, PaperIndex, Token, tokenize

__all__ = ["PaperIndex", "rank_all", "score_papers", "select_for"]

KEYWORD_DECAY = 0.5
# A paper scoring on every description term as high as BM25 allows would add WEAK_WEIGHT; papers
# on the topic cover 15-30% of that, so the description adds about what a title mention does.
WEAK_WEIGHT = 8.0
TERM_CAP = 0.5  # a description term counts at most half as much as the same word as a keyword
TREND_BONUS = 0.5  # trending rank 1 multiplies the score by 1.5, rank 3 by 1.25 (DCG discount)
_FIXED = float(1 << 24)  # fixed-point scale of the packed description weights

Scored = dict[int, tuple[float, tuple[TopicMatch, ...]]]


@dataclass(frozen=True, slots=True)
class _Query:
    """A topic compiled to index terms."""

    topic: Topic
    keywords: tuple[tuple[str, ...], ...]  # the user's terms as typed, synonyms grouped
    weak: tuple[str, ...]  # description terms and the words of multi-word keywords


def _content_terms(text: str) -> tuple[str, ...]:
    """Content words of free text, a hyphenated compound ("self-play") as one term, and each
    pair of adjacent content terms ("count bonuses"), which is evidence beyond its words."""
    units: list[list[Token]] = []
    for tok in tokenize(text):
        if tok.hyphen_before and units:
            units[-1].append(tok)
        else:
            units.append([tok])
    terms: list[str] = []
    prev: list[Token] | None = None
    for unit in units:
        term = text[unit[0].start : unit[-1].end]
        content = len(unit) > 1 or (
            len(term) > 1 and term.isalpha() and term.lower() not in STOPWORDS
        )
        if content:
            terms.append(term)
            if prev and not text[prev[-1].end : unit[0].start].strip():
                terms.append(text[prev[0].start : unit[-1].end])
        prev = unit if content else None
    return tuple(terms)


@dataclass(frozen=True, slots=True)
class _Scores:
    """One topic over the papers: score(i) = keyword[i] + weak[i]."""

    query: _Query
    keyword: dict[int, float]  # the matching keyword groups' weights, decayed
    matched: dict[int, tuple[int, ...]]  # which keyword groups matched
    weak: dict[int, float]  # the description's share of the best possible BM25, weighted

    def score(self, i: int) -> float:
        return self.keyword.get(i, 0.0) + self.weak.get(i, 0.0)

    def papers(self) -> set[int]:
        return self.keyword.keys() | self.weak.keys()


class _Scorer:
    """Scores topics against the papers `within` (None: all), caching per term and topic.

    Description terms are summed as packed vectors: each term's weights over the papers are
    one big integer with a 64-bit fixed-point lane per paper, so adding a term to a topic is
    one integer addition instead of a dict update per paper it occurs in. Integer sums are
    also exact, so a score never depends on the order of the terms.
    """

    def __init__(self, index: PaperIndex, within: Collection[int] | None) -> None:
        self.index = index
        self.within = None if within is None else frozenset(within)
        self.slots = sorted(range(len(index.papers)) if self.within is None else self.within)
        self._slot_of = {i: n for n, i in enumerate(self.slots)}
        self._weights: dict[tuple[str, bool], dict[int, float]] = {}
        self._packed: dict[str, int] = {}
        self._texts: dict[str, tuple[tuple[tuple[tuple[str, ...], ...], str], ...]] = {}
        self._sends: dict[tuple[Topic, float], list[tuple[int, float, TopicMatch]]] = {}
        self._excluded: dict[tuple[str, ...], frozenset[int]] = {}
        self._hits: dict[tuple[str, int], tuple[bool, bool, tuple[tuple[int, str], ...]]] = {}

    def compile(self, topic: Topic) -> _Query:
        # "offline RL" and "offline reinforcement learning" are one term once the index knows
        # the acronym: counting both would score every offline-RL paper twice.
        groups: dict[tuple[tuple[str, ...], ...], list[str]] = {}
        for keyword in (k.strip() for k in topic.keywords):
            variants = self.index.variants(keyword)
            if variants and keyword not in groups.get(variants, ()):
                groups.setdefault(variants, []).append(keyword)
        weak: dict[tuple[tuple[str, ...], ...], str] = {}
        for text in (topic.description, *topic.keywords):
            for variants, term in self._evidence(text):
                if variants not in groups:
                    weak.setdefault(variants, term)
        return _Query(topic, tuple(tuple(g) for g in groups.values()), tuple(weak.values()))

    def _evidence(self, text: str) -> tuple[tuple[tuple[tuple[str, ...], ...], str], ...]:
        """(variants, term) of the content terms of `text` that carry evidence: a term in
        half the papers or more has none (and would cost the most to sum)."""
        cached = self._texts.get(text)
        if cached is None:
            found = ((self.index.variants(t), t) for t in _content_terms(text))
            cached = tuple((v, t) for v, t in found if v and self.index.lookup(t).idf > 0)
            self._texts[text] = cached
        return cached

    def weights(self, term: str, keyword: bool) -> dict[int, float]:
        """Weight of `term` per paper: BM25F's saturated tf, times idf for description terms
        only. The user chose a keyword, so its rarity says nothing about how much they want it
        (and leaving idf out keeps a keyword's scale independent of the collection's size);
        description words are free text, where idf tells "bonuses" from "problems"."""
        cached = self._weights.get((term, keyword))
        if cached is None:
            postings = self.index.lookup(term)
            idf, tf = 1.0 if keyword else postings.idf, postings.tf
            if self.within is None:
                cached = {i: idf * t for i, t in tf.items()}
            elif len(self.within) < len(tf):
                cached = {i: idf * tf[i] for i in self.within if i in tf}
            else:
                cached = {i: idf * t for i, t in tf.items() if i in self.within}
            self._weights[term, keyword] = cached
        return cached

    def _packed_weights(self, term: str) -> int:
        cached = self._packed.get(term)
        if cached is None:
            lanes = array("Q", bytes(8 * len(self.slots)))
            for i, w in self.weights(term, keyword=False).items():
                lanes[self._slot_of[i]] = round(w * _FIXED)
            cached = self._packed[term] = int.from_bytes(lanes.tobytes(), sys.byteorder)
        return cached

    def scores(self, topic: Topic) -> _Scores:
        query = self.compile(topic)
        weak: dict[int, float] = {}
        idfs = [self.index.lookup(t).idf for t in query.weak]
        if idfs:
            # The share of the best score a paper could reach on these terms; with a short
            # description that share is capped so one term counts at most TERM_CAP of a keyword.
            best_possible = max(sum(idfs) * (K1 + 1), WEAK_WEIGHT * max(idfs) / TERM_CAP)
            total = sum(self._packed_weights(t) for t in query.weak)
            lanes = array("Q", total.to_bytes(8 * len(self.slots), sys.byteorder))
            scale = WEAK_WEIGHT / best_possible / _FIXED
            weak = {self.slots[n]: scale * v for n, v in enumerate(lanes) if v}
        hits: dict[int, list[tuple[float, int]]] = {}
        for k, group in enumerate(query.keywords):
            for i, w in self.weights(group[0], keyword=True).items():
                hits.setdefault(i, []).append((w, k))
        keyword: dict[int, float] = {}
        matched: dict[int, tuple[int, ...]] = {}
        for i, found in hits.items():
            found.sort(reverse=True)
            keyword[i] = sum(w * KEYWORD_DECAY**n for n, (w, _) in enumerate(found))
            matched[i] = tuple(sorted(k for _, k in found))
        return _Scores(query, keyword, matched, weak)

    def sends(self, topic: Topic, threshold: float) -> list[tuple[int, float, TopicMatch]]:
        """(paper, score, explanation) for each paper this topic alone sends, computed once
        per distinct topic."""
        cached = self._sends.get((topic, threshold))
        if cached is None:
            scores = self.scores(topic)
            keyword, weak = scores.keyword, scores.weak
            total = {i: keyword.get(i, 0.0) + w for i, w in weak.items()}
            total.update((i, s) for i, s in keyword.items() if i not in weak)
            passing = sorted((i, s) for i, s in total.items() if s >= threshold)
            cached = [(i, s, self.match(scores, i)) for i, s in passing]
            self._sends[topic, threshold] = cached
        return cached

    def excluded(self, terms: tuple[str, ...]) -> frozenset[int]:
        cached = self._excluded.get(terms)
        if cached is None:
            # Exact occurrences only: a hard filter should not fire on a loose window match.
            cached = frozenset(i for t in terms for i in self.index.lookup(t).exact)
            self._excluded[terms] = cached
        return cached

    def match(self, scores: _Scores, i: int) -> TopicMatch:
        """Why paper i matched the topic: its keywords found, or else its strongest few
        description terms; where they were; the exact text of each occurrence."""
        query = scores.query
        terms = tuple(term for k in scores.matched.get(i, ()) for term in query.keywords[k])
        if not terms:
            weight = {t: self.weights(t, keyword=False).get(i, 0.0) for t in query.weak}
            strongest = sorted(query.weak, key=lambda t: -weight[t])
            terms = tuple(t for t in strongest[:3] if weight[t] > 0)
        hits = [self._hit(term, i) for term in terms]
        found = sorted(occurrence for hit in hits for occurrence in hit[2])
        return TopicMatch(
            topic=query.topic.name,
            terms=terms,
            in_title=tuple(t for t, hit in zip(terms, hits, strict=True) if hit[0]),
            in_abstract=tuple(t for t, hit in zip(terms, hits, strict=True) if hit[1]),
            highlights=tuple(dict.fromkeys(text for _, text in found)),
            score=scores.score(i),
        )

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


def score_papers(
    index: PaperIndex, subscriber: Subscriber, *, threshold: float = math.inf
) -> Scored:
    """paper index -> (score, explanations) for every paper in the index that scores above 0
    and no exclude term hits. The explanations are the topics reaching `threshold`, best
    first, or the best topic alone when none does."""
    scorer = _Scorer(index, None)
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
        out[i] = (ranked[0][0], tuple(scorer.match(per_topic[t], i) for _, t in shown))
    return out


def rank_all(
    index: PaperIndex, subscriber: Subscriber, *, threshold: float, limit: int | None = None
) -> list[SelectedPaper]:
    """Every paper with a score > 0, by relevance alone (no history, no max_papers): for
    previews and evaluation. `sent` tells whether the paper reaches the threshold."""
    scored = score_papers(index, subscriber, threshold=threshold)
    order = sorted(scored, key=lambda i: (-scored[i][0], index.papers[i].id))
    return [
        SelectedPaper(index.papers[i], scored[i][0], 0, scored[i][0] >= threshold, scored[i][1])
        for i in order[:limit]
    ]


def select_for(
    index: PaperIndex,
    listing: DailyListing,
    subscribers: Sequence[Subscriber],
    *,
    threshold: float,
    history: Mapping[str, AbstractSet[str]] | None = None,
) -> list[Selection]:
    """One Selection per subscriber, in order: the listing's papers reaching `threshold`,
    minus exclusions and papers in `history` (address key -> ids delivered in *other*
    editions, so a re-render keeps its content), best first, at most `max_papers` each."""
    missing = [e.paper.id for e in listing.entries if e.paper.id not in index.id_to_index]
    if missing:
        raise ValueError(f"listing papers missing from the index (rebuild it): {missing[:5]}")
    rank_of: dict[int, int] = {}
    paper_of: dict[int, Paper] = {}
    for entry in listing.entries:
        i = index.id_to_index[entry.paper.id]
        if entry.rank < rank_of.get(i, entry.rank + 1):
            rank_of[i], paper_of[i] = entry.rank, entry.paper
    scorer = _Scorer(index, rank_of)
    history = history or {}
    selections = []
    for sub in subscribers:
        seen = history.get(address_key(sub.email), frozenset())
        excluded = scorer.excluded(sub.exclude)
        found: dict[int, list[tuple[float, int, TopicMatch]]] = {}
        for t, topic in enumerate(sub.topics):
            for i, score, match in scorer.sends(topic, threshold):
                if i not in excluded and paper_of[i].id not in seen:
                    found.setdefault(i, []).append((-score, t, match))
        best = {i: -min(f)[0] for i, f in found.items()}
        order = sorted(
            best, key=lambda i: (-_mixed(best[i], rank_of[i]), rank_of[i], paper_of[i].id)
        )
        picked = tuple(
            SelectedPaper(
                paper_of[i], best[i], rank_of[i], True, tuple(m for *_, m in sorted(found[i]))
            )
            for i in order[: max(0, sub.max_papers)]
        )
        selections.append(Selection(sub, listing.date, picked))
    return selections


def _mixed(score: float, rank: int) -> float:
    """Relevance with a trending bonus that fades like DCG's position discount."""
    return score * (1.0 + TREND_BONUS / math.log2(max(rank, 1) + 1))
