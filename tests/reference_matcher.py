"""The matcher's results computed the straightforward way, for the equivalence tests.

A slow reference for `selection`'s fast paths (packed and vectorised sums, cached references,
bounds that skip work): every topic is scored over every stored paper with plain dicts, its
calibrated threshold always worked out, and each subscriber's results assembled from those
scores as the module docstring of `selection` describes. Only topic compilation (which terms a
topic has) and the reader model of `learning` are shared with the code under test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from newsletter.learning import NO_READER, Reader, Votes, learn
from newsletter.models import DailyListing, SelectedPaper, Subscriber, Topic
from newsletter.selection import (
    CLOSEST,
    GENERIC_SHARE,
    KEYWORD_DECAY,
    MIN_COLLECTION,
    REF_RANK,
    TERM_CAP,
    TREND_BONUS,
    Tuning,
    _content_terms,
)
from newsletter.textindex import K1, PaperIndex, Postings, soft_idf

FIXED = float(1 << 24)


@dataclass(frozen=True)
class Expected:
    """One paper in a subscriber's expected result."""

    id: str
    score: float
    sent: bool
    topics: tuple[str, ...]  # the explanations' topics, in order


def compile_topic(
    index: PaperIndex, topic: Topic
) -> tuple[tuple[tuple[str, ...], ...], tuple[str, ...]]:
    """(keyword groups, description terms) as `selection` compiles a topic."""
    groups: dict[tuple[tuple[str, ...], ...], list[str]] = {}
    for keyword in (k.strip() for k in topic.keywords):
        variants = index.variants(keyword)
        if variants and keyword not in groups.get(variants, ()):
            groups.setdefault(variants, []).append(keyword)
    weak: dict[tuple[tuple[str, ...], ...], str] = {}
    for text in (topic.description, *topic.keywords):
        for term in _content_terms(text):
            variants = index.variants(term)
            if variants and index.lookup(term).tf and variants not in groups:
                weak.setdefault(variants, term)
    return tuple(tuple(g) for g in groups.values()), tuple(weak.values())


def topic_scores(
    index: PaperIndex, topic: Topic, tuning: Tuning, keyword_weights: Sequence[float] = ()
) -> dict[int, float]:
    """paper index -> the topic's score, for every stored paper scoring above 0 (each keyword
    group's weight times `keyword_weights[group]` when given)."""
    keywords, weak_terms = compile_topic(index, topic)
    n = len(index.papers)
    specific = soft_idf(n, int(GENERIC_SHARE * n)) if n >= MIN_COLLECTION else 0.0

    def specificity(p: Postings) -> float:
        return min(1.0, p.soft_idf / specific) if specific else 1.0

    found = [index.lookup(g[0]) for g in keywords]
    most = max((specificity(p) for p in found if p.tf), default=1.0)
    hits: dict[int, list[tuple[float, int]]] = {}
    for k, postings in enumerate(found):
        times = keyword_weights[k] if keyword_weights else 1.0
        for i, tf in postings.tf.items():
            hits.setdefault(i, []).append((specificity(postings) * tf / most * times, k))
    keyword = {
        i: sum(w * KEYWORD_DECAY**r for r, (w, _) in enumerate(sorted(got, reverse=True)))
        for i, got in hits.items()
    }
    weak: dict[int, float] = {}
    idfs = [index.lookup(t).soft_idf for t in weak_terms]
    if idfs and tuning.description_weight > 0:
        full = max(specific, max(idfs))
        weight = tuning.description_weight
        best_possible = max(sum(idfs) * (K1 + 1), weight * full / TERM_CAP)
        lanes: dict[int, int] = {}
        for t in weak_terms:
            postings = index.lookup(t)
            for i, tf in postings.tf.items():
                lanes[i] = lanes.get(i, 0) + round(postings.soft_idf * tf * FIXED)
        weak = {i: weight / best_possible / FIXED * v for i, v in lanes.items() if v}
    return {i: keyword.get(i, 0.0) + weak.get(i, 0.0) for i in keyword.keys() | weak.keys()}


class Reference:
    """Scores and thresholds per topic over one index, each topic scored in full once."""

    def __init__(self, index: PaperIndex, threshold: float, tuning: Tuning) -> None:
        self.index, self.threshold, self.tuning = index, threshold, tuning
        self._scores: dict[Topic, dict[int, float]] = {}

    def scores(self, topic: Topic) -> dict[int, float]:
        if topic not in self._scores:
            self._scores[topic] = topic_scores(self.index, topic, self.tuning)
        return self._scores[topic]

    def voted_scores(self, topic: Topic, votes: Votes | None) -> dict[int, float]:
        """The topic's scores with its keywords weighted by the reader's votes."""
        if not votes:
            return self.scores(topic)
        return topic_scores(self.index, topic, self.tuning, self.keyword_weights(topic, votes))

    def keyword_weights(self, topic: Topic, votes: Votes) -> tuple[float, ...]:
        """(prior + up) / (prior + up + down) per keyword group, counting the voted papers each
        group matches (1 where no down-voted paper matched it)."""
        groups, _ = compile_topic(self.index, topic)
        prior = self.tuning.vote_prior
        out = []
        for group in groups:
            tf = self.index.lookup(group[0]).tf
            matched = [v for p, v in votes.items() if self.index.id_to_index.get(p) in tf]
            up, down = sum(1 for v in matched if v > 0), sum(1 for v in matched if v < 0)
            out.append((prior + up) / (prior + up + down) if down else 1.0)
        return tuple(out)

    def reference(self, topic: Topic) -> float:
        best = sorted((s for s in self.scores(topic).values() if s > 0), reverse=True)
        return best[:REF_RANK][-1] if best else 0.0

    def cut(self, topic: Topic) -> float:
        t = self.tuning
        return min(self.threshold, max(t.floor, t.relative * self.reference(topic)))

    def excluded(self, sub: Subscriber) -> set[int]:
        return {i for term in sub.exclude for i in self.index.lookup(term).exact}

    def reader(self, sub: Subscriber, votes: Votes | None) -> Reader:
        if not votes:
            return NO_READER
        voted = [self.index.id_to_index[p] for p in votes if p in self.index.id_to_index]
        margins = {i: -self.threshold for i in voted}
        for topic in sub.topics:
            scores, cut = self.scores(topic), self.cut(topic)
            for i in voted:
                margins[i] = max(margins[i], scores.get(i, 0.0) - cut)
        return learn(
            self.index,
            votes,
            weights=self.tuning.vote_weights(),
            margins=margins,
            threshold=self.threshold,
        )

    def rank_all(self, sub: Subscriber, votes: Votes | None = None) -> list[Expected]:
        """What `rank_all` returns: every paper scoring above 0, best first."""
        reader = self.reader(sub, votes)
        per_topic = [(t, self.voted_scores(t, votes), self.cut(t)) for t in sub.topics]
        excluded = self.excluded(sub)
        out: list[Expected] = []
        for i, paper in enumerate(self.index.papers):
            if i in excluded:
                continue
            ranked = sorted(
                ((s.get(i, 0.0), s.get(i, 0.0) - c, n) for n, (_, s, c) in enumerate(per_topic)),
                key=lambda x: (-x[0], x[2]),
            )
            best = ranked[0][0] if ranked else 0.0
            margin = max((m for _, m, _ in ranked), default=-self.threshold)
            if reader is NO_READER:
                change, send, unwanted = 0.0, 0.0, False
            else:
                lift = reader.adjust(i, self.index.vector(i))
                change, send, unwanted = lift.score, lift.send, lift.unwanted
            if best + change <= 0:
                continue
            sent = margin + send >= reader.shift and not unwanted
            shown = [x for x in ranked if x[1] >= 0] or [x for x in ranked[:1] if x[0] > 0]
            names = tuple(per_topic[n][0].name for _, _, n in shown)
            out.append(Expected(paper.id, best + change, sent, names))
        return sorted(out, key=lambda e: (-e.score, e.id))

    def select(
        self, listing: DailyListing, sub: Subscriber
    ) -> tuple[list[Expected], list[Expected]]:
        """What `select_for` picks without votes or history: (papers, near misses)."""
        rank_of: dict[int, int] = {}
        for entry in listing.entries:
            i = self.index.id_to_index[entry.paper.id]
            rank_of[i] = min(entry.rank, rank_of.get(i, entry.rank))
        excluded = self.excluded(sub)
        sends: dict[int, list[tuple[float, int, str]]] = {}
        closest: dict[int, tuple[float, str]] = {}
        for n, topic in enumerate(sub.topics):
            scores, cut = self.scores(topic), self.cut(topic)
            within = {i: s for i, s in scores.items() if i in rank_of}
            sent = {i for i, s in within.items() if s >= cut}
            for i in sent - excluded:
                sends.setdefault(i, []).append((-within[i], n, topic.name))
            rest = sorted((-s, i) for i, s in within.items() if i not in sent and s > 0)
            for s, i in rest[:CLOSEST]:
                if i not in excluded and -s > closest.get(i, (0.0, ""))[0]:
                    closest[i] = (-s, topic.name)
        papers = self.index.papers
        picked = [
            Expected(papers[i].id, -min(f)[0], True, tuple(name for *_, name in sorted(f)))
            for i, f in sends.items()
        ]
        picked.sort(
            key=lambda e: (
                -mixed(e.score, rank_of[self.index.id_to_index[e.id]]),
                rank_of[self.index.id_to_index[e.id]],
                e.id,
            )
        )
        near = sorted(closest, key=lambda i: (-closest[i][0], papers[i].id))[:CLOSEST]
        misses = [Expected(papers[i].id, closest[i][0], False, (closest[i][1],)) for i in near]
        if picked:
            return picked[: max(0, sub.max_papers)], []
        if sub.on_empty == "closest":
            return [
                Expected(m.id, m.score, True, m.topics) for m in misses[: max(0, sub.max_papers)]
            ], misses
        return [], misses


def mixed(score: float, rank: int) -> float:
    return score * (1.0 + TREND_BONUS / math.log2(max(rank, 1) + 1))


def as_expected(papers: Sequence[SelectedPaper]) -> list[Expected]:
    """What the code under test returned, in the form of the expectations."""
    return [
        Expected(sp.paper.id, sp.score, sp.sent, tuple(m.topic for m in sp.matches))
        for sp in papers
    ]


def same(got: Sequence[Expected], want: Sequence[Expected], tol: float = 1e-9) -> bool:
    """Same papers in the same order, same send decisions and explanations, scores within tol."""
    return len(got) == len(want) and all(
        g.id == w.id and g.sent == w.sent and g.topics == w.topics and abs(g.score - w.score) <= tol
        for g, w in zip(got, want, strict=True)
    )
