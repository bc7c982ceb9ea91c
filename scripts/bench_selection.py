"""Time the matcher: index build, then one edition's selection for 10k and 100k subscribers.

Subscribers get 1-3 topics drawn from a vocabulary of research themes: the keywords a user
would type (a few themes are popular, so topics repeat; some keywords are rare or match
nothing), a description reworded per subscriber, and now and then an exclude term. Run as

    .venv/bin/python scripts/bench_selection.py [--sizes 10000 100000] [--copies 1] [--repeat 3]

`--copies N` indexes N copies of the seed papers to mimic a larger stored collection. A global
bench script can call `main([...])`, which returns the timings as well as printing them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import resource
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from newsletter.ingest import dump_files, read_dump
from newsletter.models import DailyListing, Paper, Subscriber, Topic
from newsletter.selection import PaperIndex, select_for
from newsletter.settings import BUNDLED, Settings

ROOT = Path(__file__).resolve().parent.parent

# (theme, keywords a user might pick from, description). Themes early in the list are drawn
# more often (popular topics repeat across subscribers), the later ones rarely.
THEMES: list[tuple[str, list[str], str]] = [
    (
        "LLM alignment",
        [
            "RLHF",
            "DPO",
            "preference optimization",
            "reward model",
            "human feedback",
            "alignment",
            "reward hacking",
        ],
        "Aligning large language models with human or AI "
        "preference feedback: RLHF, reward modelling, DPO and its variants, reward hacking.",
    ),
    (
        "Offline RL",
        [
            "offline RL",
            "offline reinforcement learning",
            "batch RL",
            "CQL",
            "conservative Q-learning",
            "behavior regularization",
        ],
        "Reinforcement learning from fixed "
        "datasets without environment interaction, offline-to-online fine-tuning.",
    ),
    (
        "Robot learning",
        [
            "robot manipulation",
            "visuomotor policy",
            "imitation learning",
            "diffusion policy",
            "VLA",
            "sim-to-real",
        ],
        "Learning robot policies from demonstrations, "
        "vision-language-action models, dexterous manipulation and sim-to-real transfer.",
    ),
    (
        "World models",
        ["world model", "model-based RL", "dynamics model", "MBRL", "planning"],
        "Learning predictive models of environment dynamics and planning with them.",
    ),
    (
        "Bandits",
        [
            "multi-armed bandit",
            "contextual bandits",
            "linear bandit",
            "regret",
            "Thompson sampling",
            "UCB",
        ],
        "Regret analysis and algorithms for bandit problems.",
    ),
    (
        "Exploration",
        ["exploration", "intrinsic motivation", "curiosity", "novelty search", "sparse reward"],
        "How agents explore: intrinsic rewards, curiosity, count bonuses, "
        "hard-exploration problems and skill discovery.",
    ),
    (
        "Diffusion models",
        ["diffusion model", "score-based", "denoising", "flow matching", "guidance"],
        "Diffusion and score-based generative models, guidance and fast sampling.",
    ),
    (
        "RL theory",
        ["sample complexity", "regret bound", "PAC", "function approximation", "MDP"],
        "Provable guarantees for reinforcement learning: regret, sample complexity.",
    ),
    (
        "Multi-agent",
        ["multi-agent", "MARL", "cooperative", "decentralized", "game theory", "Nash equilibrium"],
        "Multiple learning agents that cooperate or compete.",
    ),
    (
        "NAS",
        ["neural architecture search", "NAS", "AutoML", "hyperparameter optimization"],
        "Automatically designing neural networks: search spaces, search strategies, AutoML.",
    ),
    (
        "LLM agents",
        ["LLM agents", "tool use", "web agents", "reasoning", "self-improvement"],
        "Language-model agents that act in environments, use tools and improve themselves.",
    ),
    (
        "Graph learning",
        ["graph neural network", "GNN", "message passing", "graph transformer"],
        "Learning on graphs: message passing, expressivity, scalability.",
    ),
    (
        "Time series",
        ["time series", "forecasting", "temporal point process"],
        "Forecasting and modelling of time series and event sequences.",
    ),
    (
        "Physics ML",
        ["physics-informed", "PINN", "neural operator", "differential equations"],
        "Neural networks for physical systems and differential equations.",
    ),
    (
        "Optimization",
        ["stochastic optimization", "SGD", "convergence", "bilevel optimization"],
        "Stochastic and bilevel optimisation for machine learning, with convergence rates.",
    ),
    (
        "Representation learning",
        ["self-supervised learning", "contrastive learning", "JEPA", "representation learning"],
        "Learning representations without labels for downstream use.",
    ),
    (
        "Video",
        ["video generation", "action recognition", "video understanding"],
        "Generating and understanding video, actions and human motion.",
    ),
    (
        "Quantum ML",
        ["quantum machine learning", "variational quantum circuits", "qubits"],
        "Machine learning on quantum hardware.",
    ),
    (
        "Fairness",
        ["fairness", "algorithmic bias", "demographic parity"],
        "Fair machine learning and bias measurement.",
    ),
    (
        "Federated",
        ["federated learning", "differential privacy", "secure aggregation"],
        "Privacy-preserving distributed training.",
    ),
]
RARE = [
    "Koopman operator",
    "Hopfield network",
    "grokking",
    "Schrödinger bridge",
    "mode connectivity",
    "bisimulation",
    "Lagrangian duality",
    "Kolmogorov-Arnold",
    "DICE",
    "hindsight",
    "martingale",
    "Tucker decomposition",
    "dormant neurons",
    "stitching",
]
FILLERS = [
    "I read mostly theory.",
    "Applications to robotics welcome.",
    "Especially scaling studies.",
    "Prefer papers with code.",
    "Also benchmarks and datasets.",
]


def load_papers(copies: int) -> tuple[list[Paper], DailyListing]:
    """Seed papers (times `copies`, under new ids) and the seed day with the most entries."""
    listings = [
        read_dump(p, reference=dt.date(2025, 12, 31)) for p in dump_files(BUNDLED / "seeds")
    ]
    papers = {p.id: p for lst in listings for p in lst.papers}
    extra = [replace(p, id=f"{p.id}-{c}") for c in range(1, copies) for p in papers.values()]
    return [*papers.values(), *extra], max(listings, key=lambda lst: len(lst.entries))


def make_subscribers(n: int, seed: int = 7) -> list[Subscriber]:
    rng = random.Random(seed)
    weights = [1.0 / (k + 1) for k in range(len(THEMES))]  # Zipf-like popularity
    subs = []
    for s in range(n):
        topics = []
        for name, keywords, description in rng.choices(THEMES, weights, k=rng.randint(1, 3)):
            picked = rng.sample(keywords, rng.randint(1, min(5, len(keywords))))
            if rng.random() < 0.2:
                picked.append(rng.choice(RARE))
            if rng.random() < 0.5:  # half the users reword: a distinct description
                description = f"{description} {rng.choice(FILLERS)} ({rng.randrange(10_000)})"
            topics.append(Topic(name, tuple(picked), description))
        exclude = (rng.choice(RARE),) if rng.random() < 0.1 else ()
        subs.append(Subscriber(f"user{s}@example.org", topics=tuple(topics), exclude=exclude))
    return subs


def _peak_rss_mib() -> float:
    """This process's peak resident set (Linux reports KiB), subscribers and index included."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--copies", type=int, default=1, help="index N copies of the seeds")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (best, median)")
    args = parser.parse_args(argv)
    threshold = Settings.model_fields["relevance_threshold"].default
    papers, listing = load_papers(args.copies)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    PaperIndex.build(papers)
    timings["index_build"] = time.perf_counter() - start
    print(f"index build: {len(papers)} papers in {timings['index_build']:.2f}s")

    for n in args.sizes:
        subs = make_subscribers(n)
        runs = []
        for _ in range(max(1, args.repeat)):
            index = PaperIndex.build(papers)  # fresh: term matching is part of the measured time
            start, cpu = time.perf_counter(), time.process_time()
            selections = select_for(index, listing, subs, threshold=threshold)
            runs.append((time.perf_counter() - start, time.process_time() - cpu))
        runs.sort()
        (took, cpu), median = runs[0], runs[len(runs) // 2]
        timings[f"select_{n}"], timings[f"select_{n}_median"] = took, median[0]
        timings[f"select_{n}_cpu"], timings[f"peak_rss_mib_{n}"] = cpu, _peak_rss_mib()
        sent = sum(len(s.papers) for s in selections)
        topics = len({t for s in subs for t in s.topics})
        print(
            f"select_for: {n} subscribers ({topics} distinct topics), {len(listing.entries)} "
            f"papers listed, best of {len(runs)}: {took:.2f}s wall ({took / n * 1e6:.0f} µs "
            f"each), {cpu:.2f}s CPU; median {median[0]:.2f}s wall, {median[1]:.2f}s CPU; "
            f"{sent} papers chosen; peak RSS so far {timings[f'peak_rss_mib_{n}']:.0f} MiB",
            flush=True,
        )
    return timings


if __name__ == "__main__":
    main()
