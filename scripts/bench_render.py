"""Render + MIME throughput for many subscribers: `python scripts/bench_render.py [N]`.

Synthetic Selections of 10 seed papers each (topics matched by keyword, so excerpts carry
real highlights), rendered with the bundled templates. Prints emails/s and where the time
goes (context + Jinja vs MIME assembly), the stdlib `email` alternative for comparison, and
the cost of DKIM signing with a throwaway RSA-2048 key.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import statistics
import sys
import tempfile
import time
from email.message import EmailMessage
from email.policy import SMTP
from functools import cache
from pathlib import Path

from newsletter.ingest import read_dump
from newsletter.mime import assemble, sign_dkim
from newsletter.models import Paper, SelectedPaper, Selection, Subscriber, Topic, TopicMatch
from newsletter.render import EXCERPT_CHARS, Renderer
from newsletter.settings import BUNDLED, Settings

ROOT = Path(__file__).resolve().parent.parent
NOW = dt.datetime(2026, 3, 17, 7, 0, tzinfo=dt.UTC)
TOPICS = (
    Topic("Offline RL", ("offline RL", "offline reinforcement learning", "batch RL")),
    Topic("RLHF", ("RLHF", "human feedback", "preference optimization", "reward model")),
    Topic("Exploration", ("exploration", "intrinsic motivation", "curiosity")),
    Topic("Bandits", ("bandit", "bandits", "regret")),
    Topic("Robot learning", ("robot", "robotic", "manipulation", "locomotion")),
)


@cache
def _match(paper: Paper, topic: Topic) -> TopicMatch | None:
    hits = {}
    for kw in topic.keywords:
        for m in re.finditer(r"(?<!\w)" + re.escape(kw) + r"(?!\w)", paper.abstract, re.I):
            hits.setdefault(kw, []).append(m.group(0))
    if not hits:
        return None
    highlights = tuple(dict.fromkeys(h for hs in hits.values() for h in hs))
    return TopicMatch(topic.name, tuple(hits), highlights=highlights, score=float(len(hits)))


def selections(n: int, seed: int = 7) -> list[Selection]:
    rng = random.Random(seed)
    days = [
        read_dump(p, reference=dt.date(2026, 11, 21)) for p in sorted(BUNDLED.glob("seeds/*.txt"))
    ]
    out = []
    for i in range(n):
        day = days[i % len(days)]
        topics = tuple(rng.sample(TOPICS, rng.randint(1, 3)))
        picks = []
        for entry in rng.sample(day.entries, 10):
            matches = tuple(m for t in topics if (m := _match(entry.paper, t)))
            picks.append(SelectedPaper(entry.paper, float(len(matches)), entry.rank, True, matches))
        sub = Subscriber(f"reader{i}@example.org", name=f"Reader {i}", topics=topics)
        out.append(Selection(sub, day.date, tuple(picks)))
    return out


def _stdlib_mime(html: str, text: str) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "Trending Papers <digest@example.org>"
    msg["To"] = "Reader <reader@example.org>"
    msg["Subject"] = "10 papers on Offline RL and RLHF from Mar 17"
    msg.set_content(text, cte="quoted-printable")
    msg.add_alternative(html, subtype="html", cte="quoted-printable")
    return msg.as_bytes()


def _rsa_key() -> Path | None:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError:
        return None
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    path = Path(tempfile.mkdtemp()) / "dkim.pem"
    path.write_bytes(pem)
    return path


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else 10_000
    scratch = tempfile.mkdtemp(prefix="bench-render-")  # the readers' ids live in a store
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"sqlite:///{scratch}/bench.db",
        public_base_url="https://news.example.org",
        signing_key="bench-secret-" + "k" * 40,  # type: ignore[arg-type]
    )
    t0 = time.perf_counter()
    renderer = Renderer(settings)
    startup = time.perf_counter() - t0
    sels = selections(n)
    renderer.prime([sel.subscriber for sel in sels], NOW)  # as the send loop does, per chunk

    t0 = time.perf_counter()
    sizes = []
    for sel in sels:
        email = renderer.render(sel, now=NOW)
        sizes.append(len(email.html.encode("utf-8")))
    total = time.perf_counter() - t0

    # The split, measured on a sample: context + Jinja (HTML and text) vs MIME assembly.
    sample = sels[: min(n, 2000)]
    t0 = time.perf_counter()
    parts = []
    for sel in sample:
        links = renderer.links_for(sel, NOW)
        ctx = renderer._context(sel, sel.papers, EXCERPT_CHARS, "https://x.example/u", links)
        parts.append((renderer._html.render(ctx), renderer._text.render(ctx)))
    jinja_ms = (time.perf_counter() - t0) * 1000 / len(sample)
    headers = [("From", "x <digest@example.org>"), ("To", "reader@example.org")]
    t0 = time.perf_counter()
    for html, text in parts:
        assemble(headers, text, html, "=_alt_0123")
    mime_ms = (time.perf_counter() - t0) * 1000 / len(sample)
    t0 = time.perf_counter()
    for html, text in parts[:200]:
        _stdlib_mime(html, text)
    stdlib_ms = (time.perf_counter() - t0) * 1000 / len(parts[:200])

    print(f"renderer start-up (compile MJML, test-render): {startup * 1000:.0f} ms")
    print(f"rendered {n} emails in {total:.2f} s: {n / total:,.0f} emails/s")
    print(f"  per email {total * 1000 / n:.3f} ms; split on {len(sample)} emails:")
    print(f"  context + Jinja (HTML + text): {jinja_ms:.3f} ms")
    print(f"  MIME (hand-built QP, CRLF):    {mime_ms:.3f} ms")
    print(f"  MIME with stdlib email:        {stdlib_ms:.3f} ms (not used)")
    print(
        f"  HTML size: median {statistics.median(sizes) / 1024:.1f} KB, "
        f"max {max(sizes) / 1024:.1f} KB"
    )
    key = _rsa_key()
    if key is not None:
        signed = Settings(
            _env_file=None,  # type: ignore[call-arg]
            dkim_selector="bench",
            dkim_domain="example.org",
            dkim_private_key_file=key,
        )
        raw = renderer.render(sels[0], now=NOW).raw
        t0 = time.perf_counter()
        for _ in range(50):
            sign_dkim(raw, signed)
        print(f"  DKIM rsa-sha256 (dkimpy), if enabled: {(time.perf_counter() - t0) * 20:.2f} ms")
        key.unlink()
        key.parent.rmdir()


if __name__ == "__main__":
    main()
