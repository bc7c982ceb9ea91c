"""The send loop of one edition: streams subscribers in chunks through select+render, plans their
ledger rows, and drains a bounded queue with the transport's senders."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from newsletter.addresses import address_key
from newsletter.deliver.claims import Claims, SharedRate, call_retrying
from newsletter.deliver.failures import (
    Brake,
    Fatal,
    NotStarted,
    Unreachable,
    backoff,
    masked_reply,
    next_attempt_after,
    reply_text,
)
from newsletter.deliver.host import HostSenders, usable_cpus
from newsletter.deliver.ledger import LedgerWriter, threadable
from newsletter.deliver.progress import Progress
from newsletter.deliver.report import Tally
from newsletter.deliver.smtp import smtp_endpoint
from newsletter.deliver.transport import Transport, make_transport
from newsletter.deliver.workers import InlinePool, Prepared, Preparer, ProcessPool
from newsletter.errors import ConfigError, DeliveryError, OutcomeUnknown
from newsletter.models import LedgerOutcome, RenderedEmail, Subscriber
from newsletter.roster import Roster, addresses, by_address
from newsletter.settings import Settings
from newsletter.store import LedgerRow, Store

log = logging.getLogger(__name__)


CHUNK = 64  # subscribers per select/render task
POOL_MIN_SUBSCRIBERS = 1000  # below this, rendering in a process pool costs more than it saves
MAX_RENDER_WORKERS = 4  # per sender
UNSUBSCRIBE_CHECK_S = 0.25  # how stale the run's view of unsubscribes may get
SKIP_UNSUBSCRIBED = "unsubscribed"


# --- the send loop ------------------------------------------------------------------------------
@dataclass(slots=True, eq=False)
class Job:
    email: str
    message: RenderedEmail
    wire: bytes | None
    prior_attempts: int = 0  # from earlier runs
    attempts: int = 0  # in this run
    last_error: DeliveryError | None = None


def scope(
    subscribers: Sequence[Subscriber], only: Sequence[str] | None, resend: Sequence[str]
) -> Sequence[Subscriber]:
    by_email: Mapping[str, Subscriber]
    if isinstance(subscribers, Roster):  # a checked file: one subscriber per mailbox
        by_email = by_address(subscribers)
        if only is None and not resend:
            return subscribers  # read a chunk at a time as the run goes
    else:
        found: dict[str, Subscriber] = {}
        for s in subscribers:  # one mailbox, one digest (the subscriber file refuses duplicates)
            kept = found.setdefault(address_key(s.email), s)
            if kept is not s:
                log.warning("%s: same mailbox as %s; sending it one digest", s.email, kept.email)
        by_email = found
    named = [address_key(e) for e in [*(only or ()), *resend]]
    unknown = [e for e in named if e not in by_email]
    if unknown:
        raise ConfigError(
            f"unknown subscriber(s) {', '.join(sorted(set(unknown)))}: not in the subscriber "
            "file; check the address (newsletter subscribers check lists them)"
        )
    if only is None and not resend:
        return list(by_email.values())
    return [by_email[e] for e in dict.fromkeys(named)]


class Run:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        scope: Sequence[Subscriber],
        edition: dt.date,
        *,
        dry_run: bool,
        now: Callable[[], dt.datetime],
        respect_next_attempt: bool,
        stop: asyncio.Event,
        force: frozenset[str] = frozenset(),
    ) -> None:
        self.settings, self.store, self.scope, self.edition = settings, store, scope, edition
        self.by_key = by_address(scope)  # a roster's: each subscriber read when looked up
        self.force = force  # resends in a dry run: treated as due whatever their row says
        self.dry_run, self.now, self.respect = dry_run, now, respect_next_attempt
        self.stop = stop
        self.sender = settings.sender_address
        self.max_attempts = settings.smtp_max_attempts
        self.retry_base = settings.smtp_retry_base
        self.tally = Tally()
        self.transport: Transport | None = None
        self.ledger: LedgerWriter | None = None
        self.queue: asyncio.Queue[Job | None] = asyncio.Queue()
        self.room: asyncio.Semaphore | None = None
        self.outstanding = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.delayed: dict[Job, asyncio.TimerHandle] = {}
        self.stored_ids: dict[str, tuple[str | None, int]] = {}
        self.fatal: DeliveryError | None = None
        self.crash: BaseException | None = None
        self.brake = Brake(settings.smtp_brake_after)
        self.held: list[tuple[Job, DeliveryError]] = []  # refusals the brake has not judged
        self.produced = False
        self.gone: set[str] = set()  # unsubscribed since the run's chunk was picked
        self._gone_mark: tuple[int, dt.datetime | None] | None = None
        self._gone_checked = 0.0
        self.progress: Progress | None = None  # started after the workers (it has a thread)
        self.host: HostSenders | None = None  # this sender among the host's (with a pool)
        # PostgreSQL: one worker of the edition among any number; SQLite: the only sender
        scaled = store.dialect == "postgresql" and not dry_run
        self.claims = (
            Claims(settings, store, edition, now=now, respect_next_attempt=respect_next_attempt)
            if scaled
            else None
        )

    # -- orchestration ----------------------------------------------------------------------
    async def execute(self, renderer: Any) -> None:
        pool = self._make_pool(renderer)  # first: it may fork, which wants no threads around
        self.progress = Progress(len(self.scope), f"edition {self.edition}")
        senders: list[asyncio.Task[None]] = []
        watcher: asyncio.Task[None] | None = None
        try:
            if self.claims is not None:
                await self.claims.start(self.scope, self.stop, lambda: self.tally.sent)
            if not self.dry_run:
                self.transport = make_transport(self.settings, pacer=self._shared_rate())
                await self.transport.start()
                retry = self.claims is not None  # a worker survives a dropped connection
                worker = self.claims.id if self.claims is not None else None
                self.ledger = LedgerWriter(
                    self.store, self.edition, self.now, retry_lost=retry, worker=worker
                )
                n = self.transport.concurrency
                self.room = asyncio.Semaphore(max(4 * n, 2 * CHUNK))
                senders = [asyncio.create_task(self._sender()) for _ in range(n)]
                watcher = asyncio.create_task(self._watch_stop())
                log.info(
                    "sending the %s edition to %d subscriber(s) via %s",
                    self.edition,
                    len(self.scope),
                    self.transport.name,
                )
            if self.claims is not None:
                await self._produce_claimed(pool, self.claims)
            else:
                await self._produce(pool)
            self.produced = True
            self._release_if_idle()
            await first_of(self.idle.wait(), self.stop.wait())
            self._close_queue(len(senders))
            await asyncio.gather(*senders)
        finally:
            if watcher is not None:
                watcher.cancel()
            for task in senders:  # only still running when we were cancelled: abandon
                task.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
            try:
                if self.ledger is not None:
                    await self.ledger.close()
                if self.claims is not None:  # after the ledger: outcomes end claims first
                    await self.claims.close(self.tally.sent)
            finally:
                if self.transport is not None:
                    await self.transport.close()
                await asyncio.to_thread(pool.close)
                if self.host is not None:
                    self.host.close()
                if self.progress is not None:
                    self.progress.close()
        if self.crash is not None:
            raise self.crash

    def _shared_rate(self) -> SharedRate | None:
        """A worker's rate limit is the one budget all workers share (None: each its own)."""
        rate, host = self.settings.smtp_rate_limit, self.settings.smtp_host
        if self.claims is None or not rate or not host:
            return None
        return SharedRate(self.store, f"smtp:{host}:{smtp_endpoint(self.settings)[1]}", rate)

    def _progress(self) -> None:
        if self.progress is not None:
            self.progress.update(self.tally)

    def _make_pool(self, renderer: Any) -> InlinePool | ProcessPool:
        preparer = Preparer(self.settings, self.store, renderer, self.by_key)
        cpus = usable_cpus()
        if len(self.scope) >= POOL_MIN_SUBSCRIBERS and cpus > 1 and threadable(self.store):
            # the host's cores are shared by its senders: each forks its share of them, and
            # keeps busy only its share as the others come and go
            host = self.host = HostSenders()
            workers = min(host.share(cpus), MAX_RENDER_WORKERS)
            log.info("rendering in %d worker process(es)", workers)
            return ProcessPool(self.settings, preparer, workers, share=lambda: host.share(cpus))
        return InlinePool(preparer)

    async def _watch_stop(self) -> None:
        await self.stop.wait()
        log.warning("stopping: no new messages; finishing the ones in flight")
        if self.room is not None:
            self.room.release()  # wake the producer if it waits for room

    def _close_queue(self, senders: int) -> None:
        for job, handle in list(self.delayed.items()):  # retries not yet due: record them
            handle.cancel()
            self._abandon(job)
        self.delayed.clear()
        for _ in range(senders):
            self.queue.put_nowait(None)

    # -- producing: ledger state, select, render, plan ----------------------------------------
    async def _produce(self, pool: InlinePool | ProcessPool) -> None:
        waiting: collections.deque[asyncio.Future[list[Prepared]]] = collections.deque()
        emails = addresses(self.scope)  # the pool reads the subscribers it needs
        try:
            for i in range(0, len(emails), CHUNK):
                if self.stop.is_set():
                    break
                todo = self._todo(emails[i : i + CHUNK])
                if todo:
                    waiting.append(pool.submit(todo, self.edition, self.now()))
                while waiting and (len(waiting) > pool.depth or waiting[0].done()):
                    await self._enqueue(await waiting.popleft())
            while waiting and not self.stop.is_set():
                await self._enqueue(await waiting.popleft())
        finally:
            for fut in waiting:
                fut.cancel()

    async def _produce_claimed(self, pool: InlinePool | ProcessPool, claims: Claims) -> None:
        """The worker's loop: claim a batch of due rows, select+render+send them, until no row
        of our scope is due any more, free or held by another worker. Then, with nothing of
        ours in flight, any row still claimed by us is one whose claim committed while its
        connection dropped (we never saw it): give those back and claim again; so too when a
        row came free meanwhile (one we handed back, say)."""
        by_key = self.by_key
        while True:
            await self._claim_loop(pool, claims, by_key)
            self.produced = True
            self._release_if_idle()
            await first_of(self.idle.wait(), self.stop.wait())
            if self.stop.is_set():
                return
            assert self.ledger is not None
            await self.ledger.flush()  # outcomes not waited for end their claims too
            forgotten = await claims.give_back_forgotten()
            if not forgotten and not await claims.anything_left(by_key):
                # the rest of the scope was done by other workers or earlier runs
                self.tally.unchanged = max(0, len(self.scope) - self.tally.done)
                self._progress()
                return
            self.produced = False

    async def _claim_loop(
        self, pool: InlinePool | ProcessPool, claims: Claims, by_key: Mapping[str, Subscriber]
    ) -> None:
        waiting: collections.deque[asyncio.Future[list[Prepared]]] = collections.deque()
        try:
            while not self.stop.is_set():
                # as many chunks as the pool has room for, in one claim: each claim, check
                # and plan is a round trip the renders wait for (~30 ms each on a busy host)
                room = pool.depth + 1 - len(waiting)
                if waiting and room < max(1, (pool.depth + 2) // 2):
                    # too little room to be worth a claim: wait for renders to finish first
                    await self._enqueue_next(waiting)
                    continue
                room = max(1, room)
                rows = await claims.claim(CHUNK * room)
                if rows:
                    mine = [r for r in rows if r.email in by_key]
                    if len(mine) < len(rows):
                        await claims.give_back([r.email for r in rows if r.email not in by_key])
                    todo = await self._todo_claimed(mine)
                    for i in range(0, len(todo), CHUNK):
                        waiting.append(pool.submit(todo[i : i + CHUNK], self.edition, self.now()))
                elif not waiting and not await claims.anything_left(by_key):
                    break
                while waiting and (not rows or len(waiting) > pool.depth):
                    await self._enqueue_next(waiting)
                await self._enqueue_done(waiting)
            while waiting and not self.stop.is_set():
                await self._enqueue_next(waiting)
        finally:
            for fut in waiting:
                fut.cancel()

    async def _todo_claimed(self, claimed: Sequence[LedgerRow]) -> list[str]:
        """Claimed rows are due by the claim's own rule; unsubscribed readers are skipped.
        Their address keys (the pool reads the subscribers)."""
        for row in claimed:
            self.stored_ids[row.email] = (row.message_id, row.attempts)
        emails = [row.email for row in claimed]
        gone = await call_retrying(self.store.unsubscribed, emails) if emails else set()
        for email in sorted(gone):
            self.stored_ids.pop(email, None)
            self._finish(LedgerOutcome(email, "skipped", reason=SKIP_UNSUBSCRIBED))
        self._progress()
        return [email for email in emails if email not in gone]

    def _todo(self, chunk: Sequence[str]) -> list[str]:
        """The addresses of this chunk that are due (as written: the pool looks them up)."""
        rows = {r.email: r for r in self.store.ledger_rows(self.edition, chunk)}
        todo = []
        for email in chunk:
            row = rows.get(address_key(email))
            if (
                row is None
                or row.status == "planned"
                or (row.status == "failed" and self._due(row))
                or (row.status == "unknown" and self._unknown_due(row))
                or row.email in self.force
            ):
                todo.append(email)
                if row is not None:
                    self.stored_ids[row.email] = (row.message_id, row.attempts)
            else:
                self.tally.unchanged += 1
        # unsubscribed readers get no digest, whatever the subscriber file says
        gone = self.store.unsubscribed(todo)
        for key in sorted(gone):
            self._finish(LedgerOutcome(key, "skipped", reason=SKIP_UNSUBSCRIBED))
        todo = [e for e in todo if address_key(e) not in gone]
        self._progress()
        return todo

    def _due(self, row: LedgerRow) -> bool:
        if not self.respect or row.next_attempt_at is None:
            return True  # a send started by hand retries temporary failures at once
        return row.next_attempt_at <= self.now()

    def _unknown_due(self, row: LedgerRow) -> bool:
        """The server may have it: only its own long delay (or --resend) sends it again."""
        return row.next_attempt_at is not None and row.next_attempt_at <= self.now()

    async def _enqueue_next(
        self, waiting: collections.deque[asyncio.Future[list[Prepared]]]
    ) -> None:
        """Wait for the oldest chunk's render, then enqueue every chunk rendered so far."""
        await asyncio.wait([waiting[0]])
        await self._enqueue_done(waiting)

    async def _enqueue_done(
        self, waiting: collections.deque[asyncio.Future[list[Prepared]]]
    ) -> None:
        """Enqueue the chunks rendered so far, in order, planned together."""
        done: list[Prepared] = []
        while waiting and waiting[0].done():
            done += waiting.popleft().result()
        if done:
            await self._enqueue(done)

    async def _enqueue(self, prepared: list[Prepared]) -> None:
        jobs: list[Job] = []
        for p in prepared:
            stored_id, prior = self.stored_ids.pop(p.email, (None, 0))
            if p.skip is not None:
                self._finish(LedgerOutcome(p.email, "skipped", reason=p.skip))
            elif p.error is not None or p.message is None:
                status = "failed_permanent" if p.permanent else "failed"
                self._finish(LedgerOutcome(p.email, status, reply=p.error, reason=p.error))
            else:
                if stored_id and stored_id != p.message.message_id:
                    log.warning(
                        "%s: the digest now has Message-ID %s, the planned one had %s "
                        "(sender domain changed?); sending with the new one",
                        p.email,
                        p.message.message_id,
                        stored_id,
                    )
                jobs.append(Job(p.email, p.message, p.wire, prior_attempts=prior))
        if self.dry_run:
            self.tally.sent += len(jobs)
            self._progress()
            return
        assert self.ledger is not None and self.room is not None
        await self.ledger.plan(
            [(j.email, j.message.message_id, j.message.paper_ids) for j in jobs],
            refresh=self.claims is not None,  # rows planned before their digest was rendered
        )
        for n, job in enumerate(jobs):
            await self.room.acquire()
            if self.stop.is_set():
                self.room.release()
                self.tally.pending += len(jobs) - n
                return
            self.outstanding += 1
            self.idle.clear()
            self.queue.put_nowait(job)

    # -- sending ------------------------------------------------------------------------------
    async def _sender(self) -> None:
        try:
            while True:
                job = await self.queue.get()
                if job is None:
                    return
                if self.stop.is_set():
                    self._abandon(job)
                    continue
                await self._attempt(job)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # e.g. the ledger cannot be written: stop the run
            if self.crash is None:
                self.crash = exc
            self.stop.set()

    async def _hand_back(self, job: Job) -> None:
        assert self.claims is not None
        await self.claims.hand_back(job.email)  # another worker's by now, perhaps
        self._done()

    async def _attempt(self, job: Job) -> None:
        assert self.transport is not None and self.ledger is not None
        if await self._unsubscribed(job.email):  # while this edition was being sent
            self._finish(LedgerOutcome(job.email, "skipped", reason=SKIP_UNSUBSCRIBED))
            self._done()
            return
        if self.claims is not None and not self.claims.holds(job.email):
            await self._hand_back(job)
            return
        job.attempts += 1
        may_start = None if self.claims is None else functools.partial(self.claims.holds, job.email)
        try:
            reply = await self.transport.send(job.message, self.sender, job.wire, may_start)
        except NotStarted:  # the lease ran short while the send waited for its turn
            job.attempts -= 1
            await self._hand_back(job)
        except Fatal as exc:
            if self.fatal is None:
                self.fatal = exc.error
                log.error("%s", exc.error)
            job.attempts -= 1  # not the message's fault: it stays planned
            self._abandon(job)
            self.stop.set()
        except Unreachable as exc:
            self._fail(job, exc.error)
        except OutcomeUnknown as err:
            self._unknown(job, err)
        except DeliveryError as err:
            if self._braking(job, err):
                return
            if err.permanent or job.attempts >= self.max_attempts:
                self._fail(job, err)
            else:
                self._retry_later(job, err)
        except Exception as exc:  # a bug: shunt this message (logged), keep going
            log.exception("unexpected error sending to %s", job.email)
            # temporary, so the next run after the fix delivers it; no retries in this run
            self._fail(job, DeliveryError(f"internal error: {type(exc).__name__}: {exc}"))
        else:
            msg = job.message
            outcome = LedgerOutcome(
                job.email,
                "sent",
                attempts=job.attempts,
                reply=reply,
                message_id=msg.message_id,
                paper_ids=msg.paper_ids,
            )
            if self.brake.observe(None) == "off":
                self._release_held()
            await self.ledger.record_and_wait(outcome)  # commit before the next message
            if self.claims is not None:
                self.claims.finished(job.email)
            self.tally.sent += 1
            self._done()

    async def _unsubscribed(self, email: str) -> bool:
        """Has this reader unsubscribed during the run? One cheap query every
        UNSUBSCRIBE_CHECK_S (not one per message); the set is re-read only on a change."""
        assert self.ledger is not None
        now = time.monotonic()
        if now - self._gone_checked >= UNSUBSCRIBE_CHECK_S:
            self._gone_checked = now
            mark = await self.ledger.call(self.store.unsubscribe_mark)
            if mark != self._gone_mark:
                first = self._gone_mark is None
                self._gone_mark = mark
                if not first or mark[0]:
                    emails = addresses(self.scope)
                    self.gone = await self.ledger.call(self.store.unsubscribed, emails)
        return email in self.gone

    def _retry_later(self, job: Job, err: DeliveryError) -> None:
        job.last_error = err
        if self.stop.is_set():  # no retries once stopping: record it for the next run
            self._fail(job, err)
            return
        delay = backoff(self.retry_base, job.attempts)
        log.info(
            "%s: %s; attempt %d of %d in %.1f s",
            job.email,
            reply_text(err),
            job.attempts + 1,
            self.max_attempts,
            delay,
        )
        self.delayed[job] = asyncio.get_running_loop().call_later(delay, self._requeue, job)

    def _requeue(self, job: Job) -> None:
        self.delayed.pop(job, None)
        self.queue.put_nowait(job)

    def _fail(self, job: Job, err: DeliveryError) -> None:
        text = reply_text(err)
        now = self.now()
        total = job.prior_attempts + job.attempts
        next_at = None if err.permanent else next_attempt_after(now, total)
        status = "failed_permanent" if err.permanent else "failed"
        log.warning("%s: %s (%s after %d attempt(s))", job.email, text, status, job.attempts)
        self._finish(
            LedgerOutcome(
                job.email,
                status,
                attempts=job.attempts,
                reply=text,
                reason=text,
                message_id=job.message.message_id,
                paper_ids=job.message.paper_ids,
                next_attempt_at=next_at,
            )
        )
        self._done()

    def _unknown(self, job: Job, err: DeliveryError) -> None:
        text = reply_text(err)
        log.warning(
            "%s: %s; recorded as unknown, not resent before %s (or by --resend)",
            job.email,
            text,
            f"{self.settings.unknown_retry_after:g} s",
        )
        self._finish(
            LedgerOutcome(
                job.email,
                "unknown",
                attempts=job.attempts,
                reply=text,
                reason=text,
                message_id=job.message.message_id,
                paper_ids=job.message.paper_ids,
                next_attempt_at=self.now()
                + dt.timedelta(seconds=self.settings.unknown_retry_after),
            )
        )
        self._done()

    # -- the brake: a relay that refuses everyone --------------------------------------------
    def _braking(self, job: Job, err: DeliveryError) -> bool:
        """Show a reply to the brake; True when it took the job (held, or kept retryable)."""
        if self.brake.state == "off" or err.code is None:
            return False  # no reply from the server (connection trouble): not its business
        if self.brake.state == "engaged":
            self._keep_retryable(job, err)
            return True
        refusal = masked_reply(err, job.email) if 500 <= err.code < 600 else None
        state = self.brake.observe(refusal)
        if state == "off":
            self._release_held()
            return False
        self.held.append((job, err))
        if state == "engaged":
            self.fatal = DeliveryError(
                f"the server refused the first {self.brake.seen} recipients with the same reply "
                f"({self.brake.first}): that is the relay or our login, not the addresses; "
                "check NEWSLETTER_SMTP_HOST, NEWSLETTER_SMTP_USERNAME and the password (may "
                "this login relay?) and NEWSLETTER_SENDER_ADDRESS; nothing was marked "
                "permanent: run send again once fixed (NEWSLETTER_SMTP_BRAKE_AFTER=0 turns "
                "this check off)"
            )
            log.error("%s", self.fatal)
            self.stop.set()
            held, self.held = self.held, []
            for j, e in held:
                self._keep_retryable(j, e)
        else:
            self._release_if_idle()
        return True

    def _keep_retryable(self, job: Job, err: DeliveryError) -> None:
        temporary = DeliveryError(reply_text(err), code=err.code)
        job.last_error = temporary
        self._fail(job, temporary)

    def _release_held(self) -> None:
        """The brake is off: refusals it held are ordinary permanent failures after all."""
        held, self.held = self.held, []
        for job, err in held:
            self._fail(job, err)

    def _release_if_idle(self) -> None:
        """Fewer replies than the brake needs, and nothing else to come: it cannot judge."""
        if self.held and self.produced and self.outstanding == len(self.held):
            self.brake.state = "off"
            self._release_held()

    def _abandon(self, job: Job) -> None:
        """Stopped before this message went out: a retry in progress is recorded as a
        temporary failure; an untried message stays planned for the next run."""
        if job.attempts and job.last_error is not None:
            self._fail(job, job.last_error)
            return
        self.tally.pending += 1
        self._done()

    def _finish(self, outcome: LedgerOutcome) -> None:
        """Count an outcome and record it (without waiting: only `sent` must be committed)."""
        if outcome.status == "skipped":
            self.tally.skipped += 1
        elif outcome.status == "unknown":
            self.tally.unknown += 1
        else:
            permanent = outcome.status == "failed_permanent"
            if permanent:
                self.tally.failed_permanent += 1
            else:
                self.tally.failed_temporary += 1
            reason = (outcome.reply or "").replace(outcome.email, "<recipient>")
            self.tally.failures[f"{'permanent' if permanent else 'temporary'}: {reason}"] += 1
        if self.ledger is not None:
            self.ledger.record(outcome)
        if self.claims is not None:
            self.claims.finished(outcome.email)
        self._progress()

    def _done(self) -> None:
        self.outstanding -= 1
        if self.room is not None:
            self.room.release()
        if self.outstanding <= 0:
            self.idle.set()
        else:
            self._release_if_idle()
        self._progress()


async def first_of(*aws: Any) -> None:
    """Wait until the first of these awaitables finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
