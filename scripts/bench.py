"""`make bench`: every speed figure in one run (the subscriber file, matching, render + MIME,
the full send on PostgreSQL with 1, 2 and 4 sender processes, peak RSS of a send at 10k and
100k subscribers). The machine may be shared: each stage prints CPU seconds where they help.

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
        (
            "send: whole `newsletter send` of 10k into smtp-sink on PostgreSQL, 1/2/4 processes; "
            "peak RSS at 10k and 100k",
            bench_send.main,
        ),
    ):
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        stage([])
        print(f"({time.perf_counter() - started:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
