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
then selects its subscribers without votes together (`_Edition.picks`): each topic's row of
the table of distinct keys x listed papers gives the few cells it sends, and each subscriber's
topics' cells, as flat arrays, make the send decision, exclusions, history, the order by mixed
score and `max_papers`; explanations and SelectedPapers are built once per distinct value and
shared. Readers with votes are judged one by one (`_judge`), as are all subscribers with
`_select_for(..., vectorised=False)`, the plain path the tests hold the vectorised one to.

Layout, each file one job, imports running down this list:
    tuning   the constants and `Tuning`
    compile  topics compiled against an index (`_Topics`), kept per index (`_TOPICS`)
    scoring  compiled topics scored over the papers (`_Scorer`), reference and threshold
    judge    a reader's votes applied (`_judge`), `rank_all`
    edition  one edition's selection (`select_for`, `_Edition`)
"""

from newsletter.selection.compile import _TOPICS as _TOPICS
from newsletter.selection.compile import _content_terms as _content_terms
from newsletter.selection.compile import _Topics as _Topics
from newsletter.selection.edition import _select_for as _select_for
from newsletter.selection.edition import select_for
from newsletter.selection.judge import rank_all, rank_all_weighted
from newsletter.selection.scoring import calibrated_threshold, score_papers, topic_reference
from newsletter.selection.tuning import _PIECE_BREAK as _PIECE_BREAK
from newsletter.selection.tuning import (
    CLOSEST,
    DEFAULT_TUNING,
    GENERIC_SHARE,
    KEYWORD_DECAY,
    MIN_COLLECTION,
    REF_RANK,
    TERM_CAP,
    TREND_BONUS,
    Tuning,
)
from newsletter.textindex import PaperIndex

__all__ = [
    "CLOSEST",
    "DEFAULT_TUNING",
    "GENERIC_SHARE",
    "KEYWORD_DECAY",
    "MIN_COLLECTION",
    "REF_RANK",
    "TERM_CAP",
    "TREND_BONUS",
    "PaperIndex",
    "Tuning",
    "calibrated_threshold",
    "rank_all",
    "rank_all_weighted",
    "score_papers",
    "select_for",
    "topic_reference",
]
