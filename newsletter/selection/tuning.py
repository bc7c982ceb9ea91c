"""The matcher's constants and its tuned settings (`Tuning`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from newsletter.learning import Weights

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
