"""`make bench`: every speed figure in one run (the subscriber file, matching, render + MIME,
the full send).

Each stage's benchmark lives beside it (bench_subscribers, bench_selection, bench_render,
bench_send) and can run alone with its own options; this runs them in pipeline order with their
defaults.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_render
import bench_selection
import bench_send
import bench_subscribers


def main() -> None:
    for name, stage in (
        ("subscriber file: check 10k and 100k (time, peak RSS)", bench_subscribers.main),
        ("selection: 10k and 100k subscribers", bench_selection.main),
        ("render + MIME: 10k subscribers", bench_render.main),
        ("send: 10k subscribers through smtp-sink", bench_send.main),
    ):
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        stage([])
        print(f"({time.perf_counter() - started:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
