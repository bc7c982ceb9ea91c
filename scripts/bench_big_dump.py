"""Time one big day: a generated dump of N papers, indexed, then selected for the example
subscribers (config/subscribers.yaml). Run as

    .venv/bin/python scripts/bench_big_dump.py [--sizes 5000 50000]

Papers are made from the seed papers: each copy gets a numbered title and its abstract's
sentences rotated, so every paper is distinct text of realistic length and vocabulary. The
dump is parsed by the real parser (with no cap), indexed over the whole collection and
selected for the 5 example subscribers, as `send` does for one edition. Peak memory is the
process's maximum resident set size, so each size runs in its own child process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from newsletter.ingest import dump_files, parse_dump, read_dump
from newsletter.selection import PaperIndex, select_for
from newsletter.settings import BUNDLED, Settings
from newsletter.subscribers import load_subscribers

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = dt.date(2025, 12, 31)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def make_dump(n: int) -> str:
    """The text of one day's dump with `n` distinct papers, built from the seed papers."""
    seeds = {
        p.id: p
        for path in dump_files(BUNDLED / "seeds")
        for p in read_dump(path, reference=REFERENCE).papers
    }
    base = list(seeds.values())
    parts = ["Daily Papers", "", "Dec 30", ""]
    for k in range(n):
        paper = base[k % len(base)]
        copy = k // len(base)
        sentences = _SENTENCE.split(paper.abstract)
        shift = copy % len(sentences)
        abstract = " ".join(sentences[shift:] + sentences[:shift])
        parts += [f"{paper.title} (part {copy + 1})" if copy else paper.title, "", abstract, ""]
    return "\n".join(parts)


def measure(n: int) -> dict[str, float]:
    text = make_dump(n)
    threshold = Settings.model_fields["relevance_threshold"].default
    subs = load_subscribers(BUNDLED / "config" / "subscribers.yaml")
    timings: dict[str, float] = {"papers": n}
    start = time.perf_counter()
    listing = parse_dump(text, source=f"<{n} papers>", reference=REFERENCE)
    timings["parse_s"] = time.perf_counter() - start
    start = time.perf_counter()
    index = PaperIndex.build(listing.papers)
    timings["index_s"] = time.perf_counter() - start
    start = time.perf_counter()
    selections = select_for(index, listing, subs, threshold=threshold)
    timings["select_s"] = time.perf_counter() - start
    timings["chosen"] = sum(len(s.papers) for s in selections)
    timings["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return timings


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5_000, 50_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: one size
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one)))
        return []
    results = []
    for n in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(out.splitlines()[-1])
        results.append(r)
        print(
            f"{n} papers: parse {r['parse_s']:.2f}s, index build {r['index_s']:.2f}s, "
            f"select for 5 subscribers {r['select_s']:.2f}s, {r['chosen']:.0f} papers chosen, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    return results


if __name__ == "__main__":
    main()
