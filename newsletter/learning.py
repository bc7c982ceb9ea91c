"""Learning from one reader's votes: Rocchio term weights and a per-reader send threshold.

A reader's votes (paper id -> +1 up / -1 down) change only that reader's results:
- Rocchio (1971) on tf-idf paper vectors, with the collection as the background: the liked
  centroid keeps each term of the papers they liked, less `contrast` x that term's weight in
  the collection's centroid, so what is distinctive of their likes (words that need not be in
  their profile) counts, and what every paper says does not; the disliked centroid likewise,
  so a paper sinks for what was distinctive of the papers they voted down, not for the words
  of the field it shares with the ones they wanted. A paper's likeness is
  `cos(paper, liked) - cos(paper, disliked)`, centred on the collection's mean likeness;
  its score moves by `weight` x that (the ranking). Its send decision moves by `send_weight`
  x its relative likeness, `cos(paper, liked) - send_contrast x cos(paper, collection)`
  over all its words (less the likeness to the disliked, centred the same way): how much
  more it is like the liked papers than like the average paper, as a likelihood ratio
  compares two models. Near the threshold, where the decision is made, a paper that is like
  the liked ones only as far as it is like every paper in the field is no evidence: in the
  simulated-reader evaluation, among papers within 0.8 of the threshold the relative
  likeness told the relevant ones apart with an AUC of 0.79, the plain likeness with 0.72
  (the score itself: 0.81). That move is bounded by MAX_SHIFT of the threshold, like the
  threshold's own shift, so likeness to a few papers nudges a decision and never overrules
  the topic's terms by much. A paper less like the liked ones than the typical stored paper
  moves by `sink` instead of `send_weight`: among the papers the simulated reader was sent
  without votes, only 2 of the 14 such were relevant (of the 146 more like them than most,
  125), so unlikeness sinks a paper faster than likeness lifts one (dev F1 gain of the votes,
  leave-one-profile-out: +0.033 -> +0.045, nDCG@10 -0.005 -> +0.016). Both weights grow
  with the number of votes (half strength at `half` votes): one liked paper's idiosyncratic
  words should not reorder everything.
  The explanation of a paper the votes lifted (in the ranking or towards being sent) names
  the liked paper it is most like;
- each of the reader's keywords is weighted by the votes on the papers it matched (a small
  per-reader model over the scorer's keyword features): its weight is the share of up-votes
  among those votes, counting the reader's own choice of the keyword as `prior` up-votes, so
  a keyword that sent papers they voted down (mentioning it in passing) counts less for them,
  one that also matched papers they liked keeps its weight, and votes never remove a keyword;
- a paper voted down is never sent to that reader again, nor is a near-duplicate of it
  (cosine at least NEAR_DUPLICATE: another version of the same paper);
- the reader's send threshold rises to the cut that best separates their up-voted papers
  (which they wanted) from their down-voted ones (which they did not), judged on the scores
  without votes, shrunk halfway towards no change and bounded, so a few votes nudge it and
  never flip it. It only rises: lowering it for up-votes below it sent more partly relevant
  papers and cost precision in the simulated-reader evaluation.
  A cut learnt per reader from their votes does not carry over: on the 14 development
  profiles, even the F1-best cut on one half's true grades, moved to the other half, lowers
  its F1 after votes (0.713 at the global cut; 0.699 / 0.668 / 0.629 at 1/4, 1/2, all of
  that cut); the best cut on the half scored (0.813) is mostly chance. So neither a cut
  placed between the up-votes and the down-votes plus the listings' unvoted papers (the
  votes' dev F1 gain +0.045 -> +0.008) nor a per-reader logistic model over margin and
  lift with a prior towards the global one (at most +0.003) is used.
  Other uses of the votes did not help (dev, both halves, F1 change of the votes with the shipped
  constants: +0.039). After votes, the 36 relevant papers still missed lie a median 0.97 below
  their threshold (6 score nothing: an exclude term, no shared word) with a median send lift
  of +0.17, and 20 of the 32 unwanted papers sent were sent without votes too (partly relevant
  papers nobody votes down). A send centroid of only the terms two liked papers share
  (related-term expansion), leave-one-profile-out: -0.023 chosen per half, -0.012 pooled; as a
  grid option beside the full centroid +0.036 (without it +0.045); BM25 on the 10-40 terms
  most enriched in the liked papers (with 3-5 of them that is "address", "propose"): at most
  +0.003 more, in-sample; up-votes raising the weight of the keywords their papers matched:
  +0.021 / +0.005 / -0.033 (passing mentions rise too); lowering the keywords no liked paper
  matched, an up weight growing with the share of missed up-votes, a sink centred on the liked
  papers' own likeness, idf-squared / binary / root-tf vectors, a wider or narrower bound:
  none above +0.042 in-sample. No sent paper had a cosine above 0.15 with a down-voted one, so
  a looser near-duplicate rule would change nothing.
  Tried later against the shipped constants (votes' F1 change on both halves, dev in-sample
  +0.039 with nDCG@10 +0.028, held-out +0.073; each as dev / held-out, on the grid as per-half /
  pooled leave-one-profile-out, against +0.045 / +0.026): the send move scaled by the topic's
  calibrated cut, its own scale (x cut / threshold: +0.039 / +0.039, grid +0.040 / +0.018; x 4
  cut x likeness: +0.042 / +0.047) or by the paper's score (at most +0.040 / +0.057), or taken
  relative to the up-voted papers' own likeness (at most +0.025 / +0.031); the likeness to the
  1-3 nearest liked papers instead of their centroid (grid -0.015 to +0.026 / +0.001 to +0.034,
  held-out +0.025 at most); the lift bounded by how far below the threshold the lowest up-voted
  paper was (+0.043 / +0.061, grid +0.039 / +0.018); the cut lowered towards the lowest up-voted
  paper for papers like the liked ones (at most +0.039, held-out up to +0.094, so nothing on dev
  to choose it by; ungated, -0.050 to +0.015); the description's weight raised by the share of
  up-votes no keyword matched (+0.038 at best, -0.026 at twice); sent papers left unvoted as
  mild dislikes (implicit feedback: +0.036 / +0.082 at a quarter, -0.010 at full weight: the
  partly relevant papers a reader leaves are as like their likes as the relevant ones); a
  per-reader logistic model over keyword score, description score and the votes' send move,
  prior on the shipped rule, unvoted papers of the listing as weak negatives (at most +0.025);
  the lift taken from the uncentred relative likeness less a global offset (its pooled AUC below
  the threshold is 0.82 against 0.76 centred, yet at most +0.040 / +0.053); likeness in a latent
  semantic space (truncated SVD of the collection's tf-idf, 10-80 dimensions) added to the send
  or the ranking likeness (at most +0.044 / +0.074, nDCG@10 +0.018 to +0.031); the reader's own
  description words weighted by how much more often their liked papers than the collection use
  them (+0.044 / +0.048 at best, nDCG@10 lower past that); the threshold's rise also counting
  the sent papers they left unvoted against it (+0.034 / +0.057; the rise itself is worth
  little: taken in full rather than halfway, +0.027); a per-reader kernel logistic model on the
  tf-idf vectors (up-votes against down-votes and, weakly, the other stored papers) in place of
  the send likeness (+0.012 to +0.020) or beside it (+0.039 to +0.041); the send likeness
  without the disliked centroid, whose part lowers its AUC among the papers each reader's votes
  may lift from 0.80 to 0.76 (+0.038 / +0.065; on the grid +0.034 / +0.026 with nDCG@10 +0.022);
  the likeness over adjacent-word pairs, alone or beside the words (+0.011 to +0.041, held-out
  -0.012 to +0.064).
  Even the best of the 576 grid points chosen for each reader and half on its own grades gains
  only +0.063, where right decisions on every paper within the bound of the threshold would gain
  +0.178: the likeness of bag-of-words vectors is the limit (the relevant papers still missed
  rank mostly far down by their similarity to the missed ones the reader up-voted), so the next
  lever is a representation that knows synonyms, not another weighting. Each profile's half has
  1-6 wrong decisions, one of which moves its F1 by ~0.05: the gains and losses sit in a few
  profiles (on the shipped constants, robot_learning +0.145 and llm_reasoning +0.300;
  exploration, multi_agent and reward_design -0.05 to -0.07 from partly relevant papers lifted
  just over the threshold), and most of the pooled estimate's gap to the in-sample one is one
  profile (diffusion_policies, +0.167 with the shipped constants, 0 with its own).
The weights, both contrasts, the sink weight, the prior and `half` are chosen leave-one-profile-out by
scripts/eval.py (the shipped defaults are its choice on all profiles).
Everything here is pure; the `selection` package feeds it the scores and applies the result.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from newsletter.textindex import PaperIndex

Votes = Mapping[str, int]  # paper id -> +1 (up) | -1 (down); other values are ignored

SHRINK = 0.5  # the threshold moves half the way to the cut the votes suggest
MAX_SHIFT = 0.4  # ... and never by more than this share of the threshold (nor does likeness)
EXPLAIN_MIN = 0.1  # a lift smaller than this is not worth naming a liked paper for
BASELINE_SAMPLE = 512  # stored papers (evenly spaced) the mean likeness is taken over
# Cosine from which a paper counts as another version of a voted one (the two most alike
# distinct papers of the bundled seeds have 0.49).
NEAR_DUPLICATE = 0.6

# The collection's centroid (over the same sample), per index: every reader's votes use it.
_BACKGROUND: weakref.WeakKeyDictionary[PaperIndex, dict[str, float]] = weakref.WeakKeyDictionary()
# Each set of votes' Likeness, per index: a reader's votes are judged again for every edition
# (and every weighting, in the evaluation). Started afresh past MAX_KEPT sets of votes.
_LIKENESS: weakref.WeakKeyDictionary[
    PaperIndex, dict[tuple[tuple[int, ...], tuple[int, ...], float, float | None], Likeness]
] = weakref.WeakKeyDictionary()
MAX_KEPT = 256


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


def _sample(index: PaperIndex) -> range:
    return range(0, len(index.papers), max(1, len(index.papers) // BASELINE_SAMPLE))


def background(index: PaperIndex) -> dict[str, float]:
    """The unit centroid of the stored papers (an even sample of them), computed once."""
    found = _BACKGROUND.get(index)
    if found is None:
        found = _BACKGROUND[index] = _centroid([index.vector(i) for i in _sample(index)])
    return found


def distinctive(
    liked: Sequence[Mapping[str, float]], collection: Mapping[str, float], contrast: float
) -> dict[str, float]:
    """Rocchio's liked centroid with the collection as the background: each term of the liked
    papers keeps its centroid weight less `contrast` x its weight in the collection's."""
    centre = _centroid(liked)
    return {k: w - contrast * collection.get(k, 0.0) for k, w in centre.items()}


@dataclass(frozen=True, slots=True)
class Lift:
    """What a reader's votes do to one paper."""

    score: float  # added to its score (the ranking)
    send: float  # added to its margin over the send threshold (within +-Reader.send_bound)
    unwanted: bool  # voted down, or a near-duplicate of a paper voted down: never sent
    because: str  # title of the liked paper it is most like, when that lifted it ("")


@dataclass(frozen=True, slots=True)
class Likeness:
    """What a reader's votes say of each paper before they are weighted: the same for every
    weighting of the same votes, so it is kept per index (see `_LIKENESS`) and each paper's
    part worked out once."""

    liked: tuple[tuple[str, Mapping[str, float]], ...]  # (title, vector) of each up-voted paper
    up: Mapping[str, float]  # distinctive centroid of the up-voted papers ({} when none)
    down: Mapping[str, float]  # distinctive centroid of the down-voted papers ({} when none)
    baseline: float = 0.0  # the mean of (up - down) likeness over the collection
    vetoed: frozenset[int] = frozenset()  # papers the reader voted down: never sent to them
    disliked: tuple[Mapping[str, float], ...] = ()  # vector of each down-voted paper
    # The send decision's likeness: to the liked centroid `centre` less `send_contrast` x to
    # the collection's centroid (None: the ranking's likeness), and its mean over the
    # collection.
    centre: Mapping[str, float] = field(default_factory=dict)
    collection: Mapping[str, float] | None = None
    send_contrast: float = 0.0
    send_baseline: float = 0.0
    # paper -> (likeness, the send decision's likeness, unwanted), and the liked paper it is
    # most like, as far as asked for.
    _parts: dict[int, tuple[float, float, bool]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )
    _most_like: dict[int, str] = field(default_factory=dict, init=False, compare=False, repr=False)

    def parts(self, i: int, vector: Mapping[str, float]) -> tuple[float, float, bool]:
        """(likeness, the send decision's likeness, unwanted) of paper i (tf-idf `vector`):
        how much more it is like the liked papers than the typical stored paper is."""
        found = self._parts.get(i)
        if found is None:
            up = _dot(vector, self.up) if self.up else 0.0
            down = _dot(vector, self.down) if self.down else 0.0
            likeness = up - down - self.baseline
            sending = likeness
            if self.collection is not None:
                sending = _relative(vector, self.centre, self.collection, self.send_contrast)
                sending -= down + self.send_baseline
            unwanted = i in self.vetoed or any(
                _dot(vector, d) >= NEAR_DUPLICATE for d in self.disliked
            )
            found = self._parts[i] = likeness, sending, unwanted
        return found

    def most_like(self, i: int, vector: Mapping[str, float]) -> str:
        """The title of the liked paper that paper i is most like."""
        found = self._most_like.get(i)
        if found is None:
            best = max(self.liked, key=lambda tv: (_dot(vector, tv[1]), tv[0]))
            found = self._most_like[i] = best[0]
        return found


@dataclass(frozen=True, slots=True)
class Reader:
    """What one reader's votes teach: score changes and a threshold shift."""

    likeness: Likeness
    weight: float
    shift: float  # added to the reader's send threshold (positive: sends less)
    send_weight: float = 0.0
    # Per topic of the subscriber, the weight of each keyword group (() when votes change none)
    keywords: tuple[tuple[float, ...], ...] = ()
    send_bound: float = math.inf  # the most the likeness may move a send margin
    sink_weight: float = 0.0  # send_weight of a paper less like the liked ones than most are

    def adjust(self, i: int, vector: Mapping[str, float]) -> Lift:
        """The votes' effect on paper i (with tf-idf `vector`). The change is centred on the
        collection's mean likeness: a paper more like the liked papers than the typical stored
        paper rises, one less like them sinks."""
        likeness, sending, unwanted = self.likeness.parts(i, vector)
        # Less like the liked papers than the typical stored paper: weighed by sink_weight.
        send = (self.send_weight if sending >= 0 else self.sink_weight) * sending
        send = max(-self.send_bound, min(self.send_bound, send))
        because = ""
        # Lifted in the ranking or towards being sent: the liked paper it is most like says why.
        if max(self.weight * likeness, send) >= EXPLAIN_MIN and self.likeness.liked:
            because = self.likeness.most_like(i, vector)
        return Lift(self.weight * likeness, send, unwanted, because)


NO_READER = Reader(Likeness((), {}, {}), 0.0, 0.0)


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


@dataclass(frozen=True, slots=True)
class Weights:
    """How strongly votes act (Tuning's vote_* constants)."""

    score: float  # the ranking: a paper as like the liked ones as they are gains about this
    send: float = 0.0  # the send decision
    contrast: float = 0.0  # share of the collection's centroid off the liked and disliked ones
    prior: float = math.inf  # up-votes a keyword counts for, being the reader's choice (inf: off)
    half: float = 0.0  # votes at which `score` and `send` act at half strength (0: full at once)
    # Share of the collection's centroid the send decision's likeness takes off, over all of
    # a paper's words (None: the send decision uses the ranking's likeness).
    send_contrast: float | None = None
    # The send weight of a paper less like the liked papers than the typical stored paper is
    # (None: `send`): a sent paper unlike all they liked is the likeliest to be unwanted.
    sink: float | None = None

    def grown(self, votes: int) -> float:
        """The share of their strength the likeness weights have after `votes` votes."""
        return votes / (votes + self.half) if votes else 0.0


def keyword_weights(
    up: Sequence[Collection[int]], down: Sequence[Collection[int]], groups: int, prior: float
) -> tuple[float, ...]:
    """The weight of each of a topic's `groups` keyword groups for one reader: (prior + u) /
    (prior + u + d), where u and d count the up- and down-voted papers the group matched
    (`up` and `down` hold the groups each voted paper matched). 1 without down-votes."""
    ups = [sum(1 for found in up if k in found) for k in range(groups)]
    downs = [sum(1 for found in down if k in found) for k in range(groups)]
    return tuple(
        1.0 if not d or math.isinf(prior) else (prior + u) / (prior + u + d)
        for u, d in zip(ups, downs, strict=True)
    )


def learn(
    index: PaperIndex,
    votes: Votes,
    *,
    weights: Weights,
    margins: Mapping[int, float],
    threshold: float,
    keywords: tuple[tuple[float, ...], ...] = (),
) -> Reader:
    """A reader model from their votes. `margins`: paper index -> (score without votes) minus
    (that reader's send threshold for it), for the voted papers in the index; `keywords`: the
    reader's keyword weights per topic (`keyword_weights`)."""
    ups = sorted(index.id_to_index[p] for p, v in votes.items() if v > 0 and p in index.id_to_index)
    downs = sorted(
        index.id_to_index[p] for p, v in votes.items() if v < 0 and p in index.id_to_index
    )
    if not ups and not downs:
        return NO_READER
    voted = [(margins[i], 1) for i in ups if i in margins]
    voted += [(margins[i], -1) for i in downs if i in margins]
    grown = weights.grown(len(ups) + len(downs))
    return Reader(
        _likeness(index, tuple(ups), tuple(downs), weights.contrast, weights.send_contrast),
        weights.score * grown,
        threshold_shift(voted, threshold),
        send_weight=weights.send * grown,
        sink_weight=(weights.send if weights.sink is None else weights.sink) * grown,
        keywords=keywords if any(w != 1.0 for ws in keywords for w in ws) else (),
        send_bound=MAX_SHIFT * threshold,
    )


def _likeness(
    index: PaperIndex,
    ups: tuple[int, ...],
    downs: tuple[int, ...],
    contrast: float,
    send_contrast: float | None,
) -> Likeness:
    """The Likeness of these votes (kept per index: see `_LIKENESS`)."""
    kept = _LIKENESS.setdefault(index, {})
    key = ups, downs, contrast, send_contrast
    found = kept.get(key)
    if found is not None:
        return found
    if len(kept) >= MAX_KEPT:
        kept.clear()
    liked = tuple((index.papers[i].title, index.vector(i)) for i in ups)
    disliked = tuple(index.vector(i) for i in downs)
    collection = background(index) if contrast else {}
    up = distinctive([v for _, v in liked], collection, contrast) if ups else {}
    centre = _centroid([v for _, v in liked]) if ups else {}
    # Without a liked paper there is nothing to be relatively like: the ranking's likeness.
    sending = background(index) if send_contrast is not None and ups else None
    relative_by = send_contrast or 0.0
    down = distinctive(disliked, collection, contrast) if downs else {}
    sample = [index.vector(i) for i in _sample(index)]
    downs_of = [_dot(v, down) for v in sample]
    baseline = _mean([_dot(v, up) - d for v, d in zip(sample, downs_of, strict=True)])
    send_baseline = baseline
    if sending is not None:
        send_baseline = _mean(
            [
                _relative(v, centre, sending, relative_by) - d
                for v, d in zip(sample, downs_of, strict=True)
            ]
        )
    found = kept[key] = Likeness(
        liked,
        up,
        down,
        baseline,
        vetoed=frozenset(downs),
        disliked=disliked,
        centre=centre,
        collection=sending,
        send_contrast=relative_by,
        send_baseline=send_baseline,
    )
    return found


def _relative(
    vector: Mapping[str, float],
    centre: Mapping[str, float],
    collection: Mapping[str, float],
    contrast: float,
) -> float:
    """Likeness to the liked papers relative to the collection: cos(paper, liked centroid)
    less `contrast` x cos(paper, collection centroid), over all the paper's words (the
    ranking's `distinctive` centroid only counts the liked papers' words)."""
    like = _dot(vector, centre) if centre else 0.0
    return like - contrast * _dot(vector, collection) if contrast else like


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
