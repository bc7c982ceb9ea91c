"""Measure the matcher against the bundled relevance judgements (`make eval`).

For each profile in `tests/eval/profiles.json`: nDCG@10 of the relevance ranking of every
seed paper (gains 0/1/2 from `qrels.json`), and precision, recall and F1 of the send decision at
the global threshold, counting grade 2 as relevant. `--sweep` shows how F1 moves with the
threshold and `--loo` picks the threshold on all profiles but one and scores the held-out one,
an honest check that a single threshold carries over to profiles it was not chosen on.

    .venv/bin/python scripts/eval.py [--threshold 1.9] [--sweep] [--loo]
        [--profiles tests/eval/profiles.json --qrels tests/eval/qrels.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from newsletter.ingest import dump_files, read_dump
from newsletter.models import Paper, Subscriber, Topic
from newsletter.selection import PaperIndex, rank_all
from newsletter.settings import BUNDLED, Settings

ROOT = Path(__file__).resolve().parent.parent
EVAL_DIR = ROOT / "tests" / "eval"
GRID = [round(0.25 * i, 2) for i in range(1, 25)]


@dataclass(frozen=True, slots=True)
class Result:
    profile: str
    ndcg10: float
    precision: float
    recall: float
    f1: float
    sent: int


def load_papers(seeds: Path) -> list[Paper]:
    """Every distinct paper of the dumps (the year is irrelevant here, so it is pinned)."""
    papers: dict[str, Paper] = {}
    for path in dump_files(seeds):
        for paper in read_dump(path, reference=dt.date(2025, 12, 31)).papers:
            papers.setdefault(paper.id, paper)
    return list(papers.values())


def profile_subscriber(profile: Mapping[str, Any]) -> Subscriber:
    """An eval profile as a one-topic subscriber (exclude_keywords become the hard filter)."""
    topic = Topic(
        name=profile["name"],
        keywords=tuple(profile["keywords"]),
        description=profile.get("description", ""),
    )
    return Subscriber(
        email=f"{profile['id']}@eval.invalid",
        topics=(topic,),
        exclude=tuple(profile.get("exclude_keywords", ())),
    )


def ndcg(ranked: Sequence[int], all_gains: Sequence[int], k: int = 10) -> float:
    def dcg(gains: Sequence[int]) -> float:
        return sum((2**g - 1) / math.log2(n + 2) for n, g in enumerate(gains[:k]))

    ideal = dcg(sorted(all_gains, reverse=True))
    return dcg(ranked) / ideal if ideal else 0.0


def scored(index: PaperIndex, profile: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(title, score) of every paper with a score > 0, best first."""
    ranked = rank_all(index, profile_subscriber(profile), threshold=math.inf)
    return [(sp.paper.title, sp.score) for sp in ranked]


def measure(
    ranking: list[tuple[str, float]], qrels: Mapping[str, int], threshold: float, name: str
) -> Result:
    gains = [qrels.get(title, 0) for title, _ in ranking]
    sent = {title for title, score in ranking if score >= threshold}
    relevant = {title for title, grade in qrels.items() if grade == 2}
    hits = len(sent & relevant)
    precision = hits / len(sent) if sent else 0.0
    recall = hits / len(relevant) if relevant else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return Result(name, ndcg(gains, list(qrels.values())), precision, recall, f1, len(sent))


def best_threshold(rankings: Mapping[str, list[tuple[str, float]]], qrels: Mapping) -> float:
    """The grid threshold with the best mean F1 over `rankings` (ties: the lower one)."""
    return max(
        GRID,
        key=lambda t: (
            statistics.mean(measure(r, qrels[p], t, p).f1 for p, r in rankings.items()),
            -t,
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    default = Settings.model_fields["relevance_threshold"].default
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=default)
    parser.add_argument("--profiles", type=Path, default=EVAL_DIR / "profiles.json")
    parser.add_argument("--qrels", type=Path, default=EVAL_DIR / "qrels.json")
    parser.add_argument("--seeds", type=Path, default=BUNDLED / "seeds")
    parser.add_argument("--sweep", action="store_true", help="mean F1 over a threshold grid")
    parser.add_argument("--loo", action="store_true", help="leave-one-profile-out threshold")
    args = parser.parse_args(argv)

    index = PaperIndex.build(load_papers(args.seeds))
    profiles = json.loads(args.profiles.read_text(encoding="utf-8"))
    qrels = json.loads(args.qrels.read_text(encoding="utf-8"))
    rankings = {p["id"]: scored(index, p) for p in profiles}
    results = [measure(rankings[p], qrels[p], args.threshold, p) for p in rankings]

    print(f"{len(index.papers)} papers, threshold {args.threshold:g}")
    print(f"{'profile':<14} {'nDCG@10':>8} {'P':>6} {'R':>6} {'F1':>6} {'sent':>5}")
    for r in results:
        print(
            f"{r.profile:<14} {r.ndcg10:8.3f} {r.precision:6.3f} {r.recall:6.3f} {r.f1:6.3f} {r.sent:5d}"
        )
    mean = [
        statistics.mean(getattr(r, f) for r in results)
        for f in ("ndcg10", "precision", "recall", "f1")
    ]
    print(f"{'mean':<14} {mean[0]:8.3f} {mean[1]:6.3f} {mean[2]:6.3f} {mean[3]:6.3f}")

    if args.sweep:
        print("\nthreshold  mean F1   " + "  ".join(f"{p[:8]:>8}" for p in rankings))
        for t in GRID:
            f1s = [measure(r, qrels[p], t, p).f1 for p, r in rankings.items()]
            row = "  ".join(f"{f:8.3f}" for f in f1s)
            print(f"{t:9.2f}  {statistics.mean(f1s):7.3f}   {row}")
    if args.loo:
        print("\nleave one profile out: threshold chosen on the others -> held-out F1")
        held = []
        for p in rankings:
            t = best_threshold({q: r for q, r in rankings.items() if q != p}, qrels)
            held.append(measure(rankings[p], qrels[p], t, p).f1)
            print(f"{p:<14} threshold {t:4.2f}  F1 {held[-1]:.3f}")
        print(f"{'mean':<14} {'':14}  F1 {statistics.mean(held):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
