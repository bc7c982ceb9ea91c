"""A reader's votes applied to their scores, and the ranking of every paper for a subscriber."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from newsletter.learning import NO_READER, Lift, Reader, Votes, Weights, keyword_weights, learn
from newsletter.models import SelectedPaper, Subscriber, TopicMatch
from newsletter.selection.scoring import _Scorer, _Scores
from newsletter.selection.tuning import DEFAULT_TUNING, KEYWORD_DECAY, Tuning
from newsletter.textindex import PaperIndex


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
