"""The scheduler: each subscriber's edition at their own local `send_at`.

Subscribers are grouped by (time zone, send_at); each group is one cron job in its own zone, so
DST and UTC+14/UTC-12 are the time zone database's business, not ours. All time logic takes
`now` as an argument: `decide()` is pure, and the daemon and `run --once` only feed it a clock.

A group's *firing* is the moment its send time last passed. Each firing is served once (the
store remembers the last served firing per group), which makes `run --once` from cron, the
daemon and a restart agree: whoever sees an unserved firing first serves it. Serving picks the
newest stored listing the firing may send (`edition_day`: from the source, the last day ended in
UTC; from dumps in the seeds folder, up to the firing's local date); subscribers who already
have it (or a newer one) get nothing, so missed firings coalesce into one edition, never a
burst of old ones. A firing with nothing new is not served yet: each pass (every 5 minutes)
fetches and decides again, so a listing that comes late goes out when it comes, the same day.

On PostgreSQL several daemons with the same configuration may serve one store: each firing's
state is a claim (the first to start it records it, the others join its edition as workers, and
the served mark only moves forward), and the ledger's claims keep any digest from going twice.

A firing is *open* from the moment its send starts until its edition is done. A send that was
stopped (SIGTERM in a deploy, SIGKILL, a lost database, a refused login) leaves it open, and
the next pass resumes it before anything else, whatever the time: an interrupted edition is
never taken for a served one. `planned` rows left by a stopped `send` are picked up the same way.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]
from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]

from newsletter.addresses import address_key
from newsletter.deliver import DeliveryReport, edition_lock, send_edition
from newsletter.errors import LockHeld, NewsletterError, SubscriberConfigError
from newsletter.fetch import fetch_before_firing
from newsletter.models import Subscriber
from newsletter.pipeline import edition_listing, ingest_folder, matcher_tuning, paper_index
from newsletter.selection import select_for
from newsletter.settings import Settings
from newsletter.signals import graceful_stop
from newsletter.store import Store
from newsletter.subscribers import load_subscribers

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
Action = Literal["send", "nothing-new", "missed", "not-due"]
GRACE = dt.timedelta(minutes=10)  # a pass this late after a send time is catching up


@dataclass(frozen=True, slots=True)
class Group:
    timezone: str
    send_at: dt.time
    subscribers: tuple[Subscriber, ...]

    @property
    def key(self) -> str:
        return f"{self.timezone}|{self.send_at:%H:%M}"

    @property
    def emails(self) -> list[str]:
        return [s.email for s in self.subscribers]


@dataclass(frozen=True, slots=True)
class Decision:
    group: Group
    firing: dt.datetime  # UTC
    action: Action
    edition: dt.date | None = None
    recipients: tuple[Subscriber, ...] = ()
    reason: str = ""
    resume: bool = False  # finishing an open (interrupted) firing


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one pass decided and what its sends did."""

    decisions: list[Decision] = field(default_factory=list)
    reports: list[DeliveryReport] = field(default_factory=list)
    left_open: set[str] = field(default_factory=set)  # groups whose send did not finish

    @property
    def failed(self) -> bool:
        """Something needs another look: a failure, an unknown outcome, or a stopped send."""
        return any(r.failed or r.unknown or not r.complete for r in self.reports)


def group_subscribers(subscribers: Sequence[Subscriber]) -> list[Group]:
    groups: dict[tuple[str, dt.time], list[Subscriber]] = {}
    for s in subscribers:
        groups.setdefault((s.timezone, s.send_at), []).append(s)
    return [Group(tz, at, tuple(subs)) for (tz, at), subs in sorted(groups.items())]


def firing_on(group: Group, local_day: dt.date) -> dt.datetime:
    """The UTC instant of the group's send time on a local day.

    A send time inside a spring-forward gap (02:30 when clocks jump 02:00 -> 03:00) fires at
    the first valid instant after it, as a cron job would; in the repeated autumn hour it fires
    once, at the first occurrence.
    """
    # fold=0 (the default) gives exactly that: a gap time is read with the offset before the
    # jump, which lands after it; a repeated time resolves to its first occurrence.
    local = dt.datetime.combine(local_day, group.send_at, tzinfo=ZoneInfo(group.timezone))
    return local.astimezone(dt.UTC)


def local_date(group: Group, now: dt.datetime) -> dt.date:
    return now.astimezone(ZoneInfo(group.timezone)).date()


def last_firing(group: Group, now: dt.datetime) -> dt.datetime:
    """The latest firing at or before `now`."""
    today = local_date(group, now)
    firing = firing_on(group, today)
    return firing if firing <= now else firing_on(group, today - dt.timedelta(days=1))


def next_firing(group: Group, now: dt.datetime) -> dt.datetime:
    """The first firing strictly after `now`."""
    today = local_date(group, now)
    firing = firing_on(group, today)
    return firing if firing > now else firing_on(group, today + dt.timedelta(days=1))


def decide(
    group: Group,
    now: dt.datetime,
    *,
    last_served: dt.datetime | None,
    newest_listing: dt.date | None,
    watermarks: dict[str, dt.date],
    catch_up: bool,
    grace: dt.timedelta = GRACE,
    open_firing: tuple[dt.datetime, dt.date] | None = None,
    queued: dt.datetime | None = None,
) -> Decision:
    """What to do for one group at `now` (pure). An open firing is finished first. `queued`:
    when the pass was asked for, if it then waited for another pass of this process; its
    lateness is judged from then (a send time that came while another group was sending was
    not missed: the daemon was up and busy)."""
    if open_firing is not None:
        firing, edition = open_firing
        return Decision(
            group,
            firing,
            "send",
            edition,
            _due(group, watermarks, edition),
            reason="resuming an interrupted send",
            resume=True,
        )
    firing = last_firing(group, now)
    if last_served is not None and last_served >= firing:
        return Decision(group, firing, "not-due", reason="this send time was already served")
    late = min(now, queued or now) - firing
    if late > grace:
        # Downtime: only today's missed send time is caught up; older ones coalesce into it.
        if not catch_up:
            return Decision(group, firing, "missed", reason="send time passed; catch-up is off")
        if firing.astimezone(ZoneInfo(group.timezone)).date() != local_date(group, now):
            return Decision(group, firing, "missed", reason="missed yesterday; waiting for today")
    if newest_listing is None:
        return Decision(group, firing, "nothing-new", reason="no listing stored yet")
    due = _due(group, watermarks, newest_listing)
    if not due:
        return Decision(
            group,
            firing,
            "nothing-new",
            newest_listing,
            reason="no new listing since the last edition",
        )
    return Decision(group, firing, "send", newest_listing, due)


def _due(group: Group, watermarks: dict[str, dt.date], edition: dt.date) -> tuple[Subscriber, ...]:
    return tuple(
        s
        for s in group.subscribers
        if (mark := watermarks.get(address_key(s.email))) is None or mark < edition
    )


def edition_day(group: Group, firing: dt.datetime, *, fetching: bool) -> dt.date:
    """The newest listing date a firing may send. From the source (fetching): the last day
    that has ended in UTC, the source's calendar, so a digest never carries the first hours of
    a day still being listed (at 07:00 in Berlin that is yesterday; at 07:00 in Tokyo, 22:00
    UTC, the day before). From dumps put in the seeds folder: the firing's local date, so a
    dump dated tomorrow waits for tomorrow's send time."""
    if fetching:
        return firing.astimezone(dt.UTC).date() - dt.timedelta(days=1)
    return local_date(group, firing)


def plan_pass(
    store: Store,
    groups: Sequence[Group],
    now: dt.datetime,
    *,
    catch_up: bool,
    queued: dt.datetime | None = None,
    fetching: bool = False,
) -> list[Decision]:
    """Decisions for every group, from the store's state (one query per kind, not per group)."""
    dates = store.listing_dates()
    marks = store.watermarks([e for g in groups for e in g.emails])
    return [
        decide(
            g,
            now,
            last_served=store.last_firing(g.key),
            newest_listing=_newest_until(
                dates, edition_day(g, last_firing(g, now), fetching=fetching)
            ),
            watermarks=marks,
            catch_up=catch_up,
            open_firing=store.open_firing(g.key),
            queued=queued,
        )
        for g in groups
    ]


def _newest_until(dates: Sequence[dt.date], day: dt.date) -> dt.date | None:
    """The newest of the (sorted) stored listing dates on or before `day`."""
    at = bisect.bisect_right(dates, day)
    return dates[at - 1] if at else None


async def run_pass(
    settings: Settings,
    store: Store,
    subscribers: Sequence[Subscriber],
    clock: Clock,
    *,
    only: str | None = None,
    stop: asyncio.Event | None = None,
    queued: dt.datetime | None = None,
) -> PassResult:
    """One pass: fetch the day of each due firing (NEWSLETTER_FETCH), ingest new dumps, finish
    open firings, serve every due group (or just `only`), then retry what is due (stopped
    sends' planned rows, temporary failures)."""
    now = clock()
    groups = [g for g in group_subscribers(subscribers) if only is None or g.key == only]
    if settings.fetch:
        await fetch_before_firing(settings, store, firing_days(store, groups, now), now=now)
    ingest_folder(store, settings, settings.seeds_dir, now=now)
    result = PassResult()
    todo = plan_pass(
        store, groups, now, catch_up=settings.catch_up, queued=queued, fetching=settings.fetch
    )
    while todo:
        d = todo.pop(0)
        if stop is not None and stop.is_set():
            break
        result.decisions.append(d)
        if d.action == "not-due":
            continue
        if d.action == "nothing-new":
            # Not served: the firing stays open to a listing that arrives late (a slow source,
            # a dump copied in after the send time); each pass decides again until it is sent
            # or the send time is missed (the next day, or the grace with catch-up off).
            on_time = now - d.firing <= GRACE
            log.log(
                logging.INFO if on_time else logging.DEBUG,
                "group %s: %s (%s)",
                d.group.key,
                d.action,
                d.reason,
            )
            continue
        if d.action != "send" or d.edition is None:
            log.info("group %s: %s (%s)", d.group.key, d.action, d.reason)
            store.finish_firing(d.group.key, d.firing)
            continue
        done, report = await _serve(settings, store, d, clock, stop)
        if report is not None:
            result.reports.append(report)
        if not done:
            result.left_open.add(d.group.key)
            continue  # stays open: the next pass resumes it
        store.finish_firing(d.group.key, d.firing)
        if d.resume:  # the interrupted firing is done; the group may have a newer one due
            todo[:0] = plan_pass(
                store, [d.group], clock(), catch_up=settings.catch_up, fetching=settings.fetch
            )
    if stop is None or not stop.is_set():
        result.reports.extend(await retry_failures(settings, store, subscribers, clock, stop=stop))
    return result


def firing_days(store: Store, groups: Sequence[Group], now: dt.datetime) -> list[dt.date]:
    """The day each group's firing not served yet would send (`edition_day`): the days to
    fetch first. Asked again at each pass until the firing is served, so a day the source
    lists late still goes out that day (the requests are conditional: cheap when unchanged)."""
    days: dict[dt.date, None] = {}
    for g in groups:
        firing, served = last_firing(g, now), store.last_firing(g.key)
        if served is None or served < firing:
            days.setdefault(edition_day(g, firing, fetching=True), None)
    return list(days)


async def _serve(
    settings: Settings,
    store: Store,
    d: Decision,
    clock: Clock,
    stop: asyncio.Event | None,
) -> tuple[bool, DeliveryReport | None]:
    """Send a firing's edition to its due recipients: (is the firing done, what was sent).
    SQLite: another sender holding the edition (LockHeld) is no failure: the firing stays
    open. PostgreSQL: daemons that fire together all join the edition as workers."""
    assert d.edition is not None
    if not d.recipients:
        log.info("group %s: %s: everyone has the %s edition", d.group.key, d.reason, d.edition)
        return True, None
    log.info(
        "group %s: %s the %s edition to %d subscriber(s)",
        d.group.key,
        "resuming" if d.resume else "sending",
        d.edition,
        len(d.recipients),
    )
    if not d.resume:
        # Recorded before the edition's lock: a firing that finds another sender on the
        # edition (LockHeld) stays open, and the next pass resumes it whatever the time,
        # instead of judging it late, then missed.
        d = _start_firing(store, d, clock())
    try:
        assert d.edition is not None
        with edition_lock(store, d.edition):
            report = await send_edition(
                settings,
                store,
                list(d.recipients),
                d.edition,
                now=clock,
                respect_next_attempt=True,
                stop=stop,
            )
    except LockHeld as exc:
        log.warning("group %s: %s; will retry at the next pass", d.group.key, exc)
        return False, None
    if not report.complete:
        log.warning(
            "group %s: the %s edition was stopped with %d digest(s) left; the next pass "
            "finishes it",
            d.group.key,
            d.edition,
            report.pending,
        )
    return report.complete, report


def _start_firing(store: Store, d: Decision, now: dt.datetime) -> Decision:
    """Record that the firing's send begins. Daemons firing together each pick the newest
    listing; should another daemon have started this firing first with another edition (a
    listing stored between the two picks), this one joins that edition: one firing, one
    edition, whoever starts it."""
    assert d.edition is not None
    firing, edition = store.start_firing(d.group.key, d.firing, d.edition, now=now)
    if firing != d.firing or edition == d.edition:
        return d
    log.info(
        "group %s: another daemon started this firing with the %s edition; sending that one",
        d.group.key,
        edition,
    )
    marks = store.watermarks(d.group.emails)
    return dataclasses.replace(d, edition=edition, recipients=_due(d.group, marks, edition))


async def retry_failures(
    settings: Settings,
    store: Store,
    subscribers: Sequence[Subscriber],
    clock: Clock,
    *,
    stop: asyncio.Event | None = None,
) -> list[DeliveryReport]:
    """Rows whose time has come get another try: `planned` ones a stopped send left behind,
    temporary failures and `unknown` ones at their next attempt time."""
    by_email = {address_key(s.email): s for s in subscribers}
    reports = []
    for edition, emails in store.retry_due(clock()).items():
        subs = [by_email[e] for e in emails if e in by_email]
        if not subs or (stop is not None and stop.is_set()):
            continue
        try:
            with edition_lock(store, edition):
                reports.append(
                    await send_edition(
                        settings,
                        store,
                        subs,
                        edition,
                        now=clock,
                        respect_next_attempt=True,
                        stop=stop,
                    )
                )
        except LockHeld as exc:
            log.warning("retry of %s: %s", edition, exc)
    return reports


@dataclass(frozen=True, slots=True)
class ReplayRow:
    edition: dt.date
    email: str
    papers: int
    repeats_avoided: int  # matching papers left out because another edition sent them
    status: str


def replay(
    settings: Settings,
    store: Store,
    subscribers: Sequence[Subscriber],
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> list[ReplayRow]:
    """Deliver each stored listing in date order, each group at its own send time that day, as
    if the daemon had been running those days (backfill, demos)."""
    index = paper_index(store)
    rows: list[ReplayRow] = []
    for edition in store.listing_dates():
        if (start and edition < start) or (end and edition > end):
            continue
        listing = edition_listing(store, edition)
        fresh = {
            sel.subscriber.email: {p.paper.id for p in sel.papers}
            for sel in select_for(
                index,
                listing,
                subscribers,
                threshold=settings.relevance_threshold,
                tuning=matcher_tuning(settings),
            )
        }
        for group in group_subscribers(subscribers):
            clock = firing_on(group, edition)
            with edition_lock(store, edition):
                asyncio.run(
                    send_edition(
                        settings, store, list(group.subscribers), edition, now=_fixed(clock)
                    )
                )
            store.set_last_firing(group.key, clock)
        history = store.history_elsewhere(edition, [s.email for s in subscribers])
        for row in store.ledger_rows(edition, [s.email for s in subscribers]):
            sub_email = next(s.email for s in subscribers if address_key(s.email) == row.email)
            repeats = len(fresh.get(sub_email, set()) & history.get(row.email, set()))
            rows.append(ReplayRow(edition, row.email, len(row.paper_ids), repeats, row.status))
    return rows


def _fixed(moment: dt.datetime) -> Clock:
    """A clock stopped at `moment` (replay delivers each day as of its send time)."""
    return lambda: moment


class Daemon:
    """APScheduler cron jobs (one per group) over `run_pass`, with a hot-reloaded subscriber file."""

    def __init__(
        self, settings: Settings, store: Store, subscribers: Sequence[Subscriber], clock: Clock
    ) -> None:
        self.settings = settings
        self.store = store
        self.subscribers = list(subscribers)
        self.clock = clock
        self.stop = asyncio.Event()
        self._mtime = _mtime(settings.subscribers_file)
        self._busy = asyncio.Lock()
        self._pass: asyncio.Task[object] | None = None  # the pass running now, if any

    def _install_jobs(self, scheduler: object) -> None:

        sched = scheduler  # AsyncIOScheduler; typed loosely because APScheduler 3 ships no stubs
        for job in sched.get_jobs():  # type: ignore[attr-defined]
            if job.id.startswith("group:"):
                job.remove()
        for g in group_subscribers(self.subscribers):
            sched.add_job(  # type: ignore[attr-defined]
                self._fire,
                CronTrigger(hour=g.send_at.hour, minute=g.send_at.minute, timezone=g.timezone),
                args=[g.key],
                id=f"group:{g.key}",
                name=f"digest {g.key} ({len(g.subscribers)} subscribers)",
                coalesce=True,  # a wake-up after downtime runs a missed job once
                max_instances=1,
                misfire_grace_time=None,  # decide() judges lateness, not APScheduler
                replace_existing=True,
            )

    async def _fire(self, group_key: str | None = None) -> None:
        queued = self.clock()  # a wait for our own other pass is no downtime (see decide)
        async with self._busy:  # one pass at a time in this process
            if self.stop.is_set():
                return
            self._pass = asyncio.current_task()
            try:
                await run_pass(
                    self.settings,
                    self.store,
                    self.subscribers,
                    self.clock,
                    only=group_key,
                    stop=self.stop,
                    queued=queued,
                )
            except asyncio.CancelledError:
                if not self.stop.is_set():
                    raise
                log.warning("pass abandoned; the next start finishes the edition")
            except NewsletterError as exc:  # e.g. a refused login: logged, the daemon goes on
                log.error("pass for %s failed: %s; the next pass tries again", group_key, exc)
            except Exception:  # a bug in a pass is logged, never kills the daemon
                log.exception("pass for %s failed; the next firing will try again", group_key)
            finally:
                self._pass = None

    async def _reload(self, scheduler: object) -> None:
        """Re-read the subscriber file when it changes; an invalid file keeps the last good one."""

        mtime = _mtime(self.settings.subscribers_file)
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            fresh = load_subscribers(self.settings.subscribers_file)
        except SubscriberConfigError as exc:
            log.error("subscriber file rejected; keeping the last good version:\n%s", exc)
            return
        self.subscribers = fresh
        self._install_jobs(scheduler)
        log.info("subscriber file reloaded: %d subscribers", len(fresh))

    async def run(self) -> None:

        with graceful_stop(self.stop, self._abandon):
            await self._serve_until_stopped(AsyncIOScheduler(timezone="UTC"))

    def _abandon(self) -> None:
        if self._pass is not None:
            self._pass.cancel()

    async def _serve_until_stopped(self, scheduler: Any) -> None:
        self._install_jobs(scheduler)
        scheduler.add_job(
            self._reload, "interval", seconds=10, args=[scheduler], id="reload", coalesce=True
        )
        scheduler.add_job(self._fire, "interval", minutes=5, id="retry", coalesce=True)
        scheduler.start()
        log.info("daemon started with %d group(s)", len(group_subscribers(self.subscribers)))
        await self._fire(None)  # catch-up at start
        try:
            await self.stop.wait()
        finally:
            log.info("shutting down: finishing in-flight work")
            scheduler.shutdown(wait=False)
            async with self._busy:
                pass


def schedule_table(groups: Sequence[Group], now: dt.datetime) -> list[dict[str, str | int]]:
    """Each group's next run, in its own zone and in UTC (for `status`)."""
    rows: list[dict[str, str | int]] = []
    for g in groups:
        nxt = next_firing(g, now)
        rows.append(
            {
                "group": g.key,
                "subscribers": len(g.subscribers),
                "next_run_local": nxt.astimezone(ZoneInfo(g.timezone)).isoformat(),
                "next_run_utc": nxt.isoformat(),
            }
        )
    return rows


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
