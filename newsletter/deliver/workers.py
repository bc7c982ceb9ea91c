"""Selection and rendering (the CPU-heavy part), for a chunk of subscribers at a time: inline, or
in forked worker processes on large runs so rendering uses the other cores."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import gc
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from newsletter.addresses import address_key
from newsletter.deliver.host import senders_folder
from newsletter.deliver.wire import wire_form
from newsletter.errors import ConnectionLost, NewsletterError
from newsletter.models import DailyListing, RenderedEmail, Subscriber
from newsletter.pipeline import edition_listing, paper_index, selections_for, skip_reasons
from newsletter.render import Renderer
from newsletter.roster import pick
from newsletter.selection import compile as compiled_topics
from newsletter.settings import Settings
from newsletter.store import Store

log = logging.getLogger(__name__)

PREPARE_TRIES = 4  # a database connection dropped mid-chunk: the chunk is prepared again
# Topics a render worker keeps compiled (selection's `_TOPICS`, started afresh past this size):
# a worker lives for one run, where selection's own bound (for a daemon's long-lived index)
# would let each worker grow by ~2.4 MiB per 1,000 subscribers with topics of their own, to
# ~120 MiB. Compiling a topic again costs ~10 us (scoring it, ~400 us a reader): nothing.
WORKER_COMPILED = 4_000  # ~10 MiB
# Terms' look-ups a render worker keeps on its paper index (`PaperIndex.kept_terms`), for the
# same reason: ~3.5 KiB a term, 60 MiB over the 100,000 subscribers of bench_send's file.
WORKER_TERMS = 4_000


# --- select and render (the CPU-heavy part) -----------------------------------------------------
@dataclass(frozen=True, slots=True)
class Prepared:
    email: str  # lower-cased
    # without html/text, and without raw when `wire` is there: the message travels once
    message: RenderedEmail | None = None
    wire: bytes | None = None  # wire_form(raw), computed here rather than on the event loop
    skip: str | None = None
    error: str | None = None
    permanent: bool = True  # an error about this subscriber (not a bug of ours)


class Preparer:
    """Selection and rendering for a chunk of subscribers, in this process or a worker."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        renderer: Renderer,
        by_key: Mapping[str, Subscriber] | None = None,
    ) -> None:
        self.settings, self.store, self.renderer = settings, store, renderer
        # the run's subscribers by address_key: a forked worker reads its chunk's subscribers
        # itself (a roster reads them from its copy), so the parent neither parses nor pickles
        self.by_key = by_key
        self.index = paper_index(store)
        self.listing: DailyListing | None = None  # the edition's, read once, not per chunk

    def prepare_keys(
        self, keys: Sequence[str], edition: dt.date, now: dt.datetime
    ) -> list[Prepared]:
        """`prepare` for the run's subscribers with these address keys."""
        assert self.by_key is not None, "a preparer without the run's subscribers"
        return self.prepare(pick(self.by_key, keys), edition, now)

    def prepare(
        self, subscribers: Sequence[Subscriber], edition: dt.date, now: dt.datetime
    ) -> list[Prepared]:
        for attempt in range(PREPARE_TRIES):  # reads, and reader ids made idempotently
            try:
                return self._prepare(subscribers, edition, now)
            except ConnectionLost as exc:
                if attempt == PREPARE_TRIES - 1:
                    raise
                log.warning("%s; preparing the chunk again", exc.cause)
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def _prepare(
        self, subscribers: Sequence[Subscriber], edition: dt.date, now: dt.datetime
    ) -> list[Prepared]:
        listing = self.listing = edition_listing(self.store, edition, self.listing)
        index = self.index  # one paper index and one listing for every chunk of the run
        selections = selections_for(
            self.store, self.settings, subscribers, edition, index=index, listing=listing
        )
        why_empty = skip_reasons(
            self.store, self.settings, selections, edition, index=index, listing=listing
        )
        self.renderer.prime([s.subscriber for s in selections], now)
        out = []
        for sel in selections:
            email = address_key(sel.subscriber.email)
            if email in why_empty:
                out.append(Prepared(email, skip=why_empty[email]))
                continue
            try:
                msg, wire = self.renderer.render_wire(sel, now=now, wire_only=True)
            except (ValueError, NewsletterError) as exc:  # e.g. an address we cannot send to
                out.append(Prepared(email, error=f"cannot render the digest: {exc}"))
                continue
            except Exception as exc:  # a bug: shunt this digest (logged), keep going
                log.exception("rendering the digest for %s failed", email)
                error = f"cannot render the digest: {type(exc).__name__}: {exc}"
                out.append(Prepared(email, error=error, permanent=False))
                continue
            if wire is None:
                wire = wire_form(msg.raw)
            # only the wire form travels on (~35 KB less to pickle and pipe per digest):
            # raw_form(wire) gives the message back where it is needed
            slim = dataclasses.replace(msg, html="", text="", raw=b"" if wire else msg.raw)
            out.append(Prepared(email, slim, wire))
        return out


_WORKER: Preparer | None = None  # in a worker: the preparer it runs


def _worker_signals() -> None:
    """Signals are for the parent: it stops the run and then shuts the pool down. If the
    parent dies instead (SIGKILL), nothing tells the workers, so each watches for it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # so does systemd's stop
    parent = os.getppid()

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=exit_with_parent, name="exit-with-parent", daemon=True).start()


def _worker_caches() -> None:
    """A worker's memory stays flat in the number of subscribers (see WORKER_COMPILED)."""
    compiled_topics.MAX_COMPILED = min(compiled_topics.MAX_COMPILED, WORKER_COMPILED)


def _worker_init_forked(lock_dir: Path) -> None:
    _worker_signals()
    _worker_caches()
    # A forked child shares the parent's event-loop wakeup socket: a signal here would reach
    # the parent's loop as if the parent had got it.
    with contextlib.suppress(ValueError):  # only possible in the main thread
        signal.set_wakeup_fd(-1)
    _close_inherited_locks(lock_dir)
    # What the child inherited (paper index, templates, modules) lives as long as it does:
    # out of the collector's reach, full collections no longer walk it (~0.07 s each) nor
    # copy its pages by touching their headers.
    gc.freeze()
    assert _WORKER is not None, "fork without a preparer"
    _WORKER.store.engine.dispose(close=False)  # fresh connections; never the parent's


def _close_inherited_locks(lock_dir: Path) -> None:
    """Drop our copy of the parent's sender lock (Store.sender_lock: an flock on
    `<db>.send-*.lock` beside the database). An flock lives as long as any copy of its descriptor, so a worker
    outliving a SIGKILLed parent would otherwise keep the next run out for a moment."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:  # no /proc: nothing to find them with
        return
    root, senders = os.path.realpath(lock_dir), os.path.realpath(senders_folder())
    for fd in fds:
        with contextlib.suppress(OSError, ValueError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            name, folder = os.path.basename(target), os.path.dirname(target)
            ours = (folder == root and ".send-" in name) or folder == senders  # HostSenders too
            if ours and name.endswith(".lock"):
                os.close(int(fd))


def _worker_init_spawned(settings: Settings) -> None:
    _worker_signals()
    _worker_caches()
    global _WORKER
    store = Store.open(
        settings.database_url,
        lock_timeout=settings.db_lock_timeout,
        statement_timeout=settings.db_statement_timeout,
    )
    _WORKER = Preparer(settings, store, Renderer(settings))


def _worker_prepare(keys: list[str], edition: dt.date, now: dt.datetime) -> list[Prepared]:
    assert _WORKER is not None, "worker not initialised"
    try:
        return _WORKER.prepare_keys(keys, edition, now)
    finally:
        _forget_terms(_WORKER)


def _worker_prepare_subscribers(
    subscribers: list[Subscriber], edition: dt.date, now: dt.datetime
) -> list[Prepared]:
    assert _WORKER is not None, "worker not initialised"
    try:
        return _WORKER.prepare(subscribers, edition, now)
    finally:
        _forget_terms(_WORKER)


def _forget_terms(preparer: Preparer) -> None:
    """Between chunks: a worker's term look-ups start afresh past WORKER_TERMS."""
    if preparer.index.kept_terms() > WORKER_TERMS:
        preparer.index.forget_terms()


def _noop() -> None:
    return None


class InlinePool:
    """Prepares in the event loop's thread: small runs, and in-memory databases."""

    depth = 0

    def __init__(self, preparer: Preparer) -> None:
        self.preparer = preparer

    def submit(
        self, keys: Sequence[str], edition: dt.date, now: dt.datetime
    ) -> asyncio.Future[list[Prepared]]:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(self.preparer.prepare_keys(keys, edition, now))
        return fut

    def close(self) -> None:
        return None


class ProcessPool:
    """Prepares in worker processes.

    Forked where possible: a child inherits the imported modules, the paper index and the
    compiled templates, where a spawned one spends ~1.5 s of CPU rebuilding them. Forking is
    safe here because it happens first thing in the run, before the ledger thread or any
    other thread of ours exists (the executor forks all workers at the first submit).
    """

    def __init__(
        self,
        settings: Settings,
        preparer: Preparer,
        workers: int,
        *,
        share: Callable[[], int] | None = None,
    ) -> None:
        global _WORKER
        self.workers, self.share = workers, share
        init: Callable[[], None]
        self.preparer = preparer
        self.forked = "fork" in multiprocessing.get_all_start_methods()
        if self.forked:
            _WORKER = preparer
            ctx, init = "fork", functools.partial(_worker_init_forked, preparer.store.lock_dir)
        else:
            ctx, init = "spawn", functools.partial(_worker_init_spawned, settings)
        self._executor = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context(ctx), initializer=init
        )
        self._executor.submit(_noop)  # start the workers now, while we have no threads

    @property
    def depth(self) -> int:
        """How many chunks may wait beyond the one awaited: enough to keep every worker busy;
        when the workers outnumber this sender's `share` of the cores (more senders came),
        no more than that share is kept busy."""
        busy = min(self.workers, self.share()) if self.share is not None else self.workers
        return 2 * busy if busy == self.workers else busy - 1

    def submit(
        self, keys: Sequence[str], edition: dt.date, now: dt.datetime
    ) -> asyncio.Future[list[Prepared]]:
        loop = asyncio.get_running_loop()
        if self.forked:  # the worker has the run's subscribers: it reads its own
            return loop.run_in_executor(self._executor, _worker_prepare, list(keys), edition, now)
        assert self.preparer.by_key is not None, "a preparer without the run's subscribers"
        subs = pick(self.preparer.by_key, keys)
        return loop.run_in_executor(self._executor, _worker_prepare_subscribers, subs, edition, now)

    def close(self) -> None:
        global _WORKER
        self._executor.shutdown(wait=True, cancel_futures=True)
        _WORKER = None
