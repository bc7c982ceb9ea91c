"""The library entry points of delivery: send an edition (send_edition), the same for the
command line with its lock and signals (run_send), what a sender holds (edition_lock), and an
edition's ledger and workers (edition_status)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from newsletter.addresses import address_key
from newsletter.deliver.report import DeliveryReport
from newsletter.deliver.run import Run, scope
from newsletter.errors import DeliveryError
from newsletter.models import Subscriber
from newsletter.pipeline import edition_listing
from newsletter.render import Renderer
from newsletter.settings import Settings
from newsletter.signals import graceful_stop
from newsletter.store import Store

log = logging.getLogger(__name__)


# --- the library entry points -------------------------------------------------------------------
async def send_edition(
    settings: Settings,
    store: Store,
    subscribers: Sequence[Subscriber],
    edition: dt.date,
    *,
    only: Sequence[str] | None = None,
    resend: Sequence[str] = (),
    dry_run: bool = False,
    now: Callable[[], dt.datetime],
    respect_next_attempt: bool = False,
    stop: asyncio.Event | None = None,
) -> DeliveryReport:
    """Send `edition` to every subscriber (or those in `only`) who has not had it yet.

    `resend` names subscribers to send the edition to again (same Message-ID); with it, the
    run is limited to them (and `only`). `dry_run` selects, renders and plans without sending
    or recording. `respect_next_attempt` (the daemon) leaves temporary failures alone until
    their next attempt time; by hand they are retried at once. Setting `stop` ends the run
    cleanly: no new messages, in-flight ones finish, the ledger is committed.

    Raises ConfigError for an unknown address in `only`/`resend`, RenderError for a broken
    template (before anything is sent), and DeliveryError when the server refuses us for a
    reason no retry fixes (login, certificate, sender address).
    """
    started = time.monotonic()
    in_scope = scope(subscribers, only, resend)
    edition_listing(store, edition)  # NoListing now, not from the middle of the run
    renderer = Renderer(settings)  # a broken template stops the run before anything is sent
    resends = frozenset(address_key(e) for e in resend)
    if not dry_run:
        for email in sorted(resends):
            if store.ledger_row(edition, email) is not None:
                store.reset_for_resend(edition, email, now=now())
    run = Run(
        settings,
        store,
        in_scope,
        edition,
        dry_run=dry_run,
        now=now,
        respect_next_attempt=respect_next_attempt,
        stop=stop or asyncio.Event(),
        force=resends if dry_run else frozenset(),
    )
    try:
        await run.execute(renderer)
    finally:
        t = run.tally
        report = DeliveryReport(
            edition=edition,
            sent=t.sent,
            skipped=t.skipped,
            failed_temporary=t.failed_temporary,
            failed_permanent=t.failed_permanent,
            unknown=t.unknown,
            failures=dict(t.failures),
            elapsed_s=time.monotonic() - started,
            unchanged=t.unchanged,
            pending=t.pending,
            interrupted=run.stop.is_set() and run.fatal is None,
            dry_run=dry_run,
            transport=run.transport.name if run.transport is not None else "",
        )
        log.info("%s", report.summary())
    if run.fatal is not None:
        raise run.fatal
    return report


def run_send(
    settings: Settings,
    store: Store,
    subscribers: Sequence[Subscriber],
    edition: dt.date,
    *,
    only: Sequence[str] | None = None,
    resend: Sequence[str] = (),
    dry_run: bool = False,
    now: Callable[[], dt.datetime],
) -> DeliveryReport:
    """`send_edition` for the command line: holds the edition's sender lock and turns
    SIGINT/SIGTERM into a clean stop (a second signal abandons the in-flight messages)."""

    async def main() -> DeliveryReport:
        stop = asyncio.Event()
        task = asyncio.current_task()
        assert task is not None
        with graceful_stop(stop, task.cancel):
            return await send_edition(
                settings,
                store,
                subscribers,
                edition,
                only=only,
                resend=resend,
                dry_run=dry_run,
                now=now,
                stop=stop,
            )

    lock = contextlib.nullcontext() if dry_run else edition_lock(store, edition)
    with lock:
        try:
            return asyncio.run(main())
        except asyncio.CancelledError:
            raise DeliveryError(
                "interrupted: messages in flight were abandoned; the ledger holds everything "
                "sent so far; run the same send again to finish (in-flight ones may repeat)"
            ) from None


def edition_lock(store: Store, edition: dt.date) -> contextlib.AbstractContextManager[None]:
    """What a sender holds while it works on an edition. SQLite: the edition's sender lock (one
    sender; a second one gets LockHeld). PostgreSQL: nothing; any number of workers share the
    edition through claimed rows with leases (see `claims`)."""
    if store.dialect == "postgresql":
        return contextlib.nullcontext()
    return store.sender_lock(edition.isoformat())


def edition_status(store: Store, edition: dt.date) -> dict[str, Any]:
    """The ledger of one edition: counts per status, skip reasons, every failure, and every
    `unknown` row (sent, never confirmed; retried at its next attempt time or by --resend)."""
    statuses = ("planned", "sent", "failed", "unknown", "failed_permanent", "skipped")
    counts = dict.fromkeys(statuses, 0)
    skipped: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    unknown: list[dict[str, Any]] = []
    for status, reason, n in store.edition_counts(edition):
        counts[status] = counts.get(status, 0) + n
        if status == "skipped":
            skipped[reason or ""] = skipped.get(reason or "", 0) + n
    wanted = counts["failed"] + counts["failed_permanent"] + counts["unknown"]
    for row in store.ledger_rows(edition, None) if wanted else []:
        if row.status not in ("failed", "failed_permanent", "unknown"):
            continue
        entry = {
            "email": row.email,
            "status": row.status,
            "attempts": row.attempts,
            "last_reply": row.last_reply,
            "next_attempt_at": row.next_attempt_at.isoformat() if row.next_attempt_at else None,
        }
        (unknown if row.status == "unknown" else failures).append(entry)
    return {
        "edition": edition.isoformat(),
        "total": sum(counts.values()),
        "counts": counts,
        "skipped": skipped,
        "failures": failures,
        "unknown": unknown,
        # PostgreSQL: the workers that took part, with their leases and the rows they hold
        "workers": store.edition_workers(edition) if store.dialect == "postgresql" else [],
    }
