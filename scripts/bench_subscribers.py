"""Time `newsletter subscribers check` on generated subscriber files of 10k and 100k entries.

Each file is written to a temporary folder in the bundled example's layout: a `defaults`
mapping, then one block per subscriber with 1-3 topics (keywords a user would type, a description
sometimes reworded), and now and then a name, a time zone, a send time, a paper limit, an
`on_empty` or an exclude list. Each size runs `newsletter subscribers check FILE` in a fresh
process, so the figures are what a user sees: wall time, CPU time and that process's peak RSS
(its VmHWM, sampled: see bench_rss). Run as

    .venv/bin/python scripts/bench_subscribers.py [--sizes 10000 100000] [--repeat 3]

To measure another checkout's code, put it first on PYTHONPATH; the line printed before the
figures says which `newsletter` package was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench_rss import Watch
from bench_selection import FILLERS, RARE, THEMES

ROOT = Path(__file__).resolve().parent.parent
ZONES = ["Europe/London", "America/New_York", "Asia/Tokyo", "Africa/Lagos", "Europe/Berlin"]
NAMES = ["Ada Lovelace", "Grace Hopper", "Kenji Tanaka", "Amara Okafor", "Élodie Martin"]


def subscriber_yaml(i: int, rng: random.Random) -> str:
    """One subscriber's block, as a person would write it."""
    weights = [1.0 / (k + 1) for k in range(len(THEMES))]
    lines = [f"  - email: reader{i:06d}@example.org"]
    if rng.random() < 0.5:
        lines.append(f"    name: {rng.choice(NAMES)} {i}")
    if rng.random() < 0.3:
        lines.append(f"    timezone: {rng.choice(ZONES)}")
    if rng.random() < 0.3:
        lines.append(f'    send_at: "{rng.randint(5, 9):02d}:{rng.choice([0, 15, 30, 45]):02d}"')
    if rng.random() < 0.2:
        lines.append(f"    max_papers: {rng.choice([5, 8, 12])}")
    if rng.random() < 0.05:
        lines.append("    on_empty: closest")
    lines.append("    topics:")
    for name, keywords, description in rng.choices(THEMES, weights, k=rng.randint(1, 3)):
        picked = rng.sample(keywords, rng.randint(1, min(5, len(keywords))))
        if rng.random() < 0.2:
            picked.append(rng.choice(RARE))
        if rng.random() < 0.5:
            description = f"{description} {rng.choice(FILLERS)} ({rng.randrange(10_000)})"
        lines.append(f"      - name: {name}")
        lines.append(
            f"        keywords: [{', '.join(json.dumps(k, ensure_ascii=False) for k in picked)}]"
        )
        lines.append(f"        description: {json.dumps(description, ensure_ascii=False)}")
    if rng.random() < 0.1:
        lines.append(f"    exclude: [{json.dumps(rng.choice(RARE), ensure_ascii=False)}]")
    return "\n".join(lines) + "\n"


def quiet_yaml(i: int) -> str:
    """A subscriber whose one topic matches no paper: no digest today (skipped)."""
    return (
        f"  - email: reader{i:06d}@example.org\n    on_empty: skip\n    topics:\n"
        f"      - {{name: Quiet, keywords: [zqxj{i}]}}\n"
    )


def write_file(path: Path, n: int, seed: int = 11, due: int | None = None) -> None:
    """n subscribers; with `due`, only every (n // due)-th gets a digest today, the others
    match nothing (a cheap stand-in for a large list in a long benchmark)."""
    rng = random.Random(seed)
    step = max(1, n // due) if due else 1
    head = 'defaults: {max_papers: 10, send_at: "07:00", timezone: UTC}\n\nsubscribers:\n'
    body = "".join(subscriber_yaml(i, rng) if i % step == 0 else quiet_yaml(i) for i in range(n))
    path.write_text(head + body, encoding="utf-8")


def check(path: Path) -> tuple[float, float, int, str]:
    """(wall seconds, CPU seconds, peak RSS in bytes, output) of one `subscribers check` in its
    own process. On a shared machine the CPU seconds (user + system) move less than the wall."""
    env = {**os.environ, "NEWSLETTER_SETTINGS_FILE": os.devnull}
    command = [sys.executable, "-m", "newsletter", "subscribers", "check", str(path)]
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, env=env, cwd=path.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    watch = Watch(proc.pid)
    assert proc.stdout is not None
    output = proc.stdout.read().decode()
    rss = watch.stop()
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"subscribers check failed ({proc.returncode}):\n{output}")
    cpu = usage.ru_utime + usage.ru_stime
    return took, cpu, rss, output.strip()


def measured_package(cwd: str) -> str:
    command = [sys.executable, "-c", "import newsletter; print(newsletter.__file__)"]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (best, median)")
    args = parser.parse_args(argv)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-subscribers-") as tmp:
        print(f"measuring {measured_package(tmp)}")
        for n in args.sizes:
            path = Path(tmp) / f"subscribers-{n}.yaml"
            write_file(path, n)
            runs = sorted(check(path)[:3] for _ in range(max(1, args.repeat)))
            (took, cpu, rss), median = runs[0], runs[len(runs) // 2]
            figures[f"check_{n}_s"], figures[f"check_{n}_rss"] = took, rss
            figures[f"check_{n}_cpu_s"], figures[f"check_{n}_median_s"] = cpu, median[0]
            size = path.stat().st_size / 2**20
            print(
                f"subscribers check: {n} subscribers ({size:.1f} MiB of YAML), "
                f"best of {len(runs)}: {took:.2f}s wall, {cpu:.2f}s CPU, peak RSS "
                f"{rss / 2**20:.0f} MiB; median {median[0]:.2f}s wall, {median[1]:.2f}s CPU",
                flush=True,
            )
    return figures


if __name__ == "__main__":
    main()
