"""Scale-out on PostgreSQL: this process as one worker of an edition, among any number on any
hosts, and the rate limit they share.

Planning happens once per scope, under a per-edition advisory lock: the first worker writes the
rows as `planned`, the others wait for it and find its mark. Then each worker claims batches of
due rows (FOR UPDATE SKIP LOCKED) under a lease on the database's clock, which a background task
renews while the worker works; an outcome ends the claim. A worker that dies stops renewing, and
once its lease has run out the others claim its rows: at most its in-flight messages go out
twice, with the same Message-ID. A worker is done when no row of its scope is due any more,
free or held by another (it would take those over if that worker died or gave them back).

A worker sends a message only while it holds the row: each claim and each renewal sets a local
deadline (when it began, plus the lease, less a margin); past it, a queued message is handed
back instead of sent (a paused or cut-off worker's rows may be another's by then). A row it
has queued or in flight is never taken a second time, and its outcomes never override the
claim of a worker that took the row over (`Store.record_outcomes`).

Every database call here runs off the event loop and survives a dropped connection: it is tried
again on a fresh one (the pool's pre-ping replaces the dead one).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TypeVar, overload

from newsletter.addresses import address_key
from newsletter.errors import ConnectionLost
from newsletter.mime import message_id
from newsletter.models import Subscriber
from newsletter.roster import addresses
from newsletter.settings import Settings
from newsletter.store import LedgerRow, Store

log = logging.getLogger(__name__)

T = TypeVar("T")
LOST_RETRIES = 8  # a dropped connection is tried again for about 15 s in all
PLAN_POLL_S = 0.2  # how often a worker looks whether the planning worker is done
HELD_POLL_S = 1.0  # how often a worker with nothing to claim looks at the others' rows
GRANT_S = 0.05  # a worker takes this much of the shared rate budget at a time
NAMED_SCOPE = 1000  # a scope this small is named in the claim (send --email, a retry pass)
MARGIN = 1 / 3  # of the lease: no send starts this close to the end of the row's lease


async def call_retrying(fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` in a thread; a lost database connection is retried on a fresh one."""
    for attempt in range(LOST_RETRIES):
        try:
            return await asyncio.to_thread(fn, *args)
        except ConnectionLost as exc:
            if attempt == LOST_RETRIES - 1:
                raise
            delay = min(0.25 * 2**attempt, 3.0)
            log.warning("%s; trying again in %.2f s", exc.cause, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def worker_id() -> str:
    """host:pid:random: unique even when a pid is reused."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class PlanItems(Sequence[tuple[str, str]]):
    """A scope's (address, Message-ID) pairs, each id made when asked: planning reads them a
    slice at a time rather than holding one for each of 100,000 addresses."""

    def __init__(self, emails: Sequence[str], edition: dt.date, domain: str) -> None:
        self.emails, self.edition, self.domain = emails, edition, domain

    def __len__(self) -> int:
        return len(self.emails)

    @overload
    def __getitem__(self, index: int) -> tuple[str, str]: ...

    @overload
    def __getitem__(self, index: slice) -> list[tuple[str, str]]: ...

    def __getitem__(self, index: int | slice) -> tuple[str, str] | list[tuple[str, str]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        email = self.emails[index]
        return email, message_id(self.edition, email, self.domain)


class Claims:
    """One worker's side of an edition: registration, planning, claims and their lease."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        edition: dt.date,
        *,
        now: Callable[[], dt.datetime],
        respect_next_attempt: bool,
    ) -> None:
        self.store, self.edition, self.now = store, edition, now
        self.domain = settings.sender_domain
        self.lease = settings.lease_seconds
        self.respect = respect_next_attempt
        self.id = worker_id()
        self.started = now()
        self.foreign: list[str] = []  # rows of the edition this worker has no subscriber for
        self.only: list[str] | None = None  # a small scope: claim nothing else
        self.deadline: dict[str, float] = {}  # row -> no send starts after (time.monotonic)
        self.taken: set[str] = set()  # rows taken by this process (queued, in flight, done)
        self._renewer: asyncio.Task[None] | None = None
        self._locked_since: float | None = None  # due rows free but not claimable since
        self.handed_back = 0  # queued rows not sent: their lease may have run out

    async def start(
        self, scope: Sequence[Subscriber], stop: asyncio.Event, sent: Callable[[], int]
    ) -> None:
        """Register, keep the lease renewed, and see the scope planned (by us or another)."""
        host, pid = socket.gethostname(), os.getpid()
        register = self.store.register_worker
        await call_retrying(
            functools.partial(register, self.id, self.edition, host=host, pid=pid, lease=self.lease)
        )
        self._renewer = asyncio.create_task(self._renew(sent))
        emails = addresses(scope)  # a roster's keys: no subscriber is read for planning
        if len(emails) <= NAMED_SCOPE:
            self.only = [address_key(e) for e in emails]
        items = PlanItems(emails, self.edition, self.domain)
        waited = False
        while not stop.is_set():
            done = await call_retrying(self._plan, items)
            if done != "busy":
                log.info("worker %s: the %s edition %s", self.id, self.edition, done)
                return
            if not waited:
                log.info("another worker is planning the %s edition; waiting", self.edition)
                waited = True
            await asyncio.sleep(PLAN_POLL_S)

    def _plan(self, items: Sequence[tuple[str, str]]) -> str:
        outcome = self.store.plan_edition(self.edition, items, now=self.now())
        return {"planned": "planned", "done": "was planned already"}.get(outcome, outcome)

    async def claim(self, limit: int) -> list[LedgerRow]:
        """Claim due rows: those not taken by this process already (a row whose lease lapsed
        while its message waited in our queue comes back to us: the claim renews it, the
        queued message sends it)."""
        began, rows = await call_retrying(self._claim, limit)
        self._extend(began, (r.email for r in rows))
        if rows:
            self._locked_since = None
        fresh = [r for r in rows if r.email not in self.taken]
        if len(fresh) < len(rows):
            log.info(
                "worker %s: %d row(s) claimed again are queued here already",
                self.id,
                len(rows) - len(fresh),
            )
        self.taken.update(r.email for r in fresh)
        return fresh

    def _claim(self, limit: int) -> tuple[float, list[LedgerRow]]:
        began = time.monotonic()
        return began, self.store.claim_rows(
            self.edition,
            self.id,
            limit=limit,
            lease=self.lease,
            now=self.now(),
            started=self.started,
            respect_next_attempt=self.respect,
            exclude=self.foreign,
            only=self.only,
        )

    def _extend(self, began: float, emails: Iterable[str]) -> None:
        """Rows whose lease a statement begun at `began` set: a send may start until then."""
        until = began + self.lease * (1 - MARGIN)
        for email in emails:
            self.deadline[email] = until

    def holds(self, email: str) -> bool:
        """May a send to this row start now? Only while its lease surely has not run out."""
        return self.deadline.get(email, -1.0) > time.monotonic()

    def finished(self, email: str) -> None:
        """This row's outcome is in: no send of it starts any more (its deadline goes, so a
        run over 100,000 rows does not keep one for each)."""
        self.deadline.pop(email, None)

    async def hand_back(self, email: str) -> None:
        """A queued row whose lease may have run out: not sent; should it still be ours, it is
        given back (best effort: a lease left alone runs out, or `give_back_forgotten`
        finds it), and it may be claimed again, by us too."""
        self.taken.discard(email)
        self.deadline.pop(email, None)
        self.handed_back += 1
        log.log(
            logging.WARNING if self.handed_back == 1 else logging.DEBUG,
            "worker %s: %s: its lease may have run out (renewal failed or the worker was "
            "paused); not sent, left to whichever worker claims it",
            self.id,
            email,
        )
        try:
            await call_retrying(self.store.release_claims, self.edition, self.id, [email])
        except Exception as exc:  # its lease runs out on its own
            log.error("worker %s: cannot give back %s (%s)", self.id, email, exc)

    async def give_back(self, emails: Sequence[str]) -> None:
        """Rows claimed that are not ours to send (not in this worker's scope)."""
        self.foreign.extend(emails)
        await call_retrying(self.store.release_claims, self.edition, self.id, list(emails))

    async def give_back_forgotten(self) -> int:
        """Release every row still claimed by us (call with nothing in flight); how many."""
        n = await call_retrying(self.store.release_claims, self.edition, self.id, None)
        if n:
            log.warning("worker %s: %d claimed row(s) were never seen; claiming again", self.id, n)
        return n

    async def anything_left(self, scope: Collection[str]) -> bool:
        """Is a row of our scope still due (other than the ones we hold)? Decided from the
        rows' status, not from who holds them, so a row given back or never committed by
        another's claim between our claim and this look is not left behind. If one is left,
        wait a little before claiming again: a free one is claimed at once, one a live
        worker holds when it comes free (given back, or its worker dies)."""
        rows = await call_retrying(self._due_left)
        left = [s for email, s in rows if email in scope]
        if not left:
            return False
        held = [s for s in left if s is not None]
        if len(held) == len(left):
            self._locked_since = None
            await asyncio.sleep(min(HELD_POLL_S, max(0.05, min(held) + 0.05)))
            return True
        # free, yet our claim skipped them: another session has them locked, for a moment
        # (its claim is committing) or as long as it is stalled with a transaction open (a
        # paused worker): that one finishes them when it resumes; we wait a lease at most
        now = time.monotonic()
        if self._locked_since is None:
            self._locked_since = now
        elif now - self._locked_since > self.lease:
            log.warning(
                "worker %s: %d due row(s) stay locked by another session (a stalled worker?); "
                "leaving them to it",
                self.id,
                len(left) - len(held),
            )
            return False
        await asyncio.sleep(0.05)
        return True

    def _due_left(self) -> list[tuple[str, float | None]]:
        return self.store.due_left(
            self.edition,
            self.id,
            now=self.now(),
            started=self.started,
            respect_next_attempt=self.respect,
            exclude=self.foreign,
            only=self.only,
        )

    async def _renew(self, sent: Callable[[], int]) -> None:
        """Renew every lease/3 s until cancelled, whatever goes wrong: a round that fails
        (connection lost, a timeout, the database restarting) is logged and the next tries
        again; meanwhile the rows' deadlines stop new sends once the lease may have lapsed."""
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                began, extended = await call_retrying(self._renew_once, sent())
            except Exception as exc:  # the renewer outlives any one failure
                log.error("worker %s: cannot renew its lease (%s)", self.id, exc)
                continue
            self._extend(began, extended)

    def _renew_once(self, sent: int) -> tuple[float, set[str]]:
        began = time.monotonic()
        return began, self.store.renew_lease(self.edition, self.id, lease=self.lease, sent=sent)

    async def close(self, sent: int) -> None:
        """Give back what is still held (a stopped run's planned rows) and sign off."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        if self.handed_back:
            log.warning(
                "worker %s: %d queued row(s) were not sent: their lease may have run out",
                self.id,
                self.handed_back,
            )
        await call_retrying(self.store.release_claims, self.edition, self.id, None)
        await call_retrying(functools.partial(self.store.finish_worker, self.id, sent=sent))


class SharedRate:
    """NEWSLETTER_SMTP_RATE_LIMIT across every worker: tokens come from one bucket row in
    PostgreSQL, a few (GRANT_S worth) at a time; a grant taken into debt says how long to wait
    before spending it. Replaces the transport's own limiter (same `wait`)."""

    def __init__(self, store: Store, name: str, rate: float) -> None:
        self.store, self.name, self.rate = store, name, rate
        self.grant = max(1, int(rate * GRANT_S))
        self._tokens = 0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:  # one grant at a time; the senders queue here
            if self._tokens == 0:
                delay = await call_retrying(self._take)
                self._tokens = self.grant
                if delay > 0:
                    await asyncio.sleep(delay)
            self._tokens -= 1

    def _take(self) -> float:
        return self.store.take_budget(self.name, self.grant, rate=self.rate, burst=self.grant)
