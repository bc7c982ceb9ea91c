"""The reader model learned from votes (`learning`): how far likeness to the liked papers may
move a send decision, and which likeness moves it."""

from __future__ import annotations

import math
import re

import pytest

from newsletter.learning import MAX_SHIFT, Weights, learn
from newsletter.models import Paper, Subscriber, Topic
from newsletter.selection import PaperIndex, Tuning, rank_all

COMMON = "Deep reinforcement learning agents learn policies from experience."


def paper(title: str, abstract: str) -> Paper:
    return Paper(id=re.sub(r"\W+", "-", title.lower()), title=title, abstract=abstract)


def replay_world() -> tuple[PaperIndex, dict[str, Paper]]:
    """A liked paper with distinctive words (hippocampal replay) and the field's common ones,
    a paper sharing only the distinctive words, one sharing only the common ones, and
    filler that uses the common words."""
    papers = {
        "liked": paper("Hippocampal replay for agents", "Hippocampal replay sequences. " + COMMON),
        "rare": paper("Replay like the hippocampus", "Hippocampal replay of sequences in rats."),
        "plain": paper("Agents that learn policies", COMMON),
    }
    filler = [paper(f"Filler {n}", f"{COMMON} Study number {n}.") for n in range(60)]
    return PaperIndex.build([*papers.values(), *filler]), papers


def send_moves(index: PaperIndex, liked: str, weights: Weights, threshold: float) -> list[float]:
    reader = learn(index, {liked: 1}, weights=weights, margins={}, threshold=threshold)
    return [reader.adjust(i, index.vector(i)).send for i in range(len(index.papers))]


def test_likeness_moves_a_send_decision_by_at_most_max_shift_of_the_threshold() -> None:
    index, papers = replay_world()
    moves = send_moves(index, papers["liked"].id, Weights(0.0, send=1000.0), threshold=2.0)
    bound = MAX_SHIFT * 2.0
    assert all(-bound <= m <= bound for m in moves)
    assert max(moves) == pytest.approx(bound) and min(moves) == pytest.approx(-bound)
    # The ranking is not bounded: only the send decision is.
    reader = learn(
        index, {papers["liked"].id: 1}, weights=Weights(1000.0), margins={}, threshold=2.0
    )
    rare = index.id_to_index[papers["rare"].id]
    assert reader.adjust(rare, index.vector(rare)).score > bound


def test_the_send_decision_discounts_likeness_that_every_paper_shares_by_its_contrast() -> None:
    # "plain" is like the liked paper through the words of every stored paper, "rare" through
    # the liked paper's own.
    index, papers = replay_world()
    rare, plain = (index.id_to_index[papers[k].id] for k in ("rare", "plain"))

    def gap(send_contrast: float | None) -> float:
        weights = Weights(0.0, send=1.0, contrast=0.0, send_contrast=send_contrast)
        moves = send_moves(index, papers["liked"].id, weights, threshold=math.inf)
        return moves[rare] - moves[plain]

    # None: the ranking's contrast (0 here); 0.5 takes half the collection's centroid off.
    assert gap(0.5) > gap(None) == pytest.approx(gap(0.0))
    assert gap(0.5) > 0


def test_an_up_vote_sends_a_paper_with_its_distinctive_words_not_a_typical_one() -> None:
    # Two papers under the bar for the reader's keyword: the one sharing the liked paper's
    # distinctive words is further under it than one that reads like every stored paper.
    liked = paper("Hippocampal replay for agents", "Hippocampal replay sequences. " + COMMON)
    rare = paper("Memory and hippocampal replay", "Replay of sequences in rats.")
    typical = paper("Memory of machines", COMMON)
    others = [paper(f"Zq{n}x study", COMMON) for n in range(60)]
    index = PaperIndex.build([liked, rare, typical, *others])
    ada = Subscriber("ada@example.org", topics=(Topic("Memory", ("memory",)),))
    bar = Tuning(relative=0.0, floor=1.4)  # the global threshold for every topic
    before = {sp.paper.id: sp for sp in rank_all(index, ada, threshold=1.4, tuning=bar)}
    assert not before[rare.id].sent and not before[typical.id].sent
    assert before[rare.id].score < before[typical.id].score
    # No move of the ranking: only likeness moves the send decision.
    tuning = Tuning(
        0.0, 1.4, vote_weight=0.0, vote_send_weight=2.0, vote_prior=math.inf, vote_half=0.0
    )
    after = {
        sp.paper.id: sp
        for sp in rank_all(index, ada, threshold=1.4, tuning=tuning, votes={liked.id: 1})
    }
    assert after[rare.id].score == before[rare.id].score
    assert after[rare.id].sent and not after[typical.id].sent


def test_without_a_liked_paper_the_send_decision_uses_the_plain_likeness() -> None:
    # Nothing to be relatively like: the collection alone must not move a send decision.
    index, papers = replay_world()
    votes = {papers["plain"].id: -1}

    def moves(send_contrast: float | None) -> list[float]:
        weights = Weights(0.0, send=1.0, send_contrast=send_contrast)
        reader = learn(index, votes, weights=weights, margins={}, threshold=math.inf)
        return [reader.adjust(i, index.vector(i)).send for i in range(len(index.papers))]

    assert moves(0.5) == moves(None)


def test_a_paper_lifted_only_towards_being_sent_names_the_liked_paper() -> None:
    index, papers = replay_world()
    rare = index.id_to_index[papers["rare"].id]
    sending_only = Weights(0.0, send=1.0, send_contrast=0.5)
    reader = learn(index, {papers["liked"].id: 1}, weights=sending_only, margins={}, threshold=2.0)
    lift = reader.adjust(rare, index.vector(rare))
    assert lift.score == 0.0 and lift.send > 0
    assert lift.because == papers["liked"].title
    still = learn(index, {papers["liked"].id: 1}, weights=Weights(0.0), margins={}, threshold=2.0)
    assert still.adjust(rare, index.vector(rare)).because == ""


def test_a_down_vote_sinks_what_is_distinctive_of_the_disliked_paper() -> None:
    # Voted down: "liked" (distinctive: hippocampal replay). With the contrast, "plain", which
    # shares only the words of every stored paper with it, sinks less than without it, and
    # "rare", which shares its own words, sinks more than "plain".
    index, papers = replay_world()
    rare, plain = (index.id_to_index[papers[k].id] for k in ("rare", "plain"))

    def score_moves(contrast: float) -> list[float]:
        weights = Weights(1.0, contrast=contrast)
        reader = learn(index, {papers["liked"].id: -1}, weights=weights, margins={}, threshold=2.0)
        return [reader.adjust(i, index.vector(i)).score for i in (rare, plain)]

    rare_plain, plain_plain = score_moves(0.0)
    rare_contrast, plain_contrast = score_moves(0.5)
    assert plain_contrast > plain_plain
    assert rare_contrast < plain_contrast and rare_plain < 0


def test_a_paper_less_like_the_liked_ones_than_most_sinks_by_the_sink_weight() -> None:
    # A filler paper (the field's words and its own) is less like the liked paper than the
    # typical stored paper is, so the sink weight moves it; "rare" (the liked paper's own
    # words) is more like it than most, so the send weight does.
    index, papers = replay_world()
    rare = index.id_to_index[papers["rare"].id]
    filler = index.id_to_index["filler-0"]

    def moves(sink: float | None) -> tuple[float, float]:
        weights = Weights(0.0, send=1.0, send_contrast=0.5, sink=sink)
        found = send_moves(index, papers["liked"].id, weights, threshold=math.inf)
        return found[rare], found[filler]

    (rare_same, filler_same), (rare_sunk, filler_sunk) = moves(None), moves(4.0)
    assert filler_same < 0 < rare_same
    assert rare_sunk == pytest.approx(rare_same)
    assert filler_sunk == pytest.approx(4.0 * filler_same)
