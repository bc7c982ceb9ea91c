"""Learning from one reader's votes: Rocchio term weights and a per-reader send threshold.

A reader's votes (paper id -> +1 up / -1 down) change only that reader's results:
- Rocchio (1971) on tf-idf paper vectors: the centroid of the papers they liked pulls similar
  papers up, the centroid of the papers they voted down pushes similar ones (near-duplicates
  most) down. A paper's score moves by `weight * (cos(paper, liked) - cos(paper, disliked))`,
  and the explanation names the liked paper it is most like;
- the reader's send threshold rises to the cut that best separates their up-voted papers
  (which they wanted) from their down-voted ones (which they did not), judged on the scores
  without votes, shrunk halfway towards no change and bounded, so a few votes nudge it and
  never flip it. It only rises: papers a reader had to find themselves lift similar papers
  through Rocchio instead of lowering the bar for everything (in the simulated-reader
  evaluation, lowering it sent more partly relevant papers and cost precision).
Everything here is pure; `selection.py` feeds it the scores and applies the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from newsletter.textindex import PaperIndex

Votes = Mapping[str, int]  # paper id -> +1 (up) | -1 (down); other values are ignored

SHRINK = 0.5  # the threshold moves half the way to the cut the votes suggest
MAX_SHIFT = 0.4  # ... and never by more than this share of the threshold
EXPLAIN_MIN = 0.1
BASELINE_SAMPLE = 512  # stored papers (evenly spaced) that the mean likeness is taken over  # a lift smaller than this is not worth naming a liked paper for


def _centroid(vectors: Sequence[Mapping[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for vec in vectors:
        for k, w in vec.items():
            total[k] = total.get(k, 0.0) + w
    norm = math.sqrt(sum(w * w for w in total.values())) or 1.0
    return {k: w / norm for k, w in total.items()}


def _dot(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(w * b.get(k, 0.0) for k, w in a.items())


@dataclass(frozen=True, slots=True)
class Reader:
    """What one reader's votes teach: score changes and a threshold shift."""

    liked: tuple[tuple[str, Mapping[str, float]], ...]  # (title, vector) of each up-voted paper
    up: Mapping[str, float]  # centroid of the up-voted papers ({} when none)
    down: Mapping[str, float]  # centroid of the down-voted papers ({} when none)
    weight: float
    shift: float  # added to the reader's send threshold (negative: sends more)
    baseline: float = 0.0  # the mean of (up - down) likeness over the collection
    vetoed: frozenset[int] = frozenset()  # papers the reader voted down: never sent to them

    def adjust(self, vector: Mapping[str, float]) -> tuple[float, str]:
        """(score change, title of the liked paper this one is most like, or ""). The change
        is centred on the collection's mean likeness: a paper more like the liked papers
        than the typical stored paper rises, one less like them sinks."""
        up = _dot(vector, self.up) if self.up else 0.0
        down = _dot(vector, self.down) if self.down else 0.0
        change = self.weight * (up - down - self.baseline)
        because = ""
        if self.weight * up >= EXPLAIN_MIN and self.liked:
            because = max(self.liked, key=lambda tv: (_dot(vector, tv[1]), tv[0]))[0]
        return change, because


NO_READER = Reader((), {}, {}, 0.0, 0.0)


def threshold_shift(margins: Sequence[tuple[float, int]], threshold: float) -> float:
    """The shift of the send threshold that best separates the votes, shrunk and bounded.

    `margins` are (score - threshold, vote) of the voted papers, scored without votes. A cut
    at c sends a paper when margin >= c; the best cut makes fewest mistakes (an up-voted paper
    below it, a down-voted one at or above it), ties going to the cut nearest 0.
    """
    if not margins:
        return 0.0
    bound = MAX_SHIFT * threshold
    edges = sorted({0.0, *(m for m, _ in margins), *(m + 1e-6 for m, _ in margins)})
    cuts = [c for c in edges if 0.0 <= c <= bound] or [0.0]

    def mistakes(cut: float) -> int:
        return sum(1 for m, v in margins if (v > 0 and m < cut) or (v < 0 and m >= cut))

    best = min(cuts, key=lambda c: (mistakes(c), abs(c)))
    return SHRINK * best


def learn(
    index: PaperIndex,
    votes: Votes,
    *,
    weight: float,
    margins: Mapping[int, float],
    threshold: float,
) -> Reader:
    """A reader model from their votes. `margins`: paper index -> (score without votes) minus
    (that reader's send threshold for it), for the voted papers in the index."""
    ups = sorted(index.id_to_index[p] for p, v in votes.items() if v > 0 and p in index.id_to_index)
    downs = sorted(
        index.id_to_index[p] for p, v in votes.items() if v < 0 and p in index.id_to_index
    )
    if not ups and not downs:
        return NO_READER
    liked = tuple((index.papers[i].title, index.vector(i)) for i in ups)
    up = _centroid([index.vector(i) for i in ups]) if ups else {}
    down = _centroid([index.vector(i) for i in downs]) if downs else {}
    voted = [(margins[i], 1) for i in ups if i in margins]
    voted += [(margins[i], -1) for i in downs if i in margins]
    sample = range(0, len(index.papers), max(1, len(index.papers) // BASELINE_SAMPLE))
    likeness = [_dot(index.vector(i), up) - _dot(index.vector(i), down) for i in sample]
    baseline = sum(likeness) / len(likeness) if likeness else 0.0
    shift = threshold_shift(voted, threshold)
    return Reader(liked, up, down, weight, shift, baseline, vetoed=frozenset(downs))
