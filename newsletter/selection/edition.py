"""One edition's selection for many subscribers: the vectorised path and the plain one."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import gc
import itertools
import math
import operator
from collections.abc import Iterable, Mapping, Sequence, Sized
from collections.abc import Set as AbstractSet
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from newsletter.addresses import address_key
from newsletter.learning import Votes
from newsletter.models import DailyListing, Paper, SelectedPaper, Selection, Subscriber, TopicMatch
from newsletter.selection.compile import _Query, _release, _topics_of
from newsletter.selection.judge import _judge, _reader
from newsletter.selection.scoring import _bits, _Scorer, _Vector
from newsletter.selection.tuning import CLOSEST, DEFAULT_TUNING, TREND_BONUS, Tuning
from newsletter.textindex import PaperIndex


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
    *,
    vectorised: bool = True,
) -> list[Selection]:
    """`select_for`; with `vectorised` False, every subscriber is judged one by one (the
    plain path the tests hold the vectorised one to)."""
    missing = [e.paper.id for e in listing.entries if e.paper.id not in index.id_to_index]
    if missing:
        raise ValueError(f"listing papers missing from the index (rebuild it): {missing[:5]}")
    rank_of: dict[int, int] = {}
    paper_of: dict[int, Paper] = {}
    for entry in listing.entries:
        i = index.id_to_index[entry.paper.id]
        if entry.rank < rank_of.get(i, entry.rank + 1):
            rank_of[i], paper_of[i] = entry.rank, entry.paper
    scorer = _Scorer(index, rank_of, tuning, _topics_of(index))
    edition = _Edition(scorer, rank_of, paper_of, threshold, listing.date)
    # Address keys only matter to look up history and votes.
    keys = [address_key(sub.email) for sub in subscribers] if history or votes else None
    no_history: frozenset[str] = frozenset()
    seen = [history.get(k, no_history) for k in keys] if keys and history else None
    # Readers with votes (and topics with more keyword groups than `_Table` tells apart) are
    # judged one by one, the others all at once.
    topics_of = list(map(_TOPICS_OF, subscribers))
    counts = np.fromiter(map(len, topics_of), dtype=np.intp, count=len(subscribers))
    alone: list[int] = []
    if vectorised:
        shown = scorer.topics.shown_numbers(list(itertools.chain.from_iterable(topics_of)))
        wide = scorer.topics.wide
        if keys and votes:
            alone = [n for n, k in enumerate(keys) if votes.get(k)]
        if wide:
            owner = np.repeat(np.arange(len(subscribers)), counts)
            widest = np.isin(shown, np.fromiter(wide, dtype=np.intp, count=len(wide)))
            alone = sorted({*alone, *owner[widest].tolist()})
    else:
        shown = np.zeros(int(counts.sum()), dtype=np.intp)  # not used
        alone = list(range(len(subscribers)))
    # Subscribers and their Selections as object arrays: picked out by index arrays in C.
    everyone = np.empty(len(subscribers), dtype=object)
    everyone[:] = subscribers
    selections = np.full(len(subscribers), None, dtype=object)
    if alone:
        solo = np.zeros(len(subscribers), dtype=bool)
        solo[alone] = True
        shown = shown[~np.repeat(solo, counts)]
        counts = counts[~solo]
        together_at = np.flatnonzero(~solo)
    else:
        together_at = np.arange(len(subscribers))
    together = together_at.tolist()
    if together:
        queries = scorer.topics.query_of_shown
        chosen = everyone[together_at]
        picks = edition.picks(
            shown,
            counts,
            list(map(_EXCLUDE, chosen)),
            list(map(_MAX_PAPERS, chosen)),
            [seen[n] for n in together] if seen else None,
        )
        starts = (np.cumsum(counts) - counts).tolist()
        date = listing.date
        picked, ranked = picks
        # The Selections of the subscribers sent something, made at once (see `_made`).
        sent = np.flatnonzero(ranked)
        made = np.empty(len(sent), dtype=object)
        made[:] = _made(
            Selection,
            len(sent),
            subscriber=chosen[sent],
            edition=itertools.repeat(date),
            papers=map(picked.__getitem__, sent.tolist()),
            near_misses=itertools.repeat(()),
        )
        selections[together_at[sent]] = made
        for k in np.flatnonzero(~ranked).tolist():
            n, start = together[k], starts[k]
            sub = subscribers[n]
            near = _closest(
                scorer,
                [queries[t] for t in shown[start : start + len(sub.topics)].tolist()],
                sub.exclude,
                threshold,
                paper_of,
                seen[n] if seen else no_history,
            )
            selections[n] = edition.finish(sub, (), False, near)
    for n in alone:
        sub = subscribers[n]
        key = keys[n] if keys else ""
        selections[n] = _select_one(edition, sub, seen[n] if seen else no_history, votes.get(key))
    _release(index)
    done: list[Selection] = selections.tolist()
    return done


def _select_one(
    edition: _Edition, sub: Subscriber, seen: AbstractSet[str], votes: Votes | None
) -> Selection:
    """One subscriber's Selection, judged alone."""
    scorer, threshold = edition.scorer, edition.threshold
    rank_of, paper_of = edition.rank_of, edition.paper_of
    if votes:
        reader = _reader(scorer, sub, threshold, votes)
        judged = _judge(scorer, sub, threshold, reader)
        sent = ((i, v.score, v.matches, v.liked) for i, v in judged.items() if v.sent)
        ranked = _ranked(sent, rank_of, paper_of)
        near = [
            (i, v.score, v.matches, v.liked)
            for i, v in sorted(judged.items(), key=lambda iv: (-iv[1].score, iv[0]))
            if not v.sent and paper_of[i].id not in seen
        ][:CLOSEST]
    else:
        queries = [scorer.compile(t) for t in sub.topics]
        # Subscribers whose topics send alike share their ranked papers.
        shown = tuple(q.shown for q in queries)
        cached = scorer._ranked.get((shown, sub.exclude, threshold))
        if cached is None:
            passing = _sent_without_votes(scorer, queries, sub.exclude, threshold)
            cached = _ranked(passing, rank_of, paper_of)
            scorer._ranked[shown, sub.exclude, threshold] = cached
        ranked = cached
        near = [] if ranked else _closest(scorer, queries, sub.exclude, threshold, paper_of, seen)
    fresh = (sp for sp in ranked if sp.paper.id not in seen) if seen else iter(ranked)
    picked = tuple(itertools.islice(fresh, max(0, sub.max_papers)))
    return edition.finish(sub, picked, bool(ranked), near)


_TOPICS_OF = operator.attrgetter("topics")


_EXCLUDE, _MAX_PAPERS = operator.attrgetter("exclude"), operator.attrgetter("max_papers")


class _Edition:
    """One edition's listing over a scorer: its papers as columns in the order ties are broken
    in (trending rank, then id), and the vectorised selection of many subscribers at once."""

    def __init__(
        self,
        scorer: _Scorer,
        rank_of: Mapping[int, int],
        paper_of: Mapping[int, Paper],
        threshold: float,
        date: dt.date,
    ) -> None:
        self.scorer, self.threshold, self.date = scorer, threshold, date
        self.rank_of, self.paper_of = rank_of, paper_of
        slots = scorer.slots
        self.order = np.array(
            sorted(range(len(slots)), key=lambda n: (rank_of[slots[n]], paper_of[slots[n]].id)),
            dtype=np.intp,
        )
        self.papers = [slots[n] for n in self.order.tolist()]  # paper index per column
        self.trend = np.array([_trend(rank_of[i]) for i in self.papers])  # what `_mixed` multiplies
        self.column_of = {paper_of[i].id: c for c, i in enumerate(self.papers)}
        self.paper_of_column = [paper_of[i] for i in self.papers]
        self.rank_of_column = [rank_of[i] for i in self.papers]
        self.trend_of_column = self.trend.tolist()

    def finish(
        self,
        sub: Subscriber,
        picked: tuple[SelectedPaper, ...],
        ranked: bool,
        near: Sequence[_Sent],
    ) -> Selection:
        """The Selection of the `picked` papers; when none was `ranked` (before history), the
        `near` misses, sent as such with `on_empty: closest`."""
        if ranked:
            return Selection(sub, self.date, picked)
        rank_of, paper_of = self.rank_of, self.paper_of
        misses = tuple(
            SelectedPaper(paper_of[i], s, rank_of[i], False, m, _mixed(s, rank_of[i]), liked=liked)
            for i, s, m, liked in near
        )
        if sub.on_empty == "closest":
            picked = tuple(
                dataclasses.replace(sp, sent=True, near_miss=True)
                for sp in misses[: max(0, sub.max_papers)]
            )
        return Selection(sub, self.date, picked, misses)

    def picks(
        self,
        flat: npt.NDArray[np.intp],
        counts: npt.NDArray[np.intp],
        excludes: Sequence[tuple[str, ...]],
        caps: Sequence[int],
        seen: Sequence[AbstractSet[str]] | None,
    ) -> tuple[list[tuple[SelectedPaper, ...]], npt.NDArray[np.bool_]]:
        """Per subscriber (their topics' `shown`, `counts[n]` of them each in `flat`; exclude
        terms, max_papers and papers seen in other editions): the papers sent, in digest order,
        and whether any was sent before history took its own, every subscriber at once.

        A subscriber's score of a paper is the best of their topics that send it; the papers
        are ordered by mixed score with ties broken by column (trending rank, then id), as
        `_ranked` sorts; a paper one topic sends carries that topic's explanation, one that
        several send all of theirs, best first. Explanations and SelectedPapers are built once
        per distinct value, most subscribers sharing them with others."""
        scorer, width, n = self.scorer, len(self.papers), len(counts)
        depth = int(counts.max(initial=0))
        distinct = _distinct(flat)[0]
        row_of_shown = np.zeros(int(distinct[-1]) + 1 if len(distinct) else 0, dtype=np.intp)
        table, rows = scorer.rows(distinct, self.threshold, self.order)
        row_of_shown[distinct] = rows
        total, cuts, bits = table.total, table.cuts, table.bits
        # Each (subscriber, topic) expanded to the cells its topic's row sends (score at least
        # its cut, above 0): few per row, so a subscriber's papers are found among those
        # cells, not in a subscriber x topic x column grid.
        owner = np.repeat(np.arange(n), counts)
        position = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
        sending = total >= cuts[:, None]
        sending &= total > 0
        sent_row, sent_column = np.nonzero(sending)
        sent_score = total[sent_row, sent_column]
        many = np.bincount(sent_row, minlength=len(total))  # cells sent per row, by row
        first = np.cumsum(many) - many
        topic_rows = row_of_shown[flat]
        size = many[topic_rows]
        entry_of = np.repeat(np.arange(len(flat)), size)
        cell = first[topic_rows][entry_of] + (
            np.arange(len(entry_of)) - np.repeat(np.cumsum(size) - size, size)
        )
        e_sub, e_column, e_score = owner[entry_of], sent_column[cell], sent_score[cell]
        excluded, excluding = self._excluded(excludes)
        if len(excluding) > 1:
            keep = ~excluding[excluded[e_sub], e_column]
            entry_of, e_sub, e_column, e_score = (
                entry_of[keep],
                e_sub[keep],
                e_column[keep],
                e_score[keep],
            )
        ranked = np.zeros(n, dtype=bool)
        ranked[e_sub] = True
        seen_at, seen_column = self._seen(seen)
        e_key = e_sub * width + e_column
        if len(seen_at):
            keep = ~np.isin(e_key, seen_at * width + seen_column)
            entry_of, e_sub, e_column, e_score, e_key = (
                entry_of[keep],
                e_sub[keep],
                e_column[keep],
                e_score[keep],
                e_key[keep],
            )
        # Each (subscriber, paper) once, with its best topic's score, by subscriber and column
        # (the entries come by subscriber, so a stable sort by cell has little to do).
        by = np.argsort(e_key, kind="stable")
        ordered = e_key[by]
        new = np.ones(len(by), dtype=bool)
        new[1:] = ordered[1:] != ordered[:-1]
        starts = np.flatnonzero(new)
        cell_of_entry = np.empty(len(by), dtype=np.intp)
        cell_of_entry[by] = np.cumsum(new) - 1
        best = np.maximum.reduceat(e_score[by], starts) if len(by) else e_score
        sub, column = np.divmod(ordered[starts], width)
        # By subscriber, then mixed score, ties by column (lexsort is stable; the subscriber as
        # two 16-bit keys, which it sorts by radix: twice as fast as one int64 key).
        low, high = (sub & 0xFFFF).astype(np.uint16), (sub >> 16).astype(np.uint16)
        by = np.lexsort((-(best * self.trend[column]), low, high))
        sub, column = sub[by], column[by]
        per = np.bincount(sub, minlength=n)
        cap = np.maximum(np.fromiter(caps, dtype=np.intp, count=n), 0)
        keep = np.arange(len(sub)) - (np.cumsum(per) - per)[sub] < cap[sub]
        owners, columns = sub[keep], column[keep]
        picked = np.full(len(best), -1, dtype=np.intp)
        picked[by[keep]] = np.arange(len(owners))
        # Each picked cell's score per topic (0 where that topic does not send it).
        scores = np.zeros((len(owners), depth))
        at = picked[cell_of_entry]
        mine = at >= 0
        scores[at[mine], position[entry_of[mine]]] = e_score[mine]
        shown_grid = np.full((n, depth), -1, dtype=np.intp)
        shown_grid[owner, position] = flat
        shown_of = shown_grid[owners]
        # The entries (about 8 per subscriber here) are not needed past this point.
        del entry_of, e_sub, e_column, e_score, e_key, cell_of_entry, at, mine, by, ordered
        papers = self._papers(scores, shown_of, columns, row_of_shown, total, bits)
        ends = np.cumsum(np.bincount(owners, minlength=n))
        bounds = zip((ends - np.bincount(owners, minlength=n)).tolist(), ends.tolist(), strict=True)
        return [tuple(papers[start:end]) for start, end in bounds], ranked

    def _papers(
        self,
        scores: _Vector,
        shown_of: npt.NDArray[np.intp],
        columns: npt.NDArray[np.intp],
        row_of_shown: npt.NDArray[np.intp],
        total: _Vector,
        bits: npt.NDArray[np.int64],
    ) -> list[SelectedPaper]:
        """The SelectedPaper of each picked cell, from its topics' `scores` (0 where a topic
        does not send it) and `shown`."""
        if not len(columns):  # nothing picked (say, no subscriber in the chunk has a topic)
            return []
        scorer, width = self.scorer, len(self.papers)
        queries = scorer.topics.query_of_shown
        senders = scores > 0
        # Each distinct (shown, column) a topic sends, then each distinct explanation.
        pair = shown_of[senders] * width + np.broadcast_to(columns[:, None], senders.shape)[senders]
        pairs, pair_at = _distinct(pair)
        pair_shown, pair_column = np.divmod(pairs, width)
        rows = row_of_shown[pair_shown]
        pair_score, pair_bits = total[rows, pair_column], bits[rows, pair_column]
        # An explanation depends on the topic's name, the matched keyword groups' terms (or,
        # without any, its description terms and the paper), the paper and the score.
        labels = scorer.topics.labels
        name = np.array(labels.names, dtype=np.int64)
        weak = -1 - np.array(labels.weak, dtype=np.int64)  # negative: no group's terms
        group_at = np.array(labels.groups_at, dtype=np.intp)
        group_terms = np.array([*labels.groups, 0], dtype=np.int64)
        lone = (pair_bits & (pair_bits - 1)) == 0  # one group (or none) matched
        group = np.log2(np.where(lone & (pair_bits > 0), pair_bits, 1)).astype(np.intp)
        terms = np.where(
            pair_bits == 0, weak[pair_shown], group_terms[group_at[pair_shown] + group]
        )
        if not lone.all():
            # Several groups matched: numbered by their terms' numbers, in order (the same
            # terms as one group's, or another list of groups', may get another number: the
            # explanations are then equal values built twice).
            several = np.flatnonzero(~lone)
            bits_of, at = pair_bits[several], group_at[pair_shown[several]]
            wide = int(bits_of.max()).bit_length()
            found = np.full((len(several), wide), -1, dtype=np.int64)
            for k in range(wide):
                has = (bits_of >> k) & 1 == 1
                found[has, k] = group_terms[at[has] + k]
            found = np.take_along_axis(found, np.argsort(found < 0, axis=1, kind="stable"), 1)
            terms[several] = len(scorer.topics.ids) + _numbered(found)
        columns_of = (name[pair_shown], pair_column, terms, pair_score.view(np.int64))
        key = np.lexsort(columns_of)
        new = np.zeros(len(key), dtype=bool)
        new[:1] = True
        for column in columns_of:
            ordered = column[key]
            new[1:] |= ordered[1:] != ordered[:-1]
        match_of_pair = np.empty(len(key), dtype=np.intp)
        match_of_pair[key] = np.cumsum(new) - 1
        first = key[new]  # a pair showing each explanation
        match_column = pair_column[first].tolist()
        match_shown = pair_shown[first].tolist()
        explained, paper_of_column = scorer.explained, self.papers
        why = [
            explained(queries[t], paper_of_column[c], _bits(b))
            for t, c, b in zip(match_shown, match_column, pair_bits[first].tolist(), strict=True)
        ]
        terms_of, in_title, in_abstract, highlights = zip(*why, strict=True)  # as columns
        matches = _made(  # see `_made`
            TopicMatch,
            len(why),
            topic=[queries[t].topic.name for t in match_shown],
            terms=terms_of,
            in_title=in_title,
            in_abstract=in_abstract,
            highlights=highlights,
            score=pair_score[first].tolist(),
        )
        # Each cell: its one topic's SelectedPaper (shared by every cell with that
        # explanation), or one made for the topics that send it, best first.
        by_topic = np.full(senders.shape, -1, dtype=np.intp)
        by_topic[senders] = match_of_pair[pair_at]
        several = senders.sum(axis=1) > 1
        out = np.empty(len(columns), dtype=object)
        one = np.flatnonzero(~several)
        match_at = by_topic[one].max(axis=1)
        used, used_at = _distinct(match_at)
        alone = np.empty(len(used), dtype=object)
        used_list = used.tolist()
        alone[:] = self._sent_papers(
            [match_column[m] for m in used_list], [(matches[m],) for m in used_list]
        )
        out[one] = alone[used_at]
        many = np.flatnonzero(several)
        if len(many):
            # Explanations best first (then in topic order), one SelectedPaper per distinct list.
            best_first = np.argsort(-scores[many], axis=1, kind="stable")
            ordered = np.take_along_axis(by_topic[many], best_first, axis=1)
            at = _numbered(ordered)
            distinct = np.empty_like(ordered)
            distinct[at] = ordered
            distinct = distinct[: at.max() + 1]
            sizes = (distinct >= 0).sum(axis=1).tolist()  # the senders come first
            merged = np.empty(len(distinct), dtype=object)
            rows = distinct.tolist()
            merged[:] = self._sent_papers(
                [match_column[row[0]] for row in rows],
                [
                    tuple([matches[m] for m in row[:size]])
                    for row, size in zip(rows, sizes, strict=True)
                ],
            )
            out[many] = merged[at]
        papers: list[SelectedPaper] = out.tolist()
        return papers

    def _sent_papers(
        self, columns: Sequence[int], matches: Sequence[tuple[TopicMatch, ...]]
    ) -> list[SelectedPaper]:
        """The sent paper in each of `columns` with its explanations, best first: the
        first's score (made at once, see `_made`)."""
        score = [m[0].score for m in matches]
        # _mixed(score, rank), its factor worked out once per column (a float64 product is
        # the float product)
        mixed = np.array(score) * self.trend[np.array(columns, dtype=np.intp)]
        return _made(
            SelectedPaper,
            len(columns),
            paper=map(self.paper_of_column.__getitem__, columns),
            score=score,
            rank=map(self.rank_of_column.__getitem__, columns),
            sent=itertools.repeat(True),
            matches=matches,
            mixed=mixed.tolist(),
            near_miss=itertools.repeat(False),
            liked=itertools.repeat(""),
        )

    def _excluded(
        self, excludes: Sequence[tuple[str, ...]]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        """(a mask number per subscriber, a mask of the excluded columns per number)."""
        numbers: dict[tuple[str, ...], int] = {(): 0}
        which = np.fromiter(
            (numbers.setdefault(e, len(numbers)) for e in excludes), np.intp, len(excludes)
        )
        masks = np.zeros((len(numbers), len(self.papers)), dtype=bool)
        for terms, n in numbers.items():
            hit = self.scorer.excluded(terms)
            masks[n] = [i in hit for i in self.papers]
        return which, masks

    def _seen(
        self, seen: Sequence[AbstractSet[str]] | None
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """(subscriber, column) of each listed paper a subscriber has seen, by subscriber."""
        at: list[int] = []
        columns: list[int] = []
        column_of = self.column_of
        for n, ids in enumerate(seen or ()):
            if not ids:
                continue
            if len(ids) < len(column_of):
                found = [column_of[p] for p in ids if p in column_of]
            else:
                found = [c for p, c in column_of.items() if p in ids]
            at += [n] * len(found)
            columns += found
        return np.array(at, dtype=np.intp), np.array(columns, dtype=np.intp)


_M = TypeVar("_M")


def _made(cls: type[_M], count: int, **values: Iterable[object]) -> list[_M]:
    """`count` instances of the frozen slotted dataclass `cls`, each field's values from
    `values` (every field given), as calling it would make them, for about a third of its
    cost: its `__init__` is a Python call and an `object.__setattr__` per field, here each
    slot is written by its descriptor, called from C by `map`. For the values an edition
    makes by the hundred thousand (Selections, SelectedPapers)."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    if sorted(names) != sorted(values) or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} cannot be made without its __init__")
    if any(isinstance(v, Sized) and len(v) != count for v in values.values()):
        raise ValueError(f"{count} {cls.__name__} values wanted")  # map would stop short
    made = list(map(object.__new__, itertools.repeat(cls, count)))
    for name in names:
        collections.deque(map(getattr(cls, name).__set__, made, values[name]), maxlen=0)
    return made


def _distinct(
    values: npt.NDArray[np.intp],
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """`np.unique(values, return_inverse=True)` of small non-negative integers, by marking
    them in a table of all the numbers up to the largest instead of sorting them."""
    if not len(values):
        return values, values
    if int(values.max()) > 16 * len(values) + 4096:  # a table that size would cost more
        found, at = np.unique(values, return_inverse=True)
        return found, at.reshape(values.shape)
    marked = np.zeros(int(values.max()) + 1, dtype=bool)
    marked[values] = True
    found = np.flatnonzero(marked)
    # Numbers written where they are needed only: a cumsum over the table is slower.
    number = np.empty(len(marked), dtype=np.int32)  # fewer than 2**31: at most 16x values
    number[found] = np.arange(len(found), dtype=np.int32)
    return found, number[values].astype(np.intp)


def _numbered(rows: npt.NDArray[np.integer]) -> npt.NDArray[np.intp]:
    """A number per distinct row of `rows` (0, 1, ...), for each row: `np.unique(axis=0)`
    without its sort of the rows as bytes."""
    if not len(rows):
        return np.zeros(0, dtype=np.intp)
    order = np.lexsort(rows.T[::-1])
    ordered = rows[order]
    new = np.zeros(len(rows), dtype=bool)
    new[0] = True
    new[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    numbers = np.empty(len(rows), dtype=np.intp)
    numbers[order] = np.cumsum(new) - 1
    return numbers


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
    return score * _trend(rank)


def _trend(rank: int) -> float:
    """What `_mixed` multiplies a score by: 1.5 for trending rank 1, 1.25 for rank 3."""
    return 1.0 + TREND_BONUS / math.log2(max(rank, 1) + 1)
