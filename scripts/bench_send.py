"""Benchmark: send one edition to 10,000 generated subscribers through Postfix's smtp-sink.

Prints messages/s and CPU seconds of the whole pipeline (select, render, MIME, send, ledger on
a temporary SQLite database) next to the transport ceiling: pre-built messages of the same size
blasted over the same number of connections, with stock aiosmtplib (`sendmail`) and with our
transport (its wire-form fast path), and the ratios.

    .venv/bin/python scripts/bench_send.py [--subscribers 10000] [--connections 16]

Needs /usr/sbin/smtp-sink (Debian: apt-get install postfix).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import logging
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["NEWSLETTER_SETTINGS_FILE"] = str(ROOT / "no-such-settings.toml")  # hermetic

import aiosmtplib  # noqa: E402

from newsletter.deliver import SmtpTransport, send_edition  # noqa: E402
from newsletter.models import RenderedEmail, Subscriber, Topic  # noqa: E402
from newsletter.pipeline import ingest_folder, selections_for  # noqa: E402
from newsletter.render import Renderer  # noqa: E402
from newsletter.settings import BUNDLED, SUBSCRIBERS_FILE, Settings  # noqa: E402
from newsletter.store import Store  # noqa: E402
from newsletter.subscribers import load_subscribers  # noqa: E402

NOW = dt.datetime(2026, 3, 17, 7, 0, tzinfo=dt.UTC)
SENDER = "digest@example.org"


@dataclasses.dataclass
class Measure:
    label: str
    messages: int
    wall_s: float
    cpu_s: float
    main_cpu_s: float  # this process alone (event loop, SMTP, ledger); the rest is workers

    @property
    def rate(self) -> float:
        return self.messages / self.wall_s


def cpu_seconds() -> tuple[float, float]:
    """(this process, reaped children: the render workers; smtp-sink is reaped last)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def measure(label: str, messages: Callable[[], int]) -> Measure:
    wall, (own, kids) = time.perf_counter(), cpu_seconds()
    n = messages()
    own2, kids2 = cpu_seconds()
    wall = time.perf_counter() - wall
    return Measure(label, n, wall, own2 - own + kids2 - kids, own2 - own)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sink(port: int) -> subprocess.Popen[bytes]:
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not Path(sink).exists():
        sys.exit("smtp-sink not found: apt-get install postfix (it ships /usr/sbin/smtp-sink)")
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # required when run as root
    proc = subprocess.Popen(
        [sink, *user, f"127.0.0.1:{port}", "1000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    sys.exit(f"smtp-sink did not start on port {port}")


def generated_subscribers(n: int) -> list[Subscriber]:
    """n subscribers with one to three of the example subscribers' topics each (seeded)."""
    examples = load_subscribers(BUNDLED / SUBSCRIBERS_FILE)
    topics: list[Topic] = [t for s in examples for t in s.topics]
    rng = random.Random(42)
    return [
        Subscriber(
            email=f"reader{i:06d}@example.org",
            name=f"Reader {i}",
            topics=tuple(rng.sample(topics, rng.randint(1, 3))),
            max_papers=rng.choice([5, 8, 10]),
        )
        for i in range(n)
    ]


def sample_messages(store: Store, settings: Settings, subs: list[Subscriber]) -> list[bytes]:
    edition = store.newest_date()
    assert edition is not None
    renderer = Renderer(settings)
    sels = selections_for(store, settings, subs[:200], edition)
    return [renderer.render(s, now=NOW).raw for s in sels if s.papers][:100]


async def _blast(
    send: Callable[[bytes], Coroutine[Any, Any, Any]], raws: list[bytes], n: int, workers: int
) -> int:
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await send(raws[i % len(raws)])

    await asyncio.gather(*(worker() for _ in range(workers)))
    return n


async def blast_stock(port: int, raws: list[bytes], n: int, connections: int) -> int:
    """Stock aiosmtplib: `connections` reused connections, sendmail() per message."""
    clients = [
        aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, start_tls=False, local_hostname="bench.local"
        )
        for _ in range(connections)
    ]
    await asyncio.gather(*(c.connect() for c in clients))
    pool: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
    for c in clients:
        pool.put_nowait(c)

    async def send(raw: bytes) -> None:
        client = await pool.get()
        try:
            await client.sendmail(SENDER, ["reader@example.org"], raw)
        finally:
            pool.put_nowait(client)

    done = await _blast(send, raws, n, connections)
    await asyncio.gather(*(c.quit() for c in clients))
    return done


async def blast_ours(settings: Settings, raws: list[bytes], n: int) -> int:
    """Our SmtpTransport (pool, fast path) with the same messages, no ledger or rendering."""
    transport = SmtpTransport(settings)
    await transport.start()
    msgs = [
        RenderedEmail("reader@example.org", "", f"<{i}@x>", "", "", r) for i, r in enumerate(raws)
    ]
    by_raw = {id(m.raw): m for m in msgs}

    async def send(raw: bytes) -> None:
        await transport.send(by_raw[id(raw)], SENDER)

    done = await _blast(send, [m.raw for m in msgs], n, transport.concurrency)
    await transport.close()
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="bench-send-") as tmp:
        port = free_port()
        sink = start_sink(port)
        try:
            settings = Settings(  # type: ignore[call-arg]
                _env_file=None,
                database_url=f"sqlite:///{tmp}/bench.db",
                outbox_dir=Path(tmp) / "outbox",
                reference_date=dt.date(2026, 11, 21),
                smtp_host="127.0.0.1",
                smtp_port=port,
                smtp_security="none",
                smtp_helo_name="bench.local",
                smtp_pool_size=args.connections,
                smtp_max_per_connection=100_000,
            )
            store = Store.open(settings.database_url)
            ingest_folder(store, settings, BUNDLED / "seeds", now=NOW)
            edition = store.newest_date()
            assert edition is not None
            subs = generated_subscribers(args.subscribers)
            raws = sample_messages(store, settings, subs)
            size = sum(map(len, raws)) / len(raws)
            reports = []

            def pipeline() -> int:
                report = asyncio.run(send_edition(settings, store, subs, edition, now=lambda: NOW))
                reports.append(report)
                return report.sent

            runs = [measure("pipeline (select, render, MIME, send, ledger)", pipeline)]
            n = runs[0].messages
            runs.append(
                measure(
                    "ceiling: stock aiosmtplib sendmail()",
                    lambda: asyncio.run(blast_stock(port, raws, n, args.connections)),
                )
            )
            runs.append(
                measure(
                    "ceiling: our transport (wire-form fast path)",
                    lambda: asyncio.run(blast_ours(settings, raws, n)),
                )
            )
            store.close()
        finally:
            sink.terminate()
            sink.wait()

    report = reports[0]
    print(
        f"\n{args.subscribers} subscribers, {n} digests sent (skipped {report.skipped}, "
        f"failed {report.failed}), mean size {size / 1024:.1f} KB, "
        f"{args.connections} connections, {os.cpu_count()} CPUs\n"
    )
    print(f"{'':48} {'msgs/s':>8} {'wall s':>8} {'CPU s':>8} {'main CPU s':>11}")
    for m in runs:
        print(f"{m.label:48} {m.rate:8.0f} {m.wall_s:8.2f} {m.cpu_s:8.2f} {m.main_cpu_s:11.2f}")
    pipe, stock, ours = runs
    print(
        f"\npipeline / stock ceiling: {pipe.rate / stock.rate:.2f}   "
        f"pipeline / our transport ceiling: {pipe.rate / ours.rate:.2f}"
    )


if __name__ == "__main__":
    main()
