"""Benchmark: a whole `newsletter send` of one edition into Postfix's smtp-sink, on PostgreSQL.

Each send is the real command in its own process (`python -m newsletter send --json`): it loads a
generated subscriber file (bench_subscribers' layout), selects, renders, builds MIME, sends over
SMTP and keeps the ledger in a fresh PostgreSQL schema. Printed:

- `--workers 1 2 4`: N send processes started at once on one schema and one edition, for
  `--subscribers` digests. Each process's exit status, its `"sent"` (from `--json`) or its last
  error line (a second sender on the same edition exits with LockHeld until scale-out lands:
  the total is then one process's work), peak RSS and CPU; the total sent, messages/s over the
  wall time of the whole group, and the ratio to the ceiling below.
- the ceiling: stock aiosmtplib `sendmail()` blasting pre-built messages of the same mean size
  over the same number of connections to the same smtp-sink;
- CPU per message beside each rate: the senders' (their render workers included; the whole
  send, subscriber loading and start-up too) and smtp-sink's, from the kernel's accounting, which
  other work on a shared machine disturbs far less than it does wall time;
- `--rss-sizes 10000 100000`: peak RSS of a whole single-process send at each size (memory
  should stay flat in the number of subscribers). A size above `--subscribers` is a file where
  only `--due` subscribers (default: `--subscribers`) get a digest today and the others match
  nothing: each is loaded, checked, selected for and recorded (skipped) as in any send, but
  rendering and sending 100,000 digests would take the bench many minutes. `--due 0` sends
  them all.

    .venv/bin/python scripts/bench_send.py [--subscribers 10000] [--workers 1 2 4]
        [--rss-sizes 10000 100000] [--due N] [--connections 16]

Needs /usr/sbin/smtp-sink (installed with `apt-get install -y postfix` when missing, through
sudo when not root) and PostgreSQL at NEWSLETTER_TEST_POSTGRES_URL (default: the test suite's
postgresql+psycopg://postgres@127.0.0.1:5432/test). Timings on a shared machine are noisy:
compare CPU seconds too, and repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
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
sys.path.insert(0, str(ROOT / "scripts"))
os.environ["NEWSLETTER_SETTINGS_FILE"] = os.devnull  # hermetic

import aiosmtplib  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from bench_rss import Watch  # noqa: E402
from bench_subscribers import write_file  # noqa: E402

from newsletter.deliver import SmtpTransport  # noqa: E402
from newsletter.models import RenderedEmail, Subscriber  # noqa: E402
from newsletter.pipeline import ingest_folder, selections_for  # noqa: E402
from newsletter.render import Renderer  # noqa: E402
from newsletter.settings import BUNDLED, Settings  # noqa: E402
from newsletter.store import Store  # noqa: E402
from newsletter.subscribers import load_subscribers  # noqa: E402

NOW = dt.datetime(2026, 3, 17, 7, 0, tzinfo=dt.UTC)
SENDER = "digest@example.org"
REFERENCE_DATE = "2026-11-21"
PG_URL = os.environ.get(
    "NEWSLETTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SINK = "/usr/sbin/smtp-sink"


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


def proc_cpu(pid: int) -> float:
    """CPU seconds a live process has used so far (the sink's share of each phase)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_sink() -> str:
    """smtp-sink's path, installing Postfix (which ships it) when it is missing."""
    found = shutil.which("smtp-sink") or (SINK if Path(SINK).exists() else None)
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    print("smtp-sink not found: installing postfix (apt-get install -y postfix)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "postfix"]):
        try:
            subprocess.run([*sudo, *command], env=env, check=True, stdout=subprocess.DEVNULL)
        except (OSError, subprocess.CalledProcessError) as exc:
            sys.exit(
                f"smtp-sink is missing and installing postfix failed ({exc}); install it by hand: "
                "sudo apt-get install -y postfix (it ships /usr/sbin/smtp-sink)"
            )
    if not Path(SINK).exists():
        sys.exit(f"postfix is installed but {SINK} is not there; install postfix by hand")
    return SINK


def start_sink(port: int) -> subprocess.Popen[bytes]:
    sink = ensure_sink()
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


def sample_messages(store: Store, settings: Settings, subs: list[Subscriber]) -> list[bytes]:
    """Up to 100 digests as the send renders them (the ceiling blasts these)."""
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


@dataclasses.dataclass
class Sender:
    """One `newsletter send` process: how it ended and what it cost."""

    status: int
    sent: int | None  # from --json; None when it printed none (e.g. LockHeld)
    said: str  # its last line on stderr
    wall_s: float
    cpu_s: float
    rss: int  # peak of the process or any of its render workers, bytes (see bench_rss)
    rss_own: int = 0  # the process's own peak
    rss_worker: int = 0  # the largest peak of any of its render workers


class Bench:
    """A scratch folder, an smtp-sink and PostgreSQL schemas for whole sends."""

    def __init__(self, tmp: Path, port: int, connections: int) -> None:
        self.tmp, self.port, self.connections = tmp, port, connections
        self.engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        self.schemas: list[str] = []

    def schema(self) -> str:
        """The URL of a fresh schema holding the seed listings (dropped at close)."""
        name = f"bench_{os.getpid()}_{len(self.schemas)}"
        with self.engine.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
            conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
        self.schemas.append(name)
        sep = "&" if "?" in PG_URL else "?"
        url = f"{PG_URL}{sep}options=-csearch_path%3D{name}"
        store = Store.open(url)
        try:
            ingest_folder(store, self.settings(url), BUNDLED / "seeds", now=NOW)
        finally:
            store.close()
        return url

    def env(self, url: str, subscribers: Path) -> dict[str, str]:
        # An installed service has its bytecode cached; a shell that says not to write it
        # (PYTHONDONTWRITEBYTECODE) would have every sender compile the package from source
        # (~0.15 s of CPU each), a cost no deployment pays.
        inherited = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        return {
            **inherited,
            "NEWSLETTER_SETTINGS_FILE": os.devnull,
            "NEWSLETTER_DATABASE_URL": url,
            "NEWSLETTER_SUBSCRIBERS_FILE": str(subscribers),
            "NEWSLETTER_OUTBOX_DIR": str(self.tmp / "outbox"),
            "NEWSLETTER_REFERENCE_DATE": REFERENCE_DATE,
            "NEWSLETTER_SMTP_HOST": "127.0.0.1",
            "NEWSLETTER_SMTP_PORT": str(self.port),
            "NEWSLETTER_SMTP_SECURITY": "none",
            "NEWSLETTER_SMTP_HELO_NAME": "bench.local",
            "NEWSLETTER_SMTP_POOL_SIZE": str(self.connections),
            "NEWSLETTER_SMTP_MAX_PER_CONNECTION": "100000",
            "NEWSLETTER_LOG_LEVEL": "WARNING",
        }

    def settings(self, url: str) -> Settings:
        return Settings(  # type: ignore[call-arg]
            _env_file=None,
            database_url=url,
            outbox_dir=self.tmp / "outbox",
            reference_date=dt.date.fromisoformat(REFERENCE_DATE),
            smtp_host="127.0.0.1",
            smtp_port=self.port,
            smtp_security="none",
            smtp_helo_name="bench.local",
            smtp_pool_size=self.connections,
            smtp_max_per_connection=100_000,
        )

    def send(self, subscribers: Path, workers: int) -> tuple[float, list[Sender]]:
        """`workers` send processes at once on one fresh schema: (group wall s, each)."""
        url = self.schema()
        env = self.env(url, subscribers)
        command = [sys.executable, "-m", "newsletter", "send", "--json"]
        started = time.perf_counter()
        procs = []
        for n in range(workers):
            out = (self.tmp / f"send-{n}.out").open("wb")
            err = (self.tmp / f"send-{n}.err").open("wb")
            procs.append(subprocess.Popen(command, env=env, cwd=self.tmp, stdout=out, stderr=err))
            out.close()
            err.close()
        watches = {proc.pid: (n, proc, Watch(proc.pid)) for n, proc in enumerate(procs)}
        senders: dict[int, Sender] = {}
        while len(senders) < workers:  # in the order they exit, each timed as it does
            pid, status, usage = os.wait4(-1, 0)  # CPU from here; RSS from the watch
            if pid not in watches:
                continue  # not a sender (smtp-sink only ends when told)
            n, proc, watch = watches[pid]
            proc.returncode = os.waitstatus_to_exitcode(status)
            senders[n] = self._sender(n, proc.returncode, started, usage, watch.stop())
            senders[n].rss_own, senders[n].rss_worker = watch.parent_and_children()
        wall = time.perf_counter() - started
        return wall, [senders[n] for n in range(workers)]

    def _sender(self, n: int, status: int, started: float, usage: Any, rss: int) -> Sender:
        out = (self.tmp / f"send-{n}.out").read_text(errors="replace")
        err = (self.tmp / f"send-{n}.err").read_text(errors="replace").strip().splitlines()
        sent = None
        with contextlib.suppress(ValueError, KeyError, TypeError):
            sent = int(json.loads(out)["sent"])
        return Sender(
            status,
            sent,
            err[-1] if err else "",
            time.perf_counter() - started,
            usage.ru_utime + usage.ru_stime,
            rss,
        )

    def close(self) -> None:
        with self.engine.connect() as conn:
            for name in self.schemas:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        self.engine.dispose()


def show_senders(senders: list[Sender]) -> None:
    for n, s in enumerate(senders):
        what = f"sent {s.sent}" if s.sent is not None else f"no report: {s.said[:90]}"
        print(
            f"    process {n + 1}: exit {s.status}, {what}, {s.wall_s:.1f} s, "
            f"CPU {s.cpu_s:.1f} s, peak RSS {s.rss / 2**20:.0f} MiB "
            f"(the process {s.rss_own / 2**20:.0f}, its largest render worker "
            f"{s.rss_worker / 2**20:.0f})",
            flush=True,
        )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rss-sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--due", type=int, help="digests due in a larger --rss-sizes file")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    due = args.subscribers if args.due is None else args.due
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    figures: dict[str, float] = {}

    with tempfile.TemporaryDirectory(prefix="bench-send-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        sink = start_sink(port)
        bench = Bench(tmp, port, args.connections)
        try:
            files = {}
            for n in sorted({args.subscribers, *args.rss_sizes}):
                files[n] = tmp / f"subscribers-{n}.yaml"
                write_file(files[n], n, due=due if n > args.subscribers and due else None)

            url = bench.schema()
            store = Store.open(url)
            raws = sample_messages(
                store, bench.settings(url), load_subscribers(files[args.subscribers])[:200]
            )
            store.close()
            size = sum(map(len, raws)) / len(raws)
            n = args.subscribers
            print(
                f"{n} subscribers, mean digest {size / 1024:.1f} KB, {args.connections} "
                f"connections, {os.cpu_count()} CPUs (shared: figures are noisy)",
                flush=True,
            )
            sink_cpu = proc_cpu(sink.pid)
            stock = measure(
                "stock aiosmtplib sendmail()",
                lambda: asyncio.run(blast_stock(port, raws, n, args.connections)),
            )
            stock_sink, sink_cpu = proc_cpu(sink.pid) - sink_cpu, proc_cpu(sink.pid)
            ours = measure(
                "our transport alone",
                lambda: asyncio.run(blast_ours(bench.settings(url), raws, n)),
            )
            ours_sink, sink_cpu = proc_cpu(sink.pid) - sink_cpu, proc_cpu(sink.pid)
            for m, sunk in ((stock, stock_sink), (ours, ours_sink)):
                print(
                    f"  ceiling, {m.label}: {m.rate:.0f} msgs/s ({m.wall_s:.2f} s; CPU per "
                    f"message: client {1000 * m.main_cpu_s / m.messages:.2f} ms, smtp-sink "
                    f"{1000 * sunk / m.messages:.2f} ms)",
                    flush=True,
                )
            figures["stock_rate"] = stock.rate

            for workers in args.workers:
                sink_cpu = proc_cpu(sink.pid)
                wall, senders = bench.send(files[n], workers)
                sunk = proc_cpu(sink.pid) - sink_cpu
                total = sum(s.sent or 0 for s in senders)
                rate = total / wall
                cpu = sum(s.cpu_s for s in senders)
                figures[f"send_{workers}w_rate"] = rate
                figures[f"send_{workers}w_ratio"] = rate / stock.rate
                figures[f"send_{workers}w_cpu_ms"] = 1000 * cpu / max(total, 1)
                print(
                    f"  send, {workers} process(es): {total} sent in {wall:.1f} s = {rate:.0f} "
                    f"msgs/s, {rate / stock.rate:.2f}x stock; CPU {cpu:.1f} s = "
                    f"{1000 * cpu / max(total, 1):.2f} ms a digest (+ smtp-sink "
                    f"{1000 * sunk / max(total, 1):.2f} ms) "
                    f"(peak RSS {max(s.rss for s in senders) / 2**20:.0f} MiB)",
                    flush=True,
                )
                show_senders(senders)
                if workers == 1:
                    figures[f"send_rss_{n}"] = senders[0].rss

            for size_n in args.rss_sizes:
                if size_n == n and f"send_rss_{n}" in figures:
                    continue
                wall, (one,) = bench.send(files[size_n], 1)
                figures[f"send_rss_{size_n}"] = one.rss
                print(
                    f"  send to {size_n} subscribers: sent {one.sent} in {wall:.1f} s "
                    f"(exit {one.status}"
                    f"{'; the others matched nothing today' if due and size_n > n else ''}), "
                    f"peak RSS {one.rss / 2**20:.0f} MiB (the process {one.rss_own / 2**20:.0f}, "
                    f"its largest render worker {one.rss_worker / 2**20:.0f})",
                    flush=True,
                )
            rss = ", ".join(
                f"{k.removeprefix('send_rss_')}: {v / 2**20:.0f} MiB"
                for k, v in figures.items()
                if k.startswith("send_rss_")
            )
            print(f"  peak RSS of a whole single-process send: {rss}", flush=True)
        finally:
            bench.close()
            sink.terminate()
            sink.wait()
    return figures


if __name__ == "__main__":
    main()
